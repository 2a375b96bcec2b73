"""Log-likelihood through the probability-flow ODE: ``flowode.likelihood`` (DESIGN.md 5.4; docs/likelihood.md)."""

from .core import LikelihoodResult, gaussian_prior, likelihood
from .dequantize import bits_offset, dequantize
from .divergence import AugmentedModel, draw_probes

__all__ = ["likelihood", "LikelihoodResult", "gaussian_prior", "dequantize", "bits_offset", "AugmentedModel",
           "draw_probes"]
