"""flowode: diffusion models as probability-flow ODEs.

Wrap a trained eps / x0 / v / score network and its noise schedule, integrate its probability-flow
ODE with fixed-step, multistep and adaptive solvers, count every network evaluation, and encode /
decode with measured round trips. See DESIGN.md section 4 and docs/ for the public contract.
"""

from . import adapters, analytic, control, data, nets, solvers, train
from .adapters import DenoiserModel, from_diffusers
from .analytic import Gaussian, GaussianMixture, reference_solve
from .diffusers_plan import DiffusersPlan, UnsupportedScheduler, from_diffusers_scheduler
from .field import ProbabilityFlow
from .grids import GridError, check_grid, resolve_grid, sigma_grid, sigmas_from_timesteps
from .integrate import PriorScaleWarning, Solution, decode, encode, integrate, sample
from .learned import LearnedSolver, learn_solver, load_learned
from .models import EpsilonModel, NetworkOutputError
from .optimize import load_grid, optimize_grid, save_grid
from .orders import fit_order
from .pretrained import list_pretrained, load_pretrained
from .recording import StepEvent, TrajectoryFiles, load_trajectory
from .schedules import (
    CosineVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    FlowMatchSchedule,
    LinearVPSchedule,
    Schedule,
    VESchedule,
    VPSchedule,
)
from .solvers import MaxNFEError, SolverError, UnknownSolverError, WarmupWarning

# isort: split
from . import invert
from .invert import InversionWarning, RoundTrip, invertibility_report, latent_stats, roundtrip

# isort: split
from . import density, gradients
from .density import LikelihoodResult, likelihood

__version__ = "0.1.0"

__all__ = [
    # schedules, models, the field
    "Schedule", "VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule",
    "VESchedule", "EDMSchedule", "FlowMatchSchedule",
    "EpsilonModel", "DenoiserModel", "from_diffusers", "from_diffusers_scheduler", "DiffusersPlan",
    "ProbabilityFlow",
    # grids and the driver
    "sigma_grid", "sigmas_from_timesteps", "check_grid", "resolve_grid",
    "integrate", "sample", "encode", "decode", "Solution", "StepEvent", "load_trajectory", "TrajectoryFiles",
    # ground truth, inversion, grids fitted to a solver
    "Gaussian", "GaussianMixture", "reference_solve", "roundtrip", "RoundTrip", "latent_stats",
    "invertibility_report", "fit_order", "optimize_grid", "save_grid", "load_grid",
    # solvers fitted to a model and a budget
    "learn_solver", "load_learned", "LearnedSolver",
    # likelihood through the flow
    "likelihood", "LikelihoodResult",
    "list_pretrained", "load_pretrained",
    # every error and warning a user may catch
    "GridError", "SolverError", "UnknownSolverError", "MaxNFEError", "NetworkOutputError", "InversionWarning",
    "UnsupportedScheduler", "WarmupWarning", "PriorScaleWarning",
    # sub-packages
    "analytic", "solvers", "control", "invert", "density", "gradients", "adapters", "data", "nets", "train",
]
