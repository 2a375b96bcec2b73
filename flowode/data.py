"""Training data: 2-D toy distributions drawn on the fly, and scikit-learn's 8x8 digits.

2-D toys (``toy_2d(name, n, generator=...)``, float32 by default):

==================  =========================================================================
``"ring8"``         8 equal Gaussians (std 0.1) on a circle of radius 2: exactly
                    :func:`flowode.analytic.gmm_ring`, so a trained model can be compared with the
                    exact flow of its own data distribution
``"grid9"``         3x3 Gaussians (std 0.1), spacing 2: :func:`flowode.analytic.gmm_grid`
``"moons"``         two interleaved half circles (as scikit-learn's ``make_moons``), noise 0.05,
                    centred and scaled by 1.5 so the data fill about ``[-2.3, 2.3] x [-1.3, 1.3]``
``"swissroll"``     2-D swiss roll ``r (cos r, sin r)``, ``r = 1.5 pi (1 + 2u)``, scaled by 1/5,
                    noise 0.05 (``[-2.8, 2.5]`` roughly)
``"checkerboard"``  uniform on the 8 dark squares of a 4x4 board on ``[-2, 2]^2``
==================  =========================================================================

Digits (``load_digits()``): the 1797 8x8 images of ``sklearn.datasets.load_digits`` (pixel values
0..16), scaled to ``[-1, 1]`` as ``x / 8 - 1``, shape ``(1797, 1, 8, 8)`` float32. scikit-learn
is imported only here (``pip install scikit-learn``, or ``pip install flowode[data]``).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ["toy_2d", "TOYS", "load_digits", "digits_to_pixels", "require_sklearn"]


def _ring8(n: int, g: Optional[torch.Generator]) -> Tensor:
    from .analytic import gmm_ring

    return gmm_ring().sample(n, generator=g)


def _grid9(n: int, g: Optional[torch.Generator]) -> Tensor:
    from .analytic import gmm_grid

    return gmm_grid().sample(n, generator=g)


def _moons(n: int, g: Optional[torch.Generator]) -> Tensor:
    upper = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    a = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    return pts + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _swissroll(n: int, g: Optional[torch.Generator]) -> Tensor:
    r = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    pts = torch.stack([r * torch.cos(r), r * torch.sin(r)], 1) / 5.0
    return pts + 0.05 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n: int, g: Optional[torch.Generator]) -> Tensor:
    # a point in a random dark square: column c in 0..3, row r in 0..3 with (r + c) even
    c = torch.randint(0, 4, (n,), generator=g)
    r = 2 * torch.randint(0, 2, (n,), generator=g) + (c % 2)
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    return torch.stack([c + u[:, 0], r + u[:, 1]], 1).to(torch.float64) - 2.0


TOYS: dict[str, Callable[[int, Optional[torch.Generator]], Tensor]] = {
    "ring8": _ring8, "grid9": _grid9, "moons": _moons, "swissroll": _swissroll, "checkerboard": _checkerboard,
}


def toy_2d(name: str, n: int, *, generator: Optional[torch.Generator] = None,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` fresh samples ``(n, 2)`` of the 2-D toy ``name`` (see the module docstring), drawn
    with ``generator`` (so a seeded generator gives the same points every time)."""
    if name not in TOYS:
        raise ValueError(f"unknown toy {name!r}; choose one of {', '.join(TOYS)}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive integer, got {n!r}.")
    return TOYS[name](n, generator).to(dtype)


def require_sklearn(what: str = "this function") -> None:
    """Raise a clear ImportError when scikit-learn is missing."""
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{what} needs scikit-learn: `pip install scikit-learn` (or `pip install flowode[data]`)."
        ) from exc


def load_digits(*, return_labels: bool = False, dtype: torch.dtype = torch.float32
                ) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """scikit-learn's 1797 handwritten 8x8 digits scaled to ``[-1, 1]``: ``(1797, 1, 8, 8)``.

    With ``return_labels=True`` also returns the labels ``(1797,)`` int64 (0..9).
    Offline: the data ship inside scikit-learn.
    """
    require_sklearn("flowode.data.load_digits")
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.as_tensor(bunch.images, dtype=torch.float64).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    x = x.to(dtype)
    if return_labels:
        return x, torch.as_tensor(bunch.target, dtype=torch.int64)
    return x


def digits_to_pixels(x: Tensor) -> Tensor:
    """Map digits from ``[-1, 1]`` back to scikit-learn's 0..16 pixel scale, flattened ``(B, 64)``
    (clamped), e.g. to feed a classifier trained on ``load_digits().data``."""
    return ((x.detach().to(torch.float64).reshape(x.shape[0], -1) + 1.0) * 8.0).clamp(0.0, 16.0)
