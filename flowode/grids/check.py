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
    s, single = _as_float64(sigmas, name)
    key = (tuple(s.tolist()), id(schedule), name, single) if s.dim() == 1 else None
    if key is not None and key in _VALID:  # a sampling loop validates the same grid on every call
        return _VALID[key][1].clone()
    out = _check(s, schedule, name, single)
    if key is not None:
        if len(_VALID) > 256:
            _VALID.clear()
        _VALID[key] = (schedule, out)  # the reference keeps the schedule's id from being reused
    return out.clone()


#: grids already validated, by (levels, id(schedule), name, single) -> (schedule, grid); schedules are immutable
_VALID: dict[tuple[Any, ...], tuple[Optional[Schedule], Tensor]] = {}

#: relative round-off of a float32 copy of a float64 level (one unit in the last place of float32)
_FLOAT32_TOL = float(np.finfo(np.float32).eps)


def _as_float64(sigmas: Any, name: str) -> tuple[Tensor, bool]:
    """The grid as a float64 CPU tensor, and whether it came in float32 (its levels are then
    float64 levels rounded to float32). Grids of other kinds are refused: bool and complex have no
    noise-level meaning, strings are not numbers, and float16 / bfloat16 round the levels so far
    (3 significant digits) that integer timesteps come back fractional."""
    if isinstance(sigmas, Tensor):
        dtype = sigmas.dtype
        ok = dtype in (torch.float32, torch.float64) or not (dtype.is_floating_point or dtype.is_complex
                                                            or dtype == torch.bool)
        kind = str(dtype).replace("torch.", "")
        single = dtype == torch.float32
    else:
        try:
            arr = np.asarray(sigmas)
        except ValueError as exc:  # ragged nested lists
            raise GridError(f"`{name}` must be a 1-D sequence of noise levels; {str(exc).rstrip('.')}.") from None
        ok = arr.dtype.kind in "iu" or arr.dtype in (np.float32, np.float64)
        kind = {"U": "str (strings)", "S": "bytes", "O": "object"}.get(arr.dtype.kind, str(arr.dtype))
        single = arr.dtype == np.float32
    if not ok:
        raise GridError(
            f"`{name}` must hold real noise levels as float64 or float32 numbers, got dtype {kind}. "
            + ("float16 / bfloat16 round the levels (integer timesteps would come back fractional): "
               "build the grid in float64. " if kind in ("float16", "bfloat16") else "")
            + "Pass e.g. torch.tensor([80.0, 1.0, 0.0], dtype=torch.float64)."
        )
    if isinstance(sigmas, Tensor):
        return sigmas.detach().to("cpu", torch.float64), single
    return torch.as_tensor(np.asarray(arr, dtype=np.float64)), single


def _check(s: Tensor, schedule: Optional[Schedule], name: str, single: bool = False) -> Tensor:
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
        if math.isnan(lo) or math.isnan(hi):
            raise GridError(f"the schedule's noise range [{lo}, {hi}] is NaN: {schedule!r} was built with "
                            "parameters outside its domain. Rebuild it with valid ones.")
        tol = 1e-9
        # a float32 copy of a valid grid is that grid rounded to float32: accept levels within one
        # float32 unit of the range and put them on its ends (the schedule's maps allow only 1e-9)
        tol32 = _FLOAT32_TOL if single else 0.0
        for i, v in enumerate(s.tolist()):
            if v == 0.0 or (math.isinf(v) and math.isinf(hi)):
                continue
            if v < lo * (1 - tol) or v > hi * (1 + tol):
                if v >= lo * (1 - tol32) and v <= hi * (1 + tol32):
                    s = s.clone()  # never write into a tensor the caller may share
                    s[i] = lo if v < lo else hi
                    continue
                raise GridError(
                    f"`{name}[{i}]` = {_digits(v)} is outside the schedule's noise range "
                    f"[{_digits(lo)}, {_digits(hi)}] (sigma_min, sigma_max), where the network was never trained"
                    + (" (even allowing for the float32 round-off of the grid)" if single else "")
                    + ". Clip the grid to that range; it may still end (or start) at exactly 0."
                )
        if single and schedule.discrete:
            s = _snap_to_knots(s, schedule)
    return s


def _digits(v: float) -> str:
    """``v`` with 6 significant digits when that is exact, else every digit it has (a level just
    outside the range must not print as the range's own end)."""
    short = f"{v:.6g}"
    return short if float(short) == v else repr(v)


def _snap_to_knots(s: Tensor, schedule: Schedule) -> Tensor:
    """Put the levels of a float32 grid that lie within float32 round-off of an integer timestep's
    level back on it, so a float32 copy of a DDIM grid reaches the network as the same integers."""
    inner = (s > 0) & torch.isfinite(s)
    if not inner.any():
        return s
    v = s[inner]
    knot = torch.as_tensor(schedule.sigma(torch.round(torch.as_tensor(schedule.t(v)))), dtype=torch.float64)
    near = (knot - v).abs() <= 2 * _FLOAT32_TOL * v
    out = s.clone()
    out[inner] = torch.where(near, knot, v)
    return out
