"""Optimised noise-level grids: the sigma grid that minimises a solver's error for an NFE budget.

Given a model, a calibration batch of start states ``x_T`` (at ``sigma_max``), a solver and an
evaluation budget, :func:`optimize_grid` returns the decreasing grid ``sigma_max = s_0 > s_1 >
... > s_{S-1} >= sigma_min > s_S = 0`` that minimises

    E(grid) = RMSE( integrate(model, x_T, grid, solver).x ,  x_ref ),

where ``x_ref`` is the exact probability-flow endpoint at ``sigma = 0`` of the same start states
(computed once by :func:`~flowode.analytic.reference_solve`, scipy DOP853 at ``rtol = 1e-10``, or
given as ``reference=``). The step count ``S`` is the largest whose grid costs at most ``nfe``
evaluations with the solver (``solver.nfe(grid)``), so the optimised grid costs exactly what a
built-in grid of the same budget costs.

Parameterisation (unconstrained, so any optimiser point is a valid grid). With
``L = log sigma``, ``L_hi = log sigma_max`` and ``L_lo = log sigma_min``:

* the last noisy level: ``L_{S-1} = L_lo + sigmoid(u) (1 - 1e-3) (L_hi - L_lo)``;
* the ``S - 1`` log-sigma decrements between ``s_0`` and ``s_{S-1}``:
  ``d = (L_hi - L_{S-1}) (f + (1 - (S-1) f) softmax(z))`` with a floor ``f = 1e-3 / (S-1)``, so
  the grid is strictly decreasing and stays inside ``[sigma_min, sigma_max]`` by construction;
* when ``S - 1`` exceeds ``max_params - 1``, the logits ``z`` are a piecewise-linear
  interpolation of ``max_params - 1`` knot values over the step index (a smooth warp), which keeps
  derivative-free search tractable at large step counts.

The search starts from the best built-in spacing (each of :data:`INIT_SPACINGS` that the schedule
supports and that starts at ``sigma_max``; ``final="zero"``, the budget's step count) and minimises ``log E`` with a
derivative-free scipy optimiser (``"powell"``, default, or ``"nelder-mead"``). Every step is
deterministic (no random draws), so the same inputs give the same grid. The returned grid is the
better of the start and the optimum, so the calibration error never increases.

Grids save to and load from JSON (:func:`save_grid`, :func:`load_grid`) with floats written as
Python ``repr`` (exact round trip) and metadata (solver, NFE, schedule, calibration errors).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .analytic import reference_solve
from .grids import GridError, check_grid, resolve_grid, sigma_grid
from .integrate import integrate
from .models import EpsilonModel
from .solvers import SolverError, Stepper, make

__all__ = ["optimize_grid", "GridOptimization", "save_grid", "load_grid", "grid_error", "INIT_SPACINGS"]

INIT_SPACINGS = ("logsnr", "karras", "uniform_t", "trailing", "linspace", "quadratic")
METHODS = ("powell", "nelder-mead")
_FORMAT = "flowode.grid"
_VERSION = 1


@dataclass
class GridOptimization:
    """What :func:`optimize_grid` did (``return_info=True``).

    Attributes:
        sigmas: the optimised grid (float64, decreasing, ends at 0).
        solver, nfe, steps: the solver name, the budget and the step count used.
        error_before: calibration RMSE of the best built-in spacing (``init_spacing``).
        error_after: calibration RMSE of the returned grid (``<= error_before``).
        init_errors: calibration RMSE of every built-in spacing tried.
        evaluations: number of objective evaluations (solves of the calibration batch).
    """

    sigmas: Tensor
    solver: str
    nfe: int
    steps: int
    solver_options: dict[str, Any]
    method: str
    init_spacing: str
    init_errors: dict[str, float]
    error_before: float
    error_after: float
    evaluations: int
    calibration_size: int
    schedule: str
    sigma_min: float
    sigma_max: float
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """JSON-ready metadata for :func:`save_grid`."""
        d = asdict(self)
        d.pop("sigmas")
        d.update(d.pop("extra"))
        return d


def grid_error(model: EpsilonModel, x: Tensor, sigmas: Union[Tensor, Sequence[float]], solver: Union[str, Stepper],
               reference: Tensor, **solver_options: Any) -> float:
    """RMSE over every entry of ``integrate(model, x, sigmas, solver).x - reference``."""
    out = integrate(model, x, sigmas, solver, **solver_options).x
    return float(torch.sqrt(torch.mean((out.to(torch.float64) - reference.to(torch.float64)) ** 2)))


class _Param:
    """The map from unconstrained parameters to a valid grid (see the module docstring)."""

    def __init__(self, steps: int, sigma_min: float, sigma_max: float, max_params: int) -> None:
        self.steps = steps
        self.sigma_max = sigma_max
        self.l_lo, self.l_hi = math.log(sigma_min), math.log(sigma_max)
        self.span = (self.l_hi - self.l_lo) * (1 - 1e-3)
        self.n_inc = steps - 1  # log-sigma decrements between s_0 and s_{S-1}
        self.floor = 1e-3 / max(self.n_inc, 1)
        self.n_knots = min(self.n_inc, max(max_params - 1, 2)) if self.n_inc > 1 else 0
        if 0 < self.n_knots < self.n_inc:
            pos = np.linspace(0.0, 1.0, self.n_inc)
            kpos = np.linspace(0.0, 1.0, self.n_knots)
            self.basis = np.stack([np.interp(pos, kpos, np.eye(self.n_knots)[k]) for k in range(self.n_knots)], 1)
        else:
            self.basis = np.eye(self.n_inc) if self.n_inc > 1 else np.zeros((self.n_inc, 0))

    @property
    def size(self) -> int:
        return 1 + self.basis.shape[1]

    def grid(self, theta: np.ndarray) -> Tensor:
        u = float(np.clip(theta[0], -50.0, 50.0))
        l_last = self.l_lo + self.span / (1.0 + math.exp(-u))
        if self.n_inc == 1:
            logs = np.array([self.l_hi, l_last])
        else:
            z = self.basis @ theta[1:]
            w = np.exp(z - z.max())
            w = self.floor + (1.0 - self.n_inc * self.floor) * w / w.sum()
            logs = np.concatenate([[self.l_hi], self.l_hi - np.cumsum(w) * (self.l_hi - l_last)])
            logs[-1] = l_last
        levels = np.exp(logs)
        levels[0] = self.sigma_max  # exactly, not exp(log(sigma_max))
        return torch.tensor(np.concatenate([levels, [0.0]]), dtype=torch.float64)

    def theta(self, sigmas: Tensor) -> np.ndarray:
        """Parameters whose grid is (close to) ``sigmas`` (``steps + 1`` levels ending at 0)."""
        logs = np.log(sigmas[:-1].numpy())
        frac = float(np.clip((logs[-1] - self.l_lo) / self.span, 1e-6, 1 - 1e-6))
        u = math.log(frac / (1 - frac))
        if self.n_inc == 1:
            return np.array([u])
        d = -np.diff(logs)
        w = (d / d.sum() - self.floor) / (1.0 - self.n_inc * self.floor)
        z = np.log(np.maximum(w, 1e-12))
        z = z - z.mean()
        knots = np.linalg.lstsq(self.basis, z, rcond=None)[0]
        return np.concatenate([[u], knots])


def _describe(schedule: Any) -> str:
    try:
        return repr(schedule)
    except Exception:  # pragma: no cover - cosmetic
        return type(schedule).__name__


def optimize_grid(
    model: EpsilonModel,
    x_calibration: Tensor,
    nfe: int = 10,
    solver: Union[str, Stepper] = "dpm_solver++_2m",
    *,
    spacing_init: Optional[Union[str, Sequence[str]]] = None,
    method: str = "powell",
    reference: Optional[Tensor] = None,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    max_params: int = 16,
    max_evals: Optional[int] = None,
    return_info: bool = False,
    verbose: bool = False,
    **solver_options: Any,
) -> Any:
    """The sigma grid that minimises ``solver``'s error on a calibration batch for ``nfe`` evaluations.

    See the module docstring for the objective and the parameterisation.

    Args:
        model: the model (an :class:`~flowode.models.EpsilonModel`; its NFE counter advances).
        x_calibration: start states at ``sigma_max`` (model coordinates, e.g. ``torch.randn``),
            batch first; a few hundred 2-D points or a few dozen images are enough.
        nfe: evaluation budget; the grid's cost ``solver.nfe(grid)`` is ``<= nfe``.
        solver: a registered name (``flowode.solvers.available()``) or a Stepper; fixed-step and
            deterministic (adaptive and stochastic solvers are rejected).
        spacing_init: a built-in spacing (or several) to start from; default: each of
            :data:`INIT_SPACINGS` the schedule supports that starts at ``sigma_max``, keeping the one
            with the smallest error.
        method: ``"powell"`` (default) or ``"nelder-mead"`` (scipy.optimize.minimize).
        reference: exact endpoints at ``sigma = 0`` of ``x_calibration``; default computed by
            :func:`~flowode.analytic.reference_solve` (``rtol = 1e-10``).
        sigma_min, sigma_max: the grid's range (default the schedule's; ``sigma_max`` must be finite).
        max_params: at most this many free parameters (larger step counts use a smooth warp).
        max_evals: objective evaluations allowed (default ``300 * n_params``, at most 4000).
        return_info: also return a :class:`GridOptimization` (errors before / after, metadata).
        verbose: print the errors of the built-in spacings and the result.
        **solver_options: passed to the solver (e.g. ``order=3``).

    Returns:
        The grid (float64 tensor, ``steps + 1`` levels ending at 0), or ``(grid, info)``.

    Raises:
        SolverError: adaptive or stochastic solver; GridError: bad range; ValueError: bad budget.
    """
    from scipy.optimize import minimize

    if not isinstance(model, EpsilonModel):
        raise TypeError(f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}.")
    if not isinstance(x_calibration, Tensor) or x_calibration.dim() < 1 or x_calibration.shape[0] == 0:
        raise ValueError("`x_calibration` must be a tensor of start states with a leading batch dimension.")
    if method.lower() not in METHODS:
        raise ValueError(f"unknown `method` {method!r}; choose one of {', '.join(METHODS)}.")
    if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 2:
        raise ValueError(f"`max_params` must be an integer >= 2, got {max_params!r}.")
    slv = make(solver, **solver_options)
    if slv.adaptive:
        raise SolverError(f"solver {slv.name!r} is adaptive and chooses its own steps; optimise grids for "
                          "fixed-step solvers.")
    if slv.stochastic:
        raise SolverError(f"solver {slv.name!r} is stochastic; the grid is fitted to the deterministic "
                          "probability-flow endpoint, so use an ODE solver (e.g. 'ddim' with eta=0).")
    sched = model.schedule
    smin = sched.sigma_min if sigma_min is None else float(sigma_min)
    smax = sched.sigma_max if sigma_max is None else float(sigma_max)
    if not math.isfinite(smax):
        raise GridError("optimize_grid needs a finite sigma_max (zero-terminal-SNR schedule); pass `sigma_max=`.")
    if not 0 < smin < smax:
        raise GridError(f"need 0 < sigma_min < sigma_max, got sigma_min={smin}, sigma_max={smax}.")

    if spacing_init is None:
        spacings = list(INIT_SPACINGS)
        if slv.default_spacing and slv.default_spacing not in spacings:
            spacings.append(slv.default_spacing)
    else:
        spacings = [spacing_init] if isinstance(spacing_init, str) else list(spacing_init)

    x = x_calibration
    if reference is None:
        reference = reference_solve(model, x, smax, 0.0)
    if reference.shape != x.shape:
        raise ValueError(f"`reference` has shape {tuple(reference.shape)}, expected {tuple(x.shape)}.")

    def builtin(spacing: str, steps: int) -> Tensor:
        g = sigma_grid(sched, steps, spacing, sigma_min=sigma_min, sigma_max=sigma_max)
        if abs(float(g[0]) - smax) > 1e-9 * smax:  # discrete spacings may start below sigma_max
            raise GridError(f"spacing {spacing!r} does not start at sigma_max")
        return g

    # the step count of the budget (the same for every spacing that ends at 0 from a finite sigma_max)
    steps = len(resolve_grid(sched, slv, nfe=nfe, spacing="logsnr", sigma_min=smin, sigma_max=smax)) - 1

    n_evals = 0

    def error(g: Tensor) -> float:
        nonlocal n_evals
        n_evals += 1
        try:
            e = grid_error(model, x, g, slv, reference)
        except (GridError, SolverError, ValueError, RuntimeError):
            return math.inf
        return e if math.isfinite(e) else math.inf

    init_errors: dict[str, float] = {}
    init_grids: dict[str, Tensor] = {}
    for sp in spacings:
        try:
            g = builtin(sp, steps)
        except GridError:
            continue
        if slv.nfe([float(v) for v in g.tolist()]) > nfe:
            continue
        init_grids[sp] = g
        init_errors[sp] = error(g)
    if not init_errors:
        raise GridError(f"none of the spacings {spacings} gives a grid of {steps} steps on this schedule.")
    best_sp = min(init_errors, key=lambda k: init_errors[k])
    g0, e0 = init_grids[best_sp], init_errors[best_sp]
    if verbose:
        print(f"optimize_grid: {slv.name}, nfe={nfe}, steps={steps}; built-in RMSE "
              + ", ".join(f"{k}={v:.3e}" for k, v in init_errors.items()))

    best_g, best_e = g0, e0
    extra: dict[str, Any] = {}
    if steps >= 2:
        par = _Param(steps, smin, smax, max_params)
        theta0 = par.theta(g0)
        budget = max_evals if max_evals is not None else min(300 * par.size, 4000)

        def objective(theta: np.ndarray) -> float:
            e = error(par.grid(theta))
            return math.log(e) if 0 < e < math.inf else (1e3 if e == math.inf else -1e3)

        opts: dict[str, Any] = {"maxfev": int(budget), "xtol": 1e-4, "ftol": 1e-6}
        if method.lower() == "nelder-mead":
            opts = {"maxfev": int(budget), "xatol": 1e-4, "fatol": 1e-6, "adaptive": True}
        res = minimize(objective, theta0, method="Powell" if method.lower() == "powell" else "Nelder-Mead",
                       options=opts)
        g1 = par.grid(res.x)
        e1 = error(g1)
        extra = {"optimizer_message": str(res.message), "n_params": par.size}
        if e1 < best_e:
            best_g, best_e = g1, e1
    best_g = check_grid(best_g, sched)
    if verbose:
        print(f"optimize_grid: RMSE {e0:.3e} ({best_sp}) -> {best_e:.3e} after {n_evals} solves")
    if not return_info:
        return best_g
    info = GridOptimization(
        sigmas=best_g, solver=slv.name, nfe=int(slv.nfe([float(v) for v in best_g.tolist()])), steps=steps,
        solver_options=dict(solver_options), method=method.lower(), init_spacing=best_sp,
        init_errors=init_errors, error_before=e0, error_after=best_e, evaluations=n_evals,
        calibration_size=int(x.shape[0]), schedule=_describe(sched), sigma_min=smin, sigma_max=smax,
        extra=extra,
    )
    return best_g, info


# ------------------------------------------------------------------------------------- JSON
def _encode_float(v: float) -> Union[float, str]:
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def _decode_float(v: Union[float, int, str]) -> float:
    return float(v)


def save_grid(path: Union[str, os.PathLike], sigmas: Union[Tensor, Sequence[float]],
              meta: Optional[Union[dict[str, Any], GridOptimization]] = None) -> None:
    """Write a grid and its metadata to a JSON file.

    Format: ``{"format": "flowode.grid", "version": 1, "sigmas": [...], "meta": {...}}``; the
    sigmas are written with Python's shortest exact float repr (``inf`` as the string ``"inf"``),
    so :func:`load_grid` returns the identical float64 values.
    """
    s = check_grid(sigmas)
    if isinstance(meta, GridOptimization):
        meta = meta.meta()
    doc = {"format": _FORMAT, "version": _VERSION, "sigmas": [_encode_float(v) for v in s.tolist()],
           "meta": meta or {}}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str, allow_nan=False)
        f.write("\n")


def load_grid(path: Union[str, os.PathLike], *, schedule: Any = None, return_meta: bool = False) -> Any:
    """Read a grid written by :func:`save_grid`.

    Args:
        path: the JSON file.
        schedule: optional; check the grid lies in its noise range.
        return_meta: also return the metadata dict.

    Returns:
        The float64 grid (plugs into :func:`~flowode.integrate.integrate` unchanged), or
        ``(grid, meta)``.
    """
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or "sigmas" not in doc:
        raise ValueError(f"{os.fspath(path)!r} is not a flowode grid file (expected format {_FORMAT!r}).")
    if int(doc.get("version", 0)) > _VERSION:
        raise ValueError(f"{os.fspath(path)!r} has grid format version {doc['version']}; this flowode reads "
                         f"version {_VERSION}. Upgrade flowode.")
    sig = check_grid(torch.tensor([_decode_float(v) for v in doc["sigmas"]], dtype=torch.float64), schedule)
    return (sig, dict(doc.get("meta", {}))) if return_meta else sig
