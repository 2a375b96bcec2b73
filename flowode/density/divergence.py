"""The divergence of the noise prediction and the augmented model that carries it through a solve.

The probability-flow ODE in DDIM coordinates is ``d xbar / d sigma = g(xbar, sigma) = eps(alpha xbar,
sigma)`` (DESIGN.md section 2), so its divergence is ``div_xbar g = alpha * div_x eps(x, sigma)``.
The instantaneous change of variables (Chen et al. 2018, Theorem 1; Song et al. 2021, score SDE,
app. D.2) integrates it alongside the state.

**Why an augmented model and not a second loop.** Every flowode solver is linear per channel in
the state and the noise prediction, with the same coefficients for every channel (DDIM, Runge-Kutta
in any coordinates, the exponential integrators, the multistep methods, the adaptive pairs): a
channel ``c`` with noise prediction ``eps_c`` is integrated as ``d (c / alpha) / d sigma = eps_c``
in all three coordinate systems. :class:`AugmentedModel` appends ``K`` such channels to the
flattened state and returns ``eps_c = alpha(sigma) * div_x eps`` (one estimate per channel), so the
driver's own loops -- fixed grid, controller, torchdiffeq, scipy -- integrate
``ell = c / alpha = int div_xbar g d sigma`` with the state, under the same error control, with no
new loop. (A model that clamps x0 is not linear per channel and is refused.)

Estimators of ``div_x eps`` (the network's Jacobian trace, per sample):

* ``"exact"``: ``sum_i d eps_i / d x_i`` by one vector-Jacobian product per dimension (``D``
  backward passes; fine up to a few hundred dimensions);
* ``"hutchinson"``: ``v^T (d eps / d x) v`` with ``K`` probes ``v`` (Rademacher or Gaussian,
  ``E[v v^T] = I``; Hutchinson 1990, Skilling 1989), one backward pass each. The probes are drawn
  **once per trajectory** and held fixed through the solve, so the right-hand side is a smooth
  function the adaptive controller can integrate; each probe has its own channel, so the ``K``
  integrals are independent unbiased estimates and their spread gives the standard error.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..models import EpsilonModel, Prediction
from ..parameterization import per_sample

__all__ = ["AugmentedModel", "DIVERGENCES", "PROBES", "draw_probes", "MAX_EXACT_DIM"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
#: above this many dimensions ``divergence="exact"`` is refused (``D`` backward passes per evaluation)
MAX_EXACT_DIM = 4096


def draw_probes(kind: str, k: int, batch: int, dim: int, dtype: torch.dtype, device: torch.device,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """``(K, B, D)`` probes with ``E[v v^T] = I``: Rademacher (+-1) or standard Gaussian."""
    if kind == "rademacher":
        v = torch.randint(0, 2, (k, batch, dim), generator=generator, dtype=torch.int64).to(dtype) * 2 - 1
    elif kind == "gaussian":
        v = torch.randn((k, batch, dim), generator=generator, dtype=dtype)
    else:
        raise ValueError(f"`probe` must be one of {PROBES}, got {kind!r}.")
    return v.to(device)


class AugmentedModel(EpsilonModel):
    """The model on the augmented state ``(B, D + K)``: the flattened data state, then ``K``
    divergence channels (see the module docstring). ``probes`` is ``None`` for the exact trace
    (``K = 1``) or the fixed ``(K, B, D)`` Hutchinson probes.

    Evaluating it costs one evaluation of ``base`` (counted as one NFE by the driver) plus ``D``
    (exact) or ``K`` (Hutchinson) backward passes through the network."""

    defined_at_zero = False

    def __init__(self, base: EpsilonModel, shape: tuple[int, ...], probes: Optional[Tensor] = None) -> None:
        super().__init__(self._unused, base.schedule, check_finite=base.check_finite)
        self.base = base
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.probes = probes
        self.channels = 1 if probes is None else int(probes.shape[0])

    @staticmethod
    def _unused(x: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - predict is overridden
        raise RuntimeError("AugmentedModel is evaluated through predict")

    def predict(self, x: Tensor, sigma: Union[float, Tensor], *, check: bool = True,
                step: Optional[int] = None) -> Prediction:
        b, d = x.shape[0], self.dim
        with torch.enable_grad():
            xs = x[:, :d].detach().reshape(b, *self.shape).requires_grad_(True)
            pred = self.base.predict(xs, sigma, check=check, step=step)
            eps = pred.eps.reshape(b, d)
            div = self._divergence(eps, xs)  # (B, K)
        if isinstance(sigma, Tensor) and sigma.dim() == 1:  # per-sample levels (per-sample error norms)
            sig = sigma.detach().to("cpu", torch.float64)
            a = torch.as_tensor(self.schedule.alpha_from_sigma(sig))
            alpha: Union[float, Tensor] = per_sample(a, div)
            alpha_x: Union[float, Tensor] = per_sample(a, x)
            level: Union[float, Tensor] = per_sample(sig, x)
        else:
            alpha = alpha_x = self.base.coefficients(float(sigma))[0]
            level = float(sigma)
        out = torch.cat([eps.detach(), (div * alpha).to(x.dtype)], dim=1)
        self.nfe += 1
        return Prediction(out, x=x, alpha=alpha_x, sigma=level)

    def _divergence(self, eps: Tensor, xs: Tensor) -> Tensor:
        b, d = eps.shape
        if not eps.requires_grad:  # the prediction does not depend on the state (e.g. x = eps at sigma = inf)
            return torch.zeros(b, self.channels, dtype=eps.dtype, device=eps.device)
        if self.probes is None:
            diag = torch.empty(b, d, dtype=eps.dtype, device=eps.device)
            for i in range(d):
                (g,) = torch.autograd.grad(eps[:, i].sum(), xs, retain_graph=i < d - 1)
                diag[:, i] = g.reshape(b, d)[:, i]
            return diag.sum(1, keepdim=True)
        k = self.channels
        out = torch.empty(b, k, dtype=eps.dtype, device=eps.device)
        for j in range(k):
            v = self.probes[j].to(eps)
            (g,) = torch.autograd.grad((eps * v).sum(), xs, retain_graph=j < k - 1)
            out[:, j] = (g.reshape(b, d) * v).sum(1)
        return out
