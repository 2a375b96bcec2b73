"""Step-size control as objects: a fixed grid, and a PI controller for embedded Runge-Kutta pairs.

The driver asks a controller three things: the first step size, the error norm of an attempted
step, and whether to accept it with which next step size. A stepper never chooses its steps.

**Error norm** (Hairer, Norsett & Wanner I, II.4, eq. 4.11): for an attempt ``y -> y1`` with local
error estimate ``e``, ``err = RMS(e / (atol + rtol max(|y|, |y1|)))`` -- over the whole batch
(``per_sample=False``, one system, as torchdiffeq and scipy measure it) or over each sample's entries
(``per_sample=True``: every sample accepts or rejects on its own error).

**Step rule** (Gustafsson 1991; Hairer & Wanner II, IV.2, eq. 2.43c; Söderlind 2002): with
``q = (order of the error estimate) + 1``::

    h_new = h * clip(safety * err_n^(-beta1/q) * err_{n-1}^(beta2/q), factor_min, factor_max)

``err_{n-1}`` is the error of the last accepted step; after a rejection the factor is at most 1.
``beta1 = 1, beta2 = 0`` (default) is the classical I controller ``h (1/err)^(1/q)`` (Hairer I,
eq. 4.13); ``beta1 = 0.7, beta2 = 0.4`` is Gustafsson's PI controller, smoother on problems whose
step size is limited by stability.

**Initial step** (Hairer I, II.4, p. 169): ``h0 = 0.01 d0 / d1`` with ``d0 = ||y||``,
``d1 = ||f(y)||``, one probe ``f(y + h0 f)`` for ``d2 = ||f' f||``, then
``h = min(100 h0, (0.01 / max(d1, d2))^(1/q))``: one extra evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

__all__ = ["FixedGrid", "PIController"]


class FixedGrid:
    """The constant-grid controller: the steps are the consecutive pairs of a given grid."""

    def __init__(self, levels: Sequence[float]) -> None:
        self.levels = [float(v) for v in levels]
        self.pairs = list(zip(self.levels[:-1], self.levels[1:]))

    def __len__(self) -> int:
        return len(self.pairs)


Level = Union[float, Tensor]


@dataclass(frozen=True)
class PIController:
    """Accept / reject and the next step size for an embedded pair (module docstring).

    Args:
        safety: the factor that keeps the next error below 1 (0.9).
        factor_min, factor_max: bounds of the step-size change per step (0.2, 5).
        beta1, beta2: the integral and proportional gains (1, 0: the I controller).
    """

    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 5.0
    beta1: float = 1.0
    beta2: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.safety <= 1:
            raise ValueError(f"`safety` must lie in (0, 1], got {self.safety!r}.")
        if not 0 < self.factor_min < 1 < self.factor_max:
            raise ValueError(f"need 0 < `factor_min` < 1 < `factor_max`, got {self.factor_min!r}, {self.factor_max!r}.")
        if self.beta1 <= 0 or self.beta2 < 0:
            raise ValueError(f"need `beta1` > 0 and `beta2` >= 0, got {self.beta1!r}, {self.beta2!r}.")

    @staticmethod
    def norm(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float, per_sample: bool) -> Tensor:
        """The scaled RMS error, shape ``(B,)`` when ``per_sample`` else ``(1,)`` (float64)."""
        scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
        r = (err / scale).to(torch.float64)
        if per_sample:
            return r.flatten(1).pow(2).mean(1).sqrt()
        return r.pow(2).mean().sqrt().reshape(1)

    def adapt(self, err: Tensor, err_prev: Tensor, h: Tensor, q: int) -> tuple[Tensor, Tensor]:
        """``(accepted, h_new)`` for errors ``err`` of steps ``h`` (``(G,)`` tensors, float64);
        ``err_prev`` is the error of each group's last accepted step (1 before the first)."""
        ok = err <= 1.0
        e = err.clamp_min(1e-10)
        fac = self.safety * e ** (-self.beta1 / q)
        if self.beta2:
            fac = fac * err_prev.clamp_min(1e-4) ** (self.beta2 / q)
        fac = torch.clamp(fac, self.factor_min, self.factor_max)
        fac = torch.where(ok, fac, torch.clamp(fac, max=1.0))
        return ok, h.abs() * fac

    @staticmethod
    def initial_step(f: Callable[[Tensor, Tensor], Tensor], y0: Tensor, f0: Tensor, s0: Tensor, span: Tensor,
                     direction: float, q: int, rtol: float, atol: float, per_sample: bool) -> Tensor:
        """Hairer's initial step size (module docstring), ``(G,)`` float64; one evaluation of
        ``f(y, s)`` (``s`` a ``(G,)`` tensor); ``span`` bounds it by the distance to the end."""
        scale = atol + rtol * y0.abs()

        def nrm(v: Tensor) -> Tensor:
            r = (v / scale).to(torch.float64)
            return r.flatten(1).pow(2).mean(1).sqrt() if per_sample else r.pow(2).mean().sqrt().reshape(1)

        d0, d1 = nrm(y0), nrm(f0)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
        h0 = torch.minimum(h0, span)
        hv = (direction * h0).to(y0)
        y1 = y0 + (hv.view((-1,) + (1,) * (y0.dim() - 1)) if per_sample else hv.reshape(())) * f0
        f1 = f(y1, s0 + direction * h0)
        d2 = nrm(f1 - f0) / h0
        d12 = torch.maximum(d1, d2)
        h1 = torch.where(d12 <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3), (0.01 / d12) ** (1 / q))
        return torch.minimum(100 * h0, h1)
