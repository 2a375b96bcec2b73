"""Issue 10, training: a diverging run stops with a clear error and writes nothing; a resume with
other data or another network is refused; names stay inside --out; unreadable checkpoints are
named; a network without parameters is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowode import data as fdata
from flowode.cli import main
from flowode.nets import MLP
from flowode.train import TrainConfig, TrainingDivergedError, train

TINY = ["--hidden", "16", "--depth", "1", "--batch-size", "16", "--quiet"]


def _sampler(n, g):
    return fdata.toy_2d("ring8", n, generator=g)


def _err(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_diverging_cli_run_fails_and_writes_no_weights(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--out", str(out), "--steps", "40", "--lr", "1e6", "--grad-clip", "0", *TINY]) == 2
    _err(capsys, "training diverged at step", "Lower `lr` (now 1e+06; CLI --lr)", "--grad-clip 1")
    assert not (out / "ring8.pt").exists() and not (out / "checkpoint.pt").exists()
    assert main(["train", "--out", str(out), "--steps", "40", "--lr", "inf", *TINY]) == 2
    _err(capsys, "`lr` must be a finite positive number, got inf")


def test_exploding_but_finite_loss_is_divergence():
    torch.manual_seed(0)
    with pytest.raises(TrainingDivergedError, match="over 1e\\+06 x the first steps'"):
        train(MLP(dim=2, hidden=32, depth=1), _sampler, TrainConfig(steps=60, batch_size=32, lr=1e3, warmup=10,
                                                                    grad_clip=None), progress=False)


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"

    def poisoned(n, g):  # NaN data from step 25 on (a corrupt shard of a stream)
        x = _sampler(n, g)
        poisoned.calls += 1
        return x * float("nan") if poisoned.calls > 25 else x

    poisoned.calls = 0
    torch.manual_seed(0)
    cfg = TrainConfig(steps=40, batch_size=16, checkpoint_every=10)
    with pytest.raises(TrainingDivergedError, match=r"step 26 \(loss nan\); the last good checkpoint \(step 20\)"):
        train(MLP(dim=2, hidden=16, depth=1), poisoned, cfg, checkpoint=ckpt, progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 20 and all(torch.isfinite(v).all() for v in state["net"].values())


def test_nan_row_in_a_dataset_is_refused():
    data = torch.randn(50, 2)
    data[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`data` has 1 row\(s\) with NaN or Inf \(first: row 7\)"):
        train(MLP(dim=2, hidden=8, depth=1), data, TrainConfig(steps=2, batch_size=4), progress=False)


def test_resume_with_other_data_or_network_is_refused(tmp_path, capsys):
    out = str(tmp_path / "t")
    assert main(["train", "--out", out, "--steps", "10", "--checkpoint-every", "5", *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--out", out, "--steps", "20", "--data", "moons", *TINY]) == 2
    _err(capsys, "was trained on other data (ring8 -> moons)", "--no-resume")
    assert main(["train", "--out", out, "--steps", "20", *TINY, "--hidden", "32"]) == 2
    _err(capsys, "holds another network (MLP layout", "--no-resume")
    assert main(["train", "--out", out, "--steps", "12", "--data", "moons", "--no-resume", *TINY]) == 0
    # Python: another dataset tensor under the same checkpoint
    ckpt = tmp_path / "c.pt"
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    train(MLP(dim=2, hidden=8, depth=1), torch.randn(20, 2), cfg, checkpoint=ckpt, progress=False, steps=2)
    with pytest.raises(ValueError, match="was trained on other data"):
        train(MLP(dim=2, hidden=8, depth=1), torch.randn(20, 2), cfg, checkpoint=ckpt, progress=False)


def test_name_cannot_leave_out(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    for name in ("../../escape", "sub/x", "..", ""):
        assert main(["train", "--out", str(tmp_path / "a" / "o"), "--steps", "2", "--name", name, *TINY]) == 2
        _err(capsys, "`--name`", "must be a plain file name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a"]


@pytest.mark.parametrize("garbage", [b"", b"\x00not a checkpoint" * 4, "truncate"])
def test_unreadable_checkpoint_is_named(tmp_path, capsys, garbage):
    out = tmp_path / "t"
    assert main(["train", "--out", str(out), "--steps", "4", *TINY]) == 0
    ck = out / "checkpoint.pt"
    ck.write_bytes(ck.read_bytes()[:200] if garbage == "truncate" else garbage)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--steps", "6", *TINY]) == 2
    _err(capsys, f"checkpoint {ck} cannot be read", "--no-resume")
    assert main(["train", "--out", str(out), "--steps", "6", "--no-resume", *TINY]) == 0


def test_parameter_free_network_is_refused():
    class Zero(nn.Module):
        def forward(self, x, t):
            return torch.zeros_like(x)

    with pytest.raises(ValueError, match="has no trainable parameters"):
        train(Zero(), torch.randn(10, 2), TrainConfig(steps=2, batch_size=2), progress=False)
