"""Variable-step Adams-Bashforth (and the Lagrange-integral machinery DEIS shares).

``y' = y + sum_j C_j f_j``, ``C_j = int_s^{s'} l_j(tau) d tau`` with ``l_j`` the Lagrange basis of the
last ``k`` nodes in the coordinates' independent variable (Hairer, Norsett & Wanner I, III.5,
eq. 5.3). In ``sigma`` coordinates (state ``xbar``, field ``eps``) this is DEIS rhoAB.

The solver state is ``(field values, nodes)`` of the history (newest last). A step from
``sigma = inf`` or ``0`` is the boundary DDIM step and the history restarts (no interpolation node
at infinity); a step to ``sigma = 0`` is the method's own step where the polynomial can be
integrated down to 0 (``sigma`` coordinates), else the boundary DDIM step (order 1 there).
Warm-up: lower orders (AB-1 = Euler first; its ``O(h^2)`` local error limits the global order to
2) or classical RK4 steps in the same coordinates (``warmup="rk4"``, 4 evaluations each).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple, Optional, Sequence

import numpy as np
from torch import Tensor

from ...field import COORDINATES
from ..base import Step, Stepper, check_choice
from ..boundary import Boundary
from ..claims import WARMUP_LOWER, OrderClaim
from ..registry import register
from ..rk.explicit import explicit_step
from ..rk.methods import RK4

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["AdamsBashforth", "lagrange_integrals", "WARMUPS", "LagrangeHistory"]

WARMUPS = ("lower_order", "rk4")

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(12)


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


class LagrangeHistory(NamedTuple):
    """The state of a variable-step multistep method: field values and their noise levels."""

    values: tuple[Tensor, ...] = ()
    nodes: tuple[float, ...] = ()


@dataclass
class LagrangeMultistep(Stepper):
    """The variable-step step ``y' = y + sum_j C_j f_j`` (subclasses give ``C_j`` and the order).

    Options:
        warmup: ``"lower_order"`` or ``"rk4"`` (module docstring).
    """

    order: int = 3  # type: ignore[misc]  # an option here (the number of history points)
    warmup: str = "lower_order"
    multistep = True
    #: the valid values of each option with a fixed set of choices
    choices: ClassVar[dict[str, tuple[Any, ...]]] = {"warmup": WARMUPS}

    def __post_init__(self) -> None:
        for option, valid in self.choices.items():
            check_choice(self.name, option, getattr(self, option), valid)

    def _k(self) -> int:
        return self.order

    def _extra_conditions(self) -> tuple[str, ...]:
        return ()

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """``order`` with ``warmup="rk4"``; 2 with the lower-order warm-up (its Euler first step),
        which shows only on fine grids (the ``h^2`` term has a small constant)."""
        k, extra = self._k(), self._extra_conditions()
        if k == 1:
            return (OrderClaim(1, conditions=extra),)
        if self.warmup == "rk4":
            return (OrderClaim(k, conditions=("warmup='rk4'",) + extra),)
        return (OrderClaim(2, conditions=(WARMUP_LOWER,) + extra, nominal=k, reach="warmup='rk4'", from_steps=128),)

    def _coordinates(self) -> str:
        return "sigma"

    def _weights(self, run: "Run", nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        raise NotImplementedError

    def _lower_order(self, n_steps: int, i: int) -> int:
        return self._k()

    def init(self, run: "Run") -> Any:
        return LagrangeHistory()

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        fld = run.field(self._coordinates())
        y = fld.to_state(x, sigma)
        s0 = fld.s_of_sigma(sigma)
        f, pred = fld(y, s0)
        cap = self._lower_order(run.num_steps, run.step)
        k = min(cap, len(state.values) + 1)
        hist = LagrangeHistory((state.values + (f,))[-self._k():], (state.nodes + (sigma,))[-self._k():])
        if self.warmup == "rk4" and sigma_next != 0.0 and len(state.values) + 1 < cap:
            s1 = fld.s_of_sigma(sigma_next)
            y1, _, _ = explicit_step(fld, RK4, y, s0, s1 - s0, first=(f, pred))
            return Step(fld.from_state(y1, sigma_next), hist, pred, None, {"orders": 4})
        w = self._weights(run, list(hist.nodes[-k:]), sigma, sigma_next)
        y1 = y
        for wj, fj in zip(w, hist.values[-k:]):
            y1 = y1.add(fj, alpha=wj)
        return Step(fld.from_state(y1, sigma_next), hist, pred, None, {"orders": k})


@register
@dataclass
class AdamsBashforth(LagrangeMultistep):
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

    coordinates: str = "sigma"
    name = "adams_bashforth"
    source = "Adams-Bashforth, variable step (Hairer, Norsett & Wanner, Solving ODEs I, III.5, eq. 5.3)"

    choices = {"warmup": WARMUPS, "order": (2, 3, 4), "coordinates": COORDINATES}

    def _coordinates(self) -> str:
        return self.coordinates

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO and self.coordinates == "sigma"

    def _weights(self, run: "Run", nodes: list[float], sigma: float, sigma_next: float) -> list[float]:
        fld = run.field(self.coordinates)
        sn = [fld.s_of_sigma(v) for v in nodes]
        s1 = fld.s_of_sigma(sigma_next)
        return lagrange_integrals(sn, sn[-1], s1, breaks=fld.kinks(sn[-1], s1))
