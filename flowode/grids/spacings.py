"""The spacings of :func:`sigma_grid`: pure functions of the schedule and the step count.

Spacings of :func:`sigma_grid` (``S = steps``):

==================  ==============================================================================
``"leading"``       diffusers' ``timestep_spacing="leading"``: ``t_i = i * (N // S) + offset``
``"trailing"``      diffusers' ``"trailing"``: ``round(arange(N, 0, -N/S)) - 1`` (starts at ``N-1``)
``"linspace"``      diffusers' ``"linspace"``: ``round(linspace(0, N-1, S))``
``"quadratic"``     DDIM paper (Song et al. 2021, appendix D.2): ``t_i = int((i * sqrt(0.8 N)/(S-1))^2)``
                    for discrete schedules; ``t_min + (t_max - t_min) u^2`` for continuous ones
``"uniform_t"``     uniform in the schedule's native time (fractional timesteps for discrete;
                    in the unshifted time of a shifted :class:`~flowode.FlowMatchSchedule`)
``"logsnr"``        uniform in ``lambda = -log sigma`` (DPM-Solver's ``logSNR``; diffusers' ``use_lu_lambdas``)
``"karras"``        Karras et al. 2022, eq. 5: ``(smax^(1/rho) + i/(S-1) (smin^(1/rho) - smax^(1/rho)))^rho``
==================  ==============================================================================

``final="zero"`` (default) gives ``S`` noisy levels followed by ``sigma = 0`` (``S`` steps, the
last one returning the denoised estimate, as diffusers' ``set_alpha_to_one=True`` and
k-diffusion's trailing zero do). ``final="min"`` ends at the smallest noise level instead
(diffusers' ``set_alpha_to_one=False``): the discrete spacings append ``sigma(t=0)``, the
continuous ones place ``S + 1`` levels from ``sigma_max`` down to ``sigma_min``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..schedules import DiscreteVPSchedule, Schedule
from .check import GridError, check_grid

__all__ = ["sigma_grid", "sigmas_from_timesteps", "SPACINGS"]

SPACINGS = ("leading", "trailing", "linspace", "quadratic", "uniform_t", "logsnr", "karras")
_DISCRETE_ONLY = ("leading", "trailing", "linspace")


def sigmas_from_timesteps(
    schedule: Schedule, timesteps: Union[Sequence[float], Tensor, np.ndarray], final: str = "zero"
) -> Tensor:
    """Sigmas of the given (decreasing) native timesteps, followed by 0 (``final="zero"``) or by
    ``sigma(t_min)`` (``final="min"``, dropped when the last timestep already is ``t_min``)."""
    ts = torch.as_tensor(np.asarray(timesteps, dtype=np.float64), dtype=torch.float64).flatten()
    sig = torch.as_tensor(schedule.sigma(ts), dtype=torch.float64)
    if final == "zero":
        tail = [0.0]
    elif final == "min":
        tail = [] if float(ts[-1]) == schedule.t_min else [schedule.sigma_min]
    else:
        raise GridError(f"`final` must be 'zero' or 'min', got {final!r}.")
    return torch.cat([sig, torch.tensor(tail, dtype=torch.float64)])


def _discrete_timesteps(schedule: DiscreteVPSchedule, steps: int, spacing: str, offset: int) -> np.ndarray:
    n = schedule.num_timesteps
    if steps > n:
        raise GridError(f"`steps`={steps} exceeds the schedule's {n} training timesteps for spacing {spacing!r}.")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64) + offset
    elif spacing == "trailing":
        ts = np.round(n - np.arange(steps) * (n / steps)).astype(np.int64) - 1  # arange(n, 0, -n/S) minus a stray ~0
    elif spacing == "linspace":
        ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
    else:  # quadratic, DDIM paper's code
        ts = (np.linspace(0, math.sqrt(n * 0.8), steps) ** 2).astype(np.int64)[::-1]
    if np.any(np.diff(ts) >= 0):
        raise GridError(
            f"spacing {spacing!r} with steps={steps} repeats a timestep ({ts.tolist()}); use fewer steps "
            "or another spacing."
        )
    if ts.max() > n - 1 or ts.min() < 0:
        raise GridError(f"spacing {spacing!r} with offset={offset} leaves the timestep range [0, {n - 1}].")
    return ts.astype(np.float64)


def sigma_grid(
    schedule: Schedule,
    steps: int,
    spacing: Optional[str] = None,
    *,
    final: str = "zero",
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    rho: float = 7.0,
    offset: int = 0,
) -> Tensor:
    """A decreasing sigma grid with ``steps`` steps (see the module docstring for the spacings).

    Args:
        schedule: the noise schedule.
        steps: number of solver steps (``>= 1``).
        spacing: one of :data:`SPACINGS`; default ``schedule.default_spacing``.
        final: ``"zero"`` (end at sigma 0) or ``"min"`` (end at ``sigma_min``).
        sigma_min, sigma_max: override the range for the continuous spacings.
        rho: Karras exponent.
        offset: diffusers' ``steps_offset`` for ``"leading"``.

    Returns:
        float64 tensor of shape ``(steps + 1,)`` (fewer when ``final="min"`` would repeat a level).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GridError(f"`steps` must be a positive integer, got {steps!r}.")
    steps = int(steps)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise GridError(f"`offset` (diffusers' steps_offset) must be an integer >= 0, got {offset!r}: a fractional "
                        "offset would move every timestep of the grid off the integers the network was trained on.")
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not (math.isfinite(rho) and rho > 0):
        raise GridError(f"`rho` (the Karras exponent) must be a finite number > 0, got {rho!r}; Karras et al. "
                        "use rho=7.")
    spacing = spacing or schedule.default_spacing
    if spacing not in SPACINGS:
        raise GridError(f"unknown `spacing` {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    if final not in ("zero", "min"):
        raise GridError(f"`final` must be 'zero' or 'min', got {final!r}.")
    discrete = isinstance(schedule, DiscreteVPSchedule)
    if spacing in _DISCRETE_ONLY and not discrete:
        raise GridError(
            f"spacing {spacing!r} is defined on integer training timesteps and needs a "
            f"DiscreteVPSchedule; for {type(schedule).__name__} use 'uniform_t', 'logsnr' or 'karras'."
        )
    if discrete and (spacing in _DISCRETE_ONLY or spacing == "quadratic"):
        if sigma_min is not None or sigma_max is not None:
            raise GridError(
                f"`sigma_min` / `sigma_max` set the range of the continuous spacings; spacing {spacing!r} on a "
                "discrete schedule is fixed by its integer timesteps and would ignore them. Use spacing "
                "'uniform_t', 'logsnr' or 'karras' with them, or slice the grid."
            )
        ts = _discrete_timesteps(schedule, steps, spacing, offset)  # type: ignore[arg-type]
        out = sigmas_from_timesteps(schedule, ts, final)
        if len(out) < 2:  # e.g. linspace with steps=1 gives t = [0]; final="min" adds nothing after it
            raise GridError(
                f"spacing {spacing!r} with steps={steps} and final='min' gives the single timestep "
                f"{ts.tolist()}: no step to take. Use more steps, final='zero' or another spacing."
            )
        return check_grid(out, schedule)

    smin = schedule.sigma_min if sigma_min is None else float(sigma_min)
    smax = schedule.sigma_max if sigma_max is None else float(sigma_max)
    if not 0 < smin < smax:
        raise GridError(f"need 0 < sigma_min < sigma_max, got sigma_min={smin}, sigma_max={smax}.")
    n_levels = steps if final == "zero" else steps + 1
    if n_levels == 1:
        levels = torch.tensor([smax], dtype=torch.float64)
    elif spacing == "uniform_t" or spacing == "quadratic":
        t_hi, t_lo = float(schedule.t(smax)), float(schedule.t(smin))
        u = torch.linspace(1.0, 0.0, n_levels, dtype=torch.float64)
        if spacing == "quadratic":
            u = u * u
        levels = torch.as_tensor(schedule.sigma(schedule.grid_times(t_lo, t_hi, u)), dtype=torch.float64)
    elif spacing == "logsnr":
        if not math.isfinite(smax):
            raise GridError("spacing 'logsnr' needs a finite sigma_max; pass `sigma_max=`.")
        lam = torch.linspace(-math.log(smax), -math.log(smin), n_levels, dtype=torch.float64)
        levels = torch.exp(-lam)
    else:  # karras
        if not math.isfinite(smax):
            raise GridError("spacing 'karras' needs a finite sigma_max; pass `sigma_max=`.")
        ramp = torch.linspace(0.0, 1.0, n_levels, dtype=torch.float64)
        try:
            lo, hi = smin ** (1 / rho), smax ** (1 / rho)
        except OverflowError:
            lo = hi = math.inf
        levels = (hi + ramp * (lo - hi)) ** rho
        if not (math.isfinite(hi) and bool(torch.isfinite(levels).all())):
            raise GridError(f"`rho`={rho!r} is too small for the range [{smin:.6g}, {smax:.6g}]: sigma^(1/rho) "
                            "overflows. Use rho >= 1 (Karras et al. use rho=7).")
    if n_levels > 1:  # pin the ends exactly (no round-off at the range limits)
        levels[0], levels[-1] = smax, smin
    if final == "zero":
        levels = torch.cat([levels, torch.zeros(1, dtype=torch.float64)])
    return check_grid(levels, schedule)
