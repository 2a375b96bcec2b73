"""Butcher tableaux of explicit Runge-Kutta methods, with optional embedded error weights.

::

    c[0] |
    c[1] | a[1][0]
    c[2] | a[2][0] a[2][1]
    -----+----------------
         | b[0]    b[1]    b[2]          (the propagated solution, order ``order``)
         | e[0]    e[1]    e[2]          (``b_error = b - b_embedded``: the local error estimate)

The consistency conditions are checked at construction (row sums of ``a`` equal ``c``, the weights
sum to 1, ``b_error`` sums to 0), as diffrax's ``ButcherTableau.__post_init__`` does. A tableau
whose last stage is the new solution (``c[-1] = 1`` and ``a[-1] = b``) is FSAL: that stage is the
first stage of the next step, so an accepted step costs one evaluation less.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ButcherTableau"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau.

    Args:
        c, a, b: nodes, strictly lower-triangular rows (row ``i`` has ``i`` entries), weights.
        order: order of the propagated solution ``b``.
        b_error: ``b - b_embedded`` for an embedded pair (the local error estimate is
            ``h * sum_i b_error[i] k_i``); ``None`` for a fixed-step method.
        embedded_order: order of the embedded solution (default ``order - 1``); the step-size
            controller's exponent is ``1 / (min(order, embedded_order) + 1)``.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: Optional[tuple[float, ...]] = None
    embedded_order: Optional[int] = None

    def __post_init__(self) -> None:
        n = len(self.b)
        if len(self.c) != n or len(self.a) != n:
            raise ValueError("tableau: `c`, `a` and `b` need one entry per stage.")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau: row {i} of `a` must have {i} entries (explicit method).")
            if abs(sum(row) - self.c[i]) > 1e-14:
                raise ValueError(f"tableau: row {i} of `a` sums to {sum(row)}, not c[{i}]={self.c[i]}.")
        if abs(sum(self.b) - 1.0) > 1e-14:
            raise ValueError(f"tableau: weights `b` sum to {sum(self.b)}, not 1.")
        if self.c[0] != 0.0:
            raise ValueError("tableau: an explicit method has c[0] = 0.")
        if self.b_error is not None:
            if len(self.b_error) != n:
                raise ValueError(f"tableau: `b_error` needs {n} entries (one per stage), got {len(self.b_error)}.")
            if abs(sum(self.b_error)) > 1e-14:
                raise ValueError(f"tableau: `b_error` = b - b_embedded must sum to 0, got {sum(self.b_error)}.")
        if not isinstance(self.order, int) or self.order < 1:
            raise ValueError(f"tableau: `order` must be a positive integer, got {self.order!r}.")

    @property
    def stages(self) -> int:
        return len(self.b)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate."""
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at the new solution."""
        return self.c[-1] == 1.0 and tuple(self.a[-1]) == tuple(self.b[:-1]) and self.b[-1] == 0.0

    @property
    def error_order(self) -> int:
        """The order of the local error estimate minus one: the controller uses ``err^(-1/(q+1))``."""
        emb = self.order - 1 if self.embedded_order is None else self.embedded_order
        return min(self.order, emb)
