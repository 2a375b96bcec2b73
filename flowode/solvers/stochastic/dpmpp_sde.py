"""DPM-Solver++ for the reverse SDE (Lu et al. 2022b, "DPM-Solver++", sec. 5 / App. B): the
multistep ``dpm_solver++_2m_sde`` and the singlestep ``dpm_solver++_sde``, as k-diffusion has them.

Both are exponential integrators in ``lambda = -log sigma`` with the data prediction ``D = x0_hat``,
written in ``xbar`` (``h = log(sigma / sigma')``):

* **2M SDE** (``sample_dpmpp_2m_sde``): with ``eta`` the share of fresh noise,

      xbar' = (sigma'/sigma) e^{-eta h} xbar + (1 - e^{-(1+eta) h}) D
              + c (D - D_prev) / r + sigma' sqrt(1 - e^{-2 eta h}) s_noise z,

  ``r = h_prev / h``, ``c = (1 - e^{-(1+eta) h}) / 2`` ("midpoint") or
  ``1 - (1 - e^{-(1+eta) h}) / ((1+eta) h)`` ("heun"); the first step (and the first after a boundary
  step) has no ``D_prev`` term. With ``eta = 1`` its first-order part is DDPM's posterior step.
* **SDE** (``sample_dpmpp_sde``, singlestep, two evaluations): an ancestral first-order step to
  ``lambda + r h`` gives ``D_2`` there; the step to ``sigma'`` uses ``(1 - 1/(2r)) D + D_2 / (2r)``.
  Each part is ``xbar -> (s_d/sigma) xbar + (1 - s_d/sigma) D + s_u z`` with k-diffusion's ancestral
  split ``(s_d, s_u)`` of the target level, and ``z`` the Brownian increment from ``sigma`` to that
  level (the two overlap: the same path, as k-diffusion's Brownian tree gives them).

The step to ``sigma = 0`` is the driver's DDIM step (the denoised estimate), as in k-diffusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ..base import SolverError, Step, Stepper, check_choice
from ..registry import register
from .common import check_nonneg

if TYPE_CHECKING:  # pragma: no cover
    from ..boundary import Boundary
    from ..run import Run

__all__ = ["DPMSolverPP2MSDE", "DPMSolverPPSDE", "ancestral_split"]


def ancestral_split(sigma: float, sigma_to: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` with ``sigma_down^2 + sigma_up^2 = sigma_to^2`` and
    ``sigma_up = min(sigma_to, eta sigma_to sqrt(1 - sigma_to^2 / sigma^2))`` (k-diffusion's
    ``get_ancestral_step``; for ``eta = 1`` the DDPM posterior std in ``xbar``)."""
    if not eta:
        return sigma_to, 0.0
    up = min(sigma_to, eta * sigma_to * math.sqrt(max(0.0, 1.0 - (sigma_to / sigma) ** 2)))
    return math.sqrt(max(0.0, sigma_to**2 - up**2)), up


def _check_eta(solver: str, eta: Any, s_noise: Any) -> None:
    check_nonneg(solver, "eta", eta)
    check_nonneg(solver, "s_noise", s_noise)


@register
@dataclass
class DPMSolverPP2MSDE(Stepper):
    """DPM-Solver++(2M) SDE; one evaluation per step; strong order 1, weak order 2 (measured on
    Gaussian data, see docs/stochastic.md).

    Options:
        eta: share of fresh noise (1: the reverse SDE; 0: DPM-Solver++(2M), the ODE).
        s_noise: scale of the added noise.
        solver_type: ``"midpoint"`` (default) or ``"heun"`` (the weight of the ``D - D_prev`` term).
    """

    eta: float = 1.0
    s_noise: float = 1.0
    solver_type: str = "midpoint"
    name = "dpm_solver++_2m_sde"
    multistep = True
    default_spacing = "logsnr"
    source = "Lu et al. 2022b, DPM-Solver++ (arXiv 2211.01095), SDE-DPM-Solver++(2M); k-diffusion sample_dpmpp_2m_sde"
    stochastic = True
    encodes = False
    strong_order = 1.0
    weak_order = 2.0  # measured on Gaussian data (a linear SDE); Lu et al. 2022b prove no weak order

    @property
    def warmup_steps(self) -> int:
        """One first-order step before the two-point history exists (``order`` is the strong order 1
        here, so the default ``order - 1`` would say none)."""
        return 1

    def __post_init__(self) -> None:
        _check_eta(self.name, self.eta, self.s_noise)
        check_choice(self.name, "solver_type", self.solver_type, ("midpoint", "heun"))

    def init(self, run: "Run") -> Any:
        return ()  # () or (D_prev, h_prev)

    def native(self, kind: "Boundary") -> bool:
        return False

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        d = pred.x0
        h = math.log(sigma / sigma_next)
        eh = self.eta * h
        phi = -math.expm1(-h - eh)  # 1 - e^{-(1+eta) h}
        xbar = (x / run.alpha(sigma)) * ((sigma_next / sigma) * math.exp(-eh))
        xbar = xbar.add(d, alpha=phi)
        if state:
            d_prev, h_prev = state
            r = h_prev / h
            c = 0.5 * phi if self.solver_type == "midpoint" else 1.0 - phi / (h + eh)
            xbar = xbar.add(d - d_prev, alpha=c / r)
        if self.eta:
            std = sigma_next * math.sqrt(-math.expm1(-2.0 * eh)) * self.s_noise
            xbar = xbar.add(run.brownian(x, sigma, sigma_next), alpha=std)
        return Step(xbar * run.alpha(sigma_next), (d, h), pred, info={"orders": 2 if state else 1})


@register
@dataclass
class DPMSolverPPSDE(Stepper):
    """DPM-Solver++ SDE, singlestep with an intermediate level at ``lambda + r h``; two evaluations
    per step; strong order 1, weak order 2 (measured on Gaussian data, see
    docs/stochastic.md).

    Options:
        eta: share of fresh noise (ancestral split); s_noise: its scale; r: where the intermediate
            level lies, in ``(0, 1)`` (default 1/2).
    """

    eta: float = 1.0
    s_noise: float = 1.0
    r: float = 0.5
    name = "dpm_solver++_sde"
    nfe_per_step = 2.0
    default_spacing = "logsnr"
    source = "Lu et al. 2022b, DPM-Solver++ (arXiv 2211.01095), singlestep SDE variant; k-diffusion sample_dpmpp_sde"
    stochastic = True
    encodes = False
    strong_order = 1.0
    weak_order = 2.0  # measured on Gaussian data (a linear SDE); Lu et al. 2022b prove no weak order

    def __post_init__(self) -> None:
        _check_eta(self.name, self.eta, self.s_noise)
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)) or not 0.0 < self.r < 1.0:
            raise SolverError(f"`r` of {self.name!r} must lie in (0, 1), got {self.r!r}.")

    def native(self, kind: "Boundary") -> bool:
        return False

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        xbar = x / run.alpha(sigma)
        sigma_s = sigma * (sigma_next / sigma) ** self.r  # lambda + r h
        down, up = ancestral_split(sigma, sigma_s, self.eta)
        x2 = (xbar * (down / sigma)).add(pred.x0, alpha=1.0 - down / sigma)
        if up:
            x2 = x2.add(run.brownian(x, sigma, sigma_s), alpha=up * self.s_noise)
        pred2 = run.predict(x2 * run.alpha(sigma_s), sigma_s)
        fac = 1.0 / (2.0 * self.r)
        d = pred.x0 * (1.0 - fac) + pred2.x0 * fac
        down, up = ancestral_split(sigma, sigma_next, self.eta)
        out = (xbar * (down / sigma)).add(d, alpha=1.0 - down / sigma)
        if up:
            out = out.add(run.brownian(x, sigma, sigma_next), alpha=up * self.s_noise)
        return Step(out * run.alpha(sigma_next), None, pred)
