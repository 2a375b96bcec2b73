"""Validation of noise-level grids: one place decides what a grid may look like."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..schedules import Schedule

__all__ = ["GridError", "check_grid"]


class GridError(ValueError):
    """A noise-level grid that no solver can use."""


def check_grid(sigmas: Union[Tensor, Sequence[float], np.ndarray], schedule: Optional[Schedule] = None,
               *, name: str = "sigmas") -> Tensor:
    """Validate a noise-level grid and return it as a 1-D float64 CPU tensor.

    Rules: at least two levels; no NaN; non-negative; strictly monotonic (decreasing = decode,
    increasing = encode); ``inf`` only at the noisy end; ``0`` only at the clean end; with a
    schedule, every other level within ``[schedule.sigma_min, schedule.sigma_max]``.

    Raises:
        GridError: naming the argument, the offending index and value, and the fix.
    """
    if isinstance(sigmas, Tensor):
        s = sigmas.detach().to("cpu", torch.float64)
    else:
        s = torch.as_tensor(np.asarray(sigmas, dtype=np.float64))
    key = (tuple(s.tolist()), id(schedule), name) if s.dim() == 1 else None
    if key is not None and key in _VALID:  # a sampling loop validates the same grid on every call
        return s
    out = _check(s, schedule, name)
    if key is not None:
        if len(_VALID) > 256:
            _VALID.clear()
        _VALID[key] = schedule  # the reference keeps the schedule's id from being reused
    return out


#: grids already validated, by (levels, id(schedule), name) -> schedule (schedules are immutable)
_VALID: dict[tuple[Any, ...], Optional[Schedule]] = {}


def _check(s: Tensor, schedule: Optional[Schedule], name: str) -> Tensor:
    if s.dim() != 1 or s.numel() < 2:
        raise GridError(f"`{name}` must be a 1-D sequence of at least 2 noise levels, got shape {tuple(s.shape)}.")
    if torch.isnan(s).any():
        i = int(torch.isnan(s).nonzero()[0])
        raise GridError(f"`{name}[{i}]` is NaN.")
    if (s < 0).any():
        i = int((s < 0).nonzero()[0])
        raise GridError(f"`{name}[{i}]` = {float(s[i])} is negative; noise levels are >= 0.")
    d = torch.diff(s)
    decreasing = bool((d < 0).all())
    increasing = bool((d > 0).all())
    if not (decreasing or increasing):
        # `~(d < 0)` rather than `d >= 0`: inf - inf is NaN, which must count as a break too
        bad = int((~(d < 0) if float(s[0]) > float(s[-1]) else ~(d > 0)).nonzero()[0])
        raise GridError(
            f"`{name}` must be strictly monotonic (decreasing to sample/decode, increasing to encode); "
            f"`{name}[{bad}]` = {float(s[bad]):.6g} and `{name}[{bad + 1}]` = {float(s[bad + 1]):.6g} break it. "
            "Sort the grid and remove repeated levels."
        )
    inner = s[1:] if decreasing else s[:-1]  # everything but the noisy end
    if torch.isinf(inner).any():
        raise GridError(f"`{name}` may contain inf only at its noisy end (zero terminal SNR).")
    clean_inner = s[:-1] if decreasing else s[1:]
    if (clean_inner == 0).any():
        raise GridError(f"`{name}` may contain 0 only at its clean end.")
    if schedule is not None:
        lo, hi = schedule.sigma_min, schedule.sigma_max
        tol = 1e-9
        for i, v in enumerate(s.tolist()):
            if v == 0.0 or (math.isinf(v) and math.isinf(hi)):
                continue
            if v < lo * (1 - tol) or v > hi * (1 + tol):
                raise GridError(
                    f"`{name}[{i}]` = {v:.6g} is outside the schedule's noise range "
                    f"[{lo:.6g}, {hi:.6g}] (sigma_min, sigma_max), where the network was never trained. "
                    "Clip the grid to that range; it may still end (or start) at exactly 0."
                )
    return s
