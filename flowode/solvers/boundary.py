"""The one boundary policy: steps that touch ``sigma = 0`` or start at ``sigma = inf``.

A network is trained on ``[sigma_min, sigma_max]``: it is not defined at ``sigma = 0`` (the clean
data), and at ``sigma = inf`` (zero terminal SNR, ``alpha = 0``) the state carries no information
about the data. So, for every solver:

* a step **to** ``sigma = 0`` (the last step of a decode) returns the denoised estimate
  ``x0_hat(x, sigma)`` -- the DDIM step with ``sigma' = 0``, as diffusers' ``set_alpha_to_one``,
  EDM (Karras et al. 2022, Alg. 1, line 9) and k-diffusion end their samplers;
* a step **from** ``sigma = 0`` (the first step of an encode) is one DDIM step whose evaluation is
  at the schedule's smallest level (:meth:`~flowode.models.EpsilonModel.predict`), as diffusers'
  ``DDIMInverseScheduler`` does;
* a step **from** ``sigma = inf`` is one DDIM step ``x' = alpha' (x0_hat + sigma' eps_hat)``;
* nothing integrates **up to** ``sigma = inf`` (an encode to zero terminal SNR would return a
  state that does not depend on the data).

A solver whose own update has the right finite limit at an end (PLMS, iPNDM and Adams-Bashforth in
``sigma`` reach ``sigma = 0`` without evaluating there) says so with
:meth:`~flowode.solvers.base.Stepper.native`; every other solver gets the DDIM step below. For
adaptive solvers the same policy cuts the interval: :func:`adaptive_interval`.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

from torch import Tensor

from ..models import Prediction
from .ddim import ddim_update

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

__all__ = ["Boundary", "classify", "boundary_step", "check_direction", "AdaptivePlan", "adaptive_interval"]


class Boundary(enum.Enum):
    """The kinds of boundary step."""

    FROM_INF = "from_inf"
    FROM_ZERO = "from_zero"
    TO_ZERO = "to_zero"


def classify(sigma: float, sigma_next: float) -> Optional[Boundary]:
    """The boundary kind of the step ``sigma -> sigma_next``, or ``None`` for an inner step. A step
    from ``inf`` straight to ``0`` (a one-step zero-terminal-SNR grid) is a step from inf: no solver's
    own update is defined there (``alpha = 0``), the DDIM step's limit is (the data mean for a v model)."""
    if sigma == math.inf:
        return Boundary.FROM_INF
    if sigma_next == 0.0:
        return Boundary.TO_ZERO
    if sigma == 0.0:
        return Boundary.FROM_ZERO
    return None


def boundary_step(run: "Run", x: Tensor, sigma: float, sigma_next: float,
                  pred: Optional[Prediction] = None) -> tuple[Tensor, Prediction]:
    """The DDIM step (:func:`~flowode.solvers.ddim.ddim_update`) at an end of the range; one model
    evaluation unless ``pred`` (at ``(x, sigma)``) is given."""
    if pred is None:
        pred = run.predict(x, sigma)
    return ddim_update(x, pred, sigma, sigma_next, run.alpha), pred


def check_direction(grid: Sequence[float], solver: str) -> None:
    """Refuse an increasing grid that ends at ``sigma = inf`` (the one copy of this rule)."""
    from .base import SolverError

    if grid[0] < grid[-1] and math.isinf(grid[-1]):
        raise SolverError(
            f"solver {solver!r} cannot encode up to sigma = inf (zero terminal SNR, alpha = 0: the latent would not "
            "depend on the data); end the increasing grid at a finite sigma (e.g. drop its last entry), or, with "
            "flowode.encode / roundtrip, pass a finite `sigma_max=` with a continuous spacing ('logsnr', 'uniform_t')."
        )


class AdaptivePlan(NamedTuple):
    """How an adaptive solve covers a grid: boundary steps before and after the adaptive interval."""

    before: Optional[tuple[float, float]]
    interval: tuple[float, float]
    after: Optional[tuple[float, float]]


def adaptive_interval(grid: Sequence[float], sigma_min: float, solver: str) -> AdaptivePlan:
    """The adaptive interval of ``grid`` (first to last level) with its ends moved off ``0`` and
    ``inf``: a start at ``inf`` is a DDIM step to the next level, a start at ``0`` a DDIM step to
    ``sigma_min``, and an end at ``0`` is reached from ``sigma_min`` by the denoising step."""
    from .base import SolverError

    start, end = grid[0], grid[-1]
    a, b = start, end
    if math.isinf(start):
        if grid[1] == 0.0:
            raise SolverError(
                f"solver {solver!r} got the grid [inf, 0]: give a finite level in between "
                "(e.g. flowode.sigma_grid(sched, 1, sigma_max=...)) so there is something to integrate."
            )
        a = grid[1]
    elif start == 0.0:
        a = sigma_min
    if end == 0.0:
        b = sigma_min
    return AdaptivePlan((start, a) if a != start else None, (a, b), (b, end) if b != end else None)
