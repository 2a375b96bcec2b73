"""The one driver's public face: ``integrate(model, x, sigmas, solver=...) -> Solution``.

``sample``, ``encode`` and ``decode`` are thin names over it: they resolve a grid with
:func:`~flowode.grids.resolve_grid` and call :func:`integrate`. Encoding uses exactly the reversed
decode grid, so ``decode(encode(x))`` visits the same ``(sigma_i, sigma_{i+1})`` pairs in both
directions. The loops themselves are in :mod:`flowode.driver`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ._warnings import warn
from .driver import DEFAULT_CHECK_INTERVAL, GradPlan, Hooks, adaptive_loop, fixed_loop
from .grids import check_grid, resolve_grid, split_grid_options
from .models import EpsilonModel
from .noise import NoiseSource, make_noise
from .recording import Recorder, SaveAt, StepEvent
from .solvers.base import AdaptiveStepper, SolverError, Stepper
from .solvers.boundary import check_direction
from .solvers.registry import make
from .solvers.run import Run

__all__ = ["Solution", "integrate", "sample", "encode", "decode", "GRAD_MODES", "PriorScaleWarning"]

GridLike = Union[Tensor, Sequence[float], np.ndarray]

#: gradient modes of :func:`integrate` (``None``: no autograd graph is kept); docs/gradients.md
GRAD_MODES = (None, "autograd", "checkpoint", "truncated", "adjoint", "reversible")


@dataclass
class Solution:
    """Result of :func:`integrate`.

    Attributes:
        x: final state, model coordinates, same shape / dtype / device as the input.
        nfe: exact number of model evaluations of this call (every network evaluation, rejected
            adaptive steps too).
        sigmas: the grid actually used (float64, CPU).
        solver: the solver's registry name.
        trajectory: the states kept by ``save_at`` (``save_trajectory=True``: every grid point; for
            adaptive solvers the grid's levels and the ends of the boundary steps -- the inner grid
            levels are output points, the accepted steps themselves are in ``stats``),
            ``(len, *x.shape)``, else ``None``.
        trajectory_sigmas: the sigma of each trajectory entry.
        denoised: the x0 prediction made at the start of each kept step, or ``None``.
        stats: solver counters, e.g. ``steps``, ``orders``, ``accepted``, ``rejected``, ``step_sizes``.
    """

    x: Tensor
    nfe: int
    sigmas: Tensor
    solver: str
    trajectory: Optional[Tensor] = None
    trajectory_sigmas: Optional[Tensor] = None
    denoised: Optional[Tensor] = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.stats.get("steps", len(self.sigmas) - 1))


def _check_state(x: Any, values: bool = True) -> None:
    """Type and shape of the input state; its values too unless the driver's windowed check will
    (a fixed-grid solve with checks on verifies the input first when a check fails)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"`x` must have a leading batch dimension of size >= 1, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got {x.dtype}.")
    # one reduction in the usual case (detached: no autograd warning when x requires grad)
    if values and not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or Inf.")


class PriorScaleWarning(UserWarning):
    """The state a sampling run starts from is far off the scale of the schedule's prior there."""


#: a start at sigma >= this is noise-dominated: its scale is the prior's whatever the data
PRIOR_CHECK_SIGMA = 10.0
#: warn when the start state's RMS is off the prior's standard deviation by more than this factor
PRIOR_CHECK_FACTOR = 4.0


def _check_start_scale(model: EpsilonModel, x: Tensor, levels: Sequence[float]) -> None:
    """Warn when a solve towards the data starts far off the prior's scale.

    At a noise level ``sigma >= 10`` the state is ``alpha x0 + std eps``, so for data of unit scale
    its RMS is ``sqrt(alpha^2 + std^2)`` (1 for VP, ``sqrt(1 + sigma^2)`` for VE / EDM); data 40
    times larger than that would be needed to move it by the factor 4 that triggers the warning,
    and no data makes it smaller. The usual mistakes are off by ``sigma_max``: an EDM / VE model
    started from ``randn`` (RMS 1 instead of 80) or a VP model from ``sigma_max * randn``. Needs at
    least 16 numbers (a smaller state has too noisy an RMS); costs one reduction of ``x``.
    """
    s0 = levels[0]
    if not s0 > levels[-1] or s0 < PRIOR_CHECK_SIGMA or x.numel() < 16:
        return
    alpha, std = model.coefficients(s0)
    prior = math.sqrt(alpha * alpha + std * std)
    rms = float(torch.linalg.vector_norm(x.detach())) / math.sqrt(x.numel())
    if not math.isfinite(rms) or not prior > 0:
        return
    if not 1 / PRIOR_CHECK_FACTOR <= rms / prior <= PRIOR_CHECK_FACTOR:
        warn(
            f"the start state `x` has RMS {rms:.4g}, but at sigma={s0:.6g} (the grid's start) the schedule's prior "
            f"has standard deviation {prior:.4g} ({rms / prior:.3g} times off). Draw the start state from the "
            f"prior: x = {prior:.4g} * torch.randn(...), or model.prior_sample(shape).",
            PriorScaleWarning,
        )


def _grad_context(grad: Optional[str]) -> contextlib.AbstractContextManager[Any]:
    if grad is None:
        return torch.no_grad()
    if grad in GRAD_MODES:
        return torch.enable_grad()
    raise ValueError(
        f"`grad` must be one of {GRAD_MODES}, got {grad!r}: None keeps no autograd graph (the default), "
        "'autograd' backpropagates through every step, 'checkpoint' recomputes segments of steps, 'truncated' "
        "backpropagates through the last `grad_steps` steps, 'adjoint' solves torchdiffeq's adjoint ODE, "
        "'reversible' points to flowode.gradients.bdia_sample / edict_sample."
    )


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def _grad_plan(grad: Optional[str], stepper: Stepper, steps: int, grad_segment: Optional[int],
               grad_steps: Optional[int], adjoint_params: Optional[Sequence[Tensor]]) -> Optional[GradPlan]:
    """Check the gradient options against the solver; the plan of the fixed-grid loop."""
    _grad_context(grad)  # an unknown mode raises here, before any solver-specific check
    if grad_segment is not None and grad != "checkpoint":
        raise ValueError(f"`grad_segment` is an option of grad='checkpoint', got grad={grad!r}.")
    if grad_steps is not None and grad != "truncated":
        raise ValueError(f"`grad_steps` is an option of grad='truncated', got grad={grad!r}.")
    if adjoint_params is not None and grad != "adjoint":
        raise ValueError(f"`adjoint_params` is an option of grad='adjoint', got grad={grad!r}.")
    if grad == "reversible":
        raise SolverError(
            "grad='reversible' needs an exactly invertible sampler, which integrate's solvers are not: use "
            "flowode.gradients.bdia_sample(model, z, sigmas, grad='reversible', params=...) or edict_sample(...) "
            "(constant-memory gradients by running BDIA's / EDICT's exact inverse backwards)."
        )
    if grad in ("checkpoint", "truncated") and stepper.adaptive:
        raise SolverError(f"grad={grad!r} works on fixed grids; solver {stepper.name!r} is adaptive. Use "
                          "grad='autograd', or grad='adjoint' with a torchdiffeq solver ('dopri5').")
    if grad == "adjoint":
        from .solvers.external.torchdiffeq import TorchdiffeqSolver

        if not isinstance(stepper, TorchdiffeqSolver):
            raise SolverError(f"grad='adjoint' runs torchdiffeq's odeint_adjoint: use a torchdiffeq solver "
                              f"('dopri5', 'bosh3', 'adaptive_heun', 'dopri8'), not {stepper.name!r}.")
        if adjoint_params is None:
            raise ValueError(
                "grad='adjoint' needs `adjoint_params`: the tensors to differentiate besides the start state (e.g. "
                "tuple(net.parameters()), a guidance-scale tensor), or () for the start state only. torchdiffeq "
                "silently returns zero gradients for parameters it is not given."
            )
        for p in adjoint_params:
            if not isinstance(p, Tensor):
                raise TypeError(f"`adjoint_params` must hold tensors, got {type(p).__name__}.")
    if grad == "checkpoint":
        seg = math.ceil(math.sqrt(steps)) if grad_segment is None else _positive("grad_segment", grad_segment)
        return GradPlan(segment=seg)
    if grad == "truncated":
        if grad_steps is None:
            raise ValueError("grad='truncated' needs `grad_steps`: K, the number of last steps to backpropagate "
                             "through (DRaFT-K).")
        return GradPlan(truncate=_positive("grad_steps", grad_steps))
    return None


@contextlib.contextmanager
def _progress(progress: Any, total: Optional[int], name: str) -> Iterator[Any]:
    """A tqdm bar for ``progress=True``, a caller's own bar object (``update``/``close``) as is."""
    if progress is None or progress is False:
        yield None
        return
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=name, unit="step", leave=False)
        try:
            yield bar
        finally:
            bar.close()
        return
    if not callable(getattr(progress, "update", None)):
        raise TypeError(f"`progress` must be a bool or a bar with an update(n) method, got {type(progress).__name__}.")
    yield progress


def integrate(
    model: EpsilonModel,
    x: Tensor,
    sigmas: GridLike,
    solver: Union[str, Stepper, type] = "ddim",
    *,
    save_at: SaveAt = None,
    save_trajectory: bool = False,
    save_to: Union[None, str, "os.PathLike[str]"] = None,
    generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None,
    seed: Optional[int] = None,
    noise: Optional[NoiseSource] = None,
    progress: Any = False,
    callback: Optional[Callable[[StepEvent], Any]] = None,
    grad: Optional[str] = None,
    grad_segment: Optional[int] = None,
    grad_steps: Optional[int] = None,
    adjoint_params: Optional[Sequence[Tensor]] = None,
    check_interval: int = DEFAULT_CHECK_INTERVAL,
    check_prior: bool = True,
    **options: Any,
) -> Solution:
    """Integrate the probability-flow ODE (or a stochastic sampler) of ``model`` along ``sigmas``.

    Args:
        model: an :class:`~flowode.models.EpsilonModel` (or subclass).
        x: state at ``sigmas[0]`` in the model's coordinates (``x``, not ``xbar``), batch first.
        sigmas: 1-D grid of noise levels, strictly decreasing (sample / decode) or increasing
            (encode); may end (or start) at 0. Validated by :func:`~flowode.grids.check_grid`.
            For adaptive solvers its ends bound the integration and its inner levels are outputs.
        solver: a registered name (``flowode.solvers.available()``), a stepper class or instance.
        save_at: which states to keep (:mod:`flowode.recording`): ``None`` (default), ``"steps"``
            or a sequence of noise levels.
        save_trajectory: the same as ``save_at="steps"``.
        save_to: a directory: stream what ``save_at`` keeps to ``trajectory.npy`` / ``denoised.npy``
            there as the solve goes (at most one recorded state in memory, whatever the number of
            steps); ``Solution.trajectory`` / ``.denoised`` are then memory-mapped views of the
            files, bitwise what an in-memory solve returns (:func:`flowode.load_trajectory`). A failed
            solve removes its unfinished files.
        generator: ``torch.Generator`` used for every random draw (stochastic solvers), or a list
            of them, one per sample (as diffusers takes). A single generator's draws depend on the
            batch size; prefer ``seed``.
        seed: key every random draw by ``(seed, sample index, step)`` and give each sample one
            Brownian path (:mod:`flowode.noise`): sample ``i`` is the same at any batch size, and the
            same path at any step count.
        noise: a :class:`~flowode.noise.NoiseSource` instead (e.g. ``KeyedNoise(seed, indices=...)``
            for a shard of a larger run). At most one of ``generator``, ``seed`` and ``noise``.
        progress: ``True`` for a tqdm bar (one update per accepted step), or a bar object.
        callback: called with a :class:`~flowode.recording.StepEvent` after every accepted step.
        grad: ``None`` (default): nothing is differentiable and no autograd graph is kept, even for
            networks whose parameters require grad; ``"autograd"``: backpropagate through the steps;
            ``"checkpoint"``: the same gradient, recomputing segments of ``grad_segment`` steps in the
            backward pass (default ``ceil(sqrt(steps))``: memory ``O(sqrt(steps))``; fixed grids);
            ``"truncated"``: backpropagate through the last ``grad_steps`` steps only (DRaFT-K; fixed
            grids); ``"adjoint"``: torchdiffeq's ``odeint_adjoint`` for the adaptive interval of a
            torchdiffeq solver, differentiating the start state and ``adjoint_params`` (required:
            torchdiffeq silently gives zero gradients for tensors it is not given). docs/gradients.md.
        grad_segment, grad_steps, adjoint_params: the options of those modes.
        check_interval: steps between NaN / Inf checks of the state (fixed-step solvers; the last
            step is always checked, and a failed check replays the solve with every network output
            checked to name the exact step). ``1`` checks every network output as it comes and the
            state after every step (exact also for a network that is not deterministic); a model
            with ``clip_x0`` or ``dynamic_threshold`` always has its outputs checked per call (the
            clamp would turn an Inf output into a finite state). Adaptive solvers check every
            output. ``EpsilonModel(check_finite=False)`` turns off the checks of network outputs
            and of the state (the input ``x`` is still checked once).
        check_prior: warn (:class:`PriorScaleWarning`) when a solve towards the data starts at
            ``sigma >= 10`` from a state whose RMS is more than 4 times off the prior's standard
            deviation there (an EDM model from ``randn``, a VP model from ``sigma_max * randn``).
            ``False`` for a start state that is not a prior draw (a latent from an encode).
        **options: the solver's options (e.g. ``eta=0.5``, ``coordinates="lambda"``, ``rtol=1e-5``).

    Returns:
        :class:`Solution`.

    Raises:
        GridError: bad grid; UnknownSolverError: unknown solver name; TypeError: unknown option;
        SolverError: a solver that cannot run on this grid; NetworkOutputError: NaN/Inf or a wrong
        shape from the network (names the step and sigma); MaxNFEError: an adaptive budget ran out.
    """
    if not isinstance(model, EpsilonModel):
        raise TypeError(
            f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}; wrap your network "
            "with flowode.EpsilonModel(fn, schedule)."
        )
    _check_state(x, values=False)
    if isinstance(check_interval, bool) or not isinstance(check_interval, int) or check_interval < 1:
        raise ValueError(f"`check_interval` must be a positive integer (steps between checks), got {check_interval!r}.")
    grid = check_grid(sigmas, model.schedule)
    stepper = make(solver, **options)
    plan = _grad_plan(grad, stepper, len(grid) - 1, grad_segment, grad_steps, adjoint_params)
    if grad is not None and not stepper.differentiable:
        raise SolverError(
            f"solver {stepper.name!r} cannot be differentiated (`grad`={grad!r}): its state goes through NumPy, so "
            "autograd would see only the boundary steps. Use a torch solver, e.g. 'dopri5' or 'dp45'."
        )
    if stepper.adaptive or not model.check_finite or check_interval == 1:
        _check_state(x)
    levels = [float(v) for v in grid.tolist()]
    # a model that clamps x0 maps an Inf network output to a finite state: check its outputs per call
    strict = check_interval == 1 or model.clip_x0 is not None or model.dynamic_threshold is not None
    source = make_noise(seed, generator, noise, batch=int(x.shape[0]))
    run = Run(model, levels, generator=generator if isinstance(generator, torch.Generator) else None,
              check_calls=strict, noise=source)
    if grad == "adjoint":
        run.adjoint_params = tuple(adjoint_params or ())
    stepper.check(run)
    stepper.check_warmup(len(levels) - 1)
    if check_prior:
        _check_start_scale(model, x, levels)
    check_direction(levels, stepper.name)
    recorder = Recorder("steps" if save_trajectory and save_at is None else save_at, save_to)
    if not stepper.adaptive:
        recorder.check_levels(levels)
    with _grad_context(grad), _progress(progress, None if stepper.adaptive else len(levels) - 1, stepper.name) as bar:
        hooks = Hooks(recorder, bar, callback)
        # the solve works on its own copy: a network that writes into its input (caught at that call,
        # NetworkOutputError) must not reach the caller's tensor; one copy of the state per call
        # (under the grad mode: with grad=None the copy keeps no graph either)
        x = x.clone()
        try:
            if isinstance(stepper, AdaptiveStepper):
                out, stats = adaptive_loop(run, stepper, x, hooks)
            else:
                out, stats = fixed_loop(run, stepper, x, hooks, check_interval, plan)
        except BaseException as exc:
            recorder.discard()
            # a step coefficient the state's dtype cannot hold (take_step names the step)
            if not isinstance(exc, RuntimeError) or "without overflow" not in str(exc):
                raise
            raise SolverError(
                f"solver {stepper.name!r} needs a coefficient that a {str(x.dtype).replace('torch.', '')} state cannot "
                f"hold ({exc}). Integrate a float32 state (pass `x` as x.float()), or take more, smaller steps."
            ) from None
    trajectory, traj_sigmas, denoised = recorder.result()
    return Solution(x=out, nfe=run.nfe, sigmas=grid, solver=stepper.name, trajectory=trajectory,
                    trajectory_sigmas=traj_sigmas, denoised=denoised, stats={"steps": len(levels) - 1, **stats})


#: the keyword-only options of :func:`integrate` (everything else goes to the solver or the grid)
RUN_KEYWORDS: tuple[str, ...] = tuple(
    name for name, p in inspect.signature(integrate).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)


def _route(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(grid keywords, integrate keywords, solver options)``."""
    grid, rest = split_grid_options(options)
    run = {k: v for k, v in rest.items() if k in RUN_KEYWORDS}
    return grid, run, {k: v for k, v in rest.items() if k not in RUN_KEYWORDS}


def sample(
    model: EpsilonModel, x_T: Tensor, steps: Optional[int] = None, *, nfe: Optional[int] = None,
    solver: Union[str, Stepper] = "ddim", spacing: Optional[str] = None, **options: Any,
) -> Solution:
    """Sample from noise: integrate from ``sigma_max`` to 0 on a :func:`~flowode.sigma_grid`.

    Give ``steps`` or an evaluation budget ``nfe`` (the largest step count with ``sol.nfe <= nfe``).
    Grid keywords (:data:`~flowode.grids.GRID_KEYWORDS`: ``final``, ``sigma_min``, ``sigma_max``,
    ``rho``, ``offset``) go to the grid, :func:`integrate`'s keywords to it, the rest to the solver.
    """
    grid_kwargs, run, opts = _route(dict(options))
    stepper = make(solver, **opts)
    if (steps is None) == (nfe is None):
        raise ValueError("give exactly one of `steps` and `nfe`.")
    grid = resolve_grid(model.schedule, stepper, steps=steps, nfe=nfe, spacing=spacing, **grid_kwargs)
    return integrate(model, x_T, grid, stepper, **run)


def decode(model: EpsilonModel, z: Tensor, steps: Optional[int] = None, **kwargs: Any) -> Solution:
    """Decode a latent at ``sigma_max`` to data; the same as :func:`sample`."""
    return sample(model, z, steps, **kwargs)


def encode(model: EpsilonModel, x0: Tensor, steps: Optional[int] = None, *, nfe: Optional[int] = None,
           solver: Union[str, Stepper] = "ddim", spacing: Optional[str] = None, **options: Any) -> Solution:
    """Encode data to a latent: integrate on the reversed decode grid, from 0 up to ``sigma_max``."""
    grid_kwargs, run, opts = _route(dict(options))
    stepper = make(solver, **opts)
    if (steps is None) == (nfe is None):
        raise ValueError("give exactly one of `steps` and `nfe`.")
    grid = resolve_grid(model.schedule, stepper, steps=steps, nfe=nfe, spacing=spacing, direction="encode",
                        **grid_kwargs)
    return integrate(model, x0, grid, stepper, **run)
