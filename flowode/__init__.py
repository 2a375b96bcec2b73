"""flowode: diffusion models as probability-flow ODEs.

Wrap a trained eps / x0 / v / score network and its noise schedule, integrate its probability-flow
ODE with fixed-step, multistep and adaptive solvers, count every network evaluation, and encode /
decode with measured round trips. See DESIGN.md section 4 and docs/ for the public contract.
"""

from . import adapters, analytic, data, nets, solvers, train
from .adapters import DenoiserModel, from_diffusers
from .analytic import Gaussian, GaussianMixture, reference_solve
from .field import ProbabilityFlow
from .grids import GridError, check_grid, sigma_grid, sigmas_from_timesteps
from .integrate import Solution, decode, encode, integrate, sample
from .models import EpsilonModel, NetworkOutputError
from .optimize import load_grid, optimize_grid, save_grid
from .pretrained import list_pretrained, load_pretrained
from .schedules import (
    CosineVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    LinearVPSchedule,
    Schedule,
    VESchedule,
    VPSchedule,
)

# isort: split
from . import invert
from .invert import RoundTrip, invertibility_report, latent_stats, roundtrip

__version__ = "0.1.0"

__all__ = [
    "analytic", "solvers",
    "Schedule", "VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule",
    "VESchedule", "EDMSchedule",
    "EpsilonModel", "NetworkOutputError", "ProbabilityFlow",
    "sigma_grid", "sigmas_from_timesteps", "check_grid", "GridError",
    "Solution", "integrate", "sample", "encode", "decode",
    "Gaussian", "GaussianMixture", "reference_solve",
    "invert", "roundtrip", "RoundTrip", "latent_stats", "invertibility_report",
    "adapters", "data", "nets", "train", "DenoiserModel", "from_diffusers", "list_pretrained", "load_pretrained",
    "optimize_grid", "save_grid", "load_grid",
]
