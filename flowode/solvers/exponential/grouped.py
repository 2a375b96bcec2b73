"""Singlestep DPM-Solver / DPM-Solver++ whose intermediate points are the grid's own levels
(diffusers' ``DPMSolverSinglestepScheduler``, Lu et al.'s ``dpm_solver_pytorch.py`` singlestep mode).

The grid's steps are grouped (:func:`.updates.singlestep_orders`): a group of ``k`` consecutive steps
``s = sigma_i > sigma_{i+1} > .. > sigma_{i+k}`` is one order-``k`` singlestep step from ``s`` to
``sigma_{i+k}`` whose intermediate points are the levels in between. Each grid step evaluates the
network once, at the state the lower-order update of the group reached there, and moves on with an
update *from the group's start*:

* position 1: first order (DDIM) from ``s`` to ``sigma_{i+1}``;
* position 2: the order-2 update from ``s`` through ``sigma_{i+1}`` (``r = (lambda_{i+1} - lambda_s) / h``):
  DPM-Solver-2 (Lu et al. 2022, Algorithm 1) or DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1);
* position 3: the last line of DPM-Solver-3 (Lu et al. 2022, Algorithm 2) from the evaluations at ``s``
  and ``sigma_{i+2}`` (``r2 = (lambda_{i+2} - lambda_s) / h``), or its data-prediction form.

These are the "midpoint" updates of diffusers and of the reference code; ``solver_type="heun"`` takes
the Taylor form through all of the group's points instead. With ``"midpoint"`` the
order-3 groups are third order when the group's levels are at 1/3 and 2/3 of the group in ``lambda``
(DPM-Solver-3's ``r1, r2``), or tend to those fractions as the grid refines (a ``logsnr`` grid, any
smooth grid: measured 3.01 data / 2.94 noise in tests/test_singlestep_grouped.py); at other fixed
fractions they are second order, and ``"heun"`` order-3 groups are second order at any fractions (the
same file). Their error need not fall monotonically with the step count (on a ``trailing``
zero-terminal-SNR grid it depends on how the groups fall: measured 1.3e-4 at 128 steps, 1.5e-4 at 256,
3.4e-5 at 512), which is why the default is ``solver_order=2``, as diffusers'. The formulas are
those of :mod:`.updates`; this file holds only the grouping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ...schedules import sigma_to_lambda
from ..base import Step, Stepper, check_choice
from ..claims import OrderClaim
from ..registry import register
from .updates import (
    data_first_order,
    dpm_solver_2_update,
    dpm_solver_3_final,
    dpmpp_2s_update,
    dpmpp_3s_final,
    noise_first_order,
    singlestep_orders,
    singlestep_taylor_update,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["DPMSolverGrouped"]

ALGORITHMS = ("dpmsolver++", "dpmsolver")


@register
@dataclass
class DPMSolverGrouped(Stepper):
    """Singlestep DPM-Solver(++) with the grid's levels as intermediate points; one evaluation per step.

    Options:
        solver_order: 1, 2 or 3, the largest group (default 2, as diffusers; its name).
        algorithm: ``"dpmsolver++"`` (data prediction, default) or ``"dpmsolver"`` (noise prediction).
        lower_order_final: group as diffusers' ``get_order_list`` with ``lower_order_final=True``
            (default; the last group is shortened); ``False``: groups of ``order`` and a shorter last one.
        solver_type: ``"midpoint"`` (default; the updates above) or ``"heun"``: the Taylor form with the
            derivatives from divided differences of all the group's points
            (:func:`.updates.singlestep_taylor_update`; diffusers' ``solver_type="heun"``).

    The solver state is the group: its start state and level and the ``(sigma, prediction)`` points
    evaluated in it. ``stats["orders"]`` lists each step's position in its group. A step to
    ``sigma = 0`` is the driver's boundary step (the denoised estimate at the current state), as
    diffusers' last first-order step with ``final_sigmas_type="zero"``.
    """

    solver_order: int = 2
    algorithm: str = "dpmsolver++"
    lower_order_final: bool = True
    solver_type: str = "midpoint"

    name = "dpm_solver_singlestep"
    order = 2  # of the default solver_order=2; solver_order=3 is third order on logsnr grids
    multistep = True
    nfe_per_step = 1.0
    default_spacing = "logsnr"
    source = ("Lu et al. 2022 (DPM-Solver, Algorithms 1-2) and 2022b (DPM-Solver++), singlestep with the grid's "
              "levels as intermediate points (= diffusers DPMSolverSinglestepScheduler, solver_type='midpoint')")

    def __post_init__(self) -> None:
        check_choice(self.name, "solver_order", self.solver_order, (1, 2, 3))
        check_choice(self.name, "algorithm", self.algorithm, ALGORITHMS)
        check_choice(self.name, "lower_order_final", self.lower_order_final, (True, False))
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """Order ``solver_order`` up to 2; order-3 groups are third order on smooth grids (whose groups'
        levels tend to 1/3 and 2/3 in lambda) with ``lower_order_final=False`` (the default shortens the
        last group to one first-order step, local error ``O(h^2)``) and a step count that is a multiple
        of 3 -- measured for both ``solver_type`` s (tests/test_orders_registry.py; at fixed fractions
        0.2 / 0.5 both are second order, tests/test_singlestep_grouped.py)."""
        if self.solver_order < 3:
            return (OrderClaim(self.solver_order),)
        if self.lower_order_final:
            return (OrderClaim(2, conditions=("lower_order_final=True: the last group is one first-order step",),
                               nominal=3, reach="lower_order_final=False and a step count that is a multiple of 3"),)
        return (OrderClaim(3, conditions=("a step count that is a multiple of 3 (a shorter last group is of lower "
                                          "order)",), from_steps=96),)

    def init(self, run: "Run") -> Any:
        return None  # no group open

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        # the groups start after a boundary step from sigma = inf or 0 (the driver's DDIM step)
        skip = 1 if run.grid[0] in (0.0, math.inf) else 0
        plan = singlestep_orders(self.solver_order, run.num_steps - skip, self.lower_order_final,
                                 run.grid[-1] == 0.0)
        pred = run.predict(x, sigma)
        m = pred.x0 if self.algorithm == "dpmsolver++" else pred.eps
        p = plan[run.step - skip]
        points: tuple[tuple[float, Tensor], ...]
        if p == 1 or state is None:  # a new group starts here
            start, s, points = x, sigma, ((sigma, m),)
        else:  # the group's start and its earlier points (fewer after a restart: a lower order)
            start, s, earlier = state
            points = tuple(earlier[-(p - 1):]) + ((sigma, m),)
        p = len(points)
        data = self.algorithm == "dpmsolver++"
        ms = [pt[1] for pt in points]
        if p == 1:
            out = (data_first_order if data else noise_first_order)(run.alpha, start, s, sigma_next, m)
        else:
            lam_s, h = float(sigma_to_lambda(s)), float(sigma_to_lambda(sigma_next) - sigma_to_lambda(s))
            rs = [(float(sigma_to_lambda(v)) - lam_s) / h for v, _ in points[1:]]
            if self.solver_type == "heun":
                out = singlestep_taylor_update(run.alpha, start, s, sigma_next, ms, rs, data)
            elif p == 2:
                out = (dpmpp_2s_update if data else dpm_solver_2_update)(run.alpha, start, s, sigma_next,
                                                                         ms[0], ms[1], rs[0])
            else:
                out = (dpmpp_3s_final if data else dpm_solver_3_final)(run.alpha, start, s, sigma_next,
                                                                       ms[0], ms[2], rs[1])
        return Step(out, (start, s, points), pred, None, {"orders": p})
