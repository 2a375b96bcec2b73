"""The stepper contract: a solver says how to take one step; the driver owns everything else.

A stepper is a small dataclass whose fields are its options (an unknown option is an error, not a
warning). The driver (:func:`flowode.integrate`) calls, for every step of a fixed grid,

    state = stepper.init(run)                                   # once
    step  = stepper.step(run, x, sigma, sigma_next, state)      # -> Step(x, state, pred, ...)

where ``run`` (:class:`~flowode.solvers.run.Run`) gives counted, checked model evaluations, the
field in any coordinates and the random stream, ``x`` is the state in model coordinates and
``state`` the stepper's own explicit solver state (a multistep history, a warm-up position, the
previous step's corrector data). States are never mutated in place: a step returns a new one, so
the driver can keep an old one (to replay a window of steps, or for exact inversion).

Steps that touch ``sigma = 0`` or start at ``sigma = inf`` follow the one boundary policy of
:mod:`flowode.solvers.boundary`: the driver takes them as a DDIM step unless the stepper says, with
:meth:`Stepper.native`, that its own update has the right limit there; :meth:`Stepper.after_boundary`
then tells the stepper what happened (by default its state restarts).

Adaptive solvers are :class:`AdaptiveStepper` s: an embedded pair (one attempt + an error
estimate) run by the driver's controller loop, or an external back-end (torchdiffeq, scipy) that
integrates an interval behind the same driver interface (:mod:`flowode.solvers.external`).

A stepper never reads a schedule's internals: it sees noise levels, ``run.alpha(sigma)`` and the
field in its coordinates (:mod:`flowode.field`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, NamedTuple, Optional, Sequence

from torch import Tensor

from ..control import PIController
from ..models import Prediction
from .claims import OrderClaim, claims_text

if TYPE_CHECKING:  # pragma: no cover
    from ..schedules import Schedule
    from .boundary import Boundary
    from .run import Run

__all__ = ["Stepper", "AdaptiveStepper", "EmbeddedPair", "Step", "SolverError", "MaxNFEError", "IntervalResult",
           "check_choice", "check_fraction", "ERROR_NORMS", "WarmupWarning"]

ERROR_NORMS = ("batch", "per_sample")


class SolverError(ValueError):
    """A solver cannot run on the given grid, model or options."""


class WarmupWarning(UserWarning):
    """A multistep solver's warm-up takes up the whole grid: it never runs at its own order."""


def check_choice(solver: str, option: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise :class:`SolverError` naming the option, its value and the valid choices unless
    ``value`` is one of ``choices`` (``True`` is not accepted for the integer 1)."""
    if isinstance(value, bool) and not any(c is value for c in choices):
        ok = False
    else:
        ok = value in choices
    if not ok:
        listed = ", ".join(repr(c) for c in choices)
        raise SolverError(f"`{option}` of {solver!r} must be one of {listed}, got {value!r}.")


def check_fraction(solver: str, option: str, value: Any) -> None:
    """Raise :class:`SolverError` unless ``0 < value <= 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise SolverError(f"`{option}` of {solver!r} must lie in (0, 1], got {value!r}.")


class Step(NamedTuple):
    """What one step returns.

    Attributes:
        x: the state at ``sigma_next`` (model coordinates).
        state: the stepper's solver state after the step.
        pred: the prediction made at the start of the step (its ``x0`` is recorded as the step's
            denoised estimate), or ``None`` when the step evaluated nothing there.
        revised: a corrected state at ``sigma`` (the step's start), for predictor-corrector methods
            whose corrector needs this step's evaluation (UniPC); the driver records it in place of
            the state it had recorded there.
        info: per-step facts for ``Solution.stats`` (e.g. ``{"order": 2}``), or ``None``.
    """

    x: Tensor
    state: Any = None
    pred: Optional[Prediction] = None
    revised: Optional[Tensor] = None
    info: Optional[dict[str, Any]] = None


@dataclass
class Stepper:
    """Base class of every solver. Subclasses set the class attributes and implement :meth:`step`.

    Class attributes:
        name: registry name.
        order: the order of the method's formula (the number warm-up and history sizes follow). What
            a user gets, and under which conditions, is :meth:`order_claims`.
        nfe_per_step: model evaluations per step (``float('nan')`` when adaptive).
        source: paper and equation the method follows.
        stochastic: draws noise (needs a generator for reproducibility).
        adaptive: chooses its own steps between the grid's ends.
        multistep: reuses earlier evaluations (warm-up steps may cost differently).
        encodes: can integrate an increasing grid (data to noise).
        default_spacing: the grid spacing it is meant for (``None``: the schedule's).
        differentiable: autograd can backpropagate through its steps (``grad="autograd"``).
        strong_order, weak_order: for stochastic solvers, the claimed pathwise (strong) and
            distributional (weak) orders on the reverse SDE (``None``: not defined, e.g. no fixed
            Brownian path); measured in ``tests/test_stochastic.py``; :meth:`order_claims` states
            them as ``"strong"`` / ``"weak"`` claims.
    """

    #: the option of every solver: how a decreasing grid's last step to ``sigma = 0`` is taken, one of
    #: :data:`~flowode.solvers.boundary.LAST_STEPS` (the driver takes it; docs/grids.md, "The last step").
    #: Default ``"jump"``: the last step as before (diffusers / k-diffusion parity)
    last_step: str = field(default="jump", kw_only=True)

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[float] = 1.0
    source: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    multistep: ClassVar[bool] = False
    encodes: ClassVar[bool] = True
    default_spacing: ClassVar[Optional[str]] = None
    differentiable: ClassVar[bool] = True
    strong_order: ClassVar[Optional[float]] = None
    weak_order: ClassVar[Optional[float]] = None

    # ---------------------------------------------------------------------------------- the step
    def init(self, run: "Run") -> Any:
        """The solver state before the first step (``None`` for one-step methods)."""
        return None

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        """One step from ``sigma`` to ``sigma_next`` (never a boundary step this stepper does not
        :meth:`native` -ly handle)."""
        raise NotImplementedError

    def native(self, kind: "Boundary") -> bool:
        """Whether :meth:`step` itself handles a boundary step of this kind (its update has the
        right finite limit there); otherwise the driver takes the DDIM boundary step."""
        return False

    def after_boundary(self, run: "Run", state: Any, kind: "Boundary", sigma: float, pred: Prediction) -> Any:
        """The solver state after the driver took a boundary step from ``sigma`` (with the
        prediction ``pred`` made there). By default the state restarts: a history cannot hold a
        point with infinite ``lambda``, and an encode's first evaluation is at ``sigma_min``."""
        return self.init(run)

    # ---------------------------------------------------------------------------------- checks, cost
    def check(self, run: "Run") -> None:
        """Raise :class:`SolverError` if this solver cannot run on ``run.grid`` (direction, ...)."""
        if not run.decreasing and not self.encodes:
            raise SolverError(
                f"solver {self.name!r} only integrates towards the data (decreasing `sigmas`); "
                "it cannot encode. Use a deterministic solver such as 'ddim' or 'heun' to encode."
            )

    def nfe(self, sigmas: Sequence[float], schedule: Optional["Schedule"] = None) -> int:
        """Exact number of model evaluations on the grid ``sigmas``: a dry run of the driver on a
        one-number state with a free stand-in model (boundary steps and warm-up included), so the
        count and the solve cannot disagree. ``schedule`` defaults to one that covers the grid."""
        from ..driver import count_evaluations

        return count_evaluations(self, [float(v) for v in sigmas], schedule)

    @property
    def warmup_steps(self) -> int:
        """Steps a multistep method takes before its history holds enough points for its order
        (``order - 1``: PLMS's three pseudo Runge-Kutta or lower-order steps, DPM-Solver++(2M)'s
        first step, ...); 0 for one-step methods."""
        return max(int(self.order) - 1, 0) if self.multistep else 0

    def check_warmup(self, num_steps: int) -> None:
        """The one rule for every multistep solver: warn (:class:`WarmupWarning`) when a grid of
        ``num_steps`` steps is all warm-up. The method then never runs at its order, and a
        warm-up built for small steps can go badly wrong over a few large ones (PLMS with 2 steps
        and its half steps in ``t`` on the 8-Gaussian ring: |x| up to 65 for data of radius 2)."""
        w = self.warmup_steps
        if num_steps <= w:
            from .._warnings import warn

            warn(
                f"solver {self.name!r} spends its first {w} step(s) warming up its history before it runs at "
                f"order {self.order}, and this grid has only {num_steps} step(s): every step is warm-up and the "
                f"result may be far off. Use at least {w + 1} steps, or a one-step solver ('ddim', 'heun', "
                "'dpm_solver_2').",
                WarmupWarning,
            )

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """The orders this solver, with these options, has and the conditions each holds under
        (:mod:`flowode.solvers.claims`); the first is the one under the most general conditions.
        ``tests/test_orders_registry.py`` measures every claim of every registered solver.

        The default states the ``strong_order`` / ``weak_order`` of a stochastic solver and nothing
        for a deterministic one: a new solver must say what its order is and when it holds."""
        if not self.stochastic:
            return ()
        return tuple(OrderClaim(float(o), kind=k, conditions=("reverse-SDE noise on one Brownian path per sample",)
                                if k == "strong" else ())
                     for k, o in (("strong", self.strong_order), ("weak", self.weak_order)) if o is not None)

    def describe(self) -> dict[str, Any]:
        """Name, claimed order (the first of :meth:`order_claims`; ``None`` without one) with its
        conditions in words, cost, source and kind."""
        claims = self.order_claims()
        return {"name": self.name, "order": claims[0].order if claims else None, "order_claims": claims_text(claims),
                "nfe_per_step": self.nfe_per_step, "source": self.source, "stochastic": self.stochastic,
                "adaptive": self.adaptive}


@dataclass
class AdaptiveStepper(Stepper):
    """Base class of the adaptive solvers (options common to all of them).

    The driver integrates adaptively between the grid's first and last level (ends at ``sigma = 0``
    or ``inf`` are boundary steps), in the chosen ``coordinates``; the grid's inner levels are output
    points only. ``max_nfe`` bounds ``sol.nfe`` including the boundary steps.

    Options:
        rtol, atol: relative and absolute tolerances on the state of the chosen coordinates
            (default ``1e-5`` each, the probability-flow sampler of Song et al. 2021, score SDE).
        coordinates: ``"sigma"`` (default), ``"lambda"`` or ``"t"``.
        max_nfe: evaluation budget for the whole solve (``None``: no limit).
        on_max_nfe: ``"raise"`` (:class:`~flowode.solvers.MaxNFEError` with the partial state) or
            ``"return"`` (the partial state as the solution, ``stats["status"] = "max_nfe"``).
        first_step: initial step size (magnitude, in the integration variable); ``None``: the
            initial-step heuristic (Hairer, Norsett & Wanner I, II.4), which costs evaluations.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    coordinates: str = "sigma"
    max_nfe: Optional[int] = None
    on_max_nfe: str = "raise"
    first_step: Optional[float] = None

    nfe_per_step = float("nan")
    adaptive = True

    def __post_init__(self) -> None:
        from ..field import COORDINATES

        for key in ("rtol", "atol"):
            v = getattr(self, key)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SolverError(f"`{key}` must be a positive number, got {v!r}.")
        check_choice(self.name, "coordinates", self.coordinates, COORDINATES)
        check_choice(self.name, "on_max_nfe", self.on_max_nfe, ("raise", "return"))
        if self.max_nfe is not None and (isinstance(self.max_nfe, bool) or not isinstance(self.max_nfe, int)
                                         or self.max_nfe < 1):
            raise SolverError(f"`max_nfe` must be a positive integer or None, got {self.max_nfe!r}.")
        if self.first_step is not None and not (math.isfinite(self.first_step) and self.first_step > 0):
            raise SolverError(f"`first_step` must be a positive number or None, got {self.first_step!r}.")

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """The order of the solution each accepted step propagates (its local error is
        ``O(h^(order + 1))``); the global error follows ``rtol`` / ``atol``."""
        return (OrderClaim(self.order, kind="local", grid="adaptive", conditions=self._claim_conditions()),)

    def _claim_conditions(self) -> tuple[str, ...]:
        return ()

    def nfe(self, sigmas: Sequence[float], schedule: Optional["Schedule"] = None) -> int:
        raise SolverError(
            f"solver {self.name!r} is adaptive: its NFE is known only after the solve (sol.nfe); "
            "bound it with `max_nfe`."
        )


@dataclass
class EmbeddedPair(AdaptiveStepper):
    """An adaptive solver made of an embedded pair -- two solutions of one attempted step whose
    difference estimates the local error -- run by the driver's controller loop
    (:func:`flowode.driver.embedded_interval`) under a :class:`~flowode.control.PIController`.

    A subclass implements :meth:`attempt` and sets ``error_order`` (the order of the lower
    solution: the estimate is ``O(h^(error_order + 1))``) and ``fsal``. The Runge-Kutta pairs
    (:class:`~flowode.solvers.rk.EmbeddedRungeKutta`) and the adaptive DPM-Solver are the two kinds.

    Options (besides those of :class:`AdaptiveStepper`):
        error_norm: ``"batch"`` (default: one error for the whole batch, as torchdiffeq and scipy)
            or ``"per_sample"`` (every sample has its own level and step size, accepted or rejected
            on its own error; all unfinished samples advance together in one batched evaluation per
            stage, at their own noise levels; ``coordinates="sigma"`` only).
        controller: the :class:`~flowode.control.PIController` (default: the I controller).

    Inner grid levels are output points: the steps are shortened to land on them exactly.
    """

    error_norm: str = "batch"
    controller: PIController = field(default_factory=PIController)

    error_order: ClassVar[int] = 1
    fsal: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.name, "error_norm", self.error_norm, ERROR_NORMS)
        if self.error_norm == "per_sample" and self.coordinates != "sigma":
            raise SolverError(f"`coordinates` of {self.name!r} with error_norm='per_sample' must be 'sigma' "
                              "(per-sample sigma steps).")
        if not isinstance(self.controller, PIController):
            raise SolverError(f"`controller` must be a flowode.control.PIController, got {self.controller!r}.")

    def _claim_conditions(self) -> tuple[str, ...]:
        return (f"error estimate from the embedded order-{self.error_order} solution",)

    @property
    def per_sample(self) -> bool:
        return self.error_norm == "per_sample"

    def attempt(self, field: Callable[[Tensor, Any], tuple[Tensor, Prediction]], y: Tensor, s: Any, h: Any,
                first: tuple[Tensor, Optional[Prediction]], s_stage: Callable[[float], Any]
                ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """One attempted step of size ``h`` from ``(y, s)`` in the field's coordinates.

        ``field(y, s) -> (dy/ds, prediction)`` is the counted field; ``first`` is ``(dy/ds,
        prediction)`` at ``(y, s)``, already evaluated (the prediction is ``None`` in per-sample
        mode); ``s_stage(c)`` is the independent variable at the fraction ``c`` of the step (exact at
        ``c = 1``: the step may land on an output point). Returns the propagated solution, the local
        error estimate (a tensor shaped like ``y``) and, for FSAL pairs, ``dy/ds`` at the new solution
        (else ``None``)."""
        raise NotImplementedError


class MaxNFEError(SolverError):
    """The ``max_nfe`` budget of an adaptive solver ran out.

    Attributes:
        x: the last accepted state (model coordinates) at noise level ``sigma``.
        sigma: where the integration stopped.
        nfe: evaluations used.
        stats: the solver statistics up to that point.
    """

    def __init__(self, message: str, x: Tensor, sigma: float, nfe: int, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.x, self.sigma, self.nfe, self.stats = x, sigma, nfe, stats


@dataclass
class IntervalResult:
    """What an adaptive integration of one interval ``[s0, s1]`` returns to the driver.

    Attributes:
        y: the state (integration coordinates) at ``s_end``: ``s1``, or the last accepted point
            when the budget ran out (per-sample: the states at ``s_end`` per sample).
        s_end: where ``y`` is (a float, or per-sample levels as a ``(B,)`` tensor).
        outputs: the states at the requested output points reached, in order.
        accepted, rejected: step counts (``rejected`` is ``None`` when the back-end does not report it).
        step_sizes, step_starts: signed increments and starts of the accepted steps.
        status: ``"ok"`` or ``"max_nfe"``.
        extra: back-end specific statistics.
    """

    y: Tensor
    s_end: Any
    outputs: list[Tensor]
    accepted: int
    rejected: Optional[int]
    step_sizes: list[float]
    step_starts: list[float]
    status: str = "ok"
    extra: Optional[dict[str, Any]] = None
