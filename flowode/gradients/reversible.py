"""Constant-memory gradients through BDIA and EDICT sampling by running their exact inverses backwards.

BDIA (Zhang, Lewis & Kleijn 2023, sec. 3; :mod:`flowode.invert.coupled`) samples by

    z_1     = Phi(z_0; sigma_0 -> sigma_1)                                (one DDIM step)
    z_{k+1} = F_k(z_{k-1}, z_k) = Phi(z_k; sigma_k -> sigma_{k+1}) + gamma (z_{k-1} - Phi(z_k; sigma_k -> sigma_{k-1}))

and ``F_k`` is invertible in closed form: ``z_{k-1} = Phi(z_k; sigma_k -> sigma_{k-1}) + (z_{k+1} -
Phi(z_k; sigma_k -> sigma_{k+1})) / gamma``. Backpropagation needs the states of every step; instead of
storing them (memory linear in the steps), :class:`_ReversibleBdia` keeps only the start ``z_0`` and
the last two states, and in the backward pass walks the steps in reverse: it reconstructs ``z_{k-1}``
from ``(z_k, z_{k+1})`` by the inverse, re-evaluates ``F_k`` with autograd on, and pulls the adjoint
``(a_k, a_{k+1})`` back by one vector-Jacobian product (the same idea as reversible networks, Gomez
et al. 2017, and DOODL's EDICT backpropagation, Wallace et al. 2023). Memory is that of one step,
whatever the number of steps; the backward pass costs 2 evaluations per step (the inverse and the
re-evaluation with a graph). Because the reconstruction is exact to round-off, the gradient equals
plain backpropagation through the same BDIA steps to round-off (tests/test_gradients.py).

EDICT (Wallace, Gokul & Naik 2023, eq. 10-14) is the same construction on the coupled pair ``(x, y)``
(both chains start at the sample's noise, the result is the ``x`` chain, as DOODL backpropagates):
:class:`_ReversibleEdict` keeps the start and the last pair, and each backward step runs EDICT's exact
inverse (2 evaluations) and re-evaluates the step with a graph (2 more).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..invert._common import inversion_levels
from ..invert.coupled import _bdia_pair_step, _check_gamma, _check_p, _edict_step, _edict_unstep
from ..models import EpsilonModel
from ..solvers.boundary import boundary_step
from ..solvers.run import Run

__all__ = ["bdia_sample", "edict_sample"]

GridLike = Union[Tensor, Sequence[float], np.ndarray]


def _first(run: Run, z0: Tensor, s: list[float]) -> Tensor:
    return boundary_step(run, z0, s[0], s[1])[0]


def _forward(run: Run, z0: Tensor, s: list[float], gamma: float) -> tuple[Tensor, Tensor]:
    """``(z_{n-1}, z_n)`` of the BDIA decode of ``z_0`` along ``s``."""
    z_prev, z = z0, _first(run, z0, s)
    for k in range(1, len(s) - 1):
        run.step = k
        z_prev, z = z, _bdia_pair_step(run, z_prev, z, s[k - 1], s[k], s[k + 1], gamma, forward=True)
    return z_prev, z


class _ReversibleBdia(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: Any, z0: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        model, s, gamma = box
        run = Run(model, s, check_calls=True)
        with torch.no_grad():
            z_prev, z = _forward(run, z0, s, gamma)
        ctx.box, ctx.nfe = box, run.nfe
        ctx.save_for_backward(z0, z_prev, z, *params)
        return z

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Any:  # type: ignore[override]
        model, s, gamma = ctx.box
        z0, z_prev, z, *params = ctx.saved_tensors
        run = Run(model, s[::-1], check_calls=True)
        n = len(s) - 1
        a_next, a_cur = grad_out, torch.zeros_like(grad_out)  # adjoints of z_{k+1} and z_k
        g_params = [torch.zeros_like(p) for p in params]
        z_next, z_k = z, z_prev  # (z_{k+1}, z_k) for k = n - 1
        for k in range(n - 1, 0, -1):
            run.step = k
            with torch.no_grad():  # the exact inverse: z_{k-1} from (z_k, z_{k+1})
                z_km1 = _bdia_pair_step(run, z_next, z_k, s[k - 1], s[k], s[k + 1], gamma, forward=False)
            with torch.enable_grad():
                zp = z_km1.detach().requires_grad_(True)
                zk = z_k.detach().requires_grad_(True)
                out = _bdia_pair_step(run, zp, zk, s[k - 1], s[k], s[k + 1], gamma, forward=True)
                grads = torch.autograd.grad(out, [zp, zk, *params], a_next, allow_unused=True)
            a_next, a_cur = a_cur + grads[1], grads[0]  # now the adjoints of z_k and z_{k-1}
            for i, g in enumerate(grads[2:]):
                if g is not None:
                    g_params[i] = g_params[i] + g
            z_next, z_k = z_k, z_km1
        # the first step z_1 = Phi(z_0): a_next is the adjoint of z_1, a_cur the direct one of z_0
        with torch.enable_grad():
            z0g = z0.detach().requires_grad_(True)
            out = _first(run, z0g, s)
            grads = torch.autograd.grad(out, [z0g, *params], a_next, allow_unused=True)
        g_z0 = a_cur + grads[0]
        for i, g in enumerate(grads[1:]):
            if g is not None:
                g_params[i] = g_params[i] + g
        return (None, g_z0, *g_params)


def bdia_sample(model: EpsilonModel, z0: Tensor, sigmas: GridLike, gamma: float = 1.0, *,
                grad: Optional[str] = None, params: Sequence[Tensor] = ()) -> Tensor:
    """BDIA sampling from ``z0`` at ``sigmas[0]`` along the decreasing grid (first step DDIM; the
    same map as :func:`flowode.invert.bdia_decode` of ``BdiaLatent(z0, None)``), differentiable.

    Args:
        grad: ``None`` (no graph), ``"autograd"`` (backpropagate through the stored steps: memory
            linear in the steps) or ``"reversible"`` (constant memory: the exact inverse run backwards,
            see the module docstring).
        params: ``"reversible"``: the tensors besides ``z0`` to differentiate (the network's
            parameters, a guidance-scale tensor). They must be given: a custom autograd function
            sees only its inputs, so a parameter left out gets no gradient at all (``None``).
    """
    g = _check_gamma(gamma)
    s = inversion_levels(model, sigmas, encodes=False)
    if len(s) < 2:
        raise ValueError("`sigmas` needs at least two levels.")
    if grad is None or grad == "autograd":
        run = Run(model, s, check_calls=True)
        with torch.no_grad() if grad is None else torch.enable_grad():
            return _forward(run, z0, s, g)[1]
    if grad != "reversible":
        raise ValueError(f"`grad` must be None, 'autograd' or 'reversible', got {grad!r}.")
    for p in params:
        if not isinstance(p, Tensor):
            raise TypeError(f"`params` must hold tensors, got {type(p).__name__}.")
    return _ReversibleBdia.apply((model, s, g), z0, *params)


def _edict_forward(run: Run, z: Tensor, s: list[float], al: list[float], p: float) -> tuple[Tensor, Tensor]:
    """The ``xbar`` chains at the last level, both started at ``z / alpha_0``."""
    x = y = z / al[0]
    for i in range(len(s) - 1):
        run.step = i
        x, y = _edict_step(run, x, y, s, al, i, p, z.dtype)
    return x, y


class _ReversibleEdict(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, box: Any, z: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        model, s, p = box
        run = Run(model, s, check_calls=True)
        al = [run.alpha(v) for v in s]
        with torch.no_grad():
            x, y = _edict_forward(run, z, s, al, p)
        ctx.box, ctx.al = box, al
        ctx.save_for_backward(x, y, *params)
        return x * al[-1]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Any:  # type: ignore[override]
        model, s, p = ctx.box
        al = ctx.al
        x, y, *params = ctx.saved_tensors
        run = Run(model, s[::-1], check_calls=True)
        a_x, a_y = grad_out * al[-1], torch.zeros_like(grad_out)  # adjoints of the xbar chains
        g_params = [torch.zeros_like(q) for q in params]
        for i in range(len(s) - 2, -1, -1):
            run.step = i
            with torch.no_grad():  # the exact inverse: the chains at level i
                x, y = _edict_unstep(run, x, y, s, al, i, p, x.dtype)
            with torch.enable_grad():
                xi, yi = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
                xo, yo = _edict_step(run, xi, yi, s, al, i, p, x.dtype)
                grads = torch.autograd.grad((xo, yo), [xi, yi, *params], (a_x, a_y), allow_unused=True)
            a_x, a_y = grads[0], grads[1]
            for j, g in enumerate(grads[2:]):
                if g is not None:
                    g_params[j] = g_params[j] + g
        return (None, (a_x + a_y) / al[0], *g_params)


def edict_sample(model: EpsilonModel, z: Tensor, sigmas: GridLike, p: float = 0.93, *,
                 grad: Optional[str] = None, params: Sequence[Tensor] = ()) -> Tensor:
    """EDICT sampling from ``z`` at ``sigmas[0]`` (both chains start at ``z``; returns the ``x`` chain,
    the same map as :func:`flowode.invert.edict_decode` of ``EdictLatent(z, z)`` with
    ``accumulate=False``), differentiable: ``grad`` and ``params`` as in :func:`bdia_sample`. The
    chains run in ``z``'s dtype; EDICT's decode is ill-conditioned along ``x - y``, so use float64
    for a reversible gradient exact to round-off (docs/inversion.md)."""
    pp = _check_p(p)
    s = inversion_levels(model, sigmas, encodes=False)
    if len(s) < 2:
        raise ValueError("`sigmas` needs at least two levels.")
    if grad is None or grad == "autograd":
        run = Run(model, s, check_calls=True)
        al = [run.alpha(v) for v in s]
        with torch.no_grad() if grad is None else torch.enable_grad():
            return _edict_forward(run, z, s, al, pp)[0] * al[-1]
    if grad != "reversible":
        raise ValueError(f"`grad` must be None, 'autograd' or 'reversible', got {grad!r}.")
    for q in params:
        if not isinstance(q, Tensor):
            raise TypeError(f"`params` must hold tensors, got {type(q).__name__}.")
    return _ReversibleEdict.apply((model, s, pp), z, *params)
