"""Noise-level grids: where a fixed-step solver evaluates the model.

* :mod:`.spacings` -- the spacings of :func:`sigma_grid` (pure functions of the schedule);
* :mod:`.check` -- :func:`check_grid`, the one validation of a grid;
* :mod:`.spec` -- :func:`resolve_grid`, the one place that turns steps / an NFE budget / an explicit
  grid plus a spacing into the grid a solver runs on.

A grid is a 1-D float64 tensor of ``sigma`` values, strictly decreasing for sampling (decode) and
strictly increasing for encoding; it may end (decode) or start (encode) at ``sigma = 0``, the clean
data. Solvers never build grids: they receive one.
"""

from .check import GridError, check_grid
from .spacings import SPACINGS, sigma_grid, sigmas_from_timesteps
from .spec import GRID_KEYWORDS, resolve_grid, split_grid_options, steps_for_nfe

__all__ = [
    "sigma_grid", "sigmas_from_timesteps", "SPACINGS", "check_grid", "GridError", "resolve_grid",
    "steps_for_nfe", "split_grid_options", "GRID_KEYWORDS",
]
