"""Solver contract shared by every family.

A solver is a small dataclass whose fields are its options (so an unknown option is an error, not
a warning). :meth:`Solver.solve` receives a :class:`Context` -- the model behind a counting,
checking ``predict``, the validated sigma grid, the random generator and the trajectory recorder --
and the initial state ``x`` in model coordinates, and returns the final state. A solver never reads
a schedule's internals: it sees ``sigma`` values, ``alpha(sigma)`` (the VP/VE relation between the
``x`` and ``xbar`` pictures) and the field in its coordinates (:mod:`flowode.field`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ..field import ProbabilityFlow
from ..models import EpsilonModel, Prediction

__all__ = ["Solver", "OneStepSolver", "Context", "boundary_step", "SolverError"]


class SolverError(ValueError):
    """A solver cannot run on the given grid, model or options."""


@dataclass
class Context:
    """Everything a solver may use besides the state.

    Attributes:
        model: the model; call :meth:`predict`, not the model, so errors can name the step.
        sigmas: validated float64 grid; ``sigma_list`` holds the same values as Python floats.
        generator: the ``torch.Generator`` for every random draw (``None``: global RNG).
        save_trajectory: whether :meth:`record` keeps states and x0 predictions.
        stats: solver-specific counters (accepted / rejected steps, step sizes, ...).
    """

    model: EpsilonModel
    sigmas: Tensor
    generator: Optional[torch.Generator] = None
    save_trajectory: bool = False
    progress: Any = None
    sigma_list: list[float] = field(default_factory=list)
    states: list[Tensor] = field(default_factory=list)
    state_sigmas: list[float] = field(default_factory=list)
    denoised: list[Tensor] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    step: int = 0

    def __post_init__(self) -> None:
        if not self.sigma_list:
            self.sigma_list = [float(v) for v in self.sigmas.tolist()]

    def __setattr__(self, name: str, value: Any) -> None:
        # keep the model's step hint in sync, so that a NaN or a wrong shape from the network names
        # the step even when a solver evaluates through ``ctx.field(...)`` instead of ``ctx.predict``
        object.__setattr__(self, name, value)
        if name == "step" and "model" in self.__dict__:
            self.model.step_hint = value

    @property
    def decreasing(self) -> bool:
        """True when integrating towards the data (sampling / decoding)."""
        return self.sigma_list[0] > self.sigma_list[-1]

    @property
    def num_steps(self) -> int:
        return len(self.sigma_list) - 1

    def predict(self, x: Tensor, sigma: float) -> Prediction:
        """One counted, checked model evaluation."""
        self.model.step_hint = self.step
        return self.model.predict(x, sigma)

    def alpha(self, sigma: float) -> float:
        return self.model.coefficients(sigma)[0]

    def field(self, coordinates: str) -> ProbabilityFlow:
        return ProbabilityFlow(self.model, coordinates)

    def randn_like(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def record(self, x: Tensor, sigma: float, pred: Optional[Prediction] = None) -> None:
        """Keep ``x`` (state at ``sigma``) and, when given, the x0 prediction made from the
        previous grid point; a no-op unless ``save_trajectory``."""
        if self.progress is not None and sigma != self.sigma_list[0]:  # the initial state is not a step
            self.progress.update(1)
        if not self.save_trajectory:
            return
        self.states.append(x.detach().clone())
        self.state_sigmas.append(sigma)
        if pred is not None:
            self.denoised.append(pred.x0.detach().clone())


def boundary_step(ctx: Context, x: Tensor, sigma: float, sigma_next: float,
                  pred: Optional[Prediction] = None) -> tuple[Tensor, Prediction]:
    """The DDIM / Euler-in-sigma step ``x' = alpha' (x0_hat + sigma' eps_hat)`` (Song et al. 2021,
    DDIM, eq. 12 with sigma_t = 0), written so that it also holds when ``sigma = inf`` (zero
    terminal SNR), ``sigma' = 0`` (returns the denoised estimate, as diffusers' and k-diffusion's
    samplers do) and ``sigma = 0`` (the first step of an encode; the network is then evaluated at
    the schedule's smallest noise level). One model evaluation unless ``pred`` is given."""
    if pred is None:
        pred = ctx.predict(x, sigma)
    if sigma_next == 0.0:
        return pred.x0, pred
    a_next = ctx.alpha(sigma_next)
    if math.isinf(sigma) or sigma == 0.0:
        return (pred.x0 + sigma_next * pred.eps) * a_next, pred
    # the same arithmetic as Euler in (xbar, sigma): alpha'/alpha x + alpha'(sigma' - sigma) eps
    a = ctx.alpha(sigma)
    return torch.add(x * (a_next / a), pred.eps, alpha=a_next * (sigma_next - sigma)), pred


@dataclass
class Solver:
    """Base class. Subclasses set the class attributes and implement :meth:`solve`.

    Class attributes:
        name: registry name.
        order: global convergence order (for adaptive solvers, of the propagated solution).
        nfe_per_step: model evaluations per step (``float('nan')`` when adaptive).
        source: paper and equation the method follows.
        stochastic: draws noise (needs a generator for reproducibility).
        adaptive: chooses its own steps between the grid's ends.
        multistep: reuses earlier evaluations (warm-up steps may cost differently).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    nfe_per_step: ClassVar[float] = 1.0
    source: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    multistep: ClassVar[bool] = False
    encodes: ClassVar[bool] = True
    default_spacing: ClassVar[Optional[str]] = None

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, ctx: Context) -> None:
        """Raise :class:`SolverError` if this solver cannot run on ``ctx`` (grid direction, ...)."""
        if not ctx.decreasing and not self.encodes:
            raise SolverError(
                f"solver {self.name!r} only integrates towards the data (decreasing `sigmas`); "
                "it cannot encode. Use a deterministic solver such as 'ddim' or 'heun' to encode."
            )
        if not ctx.decreasing and math.isinf(ctx.sigma_list[-1]):
            # alpha = 0 there: the state x = alpha * xbar carries no information (every solver
            # returned NaN or overflowed before this check)
            raise SolverError(
                f"solver {self.name!r} cannot encode up to sigma = inf (zero terminal SNR, alpha = 0); end the "
                "increasing grid at a finite sigma (e.g. drop its last entry)."
            )

    def nfe(self, sigmas: list[float]) -> int:
        """Exact number of model evaluations on the grid ``sigmas`` (fixed-step solvers)."""
        n = len(sigmas) - 1
        boundary = sum(1 for a, b in zip(sigmas[:-1], sigmas[1:]) if a == 0.0 or b == 0.0 or math.isinf(a))
        return int(round((n - boundary) * self.nfe_per_step)) + boundary

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "order": self.order, "nfe_per_step": self.nfe_per_step,
                "source": self.source, "stochastic": self.stochastic, "adaptive": self.adaptive}


@dataclass
class OneStepSolver(Solver):
    """A solver that maps the state at ``sigmas[i]`` to ``sigmas[i+1]`` with no memory."""

    def step(self, ctx: Context, x: Tensor, sigma: float, sigma_next: float) -> tuple[Tensor, Optional[Prediction]]:
        raise NotImplementedError

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        ctx.record(x, s[0]) if ctx.save_trajectory else None
        for i in range(len(s) - 1):
            ctx.step = i
            x, pred = self.step(ctx, x, s[i], s[i + 1])
            ctx.record(x, s[i + 1], pred)
            del pred  # it may hold the previous state: free that buffer before the next step allocates
        return x
