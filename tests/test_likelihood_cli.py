"""``flowode likelihood`` (issue 12, item 4): shipped models, a data file, the 2-D figure, errors."""

import json

import numpy as np
import pytest
import torch

from flowode.cli import main


def test_ring8_with_figure_and_json(tmp_path, capsys):
    fig, out = tmp_path / "ring8.png", tmp_path / "res.json"
    rc = main(["likelihood", "--model", "ring8", "--samples", "32", "--rtol", "1e-3", "--grid", "12",
               "--figure", str(fig), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and fig.exists() and "bits/dim" in text and "true bits/dim" in text and "NFE" in text
    rec = json.loads(out.read_text())
    assert len(rec["bits_per_dim"]) == 32 and rec["divergence"] == "exact" and rec["nfe"] > 0


def test_data_file_and_quantised_data(tmp_path, capsys):
    k = np.random.default_rng(0).integers(0, 256, size=(8, 2))
    path = tmp_path / "x.npy"
    np.save(path, (-1 + 2 * k / 255).astype(np.float32) * 2)  # 8-bit values in [-2, 2]
    rc = main(["likelihood", "--model", "ring8", "--data", str(path), "--bits", "8", "--data-range=-2,2",
               "--rtol", "1e-3"])
    text = capsys.readouterr().out
    assert rc == 0 and "offset 6.0000 bits/dim" in text  # log2(256 / 4)


def test_digits_hutchinson(capsys):
    rc = main(["likelihood", "--model", "digits", "--samples", "2", "--levels", "17", "--rtol", "1e-2",
               "--probes", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and "hutchinson" in text and "offset 3.0875" in text


@pytest.mark.parametrize("argv, what", [
    (["--model", "ring8", "--bits", "8", "--samples", "4"], "not 256-level data"),
    (["--model", "ring8", "--sigma-start", "0"], "sigma_start"),
    (["--model", "ring8", "--solver", "heun"], "steps"),
    (["--model", "digits", "--figure", "x.png", "--samples", "1", "--rtol", "1e-1", "--probes", "2"], "2-D"),
])
def test_errors_are_one_line(argv, what, capsys):
    rc = main(["likelihood", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and what in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_data_file_must_exist(tmp_path, capsys):
    torch.save({"x": 1}, tmp_path / "bad.pt")
    assert main(["likelihood", "--data", str(tmp_path / "bad.pt")]) == 2
    assert "one tensor" in capsys.readouterr().err
