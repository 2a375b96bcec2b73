"""The exact law of a stochastic sampler's output on a diagonal-Gaussian problem (weak errors without
Monte Carlo).

For data ``N(mu, diag(s^2))`` (:class:`flowode.Gaussian`) every prediction is affine in the state and
acts per coordinate, and every stochastic solver's step is affine in the state and in its noise, so
the output is ``M x_T + m + sum_k S_k xi_k`` with independent standard normals ``xi_k``: Gaussian,
with mean ``M mu_T + m`` and variance ``M^2 var_T + sum_k S_k^2`` per coordinate. :func:`gaussian_law`
gets ``m``, ``M`` and the ``S_k`` by running the solver itself through the driver, twice:

1. with a :class:`RecordingNoise` that returns zeros and notes every draw (``m``: the noise-free run);
2. on a batch of probes, one per independent normal: the Brownian path's increments over the
   elementary intervals between all levels the solver asked about (an increment over a longer
   interval is the ``sqrt``-weighted sum of them, as :class:`~flowode.noise.KeyedNoise` gives it), and
   each keyed fresh normal; a :class:`ProbeNoise` sets row ``k`` to the ``k``-th basis vector.

The result is exact up to round-off, so weak orders are measured to any precision at any step count.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .noise import TAU_RANGE, NoiseSource

__all__ = ["gaussian_law", "RecordingNoise", "ProbeNoise"]


def _on_path(sigma: float) -> bool:
    return 0.0 < sigma < math.inf and TAU_RANGE[0] <= math.log(sigma) <= TAU_RANGE[1]


class RecordingNoise(NoiseSource):
    """Returns zeros; records the Brownian levels and the keyed draws asked for."""

    brownian = True

    def __init__(self) -> None:
        self.taus: set[float] = set()
        self.keys: list[tuple[int, int]] = []

    def increment(self, x: Tensor, sigma: float, sigma_next: float, step: int) -> Tensor:
        if _on_path(sigma) and _on_path(sigma_next):
            self.taus.update((math.log(sigma), math.log(sigma_next)))
        else:
            self.normal(x, step, -1)
        return torch.zeros_like(x)

    def normal(self, x: Tensor, step: int, draw: int) -> Tensor:
        if (step, draw) not in self.keys:
            self.keys.append((step, draw))
        return torch.zeros_like(x)


class ProbeNoise(NoiseSource):
    """Row ``k < J`` of the batch is the unit increment on elementary interval ``k`` of ``taus``;
    row ``J + i`` the unit keyed draw ``keys[i]``; later rows get no noise."""

    brownian = True

    def __init__(self, taus: list[float], keys: list[tuple[int, int]]) -> None:
        self.taus = sorted(taus)
        self.keys = list(keys)

    def _column(self, x: Tensor, values: list[float]) -> Tensor:
        col = torch.zeros(x.shape[0], dtype=torch.float64)
        col[: len(values)] = torch.tensor(values, dtype=torch.float64)
        return col.view(-1, *([1] * (x.dim() - 1))).expand(x.shape).to(x)

    def increment(self, x: Tensor, sigma: float, sigma_next: float, step: int) -> Tensor:
        if not (_on_path(sigma) and _on_path(sigma_next)):
            return self.normal(x, step, -1)
        hi, lo = math.log(sigma), math.log(sigma_next)
        sign = 1.0
        if hi < lo:
            hi, lo, sign = lo, hi, -1.0
        span = math.sqrt(hi - lo)
        vals = [sign * math.sqrt(b - a) / span if lo <= a and b <= hi else 0.0
                for a, b in zip(self.taus[:-1], self.taus[1:])]
        return self._column(x, vals)

    def normal(self, x: Tensor, step: int, draw: int) -> Tensor:
        j = max(len(self.taus) - 1, 0)
        vals = [0.0] * (j + len(self.keys))
        vals[j + self.keys.index((step, draw))] = 1.0
        return self._column(x, vals)


def gaussian_law(model: Any, mean: Tensor, var: Tensor, sigmas: Any, solver: Union[str, Any] = "ddpm",
                 **options: Any) -> tuple[Tensor, Tensor]:
    """Mean and variance (per coordinate, model coordinates) of ``integrate(model, x_T, sigmas,
    solver, ...)`` when ``x_T ~ N(mean, diag(var))`` and the noise is Gaussian as
    :class:`~flowode.noise.KeyedNoise` draws it.

    Exact only for models whose prediction is affine in ``x`` and acts per coordinate (the model of a
    :class:`flowode.Gaussian`): that is the caller's promise. ``mean`` and ``var`` have shape ``(D,)``
    or the sample shape."""
    from .integrate import integrate

    mean = torch.as_tensor(mean, dtype=torch.float64).unsqueeze(0)
    var = torch.as_tensor(var, dtype=torch.float64).unsqueeze(0)
    rec = RecordingNoise()
    m = integrate(model, mean, sigmas, solver, noise=rec, **options).x
    taus = sorted(rec.taus)
    probe = ProbeNoise(taus, rec.keys)
    k = max(len(taus) - 1, 0) + len(rec.keys)
    x = mean.expand(k + 1, *mean.shape[1:]).clone()
    x[k] += 1.0
    out = integrate(model, x, sigmas, solver, noise=probe, **options).x - m
    gain: Optional[Tensor] = out[k]
    noise_var = (out[:k] ** 2).sum(0)
    return m[0], gain**2 * var[0] + noise_var  # type: ignore[operator]
