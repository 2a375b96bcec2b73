"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), in ``xbar``.

At step ``i`` of ``N`` (levels ``sigma -> sigma'``):

    gamma     = min(S_churn / N, sqrt(2) - 1)  if S_tmin <= sigma <= S_tmax, else 0
    sigma_hat = sigma (1 + gamma)                                  (line 5)
    xbar_hat  = xbar + sqrt(sigma_hat^2 - sigma^2) S_noise z       (line 6; z ~ N(0, I))
    xbar'     = xbar_hat + (sigma' - sigma_hat) eps(xbar_hat, sigma_hat)             (Euler, line 8)
    xbar'     = xbar_hat + (sigma' - sigma_hat) (eps_hat + eps(xbar', sigma')) / 2   (Heun, line 11; sigma' > 0)

Two evaluations per step, one on the step to ``sigma = 0`` (Euler, which returns the denoised
estimate at ``sigma_hat``). The churn raises the level above ``sigma`` and so overlaps the previous
step: it is no Brownian increment, and its ``z`` is a fresh normal keyed by ``(seed, sample, step)``
(``run.randn_like``); because ``gamma`` depends on ``N`` as well, runs at different step counts do not
follow one path, and only the weak order is defined: 2 with ``S_noise = 1`` (the churn is exact
noise addition, the rest Heun's second-order step of the probability-flow ODE). ``sigma_hat`` is kept
at or below the model's ``sigma_max`` (the network's trained range). Default options are EDM's
ImageNet-64 settings (Table 5: ``S_churn = 40, S_tmin = 0.05, S_tmax = 50, S_noise = 1.003``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..base import SolverError, Step, Stepper
from ..boundary import Boundary
from ..registry import register
from .common import check_nonneg

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["EDMStochastic"]


@register
@dataclass
class EDMStochastic(Stepper):
    """Karras et al. 2022, Algorithm 2 (churn, then a Heun step); weak order 2.

    Options:
        s_churn: total churn ``S_churn`` (``gamma = min(S_churn / N, sqrt 2 - 1)``); 0 gives EDM's
            deterministic Heun sampler (Algorithm 1).
        s_tmin, s_tmax: the noise levels (``sigma``) between which churn is added.
        s_noise: scale of the churn noise ``S_noise``.
    """

    s_churn: float = 40.0
    s_tmin: float = 0.05
    s_tmax: float = 50.0
    s_noise: float = 1.003
    name = "edm_stochastic"
    nfe_per_step = 2.0
    source = "Karras, Aittala, Aila & Laine, EDM, NeurIPS 2022, Algorithm 2 (settings of Table 5)"
    stochastic = True
    encodes = False
    strong_order = None
    weak_order = 2.0

    def __post_init__(self) -> None:
        for key in ("s_churn", "s_noise", "s_tmin"):
            check_nonneg(self.name, key, getattr(self, key))
        if isinstance(self.s_tmax, bool) or not isinstance(self.s_tmax, (int, float)) or not self.s_tmax >= self.s_tmin:
            raise SolverError(f"`s_tmax` of {self.name!r} must be a number >= `s_tmin` ({self.s_tmin!r}), "
                              f"got {self.s_tmax!r}.")

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO  # the Euler step to 0 after the churn (Algorithm 2, line 9)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        gamma = min(self.s_churn / run.num_steps, math.sqrt(2.0) - 1.0) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        sigma_hat = min(sigma * (1.0 + gamma), max(sigma, run.sigma_max))
        xbar = x / run.alpha(sigma)
        if sigma_hat > sigma:
            xbar = xbar.add(run.randn_like(x), alpha=math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise)
        a_hat = run.alpha(sigma_hat)
        pred = run.predict(xbar * a_hat, sigma_hat)
        if sigma_next == 0.0:
            return Step(pred.x0, None, pred)
        a_next = run.alpha(sigma_next)
        h = sigma_next - sigma_hat
        euler = xbar.add(pred.eps, alpha=h)
        pred2 = run.predict(euler * a_next, sigma_next)
        out = xbar.add(pred.eps + pred2.eps, alpha=0.5 * h)
        return Step(out * a_next, None, pred, info={"gammas": gamma})
