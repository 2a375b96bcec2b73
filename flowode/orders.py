"""Empirical convergence orders: the one least-squares fit every report uses."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["fit_order"]


def fit_order(steps: Sequence[float], errors: Sequence[float], tail: Optional[int] = None) -> float:
    """Empirical order ``p`` from ``error ~ C * steps^(-p)`` (``steps``: step counts or NFE): minus the
    least-squares slope of ``log error`` against ``log steps`` over the ``tail`` largest step counts
    (default: all points), where the asymptotic regime is closest. Non-positive, missing and
    non-finite errors are dropped; NaN when fewer than 2 distinct step counts remain."""
    pts = sorted((float(n), float(e)) for n, e in zip(steps, errors)
                 if n is not None and e is not None and n > 0 and e > 0 and math.isfinite(e))
    if tail is not None:
        pts = pts[-tail:]
    if len(pts) < 2:
        return float("nan")
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    if np.ptp(x) == 0:
        return float("nan")
    return float(-np.polyfit(x, y, 1)[0])
