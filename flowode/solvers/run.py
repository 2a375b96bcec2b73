"""What a stepper may use during one call of the driver: :class:`Run`.

The driver builds one ``Run`` per :func:`flowode.integrate` call. It is the only way a stepper
evaluates the model, so the count of evaluations (``run.nfe``), the evaluation budget of adaptive
solvers and the error messages that name the step all live here, once.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ..field import ProbabilityFlow
from ..models import EpsilonModel, Prediction
from ..noise import GeneratorNoise, NoiseSource

__all__ = ["Run", "BudgetExhausted"]


_KEYWORDS: dict[type, bool] = {}


def _takes_driver_keywords(cls: type) -> bool:
    """Whether ``cls.predict`` takes the driver's ``check`` and ``step`` keywords (a user subclass may
    override ``predict(x, sigma)`` with the plain signature)."""
    hit = _KEYWORDS.get(cls)
    if hit is None:
        params = inspect.signature(cls.predict).parameters  # type: ignore[attr-defined]
        hit = _KEYWORDS[cls] = ("check" in params and "step" in params) or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return hit


class BudgetExhausted(Exception):
    """Internal: the evaluation budget (``max_nfe``) of an adaptive solve is used up."""


class Run:
    """The per-call context of a solve.

    Attributes:
        model: the model (steppers call :meth:`predict`, not the model).
        grid: the validated grid as Python floats.
        noise: the :class:`~flowode.noise.NoiseSource` of every random draw (``seed=`` keys it by
            sample index and step; default: a ``torch.Generator`` / torch's global RNG).
        generator: the ``generator`` it was built from, if any.
        nfe: evaluations so far in this call (every network evaluation, rejected steps included).
        step: index of the step being taken (the driver sets it; error messages name it).
        max_nfe: evaluation budget (adaptive solvers), or ``None``.
        check_calls: test every network output for NaN / Inf (else the driver checks the state).
        adjoint_params: ``integrate(grad="adjoint")``: the tensors besides the state that the
            adjoint solve differentiates (``None``: plain autograd).
        dry_run: the cost count's stand-in run (:func:`~flowode.driver.count_evaluations`): the model
            is a free stand-in, so checks that depend on the real model (a learned solver's model
            fingerprint) are skipped.
    """

    def __init__(self, model: EpsilonModel, grid: list[float], *, generator: Optional[torch.Generator] = None,
                 max_nfe: Optional[int] = None, check_calls: bool = False,
                 noise: Optional[NoiseSource] = None) -> None:
        self.model = model
        self.grid = grid
        self.generator = generator
        self.noise = noise if noise is not None else GeneratorNoise(generator)
        self._draw_at = (-1, 0)  # (step, draws made in it): the draw index of run.randn_like
        self.nfe = 0
        self.step = 0
        self.max_nfe = max_nfe
        self.check_calls = check_calls
        self.adjoint_params: Optional[tuple[Tensor, ...]] = None
        self.dry_run = False
        self._fields: dict[str, ProbabilityFlow] = {}
        self._alphas: dict[float, float] = {}
        self._keywords = _takes_driver_keywords(type(model))

    @property
    def num_steps(self) -> int:
        return len(self.grid) - 1

    @property
    def decreasing(self) -> bool:
        """True when integrating towards the data (sampling / decoding)."""
        return self.grid[0] > self.grid[-1]

    @property
    def sigma_min(self) -> float:
        """The smallest noise level the model was trained on."""
        return self.model.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        """The largest noise level the model was trained on."""
        return self.model.schedule.sigma_max

    def predict(self, x: Tensor, sigma: Union[float, Tensor]) -> Prediction:
        """One counted, checked model evaluation (``sigma``: a float, or per-sample ``(B,)`` levels)."""
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise BudgetExhausted
        if self._keywords:
            pred = self.model.predict(x, sigma, check=self.check_calls, step=self.step)
        else:  # a subclass that overrides predict(x, sigma): check its eps here
            pred = self.model.predict(x, sigma)
            level = float(sigma) if not isinstance(sigma, Tensor) or sigma.dim() == 0 else "per-sample sigma"
            eps = self.model._check(pred.eps, x, level, self.step, self.check_calls and self.model.check_finite)
            if eps is not pred.eps:  # cast to the state's dtype
                pred = Prediction(eps, pred.x0.to(x.dtype))
        self.nfe += 1
        return pred

    def alpha(self, sigma: float) -> float:
        """``alpha(sigma)``, memoised per level."""
        a = self._alphas.get(sigma)
        if a is None:
            a = self._alphas[sigma] = self.model.coefficients(sigma)[0]
        return a

    def field(self, coordinates: str) -> ProbabilityFlow:
        """The probability-flow field in ``coordinates``, evaluating through :meth:`predict`."""
        fld = self._fields.get(coordinates)
        if fld is None:
            fld = ProbabilityFlow(self.model, coordinates, self.predict)
            self._fields[coordinates] = fld
        return fld

    def randn_like(self, x: Tensor) -> Tensor:
        """Fresh standard normal noise shaped like ``x``: keyed by ``(seed, sample, step, draw)`` under
        ``seed=``, the caller's generator otherwise (the k-th call within a step is draw k)."""
        step, k = self._draw_at
        k = k if step == self.step else 0
        self._draw_at = (self.step, k + 1)
        return self.noise.normal(x, self.step, k)

    def brownian(self, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        """The normalised Brownian increment between two finite positive levels (``N(0, I)``, the same
        path at every step count under ``seed=``; :mod:`flowode.noise`)."""
        return self.noise.increment(x, sigma, sigma_next, self.step)

    def rng_state(self, device: torch.device) -> Any:
        """A snapshot of the random stream (to replay steps exactly)."""
        return self.noise.state()

    def set_rng_state(self, state: Any, device: torch.device) -> None:
        self._draw_at = (-1, 0)
        self.noise.set_state(state)
