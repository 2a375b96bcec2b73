"""Train, evaluate and install flowode's shipped checkpoints (flowode/pretrained/).

    python scripts/train_pretrained.py ring8     # MLP on the 8-Gaussian ring (a few minutes, 1 CPU thread)
    python scripts/train_pretrained.py digits    # small class-conditional UNet on sklearn digits
    python scripts/train_pretrained.py digits_uncond   # unconditional UNet fine-tuned from digits
    python scripts/train_pretrained.py           # all

Training is ``flowode train`` with the presets below into ``out/pretrained/NAME/`` (resumable: an
interrupted run started again continues from its checkpoint with bit-identical results). Then the
EMA weights are evaluated and copied, with their card, into ``flowode/pretrained/``:

* ring8: sliced Wasserstein-2 distance (500 random directions, 5000 points) of model samples to
  fresh data, next to the same distance between two independent data draws and to the samples of
  the *exact* model of the same mixture (``flowode.analytic.gmm_ring()``) integrated from the same
  noise with the same solver; plus the fraction of samples within 4 std of a mode and the mode
  occupancy.
* digits: an RBF SVC trained on 1200 real digits (held-out accuracy on the other 597 reported);
  on generated digits (a) the accuracy w.r.t. the requested class of class-conditional samples
  (without and with guidance), (b) for unconditional samples the predicted-class histogram, its
  entropy (log 10 = 2.303 for uniform) and the classifier's mean confidence, next to the same on
  real held-out digits, and (c) the nearest-training-image distance (memorisation check).
  Image grids go to docs/img/. Also the FD-digits view (flowode.bench.fd_digits: the shipped CNN's
  confidence statistics, FD-digits with its floor, the >= 80 % above 0.8 / every class >= 5 %
  criterion) and, for a model fine-tuned from another (``--init-from``), the same figures for the
  unconditional samples of that source model from the same noise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flowode  # noqa: E402
from flowode.cli import build_parser  # noqa: E402
from flowode.cli.train import train_named  # noqa: E402

PRESETS = {
    "ring8": ["--data", "ring8", "--steps", "3000", "--batch-size", "256", "--lr", "2e-3", "--warmup", "100",
              "--lr-decay", "cosine", "--ema-decay", "0.995", "--hidden", "128", "--depth", "3", "--seed", "0",
              "--checkpoint-every", "500", "--threads", "1"],
    "digits": ["--data", "digits", "--conditional", "--label-dropout", "0.2", "--steps", "2000", "--batch-size",
               "64", "--lr", "2e-3", "--warmup", "100", "--lr-decay", "cosine", "--ema-decay", "0.995",
               "--base-channels", "24", "--seed", "0", "--checkpoint-every", "200", "--threads", "1"],
    # unconditional: the digits UNet with its null label folded in (exactly digits' unconditional mode
    # at step 0), fine-tuned on every batch unconditionally (digits saw unlabelled batches only 20 %)
    "digits_uncond": ["--data", "digits", "--init-from", "digits", "--steps", "4000", "--batch-size", "64",
                      "--lr", "1e-3", "--warmup", "50", "--lr-decay", "cosine", "--ema-decay", "0.995",
                      "--base-channels", "24", "--seed", "1", "--checkpoint-every", "500", "--threads", "1"],
}
EVAL_STEPS = 50


# ------------------------------------------------------------------------------ metrics
def sliced_w2(a: torch.Tensor, b: torch.Tensor, projections: int = 500, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equal-size point clouds (Rabin et al. 2011):
    ``sqrt(mean_theta W2^2(<a, theta>, <b, theta>))``, with the 1-D W2 from sorted projections."""
    if a.shape != b.shape:
        raise ValueError("sliced_w2 needs equal-size samples")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    pa = torch.sort(a.to(torch.float64) @ theta, dim=0).values
    pb = torch.sort(b.to(torch.float64) @ theta, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def eval_ring8(model: flowode.EpsilonModel, n: int = 5000) -> dict:
    from flowode.analytic import gmm_ring
    from flowode.data import toy_2d

    mix = gmm_ring()
    exact = mix.model(model.schedule)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    data_a = toy_2d("ring8", n, generator=torch.Generator().manual_seed(2))
    data_b = toy_2d("ring8", n, generator=torch.Generator().manual_seed(3))
    out: dict = {"n_samples": n, "sw2_projections": 500, "baseline_sw2_data_vs_data": sliced_w2(data_a, data_b),
                 "samplers": {}}
    for solver, steps in (("ddim", EVAL_STEPS), ("heun", 25)):
        with torch.no_grad():
            x = flowode.sample(model, noise, steps=steps, solver=solver).x
            x_exact = flowode.sample(exact, noise.double(), steps=steps, solver=solver).x
        d = torch.cdist(x.double(), mix.means)
        near = d.min(1).values < 4 * 0.1
        near_exact = torch.cdist(x_exact, mix.means).min(1).values < 4 * 0.1
        counts = torch.bincount(d.argmin(1), minlength=8)
        out["samplers"][f"{solver}-{steps}"] = {
            "sw2_model_vs_data": sliced_w2(x, data_a),
            "sw2_exact_model_vs_data": sliced_w2(x_exact, data_a),
            "rmse_vs_exact_model_same_noise": float(((x.double() - x_exact) ** 2).sum(1).mean().sqrt()),
            "fraction_within_4std_of_a_mode": float(near.double().mean()),
            "fraction_within_4std_of_a_mode_exact_model": float(near_exact.double().mean()),
            "mode_counts": counts.tolist(),
        }
    return out


def _grid_png(images: torch.Tensor, nrow: int, path: Path, titles: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images.detach().clamp(-1, 1).reshape(-1, 8, 8).numpy()
    groups = [imgs] if titles is None else list(imgs.reshape(len(titles), -1, 8, 8))
    fig, axes = plt.subplots(1, len(groups), figsize=(2.6 * len(groups), 2.9), squeeze=False)
    for ax, grp, title in zip(axes[0], groups, titles or [None] * len(groups)):
        k = grp.shape[0]
        rows = math.ceil(k / nrow)
        canvas = -torch.ones(rows * 9 + 1, nrow * 9 + 1).numpy()
        for i in range(k):
            r, c = divmod(i, nrow)
            canvas[1 + 9 * r:9 + 9 * r, 1 + 9 * c:9 + 9 * c] = grp[i]
        ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eval_digits(name: str, card_path: Path, n_uncond: int = 1000, per_class: int = 50) -> dict:
    import numpy as np
    from sklearn.svm import SVC

    from flowode.data import digits_to_pixels, load_digits

    x, y = load_digits(return_labels=True)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    feats = digits_to_pixels(x).numpy()
    clf = SVC(gamma=0.001, C=10.0, probability=True, random_state=0).fit(feats[tr], y[tr].numpy())
    real_acc = float((clf.predict(feats[te]) == y[te].numpy()).mean())

    def stats(imgs: torch.Tensor) -> dict:
        f = digits_to_pixels(imgs).numpy()
        proba = clf.predict_proba(f)
        pred = proba.argmax(1)
        hist = np.bincount(pred, minlength=10)
        p = hist / hist.sum()
        ent = float(-(p[p > 0] * np.log(p[p > 0])).sum())
        d = torch.cdist(torch.as_tensor(f), torch.as_tensor(feats[tr])).min(1).values / 8.0  # [-1, 1] units
        return {"predicted_class_histogram": hist.tolist(), "predicted_class_entropy_nats": ent,
                "mean_confidence": float(proba.max(1).mean()),
                "fraction_confidence_above_0.8": float((proba.max(1) > 0.8).mean()),
                "fraction_confidence_above_0.9": float((proba.max(1) > 0.9).mean()),
                "mean_nearest_train_l2_distance_in_[-1,1]_units": float(d.mean()), "pred": pred}

    real = stats(x[te])
    real.pop("pred")
    out: dict = {"classifier": "sklearn SVC(gamma=0.001, C=10, probability=True) on 1200 real digits (0..16 pixels)",
                 "classifier_accuracy_on_597_real_held_out": real_acc, "real_held_out": real,
                 "sampler": f"ddim, {EVAL_STEPS} steps (trailing), float32", "unconditional": {},
                 "conditional": {}}
    base = flowode.load_pretrained(card_path)
    noise = torch.randn(n_uncond, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        xu = flowode.sample(base, noise, steps=EVAL_STEPS, solver="ddim").x
    u = stats(xu)
    u.pop("pred")
    u.update(n=n_uncond, finite=bool(torch.isfinite(xu).all()))
    u["fraction_pixels_outside_[-1.05,1.05]"] = float((xu.abs() > 1.05).double().mean())
    out["unconditional"] = u
    out["fd_digits"] = fd_digits_quality(xu)
    src = (base.card.get("training") or {}).get("init_from")
    if src:  # the model it was fine-tuned from, unconditional, the same noise and sampler
        with torch.no_grad():
            xs = flowode.sample(flowode.load_pretrained(src["model"]), noise, steps=EVAL_STEPS, solver="ddim").x
        svc = stats(xs)
        svc.pop("pred")
        out["init_from_unconditional"] = {"model": src["model"], "svc": svc, "fd_digits": fd_digits_quality(xs)}
    conditional = bool(base.card["arch"]["config"].get("num_classes"))
    if not conditional:
        out.pop("conditional")
    labels = torch.arange(10).repeat_interleave(per_class)
    noise_c = torch.randn(labels.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(2))
    cond_imgs = {}
    for w in ((None, 2.0) if conditional else ()):
        model = flowode.load_pretrained(card_path, label=labels, guidance_scale=w)
        with torch.no_grad():
            xc = flowode.sample(model, noise_c, steps=EVAL_STEPS, solver="ddim").x
        s = stats(xc)
        pred = s.pop("pred")
        s["accuracy_vs_requested_class"] = float((pred == labels.numpy()).mean())
        s["n"] = int(labels.shape[0])
        out["conditional"]["no_guidance" if w is None else f"guidance_{w:g}"] = s
        cond_imgs[w] = xc
    img = ROOT / "docs" / "img"
    _grid_png(xu[:64], 8, img / f"{name}_unconditional.png",
              titles=None)
    figures = [f"docs/img/{name}_unconditional.png"]
    if conditional:
        pick = torch.cat([torch.arange(10) * per_class + j for j in range(8)])  # 8 per class, column = class
        _grid_png(cond_imgs[None][pick], 10, img / f"{name}_conditional.png")
        figures.append(f"docs/img/{name}_conditional.png")
    # the README's figure: the same 64 noises through three solvers, 20 steps each
    noise64 = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    grids, titles = [], []
    for solver, steps in (("ddim", 20), ("heun", 10), ("rk4", 5)):
        with torch.no_grad():
            sol = flowode.sample(base, noise64, steps=steps, solver=solver)
        grids.append(sol.x)
        titles.append(f"{solver}, {steps} steps ({sol.nfe} NFE)")
    _grid_png(torch.cat(grids), 8, img / f"{name}_solvers.png", titles=titles)
    out["solvers_figure"] = titles
    out["figures"] = figures + [f"docs/img/{name}_solvers.png"]
    return out


def fd_digits_quality(xu: torch.Tensor, fd_n: int = 500) -> dict:
    """The FD-digits classifier's view of unconditional samples (flowode.bench.fd_digits): confidence
    statistics of all samples, FD-digits of the first ``fd_n`` with its floors at ``fd_n``, and the
    acceptance criterion of issue 13 item 6 (>= 80 % above 0.8, every class >= 5 %)."""
    from flowode.bench import fd_digits as fdd

    c = fdd.confidence(xu)
    _, _, x_te, _ = fdd.digits_split()
    return {"classifier": "flowode.bench.fd_digits (DigitsClassifier, flowode/pretrained/classifiers/digits_cnn)",
            "classifier_heldout_accuracy": fdd.heldout_accuracy(), "real_held_out": fdd.confidence(x_te),
            "unconditional": c, "fd_n": fd_n, "fd_digits": fdd.fd_digits(xu[:fd_n]),
            "fd_floor": fdd.fd_floor(fd_n, repeats=5),
            "criterion": {"fraction_above_0.8>=0.8": c["fraction_above_0.8"] >= 0.8,
                          "min_class_share>=0.05": c["min_class_share"] >= 0.05}}


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=list(PRESETS), help=f"which models ({', '.join(PRESETS)})")
    ap.add_argument("--work", default=str(ROOT / "out" / "pretrained"), help="training folder (resumable)")
    ap.add_argument("--install", default=str(ROOT / "flowode" / "pretrained"), help="where the shipped files go")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in args.names:
        if name not in PRESETS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(PRESETS)}")
        train_argv = ["train", *PRESETS[name], "--out", str(Path(args.work) / name), "--name", name]
        targs = build_parser().parse_args(train_argv)
        prev_card = Path(args.work) / name / f"{name}.json"
        prev = json.loads(prev_card.read_text())["training"] if prev_card.exists() else {}
        result, card, weights = train_named(targs, train_argv[1:])
        if result.resumed_from == result.step:
            # nothing left to train: keep the training time recorded by the run that trained it
            card["training"]["seconds"] = max(result.seconds_total, prev.get("seconds") or 0.0)
        print(f"[{name}] {result.step} steps, final loss {result.final_loss:.5f}, "
              f"{card['training']['seconds']} s training in total", flush=True)
        t0 = time.perf_counter()
        if name == "ring8":
            quality = eval_ring8(flowode.load_pretrained(weights.with_suffix(".json")))
        else:
            quality = eval_digits(name, weights.with_suffix(".json"))
        quality["eval_seconds"] = round(time.perf_counter() - t0, 1)
        card["command"] = f"python scripts/train_pretrained.py {name}"
        card["train_command"] = ("flowode train " + " ".join(PRESETS[name])
                                 + f" --out out/pretrained/{name} --name {name}")
        card["quality"] = quality
        dest = Path(args.install)
        dest.mkdir(parents=True, exist_ok=True)
        card["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        shutil.copyfile(weights, dest / f"{name}.pt")
        (dest / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(quality, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
