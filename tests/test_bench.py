"""Benchmark engine and plots: records, resume after SIGKILL, references, metrics, figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import flowode
from flowode import bench
from flowode.bench import (
    BenchSpec,
    Cell,
    append_record,
    cell_key,
    get_problem,
    load_results,
    markdown_table,
    parse_solver_spec,
    run_bench,
    sliced_wasserstein,
    split_list,
)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- parsing
def test_split_and_parse_solver_specs():
    assert split_list("ddim, heun[coordinates=lambda,x=1],rk4") == ["ddim", "heun[coordinates=lambda,x=1]", "rk4"]
    assert parse_solver_spec("ddim[eta=0.5]") == ("ddim", {"eta": 0.5})
    assert parse_solver_spec("heun[coordinates=lambda]") == ("heun", {"coordinates": "lambda"})
    assert parse_solver_spec({"name": "ddim", "options": {"eta": 1}}) == ("ddim", {"eta": 1})
    with pytest.raises(ValueError, match="key=value"):
        parse_solver_spec("ddim[eta]")


def test_resolve_solvers_reports_unknown_and_rejects_bad_options():
    ok, missing = bench.resolve_solvers(["ddim", "no_such_solver"])
    assert ok == [("ddim", {})] and len(missing) == 1 and "no_such_solver" in missing[0]
    with pytest.raises(TypeError, match="unknown option"):
        bench.resolve_solvers(["ddim[etaa=1]"])


def test_cell_key_is_canonical():
    a = cell_key("gmm2d", "ddim", 5, None, 0, {"b": 1, "a": 2}, 64)
    b = cell_key("gmm2d", "ddim", 5, None, 0, {"a": 2, "b": 1}, 64)
    assert a == b and a != cell_key("gmm2d", "ddim", 6, None, 0, {"a": 2, "b": 1}, 64)


# ------------------------------------------------------------------------------------------- records
def test_append_and_load_skip_torn_and_duplicate_lines(tmp_path):
    p = tmp_path / "r.jsonl"
    append_record(p, {"key": "a", "rmse": 1.0})
    append_record(p, {"key": "b", "rmse": float("nan")})  # non-finite -> null (strict JSON)
    append_record(p, {"key": "a", "rmse": 3.0})
    with open(p, "a") as f:
        f.write('{"key": "c", "rm')  # a torn last line
    recs = load_results(p)
    assert [r["key"] for r in recs] == ["a", "b"]
    assert recs[0]["rmse"] == 3.0 and recs[1]["rmse"] is None  # a repeated key keeps its latest record
    for line in p.read_text().splitlines()[:3]:
        json.loads(line)  # strict JSON, one object per line


# ------------------------------------------------------------------------------------------- engine
def test_run_bench_records_and_resume(tmp_path):
    spec = BenchSpec(problems=["gaussian"], solvers=["ddim", "heun", "not_registered_xyz"], nfe=[4, 8], samples=32)
    out = tmp_path / "results.jsonl"
    recs, missing = run_bench(spec, out, progress=False, log=lambda m: None)
    assert len(recs) == 4 and len(missing) == 1
    for r in recs:
        assert r["error"] is None
        for k in ("problem", "solver", "nfe", "rmse", "max_err", "seconds", "peak_mem_bytes", "mem_method",
                  "sw", "sw_ref", "steps", "nfe_budget"):
            assert k in r, k
        assert r["nfe"] <= r["nfe_budget"] and r["reference"] == "closed_form"
        assert 0 < r["rmse"] <= r["max_err"]
    heun8 = next(r for r in recs if r["solver"] == "heun" and r["nfe_budget"] == 8)
    assert heun8["nfe"] == 7 and heun8["steps"] == 4  # 3 two-stage steps + the final boundary step
    size = out.stat().st_size
    recs2, _ = run_bench(spec, out, progress=False, log=lambda m: None)
    assert out.stat().st_size == size  # nothing repeated
    assert [r["key"] for r in recs2] == [r["key"] for r in recs]
    table = markdown_table(recs2, missing)
    assert "| ddim |" in table and "not_registered_xyz" in table


def test_closed_form_reference_matches_reference_solve():
    prob = get_problem("gaussian")
    sched = prob.model.schedule
    x = prob.prior(16, sched.sigma_max, 0)
    exact = prob.exact(x, sched.sigma_max, 0.0)
    ref = flowode.reference_solve(prob.model, x, sched.sigma_max, 0.0)
    assert torch.allclose(exact, ref, atol=1e-7)


def test_reference_cache_reuses_solves(tmp_path):
    prob = get_problem("gmm2d")
    cache = bench.ReferenceCache(tmp_path / "refs")
    x = prob.prior(8, 10.0, 0)
    a, kind = cache.get(prob, x, 0, 10.0, 0.0)
    assert kind == "reference_solve" and len(list((tmp_path / "refs").glob("*.pt"))) == 1
    fresh = bench.ReferenceCache(tmp_path / "refs")  # a resumed run reads it from disk
    b, _ = fresh.get(prob, x, 0, 10.0, 0.0)
    assert torch.equal(a, b)


def test_failed_cell_is_recorded_not_retried(tmp_path, monkeypatch):
    spec = BenchSpec(problems=["gaussian"], solvers=["ddim"], nfe=[3], samples=8)
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise RuntimeError("network exploded")

    monkeypatch.setattr(bench.engine, "run_cell", boom)  # where run_bench looks it up
    recs, _ = run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    assert "network exploded" in recs[0]["error"]
    run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    assert len(calls) == 1
    assert "Failed cells" in markdown_table(recs)


def test_user_problem_from_module_path(tmp_path, monkeypatch):
    (tmp_path / "userprob.py").write_text(textwrap.dedent("""
        import torch, flowode
        def make():
            sched = flowode.DiscreteVPSchedule.linear()
            net = lambda x, t: torch.zeros_like(x)   # eps = 0: the data are a point mass at x/alpha
            return flowode.EpsilonModel(net, sched), (3,), torch.zeros(100, 3)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    prob = get_problem("userprob:make")
    assert prob.shape == (3,) and prob.dtype == torch.float32 and prob.data is not None
    cell = Cell("userprob:make", "ddim", {}, 5, None, 0, 16)
    rec = bench.run_cell(prob, cell, bench.ReferenceCache(None))
    assert rec["reference"] == "reference_solve" and rec["rmse"] < 1e-4
    with pytest.raises(ValueError, match="no attribute"):
        get_problem("userprob:nothing")


def test_unknown_problem_message():
    with pytest.raises(ValueError, match="gmm2d") as exc:
        get_problem("definitely_not_a_problem")
    if not hasattr(flowode, "load_pretrained"):
        assert "checkpoints are unavailable" in str(exc.value)


def test_shipped_checkpoint_through_load_pretrained(monkeypatch):
    class Shipped:  # the shape a checkpoint loader may return: a model plus its sample shape and data
        def __init__(self):
            self.model = flowode.EpsilonModel(lambda x, t: torch.zeros_like(x), flowode.DiscreteVPSchedule.linear())
            self.sample_shape = (1, 4, 4)
            self.data = torch.zeros(10, 1, 4, 4)

    def fake_loader(name):
        if name != "tiny":
            raise KeyError(name)
        return Shipped()

    monkeypatch.setattr(flowode, "load_pretrained", fake_loader, raising=False)
    prob = get_problem("tiny")
    assert prob.shape == (1, 4, 4) and prob.images and prob.data is not None
    with pytest.raises(ValueError, match="load_pretrained"):
        get_problem("not_shipped")


# ------------------------------------------------------------------------------------------- metrics
def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a + 0.5) == pytest.approx(0.5, rel=1e-9)  # 1-D: exactly the shift
    b = torch.randn(500, 8, generator=g, dtype=torch.float64)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[0] = 1.0
    # random unit directions: E[(theta . v)^2] = |v|^2 / d
    assert sliced_wasserstein(b, b + shift, projections=4000) == pytest.approx(8 ** -0.5, rel=0.05)


def test_memory_meter_reports_method():
    m = bench.MemoryMeter("cpu")
    with m:
        buf = torch.ones(16_000_000)  # 64 MB: above glibc's largest mmap threshold, so fresh pages
        del buf
    assert m.method in ("rss_hwm", "tracemalloc") and m.peak >= 0
    if m.method == "rss_hwm":
        if m.peak == 0:  # the kernel did not reset the high-water mark (/proc/self/clear_refs), seen once
            pytest.skip("RSS high-water mark was not reset by /proc/self/clear_refs on this system")
        assert m.peak > 32e6


# ------------------------------------------------------------------------------------------- plots
def test_plot_functions_write_files(tmp_path):
    from flowode import plot

    spec = BenchSpec(problems=["gmm2d"], solvers=["ddim", "heun"], nfe=[4, 8], samples=16)
    recs, _ = run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    files = plot.plot_results(recs, tmp_path, formats=("png",))
    assert {p.name for p in files} == {"error_vs_nfe.png", "time_vs_error.png", "sw_vs_nfe.png"}
    assert plot.plot_time_vs_error(recs, tmp_path / "tv.svg").exists()
    assert plot.plot_trajectories("gmm2d", ["ddim", "heun"], tmp_path / "t.pdf", nfe=6, samples=8).exists()
    prob = get_problem("shapes8x8")
    sol = flowode.sample(prob.model, prob.prior(3, prob.model.schedule.sigma_max, 0), nfe=5, solver="ddim",
                         save_trajectory=True)
    assert plot.plot_denoised_grid(sol, tmp_path / "x0.png").stat().st_size > 1000
    assert plot.plot_step_sizes({"ddim": sol}, tmp_path / "steps.png").exists()
    for p in tmp_path.glob("*.*"):
        if p.suffix in (".png", ".pdf", ".svg"):
            assert p.stat().st_size > 500
    with pytest.raises(ValueError, match="extension"):
        plot.plot_error_vs_nfe(recs, tmp_path / "x.jpg")


def test_fit_order_recovers_slope():
    from flowode.orders import fit_order
    from flowode.plot import tail_order

    n = [10, 20, 40, 80]
    assert tail_order(n, [3.0 * v ** -2.0 for v in n]) == pytest.approx(2.0)
    assert tail_order([10], [1.0]) is None
    # the tail fit ignores the pre-asymptotic head; the full fit does not
    err = [1.0, 3.0 * 20.0 ** -2.0, 3.0 * 40.0 ** -2.0, 3.0 * 80.0 ** -2.0]
    assert tail_order(n, err) == pytest.approx(2.0) and fit_order(n, err) != pytest.approx(2.0)


def test_pareto_front():
    from flowode.plot import _pareto

    assert _pareto([(1, 5), (2, 3), (3, 4), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]


# ------------------------------------------------------------------------------------------- kill + resume
SLOW = """
import time, torch, flowode
from flowode.analytic import AnalyticModel, Gaussian

def make():
    sched = flowode.DiscreteVPSchedule.linear()
    g = Gaussian([0.5, -0.5], [0.3, 0.6])
    def eps(x, s):
        time.sleep(0.01)   # a slow "network": cells take long enough to be killed midway
        return g.eps(x, s, float(sched.alpha_from_sigma(s)))
    return {"model": AnalyticModel(eps, sched), "shape": (2,), "dtype": torch.float64,
            "exact": lambda x, s0, s1: g.flow(x, s0, s1, sched), "data": lambda n, gen: g.sample(n, gen)}
"""


def test_bench_cli_killed_midway_loses_and_repeats_nothing(tmp_path):
    (tmp_path / "slowprob.py").write_text(SLOW)
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "flowode", "bench", "--problem", "slowprob:make", "--solvers", "ddim,heun",
           "--nfe", "3,6,9,12,15,18", "--samples", "8", "--out", str(out), "--no-figures", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = out / "results.jsonl"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if res.exists() and len(res.read_text().splitlines()) >= 2:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = res.read_text()
    n_before = len(before.splitlines())
    assert 2 <= n_before < 12, f"kill did not land midway ({n_before} of 12 cells)"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    after = res.read_text()
    assert after.startswith(before)  # nothing lost or rewritten
    recs = [json.loads(line) for line in after.splitlines()]
    keys = [r["key"] for r in recs]
    assert len(keys) == 12 and len(set(keys)) == 12  # every cell exactly once
    assert all(r["error"] is None and r["rmse"] > 0 for r in recs)
    assert {(r["solver"], r["nfe_budget"]) for r in recs} == {(s, n) for s in ("ddim", "heun")
                                                               for n in (3, 6, 9, 12, 15, 18)}


# ------------------------------------------------------------------------------------------- adaptive solvers
@pytest.fixture
def toy_adaptive():
    """A stand-in adaptive solver (DDIM on an internal log-SNR grid whose size follows rtol), registered
    for one test only: the engine must handle adaptive solvers whichever ones a build has."""
    import dataclasses
    import math as _m

    from flowode.solvers import SOLVERS, AdaptiveStepper, register
    from flowode.solvers.base import IntervalResult

    @dataclasses.dataclass
    class ToyAdaptive(AdaptiveStepper):
        rtol: float = 1e-3
        atol: float = 1e-3
        name = "toy_adaptive_test"
        order = 1
        source = "test stand-in"

        def integrate_interval(self, run, fld, y, s0, s1, outputs, field, on_accept):
            # Euler in (xbar, sigma) (= DDIM) on a log-spaced grid whose size follows rtol
            n = max(2, int(round(1 / self.rtol ** 0.5)))
            grid = [_m.exp(_m.log(s0) + (_m.log(s1) - _m.log(s0)) * i / (n - 1)) for i in range(n)]
            sizes, starts = [], []
            for a, b in zip(grid[:-1], grid[1:]):
                y = y + (b - a) * field(y, a)
                sizes.append(b - a)
                starts.append(a)
                on_accept(a, b, y)
            return IntervalResult(y, s1, [y], len(sizes), 0, sizes, starts)

    register(ToyAdaptive)
    yield ToyAdaptive.name
    SOLVERS.pop(ToyAdaptive.name)


def test_adaptive_solvers_run_per_tolerance(tmp_path, toy_adaptive):
    from flowode import plot

    spec = BenchSpec(problems=["gaussian"], solvers=["ddim", toy_adaptive], nfe=[5], tolerances=[1e-2, 1e-4],
                     samples=16)
    recs, _ = run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    ada = [r for r in recs if r["solver"] == toy_adaptive]
    assert len(ada) == 2 and all(r["nfe_budget"] is None and r["adaptive"] for r in ada)
    assert sorted(r["options"]["rtol"] for r in ada) == [1e-4, 1e-2]
    assert all(r["accepted"] + 1 == r["nfe"] for r in ada)  # + the driver's boundary step sigma_min -> 0
    tight = next(r for r in ada if r["options"]["rtol"] == 1e-4)
    loose = next(r for r in ada if r["options"]["rtol"] == 1e-2)
    assert tight["nfe"] > loose["nfe"] and tight["rmse"] < loose["rmse"]
    assert "rtol 0.0001" in markdown_table(recs)
    prob = get_problem("gmm2d")
    sol = flowode.integrate(prob.model, prob.prior(4, 100.0, 0), [100.0, 0.0], toy_adaptive)
    assert plot.plot_step_sizes({"toy": sol}, tmp_path / "s.png").exists()
    assert plot.plot_trajectories(prob, ["ddim", toy_adaptive], tmp_path / "t.png", nfe=5, samples=4).exists()


# ------------------------------------------------------------------------------------------- peers
def _peer_setup():
    prob = get_problem("gmm2d")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return prob.model, prob.model.schedule, x


def _available(name):
    why = bench.get_peer(name).unavailable()
    if why is not None:
        pytest.skip(why)
    return bench.get_peer(name)


@pytest.mark.parametrize("peer,solver", [("diffusers:ddim", "ddim"), ("diffusers:heun", "heun"),
                                         ("k-diffusion:euler", "euler"), ("k-diffusion:heun", "heun")])
def test_peer_matches_flowode_on_the_same_grid(peer, solver):
    """The peers reproduce flowode on the same grid, so the benchmark compares methods, not harnesses."""
    p = _available(peer)
    model, sched, x = _peer_setup()
    for n in (4, 5):  # divisors of 1000: diffusers' DDIM steps to t - 1000 // n, the next grid point only then
        ours = flowode.integrate(model, x, flowode.sigma_grid(sched, n, "trailing"), solver)
        ctr = bench.EpsCounter(model)
        r = p.run(ctr, x, sched, n, "trailing", {})
        assert ctr.calls == ours.nfe
        assert r.sigma_from == sched.sigma_max and r.sigma_to == 0.0 and r.spacing == "trailing"
        assert torch.allclose(r.x, ours.x, rtol=0, atol=1e-12)


def test_diffusers_ddim_endpoint_with_fixed_stride():
    p = _available("diffusers:ddim")
    model, sched, x = _peer_setup()
    r = p.run(bench.EpsCounter(model), x, sched, 7, "trailing", {})  # 142 - 1000 // 7 = 0
    assert r.sigma_to == pytest.approx(sched.sigma_min, rel=1e-12)


@pytest.fixture
def toy_peer():
    """A peer without an optional library: DDIM in xbar through the eps counter, with a one-step
    warm-up that needs at least 3 steps (so steps_for_nfe must skip step counts)."""

    class ToyPeer(bench.Peer):
        library = "toy"

        def unavailable(self):
            return None

        def options(self):
            return {"extra"}

        def _run(self, eps, x, schedule, steps, spacing, options):
            if steps < 3:
                raise IndexError("the toy warm-up needs 3 steps")
            grid = flowode.grids.resolve_grid(schedule, None, steps=steps, spacing=spacing)
            lv = [float(v) for v in grid]
            xbar = x / float(schedule.alpha_from_sigma(lv[0]))
            eps(x, lv[0])  # the warm-up call: one extra evaluation
            for a, b in zip(lv[:-1], lv[1:]):
                xbar = xbar + (b - a) * eps(xbar * float(schedule.alpha_from_sigma(a)), a)
            return bench.PeerRun(xbar * float(schedule.alpha_from_sigma(lv[-1])), lv[0], lv[-1], spacing or "trailing")

    peer = bench.register_peer(ToyPeer("ddim"))
    yield peer.name
    bench.PEERS.pop(peer.name)


def test_peer_runs_as_an_engine_cell(tmp_path, toy_peer):
    spec = BenchSpec(problems=["gaussian"], solvers=["ddim", toy_peer, "diffusers:nope"], nfe=[2, 6], samples=16,
                     spacings=["trailing"])
    recs, missing = run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    assert len(missing) == 1 and "diffusers:nope" in missing[0]
    by = {(r["solver"], r["nfe_budget"]): r for r in recs}
    assert "no step count fits NFE <= 2" in by[(toy_peer, 2)]["error"]
    toy, ours = by[(toy_peer, 6)], by[("ddim", 6)]
    assert toy["error"] is None and toy["nfe"] == 6 and toy["steps"] == 5  # 5 steps + the warm-up call
    assert toy["sigma_from"] == ours["sigma_from"] and toy["sigma_to"] == 0.0 and toy["reference"] == "closed_form"
    ours5 = run_bench(BenchSpec(problems=["gaussian"], solvers=["ddim"], nfe=[5], samples=16, spacings=["trailing"]),
                      tmp_path / "r.jsonl", progress=False, log=lambda m: None)[0][0]
    assert toy["rmse"] == pytest.approx(ours5["rmse"], rel=1e-12)  # the same DDIM steps
    for k in ("seconds", "peak_mem_bytes", "mem_method", "sw", "sw_ref", "max_err", "label", "spacing"):
        assert k in toy, k
    assert "toy `ddim`: ValueError: no step count fits NFE <= 2" in bench.failed_methods(recs)
    with pytest.raises(TypeError, match="unknown option"):
        bench.resolve_solvers([toy_peer + "[extrq=1]"], peers=True)
    ok, missing = bench.resolve_solvers([toy_peer])  # peers run in the engine only
    assert ok == [] and "peer" in missing[0]


# ------------------------------------------------------------------------------------------- engine extras
def test_optimized_spacing_cell(tmp_path):
    spec = BenchSpec(problems=["gmm2d"], solvers=["ddim"], nfe=[4], spacings=[None, bench.OPTIMIZED], samples=16,
                     calibration=16, optimize_evals=20)
    recs, _ = run_bench(spec, tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    base, opt = recs
    assert opt["error"] is None and opt["spacing"] == "optimized" and opt["nfe"] <= 4
    assert opt["sigmas"][0] == base["sigma_from"] and opt["sigmas"][-1] == 0.0 and len(opt["sigmas"]) == 5
    assert opt["cal_error_after"] <= opt["cal_error_before"] and opt["calibration"] == 16
    assert json.loads(opt["key"])["grid"] == {"calibration": 16, "max_evals": 20}
    assert "grid" not in json.loads(base["key"])  # keys of ordinary cells are as before
    assert "| ddim (optimized) |" in markdown_table(recs)


def test_adaptive_ladder_stops_past_max_nfe(tmp_path, toy_adaptive):
    spec = BenchSpec(problems=["gaussian"], solvers=[toy_adaptive], nfe=[], tolerances=[1e-1, 1e-2, 1e-4],
                     samples=8, adaptive_max_nfe=5)
    out = tmp_path / "r.jsonl"
    recs, _ = run_bench(spec, out, progress=False, log=lambda m: None)
    # rtol 0.1 -> 3 + 1 evaluations, rtol 0.01 -> 10 + 1 > 5: the ladder stops there, 1e-4 never runs
    assert [r["options"]["rtol"] for r in recs] == [1e-1, 1e-2]
    size = out.stat().st_size
    assert [r["key"] for r in run_bench(spec, out, progress=False, log=lambda m: None)[0]] == [r["key"] for r in recs]
    assert out.stat().st_size == size


# ------------------------------------------------------------------------------------------- flowode vs peers
def test_headline_uses_full_range_rows_only():
    smax = 157.4
    rows = [
        {"problem": "m", "solver": "a", "options": {}, "nfe_budget": 5, "nfe": 5, "rmse": 0.2,
         "spacing_requested": "trailing", "sigma_from": smax, "sigma_to": 0.0},
        {"problem": "m", "solver": "b", "options": {}, "nfe_budget": 5, "nfe": 5, "rmse": 0.01,
         "spacing_requested": "leading", "sigma_from": 10.0, "sigma_to": 0.0},
        {"problem": "m", "solver": "diffusers:c", "options": {}, "nfe_budget": 5, "nfe": 5, "rmse": 0.4,
         "spacing_requested": None, "sigma_from": smax, "sigma_to": 0.0},
        {"problem": "m", "solver": "diffusers:d", "options": {}, "nfe_budget": 5, "nfe": 5, "rmse": 0.1,
         "spacing_requested": None, "sigma_from": smax, "sigma_to": 0.01},
    ]
    t = bench.headline_table(rows, [5])
    assert "| a [spacing:trailing], 5 | 2.000e-01 | diffusers c [default], 5 | 4.000e-01 | 0.500 |" in t
    assert "leading" not in t
    m = bench.method_table(rows, [5])
    assert "| flowode | b | - / - / - |" in m and "| diffusers | d | 1.00e-01† |" in m
