"""Training: objective targets, determinism, and bit-exact resume after an interruption."""

import pytest
import torch

import flowode
from flowode.data import toy_2d
from flowode.nets import MLP, UNet
from flowode.train import TrainConfig, make_schedule, train, training_target


def _ring(n, g):
    return toy_2d("ring8", n, generator=g)


def _config(**kw):
    base = dict(steps=10, batch_size=16, lr=1e-2, warmup=2, lr_decay="cosine", ema_decay=0.9, grad_clip=0.5,
                seed=3)
    base.update(kw)
    return TrainConfig(**base)


class Killed(RuntimeError):
    pass


def _states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["mlp", "unet-conditional"])
def test_resume_after_kill_is_bit_identical(tmp_path, kind):
    if kind == "mlp":
        def make():
            torch.manual_seed(0)
            return MLP(hidden=16, depth=2)
        data, labels, cfg = _ring, None, _config()
    else:
        def make():
            torch.manual_seed(0)
            return UNet(base_channels=8, num_classes=3, dropout=0.1)  # dropout: the global RNG matters too
        g = torch.Generator().manual_seed(0)
        data, labels = torch.rand(20, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 3, (20,), generator=g)
        cfg = _config(steps=7, batch_size=4, label_dropout=0.3, target="v")

    straight = train(make(), data, cfg, labels=labels, progress=False)

    ckpt = tmp_path / "ckpt.pt"

    def kill(step, loss):
        if step == cfg.steps - 2:  # dies two steps after the checkpoint at steps - 3 ...
            raise Killed

    torch.manual_seed(1234)  # the global RNG at the time of the crash is not what resumes use
    with pytest.raises(Killed):
        train(make(), data, cfg, labels=labels, checkpoint=ckpt, progress=False, callback=kill,
              checkpoint_every=cfg.steps - 3)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == cfg.steps - 3
    torch.manual_seed(999)
    resumed = train(make(), data, cfg, labels=labels, checkpoint=ckpt, progress=False,
                    checkpoint_every=cfg.steps - 3)  # ... and is started again
    assert resumed.resumed_from == cfg.steps - 3
    assert _states_equal(straight.net, resumed.net)
    assert _states_equal(straight.ema, resumed.ema)
    assert straight.losses == resumed.losses and len(resumed.losses) == cfg.steps
    # a finished checkpoint resumes to the same result without doing any step
    again = train(make(), data, cfg, labels=labels, checkpoint=ckpt, progress=False)
    assert again.resumed_from == cfg.steps and _states_equal(again.ema, straight.ema)


def test_same_seed_same_weights_other_seed_differs():
    def run(seed):
        torch.manual_seed(0)
        return train(MLP(hidden=16, depth=1), _ring, _config(steps=4, seed=seed), progress=False)

    a, b, c = run(1), run(1), run(2)
    assert _states_equal(a.net, b.net) and not _states_equal(a.net, c.net)


def test_resume_refuses_changed_options(tmp_path):
    ckpt = tmp_path / "c.pt"
    torch.manual_seed(0)
    train(MLP(hidden=8, depth=1), _ring, _config(steps=3), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(MLP(hidden=8, depth=1), _ring, _config(steps=6, lr=0.5), checkpoint=ckpt, progress=False)
    # more steps is allowed (continues); resume=False starts again
    r = train(MLP(hidden=8, depth=1), _ring, _config(steps=5), checkpoint=ckpt, progress=False)
    assert r.resumed_from == 3 and len(r.losses) == 5
    r = train(MLP(hidden=8, depth=1), _ring, _config(steps=2), checkpoint=ckpt, progress=False, resume=False)
    assert r.resumed_from is None


@pytest.mark.parametrize("target", ["eps", "v", "x0"])
def test_targets_match_the_model_conversions(target):
    """The regression target at timestep n, read back through EpsilonModel(prediction=target) at
    sigma(n), gives exactly the eps that made x_n: training and sampling agree on the parameterisation."""
    sched = make_schedule(_config())
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, generator=g, dtype=torch.float64)
    for n in (0, 17, 500, 999):
        abar = float(sched.alphas_cumprod_knots[n])
        a, s = abar**0.5, (1 - abar) ** 0.5
        xt = a * x0 + s * eps
        f64 = torch.float64
        out = training_target(target, x0, eps, torch.tensor(a, dtype=f64), torch.tensor(s, dtype=f64))
        model = flowode.EpsilonModel(lambda x, t, out=out: out, sched, prediction=target)
        pred = model.predict(xt, sched.sigma(float(n)))
        assert torch.allclose(pred.eps, eps, rtol=1e-9, atol=1e-9)
        assert torch.allclose(pred.x0, x0, rtol=1e-9, atol=1e-9)


def test_training_reduces_loss_and_gives_a_model():
    torch.manual_seed(0)
    r = train(MLP(hidden=32, depth=1), _ring, _config(steps=80, batch_size=128, lr=5e-3, lr_decay="constant",
                                                      target="x0"), progress=False)
    assert sum(r.losses[-20:]) < 0.85 * sum(r.losses[:20])
    m = r.model()
    assert m.prediction == "x0"
    x = flowode.sample(m, torch.randn(8, 2), steps=5, solver="heun").x
    assert x.shape == (8, 2) and torch.isfinite(x).all()


def test_bad_options():
    with pytest.raises(ValueError, match="target"):
        TrainConfig(target="score")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="sigmoid")
    with pytest.raises(ValueError, match="labels"):
        train(MLP(), _ring, _config(), labels=torch.zeros(3, dtype=torch.long), progress=False)


def test_cli_train_writes_a_loadable_card(tmp_path):
    from flowode.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data", "moons", "--steps", "6", "--batch-size", "16", "--hidden", "16", "--depth", "1",
            "--checkpoint-every", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    model = flowode.load_pretrained(out / "moons.json")
    assert model.card["training"]["steps"] == 6 and model.card["data"]["name"] == "moons"
    assert (out / "checkpoint.pt").exists()
    x = flowode.sample(model, torch.randn(5, 2), steps=4).x
    assert x.shape == (5, 2)
