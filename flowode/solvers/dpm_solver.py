"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction): exponential integrators in lambda.

Notation (DESIGN.md sec. 1): ``sigma`` is the DDIM noise-to-signal ratio, ``alpha = alpha(sigma)``,
``lambda = -log sigma`` and, for a step from ``s`` to ``t``, ``h = lambda_t - lambda_s = log(sigma_s /
sigma_t)`` (negative when encoding). Lu et al.'s ``sigma_t`` is our ``std = alpha * sigma``.

The probability-flow ODE is semi-linear in ``lambda``; its variation-of-constants forms are exact
(Lu et al. 2022, DPM-Solver, eq. 3.4; Lu et al. 2022b, DPM-Solver++, its data-prediction form):

    x_t = (alpha_t/alpha_s) x_s - alpha_t * int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) d lambda     (noise)
    x_t = (std_t/std_s)     x_s + std_t   * int_{lambda_s}^{lambda_t} e^{ lambda} x0(lambda)  d lambda     (data)

and a k-th order method replaces ``eps`` (or ``x0``) by its Taylor polynomial in ``lambda``, the
derivatives estimated from extra evaluations inside the step (single-step, Runge-Kutta-like) or
from earlier grid points (multistep, Adams-like). The integrals of ``e^{+-lambda}`` times the
polynomial are done exactly (``expm1`` below).

Solvers (one evaluation = one network call):

===================  =====  ============  ==============================================================
name                 order  NFE / step    source
===================  =====  ============  ==============================================================
``dpm_solver_1``     1      1             Lu et al. 2022, eq. 3.7 (= DDIM, = Euler in ``(xbar, sigma)``)
``dpm_solver_2``     2      2             Lu et al. 2022, Algorithm 1 (DPM-Solver-2), ``r1 = 1/2``
``dpm_solver_3``     3      3             Lu et al. 2022, Algorithm 2 (DPM-Solver-3), ``r1 = 1/3, r2 = 2/3``
``dpm_solver++_2s``  2      2             Lu et al. 2022b, Algorithm 1 (DPM-Solver++(2S)), ``r = 1/2``
``dpm_solver++_2m``  2      1             Lu et al. 2022b, Algorithm 2 (DPM-Solver++(2M))
``dpm_solver++_3m``  3 (*)  1             Lu et al. 2022b, order-3 Taylor form, multistep (see below)
===================  =====  ============  ==============================================================

Steps that touch ``sigma = 0`` or start at ``sigma = inf`` have an infinite ``h``. The single-step
noise-prediction solvers take :func:`~flowode.solvers.base.boundary_step` (one DDIM step, one
evaluation) there; the data-prediction solvers take their own first-order step, which at
``sigma_t = 0`` returns the denoised estimate ``x0_hat(x_s)`` exactly (``std_t = 0``,
``expm1(-inf) = -1``) -- the same value. A multistep history never holds a point with infinite
``lambda``, so after such a step the warm-up restarts.

(*) ``dpm_solver++_3m`` integrates the quadratic through the last three x0 predictions exactly
(``coefficients="taylor"``, third order). ``coefficients="reference"`` is the update of Lu et al.'s
reference code and of diffusers' ``multistep_dpm_solver_third_order_update``, which keeps half of
the ``p''`` term and is second order (measured; see docs/exponential.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..models import Prediction
from .base import Context, OneStepSolver, Solver, SolverError, boundary_step
from .registry import register

__all__ = [
    "DPMSolver1", "DPMSolver2", "DPMSolver3", "DPMSolverPP2S", "DPMSolverPP2M", "DPMSolverPP3M",
    "lam", "finite_level", "data_first_order", "dpmpp_multistep_update", "multistep_order",
]

# A multistep history entry: (lambda, x0 prediction) at an earlier grid point.
History = Sequence[tuple[float, Tensor]]


# ------------------------------------------------------------------------------------ helpers
def lam(sigma: float) -> float:
    """``lambda = -log sigma``: ``+inf`` at ``sigma = 0``, ``-inf`` at ``sigma = inf``."""
    if sigma == 0.0:
        return math.inf
    if math.isinf(sigma):
        return -math.inf
    return -math.log(sigma)


def finite_level(sigma: float) -> bool:
    """``0 < sigma < inf``: a level where ``lambda`` is finite."""
    return 0.0 < sigma < math.inf


def _noise_first_order(ctx: Context, x: Tensor, s: float, t: float, eps: Tensor) -> Tensor:
    """Lu et al. 2022, eq. 3.7: ``x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s`` (finite levels)."""
    a_s, a_t = ctx.alpha(s), ctx.alpha(t)
    h = math.log(s / t)
    return torch.add(x * (a_t / a_s), eps, alpha=-a_t * t * math.expm1(h))


def data_first_order(ctx: Context, x: Tensor, s: float, t: float, x0: Tensor) -> Tensor:
    """DPM-Solver++ first-order update (Lu et al. 2022b; = DDIM):
    ``x_t = (std_t/std_s) x_s - alpha_t expm1(-h) x0_s``. ``s`` finite and positive; ``t`` may be 0,
    where it returns ``x0_s`` exactly."""
    a_s, a_t = ctx.alpha(s), ctx.alpha(t)
    if t == 0.0:
        return x0 * a_t if a_t != 1.0 else x0.clone()
    h = math.log(s / t)
    return torch.add(x * ((a_t * t) / (a_s * s)), x0, alpha=-a_t * math.expm1(-h))


def dpmpp_multistep_update(ctx: Context, x: Tensor, s: float, t: float, hist: History,
                           coefficients: str = "taylor") -> Tensor:
    """One DPM-Solver++ multistep update from ``s`` to ``t`` of order ``len(hist)`` (1, 2 or 3).

    ``hist`` holds ``(lambda, x0)`` at the last ``len(hist)`` grid points, newest (at ``s``) last.
    With ``h_k = lambda_{k} - lambda_{k-1}`` between consecutive history points and ``r_k = h_k / h``:

    * order 2 (Lu et al. 2022b, Algorithm 2): ``D = (1 + 1/(2 r0)) x0_s - 1/(2 r0) x0_prev``,
      ``x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D``.
    * order 3: ``D1_0 = (m0 - m1)/r0``, ``D1_1 = (m1 - m2)/r1``,
      ``D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1)`` (``= h p'(lambda_s)``) and
      ``D2 = (D1_0 - D1_1)/(r0 + r1)`` (``= h^2 p''(lambda_s) / 2``), ``p`` the quadratic through the
      three ``(lambda, x0)`` points; with ``phi_1 = expm1(-h)``, ``phi_2 = phi_1/h + 1``,
      ``phi_3 = phi_2/h - 1/2``::

          x_t = (std_t/std_s) x_s - alpha_t phi_1 m0 + alpha_t phi_2 D1 - c alpha_t phi_3 D2

      ``coefficients="taylor"`` (c = 2) integrates ``e^lambda p(lambda)`` exactly (the order-3
      Taylor form of Lu et al. 2022b with ``k = 3``); ``coefficients="reference"`` (c = 1) is
      the update of Lu et al.'s ``dpm_solver_pytorch.py`` and diffusers, which keeps only half of
      the ``p''`` term and is therefore second order (measured in tests/test_exponential.py).
    """
    order = len(hist)
    lam_s, m0 = hist[-1]
    if order == 1 or t == 0.0:
        return data_first_order(ctx, x, s, t, m0)
    a_s, a_t = ctx.alpha(s), ctx.alpha(t)
    h = lam(t) - lam_s
    ratio = (a_t * t) / (a_s * s)
    phi_1 = math.expm1(-h)
    lam_1, m1 = hist[-2]
    r0 = (lam_s - lam_1) / h
    if order == 2:
        d = torch.add(m0 * (1.0 + 0.5 / r0), m1, alpha=-0.5 / r0)
        return torch.add(x * ratio, d, alpha=-a_t * phi_1)
    if order != 3:
        raise SolverError(f"DPM-Solver++ multistep supports orders 1-3, got {order}.")
    lam_2, m2 = hist[-3]
    r1 = (lam_1 - lam_2) / h
    d1_0 = (m0 - m1) / r0
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    out = torch.add(x * ratio, m0, alpha=-a_t * phi_1)
    out = out.add(d1, alpha=a_t * phi_2)
    c = 2.0 if coefficients == "taylor" else 1.0
    return out.add(d2, alpha=-c * a_t * phi_3)


def multistep_order(max_order: int, available: int, i: int, n: int, sigma_next: float,
                    lower_order_final: bool, rule: str) -> int:
    """Order of step ``i`` of ``n`` for a multistep exponential integrator.

    ``available``: history points usable (warm-up: the order is at most this). A step to
    ``sigma = 0`` is always first order (its ``h`` is infinite; any extrapolation in ``lambda``
    diverges there -- the source of diffusers' NaN with ``lower_order_final=False``).
    ``rule="dpm"`` is diffusers' ``DPMSolverMultistepScheduler`` rule (lower orders at the last two
    steps only when ``n < 15``); ``rule="unipc"`` is its ``UniPCMultistepScheduler`` rule
    (``order <= n - i`` at every step).
    """
    p = min(max_order, available)
    if sigma_next == 0.0:
        return 1
    if lower_order_final:
        if rule == "unipc":
            p = min(p, n - i)
        elif n < 15:
            if i == n - 1:
                p = 1
            elif i == n - 2:
                p = min(p, 2)
    return max(p, 1)


def _check_no_inf_target(ctx: Context, name: str) -> None:
    if math.isinf(ctx.sigma_list[-1]):
        raise SolverError(
            f"solver {name!r} cannot integrate up to sigma = inf (alpha = 0 there); end the encode grid at a "
            "finite `sigma_max`."
        )


# ------------------------------------------------------------------------------------ single-step
@register
@dataclass
class DPMSolver1(OneStepSolver):
    """DPM-Solver-1 (Lu et al. 2022, NeurIPS, eq. 3.7), order 1, one evaluation per step:
    ``x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s``. Mathematically identical to DDIM
    (eta = 0); written in exponential-integrator form."""

    name = "dpm_solver_1"
    order = 1
    nfe_per_step = 1.0
    source = "Lu et al., DPM-Solver, NeurIPS 2022, eq. 3.7 (DPM-Solver-1 = DDIM)"
    default_spacing = "logsnr"

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        _check_no_inf_target(ctx, self.name)

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if not (finite_level(sigma) and finite_level(sigma_next)):
            return boundary_step(ctx, x, sigma, sigma_next)
        pred = ctx.predict(x, sigma)
        return _noise_first_order(ctx, x, sigma, sigma_next, pred.eps), pred


@register
@dataclass
class DPMSolver2(OneStepSolver):
    """DPM-Solver-2 (Lu et al. 2022, NeurIPS, Algorithm 1), order 2, two evaluations per step.

    With ``lambda_u = lambda_s + r1 h``::

        u   = (alpha_u/alpha_s) x_s - std_u expm1(r1 h) eps_s
        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - std_t/(2 r1) expm1(h) (eps(u) - eps_s)

    Options:
        r1: position of the intermediate point in ``lambda`` (0 < r1 <= 1); default 1/2.
    """

    r1: float = 0.5
    name = "dpm_solver_2"
    order = 2
    nfe_per_step = 2.0
    source = "Lu et al., DPM-Solver, NeurIPS 2022, Algorithm 1 (DPM-Solver-2)"
    default_spacing = "logsnr"

    def __post_init__(self) -> None:
        if not 0.0 < self.r1 <= 1.0:
            raise SolverError(f"`r1` must lie in (0, 1], got {self.r1}.")

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        _check_no_inf_target(ctx, self.name)

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if not (finite_level(sigma) and finite_level(sigma_next)):
            return boundary_step(ctx, x, sigma, sigma_next)
        s, t = sigma, sigma_next
        h = math.log(s / t)
        su = s * math.exp(-self.r1 * h)
        pred = ctx.predict(x, s)
        eps_s = pred.eps
        u = _noise_first_order(ctx, x, s, su, eps_s)
        eps_u = ctx.predict(u, su).eps
        a_s, a_t = ctx.alpha(s), ctx.alpha(t)
        c = a_t * t * math.expm1(h)
        out = torch.add(x * (a_t / a_s), eps_s, alpha=-c)
        return out.add(eps_u - eps_s, alpha=-c / (2.0 * self.r1)), pred


@register
@dataclass
class DPMSolver3(OneStepSolver):
    """DPM-Solver-3 (Lu et al. 2022, NeurIPS, Algorithm 2), order 3, three evaluations per step.

    With ``lambda_{s_k} = lambda_s + r_k h`` (``r1 = 1/3``, ``r2 = 2/3``)::

        u1  = (alpha_1/alpha_s) x_s - std_1 expm1(r1 h) eps_s
        D1  = eps(u1) - eps_s
        u2  = (alpha_2/alpha_s) x_s - std_2 expm1(r2 h) eps_s - std_2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
        D2  = eps(u2) - eps_s
        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - (std_t/r2) (expm1(h)/h - 1) D2
    """

    name = "dpm_solver_3"
    order = 3
    nfe_per_step = 3.0
    source = "Lu et al., DPM-Solver, NeurIPS 2022, Algorithm 2 (DPM-Solver-3), r1=1/3, r2=2/3"
    default_spacing = "logsnr"
    r1 = 1.0 / 3.0
    r2 = 2.0 / 3.0

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        _check_no_inf_target(ctx, self.name)

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if not (finite_level(sigma) and finite_level(sigma_next)):
            return boundary_step(ctx, x, sigma, sigma_next)
        s, t, r1, r2 = sigma, sigma_next, self.r1, self.r2
        h = math.log(s / t)
        s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
        a_s, a_1, a_2, a_t = ctx.alpha(s), ctx.alpha(s1), ctx.alpha(s2), ctx.alpha(t)
        pred = ctx.predict(x, s)
        eps_s = pred.eps
        u1 = torch.add(x * (a_1 / a_s), eps_s, alpha=-a_1 * s1 * math.expm1(r1 * h))
        d1 = ctx.predict(u1, s1).eps - eps_s
        phi_12 = math.expm1(r2 * h)
        u2 = torch.add(x * (a_2 / a_s), eps_s, alpha=-a_2 * s2 * phi_12)
        u2 = u2.add(d1, alpha=-a_2 * s2 * (r2 / r1) * (phi_12 / (r2 * h) - 1.0))
        d2 = ctx.predict(u2, s2).eps - eps_s
        phi_1 = math.expm1(h)
        out = torch.add(x * (a_t / a_s), eps_s, alpha=-a_t * t * phi_1)
        return out.add(d2, alpha=-(a_t * t / r2) * (phi_1 / h - 1.0)), pred


@register
@dataclass
class DPMSolverPP2S(OneStepSolver):
    """DPM-Solver++(2S) (Lu et al. 2022b, arXiv 2211.01095, Algorithm 1), order 2, two evaluations
    per step, data prediction. With ``lambda_u = lambda_s + r h``::

        u   = (std_u/std_s) x_s - alpha_u expm1(-r h) x0_s
        D   = (1 - 1/(2r)) x0_s + 1/(2r) x0(u)
        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D

    A step to ``sigma = 0`` is the first-order step (returns ``x0_hat(x_s)``, one evaluation).

    Options:
        r: position of the intermediate point in ``lambda`` (0 < r <= 1); default 1/2.
    """

    r: float = 0.5
    name = "dpm_solver++_2s"
    order = 2
    nfe_per_step = 2.0
    source = "Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 1 (DPM-Solver++(2S)), r=1/2"
    default_spacing = "logsnr"

    def __post_init__(self) -> None:
        if not 0.0 < self.r <= 1.0:
            raise SolverError(f"`r` must lie in (0, 1], got {self.r}.")

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        _check_no_inf_target(ctx, self.name)

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if not finite_level(sigma):
            return boundary_step(ctx, x, sigma, sigma_next)
        pred = ctx.predict(x, sigma)
        if sigma_next == 0.0:
            return data_first_order(ctx, x, sigma, 0.0, pred.x0), pred
        s, t = sigma, sigma_next
        h = math.log(s / t)
        su = s * math.exp(-self.r * h)
        u = data_first_order(ctx, x, s, su, pred.x0)
        x0_u = ctx.predict(u, su).x0
        d = torch.add(pred.x0 * (1.0 - 0.5 / self.r), x0_u, alpha=0.5 / self.r)
        return data_first_order(ctx, x, s, t, d), pred


# ------------------------------------------------------------------------------------ multistep
@dataclass
class _DPMSolverPPMultistep(Solver):
    """DPM-Solver++ multistep loop: one evaluation per step, lower orders while warming up.

    Options:
        lower_order_final: as diffusers' ``DPMSolverMultistepScheduler(lower_order_final=True)``:
            on grids of fewer than 15 steps the last step is first order and the one before at most
            second order. (The step to ``sigma = 0`` is always first order.)
    """

    lower_order_final: bool = True
    multistep = True
    nfe_per_step = 1.0
    default_spacing = "logsnr"
    max_order = 2

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        _check_no_inf_target(ctx, self.name)

    def nfe(self, sigmas: list[float]) -> int:
        """One evaluation per step, boundary steps included."""
        return len(sigmas) - 1

    def _update(self, ctx: Context, x: Tensor, s: float, t: float, hist: History) -> Tensor:
        return dpmpp_multistep_update(ctx, x, s, t, hist)

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        n = len(s) - 1
        hist: list[tuple[float, Tensor]] = []
        orders: list[int] = []
        if ctx.save_trajectory:
            ctx.record(x, s[0])
        for i in range(n):
            ctx.step = i
            a, b = s[i], s[i + 1]
            if not finite_level(a):  # encode start at 0 or zero-terminal-SNR start at inf
                x, pred = boundary_step(ctx, x, a, b)
                hist.clear()
                orders.append(1)
            else:
                pred = ctx.predict(x, a)
                hist.append((lam(a), pred.x0))
                del hist[:-self.max_order]
                p = multistep_order(self.max_order, len(hist), i, n, b, self.lower_order_final, "dpm")
                x = self._update(ctx, x, a, b, hist[-p:])
                orders.append(p)
            ctx.record(x, b, pred)
        ctx.stats["orders"] = orders
        return x


@register
@dataclass
class DPMSolverPP2M(_DPMSolverPPMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022b, arXiv 2211.01095, Algorithm 2), order 2, one evaluation per
    step (the first step is first order)::

        r   = h_prev / h
        D   = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev
        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D
    """

    name = "dpm_solver++_2m"
    order = 2
    source = "Lu et al., DPM-Solver++, arXiv 2211.01095, Algorithm 2 (DPM-Solver++(2M))"
    max_order = 2


@register
@dataclass
class DPMSolverPP3M(_DPMSolverPPMultistep):
    """DPM-Solver++(3M), one evaluation per step (two warm-up steps of orders 1 and 2); the update
    is :func:`dpmpp_multistep_update` with three history points.

    Options:
        coefficients: ``"taylor"`` (default): the exact exponential integral of the quadratic
            through the last three x0 predictions -- third order. ``"reference"``: the update of
            Lu et al.'s reference code (``multistep_dpm_solver_third_update``), which diffusers'
            ``DPMSolverMultistepScheduler(solver_order=3)`` copies; its ``p''`` coefficient is half
            the Taylor one, so it is a second-order method (use it to reproduce the peers' numbers).
        lower_order_final: see the base class.

    Note: the first-order warm-up step has local error ``O(h^2)``, so on a uniform grid any 3M
    method is second order as ``h -> 0``; the third order shows once the warm-up steps are short.
    """

    coefficients: str = "taylor"

    name = "dpm_solver++_3m"
    order = 3
    source = ("Lu et al., DPM-Solver++, arXiv 2211.01095, multistep order-3 Taylor form; coefficients='reference': "
              "the 3M update of the reference code (= diffusers DPMSolverMultistepScheduler solver_order=3)")
    max_order = 3

    def __post_init__(self) -> None:
        if self.coefficients not in ("taylor", "reference"):
            raise SolverError(f"`coefficients` must be 'taylor' or 'reference', got {self.coefficients!r}.")

    def _update(self, ctx: Context, x: Tensor, s: float, t: float, hist: History) -> Tensor:
        return dpmpp_multistep_update(ctx, x, s, t, hist, self.coefficients)
