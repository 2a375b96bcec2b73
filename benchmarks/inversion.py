"""Inversion benchmark: encode/decode round trips of naive inversion (DDIM, Heun) and the exact
methods (fixed-point, EDICT, BDIA) on the analytic 2-D ring and 64-D mixtures (and the shipped
digits model when ``flowode.load_pretrained("digits")`` exists), in float64 and float32, beside
diffusers' ``DDIMInverseScheduler`` + ``DDIMScheduler`` round trip on the same analytic model.

    PYTHONPATH=. python benchmarks/inversion.py --out benchmarks/sections/inversion.md

Columns: NFE of each direction; mean round-trip RMSE; max and median per-sample relative error
``max|x0' - x0| / max|x0|``; latent RMSE against the exact encode (``reference_solve``, DOP853 at
rtol 1e-10); fixed-point samples that did not reach the tolerance ("unconv.").
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import torch

import flowode
from flowode.analytic import gmm_random, gmm_ring
from flowode.invert import InversionWarning, reference_latent, roundtrip

SCHED = flowode.DiscreteVPSchedule.linear()
METHODS = [("ddim", {}, None), ("heun", {}, None), ("fixed_point", {}, None), ("fixed_point", {}, "logsnr"),
           ("edict", {}, None), ("bdia", {}, None)]


def diffusers_roundtrip(model, x0: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """diffusers' DDIM inversion (DDIMInverseScheduler) then DDIM decode (DDIMScheduler), trailing
    spacing, set_alpha_to_one=True, with the scheduler's alphas_cumprod replaced by flowode's float64
    knots (same model, same noise levels). The model sees ``eps(x, sigma(t))`` at the timestep the
    scheduler passes: for the inverse scheduler that is the *target* timestep of each step (its
    convention, following Null-text inversion)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    kw = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
              timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    inv, fwd = DDIMInverseScheduler(**kw), DDIMScheduler(**kw)
    ac = SCHED.alphas_cumprod_knots.clone()
    for s in (inv, fwd):
        s.alphas_cumprod = ac
        s.set_timesteps(steps)
    inv.initial_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    fwd.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        return model.predict(x, float(SCHED.sigma(float(t)))).eps

    z = x0
    for t in inv.timesteps:
        z = inv.step(eps(z, int(t)), int(t), z).prev_sample
    x = z
    for t in fwd.timesteps:
        x = fwd.step(eps(x, int(t)), int(t), x, eta=0.0).prev_sample
    return z, x, fwd.timesteps


def train_ring_mlp(steps: int = 400, seed: int = 0):
    """A 2-64-64-2 SiLU eps-network trained with the DDPM objective on the ring (seeded)."""
    torch.manual_seed(seed)
    data = gmm_ring()
    net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    abar = SCHED.alphas_cumprod_knots.to(torch.float32)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = data.sample(256, g, dtype=torch.float32)
        t = torch.randint(0, 1000, (256,), generator=g)
        e = torch.randn(256, 2, generator=g)
        a = abar[t][:, None]
        loss = ((net(torch.cat([a.sqrt() * x0 + (1 - a).sqrt() * e, t[:, None] / 1000.0], 1)) - e) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.requires_grad_(False)
    return net, data


def net_model(net, dtype):
    n = net.to(dtype)
    return flowode.EpsilonModel(lambda x, t: n(torch.cat([x, t[:, None] / 1000.0], 1)), SCHED)


def rows_for(name: str, model, x0: torch.Tensor, steps_list, ref) -> list[str]:
    out = []
    for method, opts, spacing in METHODS:
        label = method + (f" [{spacing}]" if spacing else "")
        for steps in steps_list:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InversionWarning)
                rt = roundtrip(model, x0, steps, method, spacing=spacing, reference=False, **opts)
            secs = time.perf_counter() - t0
            lat = "-"
            if spacing is None and ref is not None:  # same sigma_max as the reference
                lat = f"{float((rt.latent.double() - ref.double()).flatten(1).pow(2).mean(1).sqrt().mean()):.2e}"
            unconv = "-"
            if method == "fixed_point":
                fp = rt.latent_state
                unconv = str(int((fp.residual.amax(0) > fp.tol).sum()))
            e = rt.x0_rel_error
            out.append(f"| {name} | {str(x0.dtype).replace('torch.', '')} | {label} | {steps} | {rt.nfe_encode} | "
                       f"{rt.nfe_decode} | {float(rt.x0_rmse.mean()):.2e} | {float(e.max()):.2e} | "
                       f"{float(e.median()):.2e} | {lat} | {unconv} | {secs:.2f} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", default="10,20,50")
    ap.add_argument("--out", default=None, help="write the Markdown section here")
    ap.add_argument("--digits", type=int, default=64, help="number of real digits for the digits-UNet rows")
    args = ap.parse_args(argv)
    steps_list = [int(s) for s in args.steps.split(",")]
    problems = [("ring-2D", gmm_ring()), ("mix-64D", gmm_random(64))]
    head = ("| problem | dtype | method | steps | NFE enc | NFE dec | x0 RMSE | max rel err | median rel err | "
            "latent RMSE | unconv. | s |\n|" + "---|" * 12)
    lines = [head]
    peer = ["| problem | steps | implementation | NFE enc | NFE dec | x0 RMSE | max rel err | latent RMSE |",
            "|" + "---|" * 8]
    for name, data in problems:
        model = data.model(SCHED)
        x64 = data.sample(args.samples, torch.Generator().manual_seed(0))
        grid = flowode.sigma_grid(SCHED, 10)
        ref = reference_latent(model, x64, grid, solve=True)
        for dtype in (torch.float64, torch.float32):
            lines += rows_for(name, model, x64.to(dtype), steps_list, ref.to(dtype))
            print(f"done {name} {dtype}", file=sys.stderr)
        for steps in steps_list:
            n0 = model.nfe  # diffusers' loop calls the model directly: its lifetime counter counts the calls
            z, x, _ = diffusers_roundtrip(model, x64, steps)
            nfe = model.nfe - n0
            rel = (x - x64).abs().flatten(1).amax(1) / x64.abs().flatten(1).amax(1)
            lat = float((z - ref).flatten(1).pow(2).mean(1).sqrt().mean())
            rmse = float((x - x64).flatten(1).pow(2).mean(1).sqrt().mean())
            peer.append(f"| {name} | {steps} | diffusers DDIMInverseScheduler + DDIMScheduler | {nfe // 2} | "
                        f"{nfe // 2} | {rmse:.2e} | {float(rel.max()):.2e} | {lat:.2e} |")
            rt = roundtrip(model, x64, steps, "ddim", reference=False)
            lat_f = float((rt.latent - ref).flatten(1).pow(2).mean(1).sqrt().mean())
            peer.append(f"| {name} | {steps} | flowode ddim (naive inversion) | {rt.nfe_encode} | {rt.nfe_decode} | "
                        f"{float(rt.x0_rmse.mean()):.2e} | {float(rt.x0_rel_error.max()):.2e} | {lat_f:.2e} |")
            for method in ("edict", "bdia"):
                rt = roundtrip(model, x64, steps, method, reference=False)
                lat_f = float((rt.latent - ref).flatten(1).pow(2).mean(1).sqrt().mean())
                peer.append(f"| {name} | {steps} | flowode {method} | {rt.nfe_encode} | {rt.nfe_decode} | "
                            f"{float(rt.x0_rmse.mean()):.2e} | {float(rt.x0_rel_error.max()):.2e} | {lat_f:.2e} |")
            # the diffusers decode is flowode's DDIM decode (same grid, same arithmetic up to round-off)
            dec = flowode.decode(model, z, steps=steps, solver="ddim").x
            _, xd, _ = diffusers_roundtrip(model, x64, steps)
            agree = float((dec - xd).abs().max())
            peer.append(f"| {name} | {steps} | check: max abs(diffusers decode - flowode decode) of the same latent "
                        f"| | | {agree:.1e} | | |")
    net, ring = train_ring_mlp()
    xr = ring.sample(args.samples, torch.Generator().manual_seed(1))
    for dtype in (torch.float64, torch.float32):
        lines += rows_for("MLP-ring", net_model(net, dtype), xr.to(dtype), steps_list, None)
    # the shipped digits UNet (flowode.load_pretrained), real digits from scikit-learn
    from flowode.data import load_digits

    digits = flowode.load_pretrained("digits")
    xdig = load_digits()[torch.randperm(1797, generator=torch.Generator().manual_seed(0))[: args.digits]]
    for dtype in (torch.float64, torch.float32):
        digits.net.to(dtype)
        lines += rows_for("digits-UNet", digits, xdig.to(dtype), steps_list, None)
        print(f"done digits {dtype}", file=sys.stderr)
    digits.net.to(torch.float32)
    note = (f"\n(digits-UNet: the shipped `flowode.load_pretrained('digits')` network, {args.digits} real digits "
            "from scikit-learn's load_digits scaled to [-1, 1]; the network runs in the row's dtype.)\n")
    cmd = "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/inversion.py --out benchmarks/sections/inversion.md"
    text = (f"## Inversion round trips\n\nCommand:\n\n```\n{cmd}\n```\n\n"
            f"DDPM linear schedule (1000 steps), exact analytic eps, {args.samples} data samples, seed 0; "
            "default spacing 'trailing' (rows marked [logsnr]: log-SNR-uniform grid). MLP-ring: a 2-64-64-2 SiLU "
            "eps-network trained 400 Adam steps on the ring (seeded; `train_ring_mlp`), evaluated in the row's dtype "
            "(no exact latent: '-'). Relative error per sample = "
            "max|x0' - x0| / max|x0|. 'unconv.' = fixed-point samples whose residual stayed above the tolerance "
            "(1e-14 float64, 1.9e-6 float32; their latent is the best iterate).\n\n"
            + "\n".join(lines) + "\n" + note +
            "\n### Peer: diffusers DDIM inversion, same analytic model, float64\n\n"
            "diffusers 0.42 `DDIMInverseScheduler` + `DDIMScheduler` (trailing, set_alpha_to_one) with flowode's "
            "float64 alphas_cumprod. diffusers evaluates the network at the *target* timestep of each inverse "
            "step (Null-text-inversion convention); flowode's naive encode evaluates at the current level (at "
            "sigma = 0 the schedule's smallest level).\n\n" + "\n".join(peer) + "\n")
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
