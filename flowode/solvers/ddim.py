"""DDIM (deterministic and with ``eta``) and DDPM ancestral sampling, written in ``(x0, eps, sigma)``.

With ``alpha = alpha(sigma)``, ``std = alpha * sigma`` and a step from ``sigma`` to ``sigma'``:

* DDIM (Song et al. 2021, eq. 12) with ``sigma_eta^2 = eta^2 std'^2 (1 - sigma'^2 / sigma^2)``
  (their eq. 16 rewritten with ``abar = alpha^2``; for VE schedules it is k-diffusion's
  ancestral ``sigma_up``):

      x' = alpha' x0 + sqrt(std'^2 - sigma_eta^2) eps + sigma_eta z.

  With ``eta = 0`` this is exactly one Euler step of ``d xbar / d sigma = eps`` (DESIGN.md sec. 2).
* DDPM ancestral (Ho et al. 2020, eq. 6-7): posterior mean
  ``alpha' (1 - sigma'^2/sigma^2) x0 + (alpha'/alpha) (sigma'^2/sigma^2) x`` and variance
  ``"small"`` = ``beta_tilde`` (posterior, eq. 7) or ``"large"`` = ``beta`` (the forward variance
  ``alpha^2 (sigma^2 - sigma'^2)`` between the two levels). ``"small"`` equals DDIM with ``eta = 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from ..models import Prediction
from .base import Context, OneStepSolver, SolverError, boundary_step
from .registry import register

__all__ = ["DDIM", "DDPM"]


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
class DDIM(OneStepSolver):
    """DDIM (Song, Meng & Ermon 2021, eq. 12 and 16). Order 1, one evaluation per step.

    Options:
        eta: 0 (default) gives the deterministic ODE step (= Euler in ``(xbar, sigma)``,
            = DPM-Solver-1); ``eta > 0`` the generalised stochastic DDIM; ``eta = 1`` DDPM's
            posterior variance.
    """

    eta: float = 0.0
    name = "ddim"
    order = 1
    nfe_per_step = 1.0
    source = "Song, Meng & Ermon, DDIM, ICLR 2021, eq. 12 (eta in eq. 16)"

    def __post_init__(self) -> None:
        if not (self.eta >= 0 and math.isfinite(self.eta)):
            raise SolverError(f"`eta` must be a finite number >= 0, got {self.eta}.")

    stochastic = _EtaStochastic()  # type: ignore[assignment]

    def check(self, ctx: Context) -> None:
        if self.eta > 0 and not ctx.decreasing:
            raise SolverError("DDIM with `eta` > 0 only samples (decreasing `sigmas`); encode with eta=0.")
        super().check(ctx)

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if self.eta == 0.0 or sigma_next == 0.0:
            return boundary_step(ctx, x, sigma, sigma_next)
        pred = ctx.predict(x, sigma)
        a_next = ctx.alpha(sigma_next)
        std_next = a_next * sigma_next
        s_eta = self.eta * std_next * math.sqrt(max(0.0, 1.0 - _ratio_sq(sigma, sigma_next)))
        if s_eta > std_next:
            raise SolverError(
                f"`eta`={self.eta} makes the DDIM noise ({s_eta:.4g}) exceed the noise level "
                f"({std_next:.4g}) at sigma={sigma_next:.4g}; use eta <= 1."
            )
        mean = pred.x0 * a_next + pred.eps * math.sqrt(std_next**2 - s_eta**2)
        return mean.add(ctx.randn_like(x), alpha=s_eta), pred


@register
@dataclass
class DDPM(OneStepSolver):
    """DDPM ancestral sampling (Ho, Jain & Abbeel 2020, Algorithm 2), order 1 (weak), one
    evaluation per step, on any decreasing grid (the skipped-step posterior of DDIM, eq. 16).

    Options:
        variance: ``"small"`` (posterior ``beta_tilde``, default) or ``"large"`` (``beta``).
    """

    variance: str = "small"
    name = "ddpm"
    order = 1
    nfe_per_step = 1.0
    source = "Ho, Jain & Abbeel, DDPM, NeurIPS 2020, eq. 6-7 and Algorithm 2"
    stochastic = True
    encodes = False

    def __post_init__(self) -> None:
        if self.variance not in ("small", "large"):
            raise SolverError(f"`variance` must be 'small' or 'large', got {self.variance!r}.")

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        pred = ctx.predict(x, sigma)
        if sigma_next == 0.0:
            return pred.x0, pred  # the last step returns the posterior mean, no noise (Algorithm 2)
        a_next = ctx.alpha(sigma_next)
        r2 = _ratio_sq(sigma, sigma_next)
        if math.isinf(sigma):
            mean = pred.x0 * a_next
        else:
            a = ctx.alpha(sigma)
            mean = (pred.x0 * (a_next * (1.0 - r2))).add(x, alpha=(a_next / a) * r2)
        if self.variance == "small":
            var = (a_next * sigma_next) ** 2 * (1.0 - r2)
        else:
            a = ctx.alpha(sigma)
            var = (a * sigma) ** 2 - (a * sigma_next) ** 2 if not math.isinf(sigma) else 1.0
        return mean.add(ctx.randn_like(x), alpha=math.sqrt(max(var, 0.0))), pred
