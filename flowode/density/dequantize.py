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

**Truncated-normal dequantisation** (``dequantize_with="truncated_normal"``; the idea of a
non-uniform dequantising density that puts less mass near the bin edges is i-DODE's, Zheng et al.
2023; the shape parameter here is flowode's): ``u ~ N(1/2, s^2)`` truncated to ``[0, 1)`` with
``s = 0.25`` by default. With a non-uniform ``q(u)`` the bound is the variational one (Ho et al.
2019, Flow++, eq. 12):

    -log2 P(k) <= E_u[-log2 p_v(k + u) + log2 q(u)],

so the per-sample term ``log q(u) = sum_i log q(u_i)`` (nats, <= 0 is not guaranteed: ``q`` exceeds
1 near the bin centre) is added to the negative log-likelihood before the offset; it is zero for
uniform dequantisation.

The input is taken to be the usual ``lo + (hi - lo) k / (L - 1)`` (``ToTensor`` then normalise;
digits ``k / 8 - 1``); ``k`` is recovered by rounding and the input must lie on that grid.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["DEQUANTIZE", "to_levels", "dequantize", "dequantize_with_density", "bits_offset"]

DEQUANTIZE = ("uniform", "truncated_normal")
#: the truncated normal's standard deviation, in units of one level
TRUNCATED_NORMAL_STD = 0.25
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
    """``x' = lo + (hi - lo) (k + u) / L`` with ``u ~ q`` (one draw per entry; ``q`` uniform on
    ``[0, 1)`` or the truncated normal of the module docstring)."""
    return dequantize_with_density(x, levels, data_range, method, generator)[0]


def dequantize_with_density(x: Tensor, levels: int, data_range: tuple[float, float], method: str = "uniform",
                            generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """:func:`dequantize` and the per-sample ``log q(u)`` (nats, float64, shape ``(B,)``)."""
    if method not in DEQUANTIZE:
        raise ValueError(f"`dequantize_with` must be one of {DEQUANTIZE}, got {method!r}.")
    lo, hi = data_range
    k = to_levels(x, levels, data_range)
    r = torch.rand(k.shape, generator=generator, dtype=torch.float64)
    if method == "uniform":
        u, log_q = r, torch.zeros(k.shape[0], dtype=torch.float64)
    else:  # inverse CDF of N(1/2, s^2) truncated to [0, 1)
        s = TRUNCATED_NORMAL_STD
        f64 = torch.float64
        normal = torch.distributions.Normal(torch.tensor(0.5, dtype=f64), torch.tensor(s, dtype=f64))
        c0, c1 = normal.cdf(torch.tensor(0.0, dtype=f64)), normal.cdf(torch.tensor(1.0, dtype=f64))
        u = normal.icdf(c0 + r * (c1 - c0)).clamp(0.0, math.nextafter(1.0, 0.0))
        log_q = (normal.log_prob(u) - torch.log(c1 - c0)).flatten(1).sum(1)
    return (lo + (hi - lo) * (k + u.to(k.device)) / levels).to(x.dtype), log_q


def bits_offset(levels: int, data_range: tuple[float, float]) -> float:
    """``log2(L / (hi - lo))``: 7 for 8-bit data (``L = 256``) in ``[-1, 1]``, 8 for ``[0, 1]``."""
    lo, hi = data_range
    return math.log2(levels) - math.log2(hi - lo)
