"""Shared pieces of the inversion package: the decode grid, error norms, the convergence warning.

Every inversion method here is written against the *decode* grid ``g`` (strictly decreasing,
``g[0]`` the latent's noise level, ``g[-1]`` the data end, usually 0). Encoding visits the same
``(g[i], g[i+1])`` pairs in reverse order, so that a decode on ``g`` can undo it exactly.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..grids import resolve_grid
from ..models import EpsilonModel
from ..solvers.boundary import check_direction

__all__ = ["InversionWarning", "decode_grid", "inversion_levels", "scaled_residual", "rel_max_error",
           "warn_unconverged"]


class InversionWarning(UserWarning):
    """An inversion did not reach its tolerance (names the samples, the step and the residual)."""


def decode_grid(model: EpsilonModel, steps: Optional[int], spacing: Optional[str],
                sigmas: Optional[Union[Tensor, Sequence[float], np.ndarray]], solver: Any = None,
                **grid_kwargs: Any) -> Tensor:
    """The decode grid of a round trip (:func:`~flowode.grids.resolve_grid`): ``sigmas`` when given
    (must be decreasing), else ``steps`` with ``spacing`` (default: ``solver``'s, else the
    schedule's). The encode on its reverse is checked here, before any work: it may not end at
    ``sigma = inf`` (:func:`~flowode.solvers.boundary.check_direction`).

    Raises:
        GridError: an increasing ``sigmas`` (the wrong direction for a decode grid) or a bad grid;
        SolverError: ``sigma = inf`` at the noisy end (a latent at zero terminal SNR cannot be encoded to).
    """
    if sigmas is not None and steps is not None:
        raise ValueError("give either `steps` or `sigmas` (an explicit decode grid), not both.")
    if sigmas is None and steps is None:
        raise ValueError("give `steps` (number of steps) or `sigmas` (an explicit decode grid).")
    if sigmas is not None:
        g = resolve_grid(model.schedule, solver, sigmas=sigmas)
    else:
        g = resolve_grid(model.schedule, solver, steps=steps, spacing=spacing, **grid_kwargs)
    levels = [float(v) for v in g.tolist()]
    check_direction(levels[::-1], getattr(solver, "name", "the inversion"))
    return g


def inversion_levels(model: EpsilonModel, sigmas: Union[Tensor, Sequence[float], np.ndarray],
                     encodes: bool) -> list[float]:
    """The validated *decode* grid of an inverter as floats: :func:`~flowode.grids.check_grid` on the
    model's schedule, strictly decreasing, and (for an encode) not starting at ``sigma = inf``."""
    g = resolve_grid(model.schedule, None, sigmas=sigmas)
    levels = [float(v) for v in g.tolist()]
    if encodes:
        check_direction(levels[::-1], "the inversion")
    return levels


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
