"""Is an encoded latent distributed like the prior N(0, I)?

For a VP model encoded to ``sigma_max`` the latent should be (close to) a standard normal draw;
a VE / EDM latent is ``N(0, (1 + sigma_max^2) I)`` and is rescaled by ``scale`` first. Tests:

* mean and standard deviation of all coordinates;
* Kolmogorov-Smirnov test of the pooled coordinates against N(0, 1) (scipy.stats.kstest);
* chi-square test of the squared norms: ``|z_b|^2 ~ chi^2_D`` per sample; the per-sample
  two-sided p-values, and the KS test of all ``|z_b|^2`` against ``chi^2_D`` (pooled).

A latent is flagged off-distribution when either pooled p-value is below ``alpha`` (default 1e-3).
(Mean and std are reported, not thresholded: their sampling error depends on the batch size, which
the two tests account for.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["LatentStats", "latent_stats"]


@dataclass
class LatentStats:
    """Summary of :func:`latent_stats`."""

    mean: float
    std: float
    ks_stat: float
    ks_pvalue: float
    chi2_stat: float
    chi2_pvalue: float
    norm_pvalues: np.ndarray
    off_distribution: bool
    reasons: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "ks_stat": self.ks_stat, "ks_pvalue": self.ks_pvalue,
                "chi2_stat": self.chi2_stat, "chi2_pvalue": self.chi2_pvalue,
                "off_distribution": self.off_distribution}


def latent_stats(z: Tensor, *, scale: Optional[float] = None, alpha: float = 1e-3,
                 max_coordinates: int = 200_000) -> LatentStats:
    """Compare latents ``z`` (batch first) with N(0, I).

    Args:
        z: latents, shape ``(B, ...)``.
        scale: divide ``z`` by this first (e.g. ``sqrt(1 + sigma_max^2)`` for VE / EDM latents).
        alpha: significance level of the off-distribution flag.
        max_coordinates: the KS test uses at most this many coordinates (evenly strided).
    """
    from scipy import stats

    if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[0] < 1:
        raise ValueError("`z` must be a tensor with a batch dimension.")
    if not z.is_floating_point():
        raise TypeError(f"`z` must be a floating-point tensor, got {z.dtype}.")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not (np.isfinite(scale) and scale > 0)):
        raise ValueError(f"`scale` must be a finite number > 0 (e.g. sqrt(1 + sigma_max^2)), got {scale!r}.")
    flat = z.detach().to("cpu", torch.float64).flatten(1)
    if scale is not None:
        flat = flat / float(scale)
    b, d = flat.shape
    coords = flat.flatten().numpy()
    if coords.size > max_coordinates:
        coords = coords[:: int(np.ceil(coords.size / max_coordinates))]
    with np.errstate(invalid="ignore"):  # a NaN latent is reported below, not warned about by numpy
        mean, std = float(coords.mean()), float(coords.std(ddof=1)) if coords.size > 1 else float("nan")
    ks = stats.kstest(coords, "norm")
    sq = (flat**2).sum(1).numpy()
    cdf = stats.chi2.cdf(sq, d)
    norm_p = 2 * np.minimum(cdf, 1 - cdf)
    chi = stats.kstest(sq, stats.chi2(d).cdf)
    reasons = []
    bad = int((~torch.isfinite(flat)).sum())
    if bad:  # NaN compares false with every threshold: without this a NaN latent passed both tests
        reasons.append(f"{bad} of {flat.numel()} coordinates are NaN/Inf")
    if ks.pvalue < alpha:
        reasons.append(f"coordinates fail KS vs N(0,1) (p={ks.pvalue:.2g})")
    if chi.pvalue < alpha:
        reasons.append(f"squared norms fail KS vs chi^2_{d} (p={chi.pvalue:.2g})")
    return LatentStats(mean, std, float(ks.statistic), float(ks.pvalue), float(chi.statistic), float(chi.pvalue),
                       norm_p, bool(reasons), reasons)
