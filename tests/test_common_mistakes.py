"""The messages in docs/common-mistakes.md are the real ones: every ``console`` block runs in an
empty folder holding ``notes.txt``; its ``$ flowode ...`` lines run through ``flowode.cli.main``
(other ``$`` lines through the shell), earlier commands must succeed, and the last one's stderr
must be exactly the block's other lines (numbers in scientific notation, such as a diverging loss,
are compared up to their digits, which may differ between CPUs)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from flowode.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "common-mistakes.md"


def _blocks() -> list[tuple[list[str], list[str]]]:
    out = []
    for body in re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S):
        lines = body.rstrip("\n").splitlines()
        out.append(([ln[2:] for ln in lines if ln.startswith("$ ")], [ln for ln in lines if not ln.startswith("$ ")]))
    return out


BLOCKS = _blocks()


def test_the_page_has_blocks():
    assert len(BLOCKS) >= 15


@pytest.mark.parametrize("commands, expected", BLOCKS, ids=[b[0][-1][:60] for b in BLOCKS])
def test_message_is_the_real_one(commands, expected, tmp_path, monkeypatch, capsys):
    if "--device cuda" in commands[-1] and torch.cuda.is_available():
        pytest.skip("the message is the one of a machine without CUDA")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    for i, cmd in enumerate(commands):
        last = i == len(commands) - 1
        if cmd.startswith("flowode "):
            capsys.readouterr()
            code = main(shlex.split(cmd)[1:])
            err = capsys.readouterr().err
        else:
            proc = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True)
            code, err = proc.returncode, proc.stderr
        if not last:
            assert code == 0, (cmd, err)
    assert code != 0
    assert _mask(err.strip().splitlines()) == _mask(expected)


def _mask(lines: list[str]) -> list[str]:
    return [re.sub(r"\d+(\.\d+)?e[+-]\d+", "<number>", ln) for ln in lines]
