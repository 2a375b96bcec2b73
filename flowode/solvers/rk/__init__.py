"""Runge-Kutta methods: tableaux (:mod:`.tableau`), the one explicit step (:mod:`.explicit`) and
the registered methods (:mod:`.methods`: euler ... rk38 fixed-step, bs23 / dp45 embedded pairs)."""

from .methods import TABLEAUS, EmbeddedRungeKutta, RungeKutta, register_tableau
from .tableau import ButcherTableau

__all__ = ["ButcherTableau", "RungeKutta", "EmbeddedRungeKutta", "register_tableau", "TABLEAUS"]
