"""DEIS: the multistep exponential integrator of Zhang & Chen (ICLR 2023, eq. 13-15).

In ``(xbar, rho)`` with ``rho = sigma`` the VP probability flow is ``d xbar / d rho = eps``: the
exponential-integrator transfer ``Psi`` (eq. 13-15) is the factor ``alpha'/alpha`` hidden in
``x = alpha xbar``, and the step is ``xbar' = xbar + sum_j C_j eps_j`` with

    ``C_j = int_{rho}^{rho'} l_j(tau(r)) dr``  (eq. 13-15's coefficients, changed to ``rho``),

``l_j`` the Lagrange basis of the last ``order`` predictions in the interpolation variable ``tau``
(``basis``): ``"t"`` (tAB-DEIS, the schedule's native time; quadrature with the density
``d sigma / dt``, split where it jumps), ``"rho"`` (rhoAB-DEIS = ``adams_bashforth`` in ``sigma``),
``"log_rho"`` (diffusers' ``DEISMultistepScheduler``, ``solver_type="logrho"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..boundary import Boundary
from ..claims import LOWER_ORDER_FINAL_15
from ..registry import register
from .adams import WARMUPS, LagrangeMultistep, lagrange_integrals

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["DEIS", "DEIS_BASES"]

DEIS_BASES = ("t", "rho", "log_rho")


@register
@dataclass
class DEIS(LagrangeMultistep):
    """DEIS multistep exponential integrator (Zhang & Chen, ICLR 2023, eq. 13-15), orders 1-3,
    1 evaluation per step after the warm-up (module docstring for the bases).

    Options:
        order: 1, 2 or 3 (default 3; diffusers' ``solver_order``).
        basis: ``"t"`` (default; tAB-DEIS), ``"rho"`` or ``"log_rho"``.
        lower_order_final: as in diffusers: on grids of fewer than 15 steps the last step has order
            1 and the one before order <= 2 (default ``True``).
        warmup: ``"lower_order"`` (default, as the paper and diffusers: orders 1, 2, ... on the first
            steps) or ``"rk4"`` (first ``order - 1`` steps classical RK4 in ``(xbar, sigma)``, 4
            evaluations each). As for ``adams_bashforth``, the Euler first step limits the global
            order to 2 unless ``warmup="rk4"``.

    A step ending at ``sigma = 0``: with ``basis="rho"`` it is the rhoAB step itself (polynomial in
    ``sigma``, integrated down to 0; no evaluation at 0). With ``basis="t"`` (``t(0)`` is outside every
    schedule) and ``"log_rho"`` (``log rho -> -inf``) it is a DDIM boundary step, i.e. DEIS of order 1
    with the ``eps`` at its start; for ``log_rho`` the finite limit of the integrals exists, but
    extrapolating the polynomial in ``log rho`` to ``-inf`` was less accurate than the DDIM step at
    10-20 steps (docs/multistep.md).
    """

    basis: str = "t"
    lower_order_final: bool = True
    name = "deis"
    source = "Zhang & Chen, DEIS, ICLR 2023, eq. 13-15 (tAB); diffusers DEISMultistepScheduler (log_rho)"

    choices = {"warmup": WARMUPS, "order": (1, 2, 3), "basis": DEIS_BASES}

    def _extra_conditions(self) -> tuple[str, ...]:
        out: tuple[str, ...] = (LOWER_ORDER_FINAL_15,) if self.lower_order_final else ()
        if self.basis == "t" and self.order > 2:
            # measured with warmup="rk4" on the DDPM schedule, sigma 2 -> 0.1: 2.8 at 64-128 steps, below 2 from 512
            out += ("basis='t' on a discrete schedule: only while steps span many training timesteps (the "
                    "polynomial in t interpolates across the kinks of sigma(t) at integer timesteps)",)
        return out

    def _lower_order(self, n: int, i: int) -> int:
        if self.lower_order_final and n < 15:
            if i == n - 1:
                return 1
            if i == n - 2:
                return min(2, self.order)
        return self.order

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO and self.basis == "rho"

    def _weights(self, run: "Run", nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        if len(nodes) == 1:
            return [sigma_next - sigma]
        if self.basis == "rho":
            return lagrange_integrals(nodes, sigma, sigma_next)
        if self.basis == "log_rho":
            u = [math.log(v) for v in nodes]
            return lagrange_integrals(u, math.log(sigma), math.log(sigma_next), density=np.exp)
        fld = run.field("t")
        ts = [fld.s_of_sigma(v) for v in nodes]

        def dsigma(tau: np.ndarray) -> np.ndarray:
            return fld.dsigma_ds(torch.from_numpy(tau)).numpy().astype(np.float64)  # type: ignore[attr-defined]

        t1 = fld.s_of_sigma(sigma_next)
        return lagrange_integrals(ts, ts[-1], t1, density=dsigma, breaks=fld.kinks(ts[-1], t1))
