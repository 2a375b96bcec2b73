"""Smoke tests of the core CLI commands (`flowode solvers`, `flowode demo`)."""

from __future__ import annotations

from flowode.cli import main


def test_solvers_lists_the_registry(capsys):
    assert main(["solvers"]) == 0
    out = capsys.readouterr().out
    for name in ("ddim", "ddpm", "euler", "heun", "rk4"):
        assert f"\n{name} " in out
    assert "NFE/step" in out


def test_demo_prints_a_table(tmp_path, capsys):
    assert main(["demo", "--samples", "8", "--nfe", "4", "--solvers", "ddim,heun", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| ddim[last_step=auto] (logsnr) | 2." in out and "| heun[last_step=auto] (logsnr) |" in out
    assert "| ddim[last_step=auto] (logsnr) |" in (tmp_path / "table.md").read_text()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
