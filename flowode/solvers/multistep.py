"""Linear multistep solvers: PLMS / PNDM, iPNDM, DEIS (tAB / rhoAB / log-rho AB) and variable-step
Adams-Bashforth.

All four reuse the noise predictions of earlier steps, so after a warm-up they cost one model
evaluation per step. They are written in the DDIM picture ``(xbar, sigma)`` of DESIGN.md sec. 2,
where the probability-flow ODE is ``d xbar / d sigma = eps(alpha * xbar, sigma)``:

* **PLMS / PNDM** (Liu, Ren, Lin & Zhao, "Pseudo Numerical Methods for Diffusion Models on
  Manifolds", ICLR 2022). The transfer part ``phi(x, e, sigma -> sigma')`` is the DDIM step,
  ``xbar' = xbar + (sigma' - sigma) e`` (their eq. 9 = DDIM eq. 12). The gradient part replaces ``e``
  by a combination of earlier predictions with the *constant-step* Adams-Bashforth-4 weights
  ``e' = (55 e_0 - 59 e_1 + 37 e_2 - 9 e_3) / 24`` (the pseudo linear multistep method, sec. 3.3,
  eq. 11-13). Warm start: the pseudo Runge-Kutta step (``phi`` evaluated at the half step and the
  full step, weights 1/6, 1/3, 1/3, 1/6) for the first three steps, 4 evaluations each (F-PNDM).
  ``skip_prk_steps=True`` is diffusers' ``PNDMScheduler(skip_prk_steps=True)``: one pseudo-Heun
  first step (2 evaluations), then pseudo-AB2, AB3, AB4 with the constant-step weights.
* **iPNDM** (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator", ICLR
  2023, appendix; the variant of diffusers' ``IPNDMScheduler`` and of diff-sampler's ``ipndm``):
  the same DDIM transfer with constant-step AB weights of order ``min(order, #history)``, no
  Runge-Kutta warm start: 1 evaluation per step from the first.
* **DEIS tAB** (Zhang & Chen 2023, eq. 13-15): an exponential integrator. In ``(xbar, sigma)`` the
  linear part of the VP ODE is already integrated exactly (``x = alpha xbar``), so the multistep
  update of eq. 13-15 reads
  ``xbar' = xbar + sum_j C_j eps_j``, ``C_j = int_{sigma}^{sigma'} l_j(tau(s)) ds``, with ``l_j`` the
  Lagrange basis of the last ``order`` nodes in the interpolation variable ``tau``.
* **Adams-Bashforth** ``order`` 2-4 with *variable-step* weights: the same Lagrange-integral formula
  with ``tau = s`` the independent variable of the chosen coordinates (``sigma`` by default, where it
  coincides with DEIS rhoAB).

Constant-step (PLMS, iPNDM) versus variable-step (DEIS, Adams-Bashforth) weights matter on
non-uniform grids: with constant weights the per-step error of the extrapolated ``eps`` is
``O(h * (h_k/h_{k-1} - 1))``, so on a smoothly graded grid (ratios ``1 + O(h)``) PLMS and iPNDM are
**second-order** in ``sigma``; on a grid uniform in ``sigma`` they are order 4. The variable-step
methods keep their full order on any smooth grid (tests/test_multistep.py measures both).

Steps at the ends of the range:

* a step that starts at ``sigma = inf`` (zero terminal SNR) is :func:`~.base.boundary_step` (DDIM).
  PLMS and iPNDM keep that step's ``eps`` in their history (as diffusers' ``IPNDMScheduler`` does);
  the variable-step methods cannot place an interpolation node at infinity and restart their
  history after it.
* a step that ends at ``sigma = 0``: PLMS, iPNDM and Adams-Bashforth in ``sigma`` take their usual
  step, whose DDIM transfer has the finite limit ``xbar' = xbar - sigma e'`` (no evaluation at 0 is
  needed; this is what diffusers' ``PNDMScheduler(set_alpha_to_one=True)`` and ``IPNDMScheduler`` do).
  DEIS with ``basis="rho"`` also takes its own step.
  DEIS with ``basis="t"`` / ``"log_rho"`` and Adams-Bashforth in ``"lambda"`` / ``"t"`` coordinates (where
  ``sigma = 0`` is at infinity or outside the schedule) take :func:`~.base.boundary_step` with the
  ``eps`` evaluated at the start of the step, i.e. order 1 there.
* a step that starts at ``sigma = 0`` (the first step of an encode) is a boundary step; its ``eps``
  (evaluated at ``sigma_min``, see :meth:`~flowode.models.EpsilonModel.predict`) does not enter the
  history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..field import COORDINATES, ProbabilityFlow
from ..models import Prediction
from .base import Context, Solver, SolverError, boundary_step
from .registry import register

__all__ = ["PLMS", "IPNDM", "DEIS", "AdamsBashforth", "AB_CONSTANT", "lagrange_integrals"]

# Constant-step Adams-Bashforth weights, newest first (Hairer, Norsett & Wanner I, III.1, Table 1.1).
AB_CONSTANT: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}

WARMUPS = ("lower_order", "rk4")

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


def _combine(hist: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``sum_j weights[j] * hist[-1 - j]`` (newest first)."""
    out = hist[-1] * weights[0]
    for j in range(1, len(weights)):
        out = out.add(hist[-1 - j], alpha=weights[j])
    return out


def lagrange_integrals(nodes: Sequence[float], a: float, b: float,
                       density: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                       breaks: Sequence[float] = ()) -> list[float]:
    """``int_a^b density(tau) l_j(tau) d tau`` for the Lagrange basis ``l_j`` of ``nodes``.

    Gauss-Legendre quadrature (12 points) on each piece between ``a``, ``b`` and the ``breaks``
    inside; exact to round-off for polynomial integrands of degree <= 23 (``density=None``), and for
    smooth densities on pieces where they are smooth. The basis is evaluated in the scaled variable
    ``(tau - a) / (b - a)`` so the weights are well conditioned for any step size.
    """
    k = len(nodes)
    h = b - a
    u_nodes = np.array([(n - a) / h for n in nodes], dtype=np.float64)
    cuts = sorted({0.0, 1.0, *[(c - a) / h for c in breaks if 0.0 < (c - a) / h < 1.0]})
    us, ws = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        us.append(lo + (hi - lo) * (_GL_NODES + 1) / 2)
        ws.append(_GL_WEIGHTS * (hi - lo) / 2)
    u = np.concatenate(us)
    w = np.concatenate(ws) * h
    if density is not None:
        w = w * density(a + h * u)
    out = []
    for j in range(k):
        lj = np.ones_like(u)
        for m in range(k):
            if m != j:
                lj *= (u - u_nodes[m]) / (u_nodes[j] - u_nodes[m])
        out.append(float(np.dot(w, lj)))
    return out


def _midpoint_sigma(ctx: Context, sigma: float, sigma_next: float) -> float:
    """The pseudo Runge-Kutta half step ``t - delta/2`` of PNDM, taken in the schedule's native time."""
    sched = ctx.model.schedule
    return float(sched.sigma(0.5 * (float(sched.t(sigma)) + float(sched.t(sigma_next)))))


def _ddim(ctx: Context, x: Tensor, sigma: float, sigma_next: float, e: Tensor) -> Tensor:
    """The PNDM transfer part ``phi`` = DDIM step with noise estimate ``e`` (model coordinates);
    finite at ``sigma' = 0`` (returns ``xbar - sigma e``)."""
    a = ctx.alpha(sigma)
    a_next = ctx.alpha(sigma_next)
    return torch.add(x * (a_next / a), e, alpha=a_next * (sigma_next - sigma))


# ---------------------------------------------------------------------------------------- PLMS
@register
@dataclass
class PLMS(Solver):
    """PNDM / PLMS (Liu et al., ICLR 2022, eq. 11-13). Order 4 on grids uniform in ``sigma``
    (2 on smoothly graded grids: constant-step weights), 1 evaluation per step after the warm-up.

    Options:
        skip_prk_steps: ``False`` (default): F-PNDM, the first three steps are pseudo Runge-Kutta
            steps with 4 evaluations each (half steps in native time ``t``, as in the paper
            and diffusers). ``True``: diffusers' ``skip_prk_steps=True`` -- a pseudo-Heun first
            step (2 evaluations), then pseudo AB2, AB3 and AB4.

    NFE on ``S`` steps with no boundary step: ``S + 9`` (F-PNDM, ``S >= 3``) or ``S + 1`` (skip PRK).
    A warm-up step that ends at ``sigma = 0`` is a plain (1-evaluation) pseudo-AB step.
    """

    skip_prk_steps: bool = False
    name = "plms"
    order = 4
    nfe_per_step = 1.0
    source = "Liu et al., PNDM, ICLR 2022, eq. 9 (transfer part) and eq. 11-13 (pseudo RK / linear multistep)"
    multistep = True

    def _plan(self, sigmas: Sequence[float]) -> list[str]:
        """Per step: ``"inf"`` (boundary from inf), ``"zero"`` (boundary from 0), ``"prk"``,
        ``"heun"`` or ``"lms"`` -- the same logic :meth:`solve` follows."""
        plan, hist = [], 0
        for a, b in zip(sigmas[:-1], sigmas[1:]):
            if math.isinf(a):
                plan.append("inf")
                hist += 1
            elif a == 0.0:
                plan.append("zero")
            elif b != 0.0 and not self.skip_prk_steps and hist < 3:
                plan.append("prk")
                hist += 1
            elif b != 0.0 and self.skip_prk_steps and hist == 0:
                plan.append("heun")
                hist += 1
            else:
                plan.append("lms")
                hist += 1
        return plan

    def nfe(self, sigmas: list[float]) -> int:
        cost = {"inf": 1, "zero": 1, "prk": 4, "heun": 2, "lms": 1}
        return sum(cost[p] for p in self._plan(sigmas))

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        plan = self._plan(s)
        ctx.record(x, s[0]) if ctx.save_trajectory else None
        ctx.stats["warmup"] = [p for p in plan if p in ("prk", "heun")]
        hist: list[Tensor] = []
        for i, kind in enumerate(plan):
            ctx.step = i
            sig, nxt = s[i], s[i + 1]
            if kind in ("inf", "zero"):
                x, pred = boundary_step(ctx, x, sig, nxt)
                if kind == "inf":
                    hist.append(pred.eps)
            elif kind == "prk":
                pred = ctx.predict(x, sig)
                e1 = pred.eps
                hist.append(e1)
                mid = _midpoint_sigma(ctx, sig, nxt)
                e2 = ctx.predict(_ddim(ctx, x, sig, mid, e1), mid).eps
                e3 = ctx.predict(_ddim(ctx, x, sig, mid, e2), mid).eps
                e4 = ctx.predict(_ddim(ctx, x, sig, nxt, e3), nxt).eps
                e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
                x = _ddim(ctx, x, sig, nxt, e)
            elif kind == "heun":
                pred = ctx.predict(x, sig)
                hist.append(pred.eps)
                e2 = ctx.predict(_ddim(ctx, x, sig, nxt, pred.eps), nxt).eps
                x = _ddim(ctx, x, sig, nxt, (pred.eps + e2) / 2)
            else:
                pred = ctx.predict(x, sig)
                hist.append(pred.eps)
                hist = hist[-4:]
                x = _ddim(ctx, x, sig, nxt, _combine(hist, AB_CONSTANT[len(hist)]))
            ctx.record(x, nxt, pred)
        return x


# ---------------------------------------------------------------------------------------- iPNDM
@register
@dataclass
class IPNDM(Solver):
    """Improved PNDM (Zhang & Chen, DEIS, ICLR 2023, appendix; diffusers' ``IPNDMScheduler``):
    the DDIM transfer with constant-step Adams-Bashforth weights of order ``min(order, n)`` where
    ``n`` is the number of predictions so far (lower-order warm-up, no Runge-Kutta start).
    1 evaluation per step. Order ``order`` on grids uniform in ``sigma``, 2 on graded grids.

    Options:
        order: 1-4 (default 4).
    """

    order: int = 4  # type: ignore[misc]
    name = "ipndm"
    nfe_per_step = 1.0
    source = "Zhang & Chen, DEIS, ICLR 2023, appendix (iPNDM); diffusers IPNDMScheduler"
    multistep = True

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3, 4):
            raise SolverError(f"`order` of ipndm must be 1, 2, 3 or 4, got {self.order!r}.")

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        ctx.record(x, s[0]) if ctx.save_trajectory else None
        hist: list[Tensor] = []
        for i in range(len(s) - 1):
            ctx.step = i
            sig, nxt = s[i], s[i + 1]
            if math.isinf(sig) or sig == 0.0:
                x, pred = boundary_step(ctx, x, sig, nxt)
                if math.isinf(sig):
                    hist.append(pred.eps)
            else:
                pred = ctx.predict(x, sig)
                hist.append(pred.eps)
                hist = hist[-self.order:]
                x = _ddim(ctx, x, sig, nxt, _combine(hist, AB_CONSTANT[len(hist)]))
            ctx.record(x, nxt, pred)
        return x


# ---------------------------------------------------------------------------- variable-step AB
class _LagrangeMultistep(Solver):
    """Shared loop of the variable-step methods: ``y' = y + sum_j C_j f_j`` with
    ``C_j = int_s^{s'} l_j`` (Lagrange basis of the last ``k`` nodes)."""

    def _k(self) -> int:
        raise NotImplementedError

    def _coordinates(self) -> str:
        return "sigma"

    def _natural_zero(self) -> bool:
        """Whether a step to ``sigma = 0`` is the method's own step (else a boundary step)."""
        return False

    def _weights(self, ctx: Context, nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        raise NotImplementedError

    def _lower_order(self, n_steps: int, i: int) -> int:
        return self._k()

    def _warmup(self) -> str:
        return str(getattr(self, "warmup", "lower_order"))

    def _plan(self, sigmas: Sequence[float]) -> list[str]:
        """Per step: ``"boundary"``, ``"rk4"`` (warm-up) or ``"ab"`` -- the logic of :meth:`solve`."""
        plan, hist = [], 0
        n = len(sigmas) - 1
        for i, (a, b) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            if math.isinf(a) or a == 0.0:
                plan.append("boundary")
                hist = 0
            elif b == 0.0 and not self._natural_zero():
                plan.append("boundary")
            elif self._warmup() == "rk4" and b != 0.0 and hist + 1 < self._lower_order(n, i):
                plan.append("rk4")
                hist += 1
            else:
                plan.append("ab")
                hist += 1
        return plan

    def nfe(self, sigmas: list[float]) -> int:
        return sum(4 if p == "rk4" else 1 for p in self._plan(sigmas))

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        fld = ctx.field(self._coordinates())
        ctx.record(x, s[0]) if ctx.save_trajectory else None
        hist: list[Tensor] = []
        nodes: list[float] = []  # sigmas of the history
        orders: list[int] = []
        for i, kind in enumerate(self._plan(s)):
            ctx.step = i
            sig, nxt = s[i], s[i + 1]
            pred: Optional[Prediction]
            if kind == "boundary":
                x, pred = boundary_step(ctx, x, sig, nxt)
                if math.isinf(sig) or sig == 0.0:
                    hist, nodes = [], []
                orders.append(1)
            else:
                y = fld.to_state(x, sig)
                s0 = fld.s_of_sigma(sig)
                f, pred = fld(y, s0)
                k = min(self._lower_order(ctx.num_steps, i), len(hist) + 1)
                hist = (hist + [f])[-self._k():]
                nodes = (nodes + [sig])[-self._k():]
                if kind == "rk4":
                    y1 = _rk4(fld, y, f, s0, fld.s_of_sigma(nxt))
                    orders.append(4)
                else:
                    w = self._weights(ctx, nodes[-k:], sig, nxt)
                    y1 = y
                    for wj, fj in zip(w, hist[-k:]):
                        y1 = y1.add(fj, alpha=wj)
                    orders.append(k)
                x = fld.from_state(y1, nxt)
            ctx.record(x, nxt, pred)
        ctx.stats["orders"] = orders
        return x


def _rk4(fld: ProbabilityFlow, y: Tensor, k1: Tensor, s0: float, s1: float) -> Tensor:
    """One classical RK4 step (Kutta 1901) of ``fld`` given its value ``k1`` at ``(y, s0)``."""
    h = s1 - s0
    k2, _ = fld(y.add(k1, alpha=h / 2), s0 + h / 2)
    k3, _ = fld(y.add(k2, alpha=h / 2), s0 + h / 2)
    k4, _ = fld(y.add(k3, alpha=h), s1)
    return y + (k1 + 2 * k2 + 2 * k3 + k4) * (h / 6)


@register
@dataclass
class AdamsBashforth(_LagrangeMultistep):
    """Variable-step Adams-Bashforth (Hairer, Norsett & Wanner I, III.5, eq. 5.3): the ``order``
    most recent field values are interpolated by a polynomial in the coordinates' independent
    variable ``s`` and integrated exactly over the step, ``y' = y + sum_j f_j int_s^{s'} l_j``.
    Order ``order`` on any smooth grid with ``warmup="rk4"``; 1 evaluation per step after the
    warm-up.

    Options:
        order: 2, 3 or 4 (default 3).
        coordinates: ``"sigma"`` (default: state ``xbar``, field ``eps``; here AB-k is DEIS rhoAB-k),
            ``"lambda"`` or ``"t"``. A step to ``sigma = 0`` is the AB step itself in ``"sigma"``
            (no evaluation at 0), a DDIM boundary step in the other two.
        warmup: ``"lower_order"`` (default; AB-1 = Euler, AB-2, ... on the first steps, 1
            evaluation each) or ``"rk4"`` (the first ``order - 1`` steps are classical RK4 steps in
            the same coordinates, 4 evaluations each). The Euler first step has a local error
            ``O(h^2)``, so with ``"lower_order"`` the *global* order is 2 for every ``order``
            (measured in tests/test_multistep.py); ``"rk4"`` restores order ``order``.
    """

    order: int = 3  # type: ignore[misc]
    coordinates: str = "sigma"
    warmup: str = "lower_order"
    name = "adams_bashforth"
    nfe_per_step = 1.0
    source = "Adams-Bashforth, variable step (Hairer, Norsett & Wanner, Solving ODEs I, III.5, eq. 5.3)"
    multistep = True

    def __post_init__(self) -> None:
        if self.order not in (2, 3, 4):
            raise SolverError(f"`order` of adams_bashforth must be 2, 3 or 4, got {self.order!r}.")
        if self.coordinates not in COORDINATES:
            raise SolverError(f"`coordinates` must be one of {COORDINATES}, got {self.coordinates!r}.")
        _check_warmup(self.warmup)

    def _k(self) -> int:
        return self.order

    def _coordinates(self) -> str:
        return self.coordinates

    def _natural_zero(self) -> bool:
        return self.coordinates == "sigma"

    def _weights(self, ctx: Context, nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        fld = ctx.field(self.coordinates)
        sn = [fld.s_of_sigma(v) for v in nodes]
        s1 = fld.s_of_sigma(sigma_next)
        breaks = _integer_breaks(ctx, sn[-1], s1) if self.coordinates == "t" else ()
        return lagrange_integrals(sn, sn[-1], s1, breaks=breaks)


def _integer_breaks(ctx: Context, a: float, b: float) -> Sequence[float]:
    """The integer knots strictly between ``a`` and ``b`` of a discrete schedule (where
    ``d sigma / dt`` jumps), else none."""
    if not getattr(ctx.model.schedule, "discrete", False):
        return ()
    lo, hi = min(a, b), max(a, b)
    return [float(v) for v in range(math.floor(lo) + 1, math.ceil(hi)) if lo < v < hi]


def _check_warmup(warmup: str) -> None:
    if warmup not in WARMUPS:
        raise SolverError(f"`warmup` must be one of {WARMUPS}, got {warmup!r}.")


# ---------------------------------------------------------------------------------------- DEIS
DEIS_BASES = ("t", "rho", "log_rho")


@register
@dataclass
class DEIS(_LagrangeMultistep):
    """DEIS multistep exponential integrator (Zhang & Chen, ICLR 2023, eq. 13-15), orders 1-3,
    1 evaluation per step after the warm-up.

    In ``(xbar, rho)`` with ``rho = sigma`` the VP probability flow is ``d xbar / d rho = eps``: the
    exponential-integrator transfer ``Psi`` (eq. 13-15) is the factor ``alpha'/alpha`` hidden in
    ``x = alpha xbar``, and the step is ``xbar' = xbar + sum_j C_j eps_j`` with

        ``C_j = int_{rho}^{rho'} l_j(tau(r)) dr``  (eq. 13-15's coefficients, changed to ``rho``),

    ``l_j`` the Lagrange basis of the last ``order`` predictions in the interpolation variable
    ``tau``, chosen by ``basis``:

    * ``"t"`` (default; the paper's **tAB-DEIS**): ``tau`` is the schedule's native time; the
      integral ``int l_j(tau) (d sigma/d tau) d tau`` is done by Gauss-Legendre quadrature (split at
      the integer knots of discrete schedules, where ``d sigma / dt`` jumps).
    * ``"rho"`` (**rhoAB-DEIS**): ``tau = rho = sigma``; identical to ``adams_bashforth`` in
      ``sigma`` (exact polynomial integrals).
    * ``"log_rho"``: ``tau = log rho = -lambda``, polynomial in log-SNR integrated over ``rho``. This
      is exactly diffusers' ``DEISMultistepScheduler`` (``algorithm_type="deis"``,
      ``solver_type="logrho"``), whose ``ind_fn`` are the closed forms of these integrals.

    Options:
        order: 1, 2 or 3 (default 3; diffusers' ``solver_order``).
        basis: ``"t"``, ``"rho"`` or ``"log_rho"``.
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

    order: int = 3  # type: ignore[misc]
    basis: str = "t"
    lower_order_final: bool = True
    warmup: str = "lower_order"
    name = "deis"
    nfe_per_step = 1.0
    source = "Zhang & Chen, DEIS, ICLR 2023, eq. 13-15 (tAB); diffusers DEISMultistepScheduler (log_rho)"
    multistep = True

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise SolverError(f"`order` of deis must be 1, 2 or 3, got {self.order!r}.")
        if self.basis not in DEIS_BASES:
            raise SolverError(f"`basis` of deis must be one of {DEIS_BASES}, got {self.basis!r}.")
        _check_warmup(self.warmup)

    def _k(self) -> int:
        return self.order

    def _lower_order(self, n: int, i: int) -> int:
        if self.lower_order_final and n < 15:
            if i == n - 1:
                return 1
            if i == n - 2:
                return min(2, self.order)
        return self.order

    def _natural_zero(self) -> bool:
        return self.basis == "rho"

    def _weights(self, ctx: Context, nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        if len(nodes) == 1:
            return [sigma_next - sigma]
        if self.basis == "rho":
            return lagrange_integrals(nodes, sigma, sigma_next)
        if self.basis == "log_rho":
            u = [math.log(v) for v in nodes]
            return lagrange_integrals(u, math.log(sigma), math.log(sigma_next), density=np.exp)
        sched = ctx.model.schedule
        ts = [float(sched.t(v)) for v in nodes]

        def dsigma(tau: np.ndarray) -> np.ndarray:
            return torch.as_tensor(sched.dsigma_dt(torch.from_numpy(tau))).numpy().astype(np.float64)

        t1 = float(sched.t(sigma_next))
        return lagrange_integrals(ts, ts[-1], t1, density=dsigma, breaks=_integer_breaks(ctx, ts[-1], t1))
