"""benchmarks/accuracy.py on the flowode.bench engine: its cells go through the engine's store
(resumable), its optimised grids go to the solvers with the best built-in RMSE, and its tables pick
full-range rows only. (The peers' agreement with flowode on the same grid is tested with the peers,
in test_bench.py.)"""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
accuracy = pytest.importorskip("accuracy")


def test_optimize_top_ranks_builtin_full_range_grids_of_flowode_only():
    full = {"sigma_from": 157.4, "sigma_to": 0.0}
    rows = [
        {"problem": "p", "solver": "a", "nfe_budget": 5, "spacing_requested": None, "rmse": 0.3, **full},
        {"problem": "p", "solver": "a", "nfe_budget": 5, "spacing_requested": "logsnr", "rmse": 0.1, **full},
        {"problem": "p", "solver": "b", "nfe_budget": 5, "spacing_requested": None, "rmse": 0.2, **full},
        {"problem": "p", "solver": "c", "nfe_budget": 5, "spacing_requested": "optimized", "rmse": 0.01, **full},
        {"problem": "p", "solver": "diffusers:d", "nfe_budget": 5, "spacing_requested": None, "rmse": 0.001, **full},
        {"problem": "p", "solver": "e", "nfe_budget": 10, "spacing_requested": None, "rmse": 0.001, **full},
        {"problem": "q", "solver": "f", "nfe_budget": 5, "spacing_requested": None, "rmse": 0.001, **full},
        {"problem": "p", "solver": "g", "nfe_budget": 5, "spacing_requested": None, "rmse": None, "error": "x"},
        # a run that starts below sigma_max (leading spacing) solves a shorter problem: not ranked
        {"problem": "p", "solver": "h", "nfe_budget": 5, "spacing_requested": "leading", "rmse": 1e-4,
         "sigma_from": 80.0, "sigma_to": 0.0},
    ]
    assert accuracy.optimize_top(rows, "p", 5, 1) == ["a"]
    assert accuracy.optimize_top(rows, "p", 5, 0) == ["a", "b"]


def test_small_run_through_the_engine_resumes_and_reports(tmp_path):
    out = tmp_path / "acc.jsonl"
    argv = ["--problems", "gmm2d", "--samples", "8", "--nfe", "5", "--solvers", "ddim", "heun", "--peers",
            "diffusers:ddim", "k-diffusion:euler", "--calibration", "8", "--opt-evals", "5", "--optimize-top", "1",
            "--out", str(out), "--markdown", str(tmp_path / "acc.md"), "--plot", str(tmp_path / "acc.png"),
            "--no-progress"]
    before = torch.get_default_dtype()
    accuracy.main(argv)
    assert torch.get_default_dtype() is before  # float64 inside main() only
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["key"] for r in recs}) == len(recs)
    flowode_cells = [r for r in recs if ":" not in r["solver"]]
    assert len(flowode_cells) == 2 * 8 + 1  # two solvers x {default + 7 spacings} + one optimised grid
    opt = [r for r in recs if r.get("spacing_requested") == "optimized"]
    assert len(opt) == 1 and opt[0]["solver"] == accuracy.optimize_top(recs, "gmm2d", 5, 1)[0]
    size = out.stat().st_size
    accuracy.main(argv)  # resumed: nothing runs again
    assert out.stat().st_size == size
    md = (tmp_path / "acc.md").read_text()
    assert "### Best flowode solver + grid vs best peer" in md and "| gmm2d | 5 |" in md
    assert (tmp_path / "acc.png").stat().st_size > 1000
    accuracy.main(argv + ["--table-only"])
    assert (tmp_path / "acc.md").read_text() == md
