"""EDICT in float32: why the paper's arithmetic loses ~1e-3 at 10 steps, and the float64-accumulated fix.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/edict_precision.py --out benchmarks/sections/edict_precision.md

Same problems and samples as ``benchmarks/inversion.py`` (ring-2D and mix-64D analytic models, 256
samples seeded 0; MLP-ring: the 400-step trained network, samples seeded 1), DDPM linear schedule,
trailing grid. Four tables:

1. round-trip error (max / median per-sample ``max|x0' - x0| / max|x0|``) of EDICT (p = 0.93):
   float64; float32 written literally as Wallace et al. eq. 10-14 in ``x`` coordinates (the code
   before this change); float32 with ``accumulate=False`` (same map in ``xbar`` coordinates, all
   float32); float32 with ``accumulate=True`` (default: float64 chains, float32 network);
2. the per-step gain of one exact (float64) EDICT decode step for a perturbation along the chain
   difference ``(+u, -u)`` and along the chain sum ``(+u, +u)`` (median over samples, max-norm);
3. where the float32 round-off enters: float64 chains with a float32 network, rounded to float32
   only after chosen lines, or only at one step;
4. fixed-point inversion (mix-64D, 50 steps) with float64 state around the float32 network.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import warnings

import torch

import flowode
from flowode.analytic import gmm_random, gmm_ring
from flowode.invert import InversionWarning, roundtrip
from flowode.invert._common import rel_max_error
from flowode.models import Prediction
from flowode.solvers.ddim import ddim_coefficients as _coefficients

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from inversion import SCHED, net_model, train_ring_mlp  # noqa: E402


def ddim_coefficients(model, sigma, sigma_next):  # type: ignore[no-untyped-def]
    """``(A, B)`` of the DDIM step of ``model``'s schedule (flowode.solvers.ddim.ddim_coefficients)."""
    alpha = model.schedule.alpha_from_sigma
    return _coefficients(float(alpha(sigma)), float(alpha(sigma_next)), sigma, sigma_next)

F32, F64 = torch.float32, torch.float64
P = 0.93


def _fmt(e: torch.Tensor) -> str:
    return f"{float(e.max()):.2e} ({float(e.median()):.1e})"


def _round(z: torch.Tensor, on: bool) -> torch.Tensor:
    return z.to(F32).to(z.dtype) if on else z


def _eps(model, z: torch.Tensor, s: float, net_dtype: torch.dtype) -> torch.Tensor:
    return model.predict(z.to(net_dtype), s).eps.to(z.dtype)


def paper_encode(model, x0, s, net_dtype, sites=frozenset(), levels=frozenset(), y0=None):
    """EDICT eq. 14 in x coordinates; optional float32 rounding after chosen lines at chosen steps."""
    x, y = x0, (x0 if y0 is None else y0)
    for i in range(len(s) - 2, -1, -1):
        a, b = ddim_coefficients(model, s[i], s[i + 1])
        on = i in levels
        y_in = _round((y - x * (1 - P)) / P, on and "enc mix" in sites)
        x_in = _round((x - y_in * (1 - P)) / P, on and "enc mix" in sites)
        y = _round((y_in - _eps(model, x_in, s[i], net_dtype) * b) / a, on and "enc A/B" in sites)
        x = _round((x_in - _eps(model, y, s[i], net_dtype) * b) / a, on and "enc A/B" in sites)
    return x, y


def paper_decode(model, x, y, s, net_dtype, sites=frozenset(), levels=frozenset()):
    """EDICT eq. 10-12 in x coordinates (same optional rounding)."""
    for i in range(len(s) - 1):
        a, b = ddim_coefficients(model, s[i], s[i + 1])
        on = i in levels
        x_in = _round(x * a + b * _eps(model, y, s[i], net_dtype), on and "dec A/B" in sites)
        y_in = _round(y * a + b * _eps(model, x_in, s[i], net_dtype), on and "dec A/B" in sites)
        x = _round(P * x_in + (1 - P) * y_in, on and "dec mix" in sites)
        y = _round(P * y_in + (1 - P) * x, on and "dec mix" in sites)
    return x, y


def levels_of(steps: int) -> list[float]:
    return [float(v) for v in flowode.sigma_grid(SCHED, steps).tolist()]


def table_roundtrip(problems, steps_list) -> list[str]:
    out = ["| problem | steps | float64 | float32, eq. 10-14 in x (before) | float32, accumulate=False | "
           "float32, accumulate=True (default) |", "|" + "---|" * 6]
    for name, models, x64 in problems:
        for steps in steps_list:
            x32 = x64.to(F32)
            r64 = roundtrip(models[F64], x64, steps, "edict", reference=False).x0_rel_error
            lx, ly = paper_encode(models[F32], x32, levels_of(steps), F32)
            paper = rel_max_error(paper_decode(models[F32], lx, ly, levels_of(steps), F32)[0] - x32, x32)
            plain = roundtrip(models[F32], x32, steps, "edict", reference=False, accumulate=False).x0_rel_error
            acc = roundtrip(models[F32], x32, steps, "edict", reference=False).x0_rel_error
            out.append(f"| {name} | {steps} | {_fmt(r64)} | {_fmt(paper)} | {_fmt(plain)} | {_fmt(acc)} |")
    return out


def table_gains(model, x64, steps: int) -> list[str]:
    s = levels_of(steps)
    states = [(x64, x64)]
    for i in range(steps - 1, -1, -1):
        states.insert(0, paper_encode(model, states[0][0], [s[i], s[i + 1]], F64, y0=states[0][1]))
    out = ["| step | A | B | diff-mode gain | sum-mode gain |", "|---|---|---|---|---|"]
    total = 1.0
    for i in range(steps):
        x, y = states[i]
        h = 1e-6 * x.abs().amax(1, keepdim=True)
        u = torch.randn(x.shape, generator=torch.Generator().manual_seed(i), dtype=F64)
        u = u / u.abs().amax(1, keepdim=True)
        one = [s[i], s[i + 1]]
        base = paper_decode(model, x, y, one, F64)[0]
        gd = float(((paper_decode(model, x + h * u, y - h * u, one, F64)[0] - base).abs().amax(1) / h[:, 0]).median())
        gs = float(((paper_decode(model, x + h * u, y + h * u, one, F64)[0] - base).abs().amax(1) / h[:, 0]).median())
        total *= gd
        a, b = ddim_coefficients(model, s[i], s[i + 1])
        out.append(f"| {s[i]:.3g} -> {s[i + 1]:.3g} | {a:.2f} | {b:.2f} | {gd:.2f} | {gs:.2f} |")
    out.append(f"| product | | | {total:.3g} | |")
    return out


def table_sites(problems, steps: int) -> list[str]:
    cases = [("float32 everywhere", {"enc A/B", "enc mix", "dec A/B", "dec mix"}, None, True),
             ("none (float64 chains)", set(), None, False),
             ("latent only", set(), None, True),
             ("encode A/B lines", {"enc A/B"}, None, False),
             ("encode mixing inverse (divides by p)", {"enc mix"}, None, False),
             ("decode A/B lines", {"dec A/B"}, None, False),
             ("decode mixing", {"dec mix"}, None, False)]
    allsites = {"enc A/B", "enc mix", "dec A/B", "dec mix"}
    s = levels_of(steps)
    cases += [(f"all lines, step {i} only ({s[i]:.3g} -> {s[i + 1]:.3g})", allsites, {i}, False) for i in range(steps)]
    names = [p[0] for p in problems]
    out = ["| rounded to float32 after | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
    for label, sites, levels, lat in cases:
        lv = set(range(steps)) if levels is None else levels
        cells = []
        for _, models, x64 in problems:
            x0 = x64.to(F32).to(F64)
            lx, ly = paper_encode(models[F32], x0, s, F32, sites, lv)
            lx, ly = _round(lx, lat), _round(ly, lat)
            cells.append(_fmt(rel_max_error(paper_decode(models[F32], lx, ly, s, F32, sites, lv)[0] - x0, x0)))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def table_fixed_point(data, x64) -> list[str]:
    out = ["| fixed_point, mix-64D, 50 steps | max (median) rel err | samples > 1e-5 |", "|---|---|---|"]
    for label in ("float64", "float32", "float64 state, float32 network, tol 1e-13"):
        model = data.model(SCHED)
        x = x64.to(F32) if label == "float32" else x64
        kw = {}
        if label.startswith("float64 state"):
            inner = model.predict

            def predict(z, sigma, inner=inner, **kw):
                e = inner(z.to(F32), sigma, **kw).eps.to(F64)
                return Prediction(e, z / float(SCHED.alpha_from_sigma(float(sigma))) - float(sigma) * e)
            model.predict = predict
            kw = {"tol": 1e-13}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InversionWarning)
            e = roundtrip(model, x, 50, "fixed_point", reference=False, **kw).x0_rel_error
        out.append(f"| {label} | {_fmt(e)} | {int((e > 1e-5).sum())} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", default="10,20,50")
    ap.add_argument("--out", default=None, help="write the Markdown section here")
    args = ap.parse_args(argv)
    steps_list = [int(v) for v in args.steps.split(",")]
    problems = []
    for name, data in [("ring-2D", gmm_ring()), ("mix-64D", gmm_random(64))]:
        m = data.model(SCHED)
        problems.append((name, {F32: m, F64: m}, data.sample(args.samples, torch.Generator().manual_seed(0)).to(F64)))
    net, ring = train_ring_mlp()
    mlp = {F32: net_model(net, F32)}
    mlp[F64] = net_model(__import__("copy").deepcopy(net), F64)
    problems.append(("MLP-ring", mlp, ring.sample(args.samples, torch.Generator().manual_seed(1)).to(F64)))
    cmd = ("OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/edict_precision.py "
           + " ".join(argv if argv is not None else sys.argv[1:]))
    lines = ["## EDICT in float32: round-off and its cause", "", "Command:", "", "```", cmd.strip(), "```", "",
             "Round trip, max (median) per-sample relative error, p = 0.93, trailing grid:", ""]
    lines += table_roundtrip(problems, steps_list)
    lines += ["", "Per-step gain of one exact (float64) EDICT decode step, ring-2D, 10 steps "
              "(perturbation `(+u, -u)` = diff mode, `(+u, +u)` = sum mode):", ""]
    lines += table_gains(problems[0][1][F64], problems[0][2], 10)
    lines += ["", "Where the float32 round-off enters (10 steps; float64 chains, float32 network, rounded to "
              "float32 only where listed):", ""]
    lines += table_sites(problems, 10)
    lines += ["", "Fixed-point inversion with the same trick (float64 state around the float32 network):", ""]
    lines += table_fixed_point(gmm_random(64), problems[1][2])
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
