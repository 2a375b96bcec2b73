"""DPM-Solver++ multistep (2M, 3M): one evaluation per step, the history of x0 predictions as the
solver state (lower orders while it fills: the warm-up), the update :func:`.updates.dpmpp_multistep_update`.

A step from ``sigma = inf`` or ``0`` is the boundary DDIM step and the history restarts after it
(a history never holds a point with infinite ``lambda``); the step to ``sigma = 0`` is first order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ...schedules import sigma_to_lambda
from ..base import Step, Stepper, check_choice
from ..claims import LOWER_ORDER_FINAL_15, WARMUP_LOWER, OrderClaim
from ..registry import register
from .updates import dpmpp_multistep_update, multistep_order

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["DPMSolverPP2M", "DPMSolverPP3M"]


@dataclass
class _DPMSolverPPMultistep(Stepper):
    """DPM-Solver++ multistep: one evaluation per step, lower orders while warming up.

    Options:
        lower_order_final: as diffusers' ``DPMSolverMultistepScheduler(lower_order_final=True)``:
            on grids of fewer than 15 steps the last step is first order and the one before at most
            second order. (The step to ``sigma = 0`` is always first order.)
    """

    lower_order_final: bool = True
    multistep = True
    nfe_per_step = 1.0
    default_spacing = "logsnr"
    max_order: ClassVar[int] = 2

    @property
    def _coefficients(self) -> str:
        return "taylor"

    def _lof(self) -> tuple[str, ...]:
        return (LOWER_ORDER_FINAL_15,) if self.lower_order_final else ()

    def init(self, run: "Run") -> Any:
        return ()  # the history: (lambda, x0) pairs, newest last

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        hist = (tuple(state) + ((float(sigma_to_lambda(sigma)), pred.x0),))[-self.max_order:]
        p = multistep_order(self.max_order, len(hist), run.step, run.num_steps, sigma_next,
                            self.lower_order_final, "dpm")
        x_next = dpmpp_multistep_update(run.alpha, x, sigma, sigma_next, hist[-p:], self._coefficients)
        return Step(x_next, hist, pred, None, {"orders": p})


@register
@dataclass
class DPMSolverPP2M(_DPMSolverPPMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, arXiv 2211.01095, Algorithm 2), order 2, one evaluation per
    step (the first step is first order)::

        r   = h_prev / h
        D   = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev
        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D
    """

    name = "dpm_solver++_2m"
    order = 2
    source = "Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 2 (DPM-Solver++(2M))"
    max_order = 2

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """Second order: the first-order first step's ``O(h^2)`` local error does not lower it."""
        return (OrderClaim(2, conditions=self._lof()),)


@register
@dataclass
class DPMSolverPP3M(_DPMSolverPPMultistep):
    """DPM-Solver++(3M), one evaluation per step (two warm-up steps of orders 1 and 2); the update
    is :func:`~.updates.dpmpp_multistep_update` with three history points.

    Options:
        coefficients: ``"taylor"`` (default): the exact exponential integral of the quadratic
            through the last three x0 predictions -- third order. ``"reference"``: the update of
            Lu et al.'s reference code (``multistep_dpm_solver_third_update``), which diffusers'
            ``DPMSolverMultistepScheduler(solver_order=3)`` copies; its ``p''`` coefficient is half
            the Taylor one, so it is a second-order method (use it to reproduce the peers' numbers).
        lower_order_final: see the base class.

    Note: the first-order warm-up step has local error ``O(h^2)``, so on a uniform grid any 3M
    method is second order as ``h -> 0``; the third order shows once the warm-up steps are short.
    """

    coefficients: str = "taylor"

    name = "dpm_solver++_3m"
    order = 3
    source = ("Lu et al., DPM-Solver++, arXiv 2211.01095, multistep order-3 Taylor form; coefficients='reference': "
              "the 3M update of the reference code (= diffusers DPMSolverMultistepScheduler solver_order=3)")
    max_order = 3

    def __post_init__(self) -> None:
        check_choice(self.name, "coefficients", self.coefficients, ("taylor", "reference"))

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """Second order as registered (the warm-up's first-order step); the Taylor coefficients are
        third order once the warm-up steps are short; the reference coefficients never are."""
        if self.coefficients == "reference":
            return (OrderClaim(2, conditions=self._lof(), note="coefficients='reference': its p'' coefficient is "
                               "half the Taylor one, so it is second order also with an accurate warm-up"),)
        return (OrderClaim(2, conditions=(WARMUP_LOWER,) + self._lof(), nominal=3, reach="a refined start"),
                OrderClaim(3, grid="refined_start", conditions=self._lof()))

    @property
    def _coefficients(self) -> str:
        return self.coefficients
