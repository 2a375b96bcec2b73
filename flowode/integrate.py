"""The one driver: ``integrate(model, x, sigmas, solver=...) -> Solution``.

``sample``, ``encode`` and ``decode`` are thin names over it: they build a grid with
:func:`~flowode.grids.sigma_grid` and call :func:`integrate`. Encoding uses exactly the reversed
decode grid, so ``decode(encode(x))`` visits the same ``(sigma_i, sigma_{i+1})`` pairs in both
directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .grids import GridError, check_grid, sigma_grid
from .models import EpsilonModel
from .solvers import Context, Solver, make
from .solvers.base import SolverError

__all__ = ["Solution", "integrate", "sample", "encode", "decode", "steps_for_nfe"]

GridLike = Union[Tensor, Sequence[float], np.ndarray]


@dataclass
class Solution:
    """Result of :func:`integrate`.

    Attributes:
        x: final state, model coordinates, same shape / dtype / device as the input.
        nfe: exact number of model evaluations (every network call, rejected adaptive steps too).
        sigmas: the grid actually used (float64, CPU).
        solver: the solver's registry name.
        trajectory: ``(len(sigmas), *x.shape)`` states at every grid point when
            ``save_trajectory=True`` (for adaptive solvers: at every accepted step), else ``None``.
        trajectory_sigmas: the sigma of each trajectory entry.
        denoised: the x0 prediction made at the start of each step, ``(steps, *x.shape)``, or ``None``.
        stats: solver counters, e.g. ``steps``, ``accepted``, ``rejected``, ``step_sizes``.
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


def _check_state(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"`x` must have a leading batch dimension of size >= 1, got shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got {x.dtype}.")
    # one reduction in the usual case (detached: no autograd warning when x requires grad)
    if not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("`x` contains NaN or Inf.")


def integrate(
    model: EpsilonModel,
    x: Tensor,
    sigmas: GridLike,
    solver: Union[str, Solver, type] = "ddim",
    *,
    save_trajectory: bool = False,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
    **options: Any,
) -> Solution:
    """Integrate the probability-flow ODE (or a stochastic sampler) of ``model`` along ``sigmas``.

    Args:
        model: an :class:`~flowode.models.EpsilonModel` (or subclass).
        x: state at ``sigmas[0]`` in the model's coordinates (``x``, not ``xbar``), batch first.
        sigmas: 1-D grid of noise levels, strictly decreasing (sample / decode) or increasing
            (encode); may end (or start) at 0. Validated by :func:`~flowode.grids.check_grid`.
        solver: a registered name (``flowode.solvers.available()``), a Solver class or instance.
        save_trajectory: keep the state at every grid point and the x0 prediction of every step.
        generator: ``torch.Generator`` used for every random draw (stochastic solvers).
        progress: show a tqdm progress bar over the steps.
        **options: the solver's options (e.g. ``eta=0.5``, ``coordinates="lambda"``, ``rtol=1e-5``).

    Returns:
        :class:`Solution`.

    Raises:
        GridError: bad grid; UnknownSolverError: unknown solver name; TypeError: unknown option;
        NetworkOutputError: NaN/Inf or wrong shape from the network (names the step and sigma).
    """
    if not isinstance(model, EpsilonModel):
        raise TypeError(
            f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}; wrap your network "
            "with flowode.EpsilonModel(fn, schedule)."
        )
    _check_state(x)
    grid = check_grid(sigmas, model.schedule)
    slv = make(solver, **options)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid) - 1, desc=slv.name, unit="step", leave=False)
    ctx = Context(model=model, sigmas=grid, generator=generator, save_trajectory=save_trajectory, progress=bar)
    slv.check(ctx)
    nfe0 = model.nfe
    try:
        out = slv.solve(ctx, x)
    finally:
        model.step_hint = None
        if bar is not None:
            bar.close()
    stats = {"steps": len(grid) - 1}
    stats.update(ctx.stats)
    sol = Solution(x=out, nfe=model.nfe - nfe0, sigmas=grid, solver=slv.name, stats=stats)
    if save_trajectory and ctx.states:
        sol.trajectory = torch.stack(ctx.states)
        sol.trajectory_sigmas = torch.tensor(ctx.state_sigmas, dtype=torch.float64)
        if ctx.denoised:
            sol.denoised = torch.stack(ctx.denoised)
    return sol


def steps_for_nfe(solver: Solver, nfe: int, grid_for_steps: Any) -> int:
    """The largest step count whose grid costs at most ``nfe`` evaluations with ``solver``.

    ``grid_for_steps(steps)`` returns the grid for a step count; the solver's :meth:`Solver.nfe`
    counts it exactly (boundary steps, warm-up of multistep methods included).
    """
    if solver.adaptive:
        raise SolverError(f"`nfe` budgets apply to fixed-step solvers; {solver.name!r} is adaptive (use `max_nfe`).")
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"`nfe` must be a positive integer, got {nfe!r}.")
    best = 0
    first_error: Optional[GridError] = None
    for steps in range(1, int(nfe) + 1):
        try:
            grid = grid_for_steps(steps)
        except GridError as exc:
            # more steps than the spacing allows (e.g. > num_timesteps, or repeated timesteps): larger
            # counts fail too, so the best feasible count found so far is the answer. Before any
            # feasible count (e.g. linspace + final="min" at steps=1), try the next one.
            if best > 0:
                break
            first_error = first_error or exc
            continue
        if solver.nfe([float(v) for v in grid.tolist()]) <= nfe:
            best = steps
    if best == 0 and first_error is not None:
        raise first_error
    if best == 0:
        cost = solver.nfe([float(v) for v in grid_for_steps(1).tolist()])
        raise ValueError(
            f"`nfe`={nfe} is too small for solver {solver.name!r}: even one step costs {cost} evaluations."
        )
    return best


def _grid(model: EpsilonModel, steps: Optional[int], nfe: Optional[int], slv: Solver, spacing: Optional[str],
          grid_kwargs: dict[str, Any]) -> Tensor:
    spacing = spacing or slv.default_spacing or model.schedule.default_spacing
    if (steps is None) == (nfe is None):
        raise ValueError("give exactly one of `steps` and `nfe`.")
    if nfe is not None:
        steps = steps_for_nfe(slv, nfe, lambda n: sigma_grid(model.schedule, n, spacing, **grid_kwargs))
    return sigma_grid(model.schedule, int(steps), spacing, **grid_kwargs)  # type: ignore[arg-type]


_GRID_KEYS = ("final", "sigma_min", "sigma_max", "rho", "offset")


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    grid_kwargs = {k: options.pop(k) for k in list(options) if k in _GRID_KEYS}
    return grid_kwargs, options


def sample(
    model: EpsilonModel, x_T: Tensor, steps: Optional[int] = None, *, nfe: Optional[int] = None,
    solver: Union[str, Solver] = "ddim", spacing: Optional[str] = None, **options: Any,
) -> Solution:
    """Sample from noise: integrate from ``sigma_max`` to 0 on a :func:`sigma_grid`.

    Give ``steps`` or an evaluation budget ``nfe`` (the largest step count with ``sol.nfe <= nfe``).
    Grid keywords (``final``, ``sigma_min``, ``sigma_max``, ``rho``, ``offset``) go to
    :func:`sigma_grid`; everything else to :func:`integrate` and the solver.
    """
    grid_kwargs, options = _split(dict(options))
    run_keys = ("save_trajectory", "generator", "progress")
    run = {k: options.pop(k) for k in list(options) if k in run_keys}
    slv = make(solver, **options)
    grid = _grid(model, steps, nfe, slv, spacing, grid_kwargs)
    return integrate(model, x_T, grid, slv, **run)


def decode(model: EpsilonModel, z: Tensor, steps: Optional[int] = None, **kwargs: Any) -> Solution:
    """Decode a latent at ``sigma_max`` to data; the same as :func:`sample`."""
    return sample(model, z, steps, **kwargs)


def encode(model: EpsilonModel, x0: Tensor, steps: Optional[int] = None, *, nfe: Optional[int] = None,
           solver: Union[str, Solver] = "ddim", spacing: Optional[str] = None, **options: Any) -> Solution:
    """Encode data to a latent: integrate on the reversed decode grid, from 0 up to ``sigma_max``."""
    grid_kwargs, options = _split(dict(options))
    run_keys = ("save_trajectory", "generator", "progress")
    run = {k: options.pop(k) for k in list(options) if k in run_keys}
    slv = make(solver, **options)
    grid = _grid(model, steps, nfe, slv, spacing, grid_kwargs)
    if math.isinf(float(grid[0])):
        raise SolverError(
            "cannot encode to sigma = inf (zero terminal SNR); stop below it with a finite `sigma_max=` and a "
            "continuous spacing (e.g. spacing='logsnr' or 'uniform_t'), or integrate on a grid of your own."
        )
    return integrate(model, x0, torch.flip(grid, [0]), slv, **run)
