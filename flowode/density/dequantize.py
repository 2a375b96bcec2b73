"""Dequantisation of data with ``L`` levels (``L = 2^bits``) and the bits/dim offset for data in ``[lo, hi]``.

Discrete data ``k in {0, ..., L - 1}^D`` has a probability, not a density. Uniform
dequantisation (Theis et al. 2016; as in score SDE, ``(U + 255 img) / 256`` for ``L = 256``) turns
it into the continuous variable ``v = k + u``, ``u ~ U[0, 1)^D``, which the model sees scaled to
``[lo, hi)``:

    x' = lo + (hi - lo) v / L.

The density of ``v`` is ``p_v(v) = p_x(x') ((hi - lo) / L)^D``, and by Jensen's inequality

    -log2 P(k) <= E_u[-log2 p_v(k + u)] = E_u[-log2 p_x(x')] + D log2(L / (hi - lo)),

so the bits/dim of the discrete data are bounded by the model's continuous bits/dim plus the
**offset** ``log2(L / (hi - lo))``: for 8-bit data in ``[-1, 1]`` this is ``log2(256 / 2) =
log2 128 = 7`` (the "+7" of score SDE's ``likelihood.py``), for ``[0, 1]`` it is 8; for the 17
levels of scikit-learn's digits in ``[-1, 1]`` it is ``log2 8.5 = 3.087``. Without dequantisation
a continuous density on discrete points can be arbitrarily large (negative bits/dim,
score_sde#24): the offset applies only to dequantised data.

The input is taken to be the usual ``lo + (hi - lo) k / (L - 1)`` (``ToTensor`` then normalise;
digits ``k / 8 - 1``); ``k`` is recovered by rounding and the input must lie on that grid.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["DEQUANTIZE", "to_levels", "dequantize", "bits_offset"]

DEQUANTIZE = ("uniform",)
#: how far (in units of one quantisation level) an input may sit from the 8-bit grid
GRID_TOLERANCE = 1e-3


def to_levels(x: Tensor, levels: int, data_range: tuple[float, float]) -> Tensor:
    """The integer levels ``k`` of data ``x = lo + (hi - lo) k / (L - 1)``; raises ``ValueError``
    if ``x`` is not on that grid."""
    lo, hi = data_range
    top = levels - 1
    u = (x.detach().to(torch.float64) - lo) / (hi - lo) * top
    k = torch.round(u)
    off = float((u - k).abs().max())
    if off > GRID_TOLERANCE or float(k.min()) < 0 or float(k.max()) > top:
        raise ValueError(
            f"`x0` is not {levels}-level data in `data_range`={data_range}: expected values lo + (hi - lo) k / {top} "
            f"with integer k in [0, {top}], but an entry is {off:.3g} levels off the grid or outside it "
            f"(range [{float(x.min()):.4g}, {float(x.max()):.4g}]). Pass the right `data_range` / `levels`, or neither "
            "`bits` nor `levels` for continuous data."
        )
    return k


def dequantize(x: Tensor, levels: int, data_range: tuple[float, float], method: str = "uniform",
               generator: Optional[torch.Generator] = None) -> Tensor:
    """``x' = lo + (hi - lo) (k + u) / L`` with ``u ~ U[0, 1)`` (one draw per entry)."""
    if method not in DEQUANTIZE:
        raise ValueError(f"`dequantize` must be one of {DEQUANTIZE}, got {method!r}.")
    lo, hi = data_range
    k = to_levels(x, levels, data_range)
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * (k + u.to(k.device)) / levels).to(x.dtype)


def bits_offset(levels: int, data_range: tuple[float, float]) -> float:
    """``log2(L / (hi - lo))``: 7 for 8-bit data (``L = 256``) in ``[-1, 1]``, 8 for ``[0, 1]``."""
    lo, hi = data_range
    return math.log2(levels) - math.log2(hi - lo)
