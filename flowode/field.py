"""The probability-flow ODE of a model in three coordinate systems (DESIGN.md section 2).

All three describe the same ODE; a solver's accuracy depends on which one it steps in.

``"sigma"`` -- DDIM coordinates (Song et al. 2021, DDIM, eq. 14; Karras et al. 2022, eq. 4):
    state ``xbar = x / alpha``, independent variable ``sigma``,
    ``d xbar / d sigma = eps(alpha * xbar, sigma) = (xbar - x0_hat) / sigma``.
    One explicit Euler step here is exactly DDIM (eta = 0).

``"lambda"`` -- log-SNR time ``lambda = -log sigma`` (Lu et al. 2022, DPM-Solver, eq. 3.3),
    state ``x``, semi-linear form
    ``dx / d lambda = (d log alpha / d lambda) x - std * eps``,  ``std = alpha * sigma``,
    with ``d log alpha / d lambda = 1 - alpha^2`` (VP) or 0 (VE). Exponential integrators solve the
    linear part exactly; a Runge-Kutta method stepping here does not.

``"t"`` -- native time of the schedule (score-SDE form, Song et al. 2021, eq. 13),
    state ``x``, ``dx/dt = f(t) x - g(t)^2 / 2 * score = (d log alpha/dt) x + alpha (d sigma/dt) eps``.

The chain rule links them: ``dx/dt = d(alpha xbar)/dt`` and ``d sigma / d lambda = -sigma``.
"""

from __future__ import annotations

import math

from torch import Tensor

from .models import EpsilonModel, Prediction

__all__ = ["ProbabilityFlow", "COORDINATES"]

COORDINATES = ("sigma", "lambda", "t")


class ProbabilityFlow:
    """The vector field ``dy/ds = f(y, s)`` of a model in one coordinate system.

    Args:
        model: the :class:`~flowode.models.EpsilonModel`.
        coordinates: ``"sigma"`` (default), ``"lambda"`` or ``"t"``.
    """

    def __init__(self, model: EpsilonModel, coordinates: str = "sigma") -> None:
        if coordinates not in COORDINATES:
            raise ValueError(f"`coordinates` must be one of {COORDINATES}, got {coordinates!r}.")
        self.model = model
        self.schedule = model.schedule
        self.coordinates = coordinates

    # --------------------------------------------------------------- time maps
    def s_of_sigma(self, sigma: float) -> float:
        """The independent variable of these coordinates at noise level ``sigma``."""
        if self.coordinates == "sigma":
            return sigma
        if self.coordinates == "lambda":
            return -math.log(sigma) if sigma > 0 else math.inf
        return float(self.schedule.t(sigma))

    def sigma_of_s(self, s: float) -> float:
        """Inverse of :meth:`s_of_sigma`."""
        if self.coordinates == "sigma":
            return s
        if self.coordinates == "lambda":
            return math.exp(-s)
        return float(self.schedule.sigma(s))

    # --------------------------------------------------------------- state maps
    def to_state(self, x: Tensor, sigma: float) -> Tensor:
        """Model state ``x`` -> this field's state (``xbar`` for sigma coordinates)."""
        if self.coordinates == "sigma":
            alpha = float(self.schedule.alpha_from_sigma(sigma))
            return x if alpha == 1.0 else x / alpha
        return x

    def from_state(self, y: Tensor, sigma: float) -> Tensor:
        """This field's state -> model state ``x``."""
        if self.coordinates == "sigma":
            alpha = float(self.schedule.alpha_from_sigma(sigma))
            return y if alpha == 1.0 else y * alpha
        return y

    # --------------------------------------------------------------- the field
    def __call__(self, y: Tensor, s: float) -> tuple[Tensor, Prediction]:
        """Return ``(dy/ds, prediction)`` at ``(y, s)``; one model evaluation."""
        sched = self.schedule
        sigma = self.sigma_of_s(s)
        if self.coordinates == "sigma":
            alpha = float(sched.alpha_from_sigma(sigma))
            x = y if alpha == 1.0 else y * alpha
            pred = self.model.predict(x, sigma)
            return pred.eps, pred
        pred = self.model.predict(y, sigma)
        if self.coordinates == "lambda":
            # d log alpha / d lambda = (d log alpha / d sigma) * (d sigma / d lambda), dsigma/dlambda = -sigma
            lin = -sigma * float(sched.dlog_alpha_dsigma(sigma))
            std = float(sched.std_from_sigma(sigma))
            out = pred.eps * (-std) if lin == 0.0 else torch_add(y * lin, pred.eps, -std)
            return out, pred
        t = s
        lin = float(sched.dlog_alpha_dt(t))
        coef = float(sched.alpha_from_sigma(sigma)) * float(sched.dsigma_dt(t))
        return torch_add(y * lin, pred.eps, coef), pred


def torch_add(a: Tensor, b: Tensor, c: float) -> Tensor:
    """``a + c * b`` in one kernel."""
    return a.add(b, alpha=c)
