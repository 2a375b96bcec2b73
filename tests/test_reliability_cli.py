"""Issue 10, command line: shipped checkpoints work where the docs show them; bad output paths,
garbage files and bad counts end in one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import flowode
from flowode.cli import main


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("flowode ")]
    assert lines and "error" in lines[-1], err
    for n in needles:
        assert n in lines[-1], (n, err)
    return lines[-1]


# ------------------------------------------------------------------------------ shipped checkpoints
def test_sample_and_bench_shipped_checkpoints(tmp_path, capsys):
    assert main(["sample", "--problem", "digits", "--samples", "3", "--nfe", "4",
                 "--out", str(tmp_path / "d.npy")]) == 0
    assert np.load(tmp_path / "d.npy").shape == (3, 1, 8, 8)
    assert main(["bench", "--problem", "ring8", "--solvers", "ddim", "--nfe", "3", "--samples", "8",
                 "--out", str(tmp_path / "b"), "--no-progress", "--no-figures"]) == 0
    assert "| ddim |" in (tmp_path / "b" / "table.md").read_text()
    assert flowode.load_pretrained("digits").sample_shape == (1, 8, 8)


def test_demo_checkpoint_draws_its_figure_or_fails(tmp_path, capsys):
    args = ["demo", "--problems", "gaussian", "--solvers", "ddim", "--nfe", "4", "--samples", "16", "--no-progress",
            "--out", str(tmp_path / "d")]
    assert main(args + ["--checkpoint", "digits"]) == 0
    assert (tmp_path / "d" / "x0_grid_digits.png").exists()
    assert main(args + ["--checkpoint", "ring8"]) == 2
    _one_line(capsys, "`--checkpoint` 'ring8' is not an image model")
    assert main(args + ["--checkpoint", "nope"]) == 2
    _one_line(capsys, "`--checkpoint` 'nope' is unavailable")


def test_load_pretrained_label_out_of_range():
    with pytest.raises(ValueError, match=r"`label`=12 is not a class of model 'digits': use an integer in 0\.\.9"):
        flowode.load_pretrained("digits", label=12)
    with pytest.raises(ValueError, match="`label`=-1"):
        flowode.load_pretrained("digits", label=torch.tensor([0, -1]))


def _card_copy(tmp_path):
    from flowode.pretrained import PRETRAINED_DIR

    for ext in (".json", ".pt"):
        (tmp_path / f"m{ext}").write_bytes((PRETRAINED_DIR / f"ring8{ext}").read_bytes())
    return tmp_path / "m.json"


@pytest.mark.parametrize("what", ["pt-truncated", "pt-garbage", "card-garbage", "card-not-a-card"])
def test_garbage_weights_or_card_name_the_file(tmp_path, capsys, what):
    card = _card_copy(tmp_path)
    target = card.with_suffix(".pt") if what.startswith("pt") else card
    data = target.read_bytes()
    target.write_bytes({"pt-truncated": data[: len(data) // 2], "pt-garbage": b"\x00garbage" * 10,
                        "card-garbage": b'{"arch": ', "card-not-a-card": b"[1, 2]"}[what])
    with pytest.raises(ValueError, match=str(target.name)):
        flowode.load_pretrained(str(card))
    assert main(["sample", "--problem", str(card), "--samples", "2", "--out", str(tmp_path / "x.npy")]) == 2
    _one_line(capsys, target.name)


# ------------------------------------------------------------------------------ output paths
@pytest.mark.parametrize("command", [
    ["bench", "--problem", "gaussian", "--solvers", "ddim", "--nfe", "3", "--samples", "4", "--no-progress"],
    ["invert", "--problem", "gaussian", "--samples", "4", "--steps", "3", "--methods", "ddim"],
    ["demo", "--problems", "gaussian", "--solvers", "ddim", "--nfe", "3", "--samples", "4", "--no-progress"],
    ["train", "--steps", "2", "--quiet"],
])
@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_folder_that_is_a_file(tmp_path, capsys, command, where):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "sub"
    assert main(command + ["--out", str(out)]) == 2
    _one_line(capsys, "`--out`", "choose a writable location" if where == "under-file" else "is an existing file")
    assert (tmp_path / "afile").read_text() == "x"


def test_sample_out_in_a_file_or_a_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["sample", "--samples", "2", "--out", str(tmp_path / "afile" / "s.npy")]) == 2
    _one_line(capsys, "`--out`", "its folder")
    (tmp_path / "dir.npy").mkdir()
    assert main(["sample", "--samples", "2", "--out", str(tmp_path / "dir.npy")]) == 2
    _one_line(capsys, "is a folder; give a file name")


def test_counts_must_be_positive(capsys):
    assert main(["invert", "--samples", "0"]) == 2
    _one_line(capsys, "`--samples` must be a positive integer, got 0")
    assert main(["invert", "--steps", "0"]) == 2
    _one_line(capsys, "`--steps`")
    assert main(["sample", "--samples", "0"]) == 2
    _one_line(capsys, "`--samples` must be a positive integer, got 0")


def test_sample_device_is_checked_first(tmp_path, capsys):
    assert main(["sample", "--samples", "2", "--device", "gpu", "--out", str(tmp_path / "s.npy")]) == 2
    _one_line(capsys, "`device` 'gpu' is not a torch device")


def test_more_flags_checked_first(tmp_path, capsys):
    assert main(["trajectories", "--samples", "0", "--out", str(tmp_path / "t.png")]) == 2
    _one_line(capsys, "`--samples` must be a positive integer, got 0")
    (tmp_path / "bad.toml").write_text("[bench")
    assert main(["bench", "--config", str(tmp_path / "bad.toml")]) == 2
    _one_line(capsys, "is not valid TOML")
    assert main(["sample", "--problem", "ring8", "--x0-grid", str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "s.npy")]) == 2
    _one_line(capsys, "`--x0-grid` draws image x0 predictions")
    for flags, msg in ((["--threads", "0"], "`--threads` must be a positive integer"),
                       (["--data", "digits", "--channel-mults", "abc"], "`--channel-mults` must be")):
        assert main(["train", "--out", str(tmp_path / "t"), "--steps", "1", "--quiet", *flags]) == 2
        _one_line(capsys, msg)


def test_plot_on_a_garbage_file(tmp_path, capsys):
    bad = tmp_path / "results.jsonl"
    bad.write_bytes(bytes(range(256)) * 4)
    assert main(["plot", str(bad)]) == 2
    _one_line(capsys, "holds no readable records")


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    import flowode.cli.solvers as s

    monkeypatch.setattr(s, "run", lambda args: (_ for _ in ()).throw(KeyError("boom")))
    monkeypatch.delenv("FLOWODE_TRACEBACK", raising=False)
    assert main(["solvers"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "FLOWODE_TRACEBACK=1" in err and "Traceback" not in err
