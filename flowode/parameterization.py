"""The one table of parameterisation conversions: eps, x0, v, score and flow at ``(x, sigma)``.

On a Gaussian path ``x = alpha x0 + std eps`` (``std = alpha * sigma``) a network may predict

    eps                                       (Ho et al. 2020)
    x0    = (x - std eps) / alpha = x / alpha - sigma eps
    v     = alpha eps - std x0                (Salimans & Ho 2022, sec. 4)
    score = grad_x log p(x) = -eps / std      (Song et al. 2021, score-SDE; Tweedie)
    flow  = eps - x0                          (Lipman et al. 2023; Liu et al. 2023: the velocity
                                               dx/dt of the straight path x = (1 - t) x0 + t eps)

and back, from ``x``:

    eps = (x - alpha x0) / std
    eps = (alpha v + std x) / (alpha^2 + std^2),   x0 = (alpha x - std v) / (alpha^2 + std^2)
    eps = -std * score
    eps = (x + alpha u) / (alpha + std),           x0 = (x - std u) / (alpha + std)      (u = flow)

(``alpha^2 + std^2 = 1`` on variance-preserving paths and ``alpha + std = 1`` on the straight path,
where the divisions are skipped). ``flow`` is defined on every path as ``eps - x0``; only on the
flow-matching path is it also ``dx/dt``. Every other
module converts through these functions; ``alpha`` and ``std`` are Python floats shared by the
batch, or tensors broadcastable against ``x`` (per-sample noise levels).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["PREDICTIONS", "x0_from_eps", "eps_from_x0", "to_eps", "to_x0", "from_eps_x0", "per_sample"]

PREDICTIONS = ("eps", "x0", "v", "score", "flow")

Scalar = Union[float, Tensor]


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``values`` of shape ``(B,)`` as a ``(B, 1, ..., 1)`` tensor in ``like``'s dtype and device."""
    return values.to(dtype=like.dtype, device=like.device).view((-1,) + (1,) * (like.dim() - 1))


def _norm2(alpha: Scalar, std: Scalar) -> Optional[Scalar]:
    """``alpha^2 + std^2``, or ``None`` when it is 1 to round-off (VP paths: no division)."""
    den = alpha * alpha + std * std
    if isinstance(den, float) and abs(den - 1.0) <= 1e-12:
        return None
    return den


def _sum(alpha: Scalar, std: Scalar) -> Optional[Scalar]:
    """``alpha + std``, or ``None`` when it is 1 to round-off (the straight path: no division)."""
    den = alpha + std
    if isinstance(den, float) and abs(den - 1.0) <= 1e-12:
        return None
    return den


def x0_from_eps(x: Tensor, eps: Tensor, alpha: Scalar, sigma: Scalar) -> Tensor:
    """``x0 = x / alpha - sigma * eps`` (``alpha > 0``)."""
    if isinstance(alpha, float) and isinstance(sigma, float):
        if sigma == 0.0:
            return x if alpha == 1.0 else x / alpha
        return torch.add(x / alpha if alpha != 1.0 else x, eps, alpha=-sigma)
    return x / alpha - sigma * eps


def eps_from_x0(x: Tensor, x0: Tensor, alpha: Scalar, std: Scalar) -> Tensor:
    """``eps = (x - alpha * x0) / std`` (``std > 0``)."""
    return (x - alpha * x0) / std


def to_eps(prediction: str, out: Tensor, x: Tensor, alpha: Scalar, std: Scalar) -> Tensor:
    """The network output ``out`` (of kind ``prediction``) as the noise prediction ``eps``.

    An x0 network at ``std = 0`` (the clean end) gives ``eps = 0``: its output carries no noise."""
    if prediction == "eps":
        return out
    if prediction == "x0":
        if isinstance(std, float) and std == 0.0:
            return torch.zeros_like(out)
        return eps_from_x0(x, out, alpha, std)
    if prediction == "v":
        eps = torch.add(alpha * out, x, alpha=std) if isinstance(std, float) else alpha * out + std * x
        den = _norm2(alpha, std)
        return eps if den is None else eps / den
    if prediction == "score":
        return -std * out
    if prediction == "flow":
        eps = torch.add(x, out, alpha=alpha) if isinstance(alpha, float) else x + alpha * out
        den = _sum(alpha, std)
        return eps if den is None else eps / den
    raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")


def to_x0(prediction: str, out: Tensor, x: Tensor, alpha: Scalar, std: Scalar) -> Optional[Tensor]:
    """The network output as the denoised ``x0`` when the output determines it directly (x0, v
    and flow networks); ``None`` for eps and score networks, whose ``x0`` follows from ``eps`` by
    :func:`x0_from_eps` (computed lazily by :class:`~flowode.models.Prediction`)."""
    if prediction == "x0":
        return out
    if prediction == "v":
        x0 = torch.add(alpha * x, out, alpha=-std) if isinstance(std, float) else alpha * x - std * out
        den = _norm2(alpha, std)
        return x0 if den is None else x0 / den
    if prediction == "flow":
        x0 = torch.add(x, out, alpha=-std) if isinstance(std, float) else x - std * out
        den = _sum(alpha, std)
        return x0 if den is None else x0 / den
    return None


def from_eps_x0(prediction: str, eps: Tensor, x0: Tensor, alpha: Scalar, std: Scalar) -> Tensor:
    """What a network of kind ``prediction`` outputs when the truth is ``(eps, x0)``: the training
    target (DDPM's eps objective, its x0 / v variants, flow matching's ``eps - x0``) and the raw
    output of exact models."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - std * x0
    if prediction == "score":
        return -eps / std
    if prediction == "flow":
        return eps - x0
    raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")
