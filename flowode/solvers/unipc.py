"""UniPC: the unified predictor-corrector of Zhao et al. (NeurIPS 2023), data-prediction form.

Notation as in :mod:`flowode.solvers.dpm_solver`: ``lambda = -log sigma``, a step from ``s`` (the
current grid point, model output ``m0 = x0_hat``) to ``t`` has ``h = lambda_t - lambda_s``; for data
prediction ``hh = -h``. Earlier grid points ``s_k`` give ``r_k = (lambda_{s_k} - lambda_s)/h`` and
``D_k = (m_k - m0)/r_k``. With ``B(h) = hh`` (``"bh1"``) or ``B(h) = expm1(hh)`` (``"bh2"``) and
``g_1 = expm1(hh)/hh - 1``, ``g_{k+1} = g_k/hh - 1/(k+1)!``, the order-``p`` system is

    R_p[i, j] = r_j^i  (i = 0..p-1; the last r is 1),     b_p[i] = g_{i+1} (i+1)! / B(h).

* UniP-p (Zhao et al. 2023, sec. 3), from the last ``p`` model outputs::

      x_t = (std_t/std_s) x_s - alpha_t expm1(hh) m0 - alpha_t B(h) sum_k a_k D_k

  ``a = R_{p-1}^{-1} b_{p-1}`` (without the last row / column); ``a = (1/2)`` for ``p = 2`` and
  nothing for ``p = 1`` (DDIM / DPM-Solver++ first order), as in the reference code.
* UniC-p (Zhao et al. 2023, sec. 3): once the model has been evaluated at the
  predicted ``x_t`` (for the next step anyway, so no extra NFE), re-do the step from ``x_s`` with
  the new output ``m_t`` added::

      x_t^c = (std_t/std_s) x_s - alpha_t expm1(hh) m0 - alpha_t B(h) (sum_k c_k D_k + c_p (m_t - m0))

  ``c = R_p^{-1} b_p``; ``c = (1/2)`` for ``p = 1``. The corrected ``x_t^c`` is the state the next
  step starts from, while ``m_t`` stays the output at the uncorrected point (that is how the
  corrector costs nothing). UniC-p raises the order of a p-th order predictor to ``p + 1``.

No correction follows the final step (it would need one more evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from torch import Tensor

from ..models import Prediction
from .base import Context, Solver, SolverError, boundary_step
from .dpm_solver import data_first_order, dpmpp_multistep_update, finite_level, lam, multistep_order
from .registry import register

__all__ = ["UniPC", "unip_update", "unic_update"]

History = Sequence[tuple[float, Tensor]]


def _system(h: float, rks: list[float], variant: str) -> tuple[np.ndarray, np.ndarray, float]:
    """``R_p``, ``b_p`` and ``B(h)`` for the ``p = len(rks)`` points ``rks`` (last one 1)."""
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


def unip_update(ctx: Context, x: Tensor, s: float, t: float, hist: History, variant: str) -> Tensor:
    """UniP-p step (``p = len(hist)``) from ``s`` to ``t``; ``hist`` newest (at ``s``) last."""
    p = len(hist)
    m0 = hist[-1][1]
    if p == 1 or t == 0.0:
        return data_first_order(ctx, x, s, t, m0)
    h = lam(t) - hist[-1][0]
    rks, ds = _differences(hist, h)
    big_r, b, b_h = _system(h, rks + [1.0], variant)
    rhos = [0.5] if p == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1]).tolist()
    out = data_first_order(ctx, x, s, t, m0)
    a_t = ctx.alpha(t)
    for rho, d in zip(rhos, ds):
        out = out.add(d, alpha=-a_t * b_h * float(rho))
    return out


def unic_update(ctx: Context, x: Tensor, s: float, t: float, hist: History, m_t: Tensor, variant: str) -> Tensor:
    """UniC-p correction (``p = len(hist)``) of the step ``s -> t`` taken from ``x`` (the state at
    ``s``), given the model output ``m_t`` at the predicted point; ``hist`` newest (at ``s``) last."""
    p = len(hist)
    m0 = hist[-1][1]
    h = lam(t) - hist[-1][0]
    rks, ds = _differences(hist, h)
    big_r, b, b_h = _system(h, rks + [1.0], variant)
    rhos = [0.5] if p == 1 else np.linalg.solve(big_r, b).tolist()
    out = data_first_order(ctx, x, s, t, m0)
    a_t = ctx.alpha(t)
    for rho, d in zip(rhos[:-1], ds):
        out = out.add(d, alpha=-a_t * b_h * float(rho))
    return out.add(m_t - m0, alpha=-a_t * b_h * float(rhos[-1]))


@register
@dataclass
class UniPC(Solver):
    """UniPC (Zhao, Bai, Rao, Zhou & Lu, NeurIPS 2023), data prediction, one evaluation per step.

    Options:
        order: predictor order ``p`` in 1..3 (default 2, as diffusers' ``solver_order``); the
            first steps warm up with orders 1, 2, ... With the corrector the method has order
            ``p + 1`` (given an accurate warm-up; the first step is UniP-1 + UniC-1).
        variant: ``"bh2"`` (default, ``B(h) = expm1(-h)``, recommended by the paper for few steps
            and diffusers' default) or ``"bh1"`` (``B(h) = -h``).
        corrector: apply UniC after every step but the last (default True; NFE unchanged).
        predictor: ``"unip"`` (default) or ``"dpm_solver++"``: the DPM-Solver++ multistep update of
            the same order (1, 2M, 3M with Taylor coefficients), corrected by UniC -- the
            paper's "UniC on top of any solver" (diffusers' ``solver_p``).
        lower_order_final: as diffusers' ``UniPCMultistepScheduler``: the predictor order at step
            ``i`` of ``n`` is at most ``n - i`` (default True). The step to ``sigma = 0`` is
            always first order (its ``h`` is infinite) -- also with ``lower_order_final=False``.
        disable_corrector: step indices ``i`` whose result is not corrected (diffusers'
            ``disable_corrector``; the paper suggests the first steps under strong guidance).
    """

    order: int = 2  # type: ignore[misc]  # an option here; the class order is the predictor order
    variant: str = "bh2"
    corrector: bool = True
    predictor: str = "unip"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()

    name = "unipc"
    nfe_per_step = 1.0
    source = "Zhao et al., UniPC, NeurIPS 2023, sec. 3 (UniP-p, UniC-p, B(h) = bh1 / bh2); data-prediction form"
    multistep = True
    default_spacing = "logsnr"

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or self.order not in (1, 2, 3):
            raise SolverError(f"`order` must be 1, 2 or 3 for 'unipc', got {self.order!r}.")
        if self.variant not in ("bh1", "bh2"):
            raise SolverError(f"`variant` must be 'bh1' or 'bh2', got {self.variant!r}.")
        if self.predictor not in ("unip", "dpm_solver++"):
            raise SolverError(f"`predictor` must be 'unip' or 'dpm_solver++', got {self.predictor!r}.")
        self.disable_corrector = tuple(int(i) for i in self.disable_corrector)

    @property
    def convergence_order(self) -> int:
        return self.order + 1 if self.corrector else self.order

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(order=self.convergence_order, predictor_order=self.order, variant=self.variant,
                   corrector=self.corrector, predictor=self.predictor)
        return out

    def check(self, ctx: Context) -> None:
        super().check(ctx)
        if math.isinf(ctx.sigma_list[-1]):
            raise SolverError(
                "'unipc' cannot integrate up to sigma = inf; end the encode grid at a finite `sigma_max`."
            )

    def nfe(self, sigmas: list[float]) -> int:
        """One evaluation per step: the corrector reuses the next step's evaluation."""
        return len(sigmas) - 1

    def _predict(self, ctx: Context, x: Tensor, s: float, t: float, hist: History) -> Tensor:
        if self.predictor == "dpm_solver++":
            return dpmpp_multistep_update(ctx, x, s, t, hist)
        return unip_update(ctx, x, s, t, hist, self.variant)

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        n = len(s) - 1
        hist: list[tuple[float, Tensor]] = []
        orders: list[int] = []
        corrected: list[int] = []
        last: Optional[tuple[Tensor, float, int]] = None  # (state at s[i-1], s[i-1], predictor order)
        pending: Optional[Prediction] = None  # prediction to record with the state at s[i]
        if ctx.save_trajectory:
            ctx.record(x, s[0])
        for i in range(n):
            ctx.step = i
            a, b = s[i], s[i + 1]
            if not finite_level(a):  # encode start at 0 or zero-terminal-SNR start at inf
                if i > 0:
                    ctx.record(x, a, pending)
                x, pending = boundary_step(ctx, x, a, b)
                hist.clear()
                last = None
                orders.append(1)
                continue
            pred = ctx.predict(x, a)
            m = pred.x0
            if (self.corrector and last is not None and hist and (i - 1) not in self.disable_corrector):
                x_prev, s_prev, p_prev = last
                x = unic_update(ctx, x_prev, s_prev, a, hist[-p_prev:], m, self.variant)
                corrected.append(i)
            if i > 0:
                ctx.record(x, a, pending)
            hist.append((lam(a), m))
            del hist[:-self.order]
            p = multistep_order(self.order, len(hist), i, n, b, self.lower_order_final, "unipc")
            last = (x, a, p)
            x = self._predict(ctx, x, a, b, hist[-p:])
            pending = pred
            orders.append(p)
        ctx.record(x, s[-1], pending)
        ctx.stats["orders"] = orders
        ctx.stats["corrected_steps"] = corrected
        return x
