"""Distribution metrics for stochastic samplers, with their finite-sample floors.

A stochastic sampler is judged by the law of its samples, not by a pathwise error. For analytic
problems (a :class:`~flowode.analytic.GaussianMixture` or :class:`~flowode.analytic.Gaussian`):

* :func:`exact_nll`: the mean negative log-likelihood of the samples under the true data density
  (nats per sample); its floor is the data's entropy, the same mean over exact samples;
* :func:`mmd`: the unbiased squared maximum mean discrepancy with a Gaussian kernel (Gretton et al.
  2012, eq. 3), bandwidth fixed by the caller (default: the median distance of the reference
  sample), so numbers at different solvers are comparable;
* :func:`~flowode.bench.metrics.sliced_wasserstein` (in ``metrics``).

:func:`floors` measures what each metric gives between two independent exact samples of the same
size: a sampler whose value lies inside that band is indistinguishable from exact sampling at that
sample size.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .metrics import sliced_wasserstein

__all__ = ["exact_nll", "mmd", "median_bandwidth", "floors"]


def exact_nll(x: Tensor, dist: Any) -> tuple[float, float]:
    """``(mean, standard error)`` of ``-log p(x)`` under the analytic density ``dist`` (at sigma 0), nats."""
    lp = dist.log_prob(x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu(), 0.0)
    return float(-lp.mean()), float(lp.std() / math.sqrt(lp.numel()))


def median_bandwidth(ref: Tensor) -> float:
    """The median pairwise distance of ``ref`` (the kernel bandwidth heuristic of Gretton et al. 2012)."""
    r = ref.reshape(ref.shape[0], -1).to(torch.float64).cpu()[:2000]
    d = torch.cdist(r, r)
    return float(d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median())


def mmd(a: Tensor, b: Tensor, bandwidth: Optional[float] = None) -> float:
    """Unbiased ``MMD^2`` between samples ``a`` and ``b`` with ``k(x, y) = exp(-|x - y|^2 / (2 h^2))``,
    ``h = bandwidth`` (default :func:`median_bandwidth` of ``b``). Can be slightly negative."""
    a = a.reshape(a.shape[0], -1).to(torch.float64).cpu()
    b = b.reshape(b.shape[0], -1).to(torch.float64).cpu()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"mmd needs at least 2 samples on each side, got {a.shape[0]} and {b.shape[0]}.")
    h = median_bandwidth(b) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise ValueError(f"`bandwidth` must be positive, got {h!r}.")

    def k(u: Tensor, v: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * h * h))

    m, n = a.shape[0], b.shape[0]
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
                 - 2 * kab.mean())


def floors(dist: Any, n: int, repeats: int = 5, seed: int = 0,
           bandwidth: Optional[float] = None) -> dict[str, tuple[float, float]]:
    """Each metric between two independent exact samples of size ``n``: ``{metric: (mean, std)}`` over
    ``repeats`` pairs (``nll``: the NLL of exact samples, i.e. the entropy estimate)."""
    vals: dict[str, list[float]] = {"nll": [], "sw": [], "mmd": []}
    for r in range(repeats):
        g = torch.Generator().manual_seed(seed + 2 * r)
        a = dist.sample(n, generator=g)
        b = dist.sample(n, generator=torch.Generator().manual_seed(seed + 2 * r + 1))
        vals["nll"].append(exact_nll(a, dist)[0])
        vals["sw"].append(sliced_wasserstein(a, b))
        vals["mmd"].append(mmd(a, b, bandwidth))
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in vals.items()}
    return {k: (float(v.mean()), float(v.std()) if len(v) > 1 else 0.0) for k, v in t.items()}
