"""Empirical convergence orders: the one least-squares fit every report uses, and the measurement of
the registry's order claims (:mod:`flowode.solvers.claims`) on closed-form problems."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["fit_order", "claim_grid", "claim_steps", "OrderProblem", "order_problems", "measure_claim",
           "measure_local_order", "CLAIM_INTERVAL", "UNIFORM_SIGMA_INTERVAL"]


def fit_order(steps: Sequence[float], errors: Sequence[float], tail: Optional[int] = None) -> float:
    """Empirical order ``p`` from ``error ~ C * steps^(-p)`` (``steps``: step counts or NFE): minus the
    least-squares slope of ``log error`` against ``log steps`` over the ``tail`` largest step counts
    (default: all points), where the asymptotic regime is closest. Non-positive, missing and
    non-finite errors are dropped; NaN when fewer than 2 distinct step counts remain."""
    pts = sorted((float(n), float(e)) for n, e in zip(steps, errors)
                 if n is not None and e is not None and n > 0 and e > 0 and math.isfinite(e))
    if tail is not None:
        pts = pts[-tail:]
    if len(pts) < 2:
        return float("nan")
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    if np.ptp(x) == 0:
        return float("nan")
    return float(-np.polyfit(x, y, 1)[0])


# ------------------------------------------------------------------------------------------ claims
#: the interval every order claim is measured on: away from sigma = 0, where the last-step floor
#: (a first-order jump) would hide the solver's own order, and starting where the data's structure
#: is felt (from sigma 10 the field is nearly linear over the first steps, so a warm-up's error has a
#: tiny constant and the order it caps shows only after thousands of steps); grids uniform in sigma
#: on a shorter interval (equal steps in sigma are coarse where sigma is small)
CLAIM_INTERVAL = (2.0, 0.1)
UNIFORM_SIGMA_INTERVAL = (2.0, 0.5)


def claim_grid(grid: str, n: int, rho: float = 7.0) -> Tensor:
    """The ``n``-step test grid of an order claim's grid type (:data:`flowode.solvers.claims.GRIDS`),
    float64, decreasing, ending at a positive level:

    * ``"smooth"``: Karras' rho = 7 spacing on :data:`CLAIM_INTERVAL` (uniform neither in ``sigma``
      nor in ``lambda``);
    * ``"uniform_lambda"``: geometric on :data:`CLAIM_INTERVAL`;
    * ``"uniform_sigma"``: equal steps on :data:`UNIFORM_SIGMA_INTERVAL`;
    * ``"refined_start"``: the ``"smooth"`` grid with 3 extra levels at ``u = 1/n^2, 2/n^2, 3/n^2`` of
      Karras' parameter, so the 3 warm-up steps have length ``~h^2`` (``n + 3`` steps).
    """
    if grid == "uniform_sigma":
        return torch.linspace(*UNIFORM_SIGMA_INTERVAL, n + 1, dtype=torch.float64)
    hi, lo = CLAIM_INTERVAL
    if grid == "uniform_lambda":
        return torch.tensor(np.geomspace(hi, lo, n + 1), dtype=torch.float64)
    if grid not in ("smooth", "refined_start"):
        raise ValueError(f"`grid` must be 'smooth', 'uniform_lambda', 'uniform_sigma' or 'refined_start', "
                         f"got {grid!r}.")
    u = [i / n for i in range(n + 1)]
    if grid == "refined_start":
        u = [0.0] + [j / n**2 for j in (1, 2, 3)] + u[1:]
    a, b = hi ** (1 / rho), lo ** (1 / rho)
    return torch.tensor([(a + v * (b - a)) ** rho for v in u], dtype=torch.float64)


def claim_steps(claim: Any) -> tuple[int, int]:
    """The two step counts a claim is measured at: its ``from_steps`` and twice that."""
    return (claim.from_steps, 2 * claim.from_steps)


class OrderProblem:
    """A closed-form test problem for order claims: data, schedule, start states and the error metric.

    ``exact(x, s0, s1)`` is the flow map (closed form for a Gaussian; a scipy DOP853 solve at
    ``rtol = atol = 1e-13`` for a mixture, cached per interval); ``error(x, ref)`` reduces the
    errors with ``reduce``: ``"max"`` (the largest absolute error of any entry) or ``"rms"`` (root mean
    square over samples and entries: smooth in the step count, where a median of per-sample errors
    jumps between samples whose leading error terms nearly cancel).
    """

    def __init__(self, name: str, data: Any, schedule: Any, x: Tensor, reduce: str) -> None:
        self.name, self.data, self.schedule, self.x, self.reduce = name, data, schedule, x, reduce
        self.model = data.model(schedule)
        self._ref: dict[tuple[float, float], Tensor] = {}

    def exact(self, s0: float, s1: float) -> Tensor:
        key = (float(s0), float(s1))
        if key not in self._ref:
            from .analytic import Gaussian, reference_solve

            if isinstance(self.data, Gaussian):
                self._ref[key] = self.data.flow(self.x, key[0], key[1], self.schedule)
            else:
                self._ref[key] = reference_solve(self.model, self.x, key[0], key[1], rtol=1e-13, atol=1e-13)
        return self._ref[key]

    def error(self, y: Tensor, ref: Tensor) -> float:
        d = y - ref
        return float(d.abs().max() if self.reduce == "max" else d.pow(2).mean().sqrt())


def order_problems() -> dict[str, OrderProblem]:
    """The two problems of tests/test_orders_registry.py and benchmarks/orders_table.py, on the DDPM
    schedule (``DiscreteVPSchedule.linear()``), float64:

    * ``"gaussian"``: the anisotropic Gaussian ``N((0.5, -1, 2), diag(0.3, 1, 2)^2)``, exact flow,
      8 start states, error = max over samples;
    * ``"mixture"``: 3 components in 3-D (std 0.5, means about 6 apart, unequal weights), reference
      solve, 16 held-out start states (another seed), error = RMS over samples and entries.
    """
    from .analytic import Gaussian, GaussianMixture
    from .schedules import DiscreteVPSchedule

    sched = DiscreteVPSchedule.linear()
    gen = torch.Generator().manual_seed
    gauss = Gaussian([0.5, -1.0, 2.0], [0.3, 1.0, 2.0])
    mix = GaussianMixture([[3.0, 1.5, 0.0], [-3.0, 0.0, 1.5], [0.9, -3.6, -1.2]], 0.5, [0.5, 0.3, 0.2])
    return {
        "gaussian": OrderProblem("gaussian", gauss, sched, torch.randn(8, 3, generator=gen(0), dtype=torch.float64),
                                 "max"),
        "mixture": OrderProblem("mixture", mix, sched, torch.randn(16, 3, generator=gen(1), dtype=torch.float64),
                                "rms"),
    }


def measure_claim(solver: str, options: dict[str, Any], claim: Any, problem: OrderProblem,
                  steps: Optional[Sequence[int]] = None) -> tuple[float, list[float]]:
    """The empirical global order of ``solver`` (with ``options``) under ``claim``'s grid type:
    :func:`fit_order` of the errors at ``steps`` (default :func:`claim_steps`) against the exact flow
    over the claim's interval. Returns ``(order, errors)``."""
    from .integrate import integrate

    ns = list(steps) if steps is not None else list(claim_steps(claim))
    errs = []
    for n in ns:
        grid = claim_grid(claim.grid, n)
        ref = problem.exact(float(grid[0]), float(grid[-1]))
        errs.append(problem.error(integrate(problem.model, problem.x, grid, solver=solver, **options).x, ref))
    return fit_order(ns, errs), errs


def measure_local_order(solver: str, problem: OrderProblem, steps: Optional[Sequence[float]] = None,
                        s0: float = 2.0) -> tuple[float, list[float]]:
    """The order ``p`` of the solution an adaptive solver propagates, from its local error ``~ h^(p+1)``:
    one step from ``s0`` to ``s0 exp(-dh)`` for each ``dh`` in ``steps`` (``first_step`` the whole
    interval, tolerances that accept it), in ``sigma`` coordinates where the solver takes them (else
    ``lambda``), against ``problem.exact``; :func:`fit_order` over the two shortest steps, minus 1.
    ``steps`` (in ``log sigma``) default to ``h0, h0/2, h0/4`` with ``h0`` from the claimed order, so
    the errors lie between about 1e-4 and 1e-11 on :func:`order_problems`' mixture (above round-off,
    past the pre-asymptotic range). Returns ``(p, errors)``."""
    from .integrate import integrate
    from .solvers import SOLVERS, SolverError, make
    from .solvers.base import EmbeddedPair

    try:
        make(solver, coordinates="sigma")
        coords = "sigma"
    except SolverError:  # dpm_solver_adaptive: lambda only
        coords = "lambda"
    if steps is None:
        order = make(solver).order_claims()[0].order or 1
        h0 = 0.025 if coords == "lambda" else {2: 0.1, 3: 0.05, 5: 0.1, 8: 0.4}.get(int(order), 0.05)
        steps = [h0, h0 / 2, h0 / 4]
    errs = []
    for dh in steps:
        s1 = s0 * math.exp(-dh)
        h = dh if coords == "lambda" else s0 - s1
        if issubclass(SOLVERS[solver], EmbeddedPair):  # a hair longer: the driver lands on s1 exactly
            h *= 1 + 1e-9
        y = integrate(problem.model, problem.x, [s0, s1], solver=solver, coordinates=coords, first_step=h,
                      rtol=1e3, atol=1e3).x
        errs.append(float((y - problem.exact(s0, s1)).abs().max()))
    return fit_order([1 / h for h in steps], errs, tail=2) - 1, errs
