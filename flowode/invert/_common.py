"""Shared pieces of the inversion package: the decode grid, DDIM step coefficients, error norms.

Every inversion method here is written against the *decode* grid ``g`` (strictly decreasing,
``g[0]`` the latent's noise level, ``g[-1]`` the data end, usually 0). Encoding visits the same
``(g[i], g[i+1])`` pairs in reverse order, so that a decode on ``g`` can undo it exactly.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..grids import GridError, check_grid, sigma_grid
from ..models import EpsilonModel
from ..solvers.base import SolverError

__all__ = ["InversionWarning", "decode_grid", "ddim_coefficients", "scaled_residual", "rel_max_error"]


class InversionWarning(UserWarning):
    """An inversion did not reach its tolerance (names the samples, the step and the residual)."""


def decode_grid(model: EpsilonModel, steps: Optional[int], spacing: Optional[str],
                sigmas: Optional[Union[Tensor, Sequence[float], np.ndarray]], default_spacing: Optional[str] = None,
                **grid_kwargs: Any) -> Tensor:
    """The decode grid of a round trip: ``sigmas`` when given (must be decreasing), else
    :func:`~flowode.grids.sigma_grid` with ``steps`` and ``spacing``.

    Raises:
        GridError: an increasing grid (the wrong direction for a decode grid), or ``sigma = inf``
            at the noisy end (a latent at zero terminal SNR cannot be encoded to).
    """
    if sigmas is not None:
        if steps is not None:
            raise ValueError("give either `steps` or `sigmas` (an explicit decode grid), not both.")
        g = check_grid(sigmas, model.schedule)
        if float(g[0]) < float(g[-1]):
            raise GridError(
                "`sigmas` must be the *decode* grid, strictly decreasing from the latent's noise level to the "
                f"data (got an increasing grid {float(g[0]):.4g} -> {float(g[-1]):.4g}); the round trip encodes "
                "on its reverse. Pass `torch.flip(sigmas, [0])`."
            )
    else:
        if steps is None:
            raise ValueError("give `steps` (number of steps) or `sigmas` (an explicit decode grid).")
        spacing = spacing or default_spacing or model.schedule.default_spacing
        g = sigma_grid(model.schedule, steps, spacing, **grid_kwargs)
    if math.isinf(float(g[0])):
        raise SolverError(
            "cannot encode to sigma = inf (zero terminal SNR): the latent would not depend on the data. "
            "Pass `sigma_max=` (continuous spacings) or an explicit `sigmas` grid that starts below inf."
        )
    return g


def ddim_coefficients(model: EpsilonModel, sigma: float, sigma_next: float) -> tuple[float, float]:
    """``(A, B)`` with ``DDIM(x; sigma -> sigma') = A x + B eps``: ``A = alpha'/alpha``,
    ``B = alpha' (sigma' - sigma)`` (Song et al. 2021, eq. 12 with eta = 0, in the
    ``(xbar, sigma)`` form of DESIGN.md sec. 2). Valid in either direction and at ``sigma' = 0``
    (``alpha(0) = 1``: ``A = 1/alpha``, ``B = -sigma``, i.e. the denoised estimate)."""
    a = float(model.schedule.alpha_from_sigma(sigma))
    a_next = float(model.schedule.alpha_from_sigma(sigma_next))
    return a_next / a, a_next * (sigma_next - sigma)


def scaled_residual(r: Tensor, x: Tensor) -> Tensor:
    """Per-sample mixed absolute / relative residual ``max_j |r_j| / (1 + |x_j|)`` (float64)."""
    num = r.detach().abs().to(torch.float64).flatten(1)
    den = 1.0 + x.detach().abs().to(torch.float64).flatten(1)
    return (num / den).amax(1)


def rel_max_error(err: Tensor, ref: Tensor) -> Tensor:
    """Per-sample ``max|err| / max|ref|`` (float64)."""
    e = err.detach().abs().to(torch.float64).flatten(1).amax(1)
    s = ref.detach().abs().to(torch.float64).flatten(1).amax(1).clamp_min(torch.finfo(torch.float64).tiny)
    return e / s


def warn_unconverged(what: str, where: str, idx: Tensor, res: Tensor, tol: float, hint: str) -> None:
    """Emit :class:`InversionWarning` naming the samples and their residuals."""
    ids = idx.tolist()
    vals = ", ".join(f"{i}: {float(v):.3g}" for i, v in zip(ids[:8], res[:8].tolist()))
    more = f" (+{len(ids) - 8} more)" if len(ids) > 8 else ""
    warnings.warn(
        f"{what} did not converge {where} for {len(ids)} sample(s) {{{vals}}}{more} (residual > tol={tol:.3g}). "
        f"{hint}",
        InversionWarning, stacklevel=3,
    )
