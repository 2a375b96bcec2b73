"""Linear multistep solvers: PLMS / PNDM and iPNDM (:mod:`.pndm`, constant-step weights on the DDIM
transfer), variable-step Adams-Bashforth (:mod:`.adams`) and DEIS (:mod:`.deis`). After a warm-up
they cost one model evaluation per step; their history is the explicit solver state."""

from .adams import AdamsBashforth, lagrange_integrals
from .deis import DEIS
from .pndm import IPNDM, PLMS

__all__ = ["PLMS", "IPNDM", "AdamsBashforth", "DEIS", "lagrange_integrals"]
