"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``): DDIM with ``eta``, named as peers name it.

In ``xbar`` a step is the Euler step ``xbar + (sigma_down - sigma) eps`` to
``sigma_down = sqrt(sigma'^2 - sigma_up^2)`` plus ``s_noise * sigma_up * z`` with
``sigma_up = eta sigma' sqrt(1 - sigma'^2 / sigma^2)``; since ``xbar - sigma eps = x0_hat`` this is
exactly the generalised DDIM step (Song et al. 2021, eq. 12 and 16) with the same ``eta``, so flowode
keeps one copy (:func:`~flowode.solvers.ddim.ddim_eta_update`); ``eta = 1`` is DDPM's posterior
(``ddpm``) in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ddim import DDIM
from ..registry import register
from .common import check_nonneg

__all__ = ["EulerAncestral"]


@register
@dataclass
class EulerAncestral(DDIM):
    """Euler ancestral sampling; one evaluation per step; strong and weak order 1.

    Options:
        eta: the share of the step's noise that is fresh (default 1: DDPM's posterior variance).
        s_noise: scale of the added noise (default 1; Karras et al. 2022's ``S_noise``).
    """

    eta: float = 1.0
    s_noise: float = 1.0  # type: ignore[misc]
    name = "euler_ancestral"
    stochastic = True  # type: ignore[assignment]
    encodes = False
    source = ("k-diffusion sample_euler_ancestral (Crowson); = DDIM eta (Song, Meng & Ermon 2021, eq. 12, 16) "
              "in xbar")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonneg(self.name, "s_noise", self.s_noise)
