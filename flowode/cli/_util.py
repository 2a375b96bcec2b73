"""Helpers shared by the ``flowode`` subcommands (not a subcommand itself)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional


def csv(text: Optional[str]) -> Optional[list[str]]:
    """``"a,b[x=1,y=2]"`` -> ``["a", "b[x=1,y=2]"]`` (commas inside brackets stay); ``None`` stays."""
    if text is None:
        return None
    from ..bench import split_list

    return split_list(text)


def _numbers(text: Optional[str], name: str, kind: type, what: str) -> Optional[list[Any]]:
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"`{name}` must be comma-separated {what}; got {text!r}.") from None


def ints(text: Optional[str], name: str) -> Optional[list[int]]:
    return _numbers(text, name, int, "integers, e.g. 5,10,20")


def floats(text: Optional[str], name: str) -> Optional[list[float]]:
    return _numbers(text, name, float, "numbers, e.g. 1e-3,1e-4")


def load_config(path: str) -> dict[str, Any]:
    """A benchmark grid from a ``.toml`` or ``.json`` file (keys as the ``flowode bench`` flags:
    problems, solvers, nfe, spacings, seeds, samples, tolerances, device, repeats, out, formats)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"`--config` file {path!r} does not exist.")
    if p.suffix.lower() == ".toml":
        try:
            import tomllib  # Python >= 3.11
        except ImportError:  # pragma: no cover - Python 3.10
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ValueError("reading a .toml `--config` on Python 3.10 needs `pip install tomli`; "
                                 "or use a .json file.") from None
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"`--config` {path!r} is not valid TOML ({exc}).") from None
    elif p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"`--config` {path!r} is not valid JSON ({exc}).") from None
    else:
        raise ValueError(f"`--config` {path!r}: use a .toml or .json file.")
    if not isinstance(data, dict):
        raise ValueError(f"`--config` {path!r} must hold a table / object of settings.")
    if isinstance(data.get("bench"), dict):  # allow a [bench] table
        data = data["bench"]
    aliases = {"problem": "problems", "solver": "solvers", "spacing": "spacings", "seed": "seeds"}
    return {aliases.get(k, k): v for k, v in data.items()}


def out_dir(path: str, flag: str = "--out") -> Path:
    """``path`` as an output folder, created now: a ``ValueError`` naming ``flag`` when it is an
    existing file or cannot be created or written (checked before any work is done)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"`{flag}` {path!r} is an existing file, not a folder; give a folder path "
                         "(it is created if missing).")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"`{flag}` {path!r}: cannot create the folder ({exc.strerror or exc}); "
                         "choose a writable location.") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"`{flag}` {path!r} is not writable; choose a writable location.")
    return p


def out_file(path: str, flag: str = "--out") -> Path:
    """``path`` as an output file whose folder is created now (see :func:`out_dir`); a
    ``ValueError`` when it names an existing folder."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"`{flag}` {path!r} is a folder; give a file name, e.g. {str(p / 'samples.npy')!r}.")
    try:
        out_dir(str(p.parent), flag)
    except ValueError as exc:
        raise ValueError(f"`{flag}` {path!r}: its folder {str(p.parent)!r} cannot hold it: "
                         f"{str(exc).split(' ', 2)[2]}") from None
    return p
