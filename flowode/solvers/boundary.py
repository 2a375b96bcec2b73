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

**The last step without the floor** (``last_step=``, an option of every solver). The denoising
jump from ``sigma_min`` to 0 is one Euler step in ``sigma``: its local error is
``-c sigma_min^2``, a floor every solver's error reaches on fine grids (``~ sigma_min^2 |x0 - mu| /
(2 s^2)`` for Gaussian data ``N(mu, s^2)``). The cure is the expansion of the flow near the data.
By Tweedie's formula (Efron 2011; Karras et al. 2022, eq. 3) ``eps = -sigma grad log p_sigma(xbar)``
with ``p_sigma = p_0 * N(0, sigma^2 I)``, a solution of the heat equation in ``tau = sigma^2``
(``d p / d tau = Laplacian(p) / 2``). For a smooth data density the score is therefore smooth in
``tau``, the probability-flow ODE ``d xbar / d tau = -grad log p_tau(xbar) / 2`` is a smooth ODE in
``tau`` (Song et al. 2021, eq. 13, in the variable ``sigma^2``), and along a solution

    xbar(sigma) = x0 + b1 sigma^2 + b2 sigma^4 + ...,
    D(sigma) = xbar - sigma d xbar / d sigma = x0 - b1 sigma^2 - 3 b2 sigma^4 + ...

(``D = x0_hat(xbar(sigma), sigma)``, no odd powers). Three last steps from the level ``sigma_b``
(the last before 0) remove the ``sigma^2`` term (:func:`floor_free_step`):

* ``"extrapolate"``: Richardson extrapolation in ``sigma^2`` of the x0 predictions at the last two
  grid levels ``sigma_a > sigma_b``, ``x0 = D_b + (D_b - D_a) sigma_b^2 / (sigma_a^2 - sigma_b^2)``
  (error ``O(sigma_a^2 sigma_b^2)``; no extra evaluation);
* ``"euler_sigma2"``: one Euler step in ``tau = sigma^2`` from ``sigma_b`` to 0,
  ``x0 = (xbar_b + D_b) / 2`` (error ``b2 sigma_b^4``; no extra evaluation, no history);
* ``"trapezoid"``: the trapezoidal rule in ``sigma`` with the Euler predictor (Heun's step, which
  EDM's Algorithm 1 skips on its last step): ``x0 = D_b + sigma_b (eps_b - eps(D_b, 0)) / 2``; one
  extra evaluation at ``sigma = 0``, so only where the model is defined there
  (``model.defined_at_zero``: exact analytic models). For an exact model ``eps(x, 0) = 0`` and it
  equals ``"euler_sigma2"``.

``"jump"`` (the default) is the last step as it always was: the DDIM step above, or the stepper's
own update where it handles ``sigma = 0`` itself. ``"auto"`` is the rule of :func:`_auto`: the
floor-free step where it is free and the solver's own last step would be the jump.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..models import Prediction
from .ddim import ddim_update

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run

__all__ = ["Boundary", "classify", "boundary_step", "check_direction", "AdaptivePlan", "adaptive_interval",
           "LAST_STEPS", "resolve_last_step", "floor_free_step", "extrapolate_x0"]

#: the values of every solver's ``last_step`` option
LAST_STEPS = ("auto", "jump", "extrapolate", "euler_sigma2", "trapezoid")


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


# ------------------------------------------------------------------------------------------ the last step
def resolve_last_step(stepper: Any, model: Any, grid: Sequence[float], strict: bool = True) -> Optional[str]:
    """The last step this call takes: ``None`` when the grid does not end at ``sigma = 0`` (decreasing),
    else ``"jump"``, ``"extrapolate"``, ``"euler_sigma2"``, ``"trapezoid"`` or ``"auto"`` (a fixed
    grid's driver decides after the solver's own last step, see :func:`_auto`). Resolves ``"auto"``
    and refuses (:class:`~flowode.solvers.SolverError`, naming the option, the value and the fix) a
    value not in :data:`LAST_STEPS` and a choice this call cannot take; ``strict=False`` (the dry run
    that counts evaluations, on trial grids) returns a step of the same cost instead of refusing."""
    from .base import SolverError

    mode = getattr(stepper, "last_step", "auto")
    if not isinstance(mode, str) or mode not in LAST_STEPS:
        raise SolverError(f"`last_step` of {stepper.name!r} must be one of {', '.join(map(repr, LAST_STEPS))}, "
                          f"got {mode!r}.")
    if len(grid) < 2 or grid[-1] != 0.0 or not grid[0] > grid[-1] or math.isinf(grid[-2]):
        return None  # no step to 0 from a finite level: nothing to choose (an encode, a grid ending above 0)
    if mode == "auto":
        return _auto(stepper, grid)
    if mode == "jump":
        return mode
    if not strict:
        return "jump" if stepper.stochastic or mode == "auto" else "euler_sigma2" if mode == "extrapolate" else mode
    if stepper.stochastic:
        raise SolverError(
            f"`last_step`={mode!r} is a step of the probability-flow ODE; solver {stepper.name!r} is stochastic and "
            "its last step is the posterior mean (the jump). Use last_step='jump' (or 'auto') with a stochastic "
            "solver, or a deterministic solver for the floor-free last step."
        )
    if mode == "extrapolate" and (stepper.adaptive or len(grid) < 3 or math.isinf(grid[-3])):
        why = ("an adaptive solver keeps no prediction at a grid level before sigma_min" if stepper.adaptive
               else f"the grid {list(grid)} has no finite level before {grid[-2]:.6g}")
        raise SolverError(
            f"`last_step`='extrapolate' needs the x0 predictions at the last two levels before sigma = 0, and {why}. "
            "Use last_step='euler_sigma2' (also free: one Euler step in sigma^2 from the last level) or 'jump'."
        )
    if mode == "trapezoid" and not getattr(model, "defined_at_zero", False):
        raise SolverError(
            f"`last_step`='trapezoid' evaluates the model at sigma = 0, where this {model.prediction} network is not "
            f"defined (it was trained on sigma in [{model.schedule.sigma_min:.4g}, {model.schedule.sigma_max:.4g}]; "
            "only models with defined_at_zero=True, such as flowode.analytic's exact models, can be evaluated "
            "there). Use last_step='extrapolate' or 'euler_sigma2' (both free, no evaluation at 0)."
        )
    return mode


def _auto(stepper: Any, grid: Sequence[float]) -> str:
    """The rule of ``last_step="auto"`` (docs/grids.md, "The last step"; measured in
    benchmarks/sections/last_step.md): stochastic solvers jump (their last step is the posterior
    mean); adaptive solvers end with ``"euler_sigma2"`` (their last step always starts at
    ``sigma_min``, where the expansion holds); a fixed grid with a finite level before the last one
    gets ``"auto"``, which the driver resolves per call: ``"extrapolate"`` where the last step is
    the jump itself (the driver's DDIM step, or a solver's own update that returns the denoised
    estimate bitwise, as DDIM's and UniPC's do), the solver's own update where it is anything else
    (PLMS, iPNDM, Adams-Bashforth and DEIS ``basis="rho"`` integrate a polynomial to 0)."""
    if stepper.stochastic:
        return "jump"
    if stepper.adaptive:
        return "euler_sigma2"
    if len(grid) < 3 or math.isinf(grid[-3]):
        return "jump"
    return "auto"


def extrapolate_x0(d_b: Tensor, sigma_b: float, d_a: Tensor, sigma_a: float) -> Tensor:
    """Richardson extrapolation in ``sigma^2`` of the x0 predictions ``d_a`` at ``sigma_a`` and ``d_b`` at
    ``sigma_b < sigma_a``: ``d_b + (d_b - d_a) sigma_b^2 / (sigma_a^2 - sigma_b^2)`` (the one copy)."""
    w = sigma_b * sigma_b / (sigma_a * sigma_a - sigma_b * sigma_b)
    return torch.add(d_b, d_b - d_a, alpha=w)


def floor_free_step(run: "Run", x: Tensor, sigma: float, mode: str,
                    previous: Optional[tuple[float, Prediction]] = None) -> tuple[Tensor, Prediction]:
    """The last step from ``(x, sigma)`` to ``sigma = 0`` by ``mode`` (``"extrapolate"``, needing
    ``previous = (sigma_a, prediction at the previous grid level)``; ``"euler_sigma2"``;
    ``"trapezoid"``, one more evaluation at 0). Returns the state at 0 and the prediction at ``sigma``."""
    pred = run.predict(x, sigma)
    d_b = pred.x0
    if mode == "extrapolate":
        if previous is None:
            raise ValueError("last_step='extrapolate' needs the prediction at the previous level.")
        return extrapolate_x0(d_b, sigma, previous[1].x0, previous[0]), pred
    if mode == "euler_sigma2":
        return 0.5 * (x / run.alpha(sigma) + d_b), pred
    if mode == "trapezoid":
        eps_0 = run.predict(d_b, 0.0).eps
        return torch.add(d_b, pred.eps - eps_0, alpha=0.5 * sigma), pred
    raise ValueError(f"unknown floor-free last step {mode!r}")
