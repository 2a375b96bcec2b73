"""External adaptive back-ends behind the driver's interface: torchdiffeq and scipy.

Each integrates the adaptive interval that the driver hands it (the boundary steps, recording,
progress, statistics and the evaluation budget stay with the driver); ``integrate_interval``
returns an :class:`~flowode.solvers.base.IntervalResult`.
"""

from .scipy import ScipySolver
from .torchdiffeq import TorchdiffeqSolver

__all__ = ["TorchdiffeqSolver", "ScipySolver"]
