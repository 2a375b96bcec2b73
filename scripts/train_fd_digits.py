"""Train and install the FD-digits feature classifier (flowode/pretrained/classifiers/digits_cnn.*).

    python scripts/train_fd_digits.py      # a few seconds on one CPU thread, deterministic

The card records the held-out accuracy (597 real digits) and, for comparison, the confidence
statistics of the held-out digits and the FD floors (see flowode.bench.fd_digits).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flowode.bench import fd_digits as fdd  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    net, card = fdd.train_digits_classifier()
    card["training"]["seconds"] = round(time.perf_counter() - t0, 1)
    card["training"]["torch"] = torch.__version__
    fdd.CLASSIFIER_PATH.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, fdd.CLASSIFIER_PATH)
    fdd.load_digits_classifier.cache_clear()
    fdd._train_features.cache_clear()
    _, _, x_te, _ = fdd.digits_split()
    card["heldout_confidence"] = fdd.confidence(x_te)
    card["fd_floor"] = {str(n): fdd.fd_floor(n, repeats=5) for n in (250, 500, 597)}
    fdd.CLASSIFIER_PATH.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
