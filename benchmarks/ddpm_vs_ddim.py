"""DDPM vs DDIM on one network, the layout of the DDIM paper's Table 1, on the 8-Gaussian ring and the digits.

Usage: PYTHONPATH=. python benchmarks/ddpm_vs_ddim.py > benchmarks/sections/ddpm_vs_ddim.md

Two models of the same data (``flowode.analytic.gmm_ring()``: 8 components of std 0.1 on a circle of
radius 2): the exact eps of the mixture on ``DiscreteVPSchedule.linear()``, and the shipped trained
``ring8`` network. 2000 samples per cell, trailing grids, keyed noise (``seed=``), so every cell
starts from the same x_T. Metrics (:mod:`flowode.bench.distribution`): the exact NLL under the true
density (nats/sample, its floor = the entropy of exact samples), sliced Wasserstein and MMD^2 to 2000
exact data samples (floors: two exact samples), diversity from one x_T, same-x_T consistency against
S = 1000 (distance, same-mode share), the round trip through the DDIM latent (500 exact data samples)
and the wall time per sample (load-dependent: a shared machine).

Then the shipped unconditional ``digits_uncond`` UNet (:mod:`flowode.bench.study_digits`): the same
rows judged by FD-digits (:mod:`flowode.bench.fd_digits`) with its floor at the sample count, the
classifier's confidence and class balance, diversity from one x_T, same-x_T consistency, the round
trip and the time. 128 samples per cell (the S = 1000 column costs 5 x 1000 network calls per
sample), so the FD floor at that count is large; it is printed above the table.
"""

from __future__ import annotations

import torch

import flowode
from flowode.bench.study import ddpm_vs_ddim, markdown
from flowode.bench.study_digits import digits_markdown, digits_study
from flowode.cli.study import DIGITS_SAMPLES, DIGITS_TITLE

torch.set_num_threads(1)


def table(title: str, model, dist, dtype) -> None:
    cells, fl = ddpm_vs_ddim(model, dist, n=2000, seed=0, dtype=dtype)
    print("\n" + markdown(cells, fl, title, 2000))


def main() -> None:
    print("Command: `PYTHONPATH=. python benchmarks/ddpm_vs_ddim.py > benchmarks/sections/ddpm_vs_ddim.md`")
    ring = flowode.analytic.gmm_ring()
    table("Exact eps of the ring (DiscreteVPSchedule.linear, float64)", ring.model(flowode.DiscreteVPSchedule.linear()),
          ring, torch.float64)
    table("Shipped ring8 network (float32)", flowode.load_pretrained("ring8"), ring, torch.float32)
    cells, fl = digits_study(flowode.load_pretrained("digits_uncond"), n=DIGITS_SAMPLES, seed=0)
    print("\nSame as `flowode study ddpm-vs-ddim --model digits_uncond` (128 samples, seed 0).\n")
    print(digits_markdown(cells, fl, DIGITS_TITLE, DIGITS_SAMPLES))


if __name__ == "__main__":
    main()
