"""Runge-Kutta solvers from tableaux: a new method is one :class:`ButcherTableau` and one
:func:`register_tableau` line.

A tableau without ``b_error`` becomes a fixed-step :class:`RungeKutta` stepper; one with ``b_error``
an adaptive :class:`EmbeddedRungeKutta`, run by the driver's controller loop under a
:class:`~flowode.control.PIController`. Both step in any of the three coordinates.

Steps with an end at ``sigma = 0`` or a start at ``sigma = inf`` are the DDIM step of the boundary
policy (:mod:`flowode.solvers.boundary`): the field cannot be evaluated at ``sigma = 0`` by a
network trained on ``sigma >= sigma_min``, and EDM (Karras et al. 2022, Algorithm 1, line 9) and
k-diffusion end their Heun samplers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from torch import Tensor

from ...field import COORDINATES
from ...models import Prediction
from ..base import ERROR_NORMS, EmbeddedPair, Step, Stepper, check_choice
from ..claims import OrderClaim
from ..registry import register
from .explicit import combine, explicit_step
from .tableau import ButcherTableau

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["RungeKutta", "EmbeddedRungeKutta", "register_tableau", "TABLEAUS", "ERROR_NORMS"]

#: every registered tableau by solver name
TABLEAUS: dict[str, ButcherTableau] = {}


@dataclass
class RungeKutta(Stepper):
    """Generic explicit Runge-Kutta step of the probability-flow ODE.

    Options:
        coordinates: ``"sigma"`` (default; DDIM coordinates), ``"lambda"`` or ``"t"``.
    """

    coordinates: str = "sigma"
    tableau: ClassVar[ButcherTableau]
    #: what the order claim must add for this tableau (e.g. a superconvergent case)
    order_note: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_choice(self.name, "coordinates", self.coordinates, COORDINATES)

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """The tableau's order in every coordinate system where the field is smooth: a smooth change
        of variables keeps it. Not in ``"t"`` on a discrete schedule, whose ``sigma(t)`` has a kink at
        every integer knot (rk4 measured 0.7 there)."""
        return (OrderClaim(self.tableau.order, conditions=(
            "in every coordinate system ('t' only on schedules smooth in t: a discrete schedule has kinks at its "
            "integer timesteps)",), note=self.order_note),)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        fld = run.field(self.coordinates)
        y = fld.to_state(x, sigma)
        s0 = fld.s_of_sigma(sigma)
        h = fld.s_of_sigma(sigma_next) - s0
        y1, _, pred = explicit_step(fld, self.tableau, y, s0, h)
        return Step(fld.from_state(y1, sigma_next), None, pred)


@dataclass
class EmbeddedRungeKutta(EmbeddedPair):
    """An embedded Runge-Kutta pair (a tableau with ``b_error``) under the driver's step-size
    controller; the options are those of :class:`~flowode.solvers.base.EmbeddedPair`."""

    tableau: ClassVar[ButcherTableau]

    @property
    def error_order(self) -> int:  # type: ignore[override]
        return self.tableau.error_order

    @property
    def fsal(self) -> bool:  # type: ignore[override]
        return self.tableau.fsal

    def attempt(self, field: Any, y: Tensor, s: Any, h: Any, first: tuple[Tensor, Optional[Prediction]],
                s_stage: Any) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        tab = self.tableau
        y1, ks, _ = explicit_step(field, tab, y, s, h, first=first, s_stage=s_stage)  # type: ignore[arg-type]
        err = combine(torch.zeros_like(y), h, tab.b_error, ks)  # type: ignore[arg-type]
        return y1, err, ks[-1] if tab.fsal else None


def register_tableau(name: str, tableau: ButcherTableau, *, source: str, cls_name: Optional[str] = None,
                     order_note: str = "", **defaults: Any) -> type[Stepper]:
    """Register ``tableau`` as the solver ``name``: fixed-step, or adaptive when it has ``b_error``.

    Its order claim (:meth:`~flowode.solvers.Stepper.order_claims`) is the tableau's order, on any
    smooth grid and in every coordinate system (fixed step), or the order of the propagated solution
    (adaptive); ``order_note`` adds what a user must know besides (e.g. a superconvergent case).
    ``defaults`` override option defaults of the new class (e.g. ``error_norm="per_sample"``).
    Returns the registered class.
    """
    if not isinstance(tableau, ButcherTableau):
        raise TypeError(f"`tableau` must be a flowode.solvers.ButcherTableau, got {type(tableau).__name__}.")
    base: type[Stepper] = EmbeddedRungeKutta if tableau.adaptive else RungeKutta
    kind = f"embedded {tableau.order}({tableau.error_order}) pair" if tableau.adaptive else "explicit Runge-Kutta"
    nfe = float("nan") if tableau.adaptive else float(tableau.stages)
    cls_name = cls_name or "".join(p.capitalize() for p in name.replace("-", "_").split("_"))
    doc = f"{cls_name}: {kind}, order {tableau.order}, {tableau.stages} stages. {source}\n\n{base.__doc__}"
    namespace: dict[str, Any] = {"__doc__": doc, "name": name, "order": tableau.order, "nfe_per_step": nfe,
                                 "source": source, "tableau": tableau, "__annotations__": {}}
    if order_note:
        namespace["order_note"] = order_note
    for key, value in defaults.items():
        namespace[key] = value
        namespace["__annotations__"][key] = type(value).__name__
    cls = register(dataclass(type(cls_name, (base,), namespace)))
    TABLEAUS[name] = tableau
    return cls


# ------------------------------------------------------------------------------------------ fixed step
EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1)
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2)
HEUN = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2)
RALSTON = ButcherTableau(c=(0.0, 2 / 3), a=((), (2 / 3,)), b=(0.25, 0.75), order=2)
RK4 = ButcherTableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                     b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4)
RK38 = ButcherTableau(c=(0.0, 1 / 3, 2 / 3, 1.0), a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
                      b=(1 / 8, 3 / 8, 3 / 8, 1 / 8), order=4)

register_tableau("euler", EULER,
                 source="Euler (1768); in sigma coordinates it is DDIM (Song et al. 2021, eq. 13).")
register_tableau("midpoint", MIDPOINT,
                 source="Explicit midpoint rule (Hairer, Norsett & Wanner, Solving ODEs I, II.1).",
                 order_note="3 on a single Gaussian in sigma coordinates, where its h^3 error term vanishes "
                            "(docs/solvers.md)")
register_tableau("heun", HEUN,
                 source="Heun's 2nd-order method; EDM's deterministic sampler (Karras et al. 2022, Alg. 1).")
register_tableau("ralston", RALSTON, source="Ralston (1962), the minimum-error 2-stage 2nd-order method.")
register_tableau("rk4", RK4, cls_name="RK4",
                 source="Classical 4th-order Runge-Kutta (Kutta 1901; Hairer et al. I, Table 1.2).")
register_tableau("rk38", RK38, cls_name="RK38",
                 source="Kutta's 3/8 rule, 4th order (Kutta 1901; Hairer et al. I, Table 1.2).")

# ------------------------------------------------------------------------------------------ embedded pairs
#: Bogacki & Shampine (1989) 3(2), FSAL: b_error = b - b_hat, b_hat = (7/24, 1/4, 1/3, 1/8)
BS32 = ButcherTableau(
    c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0), order=3, b_error=(-5 / 72, 1 / 12, 1 / 9, -1 / 8), embedded_order=2,
)
#: Dormand & Prince (1980) 5(4), FSAL (Hairer et al. I, Table 5.2)
DP54 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0), order=5,
    b_error=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40), embedded_order=4,
)

_BS = "Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321-325; FSAL, 3 evaluations per attempted step"
# bs23 and dp45 step in lambda by default: at equal error (RMSE <= 2e-4 against the exact flow) they
# needed 95 / 104 evaluations in lambda against 200 / 260 in sigma on the ring and 107 / 104 against
# 170 / 176 on a 64-D mixture (benchmarks/adaptive_nfe.py); per-sample control stays in sigma
register_tableau("bs23", BS32, cls_name="BS23", source=_BS, coordinates="lambda")
register_tableau("bs23_per_sample", BS32, cls_name="BS23PerSample", error_norm="per_sample",
                 source=_BS + "; per-sample step control")
register_tableau("dp45", DP54, cls_name="DP45", source="Dormand & Prince, J. Comput. Appl. Math. 6 (1980) 19-26; "
                 "FSAL, 6 evaluations per attempted step", coordinates="lambda")
