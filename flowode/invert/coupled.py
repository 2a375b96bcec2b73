"""Algebraically exact inversion: EDICT (coupled states) and BDIA (bi-directional integration).

Both write the DDIM step from ``sigma_i`` to ``sigma_{i+1}`` as ``A_i x + B_i eps`` (the one copy of
the DDIM step, :func:`~flowode.solvers.ddim.ddim_coefficients`; ``A = alpha'/alpha``,
``B = alpha' (sigma' - sigma)``; in ``xbar = x / alpha`` coordinates ``A = 1``, ``B = sigma' - sigma``)
and arrange the updates so that every network evaluation can be repeated, with the same argument,
when running backwards: the inverse is exact in exact arithmetic, and exact to round-off in floating
point. Every network evaluation happens at a grid level ``sigma_i > 0``.

EDICT -- Wallace, Gokul & Naik, "EDICT: Exact Diffusion Inversion via Coupled Transformations",
CVPR 2023, eq. 10-14. Two chains ``(x, y)``, mixing parameter ``p`` (default 0.93), decode step::

    x_inter = A x + B eps(y, sigma_i)                 (eq. 10)
    y_inter = A y + B eps(x_inter, sigma_i)           (eq. 11)
    x'      = p x_inter + (1 - p) y_inter             (eq. 12, mixing)
    y'      = p y_inter + (1 - p) x'

and its inverse (eq. 14) undoes the four lines in reverse order. The code steps the same map in
``xbar = x / alpha`` coordinates and, around a float32 network, keeps the chains in float64
(``accumulate=True``): EDICT's decode amplifies a perturbation of the chain difference ``x - y``
by ~``A + |B|`` per half-step (1e3-1e4 over 10 steps), so float32 chains lose ~1e-3. 2 evaluations per step in either
direction. Encoding starts from ``x = y = data``; the latent is the pair ``(x_T, y_T)``; decoding
the pair returns the ``x`` chain (the ``y`` chain is reconstructed exactly as well, in
``EdictLatent.y`` of the decode).

BDIA -- Zhang, Lewis & Kleijn, "Exact Diffusion Inversion via Bi-directional Integration
Approximation", arXiv 2307.10829 (2023; ECCV 2024), sec. 3, the BDIA-DDIM update. With the
states ``z_k`` at ``sigma_k`` in decode order and ``Phi(z_k; sigma_k -> sigma)`` the DDIM step
that uses ``eps(z_k, sigma_k)``::

    z_{k+1} = Phi(z_k; sigma_k -> sigma_{k+1}) + gamma (z_{k-1} - Phi(z_k; sigma_k -> sigma_{k-1}))

i.e. the forward DDIM increment plus ``gamma`` times the mismatch of the backward DDIM increment
(``gamma = 0`` is DDIM; ``gamma = 1``, the default, is the symmetric, time-reversible update). The
first decode step is a plain DDIM step. Solving for ``z_{k-1}`` gives the exact inverse, 1
evaluation per step. Because the update uses two states, the latent is the pair
``(z_0, z_1)`` at ``(sigma_0, sigma_1)``; the encode starts with one naive DDIM inverse step from
the data to ``sigma_{N-1}`` (which fixes ``z_{N-1}``), and decoding the pair reproduces the data
exactly whatever that first step was. Decoding ``z_0`` alone (sampling) takes the plain first DDIM step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..models import EpsilonModel
from ..solvers.boundary import boundary_step
from ..solvers.ddim import ddim_coefficients
from ..solvers.run import Run
from ._common import inversion_levels

__all__ = ["EdictLatent", "edict_encode", "edict_decode", "BdiaLatent", "bdia_encode", "bdia_decode"]


def _check_p(p: float) -> float:
    if not 0.0 < float(p) <= 1.0:
        raise ValueError(f"EDICT mixing parameter `p` must lie in (0, 1] (paper: 0.93), got {p!r}.")
    return float(p)


def _check_gamma(gamma: float) -> float:
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(
            f"BDIA `gamma` must lie in (0, 1] (paper: 1.0; gamma = 0 is plain DDIM, which has no exact "
            f"inverse), got {gamma!r}."
        )
    return float(gamma)


@dataclass
class EdictLatent:
    """The EDICT state: both chains at one noise level.

    ``dtype`` is the dtype the network runs in (``None``: that of ``x``). An encode with
    ``accumulate=True`` (the default) returns the chains in float64 although the network ran in
    ``dtype``: the pair must be kept at that precision for an exact decode (see
    :func:`edict_encode`)."""

    x: Tensor
    y: Tensor
    dtype: Optional[torch.dtype] = None
    nfe: int = 0  # evaluations spent producing this pair


def _state_dtype(net_dtype: torch.dtype, device: torch.device, accumulate: bool) -> torch.dtype:
    """The dtype of the chains: float64 when accumulating a lower-precision network (and the device
    has float64), else the network's own dtype."""
    if accumulate and net_dtype != torch.float64 and device.type != "mps" and torch.empty(
            0, dtype=net_dtype).is_floating_point():
        return torch.float64
    return net_dtype


def _eps(run: Run, xbar: Tensor, alpha: float, sigma: float, net_dtype: torch.dtype) -> Tensor:
    """``eps(alpha * xbar, sigma)`` with the network in ``net_dtype``, returned in ``xbar``'s dtype.
    Encode and decode form this argument by the same operations, so equal states give bitwise
    equal network inputs."""
    return run.predict((xbar * alpha).to(net_dtype), sigma).eps.to(xbar.dtype)


def _xbar_step(sigma: float, sigma_next: float) -> float:
    """``B`` of the DDIM step in ``xbar`` coordinates (``A = 1``): ``xbar' = xbar + B eps``."""
    return ddim_coefficients(1.0, 1.0, sigma, sigma_next)[1]


def _edict_step(run: Run, x: Tensor, y: Tensor, s: list[float], al: list[float], i: int, p: float,
                net_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """One EDICT decode step from level ``i`` to ``i + 1`` on the ``xbar`` chains (eq. 10-12)."""
    d = _xbar_step(s[i], s[i + 1])
    x_in = torch.add(x, _eps(run, y, al[i], s[i], net_dtype), alpha=d)
    y_in = torch.add(y, _eps(run, x_in, al[i + 1], s[i], net_dtype), alpha=d)  # x_in lives at level i+1
    x = torch.lerp(y_in, x_in, p)  # p x_in + (1 - p) y_in
    y = torch.lerp(x, y_in, p)  # p y_in + (1 - p) x'
    return x, y


def _edict_unstep(run: Run, x: Tensor, y: Tensor, s: list[float], al: list[float], i: int, p: float,
                  net_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The exact inverse of :func:`_edict_step`: the chains at level ``i`` from those at ``i + 1`` (eq. 14)."""
    d = _xbar_step(s[i], s[i + 1])
    y_in = (y - x * (1 - p)) / p
    x_in = (x - y_in * (1 - p)) / p
    y = y_in - _eps(run, x_in, al[i + 1], s[i], net_dtype) * d
    x = x_in - _eps(run, y, al[i], s[i], net_dtype) * d
    return x, y


def _run(model: EpsilonModel, levels: list[float]) -> Run:
    return Run(model, levels, check_calls=True)


@torch.no_grad()
def edict_decode(model: EpsilonModel, latent: EdictLatent, sigmas: Tensor, p: float = 0.93,
                 accumulate: bool = True) -> EdictLatent:
    """Decode the pair along the decreasing grid ``sigmas`` (EDICT eq. 10-12, 2 NFE per step).
    The data estimate is ``.x`` of the result, in the network's dtype ``latent.dtype``.

    Numerics: the chains are stepped in ``xbar = x / alpha`` coordinates, where the DDIM step is
    ``xbar' = xbar + (sigma' - sigma) eps`` and the mixing (an affine combination) commutes with the
    common scale -- the same map as eq. 10-12 in ``x`` with ``A x + B eps``, but without
    multiplying the state by ``A = alpha'/alpha`` (up to 9 on a 10-step grid) and cancelling
    ``A x`` against ``B eps``. With ``accumulate=True`` the chains are carried in float64 while
    the network runs in its own dtype (see :func:`edict_encode` for why)."""
    p = _check_p(p)
    s = inversion_levels(model, sigmas, encodes=False)
    run = _run(model, s)
    net_dtype = latent.dtype or latent.x.dtype
    sd = _state_dtype(net_dtype, latent.x.device, accumulate)
    al = [run.alpha(v) for v in s]
    x, y = latent.x.to(sd) / al[0], latent.y.to(sd) / al[0]
    for i in range(len(s) - 1):
        run.step = i
        x, y = _edict_step(run, x, y, s, al, i, p, net_dtype)
    return EdictLatent((x * al[-1]).to(net_dtype), (y * al[-1]).to(net_dtype), net_dtype, run.nfe)


@torch.no_grad()
def edict_encode(model: EpsilonModel, x0: Tensor, sigmas: Tensor, p: float = 0.93,
                 y0: Optional[Tensor] = None, accumulate: bool = True) -> EdictLatent:
    """Encode data ``x0`` (state at ``sigmas[-1]``) to the EDICT pair at ``sigmas[0]`` by the exact
    inverse of :func:`edict_decode` (EDICT eq. 14, in ``xbar`` coordinates), 2 NFE per step.
    ``y0`` defaults to ``x0``. The network runs in ``x0``'s dtype.

    ``accumulate=True`` (default) carries the two chains in float64 when the network runs in a
    lower precision; the returned pair is float64 (``.dtype`` records the network's). Why: the
    EDICT decode map is very ill-conditioned along the chain *difference* ``x - y`` at large steps
    (even in exact arithmetic a relative perturbation of 6e-8 of the 10-step latent pair along
    ``x - y`` comes back as ~4e-3 in the data, see docs/inversion.md), so round-off of the
    float32 chains -- and the float32 rounding of the latent itself -- caps a float32 round trip
    at ~1e-4..1e-3. With float64 chains every network call sees a bitwise-equal float32 argument
    in both directions and the round trip is exact to ~1e-13. ``accumulate=False`` keeps
    everything in ``x0``'s dtype (the paper's arithmetic)."""
    p = _check_p(p)
    s = inversion_levels(model, sigmas, encodes=True)
    run = _run(model, s)
    net_dtype = x0.dtype
    sd = _state_dtype(net_dtype, x0.device, accumulate)
    al = [run.alpha(v) for v in s]
    x = x0.to(sd) / al[-1]
    y = (x0 if y0 is None else y0).to(sd) / al[-1]
    for i in range(len(s) - 2, -1, -1):
        run.step = i
        x, y = _edict_unstep(run, x, y, s, al, i, p, net_dtype)
    return EdictLatent(x * al[0], y * al[0], net_dtype, run.nfe)


@dataclass
class BdiaLatent:
    """The BDIA state: ``z0`` at ``sigmas[0]`` and ``z1`` at ``sigmas[1]`` (``z1`` is ``None`` for a
    plain sample, whose first step is DDIM)."""

    z0: Tensor
    z1: Optional[Tensor]
    nfe: int = 0  # evaluations spent producing this pair


def _bdia_pair_step(run: Run, prev: Tensor, z: Tensor, s_prev: float, s: float, s_next: float,
                    gamma: float, forward: bool) -> Tensor:
    """One BDIA update around ``z`` at ``s``. forward: ``prev`` is ``z_{k-1}`` at ``s_prev`` (noisier),
    returns ``z_{k+1}`` at ``s_next``; else ``prev`` is ``z_{k+1}`` and returns ``z_{k-1}``."""
    eps = run.predict(z, s).eps
    a_dn, b_dn = ddim_coefficients(run.alpha(s), run.alpha(s_next), s, s_next)
    a_up, b_up = ddim_coefficients(run.alpha(s), run.alpha(s_prev), s, s_prev)
    down = torch.add(z * a_dn, eps, alpha=b_dn)
    up = torch.add(z * a_up, eps, alpha=b_up)
    if forward:
        return torch.add(down, prev - up, alpha=gamma)
    return torch.add(up, prev - down, alpha=1.0 / gamma)


def bdia_decode(model: EpsilonModel, latent: BdiaLatent, sigmas: Tensor, gamma: float = 1.0) -> Tensor:
    """Decode along the decreasing grid ``sigmas`` (1 NFE per step; the first step is DDIM when
    ``latent.z1`` is ``None``)."""
    return _bdia_decode(model, latent, sigmas, gamma)[0]


@torch.no_grad()
def _bdia_decode(model: EpsilonModel, latent: BdiaLatent, sigmas: Tensor, gamma: float) -> tuple[Tensor, int]:
    gamma = _check_gamma(gamma)
    s = inversion_levels(model, sigmas, encodes=False)
    run = _run(model, s)
    n = len(s) - 1
    z_prev = latent.z0
    if latent.z1 is None:
        z, _ = boundary_step(run, z_prev, s[0], s[1])
    else:
        z = latent.z1
    for k in range(1, n):
        run.step = k
        z_prev, z = z, _bdia_pair_step(run, z_prev, z, s[k - 1], s[k], s[k + 1], gamma, forward=True)
    return z, run.nfe


@torch.no_grad()
def bdia_encode(model: EpsilonModel, x0: Tensor, sigmas: Tensor, gamma: float = 1.0) -> BdiaLatent:
    """Encode data ``x0`` (state at ``sigmas[-1]``) to the BDIA pair ``(z_0, z_1)``: one naive DDIM
    inverse step to ``sigmas[-2]``, then the exact inverse update (1 NFE per step)."""
    gamma = _check_gamma(gamma)
    s = inversion_levels(model, sigmas, encodes=True)
    run = _run(model, s[::-1])
    n = len(s) - 1
    run.step = n - 1
    z_next, z = x0, boundary_step(run, x0, s[n], s[n - 1])[0]
    for k in range(n - 1, 0, -1):
        run.step = k
        z, z_next = _bdia_pair_step(run, z_next, z, s[k - 1], s[k], s[k + 1], gamma, forward=False), z
    return BdiaLatent(z, z_next, run.nfe)
