"""PLMS / PNDM and iPNDM: constant-step linear multistep methods on the DDIM transfer.

Both are written in the DDIM picture ``(xbar, sigma)`` (DESIGN.md sec. 2), where the probability-flow
ODE is ``d xbar / d sigma = eps``; the transfer part ``phi(x, e, sigma -> sigma')`` is the DDIM step
with noise estimate ``e`` (:func:`~flowode.solvers.ddim.ddim_transfer`, Liu et al. 2022 eq. 9 = DDIM
eq. 12), finite at ``sigma' = 0`` (``xbar - sigma e``), so a step to ``sigma = 0`` is their own step.

* **PLMS / PNDM** (Liu, Ren, Lin & Zhao, ICLR 2022): the gradient part replaces ``e`` by the
  *constant-step* Adams-Bashforth-4 combination ``(55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24`` of the
  last predictions (sec. 3.3, eq. 11-13). Warm start: three pseudo Runge-Kutta steps (``phi`` at the
  half step and the full step, weights 1/6, 1/3, 1/3, 1/6; 4 evaluations each, F-PNDM), or with
  ``skip_prk_steps=True`` diffusers' pseudo-Heun first step then pseudo AB2, AB3, AB4. The half step
  is the midpoint in ``sigma`` (default: in ``(xbar, sigma)`` the pseudo RK step is then classical RK4,
  so F-PNDM keeps order 4 on grids uniform in ``sigma`` of every schedule) or, with
  ``half_step="t"``, in the schedule's native time (the paper's and diffusers' ``PNDMScheduler``;
  on a VP schedule the stages are then not RK4's: 2 steps on the ring went to ``|x| = 65``, and at
  NFE 10 the error was about twice the sigma midpoint's, benchmarks/sections/orders.md).
* **iPNDM** (Zhang & Chen, ICLR 2023, appendix; diffusers' ``IPNDMScheduler``): the same transfer
  with Adams-Bashforth weights of order ``min(order, #history)``, no Runge-Kutta start. The weights
  are the constant-step table (default, ``coefficients="fixed"``: diffusers' ``IPNDMScheduler``) or
  the variable-step ones (``coefficients="variable"``: the Lagrange polynomial through the last
  predictions in ``sigma`` integrated over the step, Hairer, Norsett & Wanner I, III.5, eq. 5.3 --
  the same step as ``adams_bashforth`` in ``sigma``). The variable weights do not raise iPNDM's
  order (its warm-up caps it at 2 either way) and at 10-40 evaluations they were *less* accurate than
  the constant ones in 17 of 18 measured cases, by 1.04-6.2x (benchmarks/sections/orders.md): a polynomial
  in ``sigma`` extrapolates badly across the large step ratios of diffusion grids, where the constant
  weights extrapolate in the step index. So the default stays the constant table.

The solver state is the history of past noise predictions (newest last). A step from ``sigma = inf``
is the boundary DDIM step and its ``eps`` joins the history of the constant-step weights (as
diffusers' ``IPNDMScheduler`` keeps it; a polynomial cannot have a node at infinity, so the
variable-step weights skip it); a step from ``sigma = 0`` (an encode's first) is a boundary step
whose ``eps`` does not.

Constant-step weights on a non-uniform grid: the extrapolated ``eps`` has a per-step error
``O(h (h_k/h_{k-1} - 1))``, so on a smoothly graded grid PLMS and fixed-weight iPNDM are second
order in ``sigma``; on a grid uniform in ``sigma`` they reach their nominal order, and the
variable-step weights reach it on any smooth grid -- once the warm-up is accurate. iPNDM's
lower-order warm-up (an Euler first step, local error ``O(h^2)``) caps its global order at 2 on
every grid (the registry's order claims, :meth:`IPNDM.order_claims`; tests/test_orders_registry.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from torch import Tensor

from ...models import Prediction
from ..base import Step, Stepper, check_choice
from ..boundary import Boundary
from ..claims import WARMUP_LOWER, OrderClaim
from ..ddim import ddim_transfer
from ..registry import register
from .adams import LagrangeHistory, lagrange_integrals

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["PLMS", "IPNDM", "AB_CONSTANT", "HALF_STEPS", "IPNDM_COEFFICIENTS"]

HALF_STEPS = ("sigma", "t")
IPNDM_COEFFICIENTS = ("variable", "fixed")

# Constant-step Adams-Bashforth weights, newest first (Hairer, Norsett & Wanner I, III.1, Table 1.1).
AB_CONSTANT: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def _combine(hist: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_j weights[j] * hist[-1 - j]`` (newest first)."""
    out = hist[-1] * weights[0]
    for j in range(1, len(weights)):
        out = out.add(hist[-1 - j], alpha=weights[j])
    return out


def _transfer(run: "Run", x: Tensor, sigma: float, sigma_next: float, e: Tensor) -> Tensor:
    return ddim_transfer(x, e, run.alpha(sigma), run.alpha(sigma_next), sigma, sigma_next)


class _EpsHistory(Stepper):
    """Shared by PLMS and iPNDM: the history of noise predictions, kept across a step from inf."""

    multistep = True

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO

    def init(self, run: "Run") -> Any:
        return ()

    def after_boundary(self, run: "Run", state: Any, kind: Boundary, sigma: float, pred: Prediction) -> Any:
        return state + (pred.eps,) if kind is Boundary.FROM_INF else state


@register
@dataclass
class PLMS(_EpsHistory):
    """PNDM / PLMS (Liu et al., ICLR 2022, eq. 11-13). Order 4 on grids uniform in ``sigma``
    (2 on smoothly graded grids: constant-step weights), 1 evaluation per step after the warm-up.

    Options:
        skip_prk_steps: ``False`` (default): F-PNDM, the first three steps are pseudo Runge-Kutta
            steps with 4 evaluations each. ``True``: diffusers' ``skip_prk_steps=True`` -- a
            pseudo-Heun first step (2 evaluations), then pseudo AB2, AB3 and AB4.
        half_step: where the pseudo Runge-Kutta steps evaluate between two levels: ``"sigma"``
            (default: the midpoint in ``sigma``, classical RK4 in ``(xbar, sigma)``) or ``"t"``
            (the midpoint in the schedule's native time, as the paper and diffusers'
            ``PNDMScheduler``; :func:`flowode.from_diffusers_scheduler` uses it). The two agree
            where ``sigma`` is affine in ``t`` (EDM, VE).

    NFE on ``S`` steps with no boundary step: ``S + 9`` (F-PNDM, ``S >= 3``) or ``S + 1`` (skip PRK).
    A warm-up step that ends at ``sigma = 0`` is a plain (1-evaluation) pseudo-AB step.
    """

    skip_prk_steps: bool = False
    half_step: str = "sigma"
    name = "plms"
    order = 4
    source = "Liu et al., PNDM, ICLR 2022, eq. 9 (transfer part) and eq. 11-13 (pseudo RK / linear multistep)"

    def __post_init__(self) -> None:
        check_choice(self.name, "half_step", self.half_step, HALF_STEPS)

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """2 on graded grids (constant-step weights); on grids uniform in ``sigma`` 4 (F-PNDM's
        pseudo RK4 start) or 3 (``skip_prk_steps=True``: the pseudo-Heun first step, ``O(h^3)``)."""
        graded = OrderClaim(2, conditions=("constant-step AB4 weights",), nominal=4, reach="a grid uniform in sigma",
                            from_steps=256 if self.skip_prk_steps else 128)
        if self.skip_prk_steps:
            return (graded, OrderClaim(3, grid="uniform_sigma", conditions=(
                "skip_prk_steps=True: the pseudo-Heun first step's O(h^3) local error caps the order at 3",),
                from_steps=512))
        start = ("F-PNDM start: pseudo Runge-Kutta steps with the half step in sigma (classical RK4)",)
        if self.half_step == "t":
            start = ("half_step='t': only where sigma is affine in t (EDM, VE); elsewhere the pseudo Runge-Kutta "
                     "stages are not RK4's",)
        return (graded, OrderClaim(4, grid="uniform_sigma", conditions=start, from_steps=256))

    def _midpoint(self, run: "Run", sigma: float, sigma_next: float) -> float:
        if self.half_step == "sigma":
            return 0.5 * (sigma + sigma_next)
        fld = run.field("t")
        return fld.sigma_of_s(0.5 * (fld.s_of_sigma(sigma) + fld.s_of_sigma(sigma_next)))

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        e1 = pred.eps
        hist = state + (e1,)
        n_before = len(state)
        if sigma_next != 0.0 and not self.skip_prk_steps and n_before < 3:
            mid = self._midpoint(run, sigma, sigma_next)
            e2 = run.predict(_transfer(run, x, sigma, mid, e1), mid).eps
            e3 = run.predict(_transfer(run, x, sigma, mid, e2), mid).eps
            e4 = run.predict(_transfer(run, x, sigma, sigma_next, e3), sigma_next).eps
            e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
            return Step(_transfer(run, x, sigma, sigma_next, e), hist, pred, None, {"warmup": "prk"})
        if sigma_next != 0.0 and self.skip_prk_steps and n_before == 0:
            e2 = run.predict(_transfer(run, x, sigma, sigma_next, e1), sigma_next).eps
            return Step(_transfer(run, x, sigma, sigma_next, (e1 + e2) / 2), hist, pred, None, {"warmup": "heun"})
        hist = hist[-4:]
        return Step(_transfer(run, x, sigma, sigma_next, _combine(hist, AB_CONSTANT[len(hist)])), hist, pred)


@register
@dataclass
class IPNDM(_EpsHistory):
    """Improved PNDM (Zhang & Chen, DEIS, ICLR 2023, appendix; diffusers' ``IPNDMScheduler``):
    the DDIM transfer with Adams-Bashforth weights of order ``min(order, n)`` where ``n`` is the
    number of predictions so far (lower-order warm-up, no Runge-Kutta start). 1 evaluation per step.
    Its global order is 2 on every grid for ``order >= 2``: the Euler first step's ``O(h^2)`` local
    error stays in the result (for order ``order`` use ``adams_bashforth`` with ``warmup="rk4"``).

    Options:
        order: 1-4 (default 4).
        coefficients: ``"fixed"`` (default): the constant-step table, as diffusers'
            ``IPNDMScheduler``. ``"variable"``: variable-step Adams-Bashforth weights in ``sigma`` (the
            step is ``adams_bashforth(order, coordinates="sigma")``'s, to round-off; equal to
            ``"fixed"`` to round-off on grids uniform in ``sigma``); exact for polynomials in ``sigma``
            on any grid, but less accurate at few steps (module docstring).
    """

    order: int = 4  # type: ignore[misc]
    coefficients: str = "fixed"
    name = "ipndm"
    source = ("Zhang & Chen, DEIS, ICLR 2023, appendix (iPNDM); diffusers IPNDMScheduler; coefficients='variable': "
              "variable-step AB weights (Hairer, Norsett & Wanner I, III.5)")

    def __post_init__(self) -> None:
        check_choice(self.name, "order", self.order, (1, 2, 3, 4))
        check_choice(self.name, "coefficients", self.coefficients, IPNDM_COEFFICIENTS)

    def init(self, run: "Run") -> Any:
        return LagrangeHistory()

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """2 for ``order >= 2`` on every grid: the Euler first step (iPNDM's lower-order warm-up)."""
        if self.order == 1:
            return (OrderClaim(1),)
        reach = (f"an accurate start: adams_bashforth(order={self.order}, warmup='rk4') is this step with an RK4 "
                 "warm-up")
        if self.coefficients == "fixed":
            return (OrderClaim(2, conditions=("constant-step weights, exact on grids uniform in sigma only",
                                              WARMUP_LOWER), nominal=self.order,
                               reach="coefficients='variable' and " + reach),)
        return (OrderClaim(2, conditions=(WARMUP_LOWER,), nominal=self.order, reach=reach),)

    def after_boundary(self, run: "Run", state: Any, kind: Boundary, sigma: float, pred: Prediction) -> Any:
        if kind is Boundary.FROM_INF:
            return LagrangeHistory(state.values + (pred.eps,), state.nodes + (math.inf,))
        return state

    def _eps(self, hist: LagrangeHistory, sigma: float, sigma_next: float) -> Tensor:
        """The extrapolated noise estimate of the step: ``(1/h) sum_j C_j eps_j``."""
        if self.coefficients == "fixed":
            return _combine(hist.values, AB_CONSTANT[len(hist.values)])
        k = len(hist.nodes) - next((i for i in range(len(hist.nodes) - 1, -1, -1)
                                    if math.isinf(hist.nodes[i])), -1) - 1  # finite nodes, newest last
        if k == 1:
            return hist.values[-1]
        w = lagrange_integrals(hist.nodes[-k:], sigma, sigma_next)
        return _combine(hist.values[-k:], [wj / (sigma_next - sigma) for wj in reversed(w)])

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        pred = run.predict(x, sigma)
        hist = LagrangeHistory((state.values + (pred.eps,))[-self.order:], (state.nodes + (sigma,))[-self.order:])
        return Step(_transfer(run, x, sigma, sigma_next, self._eps(hist, sigma, sigma_next)), hist, pred)
