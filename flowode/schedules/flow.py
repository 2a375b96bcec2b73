"""Flow matching / rectified flow: the straight Gaussian path ``x_t = (1 - t) x0 + t eps``.

On this path (Lipman et al. 2023, "Flow Matching for Generative Modeling", eq. 23 with
``sigma_min = 0``; Liu et al. 2023, "Flow Straight and Fast", eq. 1; Esser et al. 2024, SD3,
sec. 2) the signal scale is ``alpha = 1 - t`` and the noise scale ``std = t``, so in the common
``(xbar, sigma)`` picture (DESIGN.md 5.2)

    sigma = t / (1 - t),   t = sigma / (1 + sigma),   alpha = 1 / (1 + sigma),   std = sigma / (1 + sigma).

``t = 1`` is pure noise (``sigma = inf``), ``t = 0`` the data (``sigma = 0``). The velocity of the
straight path is ``dx/dt = eps - x0`` (``prediction="flow"``), and every solver runs on it unchanged.

**Shift.** SD3 (Esser et al. 2024, eq. 23) and diffusers' ``FlowMatchEulerDiscreteScheduler``
sample with the time warp ``t = s u / (1 + (s - 1) u)`` of a uniform ``u``, which is
``sigma = s * u / (1 - u)``: the DDIM noise level of the unshifted time, multiplied by ``s``. The
shift therefore changes the grid, not the path: the network still receives the path time ``t``.
Flux uses a resolution-dependent ("dynamic") shift ``s = exp(mu)`` with ``mu`` linear in the
number of image tokens (:meth:`FlowMatchSchedule.flux`; diffusers' ``calculate_shift``). The
``"uniform_t"`` spacing of :func:`flowode.sigma_grid` is uniform in ``u`` (:meth:`grid_times`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Schedule

__all__ = ["FlowMatchSchedule", "flux_shift"]


def flux_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
               base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Flux's dynamic shift ``exp(mu)``, ``mu`` linear in the token count: ``mu = base_shift`` at
    ``base_seq_len`` tokens and ``max_shift`` at ``max_seq_len`` (diffusers' ``calculate_shift``
    with the Flux.1 defaults; FIELD.md section 7)."""
    if image_seq_len <= 0:
        raise ValueError(f"`image_seq_len` must be a positive number of tokens, got {image_seq_len}.")
    if max_seq_len == base_seq_len:
        raise ValueError(f"`max_seq_len` and `base_seq_len` must differ, both are {base_seq_len}.")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    mu = base_shift + slope * (image_seq_len - base_seq_len)
    return math.exp(mu)


class FlowMatchSchedule(Schedule):
    """The straight path ``x_t = (1 - t) x0 + t eps`` on ``t in [t_min, t_max]``.

    Args:
        shift: SD3's static shift ``s > 0`` (1 = none): grids built by :func:`flowode.sigma_grid`
            with the ``"uniform_t"`` spacing are uniform in ``u`` with ``t = s u / (1 + (s - 1) u)``,
            i.e. ``sigma = s u / (1 - u)``. The path and the network's time ``t`` do not change.
        t_min: smallest trained time (``sigma_min = t_min / (1 - t_min)``); default ``1e-3``,
            diffusers' ``1 / num_train_timesteps``.
        t_max: largest trained time; default 1 (pure noise, ``sigma_max = inf``).

    The network ``fn(x, t)`` of an :class:`~flowode.EpsilonModel` receives the path time ``t``
    (multiply by 1000 for diffusers' transformers, as :func:`flowode.from_diffusers` does).
    """

    default_spacing = "uniform_t"

    def __init__(self, shift: float = 1.0, t_min: float = 1e-3, t_max: float = 1.0) -> None:
        if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
            raise ValueError(f"`shift` must be a positive finite number, got {shift!r} (1 = no shift).")
        if not 0 < t_min < t_max <= 1:
            raise ValueError(f"need 0 < `t_min` < `t_max` <= 1, got t_min={t_min}, t_max={t_max}.")
        self.shift = float(shift)
        self.t_min, self.t_max = float(t_min), float(t_max)

    @classmethod
    def flux(cls, image_seq_len: int, *, base_seq_len: int = 256, max_seq_len: int = 4096,
             base_shift: float = 0.5, max_shift: float = 1.15, t_min: float = 1e-3,
             t_max: float = 1.0) -> "FlowMatchSchedule":
        """Flux's resolution-dependent shift (see :func:`flux_shift`); a 1024x1024 image has
        ``(1024 / 16)^2 = 4096`` tokens."""
        s = flux_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
        return cls(shift=s, t_min=t_min, t_max=t_max)

    # ------------------------------------------------------------------ the shift (grids only)
    def shift_time(self, u: Tensor) -> Tensor:
        """``t = s u / (1 + (s - 1) u)``: the shifted time of a uniform ``u`` (SD3, eq. 23)."""
        s = self.shift
        return u if s == 1.0 else s * u / (1 + (s - 1) * u)

    def unshift_time(self, t: Tensor) -> Tensor:
        """Inverse of :meth:`shift_time`: ``u = t / (s - (s - 1) t)``."""
        s = self.shift
        return t if s == 1.0 else t / (s - (s - 1) * t)

    def grid_times(self, t_lo: float, t_hi: float, u: Tensor) -> Tensor:
        """Native times of a grid uniform in the *unshifted* time between ``t_lo`` and ``t_hi``
        (``u`` in ``[0, 1]``), as diffusers' flow-matching schedulers place them."""
        lo = self.unshift_time(torch.tensor(t_lo, dtype=torch.float64))
        hi = self.unshift_time(torch.tensor(t_hi, dtype=torch.float64))
        return self.shift_time(lo + (hi - lo) * u)

    # ------------------------------------------------------------------ the path
    def _sigma(self, t: Tensor) -> Tensor:
        return t / (1 - t)  # inf at t = 1

    def _t(self, sigma: Tensor) -> Tensor:
        # sigma / (1 + sigma), written to give 1 at sigma = inf
        return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        return torch.reciprocal((1 - t) ** 2)

    def _alpha(self, sigma: Tensor) -> Tensor:
        return torch.reciprocal(1 + sigma)  # 0 at sigma = inf

    def _std(self, sigma: Tensor) -> Tensor:
        # 1 / (1 + 1/sigma): 0 at sigma = 0, 1 at sigma = inf, no inf / inf
        return torch.reciprocal(1 + torch.reciprocal(sigma))

    def _dlog_alpha_dsigma(self, sigma: Tensor) -> Tensor:
        return -torch.reciprocal(1 + sigma)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"FlowMatchSchedule(shift={self.shift:g}, t=[{self.t_min:g}, {self.t_max:g}])"
