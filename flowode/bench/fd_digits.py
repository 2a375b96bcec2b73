"""FD-digits: a Fréchet distance for the 8x8 digits in the features of a small shipped classifier.

FID (Heusel et al. 2017, eq. 6) compares two sample sets through Gaussians fitted to their
features: ``FD = |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^(1/2) C_b C_a^(1/2))^(1/2))``. Inception
features mean nothing on 8x8 digits, so flowode ships its own feature network:
:class:`DigitsClassifier`, a CNN of 5.7k parameters trained on the real digits
(``sklearn.datasets.load_digits``) with the split of ``scripts/train_pretrained.py``'s SVC (a
``torch.randperm(1797)`` of seed 0: the first 1200 train, the other 597 held out). Its card
(``flowode/pretrained/classifiers/digits_cnn.json``) records the held-out accuracy.

* :func:`digits_features`: the 32 penultimate activations (before their ReLU) of images in ``[-1, 1]``;
* :func:`frechet_distance`: FD between two feature sets (float64, symmetric square roots);
  :func:`frechet_distance_extrapolated`: its value extrapolated to infinitely many samples;
* :func:`fd_digits`: FD of generated digits to the 1200 real training digits (``extrapolate=True``:
  the extrapolated value);
* :func:`fd_floor`: the same for ``n`` *real* held-out digits (the finite-sample floor at ``n``: what a
  perfect sampler would score with ``n`` samples), and between two disjoint real halves;
* :func:`confidence`: the classifier's confidence statistics of samples (share above 0.8 / 0.9,
  class histogram, smallest class share, entropy); :func:`heldout_accuracy`.

FD is biased upward at finite ``n`` (the covariance estimates are noisy), and the bias grows with the
spread of the samples, so at small ``n`` a less diverse sample set can score *below* real digits.
A raw number is only meaningful next to the floor at the same ``n``; the extrapolated FD (Chong &
Forsyth 2020, "Effectively unbiased FID": FD is linear in ``1/n``, fit on subsets and read at
``1/n = 0``) removes most of that bias, at the price of more variance.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DigitsClassifier", "load_digits_classifier", "digits_features", "digits_probabilities",
           "frechet_distance",
           "frechet_distance_extrapolated", "fd_digits", "fd_floor", "confidence", "heldout_accuracy", "digits_split",
           "train_digits_classifier", "CLASSIFIER_PATH"]

CLASSIFIER_PATH = Path(__file__).resolve().parents[1] / "pretrained" / "classifiers" / "digits_cnn.pt"
FEATURES = 32


class DigitsClassifier(nn.Module):
    """conv3x3(1->8) ReLU, conv3x3 stride 2 (8->16) ReLU, linear 256 -> 32 (the features), ReLU,
    linear 32 -> 10. Input: ``(B, 1, 8, 8)`` in ``[-1, 1]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, FEATURES)
        self.head = nn.Linear(FEATURES, 10)

    def features(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(h.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


def digits_split(seed: int = 0, n_train: int = 1200) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_heldout, y_heldout)`` of the real digits in ``[-1, 1]``, the split of the
    pretrained cards' SVC (``torch.randperm`` of ``seed``; the first ``n_train`` train)."""
    from ..data import load_digits

    x, y = load_digits(return_labels=True)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def _check_images(x: Tensor, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or tuple(x.shape[-2:]) != (8, 8):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be 8x8 digits shaped (B, 1, 8, 8) in [-1, 1], got {shape}.")
    x = x.detach().reshape(-1, 1, 8, 8).to("cpu", torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` holds NaN or Inf; FD-digits needs finite samples.")
    return x


def train_digits_classifier(seed: int = 0, epochs: int = 150, batch_size: int = 64, lr: float = 1e-2
                            ) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train :class:`DigitsClassifier` on the 1200 training digits (Adam, cosine lr, random one-pixel
    shifts as augmentation; a few seconds on one CPU thread). Returns the network and its card."""
    x_tr, y_tr, x_te, y_te = digits_split()
    torch.manual_seed(seed)
    net = DigitsClassifier()
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(x_tr.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(x_tr.shape[0], generator=g)
        for i in range(0, x_tr.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb = x_tr[idx]
            sh = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = F.pad(xb, (1, 1, 1, 1), value=-1.0)[..., 1 + sh[0]:9 + sh[0], 1 + sh[1]:9 + sh[1]]
            loss = F.cross_entropy(net(xb), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    net.eval()
    card = {"name": "digits_cnn", "class": "flowode.bench.fd_digits.DigitsClassifier",
            "parameters": sum(p.numel() for p in net.parameters()), "features": FEATURES,
            "training": {"data": "sklearn load_digits, torch.randperm(1797, seed 0)[:1200]", "seed": seed,
                         "epochs": epochs, "batch_size": batch_size, "lr": lr, "steps": step,
                         "optimizer": "Adam, cosine lr, random +-1 pixel shifts"},
            "heldout_accuracy": heldout_accuracy(net), "heldout_n": int(x_te.shape[0]),
            "command": "python scripts/train_fd_digits.py"}
    return net, card


@lru_cache(maxsize=1)
def load_digits_classifier() -> DigitsClassifier:
    """The shipped classifier (CPU, float32, eval mode, frozen)."""
    net = DigitsClassifier()
    try:
        net.load_state_dict(torch.load(CLASSIFIER_PATH, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"the FD-digits classifier {str(CLASSIFIER_PATH)!r} cannot be loaded ({type(exc).__name__}); "
                         "write it again with `python scripts/train_fd_digits.py`.") from None
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def classifier_card() -> dict[str, Any]:
    """The card of the shipped classifier (held-out accuracy, training options)."""
    return json.loads(CLASSIFIER_PATH.with_suffix(".json").read_text())  # type: ignore[no-any-return]


def digits_features(x: Tensor, net: Optional[DigitsClassifier] = None) -> Tensor:
    """The classifier's 32 penultimate activations (before their ReLU) of digits ``x``, float64 ``(B, 32)``."""
    net = load_digits_classifier() if net is None else net
    with torch.no_grad():
        return net.features(_check_images(x)).to(torch.float64)


def digits_probabilities(x: Tensor, net: Optional[DigitsClassifier] = None) -> Tensor:
    """The classifier's class probabilities of digits ``x``, float64 ``(B, 10)``."""
    net = load_digits_classifier() if net is None else net
    with torch.no_grad():
        return torch.softmax(net(_check_images(x)).to(torch.float64), dim=1)


def heldout_accuracy(net: Optional[DigitsClassifier] = None) -> float:
    """Accuracy of the classifier on the 597 held-out real digits."""
    _, _, x_te, y_te = digits_split()
    return float((digits_probabilities(x_te, net).argmax(1) == y_te).double().mean())


def _sqrtm_psd(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((c + c.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``:
    ``|mu_a - mu_b|^2 + tr C_a + tr C_b - 2 tr (C_a^(1/2) C_b C_a^(1/2))^(1/2)`` (Heusel et al. 2017,
    eq. 6; Dowson & Landau 1982), unbiased covariances, float64, symmetric eigen-square roots."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance needs feature sets (N, D) and (M, D), got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"frechet_distance needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}.")
    a, b = a.to(torch.float64), b.to(torch.float64)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    sa = _sqrtm_psd(ca)
    cross = torch.linalg.eigvalsh(sa @ cb @ sa).clamp(min=0).sqrt().sum()
    return float((a.mean(0) - b.mean(0)).pow(2).sum() + ca.trace() + cb.trace() - 2 * cross)


def frechet_distance_extrapolated(a: Tensor, b: Tensor, fractions: tuple[float, ...] = (0.25, 1 / 3, 0.5, 1.0),
                                  repeats: int = 8, seed: int = 0) -> float:
    """:func:`frechet_distance` of ``a`` to ``b`` extrapolated to infinitely many samples of ``a``
    (Chong & Forsyth 2020, sec. 3: ``FD(m) = FD_inf + k / m``): the mean FD of ``repeats`` random
    subsets of ``a`` of each size ``m = fraction * len(a)`` (one subset, ``a`` itself, at fraction 1),
    then the least-squares line in ``1 / m`` read at ``0``. ``b`` is used whole."""
    n = a.shape[0]
    sizes = sorted({max(2, int(round(f * n))) for f in fractions})
    if len(sizes) < 2:
        raise ValueError(f"frechet_distance_extrapolated needs at least two subset sizes; {n} samples give {sizes}.")
    g = torch.Generator().manual_seed(seed)
    inv, fds = [], []
    for m in sizes:
        reps = 1 if m == n else repeats
        vals = [frechet_distance(a if m == n else a[torch.randperm(n, generator=g)[:m]], b) for _ in range(reps)]
        inv.append(1.0 / m)
        fds.append(sum(vals) / len(vals))
    x = torch.tensor(inv, dtype=torch.float64)
    y = torch.tensor(fds, dtype=torch.float64)
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return float(y.mean() - slope * x.mean())


@lru_cache(maxsize=1)
def _train_features() -> Tensor:
    return digits_features(digits_split()[0])


def fd_digits(x: Tensor, extrapolate: bool = False) -> float:
    """FD-digits of samples ``x`` (``(B, 1, 8, 8)`` in ``[-1, 1]``): the Fréchet distance in
    :func:`digits_features` to the 1200 real training digits. Compare with :func:`fd_floor` at ``B``.
    ``extrapolate=True``: :func:`frechet_distance_extrapolated` (the value at infinitely many samples)."""
    f = digits_features(x)
    ref = _train_features()
    return frechet_distance_extrapolated(f, ref) if extrapolate else frechet_distance(f, ref)


def fd_floor(n: int, repeats: int = 5, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Finite-sample floors of :func:`fd_digits`, ``(mean, std)`` over ``repeats`` draws:

    * ``"heldout_vs_train"``: FD-digits of ``n`` real held-out digits (random subsets of the 597,
      ``n <= 597``) -- what a sampler that draws real digits scores with ``n`` samples;
    * ``"heldout_vs_train_inf"``: the same, extrapolated to infinite ``n``
      (:func:`frechet_distance_extrapolated` on each subset of ``n``; what ``fd_digits(x, extrapolate=True)``
      of ``n`` real digits gives);
    * ``"half_vs_half"``: FD between two disjoint random halves of all 1797 real digits (898 / 899),
      independent of ``n``.
    """
    x_tr, _, x_te, _ = digits_split()
    if not 2 <= n <= x_te.shape[0]:
        raise ValueError(f"`n`={n} must be in 2..{x_te.shape[0]} (the held-out real digits).")
    g = torch.Generator().manual_seed(seed)
    f_te = digits_features(x_te)
    f_all = digits_features(torch.cat([x_tr, x_te]))
    held, held_inf, half = [], [], []
    for i in range(repeats):
        sub = f_te[torch.randperm(f_te.shape[0], generator=g)[:n]]
        held.append(frechet_distance(sub, _train_features()))
        held_inf.append(frechet_distance_extrapolated(sub, _train_features(), seed=i))
        p = torch.randperm(f_all.shape[0], generator=g)
        half.append(frechet_distance(f_all[p[:f_all.shape[0] // 2]], f_all[p[f_all.shape[0] // 2:]]))
    out = {}
    for key, vals in (("heldout_vs_train", held), ("heldout_vs_train_inf", held_inf), ("half_vs_half", half)):
        t = torch.tensor(vals, dtype=torch.float64)
        out[key] = (float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0)
    return out


def confidence(x: Tensor) -> dict[str, Any]:
    """The classifier's view of samples ``x``: ``n``, ``mean_confidence`` (mean max probability),
    ``fraction_above_0.8`` / ``fraction_above_0.9``, ``class_histogram`` (argmax counts),
    ``min_class_share`` and ``class_entropy_nats`` (log 10 = 2.303 for uniform)."""
    p = digits_probabilities(x)
    top = p.max(1).values
    hist = torch.bincount(p.argmax(1), minlength=10)
    share = hist.double() / hist.sum()
    nz = share[share > 0]
    return {"n": int(p.shape[0]), "mean_confidence": float(top.mean()),
            "fraction_above_0.8": float((top > 0.8).double().mean()),
            "fraction_above_0.9": float((top > 0.9).double().mean()),
            "class_histogram": hist.tolist(), "min_class_share": float(share.min()),
            "class_entropy_nats": float(-(nz * nz.log()).sum())}
