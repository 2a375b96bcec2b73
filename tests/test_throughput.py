"""The throughput benchmark's hand-written loops, the compile option and the GPU check's CPU exit
(issue 14, items 3 and 4)."""

from __future__ import annotations

import importlib.util
import random
import sys
import time
from pathlib import Path

import pytest
import torch

import flowode

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


tp = _load("throughput")


@pytest.mark.parametrize("solver", tp.SOLVERS)
def test_hand_loops_are_the_flowode_methods(solver):
    """Each hand-written loop is the same method as flowode's solver (float64, an exact Gaussian-mixture
    eps, so only round-off separates them), on a grid that ends at 0 and one that does not."""
    sched = flowode.DiscreteVPSchedule.linear()
    model = flowode.analytic.gmm_ring().model(sched)
    x = model.prior_sample((6, 2), seed=1).double()
    for grid in (flowode.sigma_grid(sched, 7, "trailing"), flowode.sigma_grid(sched, 7, "trailing")[:-1]):
        want = flowode.integrate(model, x, grid, solver).x
        got = tp.HAND[solver](model.fn, x, tp.Plan(model, grid))
        assert float((got - want).abs().max()) < 1e-12 * float(want.abs().max()) + 1e-13


def test_measure_runs_all_three_loops():
    model = flowode.load_pretrained("digits")
    with torch.no_grad():
        r = tp.measure(model, (1, 8, 8), 2, "dpm_solver++_2m", 4, 1, torch.device("cpu"), time.thread_time,
                       random.Random(0), True)
    assert r["nfe"] == 4 and r["diff_hand"] < 1e-5 and r["diff_diffusers"] < 1e-4 and r["vs_hand"] > 0


def test_compile_network_is_lazy_and_cuda_graphs_refuse_cleanly_without_cuda(monkeypatch):
    model = flowode.load_pretrained("digits")
    compiled = model.compile_network()  # nothing compiles before the first call
    assert compiled.fn is not model.fn and compiled.schedule is model.schedule and compiled.fn.eager is model.fn
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"`cuda_graphs=True` needs a network on a CUDA device.*CUDA is not available"):
        model.compile_network(cuda_graphs=True)
    with pytest.raises(ValueError, match="mode='reduce-overhead'"):
        model.compile_network(cuda_graphs=True, mode="max-autotune")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_keep_multistep_history_intact():
    """CUDA graphs replay into one output buffer: the clone keeps DPM-Solver++(2M)'s history right."""
    model = flowode.load_pretrained("digits", device="cuda")
    x = model.prior_sample((16, 1, 8, 8), seed=0).cuda()
    eager = flowode.sample(model, x, steps=8, solver="dpm_solver++_2m").x
    graphed = flowode.sample(model.compile_network(cuda_graphs=True), x, steps=8, solver="dpm_solver++_2m").x
    assert float((graphed - eager).abs().max()) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_streamed_trajectory_is_bitwise(tmp_path):
    model = flowode.load_pretrained("digits", device="cuda")
    x = model.prior_sample((8, 1, 8, 8), seed=0).cuda()
    mem = flowode.sample(model, x, steps=6, solver="unipc", save_at="steps")
    disk = flowode.sample(model, x, steps=6, solver="unipc", save_at="steps", save_to=tmp_path)
    assert torch.equal(mem.trajectory.cpu(), disk.trajectory) and torch.equal(mem.denoised.cpu(), disk.denoised)


def test_gpu_check_without_cuda_says_so_and_exits(monkeypatch, capsys):
    gpu_check = _load("gpu_check")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no CUDA device:") and "nothing was checked" in out and len(out.strip().splitlines()) == 1
    assert gpu_check.main(["--require-gpu"]) == 2
    assert [p.name for p in gpu_check.cuda_test_files()]  # the device tests it would run exist
