"""What a solver's order means: the registry's order claims, each with the conditions it holds under.

An order is a statement about a limit, and it holds only under conditions: the grid (a constant-step
formula is exact only on grids uniform in ``sigma``), the warm-up of a multistep method (an Euler
first step has local error ``O(h^2)`` and caps every later order at 2), the options that lower the
last steps' order (``lower_order_final``), the precision, and for stochastic and adaptive solvers
the kind of order. Every registered solver states its claims with :meth:`Stepper.order_claims
<flowode.solvers.Stepper.order_claims>`, a tuple of :class:`OrderClaim`; ``describe()``, ``flowode
solvers`` and ``docs/solvers.md`` print :meth:`OrderClaim.text`, and ``tests/test_orders_registry.py``
measures every claim of every registered deterministic solver (a solver without a claim fails it).

Common to every global claim: float64 arithmetic (in float32 the error stops falling at about
``1e-6`` relative) and grids that end at ``sigma_min > 0``: a step to ``sigma = 0`` adds its own
error (the last-step floor, ``~ sigma_min^2 |x0 - mu| / (2 s^2)`` for a DDIM step), which is not
the solver's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["OrderClaim", "KINDS", "GRIDS", "WARMUP_LOWER", "LOWER_ORDER_FINAL_15", "COMMON_CONDITIONS",
           "claims_text"]

#: the kind of order a claim is about
KINDS: dict[str, str] = {
    "global": "global error at the grid's end ~ h^p as the grid is refined (fixed steps, deterministic)",
    "strong": "pathwise error on one Brownian path ~ h^p (stochastic)",
    "weak": "error of expectations ~ h^p (stochastic)",
    "local": "order of the solution an adaptive step propagates (local error O(h^(p+1))); the global error "
             "follows the tolerance, not a step count",
    "none": "no convergence order",
}

#: the grids a claim holds on
GRIDS: dict[str, str] = {
    "smooth": "any smoothly graded grid",
    "uniform_sigma": "grids uniform in sigma",
    "uniform_lambda": "grids uniform in lambda = -log sigma (logsnr)",
    "refined_start": "smooth grids whose first 3 steps (the warm-up) are refined to length ~h^2",
    "adaptive": "its own steps",
}

_SHORT_GRIDS = {"uniform_sigma": "uniform sigma", "uniform_lambda": "uniform lambda",
                "refined_start": "refined start"}

#: the condition every lower-order warm-up shares
WARMUP_LOWER = "lower-order warm-up: the Euler first step's O(h^2) local error caps the order at 2"

#: ``lower_order_final`` of the diffusers-style multistep solvers
LOWER_ORDER_FINAL_15 = "lower_order_final lowers the last two steps' orders on grids of fewer than 15 steps"

#: stated once for every global claim (CLI footer, docs)
COMMON_CONDITIONS = ("float64; grids ending at sigma_min > 0 (a step to sigma = 0 adds the last-step floor, "
                     "which is not the solver's order)")


@dataclass(frozen=True)
class OrderClaim:
    """One claimed order and the conditions it holds under.

    Attributes:
        order: the order (``None`` only for ``kind="none"``).
        kind: a key of :data:`KINDS`.
        grid: a key of :data:`GRIDS` (``"adaptive"`` for adaptive solvers).
        conditions: the assumptions it needs besides the grid, in words (options, warm-up, schedule).
        nominal: the order of the formula itself where the claim is lower (e.g. 4 for iPNDM's AB4,
            whose warm-up gives 2), with ``reach``: what reaches it.
        reach: how to get ``nominal`` (an option, a different solver); empty if ``nominal`` is None.
        from_steps: step count (on ``sigma`` 2 -> 0.1, :func:`flowode.orders.claim_grid`) from which
            the measured order is within 0.15 (Gaussian) and 0.3 (mixture) of the claim on the test
            problems of :func:`flowode.orders.order_problems`; an order capped by a warm-up or a last
            step with a small error constant shows only late.
        note: anything else a user must know (superconvergence, why there is no order).
    """

    order: Optional[float]
    kind: str = "global"
    grid: str = "smooth"
    conditions: tuple[str, ...] = ()
    nominal: Optional[int] = None
    reach: str = ""
    from_steps: int = 64
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` of an OrderClaim must be one of {', '.join(KINDS)}, got {self.kind!r}.")
        if self.grid not in GRIDS:
            raise ValueError(f"`grid` of an OrderClaim must be one of {', '.join(GRIDS)}, got {self.grid!r}.")
        if (self.order is None) != (self.kind == "none"):
            raise ValueError(f"an OrderClaim has `order=None` exactly when `kind='none'`; got order={self.order!r}, "
                             f"kind={self.kind!r}.")
        if (self.grid == "adaptive") != (self.kind in ("local", "none")):
            raise ValueError(f"`grid='adaptive'` goes with kind 'local' or 'none' (adaptive solvers); got "
                             f"grid={self.grid!r}, kind={self.kind!r}.")
        if isinstance(self.conditions, str):
            raise TypeError("`conditions` of an OrderClaim is a tuple of strings, not one string.")

    @property
    def order_text(self) -> str:
        return "none" if self.order is None else f"{self.order:g}"

    def short(self) -> str:
        """The claim in a few words, for a table column: ``"2"``, ``"4 (uniform sigma)"``, ``"weak 2"``."""
        if self.kind == "none":
            return "none"
        head = self.order_text if self.kind == "global" else f"{self.kind} {self.order_text}"
        if self.grid in _SHORT_GRIDS:
            head += f" ({_SHORT_GRIDS[self.grid]})"
        return head

    def text(self) -> str:
        """The whole claim in one line: order, kind, grid, conditions, nominal order, note."""
        parts = [f"{self.kind} order {self.order_text}" if self.kind != "none" else "no convergence order"]
        if self.grid != "adaptive":
            parts.append(f"on {GRIDS[self.grid]}")
        parts += list(self.conditions)
        if self.nominal is not None:
            parts.append(f"the formula's order {self.nominal}" + (f" needs {self.reach}" if self.reach else ""))
        if self.kind == "global" and self.from_steps > 64:
            parts.append(f"shows from about {self.from_steps} steps on sigma 2 -> 0.1")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def claims_text(claims: tuple[OrderClaim, ...]) -> str:
    """All claims of a solver, one line (``"no order claim"`` when there are none)."""
    return " | ".join(c.text() for c in claims) if claims else "no order claim"
