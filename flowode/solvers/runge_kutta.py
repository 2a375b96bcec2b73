"""Explicit Runge-Kutta methods from Butcher tableaux, stepping in any of the three coordinates.

One generic step (:meth:`RungeKutta.step`) runs every tableau; a new method is one
:class:`ButcherTableau` and one registered subclass that names it. Tableaux check their own
consistency at construction (row sums of ``a`` equal ``c``, weights sum to 1), as diffrax's
``ButcherTableau.__post_init__`` does.

Steps with an end at ``sigma = 0`` (the last step of a decode, the first of an encode) or a start at
``sigma = inf`` are one DDIM / Euler-in-sigma step (:func:`~flowode.solvers.base.boundary_step`):
the field cannot be evaluated at ``sigma = 0`` by a network trained on ``sigma >= sigma_min``, and
EDM (Karras et al. 2022, Algorithm 1, line 9) and k-diffusion end their Heun samplers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from torch import Tensor

from ..field import COORDINATES
from ..models import Prediction
from .base import Context, OneStepSolver, SolverError, boundary_step
from .registry import register

__all__ = ["ButcherTableau", "RungeKutta", "TABLEAUS"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta tableau.

    ::

        c[0] |
        c[1] | a[1][0]
        c[2] | a[2][0] a[2][1]
        -----+----------------
             | b[0]    b[1]    b[2]

    ``a`` holds the strictly lower-triangular rows (row ``i`` has ``i`` entries).
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        n = len(self.b)
        if len(self.c) != n or len(self.a) != n:
            raise ValueError("tableau: `c`, `a` and `b` need one entry per stage.")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau: row {i} of `a` must have {i} entries (explicit method).")
            if abs(sum(row) - self.c[i]) > 1e-14:
                raise ValueError(f"tableau: row {i} of `a` sums to {sum(row)}, not c[{i}]={self.c[i]}.")
        if abs(sum(self.b) - 1.0) > 1e-14:
            raise ValueError(f"tableau: weights `b` sum to {sum(self.b)}, not 1.")
        if self.c[0] != 0.0:
            raise ValueError("tableau: an explicit method has c[0] = 0.")

    @property
    def stages(self) -> int:
        return len(self.b)


TABLEAUS: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(c=(0.0,), a=((),), b=(1.0,), order=1),
    "midpoint": ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), order=2),
    "heun": ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2),
    "ralston": ButcherTableau(c=(0.0, 2 / 3), a=((), (2 / 3,)), b=(0.25, 0.75), order=2),
    "rk4": ButcherTableau(
        c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
        b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4,
    ),
    "rk38": ButcherTableau(
        c=(0.0, 1 / 3, 2 / 3, 1.0), a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
        b=(1 / 8, 3 / 8, 3 / 8, 1 / 8), order=4,
    ),
}


@dataclass
class RungeKutta(OneStepSolver):
    """Generic explicit Runge-Kutta step of the probability-flow ODE.

    Options:
        coordinates: ``"sigma"`` (default; DDIM coordinates), ``"lambda"`` or ``"t"``.
    """

    coordinates: str = "sigma"
    tableau: ClassVar[ButcherTableau] = TABLEAUS["euler"]

    def __post_init__(self) -> None:
        if self.coordinates not in COORDINATES:
            raise SolverError(f"`coordinates` must be one of {COORDINATES}, got {self.coordinates!r}.")

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        if sigma == 0.0 or sigma_next == 0.0 or sigma == float("inf"):
            return boundary_step(ctx, x, sigma, sigma_next)
        tab = self.tableau
        fld = ctx.field(self.coordinates)
        y = fld.to_state(x, sigma)
        s0 = fld.s_of_sigma(sigma)
        h = fld.s_of_sigma(sigma_next) - s0
        ks: list[Tensor] = []
        first: Optional[Prediction] = None
        for i in range(tab.stages):
            yi = y
            for aij, kj in zip(tab.a[i], ks):
                if aij != 0.0:
                    yi = yi.add(kj, alpha=h * aij)
            k, pred = fld(yi, s0 + tab.c[i] * h)
            ks.append(k)
            if first is None:
                first = pred
        y1 = y
        for bi, ki in zip(tab.b, ks):
            if bi != 0.0:
                y1 = y1.add(ki, alpha=h * bi)
        return fld.from_state(y1, sigma_next), first


def _rk(name: str, cls_name: str, source: str) -> type[RungeKutta]:
    tab = TABLEAUS[name]
    doc = (f"{cls_name}: explicit Runge-Kutta, order {tab.order}, {tab.stages} model evaluation(s) "
           f"per step. {source}")
    cls = type(cls_name, (RungeKutta,), {
        "__doc__": doc, "name": name, "order": tab.order, "nfe_per_step": float(tab.stages),
        "source": source, "tableau": tab, "__annotations__": {},
    })
    return register(dataclass(cls))  # type: ignore[return-value]


Euler = _rk("euler", "Euler", "Euler (1768); in sigma coordinates it is DDIM (Song et al. 2021, eq. 13).")
Midpoint = _rk("midpoint", "Midpoint", "Explicit midpoint rule (Hairer, Norsett & Wanner, Solving ODEs I, II.1).")
Heun = _rk("heun", "Heun", "Heun's 2nd-order method; EDM's deterministic sampler (Karras et al. 2022, Alg. 1).")
Ralston = _rk("ralston", "Ralston", "Ralston (1962), the minimum-error 2-stage 2nd-order method.")
RK4 = _rk("rk4", "RK4", "Classical 4th-order Runge-Kutta (Kutta 1901; Hairer et al. I, Table 1.2).")
RK38 = _rk("rk38", "RK38", "Kutta's 3/8 rule, 4th order (Kutta 1901; Hairer et al. I, Table 1.2).")
