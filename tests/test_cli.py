"""The ``flowode`` command line: every subcommand's --help, the commands the README promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowode.cli import COMMANDS, main
from flowode.solvers import SOLVERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: flowode " + command in capsys.readouterr().out


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "flowode", "--help"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    for name in ("bench", "demo", "plot", "sample", "solvers", "trajectories"):
        assert name in out.stdout


def test_solvers_lists_every_registered_solver(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name, cls in SOLVERS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        claims = cls().order_claims()
        assert " / ".join(c.short() for c in claims) in line and cls.source[:20] in line
    assert main(["solvers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(SOLVERS)
    assert all({"order", "nfe_per_step", "source", "options"} <= set(r) for r in rows)


def test_bench_command_as_documented(tmp_path, capsys):
    out = tmp_path / "b"
    code = main(["bench", "--problem", "gmm2d", "--solvers", "ddim,heun,dpm_solver++_2m", "--nfe", "5,10,20",
                 "--out", str(out), "--samples", "64", "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ran = {r["solver"] for r in recs}
    assert {"ddim", "heun"} <= ran
    for r in recs:
        assert {"problem", "solver", "nfe", "rmse", "seconds"} <= set(r)
    table = (out / "table.md").read_text()
    assert "| ddim |" in table and "| heun |" in table
    if "dpm_solver++_2m" not in SOLVERS:  # reported clearly, not fatal
        assert "dpm_solver++_2m" in captured.err and "dpm_solver++_2m" in table
    else:
        assert "dpm_solver++_2m" in ran
    figs = {p.name for p in out.glob("*.png")}
    assert {"error_vs_nfe.png", "time_vs_error.png", "trajectories_gmm2d.png"} <= figs
    # the same command again runs nothing new
    n = len(recs)
    assert main(["bench", "--problem", "gmm2d", "--solvers", "ddim,heun,dpm_solver++_2m", "--nfe", "5,10,20",
                 "--out", str(out), "--samples", "64", "--no-progress", "--no-figures"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == n
    # flowode plot re-draws from the file
    assert main(["plot", str(out / "results.jsonl"), "--out", str(tmp_path / "re"), "--formats", "svg"]) == 0
    assert (tmp_path / "re" / "error_vs_nfe.svg").exists() and (tmp_path / "re" / "table.md").exists()


def test_bench_from_toml_config(tmp_path):
    cfg = tmp_path / "grid.toml"
    cfg.write_text('[bench]\nproblems = ["gaussian"]\nsolvers = ["ddim", "ddim[eta=0.5]"]\nnfe = [3, 6]\n'
                   f'samples = 16\nout = "{tmp_path / "c"}"\n')
    assert main(["bench", "--config", str(cfg), "--no-figures", "--no-progress"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "c" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and {r["label"] for r in recs} == {"ddim", "ddim[eta=0.5]"}


def test_demo_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--nfe", "4,8", "--samples", "32", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| solver |" in printed and (out / "table.md").exists()
    figs = list(out.glob("*.png"))
    assert len(figs) >= 3, figs
    assert {"error_vs_nfe.png", "trajectories_gmm2d.png", "step_sizes.png", "x0_grid_shapes8x8.png"} <= \
        {p.name for p in figs}


def test_sample_writes_npy_pt_png(tmp_path):
    assert main(["sample", "--problem", "gmm2d", "--nfe", "6", "--samples", "10",
                 "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (10, 2)
    assert main(["sample", "--problem", "gmm2d", "--solver", "heun", "--steps", "3", "--samples", "5",
                 "--out", str(tmp_path / "s.pt")]) == 0
    assert torch.load(tmp_path / "s.pt").shape == (5, 2)
    assert main(["sample", "--problem", "shapes8x8", "--nfe", "5", "--samples", "9", "--out", str(tmp_path / "g.png"),
                 "--x0-grid", str(tmp_path / "x0.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 200 and (tmp_path / "x0.png").exists()


def test_trajectories_command(tmp_path):
    assert main(["trajectories", "--solvers", "ddim,heun", "--nfe", "6", "--samples", "8",
                 "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["bench", "--problem", "nope", "--solvers", "ddim", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown `problem` 'nope'" in err and "Traceback" not in err
    assert main(["sample", "--out", str(tmp_path / "x.jpg")]) == 2
    assert ".npy" in capsys.readouterr().err
    assert main(["trajectories", "--problem", "gmm64", "--out", str(tmp_path / "t.png")]) == 2
    assert "2-D" in capsys.readouterr().err
