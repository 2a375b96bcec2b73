"""Variance-exploding schedules (``alpha = 1``): geometric VE (score-SDE) and EDM."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Schedule, check_positive

__all__ = ["VESchedule", "EDMSchedule"]


class _UnitSignal(Schedule):
    """``alpha = 1``: ``x = xbar`` and ``std = sigma`` (variance-exploding and EDM schedules)."""

    def _alpha(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)

    def _std(self, sigma: Tensor) -> Tensor:
        return sigma.clone()

    def _dlog_alpha_dsigma(self, sigma: Tensor) -> Tensor:
        return torch.zeros_like(sigma)


class VESchedule(_UnitSignal):
    """Variance-exploding schedule, geometric in ``t in [0, 1]``:
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (Song et al. 2021, score-SDE, eq. 31)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        sigma_min, sigma_max = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < `sigma_min` < `sigma_max`, got {sigma_min}, {sigma_max}.")
        self._smin, self._smax = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self._smax / self._smin)
        self.t_min, self.t_max = 0.0, 1.0
        self.default_spacing = "karras"

    def _sigma(self, t: Tensor) -> Tensor:
        return self._smin * torch.exp(t * self._log_ratio)

    def _t(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma / self._smin) / self._log_ratio

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        return self._sigma(t) * self._log_ratio


class EDMSchedule(_UnitSignal):
    """EDM schedule (Karras et al. 2022, Table 1): ``sigma(t) = t``, ``alpha = 1``."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        sigma_min, sigma_max = check_positive("sigma_min", sigma_min), check_positive("sigma_max", sigma_max)
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < `sigma_min` < `sigma_max`, got {sigma_min}, {sigma_max}.")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)
        self.default_spacing = "karras"

    def _sigma(self, t: Tensor) -> Tensor:
        return t.clone()

    def _t(self, sigma: Tensor) -> Tensor:
        return sigma.clone()

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)
