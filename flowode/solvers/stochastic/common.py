"""Helpers shared by the stochastic steppers: option checks."""

from __future__ import annotations

import math
from typing import Any

from ..base import SolverError

__all__ = ["check_nonneg"]


def check_nonneg(solver: str, option: str, value: Any) -> None:
    """Raise :class:`SolverError` unless ``value`` is a finite number ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise SolverError(f"`{option}` of {solver!r} must be a finite number >= 0, got {value!r}.")
