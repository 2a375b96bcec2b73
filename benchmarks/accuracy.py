"""Accuracy per network evaluation: flowode's solvers and grids against diffusers and k-diffusion.

Problem: exact analytic Gaussian-mixture models (2-D ``gmm_ring()`` and 64-D ``gmm_random(64)``)
on the DDPM linear schedule (1000 steps, beta 1e-4 .. 0.02), 512 start states ``x_T ~ N(0, I)``
(fixed seed), float64 everywhere the peer allows.

Error: RMSE over every entry of ``x_method - x_ref`` in the model's (VP) coordinates, where
``x_ref`` is the exact probability flow of the same start noise between the *same endpoints the
method used*: from its first noise level to its last one (``flowode.reference_solve``, scipy
DOP853, rtol = atol = 1e-10). Endpoint convention: flowode's grids end at ``sigma = 0`` (the last
step returns the denoised estimate, as DDIM with ``set_alpha_to_one=True``, diffusers'
``final_sigmas_type="zero"`` and k-diffusion's trailing zero do); a peer whose default ends at
``sigma_min = sigma(t=0)`` (diffusers' PNDM with ``set_alpha_to_one=False``, DEIS) is compared
with the exact flow to ``sigma_min``; the ``sigma_end`` column says which.

NFE: counted by a counter around the model function (actual calls). For a target budget ``N`` each
method runs the largest step count whose counted NFE is ``<= N``. Adaptive flowode solvers run at a
ladder of tolerances and are reported at their actual NFE.

Headline: the best flowode row and the best peer row at each NFE among the *full-range* runs,
those that start at ``sigma_max`` (t = 999) and end at ``sigma = 0``; runs that start lower
(diffusers' ``leading`` spacing, flowode's ``leading`` / ``quadratic``) or end at ``sigma_min``
solve a shorter problem and are listed (marked) in the per-method table only. Solvers that fail
(or cannot fit a budget, e.g. PNDM's Runge-Kutta warm-up at NFE 5 and 10) are
skipped and listed.

Rows (JSON lines, resumable: finished cells are skipped):
* flowode: every registered deterministic solver x {default grid (the solver's / schedule's
  default spacing), each built-in spacing}, plus the grid of ``flowode.optimize_grid`` (fitted on
  a separate 256-sample calibration batch with its own seed, 300 solves) for the
  ``--optimize-top`` (default 3) solvers with the lowest built-in RMSE at each NFE (``0``: all);
* diffusers: DDIM, DPM-Solver++(2M), UniPC, Euler, Heun, LMS, PNDM, DEIS x {own default config,
  ``timestep_spacing="trailing"`` = flowode's default grid for this schedule};
* k-diffusion (if importable): Euler, Heun, LMS, DPM-2, DPM++(2M) x {Karras sigmas (rho = 7),
  flowode's default (trailing) grid}.

Usage::

    python benchmarks/accuracy.py                 # full run -> benchmarks/out/accuracy.jsonl, table, plot
    python benchmarks/accuracy.py --quick         # smoke test (small batch, NFE 5/10, few solvers)
    python benchmarks/accuracy.py --table-only    # rewrite the table / plot from the JSON lines
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import types
from typing import Any, Callable, Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import flowode  # noqa: E402
from flowode.analytic import GaussianMixture, gmm_random, gmm_ring  # noqa: E402
from flowode.grids import SPACINGS  # noqa: E402
from flowode.grids import resolve_grid  # noqa: E402

# float64 is set as torch's default dtype in main() only, so importing this module (the tests do)
# leaves the process's default alone.

SCHED = flowode.DiscreteVPSchedule.linear(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
ABAR64 = SCHED.alphas_cumprod_knots.to(torch.float64)
SIGMAS64 = ((1 - ABAR64) / ABAR64).sqrt().numpy()  # sigma at integer timesteps 0..999
MIXTURES: dict[str, Callable[[], GaussianMixture]] = {"ring2d": gmm_ring, "random64d": lambda: gmm_random(64)}
ADAPTIVE_TOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)


def alpha_of(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean((a.to(torch.float64) - b.to(torch.float64)) ** 2)))


class Counter:
    """Counts calls of the exact eps at ``(x_vp, sigma)``."""

    def __init__(self, gmm: GaussianMixture) -> None:
        self.gmm, self.n = gmm, 0

    def eps(self, x_vp: torch.Tensor, sigma: float) -> torch.Tensor:
        self.n += 1
        return self.gmm.eps(x_vp.to(torch.float64), sigma, alpha_of(sigma)).to(x_vp.dtype)


# ------------------------------------------------------------------------------------ diffusers peers
def _diffusers_specs() -> dict[str, tuple[str, dict[str, Any], str]]:
    """name -> (scheduler class, config, family) ; family "alpha" (state x_vp, timesteps index
    alphas_cumprod) or "sigma" (state xbar, model input scaled by 1/sqrt(1+sigma^2))."""
    return {
        "ddim": ("DDIMScheduler", {"clip_sample": False}, "alpha"),
        "dpmsolver++_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                           "alpha"),
        "unipc": ("UniPCMultistepScheduler", {}, "alpha"),
        "euler": ("EulerDiscreteScheduler", {}, "sigma"),
        "heun": ("HeunDiscreteScheduler", {}, "sigma"),
        "lms": ("LMSDiscreteScheduler", {}, "sigma"),
        "pndm": ("PNDMScheduler", {}, "alpha"),
        "deis": ("DEISMultistepScheduler", {}, "alpha"),
    }


def _make_diffusers(cls_name: str, config: dict[str, Any], steps: int) -> Any:
    import diffusers

    cls = getattr(diffusers, cls_name)
    sch = cls(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **config)
    # float64 tables (the scheduler builds float32 ones)
    sch.betas = 1 - ABAR64 / torch.cat([torch.ones(1, dtype=torch.float64), ABAR64[:-1]])
    sch.alphas = 1 - sch.betas
    sch.alphas_cumprod = ABAR64.clone()
    if hasattr(sch, "final_alpha_cumprod"):
        sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if config.get("set_alpha_to_one", sch.config.get(
            "set_alpha_to_one", False)) else ABAR64[0].clone()
    if hasattr(sch, "alpha_t"):
        sch.alpha_t = ABAR64.sqrt()
        sch.sigma_t = (1 - ABAR64).sqrt()
        sch.lambda_t = sch.alpha_t.log() - sch.sigma_t.log()
    sch.set_timesteps(steps)
    if getattr(sch, "sigmas", None) is not None and len(sch.sigmas) == len(sch.timesteps) + 1:
        ts = sch.timesteps.to(torch.float64).numpy()
        s64 = np.interp(ts, np.arange(1000), SIGMAS64)
        s32 = sch.sigmas.to(torch.float64).numpy()
        if np.allclose(s64, s32[:-1], rtol=1e-5, atol=0):  # same levels, recomputed in float64
            last = 0.0 if float(s32[-1]) == 0.0 else float(SIGMAS64[int(np.argmin(np.abs(SIGMAS64 - float(s32[-1]))))])
            sch.sigmas = torch.tensor(np.concatenate([s64, [last]]), dtype=torch.float64)
    return sch


def run_diffusers(name: str, variant: str, steps: int, x_t: torch.Tensor, ctr: Counter) -> dict[str, Any]:
    cls_name, config, family = _diffusers_specs()[name]
    config = dict(config)
    if variant == "trailing":  # flowode's default grid: trailing timesteps, last step to sigma = 0
        config["timestep_spacing"] = "trailing"
        if cls_name == "PNDMScheduler":
            config["set_alpha_to_one"] = True
    sch = _make_diffusers(cls_name, config, steps)
    ts = list(sch.timesteps)
    if family == "sigma":
        sig = sch.sigmas.to(torch.float64)
        s_start, s_end = float(sig[0]), float(sig[-1])
        sample = x_t / alpha_of(s_start)
        for t in ts:
            x_in = sch.scale_model_input(sample, t)
            sigma = float(sch.sigmas[sch.step_index])
            eps = ctr.eps(x_in, sigma)
            sample = sch.step(eps, t, sample).prev_sample
        x_out = sample.to(torch.float64) * alpha_of(s_end)
    else:
        s_start = float(SIGMAS64[int(ts[0])])
        if getattr(sch, "sigmas", None) is not None and len(sch.sigmas) == len(ts) + 1:
            s_end = float(sch.sigmas[-1])
        else:  # DDIM / PNDM step to t - N // n (diffusers' fixed stride), or to final_alpha_cumprod below 0
            prev = int(ts[-1]) - 1000 // sch.num_inference_steps
            a_fin = float(sch.final_alpha_cumprod) if prev < 0 else float(ABAR64[prev])
            s_end = math.sqrt((1 - a_fin) / a_fin)
        sample = x_t.clone()
        for t in ts:
            sigma = float(SIGMAS64[int(t)])
            eps = ctr.eps(sample, sigma)
            sample = sch.step(eps, t, sample).prev_sample
        x_out = sample.to(torch.float64)
    return {"x": x_out, "sigma_start": s_start, "sigma_end": s_end}


# ------------------------------------------------------------------------------------ k-diffusion peers
def import_k_sampling() -> Optional[types.ModuleType]:
    """``k_diffusion.sampling`` -- through the package if it imports, else loaded alone with a
    minimal stand-in for ``k_diffusion.utils`` (sampling only uses ``utils.append_dims``), because
    the package's ``__init__`` pulls in torchvision, kornia and other training dependencies."""
    try:
        import k_diffusion.sampling as ks  # type: ignore[import-not-found]

        return ks
    except Exception:
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            return None
        for k in [k for k in sys.modules if k == "k_diffusion" or k.startswith("k_diffusion.")]:
            del sys.modules[k]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)  # type: ignore[attr-defined]
        utils = types.ModuleType("k_diffusion.utils")

        def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
            return x[(...,) + (None,) * (target_dims - x.ndim)]

        utils.append_dims = append_dims  # type: ignore[attr-defined]
        pkg.utils = utils  # type: ignore[attr-defined]
        sys.modules["k_diffusion"] = pkg
        sys.modules["k_diffusion.utils"] = utils
        return importlib.import_module("k_diffusion.sampling")
    except Exception:
        return None


K_SAMPLERS = {"euler": "sample_euler", "heun": "sample_heun", "lms": "sample_lms", "dpm_2": "sample_dpm_2",
              "dpmpp_2m": "sample_dpmpp_2m"}


def run_k(ks: types.ModuleType, name: str, variant: str, steps: int, x_t: torch.Tensor, ctr: Counter) -> dict[str, Any]:
    if variant == "karras":
        sig = ks.get_sigmas_karras(steps, SCHED.sigma_min, SCHED.sigma_max, rho=7.0, device="cpu").to(torch.float64)
        sig[0], sig[-2] = SCHED.sigma_max, SCHED.sigma_min
    else:
        sig = flowode.sigma_grid(SCHED, steps, "trailing")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = float(sigma.flatten()[0])
        eps = ctr.eps(x * alpha_of(s), s)
        return x - s * eps

    s_start = float(sig[0])
    x = x_t / alpha_of(s_start)
    out = getattr(ks, K_SAMPLERS[name])(denoiser, x, sig, disable=True)
    return {"x": out.to(torch.float64), "sigma_start": s_start, "sigma_end": float(sig[-1])}


def fit_steps(run: Callable[[int, torch.Tensor, Counter], dict[str, Any]], budget: int, gmm: GaussianMixture,
              dim: int) -> tuple[int, int]:
    """Largest step count whose counted NFE is <= budget (dry run on one sample)."""
    x1 = torch.zeros(1, dim, dtype=torch.float64)
    best = (0, 0)
    for n in range(budget, 0, -1):
        ctr = Counter(gmm)
        try:
            run(n, x1, ctr)
        except Exception:
            continue
        if ctr.n <= budget:
            best = (n, ctr.n)
            break
    return best


# ------------------------------------------------------------------------------------ the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = args.out
        self.rows: list[dict[str, Any]] = load_rows(self.out) if os.path.exists(self.out) else []
        self.done: set[tuple] = {self.key(r) for r in self.rows}
        self.refs: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def key(r: dict[str, Any]) -> tuple:
        return (r["mixture"], r["library"], r["method"], r["grid"], r["nfe_target"])

    def write(self, row: dict[str, Any]) -> None:
        row = {k: v for k, v in row.items() if k != "x"}
        with open(self.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.done.add(self.key(row))
        self.rows.append(row)
        err = row.get("rmse")
        msg = f"{err:.3e}" if isinstance(err, float) else row.get("error", "")[:80]
        print(f"  {row['mixture']:10s} {row['library']:11s} {row['method']:18s} {row['grid']:16s} "
              f"N<={row['nfe_target']:3d} nfe={row.get('nfe', '-')!s:4s} {msg}", flush=True)

    def reference(self, mix: str, model: Any, x: torch.Tensor, s0: float, s1: float) -> torch.Tensor:
        k = (mix, round(s0, 12), round(s1, 12), x.shape[0])
        if k not in self.refs:
            self.refs[k] = flowode.reference_solve(model, x, s0, s1, rtol=1e-10, atol=1e-10)
        return self.refs[k]

    def cell(self, base: dict[str, Any], fn: Callable[[], dict[str, Any]], mix: str, model: Any,
             x: torch.Tensor) -> Optional[dict[str, Any]]:
        if self.key(base) in self.done:
            return None
        t0 = time.perf_counter()
        try:
            r = fn()
            ref = self.reference(mix, model, x, r["sigma_start"], r["sigma_end"])
            row = {**base, **{k: v for k, v in r.items() if k != "x"}, "rmse": rmse(r["x"], ref)}
        except Exception as e:  # skip-and-report
            row = {**base, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)[-400:]}
        row["time_s"] = round(time.perf_counter() - t0, 3)
        self.write(row)
        return row

    # -------------------------------------------------------------------------------- flowode
    def flowode_rows(self, mix: str, gmm: GaussianMixture, x: torch.Tensor, x_cal: torch.Tensor) -> None:
        model = gmm.model(SCHED)
        for name in self.args.solvers or flowode.solvers.available():
            try:
                slv = flowode.solvers.make(name)
            except Exception as e:
                self.write({"mixture": mix, "library": "flowode", "method": name, "grid": "-", "nfe_target": 0,
                            "error": f"cannot build: {e}"})
                continue
            if slv.stochastic:
                continue
            if slv.adaptive:
                self.adaptive_rows(mix, model, x, name)
                continue
            default_sp = slv.default_spacing or SCHED.default_spacing
            for nfe in self.args.nfe:
                grids: dict[str, torch.Tensor] = {}
                why = ""
                for sp in SPACINGS:
                    try:
                        grids[f"spacing:{sp}"] = resolve_grid(SCHED, slv, nfe=nfe, spacing=sp)
                    except Exception as e:  # a spacing this solver cannot use at this budget
                        why = f"{type(e).__name__}: {e}"
                if not grids:
                    base = {"mixture": mix, "library": "flowode", "method": name, "grid": "-", "nfe_target": nfe}
                    if self.key(base) not in self.done:
                        self.write({**base, "error": f"no grid fits NFE <= {nfe}: {why}"})
                    continue
                if f"spacing:{default_sp}" in grids:
                    grids["default"] = grids[f"spacing:{default_sp}"]
                for gname, g in grids.items():
                    base = {"mixture": mix, "library": "flowode", "method": name, "grid": gname, "nfe_target": nfe}

                    def run(g: torch.Tensor = g, name: str = name) -> dict[str, Any]:
                        sol = flowode.integrate(model, x, g, name)
                        return {"x": sol.x, "nfe": sol.nfe, "steps": len(g) - 1, "sigma_start": float(g[0]),
                                "sigma_end": float(g[-1])}

                    self.cell(base, run, mix, model, x)

        if not self.args.no_optimize:
            self.optimized_rows(mix, model, x, x_cal)

    def optimized_rows(self, mix: str, model: Any, x: torch.Tensor, x_cal: torch.Tensor) -> None:
        """``optimize_grid`` (fitted on the calibration batch) for the ``--optimize-top`` solvers
        with the lowest built-in-grid RMSE at each NFE in ``--opt-nfe`` (all solvers if 0)."""
        ref_cal = None
        for nfe in [n for n in self.args.nfe if n in self.args.opt_nfe]:
            best: dict[str, float] = {}
            for r in self.rows:
                if (r["mixture"] == mix and r["library"] == "flowode" and r["nfe_target"] == nfe
                        and r["grid"] != "optimized" and isinstance(r.get("rmse"), float) and math.isfinite(r["rmse"])):
                    best[r["method"]] = min(best.get(r["method"], math.inf), r["rmse"])
            ranked = sorted(best, key=lambda k: best[k])
            if self.args.optimize_top > 0:
                ranked = ranked[: self.args.optimize_top]
            for name in ranked:
                base = {"mixture": mix, "library": "flowode", "method": name, "grid": "optimized", "nfe_target": nfe}
                if self.key(base) in self.done:
                    continue
                if ref_cal is None:
                    ref_cal = self.reference(mix, model, x_cal, SCHED.sigma_max, 0.0)

                def run_opt(nfe: int = nfe, name: str = name, ref: torch.Tensor = ref_cal) -> dict[str, Any]:
                    g, info = flowode.optimize_grid(model, x_cal, nfe=nfe, solver=name, reference=ref,
                                                    max_evals=self.args.opt_evals, return_info=True)
                    sol = flowode.integrate(model, x, g, name)
                    return {"x": sol.x, "nfe": sol.nfe, "steps": len(g) - 1, "sigma_start": float(g[0]),
                            "sigma_end": float(g[-1]), "cal_error_before": info.error_before,
                            "cal_error_after": info.error_after, "init_spacing": info.init_spacing,
                            "opt_evals": info.evaluations, "sigmas": [float(v) for v in g.tolist()]}

                self.cell(base, run_opt, mix, model, x)

    def adaptive_rows(self, mix: str, model: Any, x: torch.Tensor, name: str) -> None:
        grid = torch.tensor([SCHED.sigma_max, 0.0], dtype=torch.float64)
        for tol in ADAPTIVE_TOLS:
            base = {"mixture": mix, "library": "flowode", "method": name, "grid": f"tol:{tol:g}", "nfe_target": -1}

            def run(tol: float = tol) -> dict[str, Any]:
                sol = flowode.integrate(model, x, grid, name, rtol=tol, atol=tol)
                return {"x": sol.x, "nfe": sol.nfe, "sigma_start": float(grid[0]), "sigma_end": float(grid[-1]),
                        "rtol": tol}

            row = self.cell(base, run, mix, model, x)
            if row is not None and row.get("nfe", 0) > max(self.args.nfe) * 2:
                break

    # -------------------------------------------------------------------------------- peers
    def peer_rows(self, mix: str, gmm: GaussianMixture, x: torch.Tensor) -> None:
        model = gmm.model(SCHED)
        dim = x.shape[1]
        if not self.args.no_diffusers:
            try:
                import diffusers  # noqa: F401
            except Exception as e:
                print(f"diffusers not importable ({e}); skipping its schedulers")
            else:
                for name in _diffusers_specs():
                    if self.args.peers and name not in self.args.peers:
                        continue
                    for variant in ("default", "trailing"):
                        for nfe in self.args.nfe:
                            base = {"mixture": mix, "library": "diffusers", "method": name, "grid": variant,
                                    "nfe_target": nfe}
                            if self.key(base) in self.done:
                                continue

                            def go(n: int, xx: torch.Tensor, c: Counter, name: str = name,
                                   variant: str = variant) -> dict[str, Any]:
                                return run_diffusers(name, variant, n, xx, c)

                            self._peer_cell(base, go, nfe, gmm, dim, mix, model, x)
        ks = None if self.args.no_k else import_k_sampling()
        if ks is None:
            if not self.args.no_k:
                print("k-diffusion not importable; skipping its samplers")
            return
        for name in K_SAMPLERS:
            if self.args.peers and ("k_" + name) not in self.args.peers:
                continue
            for variant in ("karras", "trailing"):
                for nfe in self.args.nfe:
                    base = {"mixture": mix, "library": "k-diffusion", "method": name, "grid": variant,
                            "nfe_target": nfe}
                    if self.key(base) in self.done:
                        continue

                    def gok(n: int, xx: torch.Tensor, c: Counter, name: str = name,
                            variant: str = variant) -> dict[str, Any]:
                        return run_k(ks, name, variant, n, xx, c)

                    self._peer_cell(base, gok, nfe, gmm, dim, mix, model, x)

    def _peer_cell(self, base: dict[str, Any], go: Callable, nfe: int, gmm: GaussianMixture, dim: int, mix: str,
                   model: Any, x: torch.Tensor) -> None:
        def fn() -> dict[str, Any]:
            steps, _ = fit_steps(go, nfe, gmm, dim)
            if steps == 0:
                raise ValueError(f"no step count fits NFE <= {nfe}")
            c = Counter(gmm)
            r = go(steps, x, c)
            r.update(nfe=c.n, steps=steps)
            return r

        self.cell(base, fn, mix, model, x)

    def run(self) -> None:
        for mix in self.args.mixtures:
            gmm = MIXTURES[mix]()
            g = torch.Generator().manual_seed(self.args.seed)
            x = torch.randn(self.args.samples, gmm.dim, generator=g, dtype=torch.float64)
            gc = torch.Generator().manual_seed(self.args.seed + 1)
            x_cal = torch.randn(self.args.calibration, gmm.dim, generator=gc, dtype=torch.float64)
            print(f"== {mix}: {self.args.samples} samples, dim {gmm.dim}", flush=True)
            self.peer_rows(mix, gmm, x)
            self.flowode_rows(mix, gmm, x, x_cal)


# ------------------------------------------------------------------------------------ table and plot
def load_rows(path: str) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def full_range(r: dict[str, Any]) -> bool:
    """The row integrated the whole flow: from sigma_max (t = 999) to sigma = 0."""
    return r.get("sigma_start", 0.0) >= SCHED.sigma_max * (1 - 1e-9) and r.get("sigma_end", 1.0) == 0.0


def best_by(rows: list[dict[str, Any]], nfe: int, library: Callable[[str], bool]) -> Optional[dict[str, Any]]:
    ok = [r for r in rows if library(r["library"]) and isinstance(r.get("rmse"), float) and math.isfinite(r["rmse"])
          and r.get("nfe", 10**9) <= nfe and (r["nfe_target"] == nfe or r["nfe_target"] == -1) and full_range(r)]
    return min(ok, key=lambda r: r["rmse"]) if ok else None


def label(r: dict[str, Any]) -> str:
    lib = {"flowode": "", "diffusers": "diffusers ", "k-diffusion": "k-diffusion "}[r["library"]]
    return f"{lib}{r['method']} [{r['grid']}]"


def table(rows: list[dict[str, Any]], nfes: list[int]) -> str:
    out = ["| mixture | NFE | best flowode (solver [grid], NFE) | RMSE | best peer (library solver [grid], NFE) "
           "| RMSE | ratio flowode/peer |", "|---|---|---|---|---|---|---|"]
    for mix in sorted({r["mixture"] for r in rows}):
        mr = [r for r in rows if r["mixture"] == mix]
        for n in nfes:
            f = best_by(mr, n, lambda lib: lib == "flowode")
            p = best_by(mr, n, lambda lib: lib != "flowode")
            fs = f"{label(f)}, {f['nfe']} | {f['rmse']:.3e}" if f else "- | -"
            ps = f"{label(p)}, {p['nfe']} | {p['rmse']:.3e}" if p else "- | -"
            ratio = f"{f['rmse'] / p['rmse']:.3f}" if f and p and p["rmse"] > 0 else "-"
            out.append(f"| {mix} | {n} | {fs} | {ps} | {ratio} |")
    return "\n".join(out)


def detail_table(rows: list[dict[str, Any]], nfes: list[int]) -> str:
    """Per mixture and method: RMSE of the default grid, of the best built-in spacing and of the
    optimised grid (flowode), or of each configuration (peers)."""
    lines = []
    for mix in sorted({r["mixture"] for r in rows}):
        lines += [f"\n**{mix}** (RMSE; flowode: default grid / best full-range built-in spacing / optimised "
                  "grid; peers: own default / trailing (diffusers) or karras / trailing (k-diffusion); "
                  "† = the run does not span sigma_max -> 0 (starts lower or ends at sigma_min), not eligible "
                  "for the headline table)\n",
                  "| library | method | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                  "|---|---|" + "---|" * len(nfes)]
        mr = [r for r in rows if r["mixture"] == mix and isinstance(r.get("rmse"), float)]
        methods = sorted({(r["library"], r["method"]) for r in mr}, key=lambda t: (t[0] != "flowode", t))
        for lib, meth in methods:
            cells = []
            for n in nfes:
                rr = [r for r in mr if r["library"] == lib and r["method"] == meth and r["nfe_target"] == n]
                if not rr:
                    ad = [r for r in mr if r["library"] == lib and r["method"] == meth and r["nfe_target"] == -1
                          and r.get("nfe", 10**9) <= n]
                    ba = min(ad, key=lambda r: r["rmse"]) if ad else None
                    cells.append(f"{ba['rmse']:.2e} (nfe {ba['nfe']})" if ba else "-")
                    continue
                if lib == "flowode":
                    d = [r for r in rr if r["grid"] == "default"]
                    b = [r for r in rr if r["grid"].startswith("spacing:") and full_range(r)]
                    o = [r for r in rr if r["grid"] == "optimized"]
                    bb = min(b, key=lambda r: r["rmse"]) if b else None
                    cells.append(" / ".join([f"{d[0]['rmse']:.2e}" if d else "-",
                                             f"{bb['rmse']:.2e} ({bb['grid'][8:]})" if bb else "-",
                                             f"{o[0]['rmse']:.2e}" if o else "-"]))
                else:
                    order = ["default", "karras", "trailing"]
                    rr.sort(key=lambda r: order.index(r["grid"]) if r["grid"] in order else 9)
                    cells.append(" / ".join(f"{r['rmse']:.2e}" + ("" if full_range(r) else "†") for r in rr))
            lines.append(f"| {lib} | {meth} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures(rows: list[dict[str, Any]]) -> str:
    bad = {}
    for r in rows:
        if "error" in r:
            bad.setdefault((r["library"], r["method"]), r["error"])
    return "\n".join(f"- {lib} `{m}`: {e[:200]}" for (lib, m), e in sorted(bad.items())) or "- none"


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    mixes = sorted({r["mixture"] for r in rows})
    fig, axes = plt.subplots(1, len(mixes), figsize=(7 * len(mixes), 5.5), squeeze=False)
    for ax, mix in zip(axes[0], mixes):
        mr = [r for r in rows if r["mixture"] == mix and isinstance(r.get("rmse"), float) and r["rmse"] > 0
              and full_range(r)]
        methods = sorted({(r["library"], r["method"]) for r in mr})
        colors = plt.get_cmap("tab20")
        for i, (lib, meth) in enumerate(methods):
            pts: dict[int, float] = {}
            for r in mr:
                if r["library"] == lib and r["method"] == meth:
                    n = int(r.get("nfe", 0))
                    key = r["nfe_target"] if r["nfe_target"] > 0 else n
                    if key > 0 and (key not in pts or r["rmse"] < pts[key]):
                        pts[key] = r["rmse"]
            if not pts:
                continue
            xs = sorted(pts)
            style = "-" if lib == "flowode" else "--" if lib == "diffusers" else ":"
            ax.loglog(xs, [pts[k] for k in xs], style, marker="o", ms=3, color=colors(i % 20),
                      lw=1.8 if lib == "flowode" else 1.2, label=("" if lib == "flowode" else lib + " ") + meth)
        ax.set_title(f"{mix}: best full-range grid per method (sigma_max -> 0)\n"
                     "flowode solid (incl. optimised grids), diffusers dashed, k-diffusion dotted", fontsize=9)
        ax.set_xticks([5, 10, 20, 50], ["5", "10", "20", "50"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE (budget; adaptive: actual)")
        ax.set_ylabel("RMSE vs exact flow")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PREAMBLE = """## Accuracy per network evaluation (RMSE against the exact flow)

Command (CPU, about 3 min on 2 cores with the solvers below; resumable, `--fresh` starts over):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/accuracy.py --fresh --markdown benchmarks/sections/accuracy.md

Setup: exact analytic eps of two Gaussian mixtures (`gmm_ring()`, 2-D, 8 components of std 0.1;
`gmm_random(64)`, 64-D, 8 components of std 0.3), DDPM linear schedule (1000 steps, beta 1e-4 ..
0.02), {samples} start states `x_T ~ N(0, I)` (seed {seed}), float64 (diffusers' Euler step
computes in float32 internally: 5e-7 from float64). RMSE over all entries of `x - x_ref`, `x_ref` =
`flowode.reference_solve` (DOP853, rtol = atol = 1e-10) from the run's first noise level to its
last one with the same start noise. NFE = counted model calls; each method runs the largest step
count whose count is <= the budget. Endpoint convention: the headline compares full-range runs
only (from sigma_max, t = 999, to sigma = 0, the last step returning the denoised estimate);
runs that start lower or stop at sigma_min are marked † below. flowode grids: the solver's
default, every built-in spacing, and `optimize_grid` (fitted on a separate {calibration}-sample
calibration batch, {opt_evals} solves, for the {top} best solvers per NFE; the error shown is on
the {samples} evaluation samples). Peers: diffusers {diffusers_version} schedulers with float64
`alphas_cumprod` / sigmas, own default config and `timestep_spacing="trailing"`;
k-diffusion {k_status}, Karras sigmas (rho 7) and flowode's trailing grid.

flowode solvers in this run: {solvers}. Peers get their own grids only (no optimised grid);
flowode's "best built-in spacing" is picked on the evaluation samples, its optimised grid on the
separate calibration batch. Plot (log-log, best full-range grid per method):
`benchmarks/accuracy.png`.
"""


def _preamble(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    try:
        import diffusers

        dv = diffusers.__version__
    except Exception:
        dv = "(not installed)"
    ks = import_k_sampling()
    if ks is None:
        k_status = "(not importable: skipped)"
    else:
        try:
            from importlib.metadata import version

            k_status = version("k-diffusion")
        except Exception:
            k_status = "(version unknown)"
        k_status += " (`k_diffusion.sampling` loaded alone; see `import_k_sampling`)"
    solvers = sorted({r["method"] for r in rows if r["library"] == "flowode" and "rmse" in r})
    return PREAMBLE.format(samples=args.samples, seed=args.seed, calibration=args.calibration,
                           opt_evals=args.opt_evals, top=args.optimize_top or "all", diffusers_version=dv,
                           k_status=k_status, solvers=", ".join(f"`{s}`" for s in solvers) or "-")


def write_report(args: argparse.Namespace) -> None:
    rows = load_rows(args.out)
    nf = [n for n in args.nfe if n in (5, 10, 20, 50)] or args.nfe
    md = [_preamble(args, rows),
          "### Best flowode solver + grid vs best peer (same model, same start noise, same run)\n", table(rows, nf),
          "\n### Per method\n", detail_table(rows, nf), "\n### Skipped / failed\n", failures(rows)]
    text = "\n".join(md) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.plot:
        plot(rows, args.plot)
        print(f"plot -> {args.plot}")


def main(argv: Optional[list[str]] = None) -> None:
    torch.set_default_dtype(torch.float64)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 64 samples, NFE 5 and 10, few solvers")
    p.add_argument("--out", default=None, help="JSON-lines results file (resumable)")
    p.add_argument("--markdown", default=None, help="write the tables here")
    p.add_argument("--plot", default=None, help="log-log plot path")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table / plot from --out")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--calibration", type=int, default=256, help="calibration batch of optimize_grid (own seed)")
    p.add_argument("--opt-evals", type=int, default=300, help="objective evaluations per optimize_grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--solvers", nargs="+", default=None, help="flowode solvers (default: every registered one)")
    p.add_argument("--peers", nargs="+", default=None, help="peer names (diffusers names; k-diffusion as k_<name>)")
    p.add_argument("--no-optimize", action="store_true")
    p.add_argument("--opt-nfe", type=int, nargs="+", default=[5, 10, 20, 50],
                   help="NFE budgets that get an optimised grid")
    p.add_argument("--optimize-top", type=int, default=3,
                   help="optimise grids for the K flowode solvers with the best built-in RMSE per NFE (0: all)")
    p.add_argument("--no-diffusers", action="store_true")
    p.add_argument("--no-k", action="store_true")
    args = p.parse_args(argv)
    out_dir = os.path.join(HERE, "out")
    if args.quick:
        args.samples, args.calibration, args.opt_evals = min(args.samples, 64), 32, 40
        args.nfe = args.opt_nfe = [5, 10]
        args.solvers = args.solvers or [s for s in ("ddim", "heun", "dpm_solver++_2m", "unipc", "dopri5")
                                        if s in flowode.solvers.available()]
        args.peers = args.peers or ["ddim", "dpmsolver++_2m", "heun", "k_euler", "k_dpmpp_2m"]
        args.out = args.out or os.path.join(out_dir, "accuracy_quick.jsonl")
    args.out = args.out or os.path.join(out_dir, "accuracy.jsonl")
    if args.plot is None:
        args.plot = os.path.join(out_dir, "accuracy_quick.png") if args.quick else os.path.join(HERE, "accuracy.png")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.fresh and os.path.exists(args.out) and not args.table_only:
        os.remove(args.out)
    if not args.table_only:
        t0 = time.perf_counter()
        Bench(args).run()
        print(f"benchmark time: {time.perf_counter() - t0:.0f} s")
    write_report(args)


if __name__ == "__main__":
    main()
