"""Solvers and their registry. ``flowode.solvers.available()`` lists the registered names.

Each family is one module; importing it registers its solvers.
"""

from . import adaptive as _adaptive  # noqa: F401  (registers dopri5 ... scipy_lsoda, bs23_per_sample)
from . import ddim, runge_kutta  # noqa: F401  (registers the solvers)
from . import dpm_solver as _dpm_solver  # noqa: F401  (registers the exponential integrators)
from . import multistep as _multistep  # noqa: F401  (registers plms, ipndm, deis, adams_bashforth)
from . import unipc as _unipc  # noqa: F401  (registers UniPC)
from .base import Context, OneStepSolver, Solver, SolverError
from .registry import SOLVERS, UnknownSolverError, available, get_class, make, register
from .runge_kutta import TABLEAUS, ButcherTableau, RungeKutta

__all__ = [
    "Solver", "OneStepSolver", "Context", "SolverError", "SOLVERS", "UnknownSolverError",
    "available", "get_class", "make", "register", "ButcherTableau", "RungeKutta", "TABLEAUS",
]
