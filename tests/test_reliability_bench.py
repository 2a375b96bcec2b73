"""Issue 10, bench resume: cell keys name the model, device and repeats; failed cells can be
retried; settings that would fail every cell are refused before the first; torn lines are skipped,
reported and never glued to the next record."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from flowode.bench import append_record, read_results
from flowode.cli import main

FAST = ["--no-progress", "--no-figures", "--samples", "8"]


def _bench(tmp_path, *extra):
    return main(["bench", "--problem", "gaussian", "--solvers", "ddim", "--nfe", "3", "--out", str(tmp_path / "b"),
                 *FAST, *extra])


def _records(tmp_path):
    return read_results(tmp_path / "b" / "results.jsonl")[0]


def test_changed_user_model_reruns_its_cells(tmp_path, monkeypatch):
    mod = tmp_path / "mymodel.py"

    def write(std):
        mod.write_text(textwrap.dedent(f"""
            import flowode
            def make():
                g = flowode.Gaussian([0.0, 1.0], [{std}, 0.5])
                return g.model(flowode.DiscreteVPSchedule.linear()), (2,)
        """))
        sys.modules.pop("mymodel", None)

    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["bench", "--problem", "mymodel:make", "--solvers", "ddim", "--nfe", "3", "--out", str(tmp_path / "b"),
            *FAST]
    write(0.3)
    assert main(args) == 0
    first = _records(tmp_path)
    write(0.7)  # same name, another model: the old cell must not be reused
    assert main(args) == 0
    recs = _records(tmp_path)
    assert len(recs) == 2 and recs[0]["key"] != recs[1]["key"]
    assert recs[0]["rmse"] == first[0]["rmse"]
    # and its error is measured against the new model's reference, not the cached old one
    fresh = ["bench", "--problem", "mymodel:make", "--solvers", "ddim", "--nfe", "3", "--out", str(tmp_path / "c"),
             *FAST]
    assert main(fresh) == 0
    assert recs[1]["rmse"] == read_results(tmp_path / "c" / "results.jsonl")[0][0]["rmse"] != recs[0]["rmse"]


def test_repeats_and_device_are_part_of_the_key(tmp_path):
    assert _bench(tmp_path) == 0
    assert _bench(tmp_path, "--repeats", "2") == 0  # a new cell, not the 1-repeat timing
    keys = [json.loads(r["key"]) for r in _records(tmp_path)]
    assert [k["repeats"] for k in keys] == [1, 2] and all(k["device"] == "cpu" for k in keys)
    assert len({k["model"] for k in keys}) == 1
    from flowode.bench import Cell

    a = Cell("p", "ddim", {}, 5, None, 0, 8, model="m", device="cpu", repeats=1)
    assert a.key != Cell("p", "ddim", {}, 5, None, 0, 8, model="m", device="cuda:0", repeats=1).key


def test_retry_failed_reruns_only_failed_cells(tmp_path, monkeypatch, capsys):
    import flowode.bench.engine as engine

    real = engine.run_cell
    monkeypatch.setattr(engine, "run_cell", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))
    assert _bench(tmp_path) == 1  # every cell failed: not exit 0
    assert "all 1 cells failed" in capsys.readouterr().err
    monkeypatch.setattr(engine, "run_cell", real)
    assert _bench(tmp_path) == 1  # resumed without the flag: the failed record is kept
    assert _bench(tmp_path, "--retry-failed") == 0
    recs = _records(tmp_path)
    assert len(recs) == 1 and recs[0]["error"] is None and recs[0]["rmse"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--spacing", "foo"], "unknown `spacing` 'foo'"),
    (["--solvers", "ddim[eta=2]"], "use eta <= 1"),
    (["--samples", "-3"], "`samples` must be a positive integer"),
    (["--samples", "0"], "`samples` must be a positive integer"),
    (["--device", "gpu"], "`device` 'gpu' is not a torch device"),
    (["--nfe", ""], "no `nfe` budgets given"),
])
def test_bad_settings_refused_before_the_first_cell(tmp_path, capsys, flags, message):
    args = ["bench", "--problem", "gaussian", "--solvers", "ddim", "--nfe", "3", "--out", str(tmp_path / "b"),
            "--no-progress", "--no-figures", "--samples", "8", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "results.jsonl").exists()


def test_cuda_on_a_cpu_build_is_refused(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _bench(tmp_path, "--device", "cuda") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_network_failure_is_a_failed_cell_and_a_nonzero_exit(tmp_path, monkeypatch, capsys):
    (tmp_path / "nanmodel.py").write_text(textwrap.dedent("""
        import torch, flowode
        def make():
            return flowode.EpsilonModel(lambda x, t: torch.full_like(x, float("nan")),
                                        flowode.DiscreteVPSchedule.linear()), (2,)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["bench", "--problem", "nanmodel:make", "--solvers", "ddim", "--nfe", "3,5", "--out",
                 str(tmp_path / "b"), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and "all 2 cells failed" in err and "Traceback" not in err
    assert all(r["error"] for r in _records(tmp_path))


def test_torn_line_is_skipped_reported_and_not_glued(tmp_path, capsys):
    assert _bench(tmp_path) == 0
    path = tmp_path / "b" / "results.jsonl"
    with open(path, "a") as f:
        f.write('{"key": "torn", "rm')  # power loss in the middle of a write
    append_record(path, {"key": "next", "rmse": 1.0})
    lines = path.read_text().splitlines()
    assert lines[-2] == '{"key": "torn", "rm' and json.loads(lines[-1])["key"] == "next"
    recs, skipped = read_results(path)
    assert [r["key"] for r in recs][-1] == "next" and skipped == [2]
    capsys.readouterr()
    assert main(["bench", "--problem", "gaussian", "--solvers", "ddim", "--nfe", "3,4", "--out",
                 str(tmp_path / "b"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable line(s)" in err and "line 2" in err
    assert all(json.loads(ln) for ln in path.read_text().splitlines() if ln != '{"key": "torn", "rm')


def test_preflight_refuses_a_group_failing_at_its_smallest_and_largest_budget(tmp_path, monkeypatch):
    import flowode
    from flowode.bench import BenchSpec, as_problem, run_bench
    from flowode.bench.problems import PROBLEMS

    calls = []

    def net(x, t):
        calls.append(x.shape[0])
        raise ValueError("this network wants 3 channels")

    model = flowode.EpsilonModel(net, flowode.DiscreteVPSchedule.linear())
    monkeypatch.setitem(PROBLEMS, "refuses", lambda: as_problem((model, (2,)), "refuses"))
    with pytest.raises(ValueError, match=r"cell refuses ddim NFE=9 cannot run \(tried on one sample before the "
                                         r"benchmark, at NFE 3 and 9\): ValueError: this network wants 3 channels"):
        run_bench(BenchSpec(problems=["refuses"], solvers=["ddim"], nfe=[3, 5, 9], samples=4),
                  tmp_path / "r.jsonl", progress=False, log=lambda m: None)
    assert set(calls) == {1, 2}  # the fingerprint probe (2 samples) and the one-sample preflight only
    assert not (tmp_path / "r.jsonl").exists()


def test_stochastic_cell_samples_do_not_depend_on_the_sample_count(monkeypatch):
    """A DDPM cell's draws are keyed by (seed, sample index, step): its first 4 samples are the same bits
    whether the cell has 4 or 12 samples (issue 14; with one torch.Generator they were not)."""
    import torch

    from flowode.bench import engine, get_problem
    from flowode.bench.metrics import ReferenceCache
    from flowode.bench.spec import Cell

    outs = []
    real = engine.integrate

    def keep(*args, **kwargs):
        sol = real(*args, **kwargs)
        outs.append(sol.x)
        return sol

    monkeypatch.setattr(engine, "integrate", keep)
    prob = get_problem("gmm2d")
    for n in (4, 12):
        outs.clear()
        engine.run_cell(prob, Cell("gmm2d", "ddpm", {}, 6, None, 0, n), ReferenceCache(None), sw_projections=8)
        if n == 4:
            first = outs[0]
    assert outs[0].shape[0] == 12 and torch.equal(outs[0][:4], first)
