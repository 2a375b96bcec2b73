"""Exponential integrators in log-SNR time: DPM-Solver 1/2/3 and adaptive 12/23, DPM-Solver++ 2S/2M/3M, UniPC.

:mod:`.updates` holds the update formulas as pure functions (one copy each); :mod:`.singlestep`,
:mod:`.grouped` (singlestep with the grid's levels as intermediate points),
:mod:`.multistep`, :mod:`.unipc` and :mod:`.adaptive` (an embedded pair for the driver's controller) are the
thin steppers over them.
"""

from .adaptive import DPMSolverAdaptive
from .grouped import DPMSolverGrouped
from .multistep import DPMSolverPP2M, DPMSolverPP3M
from .singlestep import DPMSolver1, DPMSolver2, DPMSolver3, DPMSolverPP2S
from .unipc import UniPC

__all__ = ["DPMSolver1", "DPMSolver2", "DPMSolver3", "DPMSolverPP2S", "DPMSolverPP2M", "DPMSolverPP3M", "UniPC",
           "DPMSolverAdaptive",
           "DPMSolverGrouped"]
