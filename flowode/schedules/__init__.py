"""Noise schedules and the maps between native time ``t``, ``sigma`` and ``lambda``.

* :mod:`.base` -- the contract every layer relies on (:class:`Schedule`) and ``sigma <-> lambda``;
* :mod:`.vp` -- variance preserving: discrete DDPM schedules and the continuous VP-SDE ones;
* :mod:`.ve` -- variance exploding (``alpha = 1``): geometric VE and EDM.
"""

from .base import Schedule, lambda_to_sigma, sigma_to_lambda
from .ve import EDMSchedule, VESchedule
from .vp import CosineVPSchedule, DiscreteVPSchedule, LinearVPSchedule, VPSchedule, rescale_zero_terminal_snr

__all__ = [
    "Schedule", "VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule", "VESchedule",
    "EDMSchedule", "sigma_to_lambda", "lambda_to_sigma", "rescale_zero_terminal_snr",
]
