"""The DDPM-vs-DDIM study (:mod:`flowode.bench.study`) on an 8x8 digits network, judged by FD-digits.

Same rows (``eta`` = 0, 0.2, 0.5, 1, ``sigma-hat``) and columns (step counts S) as the ring's
table, the layout of the DDIM paper's Table 1. There is no exact density, so sample quality is
:func:`~flowode.bench.fd_digits.fd_digits` (Fréchet distance in the features of the shipped digits
classifier to the 1200 real training digits) next to its finite-sample floor at the same count (``n``
real held-out digits), plus the classifier's share of samples above 0.8 confidence and the smallest
class share. Per cell:

* ``fd``, ``confident`` (share with classifier probability > 0.8), ``min_class`` (smallest class share);
* ``diversity``: per-pixel standard deviation over ``draws`` samples from each of ``starts`` fixed
  x_T, averaged (0 for ``eta = 0``);
* ``consistency``: mean distance ``|x_S - x_ref|`` to the same row's sample from the same x_T and
  keyed noise at the largest S, and ``same_class``: the share with the same predicted class (the
  DDIM paper's Fig. 5: DDIM samples from one x_T at different S agree);
* ``round_trip``: real held-out digits encoded by DDIM at S and decoded by the row at S, mean
  ``|x0' - x0|``;
* ``us_per_sample``: wall time of the decode per sample.

One decode per (row, S) of one batch holding the ``n`` samples, the diversity draws and the
round trip's latents side by side (keyed noise, :mod:`flowode.noise`: every sample index draws its
own noise, the same at every S, so consistency is pathwise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch

from ..integrate import encode, sample
from .fd_digits import digits_probabilities, digits_split, fd_digits, fd_floor
from .study import ETAS, STEPS, _label, _solver, mean_distance

__all__ = ["DigitsCell", "digits_study", "digits_markdown"]


@dataclass
class DigitsCell:
    eta: Union[float, str]
    steps: int
    fd: float
    confident: float
    min_class: float
    diversity: float
    consistency: float
    same_class: float
    round_trip: float
    seconds_per_sample: float


def digits_study(model: Any, *, steps: Sequence[int] = STEPS, etas: Sequence[Union[float, str]] = ETAS,
                 n: int = 200, seed: int = 0, spacing: str = "trailing", starts: int = 4, draws: int = 8,
                 round_trip_samples: int = 16,
                 with_floors: bool = True) -> tuple[list[DigitsCell], dict[str, tuple[float, float]]]:
    """The cells of the digits table and the FD floors at ``n`` (:func:`~flowode.bench.fd_digits.fd_floor`).

    ``model``: an unconditional :class:`~flowode.EpsilonModel` of ``(1, 8, 8)`` digits in ``[-1, 1]``
    (e.g. ``load_pretrained("digits_uncond")``). ``n <= 597`` (the floor uses real held-out digits).
    Rows are independent (keyed draws): a run row by row with ``with_floors=False`` gives the same
    cells, which is how ``flowode study`` shards them over torchrun ranks."""
    if not 2 <= n <= 597:
        raise ValueError(f"`n`={n} must be in 2..597: the FD floor is measured on that many held-out real digits.")
    shape = (1, 8, 8)
    x_T = model.prior_sample((n, *shape), seed=seed)
    same = x_T[:starts].repeat_interleave(draws, 0)
    x0 = digits_split()[2][:round_trip_samples]
    m = n + same.shape[0]
    s_ref = max(steps)
    cells = []
    for eta in etas:
        name, opts = _solver(eta)
        runs = {}
        for s in sorted(set(steps), reverse=True):  # the reference (largest S) first
            z = encode(model, x0, steps=s, solver="ddim", spacing=spacing).x
            t0 = time.perf_counter()
            batch = torch.cat([x_T, same, z])
            out = sample(model, batch, steps=s, solver=name, spacing=spacing, seed=seed + 1, **opts).x
            runs[s] = (out, (time.perf_counter() - t0) / batch.shape[0])
        ref = runs[s_ref][0][:n]
        cls_ref = digits_probabilities(ref).argmax(1)
        for s in steps:
            out, dt = runs[s]
            x, d, back = out[:n], out[n:m].reshape(starts, draws, -1), out[m:]
            p = digits_probabilities(x)
            share = torch.bincount(p.argmax(1), minlength=10).double() / n
            cells.append(DigitsCell(eta, s, fd_digits(x), float((p.max(1).values > 0.8).double().mean()),
                                    float(share.min()), float(d.std(1).mean()), mean_distance(x, ref),
                                    float((p.argmax(1) == cls_ref).double().mean()), mean_distance(back, x0), dt))
    return cells, fd_floor(n, repeats=5, seed=seed + 20_000) if with_floors else {}


METRICS: tuple[tuple[str, str, str], ...] = (
    ("fd", "{:.1f}", "FD-digits to the 1200 real training digits (floor above)"),
    ("confident", "{:.3f}", "share of samples the classifier gives probability > 0.8"),
    ("min_class", "{:.3f}", "smallest predicted-class share (uniform: 0.100)"),
    ("diversity", "{:.3f}", "diversity from one x_T (per-pixel std over draws)"),
    ("consistency", "{:.3f}", "same-x_T consistency: mean distance from x_S to the row's sample at S_ref"),
    ("same_class", "{:.3f}", "same-x_T consistency: share of samples with the same predicted class as at S_ref"),
    ("round_trip", "{:.2e}", "round trip: mean distance from x0 to x0', DDIM encode at S, the row's decode at S"),
    ("us_per_sample", "{:.0f}", "wall time per sample of the decode (us)"),
)


def digits_markdown(cells: list[DigitsCell], fl: dict[str, tuple[float, float]], title: str, n: int) -> str:
    """The digits study as markdown: the FD floors, then one table per metric (rows eta, columns S)."""
    steps = sorted({c.steps for c in cells})
    h, hh = fl["heldout_vs_train"], fl["half_vs_half"]
    out = [f"### {title}", "",
           f"FD-digits floor at n = {n} (n real held-out digits vs the 1200 training digits; mean +- std over 5 "
           f"subsets): {h[0]:.1f} +- {h[1]:.1f}; two disjoint halves of the 1797 real digits: {hh[0]:.1f} +- "
           f"{hh[1]:.1f}.", "", f"Reference for consistency: S_ref = {steps[-1]} (same row, same x_T, same seed).", ""]
    for metric, fmt, caption in METRICS:
        out += [f"{caption}:", "", f"{metric} | " + " | ".join(f"S={s}" for s in steps),
                "|".join(["---"] * (len(steps) + 1))]
        for eta in dict.fromkeys(c.eta for c in cells):
            row = {c.steps: fmt.format(1e6 * c.seconds_per_sample if metric == "us_per_sample" else getattr(c, metric))
                   for c in cells if c.eta == eta}
            out.append(f"{_label(eta)} | " + " | ".join(row[s] for s in steps))
        out.append("")
    return "\n".join(out).rstrip()
