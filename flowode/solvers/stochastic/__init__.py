"""Stochastic samplers of the reverse SDE, as steppers (docs/stochastic.md).

Every one works in ``xbar = x / alpha`` and the noise level ``sigma`` only (``run.alpha``,
``run.predict``), so it runs on every schedule; its noise comes from ``run.brownian`` (one Brownian
path per sample under ``seed=``) or ``run.randn_like``. Importing the package registers
``euler_maruyama``, ``euler_ancestral``, ``edm_stochastic``, ``dpm_solver++_2m_sde`` and
``dpm_solver++_sde`` (``ddpm`` and ``ddim`` with ``eta > 0`` live in :mod:`flowode.solvers.ddim`).
"""

from .ancestral import EulerAncestral
from .dpmpp_sde import DPMSolverPP2MSDE, DPMSolverPPSDE
from .edm import EDMStochastic
from .euler_maruyama import EulerMaruyama

__all__ = ["EulerMaruyama", "EulerAncestral", "EDMStochastic", "DPMSolverPP2MSDE", "DPMSolverPPSDE"]
