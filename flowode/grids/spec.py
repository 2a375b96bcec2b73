"""Grids resolved once: ``(schedule, solver, steps | nfe | sigmas, spacing, grid keywords) -> grid``.

Every caller that turns "this solver with this budget" into noise levels -- ``sample`` / ``encode``
/ ``decode``, ``roundtrip``, ``bench``, ``plot``, the CLI and ``benchmarks/`` -- goes through
:func:`resolve_grid`, so a given request yields the same grid everywhere.

The grid keywords are read off :func:`~flowode.grids.sigma_grid`'s signature
(:data:`GRID_KEYWORDS`), not kept by hand.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..schedules import Schedule
from .check import GridError, check_grid
from .spacings import sigma_grid

__all__ = ["GRID_KEYWORDS", "split_grid_options", "steps_for_nfe", "resolve_grid", "DIRECTIONS"]

#: the keyword-only options of :func:`sigma_grid` (``final``, ``sigma_min``, ``sigma_max``, ``rho``, ``offset``)
GRID_KEYWORDS: tuple[str, ...] = tuple(
    name for name, p in inspect.signature(sigma_grid).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)

DIRECTIONS = ("decode", "encode")

GridLike = Union[Tensor, Sequence[float], np.ndarray]


def split_grid_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into ``(grid keywords, everything else)``."""
    grid = {k: v for k, v in options.items() if k in GRID_KEYWORDS}
    rest = {k: v for k, v in options.items() if k not in GRID_KEYWORDS}
    return grid, rest


def steps_for_nfe(solver: Any, nfe: int, grid_for_steps: Callable[[int], Tensor],
                  schedule: Optional[Schedule] = None) -> int:
    """The largest step count whose grid costs at most ``nfe`` evaluations with ``solver``.

    ``grid_for_steps(steps)`` returns the grid for a step count; :meth:`Stepper.nfe` counts it
    exactly (a dry run of the driver: boundary steps, warm-up of multistep methods included).
    Step counts the spacing cannot build (more steps than training timesteps, repeated timesteps)
    count as over the budget; before the first buildable count they are skipped. The search takes
    O(log nfe) dry runs (the cost is non-decreasing in the step count).

    Raises:
        GridError: a budget no step count fits, or one that is not a positive integer.
    """
    if getattr(solver, "adaptive", False):
        from ..solvers.base import SolverError

        raise SolverError(f"`nfe` budgets apply to fixed-step solvers; {solver.name!r} is adaptive (use `max_nfe`).")
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise GridError(f"`nfe` must be a positive integer (an evaluation budget), got {nfe!r}.")
    nfe = int(nfe)
    grids: dict[int, Optional[Tensor]] = {}
    first_error: list[GridError] = []

    def grid(steps: int) -> Optional[Tensor]:
        if steps not in grids:
            try:
                grids[steps] = grid_for_steps(steps)
            except GridError as exc:
                first_error.append(exc)
                grids[steps] = None
        return grids[steps]

    def cost(steps: int) -> Optional[int]:
        g = grid(steps)
        return None if g is None else solver.nfe([float(v) for v in g.tolist()], schedule)

    # the cost grows with the step count: skip the counts the spacing cannot build at the start
    steps = 1
    while steps <= nfe and cost(steps) is None:  # e.g. linspace + final="min" cannot build one step
        steps += 1
    if steps > nfe:
        # the same message for every count (an unknown spacing): that one
        if len(first_error) > 1 and len({str(e) for e in first_error}) == 1:
            raise first_error[0]
        raise GridError(f"`nfe`={nfe} is too small for solver {solver.name!r} on this spacing: no step count up to "
                        f"{nfe} builds a grid ({first_error[0]}). Give a larger `nfe`, or `steps`.")
    first = cost(steps)
    assert first is not None
    if first > nfe:
        raise GridError(
            f"`nfe`={nfe} is too small for solver {solver.name!r} on this spacing: even {steps} step(s) cost "
            f"{first} evaluations. Give `nfe` >= {first}, or `steps` instead of `nfe`."
        )

    def fits(n: int) -> bool:
        c = cost(n)
        return c is not None and c <= nfe

    # Search in O(log nfe) dry runs (each costs O(steps)), not a walk of one step at a time: guess
    # from the cost's slope between two small counts (the cost is affine beyond the warm-up for every
    # fixed-step solver), check the guess and its neighbour, and bisect when the guess is off.
    lo, hi = steps, nfe + 1  # fits(lo); hi: the first count known not to fit (or out of range)
    probe = min(steps + 8, nfe)
    if probe > lo and fits(probe):
        c_lo, c_probe = cost(lo), cost(probe)
        assert c_lo is not None and c_probe is not None
        slope = max((c_probe - c_lo) / (probe - lo), 1e-12)
        lo = probe
        guess = min(nfe, max(lo, int(lo + (nfe - c_probe) / slope)))
        if fits(guess):
            lo = guess
            if guess + 1 <= nfe and not fits(guess + 1):
                hi = guess + 1
        else:
            hi = guess
    elif probe > lo:
        hi = probe
    while hi - lo > 1:
        if hi == nfe + 1 and lo * 2 < hi:  # gallop up before bisecting an open range
            mid = lo * 2
        else:
            mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def resolve_grid(
    schedule: Schedule,
    solver: Any = None,
    *,
    steps: Optional[int] = None,
    nfe: Optional[int] = None,
    sigmas: Optional[GridLike] = None,
    spacing: Optional[str] = None,
    direction: str = "decode",
    **grid_kwargs: Any,
) -> Tensor:
    """The grid for one request, in the direction it is integrated.

    Exactly one of ``steps`` (step count), ``nfe`` (the largest step count whose exact cost with
    ``solver`` fits the budget) and ``sigmas`` (an explicit *decode* grid, strictly decreasing) is
    given. ``spacing`` defaults to the solver's, else the schedule's. ``direction="encode"`` returns
    the reversed decode grid, so encode and decode visit the same ``(sigma_i, sigma_{i+1})`` pairs.

    Raises:
        GridError: a bad grid or grid keyword; an explicit ``sigmas`` that is not decreasing.
        ValueError: not exactly one of ``steps`` / ``nfe`` / ``sigmas``.
        GridError: an infeasible ``nfe`` budget (a ValueError too).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}.")
    given = [k for k, v in (("steps", steps), ("nfe", nfe), ("sigmas", sigmas)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of `steps` (a step count), `nfe` (an evaluation budget) and `sigmas` (an explicit "
            f"decode grid); got {', '.join(f'`{k}`' for k in given) if given else 'none'}."
        )
    unknown = [k for k in grid_kwargs if k not in GRID_KEYWORDS]
    if unknown:
        raise TypeError(f"unknown grid keyword(s) {unknown}; the grid takes {', '.join(GRID_KEYWORDS)}.")
    own = getattr(solver, "own_grid", None)
    if own is not None and sigmas is None:  # a solver fitted to its own grid (flowode.learned)
        if grid_kwargs or spacing is not None:
            raise ValueError(f"solver {solver.name!r} runs on its own grid; it takes no `spacing` or grid keywords "
                             f"(got {sorted(grid_kwargs) + (['spacing'] if spacing else [])}).")
        g = check_grid(own(steps=steps, nfe=nfe), schedule)
        return torch.flip(g, [0]) if direction == "encode" else g
    if sigmas is not None:
        if grid_kwargs or spacing is not None:
            raise ValueError("an explicit `sigmas` grid takes no `spacing` or grid keywords "
                             f"(got {sorted(grid_kwargs) + (['spacing'] if spacing else [])}).")
        g = check_grid(sigmas, schedule)
        if float(g[0]) < float(g[-1]):
            raise GridError(
                "`sigmas` must be the *decode* grid, strictly decreasing from the latent's noise level to the "
                f"data (got an increasing grid {float(g[0]):.4g} -> {float(g[-1]):.4g}); the encode runs on its "
                "reverse. Pass `torch.flip(sigmas, [0])`."
            )
    else:
        spacing = spacing or (solver.default_spacing if solver is not None else None) or schedule.default_spacing
        if nfe is not None:
            if solver is None:
                raise ValueError("an `nfe` budget needs the solver whose cost it bounds.")
            steps = steps_for_nfe(solver, nfe, lambda n: sigma_grid(schedule, n, spacing, **grid_kwargs), schedule)
        g = sigma_grid(schedule, int(steps), spacing, **grid_kwargs)  # type: ignore[arg-type]
    return torch.flip(g, [0]) if direction == "encode" else g
