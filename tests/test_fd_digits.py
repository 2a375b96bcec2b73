"""FD-digits (flowode.bench.fd_digits), the digits DDPM-vs-DDIM rows, and the shipped digits_uncond model."""

import hashlib
import json

import numpy as np
import pytest
import torch

import flowode
from flowode.bench import fd_digits as fdd
from flowode.pretrained import PRETRAINED_DIR, init_from_pretrained, load_card

torch.set_num_threads(1)


def _fd_oracle(a, b):
    """FD from scipy's general matrix square root (Heusel et al. 2017, eq. 6), an independent formula."""
    from scipy.linalg import sqrtm

    a, b = a.numpy(), b.numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * cross))


def test_frechet_distance_matches_scipy_oracle_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = 0.5 * torch.randn(200, 6, generator=g, dtype=torch.float64) + 1.0
    assert fdd.frechet_distance(a, b) == pytest.approx(_fd_oracle(a, b), rel=1e-9, abs=1e-10)
    assert abs(fdd.frechet_distance(a, a)) < 1e-9
    # 1-D closed form: (mu_a - mu_b)^2 + (s_a - s_b)^2 on the sample moments
    x, y = a[:, :1], b[:, :1]
    closed = float((x.mean() - y.mean()) ** 2 + (x.std() - y.std()) ** 2)
    assert fdd.frechet_distance(x, y) == pytest.approx(closed, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        fdd.frechet_distance(a[:1], b)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fdd.frechet_distance(a, b[:, :3])


def test_extrapolated_fd_removes_most_of_the_finite_sample_bias():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5000, 8, generator=g, dtype=torch.float64)
    for n in (100, 200, 400):  # the same law: the true FD is 0 and the raw FD is all bias
        a = torch.randn(n, 8, generator=g, dtype=torch.float64)
        assert abs(fdd.frechet_distance_extrapolated(a, ref)) < 0.5 * fdd.frechet_distance(a, ref)
    with pytest.raises(ValueError, match="two subset sizes"):
        fdd.frechet_distance_extrapolated(ref[:3], ref, fractions=(1.0,))


def test_classifier_card_accuracy_and_features():
    card = fdd.classifier_card()
    acc = fdd.heldout_accuracy()
    assert acc == pytest.approx(card["heldout_accuracy"], abs=1e-12) and acc > 0.97
    assert card["parameters"] == sum(p.numel() for p in fdd.load_digits_classifier().parameters()) < 12_000
    x_tr = fdd.digits_split()[0]
    f = fdd.digits_features(x_tr[:10])
    assert f.shape == (10, 32) and f.dtype == torch.float64
    p = fdd.digits_probabilities(x_tr[:10])
    assert torch.allclose(p.sum(1), torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="8x8"):
        fdd.digits_features(torch.zeros(3, 64))
    with pytest.raises(ValueError, match="NaN"):
        fdd.digits_features(torch.full((2, 1, 8, 8), float("nan")))


def test_fd_floor_separates_real_from_noise_and_confidence_stats():
    floor = fdd.fd_floor(200, repeats=2)
    assert set(floor) == {"heldout_vs_train", "heldout_vs_train_inf", "half_vs_half"}
    noise = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 0 < floor["heldout_vs_train"][0] < 0.1 * fdd.fd_digits(noise)
    assert floor["half_vs_half"][0] > 0
    with pytest.raises(ValueError, match="597"):
        fdd.fd_floor(600)
    c = fdd.confidence(fdd.digits_split()[2])
    assert sum(c["class_histogram"]) == c["n"] == 597
    assert c["fraction_above_0.9"] <= c["fraction_above_0.8"] and c["fraction_above_0.8"] > 0.9
    assert c["min_class_share"] > 0.05 and abs(c["class_entropy_nats"] - np.log(10)) < 0.02


def test_init_from_pretrained_folds_the_null_label_exactly():
    from flowode.nets import UNet

    net = UNet(in_channels=1, base_channels=24, channel_mults=(1, 2), num_res_blocks=1)
    init_from_pretrained(net, "digits")
    src = flowode.load_pretrained("digits")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    with torch.no_grad():
        assert torch.allclose(net.eval()(x, t), src.net(x, t), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="init_from"):
        init_from_pretrained(UNet(in_channels=1, base_channels=16), "digits")


def _sha(name):
    return hashlib.sha256((PRETRAINED_DIR / name).read_bytes()).hexdigest()


def test_digits_uncond_ships_loads_and_keeps_digits_untouched():
    # the existing digits weights are pinned: other numbers (learned solvers, the README) depend on them
    assert _sha("digits.pt") == "e519a144c0c18865cfa13ab4678e14c489f7b7e3e6f010fa98d7ce173b194d5f"
    assert _sha("digits_uncond.pt") == load_card("digits_uncond")["sha256"]
    assert "digits_uncond" in flowode.list_pretrained()
    assert (PRETRAINED_DIR / "digits_uncond.pt").stat().st_size < 1.6e6
    model = flowode.load_pretrained("digits_uncond")
    assert model.sample_shape == (1, 8, 8) and not model.card["arch"]["config"].get("num_classes")
    x = flowode.sample(model, torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)), steps=5).x
    assert x.shape == (8, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="unconditional"):
        flowode.load_pretrained("digits_uncond", label=3)
    from flowode.bench.problems import get_problem, model_fingerprint

    assert model_fingerprint(get_problem("digits_uncond")) != model_fingerprint(get_problem("digits"))


def test_digits_uncond_card_records_the_criterion():
    card = load_card("digits_uncond")
    q = card["quality"]
    assert card["command"] == "python scripts/train_pretrained.py digits_uncond"
    assert card["training"]["init_from"]["model"] == "digits" and card["training"]["seconds"] > 0
    u = q["fd_digits"]["unconditional"]
    assert u["n"] == 1000 and u["fraction_above_0.8"] >= 0.8 and u["min_class_share"] >= 0.05
    assert all(q["fd_digits"]["criterion"].values())
    assert q["unconditional"]["fraction_confidence_above_0.8"] >= 0.8  # the SVC agrees
    assert "conditional" not in q


def test_digits_study_cells():
    from flowode.bench.study_digits import digits_markdown, digits_study

    model = flowode.load_pretrained("digits_uncond")
    cells, fl = digits_study(model, steps=(3, 6), etas=(0.0, 1.0), n=24, starts=2, draws=3, round_trip_samples=2)
    by = {(c.eta, c.steps): c for c in cells}
    assert by[0.0, 3].diversity == 0 and by[1.0, 3].diversity > 0.05
    assert by[0.0, 6].consistency == 0 and by[1.0, 6].same_class == 1
    assert all(c.fd > 0 and 0 <= c.confident <= 1 for c in cells)
    text = digits_markdown(cells, fl, "t", 24)
    assert "FD-digits floor at n = 24" in text and "eta 1.0 |" in text
    with pytest.raises(ValueError, match="597"):
        digits_study(model, n=1000)


def test_study_cli_digits(tmp_path):
    from flowode.cli import main

    out = tmp_path / "d.md"
    assert main(["study", "ddpm-vs-ddim", "--model", "digits_uncond", "--steps", "2,4", "--etas", "0,sigma-hat",
                 "--samples", "16", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("Command: `flowode study ddpm-vs-ddim --model digits_uncond") and "sigma-hat" in text
    assert main(["study", "ddpm-vs-ddim", "--model", "digits_uncond", "--samples", "1000", "--out", str(out)]) != 0


def test_classifier_card_is_json():
    json.loads(fdd.CLASSIFIER_PATH.with_suffix(".json").read_text())


def test_train_cli_init_from(tmp_path):
    from flowode.cli import main

    assert main(["train", "--data", "digits", "--init-from", "digits", "--steps", "2", "--batch-size", "4",
                 "--base-channels", "24", "--warmup", "1", "--quiet", "--out", str(tmp_path), "--name", "u"]) == 0
    card = json.loads((tmp_path / "u.json").read_text())
    assert card["training"]["init_from"]["model"] == "digits" and not card["arch"]["config"].get("num_classes")
    assert main(["train", "--data", "digits", "--init-from", "digits", "--steps", "2", "--base-channels", "16",
                 "--quiet", "--out", str(tmp_path / "b")]) != 0
