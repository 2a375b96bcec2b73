"""The solver registry: one dict from name to solver class.

``register`` is a class decorator; :func:`make` builds a solver from a name (or accepts a
:class:`~flowode.solvers.base.Stepper` instance or subclass, so users can plug in their own without editing flowode) and
rejects unknown names and unknown options with the close matches and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Union

from .base import Stepper
from .options import coerce_options

__all__ = ["SOLVERS", "ARTEFACT_SOLVERS", "register", "register_artefact", "available", "make", "get_class",
           "UnknownSolverError"]

#: registry name -> stepper class
SOLVERS: dict[str, type[Stepper]] = {}

#: name -> stepper class of solvers built from an artefact file (``learned[path=file.json]``): found by
#: :func:`get_class` / :func:`make` like any solver, but not in :data:`SOLVERS`, whose every entry runs
#: on any grid (the registry-wide tests and ``flowode solvers`` iterate it)
ARTEFACT_SOLVERS: dict[str, type[Stepper]] = {}


class UnknownSolverError(ValueError):
    """A solver name that is not registered."""


def register(cls: type[Stepper]) -> type[Stepper]:
    """Class decorator: add ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`.")
    if cls.name in SOLVERS and SOLVERS[cls.name] is not cls:
        raise ValueError(f"solver name {cls.name!r} is registered twice.")
    SOLVERS[cls.name] = cls
    _check_options_on_init(cls)
    return cls


def _check_options_on_init(cls: type[Stepper]) -> None:
    """Make ``cls(...)`` check its options like :func:`make` (``UniPC(corrector="False")`` is
    ``corrector=False``, ``DDIM(eta="abc")`` a :class:`SolverError` naming ``eta``)."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "_flowode_checked", False):
        return
    names = [f.name for f in dataclasses.fields(cls) if f.init and not f.kw_only]  # the positional ones, in order

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.update(zip(names, args))
        init(self, **coerce_options(type(self), kwargs))

    checked._flowode_checked = True  # type: ignore[attr-defined]
    cls.__init__ = checked  # type: ignore[method-assign]


def register_artefact(cls: type[Stepper]) -> type[Stepper]:
    """Add ``cls`` under ``cls.name`` to :data:`ARTEFACT_SOLVERS` (a solver that needs its artefact)."""
    if not cls.name or cls.name in SOLVERS:
        raise ValueError(f"artefact solver {cls.name!r} has no name or clashes with a registered solver.")
    ARTEFACT_SOLVERS[cls.name] = cls
    _check_options_on_init(cls)
    return cls


def available() -> list[str]:
    """Names of every registered solver, sorted."""
    return sorted(SOLVERS)


def get_class(name: str) -> type[Stepper]:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in SOLVERS:
        return SOLVERS[key]
    if key in ARTEFACT_SOLVERS:
        return ARTEFACT_SOLVERS[key]
    close = difflib.get_close_matches(key, SOLVERS, n=4, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownSolverError(
        f"unknown `solver` {name!r}.{hint} Registered solvers: {', '.join(available())}."
    )


def make(solver: Union[str, Stepper, type[Stepper]], **options: Any) -> Stepper:
    """Build a solver from a registry name, a class, or pass an instance through.

    Raises:
        UnknownSolverError: unknown name, listing the close ones.
        TypeError: an option the solver does not take, listing those it does.
    """
    if isinstance(solver, Stepper):
        if options:
            raise TypeError(f"options {sorted(options)} given with a solver instance; set them on the instance.")
        return solver
    cls = solver if isinstance(solver, type) and issubclass(solver, Stepper) else get_class(str(solver))
    fields = [f for f in dataclasses.fields(cls) if f.init]
    valid = [f.name for f in fields if not f.kw_only] + [f.name for f in fields if f.kw_only]  # own options first
    unknown = [k for k in options if k not in valid]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, valid, n=2, cutoff=0.6)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"solver {cls.name!r} got unknown option(s) {', '.join(parts)}; it takes "
            f"{', '.join(valid) if valid else 'no options'}."
        )
    return cls(**coerce_options(cls, options))
