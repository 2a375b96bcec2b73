"""Solvers and their registry. ``flowode.solvers.available()`` lists the registered names.

Each family is one module (or package) of steppers with no loop of their own; importing it
registers its solvers. The driver (:mod:`flowode.driver`) takes the steps.
"""

from . import ddim as _ddim  # noqa: F401  (registers ddim, ddpm)
from . import exponential as _exponential  # noqa: F401  (registers dpm_solver_1 ... unipc)
from . import external as _external  # noqa: F401  (registers dopri5 ... scipy_lsoda)
from . import multistep as _multistep  # noqa: F401  (registers plms, ipndm, adams_bashforth, deis)
from . import rk as _rk  # noqa: F401  (registers euler ... rk38, bs23, bs23_per_sample, dp45)
from . import stochastic as _stochastic  # noqa: F401  (registers euler_maruyama ... dpm_solver++_sde)
from .base import AdaptiveStepper, MaxNFEError, SolverError, Step, Stepper, WarmupWarning
from .boundary import Boundary
from .claims import OrderClaim
from .registry import SOLVERS, UnknownSolverError, available, get_class, make, register
from .rk import TABLEAUS, ButcherTableau, EmbeddedRungeKutta, RungeKutta, register_tableau
from .run import Run

__all__ = [
    "Stepper", "AdaptiveStepper", "Step", "Run", "Boundary", "SolverError", "MaxNFEError", "SOLVERS",
    "UnknownSolverError", "available", "get_class", "make", "register", "ButcherTableau", "RungeKutta",
    "EmbeddedRungeKutta", "register_tableau", "TABLEAUS", "WarmupWarning", "OrderClaim",
]
