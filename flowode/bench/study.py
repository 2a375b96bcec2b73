"""DDPM vs DDIM on one network, measured: the layout of the DDIM paper's Table 1 (Song, Meng & Ermon 2021).

Rows are ``eta`` = 0 (DDIM, the probability-flow ODE), 0.2, 0.5, 1 (DDPM's posterior variance) and
``sigma-hat`` (DDPM's larger variance ``beta``, the paper's sigma-hat row: ``ddpm[variance=large]``);
columns are step counts S. For an analytic data distribution each cell reports the exact NLL of the
samples under the true density, the sliced Wasserstein distance and MMD to exact data samples, the
diversity of samples drawn from one fixed start ``x_T`` (0 for ``eta = 0``) and the wall time per
sample. Every draw is keyed (``seed=``), so the cells share their start noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from ..integrate import sample
from ..noise import KeyedNoise
from .distribution import exact_nll, floors, median_bandwidth, mmd
from .metrics import sliced_wasserstein

__all__ = ["StudyCell", "ddpm_vs_ddim", "markdown", "ETAS", "STEPS"]

ETAS: tuple[Union[float, str], ...] = (0.0, 0.2, 0.5, 1.0, "sigma-hat")
STEPS = (10, 20, 50, 100, 1000)


@dataclass
class StudyCell:
    eta: Union[float, str]
    steps: int
    nll: float
    nll_se: float
    sw: float
    mmd: float
    diversity: float
    seconds_per_sample: float


def _solver(eta: Union[float, str]) -> tuple[str, dict[str, Any]]:
    if eta == "sigma-hat":
        return "ddpm", {"variance": "large"}
    return "ddim", {"eta": float(eta)}


def ddpm_vs_ddim(model: Any, dist: Any, *, steps: Sequence[int] = STEPS, etas: Sequence[Union[float, str]] = ETAS,
                 n: int = 2000, seed: int = 0, spacing: str = "trailing", diversity_starts: int = 8,
                 diversity_draws: int = 32,
                 dtype: torch.dtype = torch.float64) -> tuple[list[StudyCell], dict[str, tuple[float, float]]]:
    """The cells of the table and the metrics' floors (two exact samples of size ``n``).

    ``model``: an :class:`~flowode.EpsilonModel` whose data law is ``dist`` (a
    :class:`~flowode.analytic.GaussianMixture` or :class:`~flowode.analytic.Gaussian`: ``sample``,
    ``log_prob``). Diversity: the per-coordinate standard deviation over ``diversity_draws`` samples
    from each of ``diversity_starts`` fixed ``x_T``, averaged."""
    shape = (n, dist.dim)
    x_T = model.prior_sample(shape, seed=seed, dtype=dtype)
    ref = dist.sample(n, generator=torch.Generator().manual_seed(seed + 10_000))
    h = median_bandwidth(ref)
    cells = []
    k, d = diversity_starts, diversity_draws
    same = x_T[:k].repeat_interleave(d, 0)  # each of k starts d times; the noise differs by sample index
    for eta in etas:
        name, opts = _solver(eta)
        for s in steps:
            t0 = time.perf_counter()
            x = sample(model, x_T, steps=s, solver=name, spacing=spacing, seed=seed + 1, **opts).x
            dt = (time.perf_counter() - t0) / n
            nll, se = exact_nll(x, dist)
            div = sample(model, same, steps=s, solver=name, spacing=spacing,
                         noise=KeyedNoise(seed + 2), **opts).x.view(k, d, -1).std(1).mean()
            cells.append(StudyCell(eta, s, nll, se, sliced_wasserstein(x, ref), mmd(x, ref, h), float(div), dt))
    return cells, floors(dist, n, repeats=5, seed=seed + 20_000, bandwidth=h)


def markdown(cells: list[StudyCell], fl: dict[str, tuple[float, float]], title: str, n: int) -> str:
    """The study as markdown: the floors, then one table per metric (rows eta, columns S)."""
    steps = sorted({c.steps for c in cells})
    out = [f"### {title}", "",
           f"Floors (two exact samples of {n}; mean +- std over 5 pairs): "
           f"NLL {fl['nll'][0]:.3f} +- {fl['nll'][1]:.3f}, "
           f"SW {fl['sw'][0]:.4f} +- {fl['sw'][1]:.4f}, MMD^2 {fl['mmd'][0]:.1e} +- {fl['mmd'][1]:.1e}.", ""]
    for metric, fmt in (("nll", "{:.3f}"), ("sw", "{:.4f}"), ("mmd", "{:.1e}"), ("diversity", "{:.3f}")):
        out.append(f"{metric} | " + " | ".join(f"S={s}" for s in steps))
        out.append("|".join(["---"] * (len(steps) + 1)))
        for eta in dict.fromkeys(c.eta for c in cells):
            row = {c.steps: getattr(c, metric) for c in cells if c.eta == eta}
            label = f"eta {eta}" if eta != "sigma-hat" else "sigma-hat (ddpm large)"
            out.append(f"{label} | " + " | ".join(fmt.format(row[s]) for s in steps))
        out.append("")
    per: dict[int, list[float]] = {c.steps: [] for c in cells}
    for c in cells:
        per[c.steps].append(c.seconds_per_sample)
    out.append("wall time per sample (us, mean over the rows): "
               + ", ".join(f"S={s}: {1e6 * sum(v) / len(v):.1f}" for s, v in per.items()))
    return "\n".join(out)
