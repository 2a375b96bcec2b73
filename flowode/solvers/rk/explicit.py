"""One explicit Runge-Kutta step of a field, for every tableau (fixed-step and embedded pairs).

For ``dy/ds = f(y, s)`` and a step ``h`` (a float, or a ``(B, 1, ..., 1)`` tensor of per-sample
steps)::

    k_i = f(y + h sum_j a_ij k_j, s + c_i h),     y' = y + h sum_i b_i k_i,
    err = h sum_i b_error_i k_i                   (embedded pairs)

(Hairer, Norsett & Wanner, Solving ODEs I, II.1 and II.4).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

from torch import Tensor

from ...models import Prediction
from .tableau import ButcherTableau

__all__ = ["explicit_step", "combine"]

Field = Callable[[Tensor, Any], tuple[Tensor, Prediction]]
StepSize = Union[float, Tensor]


def combine(y: Tensor, h: StepSize, weights: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    """``y + h sum_i w_i k_i``, skipping zero weights (fused adds for a float ``h``)."""
    out = y
    for w, k in zip(weights, ks):
        if w == 0.0:
            continue
        out = out.add(k, alpha=h * w) if isinstance(h, float) else out + k * (h * w)
    return out


def explicit_step(field: Field, tab: ButcherTableau, y: Tensor, s: Any, h: StepSize,
                  first: Optional[tuple[Tensor, Prediction]] = None,
                  s_stage: Optional[Callable[[float], Any]] = None
                  ) -> tuple[Tensor, list[Tensor], Optional[Prediction]]:
    """Stages, new solution and the first stage's prediction (``None`` if ``first`` gave none).

    ``first`` reuses a known ``(f(y, s), prediction)`` (FSAL, or the controller's first probe).
    ``s_stage(c)`` gives the stage's independent variable (default ``s + c h``); an FSAL tableau's
    last stage is evaluated at the new solution itself (no extra combination).
    """
    ks: list[Tensor] = []
    pred0: Optional[Prediction] = None
    y1: Optional[Tensor] = None
    for i in range(tab.stages):
        if i == 0 and first is not None:
            k, pred = first
        else:
            yi = combine(y, h, tab.a[i], ks)
            si = s if tab.c[i] == 0.0 else (s_stage(tab.c[i]) if s_stage is not None else s + tab.c[i] * h)
            k, pred = field(yi, si)
            if i == tab.stages - 1 and tab.fsal:
                y1 = yi
        ks.append(k)
        if i == 0:
            pred0 = pred
    if y1 is None:
        y1 = combine(y, h, tab.b, ks)
    return y1, ks, pred0
