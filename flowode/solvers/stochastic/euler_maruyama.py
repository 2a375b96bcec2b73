"""Euler-Maruyama for the reverse SDE (Song et al. 2021, score SDE, eq. 6), in variance time.

Every Gaussian path ``x = alpha (x0 + sigma eps)`` has the forward SDE ``d xbar = dW_v`` in
``xbar = x / alpha`` and the variance time ``v = sigma^2`` (for VP: ``d(sigma^2) = beta / alpha^2 dt``,
so this is the VP SDE ``dx = -beta/2 x dt + sqrt(beta) dW`` rewritten). Its reverse-time SDE is
``d xbar = -score dv + dW_v`` with ``score = -eps / sigma`` (Anderson 1982; Song et al. eq. 6), and
one Euler-Maruyama step from ``v`` down to ``v' = sigma'^2`` is

    xbar' = xbar - (v - v') eps / sigma + sqrt(v - v') z,

``z`` the normalised Brownian increment of the step. Additive noise, so strong order 1 and weak
order 1 (Kloeden & Platen 1992, sec. 10.2 and 14.1). Score-SDE's own predictor takes the step in
the schedule's native time; flowode's steppers see only ``sigma``, and ``v`` is the time in which the
SDE is the same for every schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..base import Step, Stepper
from ..registry import register

if TYPE_CHECKING:  # pragma: no cover
    from ..boundary import Boundary
    from ..run import Run

__all__ = ["EulerMaruyama"]


@register
@dataclass
class EulerMaruyama(Stepper):
    """Euler-Maruyama of the reverse SDE in ``(xbar, v = sigma^2)``; one evaluation per step; strong
    and weak order 1. The last step (to ``sigma = 0``) is the driver's DDIM step (the denoised
    estimate, no noise), as score SDE's ``noise_removal``."""

    name = "euler_maruyama"
    source = "Song et al., score SDE, ICLR 2021, eq. 6 (reverse SDE) and the Euler-Maruyama predictor"
    stochastic = True
    encodes = False
    strong_order = 1.0
    weak_order = 1.0

    def native(self, kind: "Boundary") -> bool:
        return False

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        a, a_next = run.alpha(sigma), run.alpha(sigma_next)
        dv = sigma * sigma - sigma_next * sigma_next
        xbar = (x / a).add(pred.eps, alpha=-dv / sigma)
        xbar = xbar.add(run.brownian(x, sigma, sigma_next), alpha=math.sqrt(dv))
        return Step(xbar * a_next, None, pred)
