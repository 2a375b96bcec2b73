"""Noise schedules and the maps between native time ``t``, ``sigma`` and ``lambda``.

* :mod:`.base` -- the contract every layer relies on (:class:`Schedule`) and ``sigma <-> lambda``;
* :mod:`.vp` -- variance preserving: discrete DDPM schedules and the continuous VP-SDE ones;
* :mod:`.ve` -- variance exploding (``alpha = 1``): geometric VE and EDM;
* :mod:`.flow` -- flow matching / rectified flow (``alpha = 1 - t``, ``std = t``), SD3 / Flux shifts.
"""

from .base import Schedule, lambda_to_sigma, sigma_to_lambda
from .flow import FlowMatchSchedule, flux_shift
from .ve import EDMSchedule, VESchedule
from .vp import CosineVPSchedule, DiscreteVPSchedule, LinearVPSchedule, VPSchedule, rescale_zero_terminal_snr

__all__ = [
    "Schedule", "VPSchedule", "DiscreteVPSchedule", "LinearVPSchedule", "CosineVPSchedule", "VESchedule",
    "EDMSchedule", "FlowMatchSchedule", "flux_shift", "sigma_to_lambda", "lambda_to_sigma", "rescale_zero_terminal_snr",
]
