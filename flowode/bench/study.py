"""DDPM vs DDIM on one network, measured: the layout of the DDIM paper's Table 1 (Song, Meng & Ermon 2021).

Rows are ``eta`` = 0 (DDIM, the probability-flow ODE), 0.2, 0.5, 1 (DDPM's posterior variance) and
``sigma-hat`` (DDPM's larger variance ``beta``, the paper's sigma-hat row: ``ddpm[variance=large]``);
columns are step counts S. For an analytic data distribution each cell reports

* the exact NLL of the samples under the true density, the sliced Wasserstein distance and MMD to
  exact data samples (:mod:`flowode.bench.distribution`);
* the diversity of samples drawn from one fixed start ``x_T`` (0 for ``eta = 0``);
* same-x_T consistency (the DDIM paper's Fig. 5): the mean distance ``|x_S - x_ref|`` between the
  sample from one ``x_T`` at S steps and the same row's sample from that ``x_T`` at the largest S of
  the study, and the share of samples that end in the same mixture component as that reference.
  Every draw is keyed (``seed=``) and the stochastic rows follow one Brownian path per sample at
  every S (:mod:`flowode.noise`), so for them this is a pathwise distance, not two independent draws;
* the round trip: exact data ``x0`` encoded to ``x_T`` by DDIM (the probability-flow ODE, S steps)
  and decoded by the row's sampler at S steps, mean ``|x0' - x0|``. Only ``eta = 0`` inverts its
  own decode; the stochastic rows have no encoder, so their number says how much a DDIM latent
  keeps under their decode;
* the wall time per sample of the decode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch import Tensor

from ..integrate import encode, sample
from ..noise import KeyedNoise
from .distribution import exact_nll, floors, median_bandwidth, mmd
from .metrics import sliced_wasserstein

__all__ = ["StudyCell", "ShortRow", "ddpm_vs_ddim", "markdown", "short_form", "short_markdown", "SHORT_ROWS",
           "round_trip", "mean_distance", "component", "ETAS", "STEPS"]

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
    consistency: float = 0.0
    same_mode: float = 1.0
    round_trip: float = float("nan")


def _solver(eta: Union[float, str]) -> tuple[str, dict[str, Any]]:
    if eta == "sigma-hat":
        return "ddpm", {"variance": "large"}
    if eta == "ddpm":
        return "ddpm", {}
    return "ddim", {"eta": float(eta)}


def mean_distance(a: Tensor, b: Tensor) -> float:
    """Mean over samples of the Euclidean distance ``|a_i - b_i|`` (flattened per sample)."""
    return float((a - b).reshape(a.shape[0], -1).to(torch.float64).norm(dim=1).mean())


def component(x: Tensor, dist: Any) -> Tensor:
    """The most probable mixture component of each sample under ``dist`` (at sigma 0)."""
    return dist._stats(x.detach().reshape(x.shape[0], -1).to(torch.float64).cpu(), 0.0)[2].argmax(-1)


def round_trip(model: Any, x0: Tensor, steps: int, eta: Union[float, str], *, spacing: str = "trailing",
               seed: int = 0) -> float:
    """``x0`` encoded by DDIM (the probability-flow ODE) at ``steps`` and decoded by the row ``eta``'s
    sampler at ``steps`` (keyed noise ``seed``): the mean distance ``|x0' - x0|``."""
    name, opts = _solver(eta)
    z = encode(model, x0, steps=steps, solver="ddim", spacing=spacing).x
    back = sample(model, z, steps=steps, solver=name, spacing=spacing, seed=seed, **opts).x
    return mean_distance(back, x0)


def _setup(model: Any, dist: Any, n: int, seed: int, dtype: torch.dtype, starts: int, draws: int,
           round_trip_samples: int) -> tuple[Tensor, Tensor, Tensor, float, Tensor]:
    """The shared inputs of every cell: keyed start noise ``x_T``, exact data ``ref`` (for SW, MMD and
    its bandwidth), the round trip's data ``x0`` and the diversity batch (each of ``starts`` x_T
    ``draws`` times; the noise differs by sample index)."""
    x_T = model.prior_sample((n, dist.dim), seed=seed, dtype=dtype)
    ref = dist.sample(n, generator=torch.Generator().manual_seed(seed + 10_000))
    x0 = ref[:max(1, min(round_trip_samples, n))].to(dtype)
    return x_T, ref, x0, median_bandwidth(ref), x_T[:starts].repeat_interleave(draws, 0)


def _timed_sample(model: Any, x_T: Tensor, s: int, name: str, opts: dict[str, Any], spacing: str,
                  seed: int) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    x = sample(model, x_T, steps=s, solver=name, spacing=spacing, seed=seed, **opts).x
    return x, (time.perf_counter() - t0) / x_T.shape[0]


def _one_start_draws(model: Any, same: Tensor, s: int, name: str, opts: dict[str, Any], spacing: str, seed: int,
                     starts: int) -> Tensor:
    """Samples from ``starts`` fixed x_T, shape ``(starts, draws, D)``."""
    x = sample(model, same, steps=s, solver=name, spacing=spacing, noise=KeyedNoise(seed), **opts).x
    return x.reshape(starts, same.shape[0] // starts, -1)


def ddpm_vs_ddim(model: Any, dist: Any, *, steps: Sequence[int] = STEPS, etas: Sequence[Union[float, str]] = ETAS,
                 n: int = 2000, seed: int = 0, spacing: str = "trailing", diversity_starts: int = 8,
                 diversity_draws: int = 32, round_trip_samples: int = 500, dtype: torch.dtype = torch.float64,
                 with_floors: bool = True) -> tuple[list[StudyCell], dict[str, tuple[float, float]]]:
    """The cells of the table and the metrics' floors (two exact samples of size ``n``).

    ``model``: an :class:`~flowode.EpsilonModel` whose data law is ``dist`` (a
    :class:`~flowode.analytic.GaussianMixture` or :class:`~flowode.analytic.Gaussian`: ``sample``,
    ``log_prob``). Diversity: the per-coordinate standard deviation over ``diversity_draws`` samples
    from each of ``diversity_starts`` fixed ``x_T``, averaged. Consistency: against the row's samples
    at ``max(steps)`` from the same ``x_T`` and seed (0 and 1 in that column by construction). Round
    trip: on the first ``round_trip_samples`` exact data samples (the module docstring).

    Every row uses the same keyed draws whatever the other rows are, so a run row by row (``etas``
    of one entry, ``with_floors=False``; ``etas=()`` for the floors alone) gives the same cells: that
    is how ``flowode study`` shards the rows over torchrun ranks."""
    k = diversity_starts
    x_T, ref, x0, h, same = _setup(model, dist, n, seed, dtype, k, diversity_draws, round_trip_samples)
    cells = []
    s_ref = max(steps)
    for eta in etas:
        name, opts = _solver(eta)
        runs = {s: _timed_sample(model, x_T, s, name, opts, spacing, seed + 1)
                for s in sorted(set(steps), reverse=True)}  # the reference (largest S) first
        mode_ref = component(runs[s_ref][0], dist)
        for s in steps:
            x, dt = runs[s]
            nll, se = exact_nll(x, dist)
            div = _one_start_draws(model, same, s, name, opts, spacing, seed + 2, k).std(1).mean()
            cells.append(StudyCell(eta, s, nll, se, sliced_wasserstein(x, ref), mmd(x, ref, h), float(div), dt,
                                   consistency=mean_distance(x, runs[s_ref][0]),
                                   same_mode=float((component(x, dist) == mode_ref).double().mean()),
                                   round_trip=round_trip(model, x0, s, eta, spacing=spacing, seed=seed + 3)))
    return cells, floors(dist, n, repeats=5, seed=seed + 20_000, bandwidth=h) if with_floors else {}


@dataclass
class ShortRow:
    """One row of the short form: a sampler at a step count, its metrics, and what the figure draws
    (``samples``; ``draws``: samples from one x_T, ``(draws, D)``)."""

    label: str
    steps: int
    nll: float
    nll_se: float
    sw: float
    diversity: float
    round_trip: float
    seconds_per_sample: float
    samples: Tensor
    draws: Tensor


SHORT_ROWS: tuple[tuple[Union[float, str], int], ...] = (("ddpm", 1000), (0.0, 10), (0.0, 20), (0.0, 50))


def short_form(model: Any, dist: Any, *, rows: Sequence[tuple[Union[float, str], int]] = SHORT_ROWS, n: int = 512,
               seed: int = 0, spacing: str = "trailing", diversity_starts: int = 4, diversity_draws: int = 32,
               round_trip_samples: int = 128,
               dtype: torch.dtype = torch.float32) -> tuple[list[ShortRow], dict[str, tuple[float, float]]]:
    """The short DDPM-vs-DDIM comparison of ``flowode demo``: by default DDPM (``ddpm``, beta-tilde
    variance) at 1000 steps against DDIM at 10 / 20 / 50 on one network, from the same keyed x_T.
    ``rows``: ``(eta, steps)`` with ``eta`` a DDIM eta, ``"sigma-hat"`` or ``"ddpm"``. Metrics as in
    :func:`ddpm_vs_ddim` (no MMD, no consistency); the floors are two exact samples of size ``n``.

    To stay cheap each row is one decode of one batch: the ``n`` samples, the diversity draws and
    the round trip's DDIM latents side by side (keyed noise differs by sample index, so every draw
    is independent); the time per sample is that decode's time over its batch."""
    k = diversity_starts
    x_T, ref, x0, h, same = _setup(model, dist, n, seed, dtype, k, diversity_draws, round_trip_samples)
    out = []
    for eta, s in rows:
        name, opts = _solver(eta)
        z = encode(model, x0, steps=s, solver="ddim", spacing=spacing).x
        x_all, dt = _timed_sample(model, torch.cat([x_T, same, z]), s, name, opts, spacing, seed + 1)
        m = n + same.shape[0]
        x, draws, back = x_all[:n], x_all[n:m].reshape(k, diversity_draws, -1), x_all[m:]
        nll, se = exact_nll(x, dist)
        label = "DDPM" if eta == "ddpm" else "DDIM" if eta == 0 else _label(eta)
        out.append(ShortRow(label, s, nll, se, sliced_wasserstein(x, ref), float(draws.std(1).mean()),
                            mean_distance(back, x0), dt, x, draws[0]))
    return out, floors(dist, n, repeats=3, seed=seed + 20_000, bandwidth=h)


def short_markdown(rows: Sequence[ShortRow], fl: dict[str, tuple[float, float]], n: int) -> str:
    """The short form as one markdown table."""
    lines = ["| sampler | steps | NLL (nats) | SW | diversity from one x_T | round trip (mean dist.) | us / sample |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.label} | {r.steps} | {r.nll:.3f} +- {r.nll_se:.3f} | {r.sw:.4f} | {r.diversity:.3f} | "
                     f"{r.round_trip:.2e} | {1e6 * r.seconds_per_sample:.1f} |")
    lines += ["", f"Floors (two exact samples of {n}): NLL {fl['nll'][0]:.3f} +- {fl['nll'][1]:.3f}, "
                  f"SW {fl['sw'][0]:.4f} +- {fl['sw'][1]:.4f}. Round trip: x0 encoded by DDIM at the row's step "
                  "count, decoded by the row's sampler; only DDIM inverts its own decode."]
    return "\n".join(lines)


def _label(eta: Union[float, str]) -> str:
    return "sigma-hat (ddpm large)" if eta == "sigma-hat" else "ddpm (beta-tilde)" if eta == "ddpm" else f"eta {eta}"


METRICS: tuple[tuple[str, str, str], ...] = (
    ("nll", "{:.3f}", "exact NLL (nats/sample, +- its standard error; floor above)"),
    ("sw", "{:.4f}", "sliced Wasserstein to exact samples"),
    ("mmd", "{:.1e}", "MMD^2 to exact samples"),
    ("diversity", "{:.3f}", "diversity from one x_T (per-coordinate std over draws)"),
    ("consistency", "{:.3f}", "same-x_T consistency: mean distance from x_S to the row's sample at S_ref"),
    ("same_mode", "{:.3f}", "same-x_T consistency: share of samples in the same mode as at S_ref"),
    ("round_trip", "{:.2e}", "round trip: mean distance from x0 to x0', DDIM encode at S, the row's decode at S"),
    ("us_per_sample", "{:.1f}", "wall time per sample of the decode (us)"),
)


def markdown(cells: list[StudyCell], fl: dict[str, tuple[float, float]], title: str, n: int) -> str:
    """The study as markdown: the floors, then one table per metric (rows eta, columns S)."""
    steps = sorted({c.steps for c in cells})
    out = [f"### {title}", "",
           f"Floors (two exact samples of {n}; mean +- std over 5 pairs): "
           f"NLL {fl['nll'][0]:.3f} +- {fl['nll'][1]:.3f}, "
           f"SW {fl['sw'][0]:.4f} +- {fl['sw'][1]:.4f}, MMD^2 {fl['mmd'][0]:.1e} +- {fl['mmd'][1]:.1e}.", ""]
    out.append(f"Reference for consistency: S_ref = {steps[-1]} (same row, same x_T, same seed).")
    out.append("")
    for metric, fmt, caption in METRICS:
        out.append(f"{caption}:")
        out.append("")
        out.append(f"{metric} | " + " | ".join(f"S={s}" for s in steps))
        out.append("|".join(["---"] * (len(steps) + 1)))
        for eta in dict.fromkeys(c.eta for c in cells):
            row = {c.steps: fmt.format(1e6 * c.seconds_per_sample if metric == "us_per_sample" else getattr(c, metric))
                   + (f" +- {c.nll_se:.3f}" if metric == "nll" else "") for c in cells if c.eta == eta}
            out.append(f"{_label(eta)} | " + " | ".join(row[s] for s in steps))
        out.append("")
    return "\n".join(out).rstrip()
