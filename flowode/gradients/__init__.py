"""Gradients through samplers beyond ``integrate(grad=...)``: constant-memory reversible BDIA and
EDICT (docs/gradients.md)."""

from .reversible import bdia_sample, edict_sample

__all__ = ["bdia_sample", "edict_sample"]
