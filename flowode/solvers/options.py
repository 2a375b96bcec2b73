"""Solver options: every value checked against its field's declared type before the solver is built.

A solver's options are the fields of its dataclass (``bool``, ``int``, ``float``, ``str``,
``Optional[...]``, ``tuple[...]``). Values arrive from Python keywords, from JSON config files and
from the CLI's ``name[key=value]`` spec strings, so a boolean may come spelled as a string. Without
this check ``corrector="False"`` is a non-empty string, hence truthy, and the corrector silently
stays on. Here a boolean accepts ``True``/``False``, the Python and JSON spellings ``"True"``,
``"False"``, ``"true"``, ``"false"`` and the integers and strings ``1``/``0``; anything else, and a
value of the wrong kind for a number or a string, is a :class:`~flowode.solvers.SolverError`
naming the option, the value and what it takes.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import typing
from typing import Any, Optional, Union

__all__ = ["coerce_options", "parse_bool"]

_TRUE = ("True", "true", "1")
_FALSE = ("False", "false", "0")


def parse_bool(value: Any) -> bool:
    """``value`` as a boolean (Python and JSON spellings, 1/0); ``ValueError`` for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(int(value))
    if isinstance(value, str):
        if value.strip() in _TRUE:
            return True
        if value.strip() in _FALSE:
            return False
    raise ValueError(value)


def _kind(hint: Any) -> tuple[Any, bool]:
    """(the base type of a field's hint, whether ``None`` is allowed)."""
    origin = typing.get_origin(hint)
    if origin is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base, _ = _kind(args[0]) if len(args) == 1 else (None, False)
        return base, type(None) in typing.get_args(hint)
    if origin is tuple or hint is tuple:
        return tuple, False
    return hint, False


def _coerce(solver: str, key: str, value: Any, hint: Any) -> Any:
    base, optional = _kind(hint)
    if value is None and optional:
        return None
    none = " or None" if optional else ""
    if base is bool:
        try:
            return parse_bool(value)
        except ValueError:
            raise _error(solver, key, value, f"a boolean{none}: True or False (also 'true'/'false', 1/0)") from None
    if base is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(float(value))
        raise _error(solver, key, value, f"an integer{none}, e.g. {key}=2")
    if base is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
        raise _error(solver, key, value, f"a number{none}, e.g. {key}=0.5")
    if base is str:
        if isinstance(value, str):
            return value
        raise _error(solver, key, value, f"a string{none}")
    if base is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise _error(solver, key, value, f"a list or tuple{none}")
    return value  # any other declared type (a controller object): the solver checks it


def _error(solver: str, key: str, value: Any, what: str) -> Exception:
    from .base import SolverError

    return SolverError(f"option `{key}` of {solver!r} must be {what}; got {value!r} ({type(value).__name__}).")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> Optional[dict[str, Any]]:
    """``typing.get_type_hints(cls)``, once per class (it re-evaluates every annotation string: ~0.4 ms a
    call, which was the largest per-call cost of ``integrate`` on small problems)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:
        return None


def coerce_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every value checked (and booleans parsed) against ``cls``'s field types.

    Raises:
        SolverError: a value that does not fit its field, naming the option, value and type.
    """
    if not options:
        return {}
    hints = _hints(cls)
    if hints is None:  # an annotation that does not resolve (a user's class): check nothing
        return dict(options)
    fields = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    name = getattr(cls, "name", "") or cls.__name__
    return {k: (_coerce(name, k, v, hints[k]) if k in fields and k in hints else v) for k, v in options.items()}
