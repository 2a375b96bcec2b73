"""torchdiffeq's adaptive pairs (Chen et al. 2018): ``dopri5``, ``bosh3``, ``adaptive_heun``, ``dopri8``.

Run through ``torchdiffeq.odeint`` with ``step_t=[end]`` so the last step ends exactly at the end
of the interval. Accepted / rejected steps come from torchdiffeq's ``callback_accept_step`` /
``callback_reject_step`` hooks (torchdiffeq >= 0.2.3). Error norm: torchdiffeq's RMS norm over the
whole batch; output points are interpolated by torchdiffeq's dense output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import torch
from torch import Tensor

from ..base import AdaptiveStepper, IntervalResult, SolverError
from ..registry import register
from ..run import BudgetExhausted

if TYPE_CHECKING:  # pragma: no cover
    from ...field import ProbabilityFlow
    from ..run import Run

__all__ = ["TorchdiffeqSolver"]


class _Recorder(torch.nn.Module):
    """The field as torchdiffeq sees it, with its step callbacks."""

    def __init__(self, field: Callable[[Tensor, float], Tensor], on_accept: Callable[..., None], sign: float) -> None:
        super().__init__()
        self.field = field
        self.sign = sign
        self.on_accept = on_accept
        self.accepted: list[tuple[float, float]] = []
        self.rejected = 0
        self.last: Optional[tuple[float, Tensor]] = None

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.field(y, float(t.detach()))

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.last = (float(t0.detach()), y0)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        # torchdiffeq reports the accepted step by its start; the state at its end is the next start
        t, h = float(t0.detach()), self.sign * abs(float(dt.detach()))
        if self.accepted:
            ta, ha = self.accepted[-1]
            self.on_accept(ta, ta + ha, y0)
        self.accepted.append((t, h))

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1


def _detached_first_step(rec: "_Recorder", method: str, y0: Tensor, s0: float, rtol: float, atol: float) -> float:
    """torchdiffeq's own initial step (Hairer, Norsett & Wanner I, II.4), computed without a graph.

    Under autograd torchdiffeq keeps its initial-step heuristic in the graph, and backpropagating
    through it adds a spurious term: on a 2-layer guided network (tests/test_gradients.py) the
    gradient of the start state was off by 0.5 % at rtol 1e-10 (central differences and the
    adjoint agreed to 1e-9). The same step size as a solve without grad, as a constant: the
    trajectory is unchanged and the solve costs one evaluation more (the first stage is evaluated
    again by torchdiffeq)."""
    from torchdiffeq._impl.misc import _rms_norm, _select_initial_step
    from torchdiffeq._impl.odeint import SOLVERS

    order = int(SOLVERS[method].order)
    t0 = torch.tensor(s0, dtype=torch.float64, device=y0.device)
    with torch.no_grad():
        h = _select_initial_step(rec, t0, y0.detach(), order - 1, rtol, atol, _rms_norm)
    return float(h)


@dataclass
class TorchdiffeqSolver(AdaptiveStepper):
    """An adaptive embedded Runge-Kutta pair of torchdiffeq (see the module docstring)."""

    method: ClassVar[str] = ""

    def integrate_interval(self, run: "Run", fld: "ProbabilityFlow", y0: Tensor, s0: float, s1: float,
                           outputs: list[float], field: Callable[[Tensor, float], Tensor],
                           on_accept: Callable[..., None]) -> IntervalResult:
        from torchdiffeq import odeint, odeint_adjoint

        if y0.dtype not in (torch.float32, torch.float64):
            raise SolverError(
                f"solver {self.name!r} (torchdiffeq) cannot integrate a {str(y0.dtype).replace('torch.', '')} state: "
                "its step-size control computes in the state's dtype, which overflows (the noise level becomes "
                "NaN). Pass `x` as float32 or float64, or use flowode's own pairs 'dp45' / 'bs23'."
            )
        sign = 1.0 if s1 > s0 else -1.0
        rec = _Recorder(field, on_accept, sign)
        times = torch.tensor([s0] + outputs, dtype=torch.float64, device=y0.device)
        options: dict[str, Any] = {"step_t": torch.tensor([s1], dtype=torch.float64, device=y0.device)}
        if self.first_step is not None:
            options["first_step"] = self.first_step
        elif run.adjoint_params is None and torch.is_grad_enabled():
            options["first_step"] = _detached_first_step(rec, self.method, y0, s0, self.rtol, self.atol)
        status = "ok"
        ys: list[Tensor] = []
        try:
            if run.adjoint_params is None:
                sol = odeint(rec, y0, times, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
            else:  # the adjoint ODE backwards at the same tolerances; parameters passed explicitly
                sol = odeint_adjoint(rec, y0, times, rtol=self.rtol, atol=self.atol, method=self.method,
                                     options=options, adjoint_params=run.adjoint_params,
                                     adjoint_options={"step_t": options["step_t"], "norm": "seminorm"})
            ys = list(sol[1:])
            y_end, s_end = ys[-1], s1
        except BudgetExhausted:
            status = "max_nfe"
            if rec.last is None:
                y_end, s_end = y0, s0
            else:
                s_end, y_end = rec.last
        starts = [t for t, _ in rec.accepted]
        sizes = [dt for _, dt in rec.accepted]
        if status == "ok" and starts:  # the last step was cut to end exactly at s1 (step_t)
            sizes[-1] = s1 - starts[-1]
            on_accept(starts[-1], s1, y_end)
        return IntervalResult(y_end, s_end, ys, len(rec.accepted), rec.rejected, sizes, starts, status)


def _torchdiffeq(name: str, method: str, order: int, cls_name: str, source: str) -> type[TorchdiffeqSolver]:
    doc = (f"{cls_name}: torchdiffeq's ``{method}`` adaptive pair, order {order}. {source}\n\n"
           f"{AdaptiveStepper.__doc__}")
    cls = type(cls_name, (TorchdiffeqSolver,), {
        "__doc__": doc, "name": name, "order": order, "method": method, "source": source,
        "__annotations__": {},
    })
    return register(dataclass(cls))  # type: ignore[return-value]


Dopri5 = _torchdiffeq("dopri5", "dopri5", 5, "Dopri5",
                      "Dormand & Prince (1980) 5(4) pair, FSAL (6 evaluations per attempted step); torchdiffeq.")
Bosh3 = _torchdiffeq("bosh3", "bosh3", 3, "Bosh3",
                     "Bogacki & Shampine (1989) 3(2) pair, FSAL (3 evaluations per attempted step); torchdiffeq.")
AdaptiveHeun = _torchdiffeq("adaptive_heun", "adaptive_heun", 2, "AdaptiveHeun",
                            "Heun-Euler 2(1) pair (2 evaluations per attempted step); torchdiffeq.")
Dopri8 = _torchdiffeq("dopri8", "dopri8", 8, "Dopri8",
                      "Dormand-Prince 8(7) pair (Prince & Dormand 1981), 13 stages; torchdiffeq.")
