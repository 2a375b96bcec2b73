"""flowode.from_diffusers_scheduler against diffusers' own loops: max abs difference per scheduler and
config, on a deterministic dummy network and on a tiny random UNet2DModel (float32, batch 2 x 3 x 8 x 8).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/diffusers_parity.py

writes ``benchmarks/sections/diffusers_parity.md`` (about 20 s on one core). The configs are those of
``tests/test_diffusers_plan.py``, which asserts each difference below ``2e-5 * max(1, max |x|)``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import diffusers  # noqa: E402
from test_diffusers_plan import (  # noqa: E402
    ANCESTRAL_CASES,
    CASES,
    DDPM_CASES,
    _latents,
    _make,
    _net_fn,
    diffusers_loop,
)

import flowode  # noqa: E402

STOCHASTIC = ("DDPMScheduler", "EulerAncestralDiscreteScheduler")
COMMAND = "PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/diffusers_parity.py"


def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    return net.eval().requires_grad_(False)


def one(name: str, config: dict, steps: int, net) -> tuple[float, float, str]:
    fn = _net_fn(net)
    sched = _make(name, config, steps)
    latents = _latents(sched)
    plan = flowode.from_diffusers_scheduler(_make(name, config, steps))
    with torch.no_grad():
        if name in STOCHASTIC:
            g = torch.Generator().manual_seed(123)
            ref = latents.clone()
            for t in sched.timesteps:
                ref = sched.step(fn(sched.scale_model_input(ref, t), t), t, ref, generator=g).prev_sample
            out = plan.run(fn if net is None else net, latents, generator=torch.Generator().manual_seed(123))
        else:
            ref = diffusers_loop(sched, fn, latents)
            out = plan.run(fn if net is None else net, latents)
    opts = ", ".join(f"{k}={v}" for k, v in {**plan.options, **plan.model_kwargs}.items())
    return float((out - ref).abs().max()), float(ref.abs().max()), f"`{plan.solver}`" + (f" ({opts})" if opts else "")


def main() -> None:
    torch.set_num_threads(1)
    unet = tiny_unet()
    rows = []
    rel_max = 0.0
    t0 = time.perf_counter()
    cases = CASES + [("DDPMScheduler", c, s) for c, s in DDPM_CASES]
    cases += [("EulerAncestralDiscreteScheduler", c, s) for c, s in ANCESTRAL_CASES]
    for name, config, steps in cases:
        d_dummy, _, solver = one(name, config, steps, None)
        d_unet, scale, _ = one(name, config, steps, unet)
        cfg = ", ".join(f"{k}={v}" for k, v in config.items()) or "defaults"
        rel_max = max(rel_max, d_unet / max(1.0, scale))
        rows.append(f"| {name} | {cfg} | {steps} | {solver} | {d_dummy:.1e} | {d_unet:.1e} | {scale:.3g} | "
                    f"{d_unet / max(1.0, scale):.1e} |")
    seconds = time.perf_counter() - t0
    text = "\n".join([
        "`flowode.from_diffusers_scheduler(scheduler).run(net, latents)` against the scheduler's own loop "
        "(`scale_model_input`, network, `step`; DDPM and Euler ancestral with the same `torch.Generator` "
        "seed), float32, "
        f"latents 2 x 3 x 8 x 8, diffusers {diffusers.__version__}, torch {torch.__version__}. Dummy: a "
        "deterministic smooth function of (x, t); UNet: a random `UNet2DModel` (block_out_channels 8, 16).",
        "",
        "```",
        COMMAND,
        "```",
        "",
        "| scheduler | config | steps | flowode solver | max abs diff, dummy | max abs diff, UNet "
        "| max abs output (UNet) | UNet diff / max(1, output) |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The random UNet's eps outputs make the eps-prediction x0 estimates large (up to ~670), so the "
        "absolute differences scale with them; relative to max(1, output) they stay at float32 round-off "
        f"(at most {rel_max:.1e}). The tests assert every difference below 2e-5 * max(1, max |output|).",
        "",
        f"{len(rows)} configs, {seconds:.0f} s. Refused by name (not approximated): DDIM/Heun `clip_sample`, "
        "DDIM `thresholding`, DDIM grids whose step `t - N // steps` is not the next timestep (e.g. `linspace`), "
        "the SDE DPM-Solver variants, the noise-prediction multistep DPM-Solver, "
        "UniPC `bh1` to sigma = 0 (NaN in diffusers), "
        "`disable_corrector`, PNDM with v-prediction, stochastic / inverted flow-matching sampling, and every "
        "scheduler not listed.",
        "",
    ])
    out = HERE / "sections" / "diffusers_parity.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
