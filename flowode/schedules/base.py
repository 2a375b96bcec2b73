"""The schedule contract: what every other layer may ask of a noise schedule.

Notation (DESIGN.md section 1). A Gaussian path ``x_t = alpha_t x_0 + std_t eps`` is seen through
the DDIM noise level ``sigma = std / alpha`` (noise-to-signal ratio, Song et al. 2021, eq. 14),
the half log-SNR ``lambda = -log sigma`` (Lu et al. 2022, DPM-Solver, sec. 3.1) and the scaled
state ``xbar = x / alpha``. Every schedule therefore maps to the same ``(xbar, sigma)`` picture.

A solver or a model needs of a schedule only what :class:`Schedule` declares here: the maps
``t <-> sigma``, ``alpha`` / ``std`` / ``d log alpha / d sigma`` as functions of ``sigma``, the
trained range ``[sigma_min, sigma_max]`` (``sigma_max`` may be ``inf``: zero terminal SNR), and the
native times where ``d sigma / d t`` jumps (:meth:`Schedule.kinks`). No code reads a "family"
string: a schedule class says what its ``alpha`` is by implementing the three ``*_from_sigma`` maps.

All time-like quantities are computed in float64, whatever dtype the state uses.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import torch
from torch import Tensor

Number = Union[float, int, Tensor]

__all__ = ["Schedule", "sigma_to_lambda", "lambda_to_sigma", "check_positive"]


def check_positive(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as a float if it is a finite number ``> 0`` (``>= 0`` with ``zero=True``); else a
    ``ValueError`` naming the argument and the value (inf and NaN would make the noise range NaN)."""
    bound = ">= 0" if zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not (
            isinstance(value, Tensor) and value.numel() == 1):
        raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r} ({type(value).__name__}).")
    v = float(value)  # type: ignore[arg-type]
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero):
        raise ValueError(f"`{name}` must be a finite number {bound}, got {v!r}.")
    return v


def _f64(value: Number) -> Tensor:
    """Return ``value`` as a float64 tensor (time-like quantities are always float64)."""
    if isinstance(value, Tensor):
        return value.to(torch.float64)
    return torch.tensor(float(value), dtype=torch.float64)


def _like(result: Tensor, value: Number) -> Number:
    """Return a Python float when the caller passed a Python number, else the tensor."""
    if isinstance(value, Tensor):
        return result
    return float(result)


def sigma_to_lambda(sigma: Number) -> Number:
    """Half log-SNR ``lambda = -log(sigma)``: ``+inf`` at ``sigma = 0``, ``-inf`` at ``sigma = inf``.

    The one copy of this map: Python numbers go through :mod:`math` (the solvers' per-step
    coefficients), tensors through torch in float64."""
    if isinstance(sigma, Tensor):
        return -torch.log(sigma.to(torch.float64))
    s = float(sigma)
    if s == 0.0:
        return math.inf
    if math.isinf(s):
        return -math.inf
    return -math.log(s)


def lambda_to_sigma(lam: Number) -> Number:
    """Inverse of :func:`sigma_to_lambda`: ``sigma = exp(-lambda)``."""
    if isinstance(lam, Tensor):
        return torch.exp(-lam.to(torch.float64))
    return math.exp(-float(lam))


class Schedule:
    """A noise schedule: ``sigma(t)``, its inverse ``t(sigma)`` and the signal scale as a function of ``sigma``.

    Subclasses implement :meth:`_sigma`, :meth:`_t`, :meth:`_dsigma_dt` and the ``*_from_sigma``
    maps (through a base such as :class:`~flowode.schedules.VPSchedule`) on float64 tensors; the
    public methods accept Python numbers or tensors and return the same kind.

    Attributes:
        t_min, t_max: the native time range on which the network was trained.
        discrete: ``True`` when the network was trained on integer timesteps.
        default_spacing: the grid spacing :func:`~flowode.sigma_grid` uses when none is given.
    """

    discrete: bool = False
    t_min: float = 0.0
    t_max: float = 1.0
    default_spacing: str = "uniform_t"

    # ---------------------------------------------------------------- subclass hooks
    def _hook(self, value: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement this map of the schedule contract.")

    #: ``sigma(t)``, ``t(sigma)``, ``d sigma / d t`` (the schedule itself) and ``alpha(sigma)``,
    #: ``std(sigma) = alpha sigma`` (finite at 0 and inf), ``d log alpha / d sigma`` (the path's
    #: signal scale, given by a base such as VPSchedule): float64 tensors in, float64 tensors out
    _sigma = _t = _dsigma_dt = _alpha = _std = _dlog_alpha_dsigma = _hook

    # ---------------------------------------------------------------- public maps
    def sigma(self, t: Number) -> Number:
        """Noise level ``sigma`` at native time ``t`` (float or tensor, float64 result)."""
        return _like(self._sigma(_f64(t)), t)

    def t(self, sigma: Number) -> Number:
        """Native time at noise level ``sigma``; exact inverse of :meth:`sigma`."""
        return _like(self._t(_f64(sigma)), sigma)

    def lam(self, t: Number) -> Number:
        """Half log-SNR ``lambda_t = -log sigma_t``."""
        return _like(sigma_to_lambda(self._sigma(_f64(t))), t)  # type: ignore[arg-type]

    def t_from_lambda(self, lam: Number) -> Number:
        """Inverse of :meth:`lam`."""
        return _like(self._t(lambda_to_sigma(_f64(lam))), lam)  # type: ignore[arg-type]

    def alpha(self, t: Number) -> Number:
        """Signal scale ``alpha_t`` (``sqrt(abar_t)`` for VP, 1 for VE)."""
        return _like(self._alpha(self._sigma(_f64(t))), t)

    def dsigma_dt(self, t: Number) -> Number:
        """Derivative ``d sigma / d t`` (piecewise constant slope for discrete schedules)."""
        return _like(self._dsigma_dt(_f64(t)), t)

    def dlog_alpha_dt(self, t: Number) -> Number:
        """Derivative ``d log alpha / d t`` by the chain rule through ``sigma``."""
        tt = _f64(t)
        return _like(self._dlog_alpha_dsigma(self._sigma(tt)) * self._dsigma_dt(tt), t)

    def alpha_from_sigma(self, sigma: Number) -> Number:
        """``alpha`` as a function of ``sigma`` (``1/sqrt(1+sigma^2)`` for VP, 1 for VE)."""
        return _like(self._alpha(_f64(sigma)), sigma)

    def std_from_sigma(self, sigma: Number) -> Number:
        """Marginal standard deviation of the noise in ``x``: ``alpha * sigma`` (finite at 0 and inf)."""
        return _like(self._std(_f64(sigma)), sigma)

    def dlog_alpha_dsigma(self, sigma: Number) -> Number:
        """``d log alpha / d sigma`` (``-sigma / (1 + sigma^2)`` for VP, 0 for VE)."""
        return _like(self._dlog_alpha_dsigma(_f64(sigma)), sigma)

    def grid_times(self, t_lo: float, t_hi: float, u: Tensor) -> Tensor:
        """Native times of the ``"uniform_t"`` / ``"quadratic"`` grid spacings for ``u`` in
        ``[0, 1]`` (float64): ``t_lo + (t_hi - t_lo) u`` by default. A schedule whose grids are
        uniform in a warped time overrides it (the shift of :class:`~flowode.FlowMatchSchedule`)."""
        return t_lo + (t_hi - t_lo) * u

    def kinks(self, t0: float, t1: float) -> list[float]:
        """Native times strictly between ``t0`` and ``t1`` where ``d sigma / d t`` jumps (the
        integer knots of a discrete schedule); quadrature in ``t`` splits there. None by default."""
        return []

    @property
    def reaches_infinity(self) -> bool:
        """Whether ``sigma_max`` is infinite (zero terminal SNR: ``alpha = 0`` at the noisy end)."""
        return math.isinf(self.sigma_max)

    @functools.cached_property  # schedules are immutable; the discrete one interpolates (slow)
    def sigma_min(self) -> float:
        """Smallest noise level the network was trained on (``sigma(t_min)``)."""
        return float(self._sigma(_f64(self.t_min)))

    @functools.cached_property  # schedules are immutable; the discrete one interpolates (slow)
    def sigma_max(self) -> float:
        """Largest noise level the network was trained on (``sigma(t_max)``); may be ``inf``."""
        return float(self._sigma(_f64(self.t_max)))

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (
            f"{type(self).__name__}(t=[{self.t_min:g}, {self.t_max:g}], "
            f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}])"
        )
