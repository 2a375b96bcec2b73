"""Variance-preserving schedules: discrete DDPM (linear, scaled-linear, cosine, from betas, zero
terminal SNR) and continuous VP-SDE (linear beta, cosine).

A VP forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` has ``alpha = sqrt(abar)``,
``sigma = sqrt((1 - abar) / abar)`` and so ``alpha = 1/sqrt(1 + sigma^2)`` whatever the schedule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import Number, Schedule, _f64, _like, check_positive

__all__ = ["VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule", "rescale_zero_terminal_snr"]


class VPSchedule(Schedule):
    """Variance-preserving schedule: ``alpha = 1/sqrt(1 + sigma^2)``, ``std = alpha * sigma``."""

    def _alpha(self, sigma: Tensor) -> Tensor:
        return torch.rsqrt(1.0 + sigma * sigma)

    def _std(self, sigma: Tensor) -> Tensor:
        # 1/sqrt(1 + sigma^-2): sigma = inf (zero terminal SNR) gives 1 and sigma = 0 gives 0, no 0 * inf
        return torch.rsqrt(1.0 + torch.reciprocal(sigma * sigma))

    def _dlog_alpha_dsigma(self, sigma: Tensor) -> Tensor:
        return -sigma / (1.0 + sigma * sigma)

    def alphas_cumprod(self, t: Number) -> Number:
        """``abar_t = alpha_t^2 = 1 / (1 + sigma_t^2)``."""
        s = self._sigma(_f64(t))
        return _like(1.0 / (1.0 + s * s), t)


# ---------------------------------------------------------------------------------------------
class DiscreteVPSchedule(VPSchedule):
    """Discrete-time VP schedule of a DDPM network trained on integer timesteps ``0..N-1``.

    ``abar_n = prod_{i<=n} (1 - beta_i)`` (Ho et al. 2020, eq. 4). Between integer timesteps
    ``log abar`` is interpolated piecewise-linearly in ``t`` (as DPM-Solver's discrete
    ``NoiseScheduleVP`` does), so ``sigma(t)`` is defined for real ``t`` in ``[0, N-1]`` and
    :meth:`t` inverts it exactly at the integer knots: the sigma of an integer timestep maps back
    to exactly that integer.

    With ``zero_terminal_snr=True`` (or :meth:`rescale_zero_terminal_snr`) the last
    ``abar`` is 0 and ``sigma(N-1) = inf``; on the last interval ``abar`` (not its log, which is
    ``-inf`` there) is interpolated linearly.

    Args:
        betas: 1-D tensor of per-step variances ``beta_n`` in ``(0, 1]``.
    """

    discrete = True
    default_spacing = "trailing"

    def __init__(self, betas: Tensor) -> None:
        betas = _vector("betas", betas)
        if betas.numel() < 2:
            raise ValueError(f"`betas` needs at least 2 entries, got {betas.numel()}.")
        if not torch.all((betas > 0) & (betas <= 1)):
            raise ValueError("`betas` must lie in (0, 1]; got values outside that range.")
        self.betas = betas
        self.num_timesteps = int(betas.numel())
        self.log_alphas_cumprod = torch.cumsum(torch.log1p(-betas), dim=0)
        if torch.isinf(self.log_alphas_cumprod[:-1]).any():
            raise ValueError("`betas` equal to 1 are only allowed at the last timestep.")
        self.t_min = 0.0
        self.t_max = float(self.num_timesteps - 1)
        # knot sigmas, computed exactly as _sigma computes them at integer t
        self._sigma_knots = torch.sqrt(torch.expm1(-self.log_alphas_cumprod))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
        zero_terminal_snr: bool = False,
    ) -> "DiscreteVPSchedule":
        """DDPM linear betas (Ho et al. 2020, sec. 4): ``linspace(beta_start, beta_end, N)``."""
        return cls._finish(_linspace_betas(beta_start, beta_end, num_timesteps, 1), zero_terminal_snr)

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
        zero_terminal_snr: bool = False,
    ) -> "DiscreteVPSchedule":
        """Latent/Stable Diffusion betas: ``linspace(sqrt(b0), sqrt(b1), N) ** 2``."""
        return cls._finish(_linspace_betas(beta_start, beta_end, num_timesteps, 2), zero_terminal_snr)

    @classmethod
    def cosine(
        cls, num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
        zero_terminal_snr: bool = False,
    ) -> "DiscreteVPSchedule":
        """Nichol & Dhariwal (2021, eq. 17) cosine schedule, betas clipped at ``max_beta``.

        ``abar(t) = f(t)/f(0)``, ``f(t) = cos^2(((t/N) + s)/(1 + s) * pi/2)`` and
        ``beta_n = min(1 - abar(n+1)/abar(n), max_beta)`` as in diffusers' ``squaredcos_cap_v2``.
        """
        num_timesteps = _num_timesteps(num_timesteps)
        n = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((n + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
        return cls._finish(betas, zero_terminal_snr)

    @classmethod
    def from_betas(cls, betas: Tensor, zero_terminal_snr: bool = False) -> "DiscreteVPSchedule":
        """Any user-given betas."""
        return cls._finish(torch.as_tensor(betas, dtype=torch.float64), zero_terminal_snr)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> "DiscreteVPSchedule":
        """Build from ``abar_n`` directly (e.g. a diffusers scheduler's ``alphas_cumprod``)."""
        abar = _vector("alphas_cumprod", alphas_cumprod)
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return cls(1 - abar / prev)

    @classmethod
    def _finish(cls, betas: Tensor, zero_terminal_snr: bool) -> "DiscreteVPSchedule":
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @property
    def alphas_cumprod_knots(self) -> Tensor:
        """``abar_n`` at the integer timesteps, float64."""
        return torch.exp(self.log_alphas_cumprod)

    def kinks(self, t0: float, t1: float) -> list[float]:
        """The integer timesteps strictly between ``t0`` and ``t1``: ``log abar`` is piecewise linear
        between them, so ``d sigma / d t`` jumps there."""
        lo, hi = min(t0, t1), max(t0, t1)
        return [float(v) for v in range(math.floor(lo) + 1, math.ceil(hi)) if lo < v < hi]

    @property
    def zero_terminal_snr(self) -> bool:
        return bool(torch.isinf(self.log_alphas_cumprod[-1]))

    # ------------------------------------------------------------------ maps
    def _interval(self, t: Tensor) -> tuple[Tensor, Tensor]:
        if torch.any(t < self.t_min) or torch.any(t > self.t_max) or torch.isnan(t).any():
            bad = t[(t < self.t_min) | (t > self.t_max) | torch.isnan(t)].flatten()[0]
            raise ValueError(
                f"timestep t={float(bad)} is outside this discrete schedule's range "
                f"[0, {self.num_timesteps - 1}]."
            )
        lo = torch.clamp(torch.floor(t), max=self.num_timesteps - 2).long()
        return lo, t - lo.to(torch.float64)

    def _log_abar(self, t: Tensor) -> Tensor:
        lo, frac = self._interval(t)
        la0 = self.log_alphas_cumprod[lo]
        la1 = self.log_alphas_cumprod[lo + 1]
        finite = torch.isfinite(la1)
        lin = la0 + frac * torch.where(finite, la1 - la0, torch.zeros_like(la0))
        # last interval of a zero-terminal-SNR schedule: interpolate abar itself
        abar_lin = torch.exp(la0) * (1 - frac)
        out = torch.where(finite, lin, torch.log(abar_lin))
        return torch.where(frac == 0, la0, out)

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(-self._log_abar(t)))

    def _t(self, sigma: Tensor) -> Tensor:
        knots = self._sigma_knots
        # tolerate round-off just outside the range (e.g. exp(-lambda(sigma_min)), or a grid that
        # check_grid accepted within its relative 1e-9) and clamp it onto the end knots
        lo_ok, hi_ok = knots[0] * (1 - 1e-9), knots[-1] * (1 + 1e-9)
        if torch.isnan(sigma).any() or torch.any(sigma < lo_ok) or torch.any(sigma > hi_ok):
            bad = sigma[torch.isnan(sigma) | (sigma < lo_ok) | (sigma > hi_ok)].flatten()[0]
            raise ValueError(
                f"sigma={float(bad):.6g} is outside this schedule's range "
                f"[{float(knots[0]):.6g}, {float(knots[-1]):.6g}] (timesteps 0..{self.num_timesteps - 1})."
            )
        sigma = torch.clamp(sigma, knots[0], knots[-1])
        # interval index: knots[i] <= sigma <= knots[i+1]
        hi = torch.searchsorted(knots, sigma.contiguous(), right=False)
        exact = knots[torch.clamp(hi, max=knots.numel() - 1)] == sigma
        lo = torch.clamp(hi - 1, min=0, max=self.num_timesteps - 2)
        la0 = self.log_alphas_cumprod[lo]
        la1 = self.log_alphas_cumprod[lo + 1]
        target = -torch.log1p(sigma * sigma)
        finite = torch.isfinite(la1)
        frac_log = (target - la0) / torch.where(finite, la1 - la0, -torch.ones_like(la0))
        frac_lin = 1 - torch.exp(target - la0)  # abar-linear last interval (zero terminal SNR)
        frac = torch.where(finite, frac_log, frac_lin).clamp(0.0, 1.0)
        t = lo.to(torch.float64) + frac
        return torch.where(exact, hi.to(torch.float64), t)

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        lo, _ = self._interval(t)
        la0 = self.log_alphas_cumprod[lo]
        la1 = self.log_alphas_cumprod[lo + 1]
        s = self._sigma(t)
        finite = torch.isfinite(la1)
        slope = torch.where(finite, la1 - la0, torch.zeros_like(la0))
        log_linear = -(1 + s * s) * slope / (2 * s)
        # last interval of a zero-terminal-SNR schedule, abar = abar_lo (1 - frac) linear in t:
        # d sigma/dt = d(1/abar)/dt / (2 sigma) = abar_lo (1 + sigma^2)^2 / (2 sigma)
        abar_linear = torch.exp(la0) * (1 + s * s) ** 2 / (2 * s)
        return torch.where(finite, log_linear, abar_linear)


def _vector(name: str, values: Tensor) -> Tensor:
    """``values`` as a 1-D float64 tensor; a 2-D table is refused (flattening it would build a
    schedule of rows * columns timesteps out of unrelated numbers)."""
    t = torch.as_tensor(values)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"`{name}` must hold real numbers, got dtype {t.dtype}.")
    if t.dim() != 1:
        raise ValueError(f"`{name}` must be 1-D (one value per timestep), got shape {tuple(t.shape)}; "
                         "pass the one row that belongs to the schedule.")
    return t.to(torch.float64)


def _num_timesteps(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 2:
        raise ValueError(f"`num_timesteps` must be an integer >= 2 (the training timesteps), got {n!r}.")
    return int(n)


def _linspace_betas(beta_start: float, beta_end: float, n: int, power: int) -> Tensor:
    """``linspace(b0^(1/p), b1^(1/p), n)^p`` in float64 (p = 1: DDPM linear; p = 2: scaled linear)."""
    n = _num_timesteps(n)
    if power == 1:
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), n, dtype=torch.float64) ** power


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas to zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", Algorithm 1): shift and scale ``sqrt(abar)`` so that its last value
    is 0 and its first is unchanged."""
    betas = torch.as_tensor(betas, dtype=torch.float64)
    abar_sqrt = torch.cumprod(1 - betas, dim=0).sqrt()
    a0, aT = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - aT) * a0 / (a0 - aT)
    abar = abar_sqrt**2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


# ---------------------------------------------------------------------------------------------
class LinearVPSchedule(VPSchedule):
    """Continuous VP-SDE with linear ``beta(t) = beta_min + t (beta_max - beta_min)``, ``t in [eps, 1]``.

    ``log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min / 2`` (Song et al. 2021, score-SDE,
    eq. 33; Lu et al. 2022, DPM-Solver, appendix). Defaults are the score-SDE ones.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
                 t_max: float = 1.0) -> None:
        beta_min, beta_max = check_positive("beta_min", beta_min), check_positive("beta_max", beta_max)
        t_min, t_max = check_positive("t_min", t_min), check_positive("t_max", t_max)
        if not beta_min < beta_max:
            raise ValueError(f"need 0 < `beta_min` < `beta_max`, got {beta_min}, {beta_max}.")
        if not t_min < t_max:
            raise ValueError(f"need 0 < `t_min` < `t_max`, got {t_min}, {t_max}.")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _neg_log_abar(self, t: Tensor) -> Tensor:
        return 0.5 * t * t * (self.beta_max - self.beta_min) + t * self.beta_min

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(self._neg_log_abar(t)))

    def _t(self, sigma: Tensor) -> Tensor:
        big = sigma > 1e150  # sigma * sigma overflows: -log abar = 2 log sigma to round-off there
        ell = torch.where(big, 2 * torch.log(sigma), torch.log1p(torch.where(big, 0.0, sigma) ** 2))  # = -log abar
        d = self.beta_max - self.beta_min
        # root of d/2 t^2 + beta_min t - ell = 0, in the cancellation-free form
        t = 2 * ell / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * ell))
        return torch.where(torch.isinf(sigma), torch.inf, t)

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        s = self._sigma(t)
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return (1 + s * s) * beta / (2 * s)


class CosineVPSchedule(VPSchedule):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021, eq. 17, continuous in ``t in [0, 1]``).

    ``abar(t) = cos^2(phi(t)) / cos^2(phi(0))`` with ``phi(t) = (t + s)/(1 + s) * pi/2``.
    ``t_max`` defaults to 0.9946, as in DPM-Solver, where ``abar`` is still positive.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> None:
        s = check_positive("s", s, zero=True)  # s < 0 makes abar > 1 near t = 0: sigma is NaN there
        t_min, t_max = check_positive("t_min", t_min, zero=True), check_positive("t_max", t_max)
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"need 0 <= `t_min` < `t_max` <= 1, got {t_min}, {t_max}.")
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._phi0 = self.s / (1 + self.s) * math.pi / 2
        self._log_cos0 = math.log(math.cos(self._phi0))

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def _sigma(self, t: Tensor) -> Tensor:
        # sigma^2 = cos^2(phi0)/cos^2(phi) - 1 = sin(phi - phi0) sin(phi + phi0) / cos^2(phi), with
        # phi - phi0 = t/(1+s) pi/2 and cos(phi) = sin((1-t)/(1+s) pi/2): no cancellation at either end
        # (the direct form loses ~4 digits near t_min and ~2 near t = 1).
        dphi = t / (1 + self.s) * (math.pi / 2)
        num = torch.sin(dphi) * torch.sin(2 * self._phi0 + dphi)
        return torch.sqrt(num) / torch.sin((1 - t) / (1 + self.s) * (math.pi / 2))

    def _t(self, sigma: Tensor) -> Tensor:
        # tan^2(phi) = (sigma^2 + sin^2 phi0) / cos^2 phi0; phi - phi0 by the arctan subtraction rule
        sin0, cos0 = math.sin(self._phi0), math.cos(self._phi0)
        # sigma * sigma overflows beyond ~1e154: there (and at sigma = inf, t = 1) the limit
        # dphi -> pi/2 - phi0 - cos0 / sigma is exact to round-off (and monotone, unlike atan2 of huge values)
        big = sigma > 1e150
        sg = torch.where(big, torch.ones_like(sigma), sigma)
        u = torch.sqrt(sg * sg + sin0 * sin0)
        dphi = torch.atan2(sg * sg * cos0 / (u + sin0), cos0 * cos0 + u * sin0)
        far = (math.pi / 2 - self._phi0) - cos0 / sigma
        t = torch.where(big, far, dphi) * (2 * (1 + self.s) / math.pi)
        return torch.where(torch.isinf(sigma), 1.0, t)  # phi = pi/2 exactly

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        s = self._sigma(t)
        # tan(phi) = 1 / tan(pi/2 - phi), the latter accurate near t = 1
        tan_phi = torch.reciprocal(torch.tan((1 - t) / (1 + self.s) * (math.pi / 2)))
        dneg = 2 * tan_phi * (math.pi / (2 * (1 + self.s)))
        return (1 + s * s) * dneg / (2 * s)
