"""Likelihood through the probability-flow ODE and the memory / time of each gradient mode (issue 12).

Part 1 -- bits/dim with its standard error and NFE for the shipped models, at dopri5 rtol 1e-3 and
1e-5 and scipy's RK45 at 1e-5 (score SDE's setting), plus the exact analytic ring (its true density is
known, so the error of the flow's log-likelihood is measured):

* ``ring8`` (2-D MLP trained on the 8-Gaussian ring): 256 fresh samples of its training distribution,
  exact divergence; the true bits/dim of the same samples under the exact density is printed beside.
* ``digits`` (8x8 UNet): the first 8 of scikit-learn's digits, 17-level data dequantised uniformly
  (offset log2(17 / 2) = 3.087 bits/dim), Hutchinson with 4 Rademacher probes.
* ``ring (exact model)``: flowode.analytic.gmm_ring on the DDPM linear schedule, 256 samples, exact
  divergence, the exact marginal as the prior: the error column is |log p_flow - log p_true| / D.

Part 2 -- peak memory and time of one forward + backward pass of a loss on the decoded sample,
per gradient mode, at 10, 50 and 200 steps: MLP(2, hidden 256, depth 3), batch 256, float32, the
DDPM linear schedule; DDIM for autograd / checkpoint / truncated, BDIA (gamma 1) and EDICT (p 0.93,
float32 chains) for reversible;
dopri5 (rtol 1e-3 from sigma_max to sigma_min, adaptive: no step count; one process) for adjoint
(seminorm) and, for comparison, autograd through dopri5.
Each configuration runs in a fresh process; memory is the process's resident-set high-water mark
during forward + backward minus its resident set before (flowode.bench.memory.MemoryMeter, rss_hwm;
page-level noise of some 10 MiB; glibc told to map every block >= 64 KiB on its own,
``MALLOC_MMAP_THRESHOLD_=65536``, so freed tensors leave the resident set), one process each (two
processes agreed to 1 MiB in an earlier run).

Usage:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/likelihood.py [--out benchmarks/sections/likelihood.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import flowode
from flowode.analytic import gmm_ring

COMMAND = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/likelihood.py"
SOLVES = [("dopri5", 1e-3), ("dopri5", 1e-5), ("scipy_rk45", 1e-5)]
NOTE = ("The grad-norm column is a sanity check of each gradient, not a comparison across samplers (DDIM, BDIA, "
        "EDICT and dopri5 are different maps). The EDICT row at 200 steps is wrong, and measured so: in float32 the "
        "reconstruction through EDICT's ill-conditioned inverse fails over 200 steps (grad norm 1.6e9 against "
        "4.0e5 for backprop through the same EDICT steps); in float64 it agrees with backprop to 8.5e-7, and "
        "reversible BDIA in float32 to 9e-7 (docs/gradients.md).")

CHILD = r"""
import json, sys, time, torch, flowode
from flowode.bench.memory import MemoryMeter
steps, mode = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
net = flowode.nets.MLP(dim=2, hidden=256, depth=3)
with torch.no_grad():  # W_out is zero-initialised: give the network a non-trivial output
    for p in net.parameters():
        p.add_(0.05 * torch.randn_like(p))
sched = flowode.DiscreteVPSchedule.linear()
model = flowode.EpsilonModel(net, sched)
params = tuple(net.parameters())
z = torch.randn(256, 2)
grid = flowode.sigma_grid(sched, steps, "trailing")
def forward(z):
    if mode == "reversible":
        return flowode.gradients.bdia_sample(model, z, grid, grad="reversible", params=params), None
    if mode == "reversible_edict":
        return flowode.gradients.edict_sample(model, z, grid, grad="reversible", params=params), None
    if mode == "adjoint":
        sol = flowode.integrate(model, z, [float(grid[0]), float(sched.sigma_min)], solver="dopri5", rtol=1e-3,
                                atol=1e-3, grad="adjoint", adjoint_params=params)
        return sol.x, sol.nfe
    if mode == "autograd_dopri5":
        sol = flowode.integrate(model, z, [float(grid[0]), float(sched.sigma_min)], solver="dopri5", rtol=1e-3,
                                atol=1e-3, grad="autograd")
        return sol.x, sol.nfe
    kw = {"grad_steps": 1} if mode == "truncated" else {}
    sol = flowode.integrate(model, z, grid, "ddim", grad=mode, **kw)
    return sol.x, sol.nfe
forward(z[:8].clone().requires_grad_(True))[0].sum().backward()  # warm-up: imports, caches, allocator
net.zero_grad()
x = z.clone().requires_grad_(True)
t0 = time.perf_counter()
with MemoryMeter() as m:
    out, nfe = forward(x)
    t1 = time.perf_counter()
    (out ** 2).mean().backward()
t2 = time.perf_counter()
gnorm = float(sum(p.grad.norm() ** 2 for p in params) ** 0.5)
print(json.dumps({"steps": steps, "mode": mode, "mib": m.peak / 2**20, "method": m.method, "forward_s": t1 - t0,
                  "backward_s": t2 - t1, "nfe": nfe, "grad_norm": gnorm}))
"""

MODES = [("autograd", "integrate(grad=\"autograd\"), DDIM"),
         ("checkpoint", "integrate(grad=\"checkpoint\"), DDIM, segments of ceil(sqrt(steps))"),
         ("truncated", "integrate(grad=\"truncated\", grad_steps=1), DDIM (DRaFT-1)"),
         ("reversible", "gradients.bdia_sample(grad=\"reversible\"), BDIA"),
         ("reversible_edict", "gradients.edict_sample(grad=\"reversible\"), EDICT")]
ADAPTIVE = [("autograd_dopri5", "integrate(grad=\"autograd\"), dopri5 rtol 1e-3"),
            ("adjoint", "integrate(grad=\"adjoint\"), dopri5 rtol 1e-3")]
STEPS = [10, 50, 200]
REPEATS = 1


def _fmt(v: float, d: int = 4) -> str:
    return f"{v:.{d}f}"


def likelihood_rows() -> list[str]:
    lines = ["| model | data | divergence | solver | bits/dim | s.e. over samples | Hutchinson s.e. (mean) | "
             "error vs true (nats/dim) | NFE | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    ring_data = flowode.data.toy_2d("ring8", 256, generator=gen).float()
    mix = gmm_ring()
    sched = flowode.DiscreteVPSchedule.linear()
    exact_model = mix.model(sched)
    exact_data = mix.sample(256, torch.Generator().manual_seed(1))
    digits = flowode.data.load_digits()[:8]

    def exact_prior(x: torch.Tensor, s: float) -> torch.Tensor:
        a = float(sched.alpha_from_sigma(s))
        return mix.log_prob(x / a, s) - 2 * math.log(a)

    cases = [
        ("ring8", flowode.load_pretrained("ring8"), ring_data, "256 ring samples", {}),
        ("digits", flowode.load_pretrained("digits"), digits, "8 digits, 17 levels, uniform deq.",
         {"levels": 17, "divergence": "hutchinson", "probes": 4}),
        ("ring (exact model)", exact_model, exact_data, "256 ring samples", {"prior": exact_prior}),
    ]
    for name, model, x, what, kw in cases:
        for solver, tol in SOLVES:
            t = time.perf_counter()
            res = flowode.likelihood(model, x, solver=solver, rtol=tol, atol=tol,
                                     generator=torch.Generator().manual_seed(2), **kw)
            sec = time.perf_counter() - t
            bpd = res.bits_per_dim
            sem = float(bpd.std() / math.sqrt(len(bpd)))
            hut = (_fmt(float(res.stderr_bpd.pow(2).mean().sqrt() / math.sqrt(len(bpd))))
                   if kw.get("divergence") == "hutchinson" else "0 (exact)")
            err = "-"
            if "prior" in kw:
                a0 = float(sched.alpha_from_sigma(res.sigma_start))
                true = mix.log_prob(x / a0, res.sigma_start) - 2 * math.log(a0)
                err = f"{float((res.log_prob - true).abs().mean()) / 2:.1e}"
            lines.append(f"| {name} | {what} | {kw.get('divergence', 'exact')} | {solver} rtol=atol={tol:g} | "
                         f"{_fmt(float(bpd.mean()))} | {_fmt(sem)} | {hut} | {err} | {res.nfe} | {sec:.1f} |")
            print(lines[-1], flush=True)
    # the true bits/dim of the ring8 samples under the exact density of its training distribution
    a0 = float(sched.alpha_from_sigma(sched.sigma_min))
    true = mix.log_prob(ring_data.double() / a0, sched.sigma_min) - 2 * math.log(a0)
    lines.append(f"\nTrue bits/dim of the 256 ring8 samples (exact mixture density at sigma_start = sigma_min): "
                 f"{_fmt(float(-true.mean() / (2 * math.log(2))))}.")
    return lines


def gradient_rows() -> list[str]:
    lines = ["| mode | steps | peak memory added (MiB) | forward s | backward s | "
             "forward NFE | grad norm |", "|---|---|---|---|---|---|---|"]
    configs = [(m, label, s) for m, label in MODES for s in STEPS] + [(m, label, 10) for m, label in ADAPTIVE]
    for mode, label, steps in configs:
        runs = []
        # glibc's malloc: blocks >= 64 KiB are mapped and unmapped one by one, so the resident set follows the
        # live tensors instead of the heap's fragmentation (without it the checkpoint row read 470 MiB, not 90)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        for _ in range(REPEATS if mode not in dict(ADAPTIVE) else 1):
            out = subprocess.run([sys.executable, "-c", CHILD, str(steps), mode], capture_output=True, text=True,
                                 check=True, env=env)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[0]
        st = "adaptive" if mode in dict(ADAPTIVE) else str(steps)
        nfe = "-" if r["nfe"] is None else str(r["nfe"])
        mibs = ", ".join(f"{v['mib']:.0f}" for v in runs)
        lines.append(f"| {label} | {st} | {mibs} | "
                     f"{min(v['forward_s'] for v in runs):.2f} | {min(v['backward_s'] for v in runs):.2f} | {nfe} | "
                     f"{r['grad_norm']:.6g} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "sections" / "likelihood.md"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    lik = likelihood_rows()
    grad = gradient_rows()
    total = time.perf_counter() - t0
    text = "\n".join([
        "## Likelihood and gradient modes",
        "",
        "Bits/dim through the probability-flow ODE (docs/likelihood.md) and the cost of each gradient mode "
        "(docs/gradients.md); what each row runs is in the docstring of `benchmarks/likelihood.py`.",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"torch {torch.__version__}, CPU, {total:.0f} s in all on the shared 2-core machine.",
        "",
        "### Bits/dim, standard errors and NFE",
        "",
        *lik,
        "",
        "### Peak memory and time of one forward + backward pass per gradient mode",
        "",
        *grad,
        "",
        NOTE,
        "",
    ])
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
