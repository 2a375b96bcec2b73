"""Sharded runs (flowode.distributed): 2 gloo processes under torchrun give the same outputs as one
process, bitwise for ``sample`` (a deterministic and a stochastic solver) and field by field, timing
aside, for ``bench``; a killed run resumes from its parts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flowode import distributed

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "finished", "peak_mem_bytes", "mem_method"}


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flowode(args: list[str], cwd: Path, nproc: int = 1) -> subprocess.CompletedProcess[str]:
    if nproc == 1:
        cmd = [sys.executable, "-m", "flowode", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", "-m", "flowode", *args]
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_blocks_assign_and_mine() -> None:
    assert distributed.blocks(10, 4) == [range(0, 4), range(4, 8), range(8, 10)]
    assert [i for i, _ in distributed.mine("abcde", distributed.Dist(rank=1, world=2))] == [1, 3]
    assert distributed.assign(["a", "b", "a", "c"], 2) == [0, 1, 0, 0]
    with pytest.raises(ValueError, match="block size"):
        distributed.blocks(4, 0)


def test_sample_refuses_a_bad_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flowode.cli import main

    assert main(["sample", "--block", "0", "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "`--block` must be a positive integer, got 0" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("solver", ["dpm_solver++_2m", "ddpm"])
def test_sample_two_ranks_bitwise(tmp_path: Path, solver: str) -> None:
    args = ["sample", "--samples", "40", "--block", "16", "--steps", "4", "--solver", solver]
    _flowode([*args, "--out", "one.npy"], tmp_path)
    out = _flowode([*args, "--out", "two.npy"], tmp_path, nproc=2)
    assert "3 blocks on 2 ranks" in out.stdout
    a, b = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert a.shape == (40, 2) and np.array_equal(a, b)
    assert not (tmp_path / "two.npy.parts").exists()  # parts removed after the merge


def test_sample_resumes_from_parts(tmp_path: Path) -> None:
    args = ["sample", "--samples", "24", "--block", "8", "--steps", "3", "--solver", "ddpm"]
    _flowode([*args, "--out", "ref.npy"], tmp_path)
    # a run killed after block 1 left its part on disk; a poisoned part proves it is reused, not redone
    import torch

    from flowode.cli import build_parser

    run = tmp_path / "run.npy"
    ref = np.load(tmp_path / "ref.npy")

    from flowode.bench import get_problem
    from flowode.cli.sample import parts_id

    ns = build_parser().parse_args([*args, "--out", str(run)])
    fp = parts_id(ns, get_problem(ns.problem), ns.steps, None)
    part = tmp_path / "run.npy.parts" / fp / "block-000001.pt"
    distributed.save_atomic({"x": torch.full((8, 2), 7.0), "nfe": 3, "steps": 3, "solver": "ddpm"}, part)
    _flowode([*args, "--out", str(run)], tmp_path)
    got = np.load(run)
    assert np.array_equal(got[:8], ref[:8]) and np.array_equal(got[16:], ref[16:])
    assert (got[8:16] == 7.0).all()  # the finished block was not redone


def _records(path: Path) -> dict[str, dict[str, object]]:
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {str(r["key"]): {k: v for k, v in r.items() if k not in TIMING} for r in recs}


def test_bench_two_ranks_same_records(tmp_path: Path) -> None:
    args = ["bench", "--problem", "gaussian", "--solvers", "ddim,heun,ddpm,bs23", "--nfe", "4,8",
            "--tolerances", "1e-2,1e-3", "--samples", "16", "--no-figures", "--no-progress"]
    _flowode([*args, "--out", "one"], tmp_path)
    # a killed 3-rank run left a part with three finished cells: the 2-rank run keeps them, runs the rest
    lines = (tmp_path / "one" / "results.jsonl").read_text().splitlines()
    parts = tmp_path / "two" / "results.parts"
    parts.mkdir(parents=True)
    (parts / "rank1-of-3.jsonl").write_text("\n".join(lines[:3]) + "\n")
    _flowode([*args, "--out", "two"], tmp_path, nproc=2)
    a, b = _records(tmp_path / "one" / "results.jsonl"), _records(tmp_path / "two" / "results.jsonl")
    assert len(a) == 8 and a == b
    assert not parts.exists()
    kept = {json.loads(line)["key"]: json.loads(line)["finished"] for line in lines[:3]}
    merged = [json.loads(line) for line in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert {r["key"]: r["finished"] for r in merged if r["key"] in kept} == kept  # not redone


def test_likelihood_two_ranks_bitwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``flowode likelihood`` under torchrun: blocks of --block samples round-robin over the ranks, each
    block's Hutchinson probes from its own seed; rank 0's merged results equal one process's bitwise.
    """
    args = ["likelihood", "--samples", "24", "--block", "8", "--solver", "heun", "--steps", "3", "--divergence",
            "hutchinson", "--probes", "2"]
    from flowode.cli import main

    monkeypatch.chdir(tmp_path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert main([*args, "--json", "one.json"]) == 0  # one process, in this one (no interpreter start-up)
    assert "sum over 3 blocks of --block 8;" in capsys.readouterr().out
    two = _flowode([*args, "--json", "two.json"], tmp_path, nproc=2)
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert len(a["bits_per_dim"]) == 24 and a == b
    assert "sum over 3 blocks of --block 8 on 2 ranks" in two.stdout
    assert not list(tmp_path.glob("*.parts"))


def test_study_two_ranks_same_table(tmp_path: Path) -> None:
    """``flowode study ddpm-vs-ddim`` under torchrun: its rows (one per eta, keyed draws) round-robin
    over the ranks; rank 0's table equals one process's, the wall-time table aside."""
    args = ["study", "ddpm-vs-ddim", "--model", "exact", "--steps", "2,4", "--etas", "0,1,sigma-hat",
            "--samples", "16"]
    _flowode([*args, "--out", "one.md"], tmp_path)
    _flowode([*args, "--out", "two.md"], tmp_path, nproc=2)

    def table(name: str) -> str:
        text = (tmp_path / name).read_text()
        return text[:text.index("wall time per sample")]

    assert table("one.md") == table("two.md") and "sigma-hat" in table("one.md")
    assert not list(tmp_path.glob("*.parts"))
