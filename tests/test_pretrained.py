"""Shipped checkpoints: listed, load offline, sample; cards carry the quality figures."""

import json

import pytest
import torch

import flowode
from flowode.pretrained import PRETRAINED_DIR, load_card


def test_list_pretrained():
    names = flowode.list_pretrained()
    assert "digits" in names and "ring8" in names


def test_digits_loads_and_samples():
    model = flowode.load_pretrained("digits")
    assert isinstance(model, flowode.EpsilonModel)
    p = next(model.net.parameters())
    assert p.dtype == torch.float32 and p.device.type == "cpu" and not p.requires_grad
    x = flowode.sample(model, torch.randn(64, 1, 8, 8), steps=20, solver="ddim").x
    assert x.shape == (64, 1, 8, 8) and torch.isfinite(x).all()
    assert x.abs().max() < 3  # data live in [-1, 1]; a sane model stays near it


def test_digits_conditional_and_guided():
    labels = torch.arange(10)
    model = flowode.load_pretrained("digits", label=labels, guidance_scale=2.0)
    x = flowode.sample(model, torch.randn(10, 1, 8, 8), steps=5, solver="heun").x
    assert x.shape == (10, 1, 8, 8) and model.nfe == 9 and model.network_passes == 18
    with pytest.raises(ValueError, match="unconditional"):
        flowode.load_pretrained("ring8", label=3)


def test_ring8_loads_and_samples_near_the_ring():
    model = flowode.load_pretrained("ring8")
    x = flowode.sample(model, torch.randn(256, 2, generator=torch.Generator().manual_seed(0)), steps=20,
                       solver="heun").x
    r = x.norm(dim=1)
    assert torch.isfinite(x).all() and abs(float(r.median()) - 2.0) < 0.1
    # float64 states work on the float32 network (cast in and back)
    assert flowode.sample(model, torch.randn(4, 2, dtype=torch.float64), steps=3).x.dtype == torch.float64


@pytest.mark.parametrize("name", ["digits", "ring8"])
def test_cards(name):
    card = load_card(name)
    for key in ("arch", "schedule", "prediction", "data", "training", "command", "quality"):
        assert key in card, key
    assert card["command"].startswith("python scripts/train_pretrained.py")
    assert card["training"]["steps"] > 0 and card["training"]["final_loss"] > 0
    size = sum(f.stat().st_size for f in PRETRAINED_DIR.glob(f"{name}.*"))
    assert size < 4e6
    q = card["quality"]
    if name == "ring8":
        assert q["baseline_sw2_data_vs_data"] > 0 and "sw2_model_vs_data" in q["samplers"]["ddim-50"]
    else:
        assert "accuracy_vs_requested_class" in q["conditional"]["no_guidance"]
        assert "predicted_class_entropy_nats" in q["unconditional"]
    json.dumps(card)  # plain JSON


def test_unknown_name():
    with pytest.raises(ValueError, match="shipped ones are"):
        flowode.load_pretrained("cifar10")
