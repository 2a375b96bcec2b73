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

One small class per coordinate system; :class:`ProbabilityFlow` ``(model, coordinates)`` builds the
right one. A field evaluates the model through ``predict`` -- by default the model's own, inside
:func:`flowode.integrate` the driver's counted and checked one. The independent variable ``s`` is
a Python float shared by the batch, or (sigma coordinates) a ``(B,)`` tensor of per-sample levels.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .models import EpsilonModel, Prediction
from .parameterization import per_sample
from .schedules import lambda_to_sigma, sigma_to_lambda

__all__ = ["ProbabilityFlow", "SigmaFlow", "LambdaFlow", "TimeFlow", "COORDINATES"]

COORDINATES = ("sigma", "lambda", "t")

Predict = Callable[[Tensor, Any], Prediction]
Level = Union[float, Tensor]


class ProbabilityFlow:
    """The vector field ``dy/ds = f(y, s)`` of a model in one coordinate system.

    ``ProbabilityFlow(model, "lambda")`` returns a :class:`LambdaFlow` (likewise ``"sigma"``,
    ``"t"``).

    Args:
        model: the :class:`~flowode.models.EpsilonModel`.
        coordinates: ``"sigma"`` (default), ``"lambda"`` or ``"t"``.
        predict: the evaluation to use (default ``model.predict``).
    """

    coordinates: str = ""

    def __new__(cls, model: EpsilonModel, coordinates: str = "sigma", predict: Optional[Predict] = None
                ) -> "ProbabilityFlow":
        if cls is ProbabilityFlow:
            if coordinates not in _CLASSES:
                raise ValueError(f"`coordinates` must be one of {COORDINATES}, got {coordinates!r}.")
            cls = _CLASSES[coordinates]
        return super().__new__(cls)

    def __init__(self, model: EpsilonModel, coordinates: str = "sigma", predict: Optional[Predict] = None) -> None:
        self.model = model
        self.schedule = model.schedule
        self.predict: Predict = predict if predict is not None else model.predict

    def alpha(self, sigma: float) -> float:
        """``alpha(sigma)`` (memoised by the model)."""
        return self.model.coefficients(sigma)[0]

    def s_of_sigma(self, sigma: float) -> float:
        """The independent variable of these coordinates at noise level ``sigma``."""
        raise NotImplementedError

    def sigma_of_s(self, s: float) -> float:
        """Inverse of :meth:`s_of_sigma`."""
        raise NotImplementedError

    def to_state(self, x: Tensor, sigma: Level) -> Tensor:
        """Model state ``x`` -> this field's state (``xbar`` for sigma coordinates)."""
        return x

    def from_state(self, y: Tensor, sigma: Level) -> Tensor:
        """This field's state -> model state ``x``."""
        return y

    def kinks(self, s0: float, s1: float) -> list[float]:
        """Values of ``s`` strictly between ``s0`` and ``s1`` where the field's ``s``-derivative
        jumps (quadrature splits there)."""
        return []

    def __call__(self, y: Tensor, s: Level) -> tuple[Tensor, Prediction]:
        """Return ``(dy/ds, prediction)`` at ``(y, s)``; one model evaluation."""
        raise NotImplementedError


class SigmaFlow(ProbabilityFlow):
    """``d xbar / d sigma = eps(alpha xbar, sigma)``: DDIM coordinates."""

    coordinates = "sigma"

    def s_of_sigma(self, sigma: float) -> float:
        return sigma

    def sigma_of_s(self, s: float) -> float:
        return s

    def _alpha(self, y: Tensor, sigma: Level) -> Level:
        if isinstance(sigma, Tensor):
            return per_sample(torch.as_tensor(self.schedule.alpha_from_sigma(sigma.to(torch.float64))), y)
        return self.alpha(sigma)

    def to_state(self, x: Tensor, sigma: Level) -> Tensor:
        alpha = self._alpha(x, sigma)
        return x if isinstance(alpha, float) and alpha == 1.0 else x / alpha

    def from_state(self, y: Tensor, sigma: Level) -> Tensor:
        alpha = self._alpha(y, sigma)
        return y if isinstance(alpha, float) and alpha == 1.0 else y * alpha

    def __call__(self, y: Tensor, s: Level) -> tuple[Tensor, Prediction]:
        pred = self.predict(self.from_state(y, s), s)
        return pred.eps, pred


class LambdaFlow(ProbabilityFlow):
    """``dx / d lambda = (d log alpha / d lambda) x - std eps``: log-SNR time."""

    coordinates = "lambda"

    def s_of_sigma(self, sigma: float) -> float:
        return float(sigma_to_lambda(sigma))

    def sigma_of_s(self, s: float) -> float:
        return float(lambda_to_sigma(s))

    def __call__(self, y: Tensor, s: Level) -> tuple[Tensor, Prediction]:
        sched = self.schedule
        sigma = self.sigma_of_s(float(s))
        pred = self.predict(y, sigma)
        # d log alpha / d lambda = (d log alpha / d sigma) * (d sigma / d lambda), dsigma/dlambda = -sigma
        lin = -sigma * float(sched.dlog_alpha_dsigma(sigma))
        std = float(sched.std_from_sigma(sigma))
        out = pred.eps * (-std) if lin == 0.0 else torch.add(y * lin, pred.eps, alpha=-std)
        return out, pred


class TimeFlow(ProbabilityFlow):
    """``dx/dt = (d log alpha / dt) x + alpha (d sigma / dt) eps``: the schedule's native time."""

    coordinates = "t"

    def s_of_sigma(self, sigma: float) -> float:
        return float(self.schedule.t(sigma))

    def sigma_of_s(self, s: float) -> float:
        return float(self.schedule.sigma(s))

    def kinks(self, s0: float, s1: float) -> list[float]:
        return self.schedule.kinks(s0, s1)

    def dsigma_ds(self, s: Tensor) -> Tensor:
        """``d sigma / d t`` at native times ``s`` (float64 tensor)."""
        return torch.as_tensor(self.schedule.dsigma_dt(s.to(torch.float64)))

    def __call__(self, y: Tensor, s: Level) -> tuple[Tensor, Prediction]:
        sched = self.schedule
        t = float(s)
        sigma = self.sigma_of_s(t)
        pred = self.predict(y, sigma)
        lin = float(sched.dlog_alpha_dt(t))
        coef = float(sched.alpha_from_sigma(sigma)) * float(sched.dsigma_dt(t))
        return torch.add(y * lin, pred.eps, alpha=coef), pred


_CLASSES: dict[str, type[ProbabilityFlow]] = {"sigma": SigmaFlow, "lambda": LambdaFlow, "t": TimeFlow}
