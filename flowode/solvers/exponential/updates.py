"""The update formulas of the exponential integrators, as pure functions (one copy of each).

Notation (DESIGN.md sec. 1): ``sigma`` is the DDIM noise-to-signal ratio, ``alpha = alpha(sigma)``,
``lambda = -log sigma`` and, for a step from ``s`` to ``t``, ``h = lambda_t - lambda_s = log(sigma_s /
sigma_t)`` (negative when encoding). Lu et al.'s ``sigma_t`` is our ``std = alpha * sigma``.

The probability-flow ODE is semi-linear in ``lambda``; its variation-of-constants forms are exact
(Lu et al. 2022, DPM-Solver, eq. 3.4; Lu et al. 2022b, DPM-Solver++, its data-prediction form):

    x_t = (alpha_t/alpha_s) x_s - alpha_t * int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) d lambda     (noise)
    x_t = (std_t/std_s)     x_s + std_t   * int_{lambda_s}^{lambda_t} e^{ lambda} x0(lambda)  d lambda     (data)

and a k-th order method replaces ``eps`` (or ``x0``) by its Taylor polynomial in ``lambda``, the
derivatives estimated from extra evaluations inside the step (single-step) or from earlier grid
points (multistep). The integrals of ``e^{+-lambda}`` times the polynomial are done exactly
(``expm1`` below). ``alpha`` is a function ``sigma -> alpha`` (the driver's memoised one).

A multistep history is a tuple of ``(lambda, x0)`` pairs at earlier grid points, newest last.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ...schedules import sigma_to_lambda
from ..base import SolverError

__all__ = ["noise_first_order", "data_first_order", "dpm_solver_2_update", "dpm_solver_3_update",
           "dpm_solver_3_final", "dpmpp_2s_update", "dpmpp_3s_final", "singlestep_taylor_update",
           "singlestep_orders",
           "dpmpp_multistep_update", "multistep_order", "unip_update", "unic_update", "History", "UNIPC_VARIANTS"]

History = Sequence[tuple[float, Tensor]]
Alpha = Callable[[float], float]

UNIPC_VARIANTS = ("bh1", "bh2")


def noise_first_order(alpha: Alpha, x: Tensor, s: float, t: float, eps: Tensor) -> Tensor:
    """Lu et al. 2022, eq. 3.7: ``x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s`` (finite levels)."""
    a_s, a_t = alpha(s), alpha(t)
    h = math.log(s / t)
    return torch.add(x * (a_t / a_s), eps, alpha=-a_t * t * math.expm1(h))


def dpm_solver_2_update(alpha: Alpha, x: Tensor, s: float, t: float, eps_s: Tensor, eps_u: Tensor,
                        r1: float) -> Tensor:
    """DPM-Solver-2's update (Lu et al. 2022, Algorithm 1) from ``eps_s = eps(x_s)`` and
    ``eps_u = eps(u)`` at ``lambda_u = lambda_s + r1 h``, ``u = noise_first_order(x_s -> sigma_u)``::

        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - std_t/(2 r1) expm1(h) (eps_u - eps_s)
    """
    h = math.log(s / t)
    a_s, a_t = alpha(s), alpha(t)
    c = a_t * t * math.expm1(h)
    out = torch.add(x * (a_t / a_s), eps_s, alpha=-c)
    return out.add(eps_u - eps_s, alpha=-c / (2.0 * r1))


def dpm_solver_3_update(alpha: Alpha, x: Tensor, s: float, t: float, eps_s: Tensor,
                        eps_at: Callable[[Tensor, float], Tensor], r1: float = 1.0 / 3.0, r2: float = 2.0 / 3.0
                        ) -> tuple[Tensor, Tensor]:
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 2): two more evaluations ``eps_at(u, sigma_u)`` at
    ``lambda_k = lambda_s + r_k h``; returns ``x_t`` and ``eps(u1)`` (which DPM-Solver-2 with
    ``r1`` shares: the lower solution of the adaptive DPM-Solver-23)::

        u1  = (alpha_1/alpha_s) x_s - std_1 expm1(r1 h) eps_s
        D1  = eps(u1) - eps_s
        u2  = (alpha_2/alpha_s) x_s - std_2 expm1(r2 h) eps_s - std_2 (r2/r1) (expm1(r2 h)/(r2 h) - 1) D1
        D2  = eps(u2) - eps_s
        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - (std_t/r2) (expm1(h)/h - 1) D2
    """
    h = math.log(s / t)
    s1, s2 = s * math.exp(-r1 * h), s * math.exp(-r2 * h)
    a_s, a_1, a_2 = alpha(s), alpha(s1), alpha(s2)
    u1 = torch.add(x * (a_1 / a_s), eps_s, alpha=-a_1 * s1 * math.expm1(r1 * h))
    eps_1 = eps_at(u1, s1)
    d1 = eps_1 - eps_s
    phi_12 = math.expm1(r2 * h)
    u2 = torch.add(x * (a_2 / a_s), eps_s, alpha=-a_2 * s2 * phi_12)
    u2 = u2.add(d1, alpha=-a_2 * s2 * (r2 / r1) * (phi_12 / (r2 * h) - 1.0))
    return dpm_solver_3_final(alpha, x, s, t, eps_s, eps_at(u2, s2), r2), eps_1


def dpm_solver_3_final(alpha: Alpha, x: Tensor, s: float, t: float, eps_s: Tensor, eps_2: Tensor,
                       r2: float) -> Tensor:
    """The last line of DPM-Solver-3 (Lu et al. 2022, Algorithm 2), from ``eps_s`` and ``eps_2 = eps(u2)``
    at ``lambda_2 = lambda_s + r2 h``; third order when ``r2 = 2/3`` and ``u2`` is second order::

        x_t = (alpha_t/alpha_s) x_s - std_t expm1(h) eps_s - (std_t/r2) (expm1(h)/h - 1) (eps_2 - eps_s)
    """
    h = math.log(s / t)
    a_s, a_t = alpha(s), alpha(t)
    phi_1 = math.expm1(h)
    out = torch.add(x * (a_t / a_s), eps_s, alpha=-a_t * t * phi_1)
    return out.add(eps_2 - eps_s, alpha=-(a_t * t / r2) * (phi_1 / h - 1.0))


def data_first_order(alpha: Alpha, x: Tensor, s: float, t: float, x0: Tensor) -> Tensor:
    """DPM-Solver++ first-order update (Lu et al. 2022b; = DDIM):
    ``x_t = (std_t/std_s) x_s - alpha_t expm1(-h) x0_s``. ``s`` finite and positive; ``t`` may be 0,
    where it returns ``x0_s`` exactly."""
    a_s, a_t = alpha(s), alpha(t)
    if t == 0.0:
        return x0 * a_t if a_t != 1.0 else x0.clone()
    h = math.log(s / t)
    return torch.add(x * ((a_t * t) / (a_s * s)), x0, alpha=-a_t * math.expm1(-h))


def dpmpp_2s_update(alpha: Alpha, x: Tensor, s: float, t: float, x0_s: Tensor, x0_u: Tensor, r: float) -> Tensor:
    """DPM-Solver++(2S)'s update (Lu et al. 2022b, Algorithm 1) from ``x0_s`` and ``x0_u = x0(u)`` at
    ``lambda_u = lambda_s + r h``::

        D   = (1 - 1/(2r)) x0_s + 1/(2r) x0_u
        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) D
    """
    d = torch.add(x0_s * (1.0 - 0.5 / r), x0_u, alpha=0.5 / r)
    return data_first_order(alpha, x, s, t, d)


def dpmpp_3s_final(alpha: Alpha, x: Tensor, s: float, t: float, x0_s: Tensor, x0_2: Tensor, r2: float) -> Tensor:
    """The data-prediction form of :func:`dpm_solver_3_final` (Lu et al. 2022b, the singlestep
    third-order DPM-Solver++ of the reference code, "midpoint" variant), from ``x0_s`` and ``x0_2``
    at ``lambda_2 = lambda_s + r2 h``::

        x_t = (std_t/std_s) x_s - alpha_t expm1(-h) x0_s + (alpha_t/r2) (expm1(-h)/h + 1) (x0_2 - x0_s)
    """
    h = math.log(s / t)
    a_s, a_t = alpha(s), alpha(t)
    phi_1 = math.expm1(-h)
    out = torch.add(x * ((a_t * t) / (a_s * s)), x0_s, alpha=-a_t * phi_1)
    return out.add(x0_2 - x0_s, alpha=(a_t / r2) * (phi_1 / h + 1.0))


def singlestep_taylor_update(alpha: Alpha, x: Tensor, s: float, t: float, ms: Sequence[Tensor],
                             rs: Sequence[float], data: bool) -> Tensor:
    """A singlestep update of order ``len(ms)`` (2 or 3) whose model outputs ``ms`` (x0 with ``data``,
    else eps) are at ``lambda_s + r h`` for ``r = 0, *rs`` (``rs`` increasing in ``(0, 1]``): the
    Taylor (exponential-integral) form of Lu et al. 2022 / 2022b with the derivatives from divided
    differences, the ``solver_type="heun"`` updates of diffusers' singlestep DPM-Solver. In a group whose
    intermediate states come from lower-order updates (first order at ``r1``) the order-3 update is
    second order: the first point's ``O(h^2)`` error enters ``D1`` with an ``O(h)`` weight
    (measured in tests/test_singlestep_grouped.py). With
    ``D1 = (m1 - m0)/r1`` (order 2), or ``Da = (m1 - m0)/r1``, ``Db = (m2 - m0)/r2``,
    ``D1 = (r2 Da - r1 Db)/(r2 - r1)``, ``D2 = 2 (Db - Da)/(r2 - r1)`` (order 3)::

        data:  x_t = (std_t/std_s) x_s - alpha_t phi m0 + alpha_t (phi/h + 1) D1 - alpha_t ((phi + h)/h^2 - 1/2) D2,
               phi = expm1(-h)
        noise: x_t = (alpha_t/alpha_s) x_s - std_t phi m0 - std_t (phi/h - 1) D1 - std_t ((phi - h)/h^2 - 1/2) D2,
               phi = expm1(h)
    """
    h = math.log(s / t)
    a_s, a_t = alpha(s), alpha(t)
    m0 = ms[0]
    if len(ms) == 2:
        d1, d2 = (ms[1] - m0) / rs[0], None
    elif len(ms) == 3:
        r1, r2 = rs
        da, db = (ms[1] - m0) / r1, (ms[2] - m0) / r2
        d1 = (da * r2 - db * r1) / (r2 - r1)
        d2 = (db - da) * (2.0 / (r2 - r1))
    else:
        raise SolverError(f"the singlestep Taylor update takes 2 or 3 model outputs, got {len(ms)}.")
    if data:
        phi = math.expm1(-h)
        out = torch.add(x * ((a_t * t) / (a_s * s)), m0, alpha=-a_t * phi)
        out = out.add(d1, alpha=a_t * (phi / h + 1.0))
        return out if d2 is None else out.add(d2, alpha=-a_t * ((phi + h) / (h * h) - 0.5))
    phi = math.expm1(h)
    std_t = a_t * t
    out = torch.add(x * (a_t / a_s), m0, alpha=-std_t * phi)
    out = out.add(d1, alpha=-std_t * (phi / h - 1.0))
    return out if d2 is None else out.add(d2, alpha=-std_t * ((phi - h) / (h * h) - 0.5))


def singlestep_orders(order: int, n: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The position of each of ``n`` grid steps in its group, for a singlestep method of order
    ``order`` whose intermediate points are the grid's levels: a group of ``k`` steps is one
    order-``k`` step whose ``k - 1`` intermediate points are the next ``k - 1`` levels, so the
    list runs ``1, 2, .., k, 1, 2, ..``. With ``lower_order_final`` this is diffusers'
    ``DPMSolverSinglestepScheduler.get_order_list`` (the last group shortened, ending ``.., 1, 2``
    or ``.., 1, 1``); without it, groups of ``order`` and a shorter last one. ``final_zero``: the
    last step (to ``sigma = 0``) is first order."""
    if order not in (1, 2, 3) or n < 1:
        raise SolverError(f"singlestep orders need order 1, 2 or 3 and at least one step, got {order}, {n}.")
    cycle = list(range(1, order + 1))
    if lower_order_final and order == 3:
        tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[n % 3]
        orders = cycle * ((n - len(tail)) // 3) + tail
    elif lower_order_final and order == 2:
        orders = cycle * (n // 2 - 1) + [1, 1] if n % 2 == 0 else cycle * (n // 2) + [1]
    else:
        orders = (cycle * (n // order + 1))[:n]
    if final_zero:
        orders[-1] = 1
    return orders


def dpmpp_multistep_update(alpha: Alpha, x: Tensor, s: float, t: float, hist: History,
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
        return data_first_order(alpha, x, s, t, m0)
    a_s, a_t = alpha(s), alpha(t)
    h = float(sigma_to_lambda(t)) - lam_s
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


# ------------------------------------------------------------------------------------------ UniPC
def _system(h: float, rks: list[float], variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``R_p``, ``b_p`` and ``B(h)`` of UniPC for the ``p = len(rks)`` points ``rks`` (last one 1)."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    g = math.expm1(hh) / hh - 1.0
    fact = 1.0
    rows, rhs = [], []
    for i in range(1, len(rks) + 1):
        rows.append([r ** (i - 1) for r in rks])
        rhs.append(g * fact / b_h)
        fact *= i + 1
        g = g / hh - 1.0 / fact
    return np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64), b_h


def _differences(hist: History, h: float) -> tuple[list[float], list[Tensor]]:
    """``r_k`` and ``D_k = (m_k - m0)/r_k`` for the history points before the newest."""
    lam_s, m0 = hist[-1]
    rks: list[float] = []
    ds: list[Tensor] = []
    for lam_k, m_k in reversed(hist[:-1]):
        rk = (lam_k - lam_s) / h
        rks.append(rk)
        ds.append((m_k - m0) / rk)
    return rks, ds


def unip_update(alpha: Alpha, x: Tensor, s: float, t: float, hist: History, variant: str) -> Tensor:
    """UniP-p step (``p = len(hist)``) from ``s`` to ``t``; ``hist`` newest (at ``s``) last (Zhao et al.
    2023, sec. 3): ``x_t = (std_t/std_s) x_s - alpha_t expm1(hh) m0 - alpha_t B(h) sum_k a_k D_k`` with
    ``a = R_{p-1}^{-1} b_{p-1}`` (``a = (1/2)`` for ``p = 2``, as the reference code)."""
    p = len(hist)
    m0 = hist[-1][1]
    if p == 1 or t == 0.0:
        return data_first_order(alpha, x, s, t, m0)
    h = float(sigma_to_lambda(t)) - hist[-1][0]
    rks, ds = _differences(hist, h)
    big_r, b, b_h = _system(h, rks + [1.0], variant)
    rhos = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
    out = data_first_order(alpha, x, s, t, m0)
    a_t = alpha(t)
    for rho, d in zip(rhos, ds):
        out = out.add(d, alpha=-a_t * b_h * float(rho))
    return out


def unic_update(alpha: Alpha, x: Tensor, s: float, t: float, hist: History, m_t: Tensor, variant: str) -> Tensor:
    """UniC-p correction (``p = len(hist)``) of the step ``s -> t`` taken from ``x`` (the state at
    ``s``), given the model output ``m_t`` at the predicted point; ``hist`` newest (at ``s``) last:
    ``x_t^c = (std_t/std_s) x_s - alpha_t expm1(hh) m0 - alpha_t B(h) (sum_k c_k D_k + c_p (m_t - m0))``,
    ``c = R_p^{-1} b_p`` (``c = (1/2)`` for ``p = 1``)."""
    p = len(hist)
    m0 = hist[-1][1]
    h = float(sigma_to_lambda(t)) - hist[-1][0]
    rks, ds = _differences(hist, h)
    big_r, b, b_h = _system(h, rks + [1.0], variant)
    rhos = [0.5] if p == 1 else np.linalg.solve(big_r, b).tolist()
    out = data_first_order(alpha, x, s, t, m0)
    a_t = alpha(t)
    for rho, d in zip(rhos[:-1], ds):
        out = out.add(d, alpha=-a_t * b_h * float(rho))
    return out.add(m_t - m0, alpha=-a_t * b_h * float(rhos[-1]))
