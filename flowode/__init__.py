"""flowode: diffusion models as probability-flow ODEs.

Wrap a trained eps / x0 / v / score network and its noise schedule, integrate its probability-flow
ODE with fixed-step, multistep and adaptive solvers, count every network evaluation, and encode /
decode with measured round trips. See DESIGN.md section 4 and docs/ for the public contract.
"""

from . import analytic, solvers
from .analytic import Gaussian, GaussianMixture, reference_solve
from .field import ProbabilityFlow
from .grids import GridError, check_grid, sigma_grid, sigmas_from_timesteps
from .integrate import Solution, decode, encode, integrate, sample
from .models import EpsilonModel, NetworkOutputError
from .optimize import load_grid, optimize_grid, save_grid
from .schedules import (
    CosineVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    LinearVPSchedule,
    Schedule,
    VESchedule,
    VPSchedule,
)

__version__ = "0.1.0"

__all__ = [
    "analytic", "solvers",
    "Schedule", "VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule",
    "VESchedule", "EDMSchedule",
    "EpsilonModel", "NetworkOutputError", "ProbabilityFlow",
    "sigma_grid", "sigmas_from_timesteps", "check_grid", "GridError",
    "Solution", "integrate", "sample", "encode", "decode",
    "Gaussian", "GaussianMixture", "reference_solve",
    "optimize_grid", "save_grid", "load_grid",
]
