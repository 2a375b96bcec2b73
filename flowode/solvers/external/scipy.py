"""scipy's ``OdeSolver`` s: ``scipy_rk45``, ``scipy_dop853``, ``scipy_lsoda``.

The solver is driven step by step (``solver.step()`` in a loop), so accepted steps, step sizes and
(explicit RK) rejections are exact: every attempt of an explicit RK step costs ``stages``
evaluations (FSAL), so ``rejected = evals / stages - accepted`` for the evaluations made inside
``step()``. The state is the flattened batch in float64 (one system); output points come from the
solver's dense output. LSODA cannot be interrupted inside a step, so its ``max_nfe`` is checked
between steps and may overrun by one step's evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import numpy as np
import torch
from torch import Tensor

from ..base import AdaptiveStepper, IntervalResult, SolverError
from ..claims import OrderClaim
from ..registry import register
from ..run import BudgetExhausted

if TYPE_CHECKING:  # pragma: no cover
    from ...field import ProbabilityFlow
    from ..run import Run

__all__ = ["ScipySolver"]


@dataclass
class ScipySolver(AdaptiveStepper):
    """A ``scipy.integrate`` ``OdeSolver`` (see the module docstring)."""

    method: ClassVar[str] = ""
    stages: ClassVar[Optional[int]] = None
    #: why the method has no convergence order (empty: it has ``order``)
    no_order: ClassVar[str] = ""
    differentiable = False  # the state goes through NumPy: autograd would see only the boundary steps

    def order_claims(self) -> tuple[OrderClaim, ...]:
        if self.no_order:
            return (OrderClaim(None, kind="none", grid="adaptive", note=self.no_order),)
        return super().order_claims()

    def integrate_interval(self, run: "Run", fld: "ProbabilityFlow", y0: Tensor, s0: float, s1: float,
                           outputs: list[float], field: Callable[[Tensor, float], Tensor],
                           on_accept: Callable[..., None]) -> IntervalResult:
        import scipy.integrate as si

        shape, dtype, device = y0.shape, y0.dtype, y0.device
        lsoda = self.method == "LSODA"

        def fun(sv: float, y: np.ndarray) -> np.ndarray:
            yt = torch.from_numpy(np.ascontiguousarray(y)).view(shape).to(device=device, dtype=dtype)
            return field(yt, float(sv)).detach().to("cpu", torch.float64).flatten().numpy()

        def to_t(y: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(y, dtype=np.float64)).view(shape).to(device=device, dtype=dtype)

        y_np = y0.detach().to("cpu", torch.float64).flatten().numpy().copy()
        kw: dict[str, Any] = {"rtol": self.rtol, "atol": self.atol}
        if self.first_step is not None:
            kw["first_step"] = self.first_step
        budget_hit = False
        starts: list[float] = []
        sizes: list[float] = []
        rejected = 0
        ys: list[Tensor] = []
        pending = list(outputs)
        try:
            solver = getattr(si, self.method)(fun, s0, y_np, s1, **kw)
        except BudgetExhausted:
            return IntervalResult(y0, s0, [], 0, 0, [], [], "max_nfe")
        direction = 1.0 if s1 > s0 else -1.0
        while solver.status == "running":
            if lsoda and run.max_nfe is not None and run.nfe >= run.max_nfe:
                budget_hit = True
                break
            t_old = solver.t
            n0 = run.nfe
            try:
                msg = solver.step()
            except BudgetExhausted:
                budget_hit = True
                break
            if solver.status == "failed":
                raise SolverError(f"scipy {self.method} failed at sigma={fld.sigma_of_s(solver.t):.6g}: {msg}")
            used = run.nfe - n0
            starts.append(float(t_old))
            sizes.append(float(solver.t - t_old))
            if self.stages is not None:
                rejected += used // self.stages - 1
            on_accept(float(t_old), float(solver.t), to_t(solver.y))
            while pending and direction * (pending[0] - solver.t) <= 0:
                v = pending.pop(0)
                ys.append(to_t(solver.y) if v == solver.t else to_t(solver.dense_output()(v)))
        if budget_hit:
            return IntervalResult(to_t(solver.y), float(solver.t), ys, len(starts), None if lsoda else rejected,
                                  sizes, starts, "max_nfe")
        extra = {"scipy_nfev": int(solver.nfev), "scipy_njev": int(getattr(solver, "njev", 0))}
        return IntervalResult(to_t(solver.y), s1, ys, len(starts), None if lsoda else rejected, sizes, starts,
                              "ok", extra)


def _scipy(name: str, method: str, order: int, stages: Optional[int], cls_name: str, source: str,
           no_order: str = "") -> type[ScipySolver]:
    doc = (f"{cls_name}: scipy's ``{method}`` (``scipy.integrate.{method}``), order {order}. {source}\n\n"
           f"{AdaptiveStepper.__doc__}")
    cls = type(cls_name, (ScipySolver,), {
        "__doc__": doc, "name": name, "order": order, "method": method, "source": source, "stages": stages,
        "no_order": no_order, "__annotations__": {},
    })
    return register(dataclass(cls))  # type: ignore[return-value]


ScipyRK45 = _scipy("scipy_rk45", "RK45", 5, 6, "ScipyRK45",
                   "Dormand & Prince (1980) 5(4), FSAL: 6 evaluations per attempted step.")
ScipyDOP853 = _scipy("scipy_dop853", "DOP853", 8, 12, "ScipyDOP853",
                     "Hairer, Norsett & Wanner I, II.10 (DOP853): 12 evaluations per attempted step "
                     "(+3 for each dense-output interpolation at an inner grid level).")
ScipyLSODA = _scipy("scipy_lsoda", "LSODA", 12, None, "ScipyLSODA",
                    "Petzold (1983) / ODEPACK LSODA: Adams (orders 1-12) / BDF switching; its finite-"
                    "difference Jacobian costs one evaluation per state entry (small problems only).",
                    no_order="LSODA switches between Adams (orders 1-12) and BDF (orders 1-5) and picks the order at "
                             "every step: 12 is its largest Adams order, not a convergence order; its error follows "
                             "rtol / atol")

