"""What makes a learned solver strong on the digits network: an ablation at NFE 10.

Each row fits :func:`flowode.learn_solver` on the digits network (the low-NFE headline's batches
and teachers: calibration seed 1001, validation seed 2002, test seed 0 -- ``benchmarks/low_nfe.py``)
with one change against the headline's configuration (``corrector=True``, history 2, 150 Adam
iterations at most, lr 0.01, patience 10, objective ``log``, 96 calibration images), and reports the
validation and the held-out test error (RMSE / median per-sample error against the teacher). The
``iters=0`` rows are the starts: ``dpm_solver++_2m`` and ``unipc[predictor=dpm_solver++]`` on their
best built-in spacing.

Usage::

    python benchmarks/learned_ablation.py     # -> benchmarks/sections/learned_ablation.md (~20 minutes on 2 cores)
"""

from __future__ import annotations

import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import low_nfe as L  # noqa: E402

import flowode  # noqa: E402
from flowode.learned import learn_solver, per_sample_errors  # noqa: E402

NFE = 10
HEADLINE = {"corrector": True, "iters": 150, "lr": 0.01, "patience": 10}
ROWS = [
    ("start: dpm_solver++_2m (no fit)", {"corrector": False, "iters": 0}),
    ("start: unipc[predictor=dpm_solver++] (no fit)", {"iters": 0}),
    ("no corrector", {"corrector": False}),
    ("headline (corrector)", {}),
    ("history 3", {"history": 3}),
    ("shifts of the network's input level", {"shift": True}),
    ("objective log+rmse", {"objective": "log+rmse"}),
    ("lr 0.02, 300 iterations, patience 12", {"lr": 0.02, "iters": 300, "patience": 12}),
    ("old headline settings: no corrector, lr 0.05, 40 iterations, patience 6",
     {"corrector": False, "lr": 0.05, "iters": 40, "patience": 6}),
    ("288 calibration images", {"calibration": 288}),
]


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(L.OUT, exist_ok=True)
    prob = L.problem("digits")
    data = {k: L.batch(prob, k) for k in ("calibration", "validation", "test")}
    (xv, rv), (xt, rt) = data["validation"], data["test"]
    lines = ["| configuration | fit (s) | iterations run | validation RMSE / median | test RMSE / median |",
             "|---|---|---|---|---|"]
    t_all = time.time()
    for label, change in ROWS:
        cfg = {**HEADLINE, **change}
        n_cal = cfg.pop("calibration", None)
        if n_cal is not None:
            L.SIZES["digits"] = {**L.SIZES["digits"], "calibration": n_cal}
            xc, rc = L.batch(prob, "calibration")
            L.SIZES["digits"] = {**L.SIZES["digits"], "calibration": 96}
        else:
            xc, rc = data["calibration"]
        t0 = time.time()
        slv = learn_solver(prob.model, xc, xv, NFE, reference_calibration=rc, reference_validation=rv,
                           shape=prob.shape, **cfg)
        dt = time.time() - t0
        e = per_sample_errors(flowode.sample(prob.model, xt, nfe=NFE, solver=slv).x, rt)
        v = slv.spec.errors["validation"]
        lines.append(f"| {label} | {dt:.0f} | {slv.spec.meta['iters_run']} | {v['rmse']:.2e} / {v['median']:.2e} | "
                     f"{float(e.pow(2).mean().sqrt()):.2e} / {float(e.median()):.2e} |")
        print(lines[-1], flush=True)
    text = ["# Learned solvers on digits: an ablation at NFE 10", "", "Command:", "", "```",
            "python benchmarks/learned_ablation.py", "```", "", __doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
            "", *lines, "", f"Total {time.time() - t_all:.0f} s on the 2-core build machine.", ""]
    with open(os.path.join(HERE, "sections", "learned_ablation.md"), "w") as f:
        f.write("\n".join(text))


if __name__ == "__main__":
    main()
