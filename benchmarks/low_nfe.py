"""The low-NFE headline: flowode (best built-in and learned solvers) against diffusers and k-diffusion.

Full-range runs from ``sigma_max`` (t = 999 of the DDPM linear schedule) to ``sigma = 0`` at NFE 5, 10
and 20, every method from the same held-out test noise on the same model, in one process. Error:
per-sample RMSE against a teacher from the same noise; the table gives the batch RMSE and the
median per-sample error.

Problems:

* ``aniso32``: a held-out Gaussian mixture defined only here (not in ``flowode.bench``, not used in
  any development tuning): 32-D, 10 components, means ``diag(3 * 0.8^d) @ N(0, I)`` (an anisotropic
  cloud: the scale falls from 3 to 0.003 over the dimensions), per-component stds from 0.05 to 0.5,
  random weights (seed 2026). Teacher: the exact flow (scipy DOP853, rtol = atol = 1e-10).
* ``digits``: the shipped digits UNet (float32). Teacher: ``dpm_solver++_3m`` on 500 ``logsnr``
  steps (an adaptive solve at rtol 1e-6 costs ~3000 evaluations on this network); its own error,
  measured against 1000 steps on 32 samples, is printed under the table.

Noise: calibration seed 1001, validation seed 2002, test seed 0 (each a separate batch; every method
in the table runs on the test batch). Sizes: aniso32 2048 / 2048 / 8192 (its RMSE is a rate of
samples that end in another component than the teacher's, a few per thousand at NFE 10-20: on 512
test samples it was decided by 1-5 of them), digits 96 / 96 / 192. Learned solvers
(``flowode.learn_solver``, base ``dpm_solver++_2m``, history 2 unless stated, model selection on the validation
batch) with each objective: ``log`` (mean per-sample log-error: the typical sample), ``mse`` (the
tail of mode-switching samples) and, on aniso32, ``log+rmse`` (both). ``aniso32``: four fits per
objective, the one with the best validation objective kept: 150 Adam iterations at most (lr 0.05)
with and without the learned UniC-type corrector (``corrector=True``), and 300 (lr 0.02, patience
12) with the corrector from the ``uniform_t`` and from the ``trailing`` grid. ``digits``: with the
corrector, 150 iterations at most (lr 0.01, patience 10; 96 calibration images), with and without
learned shifts of the network's input level (``shift=True``), and at NFE 5 and 20 also with the shifts and
the last 4 predictions combined per step (``history=4``), at NFE 10 the ``mse`` fits also from three
``log_warped_grid`` starts (200 iterations, patience 12); the ``mse`` fits are also started from the
``log`` artefact of the same NFE (``init=``). Shipped as
``benchmarks/learned/{aniso32,digits}_nfe*_*.json``; fitted by ``--learn`` (or where a file is
missing), read from those files otherwise.

Methods (the best of each library by the metric of the column, picked on the test batch itself --
which favours the built-in and peer rows; the learned rows were selected on the validation batch;
full-range runs only):

* flowode built-in: ipndm, dpm_solver++_2m, dpm_solver++_3m, unipc, deis x {logsnr, karras,
  uniform_t, trailing};
* diffusers: DPMSolverMultistep 2M and 3M, UniPC, DEIS, Euler, Heun x {own default config,
  ``timestep_spacing="trailing"``, ``use_karras_sigmas=True``};
* k-diffusion: dpmpp_2m, heun, lms, euler, dpm_2 x {Karras sigmas, flowode's logsnr and trailing grids}.

Usage::

    python benchmarks/low_nfe.py --learn    # fit every learned solver (~70 minutes on 2 cores: digits ~55, aniso32 15)
    python benchmarks/low_nfe.py --problems digits --learn --learn-nfes 5,20   # refit only these artefacts
    python benchmarks/low_nfe.py            # -> benchmarks/sections/low_nfe.md from the fitted artefacts
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import flowode  # noqa: E402
from flowode.analytic import GaussianMixture  # noqa: E402
from flowode.bench import PEERS, get_problem  # noqa: E402
from flowode.bench.fd_digits import fd_digits, fd_floor  # noqa: E402
from flowode.bench.peers import EpsCounter  # noqa: E402
from flowode.bench.problems import Problem  # noqa: E402
from flowode.learned import learn_solver, load_learned, per_sample_errors, teacher_solve  # noqa: E402

OUT = os.path.join(HERE, "out", "low_nfe")
LEARNED = os.path.join(HERE, "learned")
NFES = (5, 10, 20)
SEEDS = {"calibration": 1001, "validation": 2002, "test": 0}
#: aniso32's RMSE is decided by the few samples that end in another mixture component than the teacher's
#: (1-5 of 512 at NFE 10-20); 8192 test samples make it a rate instead of a count, and 2048 calibration
#: samples give the ``mse`` objective tens of such samples to fit instead of one or two
SIZES = {"aniso32": {"calibration": 2048, "validation": 2048, "test": 8192},
         "digits": {"calibration": 96, "validation": 96, "test": 192}}
#: the fitting configurations tried per problem; per objective the one with the best validation objective is kept
#: (a configuration with ``nfes`` is tried only at those NFEs: on digits, combining the last 4 predictions
#: instead of 2 moved the NFE 5 fit -- validation RMSE / median 7.0e-2 / 5.8e-2 against 7.7e-2 / 6.8e-2 --
#: and the NFE 20 fit -- validation log objective -5.57 against -5.38, test RMSE 9.3e-3 against 1.3e-2 --
#: but not the NFE 10 fit, 3.5e-2 / 1.8e-2 against 3.6e-2 / 1.7e-2, at 1.5x the cost)
#: aniso32 also starts long fits with the corrector from ``uniform_t`` and ``trailing``: their dense
#: high-sigma steps are where the mixture component is decided (the tail that RMSE measures), and a
#: short fit from the log-optimal start does not move its steps there
_LONG = {"iters": 300, "lr": 0.02, "patience": 12, "corrector": True}
LEARN = {"aniso32": [{"iters": 150}, {"iters": 150, "corrector": True}, {**_LONG, "spacing_init": "uniform_t"},
                     {**_LONG, "spacing_init": "trailing"}],
         "digits": [{"iters": 150, "corrector": True, "lr": 0.01, "patience": 10},
                    {"iters": 150, "corrector": True, "lr": 0.01, "patience": 10, "shift": True},
                    {"iters": 150, "corrector": True, "lr": 0.01, "patience": 10, "shift": True, "history": 4,
                     "nfes": (5, 20)},
                    *({"iters": 200, "corrector": True, "lr": 0.01, "patience": 12, "start": start, "nfes": (10,),
                       "objectives": ("mse",)} for start in ((0.1, 1.5), (0.05, 1.0), (0.15, 1.25)))]}
#: (a ``start`` = (sigma_last, power) starts the fit from :func:`log_warped_grid` instead of the best built-in
#: spacing: the timesteps move little from their start in a fit, and at NFE 10 on digits the ``mse`` fits from
#: these three starts reached validation RMSE 3.1e-2 - 3.5e-2 against 3.6e-2 for the refined artefact; they
#: are tried at NFE 10 with ``mse`` only, where the RMSE target is missed)
#: objectives whose fits are also started from the same NFE's artefact of another objective (fitted
#: first): on digits the ``mse`` fit from its own best built-in start ends above the ``log`` artefact's
#: validation RMSE (NFE 10: 6.3e-2 against 3.8e-2), so it is also refined from that artefact
REFINE_FROM = {"digits": {"mse": "log"}}
TEACHER_STEPS = {"aniso32": None, "digits": 500}
#: the problems of the headline section; their learned artefacts are shipped in ``benchmarks/learned/``
HEADLINE = ("aniso32", "digits")
OBJECTIVES = {"aniso32": ("log", "mse", "log+rmse"), "digits": ("log", "mse")}
FLOWODE = ("ipndm", "dpm_solver++_2m", "dpm_solver++_3m", "unipc", "deis")
SPACINGS = ("logsnr", "karras", "uniform_t", "trailing")
DIFFUSERS = [("diffusers:dpmsolver++_2m", {}), ("diffusers:dpmsolver++_2m", {"solver_order": 3}),
             ("diffusers:unipc", {}), ("diffusers:deis", {}), ("diffusers:euler", {}), ("diffusers:heun", {})]
KDIFF = ["k-diffusion:dpmpp_2m", "k-diffusion:heun", "k-diffusion:lms", "k-diffusion:euler", "k-diffusion:dpm_2"]


def aniso32() -> Problem:
    """The held-out anisotropic mixture (module docstring)."""
    g = torch.Generator().manual_seed(2026)
    dim, k = 32, 10
    scale = 3.0 * 0.8 ** torch.arange(dim, dtype=torch.float64)
    means = torch.randn(k, dim, generator=g, dtype=torch.float64) * scale
    stds = 0.05 + 0.45 * torch.rand(k, generator=g, dtype=torch.float64)
    weights = 0.3 + torch.rand(k, generator=g, dtype=torch.float64)
    mix = GaussianMixture(means, stds, weights)
    sched = flowode.DiscreteVPSchedule.linear()
    return Problem(name="aniso32", model=mix.model(sched), shape=(dim,), dtype=torch.float64,
                   data=lambda n, gen: mix.sample(n, generator=gen), mixture=mix)


def problem(name: str) -> Problem:
    return aniso32() if name == "aniso32" else get_problem(name)


def batch(prob: Problem, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A noise batch and its teacher endpoints (cached in benchmarks/out/low_nfe/)."""
    n, seed = SIZES.get(prob.name, SIZES["aniso32"])[key], SEEDS[key]
    x = prob.prior(n, float(prob.model.schedule.sigma_max), seed)
    path = os.path.join(OUT, f"teacher_{prob.name}_{key}_{seed}_{n}.pt")
    if os.path.exists(path):
        ref = torch.load(path)
    else:
        t0 = time.time()
        ref = teacher_solve(prob.model, x, steps=TEACHER_STEPS.get(prob.name))
        torch.save(ref, path)
        print(f"  teacher {prob.name} {key}: {time.time() - t0:.0f} s")
    return x, ref


#: a per-sample error above this is a sample that ended in another mode than the teacher's (aniso32:
#: such errors are 0.3-1.6, the rest below 0.15 at NFE >= 10)
SWITCHED = 0.25
BOOTSTRAP = 2000


def ratio_interval(ours: torch.Tensor, peers: torch.Tensor, metric: str) -> tuple[float, float]:
    """Paired bootstrap (resampling the test samples, the two rows fixed) 90 % interval of the ratio
    ``metric(ours) / metric(peers)``: how much of the headline ratio is the test batch's luck."""
    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, ours.numel(), (BOOTSTRAP, ours.numel()), generator=g)
    a, b = ours[idx], peers[idx]
    if metric == "rmse":
        r = torch.sqrt((a * a).mean(1) / (b * b).mean(1))
    else:
        r = a.median(1).values / b.median(1).values
    lo, hi = torch.quantile(r, torch.tensor([0.05, 0.95], dtype=r.dtype)).tolist()
    return lo, hi


def summary(x: torch.Tensor, ref: torch.Tensor, fd: bool = False) -> dict[str, Any]:
    """Batch RMSE and median per-sample error against the teacher; ``fd``: also FD-digits (raw, the
    samples against the 1200 real training digits, flowode.bench.fd_digits)."""
    e = per_sample_errors(x, ref)
    out: dict[str, Any] = {"rmse": float(torch.sqrt(torch.mean(e * e))), "median": float(torch.median(e)),
                           "tail": int((e > SWITCHED).sum()), "errors": e}
    if fd:
        out["fd"] = fd_digits(x.to(torch.float32))
    return out


def full_range(prob: Problem, s0: float, s1: float) -> bool:
    smax = float(prob.model.schedule.sigma_max)
    return abs(s0 - smax) <= 1e-6 * smax and s1 == 0.0


def builtin_rows(prob: Problem, x: torch.Tensor, ref: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    sched = prob.model.schedule
    for nfe in NFES:
        for slv in FLOWODE:
            for sp in SPACINGS:
                try:
                    grid = flowode.resolve_grid(sched, flowode.solvers.make(slv), nfe=nfe, spacing=sp)
                    if not full_range(prob, float(grid[0]), float(grid[-1])):
                        continue
                    sol = flowode.integrate(prob.model, x, grid, slv)
                except (ValueError, RuntimeError) as exc:
                    print(f"  skip {slv} {sp} NFE {nfe}: {exc}")
                    continue
                rows.append({"lib": "flowode", "method": f"{slv} ({sp})", "nfe": nfe, "nfe_used": sol.nfe,
                             **summary(sol.x, ref, prob.name == "digits")})
    return rows


def peer_rows(prob: Problem, x: torch.Tensor, ref: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    sched = prob.model.schedule
    runs: list[tuple[str, dict[str, Any], Optional[str], str]] = []
    for name, opts in DIFFUSERS:
        label = name.split(":")[1] + ("_3m" if opts.get("solver_order") == 3 else "")
        runs += [(name, opts, None, f"{label} (default)"), (name, opts, "trailing", f"{label} (trailing)"),
                 (name, {**opts, "use_karras_sigmas": True}, None, f"{label} (karras)")]
    for name in KDIFF:
        label = name.split(":")[1]
        runs += [(name, {}, None, f"{label} (karras)"), (name, {}, "logsnr", f"{label} (logsnr)"),
                 (name, {}, "trailing", f"{label} (trailing)")]
    for name, opts, spacing, label in runs:
        peer = PEERS[name]
        why = peer.unavailable()
        if why is not None:
            print(f"  skip {name}: {why}")
            continue
        for nfe in NFES:
            try:
                steps, dry = peer.steps_for_nfe(prob.model, prob.dtype, prob.shape, nfe, spacing, opts)
                if not full_range(prob, dry.sigma_from, dry.sigma_to):
                    continue
                counter = EpsCounter(prob.model, prob.dtype)
                out = peer.run(counter, x, sched, steps, spacing, opts)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot run a budget is skipped and listed
                print(f"  skip {label} NFE {nfe}: {type(exc).__name__}: {exc}")
                continue
            rows.append({"lib": peer.library, "method": label, "nfe": nfe, "nfe_used": counter.calls,
                         **summary(out.x, ref, prob.name == "digits")})
    return rows


def configs_for(name: str, nfe: int, objective: Optional[str] = None) -> list[dict[str, Any]]:
    """The fitting configurations of ``LEARN[name]`` (aniso32's for another problem) tried at ``nfe`` with
    ``objective``: a configuration with an ``nfes`` / ``objectives`` key only at those NFEs / objectives."""
    return [{k: v for k, v in c.items() if k not in ("nfes", "objectives")} for c in LEARN.get(name, LEARN["aniso32"])
            if nfe in c.get("nfes", NFES) and (objective is None or objective in c.get("objectives", (objective,)))]


def log_warped_grid(sigma_max: float, sigma_last: float, power: float, nfe: int) -> list[float]:
    """``nfe + 1`` levels ``log s_k = log sigma_max + (log sigma_last - log sigma_max) (1 - (1 - k / (nfe -
    1))^power)``, ``k = 0 .. nfe - 1``, then 0: log-uniform at ``power = 1`` (``logsnr`` spacing ending at
    ``sigma_last``), denser at high sigma for ``power > 1``. A start for the learned solvers' fits."""
    l0, l1 = math.log(sigma_max), math.log(sigma_last)
    return [sigma_max] + [math.exp(l0 + (l1 - l0) * (1 - (1 - k / (nfe - 1)) ** power)) for k in range(1, nfe)] + [0.0]


def fit_learned(prob: Problem, data: dict[str, tuple[torch.Tensor, torch.Tensor]], nfe: int, objective: str,
                path: str) -> None:
    """Fit every configuration of ``LEARN[prob.name]``; keep (write to ``path``) the one with the best
    validation objective (``log``: mean log-error, ``mse``: RMSE) -- the test batch plays no part."""
    (xc, rc), (xv, rv) = data["calibration"], data["validation"]
    best = None
    configs = configs_for(prob.name, nfe, objective)
    source = REFINE_FROM.get(prob.name, {}).get(objective)
    src_path = os.path.join(os.path.dirname(path), f"{prob.name}_nfe{nfe}_{source}.json") if source else None
    if src_path is not None and not os.path.exists(src_path):
        print(f"  no {os.path.relpath(src_path, HERE)} to refine from (fit objective {source!r} first); skipped")
    elif src_path is not None:
        src = load_learned(src_path)
        first = {k: v for k, v in configs[0].items() if k != "spacing_init"}  # the start is the artefact
        rel = os.path.relpath(src_path, os.path.dirname(HERE))  # repo-relative: no machine path in the artefact
        configs.append({**first, "corrector": src.spec.corrector, "shift": src.spec.shifts is not None,
                        "history": src.spec.history, "init": src,
                        "meta": {"init_spacing": f"init ({rel})", "refined_from": rel}})
    for cfg in configs:
        t0 = time.time()
        cfg = dict(cfg)
        extra = cfg.pop("meta", {})
        start = cfg.pop("start", None)
        if start is not None:
            cfg["spacing_init"] = log_warped_grid(float(prob.model.schedule.sigma_max), *start, nfe)
        slv = learn_solver(prob.model, xc, xv, nfe, reference_calibration=rc, reference_validation=rv,
                           shape=prob.shape, objective=objective, **cfg,
                           meta={**extra, "problem": prob.name, "calibration_seed": SEEDS["calibration"],
                                 "validation_seed": SEEDS["validation"],
                                 "teacher": "exact flow (scipy DOP853, rtol 1e-10)"
                                 if TEACHER_STEPS.get(prob.name) is None
                                 else f"dpm_solver++_3m, {TEACHER_STEPS[prob.name]} logsnr steps"})
        ev = slv.spec.errors["validation"]
        val = {"log": ev["log_mean"], "mse": ev["rmse"], "log+rmse": ev["log_mean"] + math.log(ev["rmse"])}[objective]
        shown = {**{k: v for k, v in cfg.items() if k not in ("init", "spacing_init")},
                 **({"init": extra["refined_from"]} if extra else {}), **({"start": start} if start else {})}
        print(f"  learned {prob.name} NFE {nfe} ({objective}, {shown}): {time.time() - t0:.0f} s, validation "
              f"objective {val:.4g}")
        if best is None or val < best[0]:
            best = (val, slv)
    assert best is not None
    best[1].save(path)
    print(f"  -> {os.path.relpath(path, HERE)}")


def learned_rows(prob: Problem, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 refit: tuple[int, ...], objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """The learned solvers' rows on the test batch; ``refit``: the NFEs whose artefacts are fitted anew
    (the others are read from their files, and fitted only where a file is missing)."""
    rows = []
    x_t, ref_t = data["test"]
    for nfe in NFES:
        for objective in objectives:
            path = os.path.join(LEARNED if prob.name in HEADLINE else OUT,
                                f"{prob.name}_nfe{nfe}_{objective}.json")
            if nfe in refit or not os.path.exists(path):
                fit_learned(prob, data, nfe, objective, path)
            slv = load_learned(path)
            sol = flowode.sample(prob.model, x_t, nfe=nfe, solver=slv)
            e = slv.spec.errors
            rows.append({"lib": "flowode", "method": f"learned ({objective})", "learned": objective, "nfe": nfe,
                         "corrector": slv.spec.corrector, "shift": slv.spec.shifts is not None,
                         "history": slv.spec.history,
                         "refined": "refined_from" in slv.spec.meta,
                         "grid_start": str(slv.spec.meta.get("init_spacing", "")).startswith("grid ("),
                         "nfe_used": sol.nfe, **summary(sol.x, ref_t, prob.name == "digits"),
                         "cal_rmse": e["calibration"]["rmse"], "val_rmse": e["validation"]["rmse"],
                         "cal_median": e["calibration"]["median"], "val_median": e["validation"]["median"],
                         "base_val_rmse": e["base_validation"]["rmse"],
                         "base_val_median": e["base_validation"]["median"],
                         "path": os.path.relpath(path, HERE)})
    return rows


def best(rows: list[dict[str, Any]], nfe: int, libs: tuple[str, ...], metric: str) -> Optional[dict[str, Any]]:
    cand = [r for r in rows if r["nfe"] == nfe and r["lib"] in libs and "learned" not in r
            and math.isfinite(r[metric])]
    return min(cand, key=lambda r: r[metric]) if cand else None


def table(prob: str, rows: list[dict[str, Any]], modes: bool) -> list[str]:
    """The markdown table; ``modes``: the problem is a mixture, so count the samples that switched mode."""
    objs = [o for o in ("log", "mse", "log+rmse") if any(r.get("learned") == o for r in rows)]
    lines = [f"**{prob}**: error against the teacher from the same test noise (RMSE / median per-sample error); "
             "`[name (spacing)]` is the best row of that library for that metric. flowode best = the better of its "
             "best built-in and its learned solvers, per metric, as for the peers.", "",
             "| NFE | flowode best built-in | " + " | ".join(f"learned ({o}): calibration / validation / test"
                                                         for o in objs)
             + " | diffusers best | k-diffusion best | flowode best / peers' best |",
             "|---|---|" + "---|" * len(objs) + "---|---|---|"]
    met: list[str] = []
    missed: list[str] = []
    tails: list[str] = []
    for nfe in NFES:
        ratios, cells = [], []
        for metric in ("rmse", "median"):
            b = best(rows, nfe, ("flowode",), metric)
            d = best(rows, nfe, ("diffusers",), metric)
            k = best(rows, nfe, ("k-diffusion",), metric)
            cells.append((b, d, k))
            peers = [r for r in (d, k) if r is not None]
            ours = [r for r in rows if r["nfe"] == nfe and "learned" in r] + ([b] if b is not None else [])
            win = min(ours, key=lambda r: r[metric])
            ratio = win[metric] / min(r[metric] for r in peers) if peers else math.nan
            if peers:
                peer = min(peers, key=lambda r: r[metric])
                lo, hi = ratio_interval(win["errors"], peer["errors"], metric)
                ratios.append(f"{ratio:.2f}x [{lo:.2f}, {hi:.2f}] ({win['method']})")
                if metric == "rmse":
                    tails.append(f"NFE {nfe}: {win['tail']} ({win['method']}) / {peer['tail']} ({peer['lib']} "
                                 f"{peer['method']})")
            else:
                ratios.append("-")
            (met if ratio <= 0.5 else missed).append(f"NFE {nfe} {'RMSE' if metric == 'rmse' else 'median'} "
                                                    f"{ratio:.2f}x")

        def both(i: int, cells: list[Any] = cells) -> str:
            rb, rm = cells[0][i], cells[1][i]
            if rb is None or rm is None:
                return "-"
            return f"{rb['rmse']:.2e} [{rb['method']}] / {rm['median']:.2e} [{rm['method']}]"

        def lrn(obj: str, nfe: int = nfe) -> str:
            r = next((r for r in rows if r["nfe"] == nfe and r.get("learned") == obj), None)
            if r is None:
                return "-"
            return (f"{r['cal_rmse']:.2e} / {r['val_rmse']:.2e} / **{r['rmse']:.2e}**; median {r['cal_median']:.2e} / "
                    f"{r['val_median']:.2e} / **{r['median']:.2e}**")

        lines.append(f"| {nfe} | {both(0)} | " + " | ".join(lrn(o) for o in objs) + f" | {both(1)} | {both(2)} | "
                     f"RMSE {ratios[0]}; median {ratios[1]} |")
    if any("fd" in r for r in rows):
        parts = []
        for nfe in NFES:
            pick = [("flowode", best(rows, nfe, ("flowode",), "rmse")),
                    *[(f"learned ({o})", next((r for r in rows if r["nfe"] == nfe and r.get("learned") == o), None))
                      for o in objs],
                    ("diffusers", best(rows, nfe, ("diffusers",), "rmse")),
                    ("k-diffusion", best(rows, nfe, ("k-diffusion",), "rmse"))]
            parts.append(f"NFE {nfe}: " + ", ".join(f"{lab} {r['fd']:.3f}" + ("" if lab.startswith("learned") else
                                                                            f" [{r['method']}]")
                                                    for lab, r in pick if r is not None and "fd" in r))
        lines += ["", "FD-digits of the same test samples (raw, against the 1200 real training digits; each library's "
                      "row with the best RMSE, and the learned solvers): " + "; ".join(parts) + "."]
    n_test = int(rows[0]["errors"].numel())
    lines += ["", f"In brackets after each ratio: its 90 % paired-bootstrap interval over the {n_test} test samples "
                  f"({BOOTSTRAP} resamples, the two rows fixed)."
                  + (f" Samples with a per-sample error above {SWITCHED} (ended in another mode than the teacher's), "
                     "RMSE winners, flowode / peers: " + "; ".join(tails) + "." if modes else "")]
    lines += ["", f"Target flowode best <= 0.5x the peers' best: met at {', '.join(met) or 'none'}; missed at "
                  f"{', '.join(missed) or 'none'}."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--learn", action="store_true", help="refit the learned solvers (written to benchmarks/learned/)")
    ap.add_argument("--learn-nfes", default=None,
                    help="with --learn: the NFEs whose artefacts are refitted (default: all; the others are read)")
    ap.add_argument("--objectives", default=None,
                    help="learned-solver objectives (default per problem: aniso32 log,mse,log+rmse; digits log,mse; "
                         "others: development runs, no section written)")
    ap.add_argument("--problems", default=",".join(HEADLINE), help="problems (others than the two: development runs, "
                                                                   "no section written)")
    args = ap.parse_args()
    if args.learn_nfes is not None and not args.learn:
        ap.error(f"--learn-nfes {args.learn_nfes!r} refits artefacts and needs --learn; add --learn, or drop "
                 "--learn-nfes to read the shipped artefacts")
    args.learn_nfes = args.learn_nfes or ",".join(map(str, NFES))
    try:
        refit = tuple(int(n) for n in args.learn_nfes.split(",")) if args.learn else ()
    except ValueError:
        ap.error(f"--learn-nfes {args.learn_nfes!r}: give a comma-separated subset of {','.join(map(str, NFES))}")
    if not set(refit) <= set(NFES):
        ap.error(f"--learn-nfes {args.learn_nfes!r}: the table's NFEs are {','.join(map(str, NFES))}; give a subset")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(LEARNED, exist_ok=True)
    t_start = time.time()
    notes, parts = [], []
    for name in args.problems.split(","):
        t0 = time.time()
        prob = problem(name)
        print(f"{name}:")
        data = {k: batch(prob, k) for k in ("calibration", "validation", "test")}
        x_t, ref_t = data["test"]
        rows = builtin_rows(prob, x_t, ref_t) + peer_rows(prob, x_t, ref_t)
        objectives = tuple(args.objectives.split(",")) if args.objectives else OBJECTIVES.get(name, ("log", "mse"))
        rows += learned_rows(prob, data, refit=refit, objectives=objectives)
        with open(os.path.join(OUT, f"{name}_rows.json"), "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "errors"} for r in rows], f, indent=1)
        parts += table(name, rows, modes=prob.mixture is not None) + [""]
        if TEACHER_STEPS.get(name) is not None:
            x32, ref32 = x_t[:32], ref_t[:32]
            fine = flowode.integrate(prob.model, x32, flowode.sigma_grid(prob.model.schedule, 1000, "logsnr"),
                                     "dpm_solver++_3m").x
            notes.append(f"{name}: teacher ({TEACHER_STEPS[name]} steps) against 1000 steps, first 32 test samples: "
                         f"RMSE {summary(ref32, fine)['rmse']:.2e}.")
        if name == "digits":
            n_t = int(ref_t.shape[0])
            fl = fd_floor(n_t)["heldout_vs_train"]
            notes.append(f"digits: FD-digits of the teacher's {n_t} test samples {fd_digits(ref_t.float()):.3f}; the "
                         f"floor of {n_t} real held-out digits {fl[0]:.3f} +- {fl[1]:.3f} (fd_floor). At this n "
                         "FD-digits separates solvers only where they differ by more than that spread.")
        lr = [r for r in rows if "learned" in r]
        notes.append(f"{name}: learned artefacts (validation RMSE / median; in brackets the start of the fit: "
                     "dpm_solver++_2m, or for a fit with the corrector (marked C) unipc[predictor=dpm_solver++], on "
                     "its best built-in spacing, or (marked G) on a log_warped_grid start; S: with learned "
                     "input-level shifts; H<K>: combining the last K "
                     "predictions (2 where not marked); R: refined from the same NFE's "
                     "artefact of another objective, whose errors the brackets then give): " + ", ".join(
                         f"`{r['path']}`{' (C)' if r['corrector'] else ''}{' (S)' if r['shift'] else ''}"
                         f"{'' if r['history'] == 2 else ' (H%d)' % r['history']}"
                         f"{' (R)' if r['refined'] else ''}{' (G)' if r['grid_start'] else ''}"
                         f" {r['val_rmse']:.2e} / {r['val_median']:.2e} "
                         f"({r['base_val_rmse']:.2e} / "
                         f"{r['base_val_median']:.2e})" for r in lr) + f"; {time.time() - t0:.0f} s for this problem.")
    print("\n".join(parts + notes))
    if args.problems != ",".join(HEADLINE) or args.objectives is not None:
        return
    cmd = "python benchmarks/low_nfe.py" + (" --learn" if args.learn else "") + (
        f" --learn-nfes {args.learn_nfes}" if args.learn and refit != NFES else "")
    text = ["# Low-NFE headline: flowode's best and learned solvers vs diffusers and k-diffusion (issue 15)", "",
            "Command:", "", "```", cmd, "```", "",
            __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(), "", *parts, *[f"- {n}" for n in notes],
            f"- total {time.time() - t_start:.0f} s on the 2-core build machine "
            "(teachers: solved on the first run, then read from benchmarks/out/).",
            ""]
    with open(os.path.join(HERE, "sections", "low_nfe.md"), "w") as f:
        f.write("\n".join(text))


if __name__ == "__main__":
    main()
