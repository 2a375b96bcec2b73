"""Gradients through samplers beyond ``integrate(grad=...)``: constant-memory reversible BDIA
(docs/gradients.md)."""

from .reversible import bdia_sample

__all__ = ["bdia_sample"]
