"""Invertibility: measure encode/decode round trips and invert exactly.

* :func:`roundtrip` -- encode, decode, errors, NFE, latent error, for any deterministic solver
  (naive inversion) or an exact method (``"fixed_point"``, ``"edict"``, ``"bdia"``);
* :func:`convergence` / :func:`fit_order` -- error against steps and the fitted order;
* :func:`latent_stats` -- is the latent N(0, I)?
* :func:`invertibility_report` -- the comparison table, the error-vs-NFE figure, an image grid.

See docs/inversion.md for the mathematics and the measured errors.
"""

from ._common import InversionWarning
from .coupled import BdiaLatent, EdictLatent, bdia_decode, bdia_encode, edict_decode, edict_encode
from .fixed_point import FixedPointResult, fixed_point_encode
from .latent import LatentStats, latent_stats
from .report import DEFAULT_METHODS, InvertibilityReport, invertibility_report
from .roundtrip import EXACT_METHODS, ConvergenceStudy, RoundTrip, convergence, fit_order, reference_latent, roundtrip

__all__ = [
    "roundtrip", "RoundTrip", "EXACT_METHODS", "convergence", "ConvergenceStudy", "fit_order", "reference_latent",
    "latent_stats", "LatentStats", "InversionWarning", "invertibility_report", "InvertibilityReport", "DEFAULT_METHODS",
    "fixed_point_encode", "FixedPointResult",
    "edict_encode", "edict_decode", "EdictLatent", "bdia_encode", "bdia_decode", "BdiaLatent",
]
