"""Single-step exponential integrators: DPM-Solver-1/2/3 (noise prediction) and DPM-Solver++(2S)
(data prediction). Each is a stepper without state; the updates are :mod:`.updates`.

Steps that touch ``sigma = 0`` or start at ``sigma = inf`` (infinite ``h``) are the DDIM step of the
boundary policy; for the data-prediction solvers that equals their own first-order step there
(``x0_hat(x_s)`` at ``sigma_t = 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from ..base import Step, Stepper, check_fraction
from ..claims import OrderClaim
from ..registry import register
from .updates import data_first_order, dpm_solver_2_update, dpm_solver_3_update, dpmpp_2s_update, noise_first_order

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["DPMSolver1", "DPMSolver2", "DPMSolver3", "DPMSolverPP2S"]


class _LogSNRStepper(Stepper):
    """Single-step exponential integrators take log-SNR-uniform grids by default."""

    default_spacing = "logsnr"


class _TwoStage(_LogSNRStepper):
    """Order 2 with one intermediate point at a fraction of the step in ``lambda``: the option named
    by ``fraction`` (``r1`` of DPM-Solver-2, ``r`` of DPM-Solver++(2S)), in ``(0, 1]``, default 1/2."""

    order = 2
    nfe_per_step = 2.0
    fraction: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fraction(self.name, self.fraction, getattr(self, self.fraction))

    def order_claims(self) -> tuple[OrderClaim, ...]:
        return (OrderClaim(2, conditions=(f"any `{self.fraction}` in (0, 1]",)),)


@register
@dataclass
class DPMSolver1(_LogSNRStepper):
    """DPM-Solver-1 (Lu et al. 2022, NeurIPS, eq. 3.7), order 1, one evaluation per step:
    ``x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s``. Mathematically identical to DDIM
    (eta = 0); written in exponential-integrator form."""

    name = "dpm_solver_1"
    source = "Lu et al., DPM-Solver, NeurIPS 2022, eq. 3.7 (DPM-Solver-1 = DDIM)"

    def order_claims(self) -> tuple[OrderClaim, ...]:
        return (OrderClaim(1),)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        return Step(noise_first_order(run.alpha, x, sigma, sigma_next, pred.eps), None, pred)


@register
@dataclass
class DPMSolver2(_TwoStage):
    """DPM-Solver-2 (Lu et al. 2022, NeurIPS, Algorithm 1), order 2, two evaluations per step.

    With ``lambda_u = lambda_s + r1 h``::

        u   = (alpha_u/alpha_s) x_s - std_u expm1(r1 h) eps_s
        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - std_t/(2 r1) expm1(h) (eps(u) - eps_s)

    Option ``r1``: the intermediate point's position in the step (see the base class).
    """

    r1: float = 0.5
    name = "dpm_solver_2"
    source = "Lu et al., DPM-Solver, NeurIPS 2022, Algorithm 1 (DPM-Solver-2)"
    fraction = "r1"

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        s, t = sigma, sigma_next
        h = math.log(s / t)
        su = s * math.exp(-self.r1 * h)
        pred = run.predict(x, s)
        u = noise_first_order(run.alpha, x, s, su, pred.eps)
        eps_u = run.predict(u, su).eps
        return Step(dpm_solver_2_update(run.alpha, x, s, t, pred.eps, eps_u, self.r1), None, pred)


@register
@dataclass
class DPMSolver3(_LogSNRStepper):
    """DPM-Solver-3 (Lu et al. 2022, NeurIPS, Algorithm 2), order 3, three evaluations per step.

    With ``lambda_{s_k} = lambda_s + r_k h`` (``r1 = 1/3``, ``r2 = 2/3``)::

        u1  = (alpha_1/alpha_s) x_s - std_1 expm1(r1 h) eps_s
        D1  = eps(u1) - eps_s
        u2  = (alpha_2/alpha_s) x_s - std_2 expm1(r2 h) eps_s - std_2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
        D2  = eps(u2) - eps_s
        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - (std_t/r2) (expm1(h)/h - 1) D2
    """

    name = "dpm_solver_3"
    order = 3
    nfe_per_step = 3.0
    source = "Lu et al., DPM-Solver, NeurIPS 2022, Algorithm 2 (DPM-Solver-3), r1=1/3, r2=2/3"
    r1 = 1.0 / 3.0
    r2 = 2.0 / 3.0

    def order_claims(self) -> tuple[OrderClaim, ...]:
        return (OrderClaim(3),)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        out, _ = dpm_solver_3_update(run.alpha, x, sigma, sigma_next, pred.eps, lambda u, su: run.predict(u, su).eps,
                                     self.r1, self.r2)
        return Step(out, None, pred)


@register
@dataclass
class DPMSolverPP2S(_TwoStage):
    """DPM-Solver++(2S) (Lu et al. 2022b, arXiv 2211.01095, Algorithm 1), order 2, two evaluations
    per step, data prediction. With ``lambda_u = lambda_s + r h``::

        u   = (std_u/std_s) x_s - alpha_u expm1(-r h) x0_s
        D   = (1 - 1/(2r)) x0_s + 1/(2r) x0(u)
        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D

    The option ``r`` places the intermediate point; a step to ``sigma = 0`` is the boundary step.
    """

    r: float = 0.5
    name = "dpm_solver++_2s"
    source = "Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 1 (DPM-Solver++(2S)), r=1/2"
    fraction = "r"

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        s, t = sigma, sigma_next
        h = math.log(s / t)
        su = s * math.exp(-self.r * h)
        u = data_first_order(run.alpha, x, s, su, pred.x0)
        x0_u = run.predict(u, su).x0
        return Step(dpmpp_2s_update(run.alpha, x, s, t, pred.x0, x0_u, self.r), None, pred)
