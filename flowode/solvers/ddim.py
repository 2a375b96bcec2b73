"""DDIM (deterministic and with ``eta``) and DDPM ancestral sampling, written in ``(x0, eps, sigma)``.

With ``alpha = alpha(sigma)``, ``std = alpha * sigma`` and a step from ``sigma`` to ``sigma'``:

* DDIM (Song et al. 2021, eq. 12) with ``sigma_eta^2 = eta^2 std'^2 (1 - sigma'^2 / sigma^2)``
  (their eq. 16 rewritten with ``abar = alpha^2``; for VE schedules it is k-diffusion's
  ancestral ``sigma_up``):

      x' = alpha' x0 + sqrt(std'^2 - sigma_eta^2) eps + sigma_eta z.

  With ``eta = 0`` this is exactly one Euler step of ``d xbar / d sigma = eps`` (DESIGN.md sec. 2):
  ``x' = A x + B eps`` with ``A = alpha'/alpha``, ``B = alpha' (sigma' - sigma)``
  (:func:`ddim_coefficients`, the one copy of the DDIM step; the boundary policy, PLMS's transfer
  part, BDIA and EDICT all use it).
* DDPM ancestral (Ho et al. 2020, eq. 6-7): posterior mean
  ``alpha' (1 - sigma'^2/sigma^2) x0 + (alpha'/alpha) (sigma'^2/sigma^2) x`` and variance
  ``"small"`` = ``beta_tilde`` (posterior, eq. 7) or ``"large"`` = ``beta`` (the forward variance
  ``alpha^2 (sigma^2 - sigma'^2)`` between the two levels). ``"small"`` equals DDIM with ``eta = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from ..models import Prediction
from .base import SolverError, Step, Stepper, check_choice
from .claims import OrderClaim
from .registry import register

if TYPE_CHECKING:  # pragma: no cover
    from .boundary import Boundary
    from .run import Run

__all__ = ["DDIM", "DDPM", "ddim_coefficients", "ddim_transfer", "ddim_update", "ddim_eta_update"]


def ddim_coefficients(alpha: float, alpha_next: float, sigma: float, sigma_next: float) -> tuple[float, float]:
    """``(A, B)`` with ``DDIM(x; sigma -> sigma') = A x + B eps``: ``A = alpha'/alpha``,
    ``B = alpha' (sigma' - sigma)`` (Song et al. 2021, eq. 12 with eta = 0, in the ``(xbar, sigma)``
    form of DESIGN.md sec. 2). Valid in either direction and at ``sigma' = 0`` (``alpha(0) = 1``:
    ``A = 1/alpha``, ``B = -sigma``, the denoised estimate); ``sigma`` finite and positive."""
    return alpha_next / alpha, alpha_next * (sigma_next - sigma)


def ddim_transfer(x: Tensor, eps: Tensor, alpha: float, alpha_next: float, sigma: float, sigma_next: float) -> Tensor:
    """The DDIM step ``A x + B eps`` with a given noise estimate ``eps`` (one fused kernel)."""
    a, b = ddim_coefficients(alpha, alpha_next, sigma, sigma_next)
    return torch.add(x * a, eps, alpha=b)


def ddim_update(x: Tensor, pred: Prediction, sigma: float, sigma_next: float,
                alpha_of: Callable[[float], float]) -> Tensor:
    """The DDIM step ``x' = alpha' (x0_hat + sigma' eps_hat)`` from the prediction at ``(x, sigma)``,
    written so that it also holds when ``sigma = inf`` (zero terminal SNR), ``sigma' = 0`` (returns
    the denoised estimate) and ``sigma = 0`` (the first step of an encode)."""
    if sigma_next == 0.0:
        return pred.x0
    a_next = alpha_of(sigma_next)
    if math.isinf(sigma) or sigma == 0.0:
        return (pred.x0 + sigma_next * pred.eps) * a_next
    return ddim_transfer(x, pred.eps, alpha_of(sigma), a_next, sigma, sigma_next)


def _ratio_sq(sigma: float, sigma_next: float) -> float:
    """``(sigma'/sigma)^2``, 0 when ``sigma = inf``."""
    return 0.0 if math.isinf(sigma) else (sigma_next / sigma) ** 2


class _EtaStochastic:
    """``DDIM.stochastic``: ``eta > 0`` on an instance, ``False`` on the class (the default
    ``eta = 0``). A plain property made ``SOLVERS["ddim"].stochastic`` a truthy property object, so
    filtering the registry by ``cls.stochastic`` dropped DDIM from the deterministic solvers."""

    def __get__(self, obj: Optional["DDIM"], cls: Optional[type] = None) -> bool:
        return False if obj is None else obj.eta > 0


@register
@dataclass
class DDIM(Stepper):
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16). Order 1, one evaluation per step.

    Options:
        eta: 0 (default) gives the deterministic ODE step (= Euler in ``(xbar, sigma)``,
            = DPM-Solver-1); ``eta > 0`` the generalised stochastic DDIM; ``eta = 1`` DDPM's
            posterior variance.
    """

    eta: float = 0.0
    name = "ddim"
    source = "Song, Meng & Ermon, DDIM, ICLR 2021, eq. 12 (eta in eq. 16)"
    strong_order = 1.0  # eta > 0: the reverse SDE dxbar = -(1 + eta^2)/2 score dv + eta dW_v (docs/stochastic.md)
    weak_order = 1.0
    s_noise = 1.0  # not an option of DDIM; Euler ancestral's

    def __post_init__(self) -> None:
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not (
                self.eta >= 0 and math.isfinite(self.eta)):
            raise SolverError(f"`eta` must be a finite number >= 0, got {self.eta!r}.")

    stochastic = _EtaStochastic()  # type: ignore[assignment]

    def native(self, kind: "Boundary") -> bool:
        return True  # the boundary step is the DDIM step

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """``eta = 0``: first order (it is Euler in ``(xbar, sigma)``); ``eta > 0``: the strong and weak
        orders of the reverse SDE it discretises."""
        if self.eta > 0:
            return super().order_claims()
        return (OrderClaim(1, conditions=("eta = 0",)),)

    def check(self, run: "Run") -> None:
        if self.eta > 0 and not run.decreasing:
            raise SolverError("DDIM with `eta` > 0 only samples (decreasing `sigmas`); encode with eta=0.")
        super().check(run)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        if self.eta == 0.0 or sigma_next == 0.0:
            return Step(ddim_update(x, pred, sigma, sigma_next, run.alpha), None, pred)
        return Step(ddim_eta_update(run, x, pred, sigma, sigma_next, self.eta, self.s_noise), None, pred)


def ddim_eta_update(run: "Run", x: Tensor, pred: Prediction, sigma: float, sigma_next: float, eta: float,
                    s_noise: float = 1.0) -> Tensor:
    """The stochastic DDIM step (eq. 12 with ``sigma_eta`` of eq. 16), ``sigma' > 0``: the mean
    ``alpha' x0 + sqrt(std'^2 - sigma_eta^2) eps`` plus ``s_noise * sigma_eta`` times the
    normalised Brownian increment of the step (:meth:`~flowode.solvers.run.Run.brownian`). In
    ``xbar`` this is k-diffusion's Euler ancestral step: an Euler step to ``sigma_down`` plus
    ``sigma_up`` noise (``sigma_eta = alpha' sigma_up``)."""
    a_next = run.alpha(sigma_next)
    std_next = a_next * sigma_next
    s_eta = eta * std_next * math.sqrt(max(0.0, 1.0 - _ratio_sq(sigma, sigma_next)))
    if s_eta > std_next:
        raise SolverError(
            f"`eta`={eta} makes the DDIM noise ({s_eta:.4g}) exceed the noise level "
            f"({std_next:.4g}) at sigma={sigma_next:.4g}; use eta <= 1."
        )
    mean = pred.x0 * a_next + pred.eps * math.sqrt(std_next**2 - s_eta**2)
    return mean.add(run.brownian(x, sigma, sigma_next), alpha=s_eta * s_noise)


@register
@dataclass
class DDPM(Stepper):
    """DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Algorithm 2), order 1 (weak), one
    evaluation per step, on any decreasing grid (the skipped-step posterior of DDIM, eq. 16).

    Options:
        variance: ``"small"`` (posterior ``beta_tilde``, default) or ``"large"`` (``beta``).
    """

    variance: str = "small"
    name = "ddpm"
    source = "Ho, Jain & Abbeel, DDPM, NeurIPS 2020, eq. 6-7 and Algorithm 2"
    stochastic = True
    encodes = False
    strong_order = 1.0
    weak_order = 1.0

    def __post_init__(self) -> None:
        check_choice(self.name, "variance", self.variance, ("small", "large"))

    def native(self, kind: "Boundary") -> bool:
        return True  # the posterior mean has the limits: x0 at sigma' = 0, alpha' x0 from sigma = inf

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        if sigma_next == 0.0:
            return Step(pred.x0, None, pred)  # the last step returns the posterior mean, no noise (Algorithm 2)
        a_next = run.alpha(sigma_next)
        r2 = _ratio_sq(sigma, sigma_next)
        if math.isinf(sigma):
            mean = pred.x0 * a_next
        else:
            a = run.alpha(sigma)
            mean = (pred.x0 * (a_next * (1.0 - r2))).add(x, alpha=(a_next / a) * r2)
        if self.variance == "small":
            var = (a_next * sigma_next) ** 2 * (1.0 - r2)
        else:
            a = run.alpha(sigma)
            var = (a * sigma) ** 2 - (a * sigma_next) ** 2 if not math.isinf(sigma) else 1.0
        z = run.randn_like(x) if math.isinf(sigma) else run.brownian(x, sigma, sigma_next)
        return Step(mean.add(z, alpha=math.sqrt(max(var, 0.0))), None, pred)
