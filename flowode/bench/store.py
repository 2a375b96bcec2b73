"""The results file: one JSON object per line, appended atomically, read back skipping torn lines.

Each record is appended with a single ``os.write`` on an ``O_APPEND`` descriptor followed by
``fsync``, so a killed run leaves only complete lines. A torn last line (power loss, a full disk)
is never glued to the next record: an append to a file that does not end in a newline starts a
fresh line first. :func:`read_results` returns the records and the numbers of the lines it
skipped (torn or not JSON objects); a repeated key keeps its latest record (a cell rerun with
``--retry-failed`` replaces the failed one).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Union

__all__ = ["append_record", "load_results", "read_results"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def append_record(path: Union[str, Path], record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single ``os.write`` on an ``O_APPEND`` descriptor, then
    ``fsync``; when the file does not end in a newline (a torn last line) the write starts with one.
    Non-finite floats become ``null`` (strict JSON)."""
    line = (json.dumps(_clean(record), sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(str(path), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover - a full disk
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_results(path: Union[str, Path]) -> tuple[list[dict[str, Any]], list[int]]:
    """``(records, skipped)``: the records of a results file (a repeated key keeps its latest record,
    at the place of its first) and the 1-based numbers of the non-blank lines that are not complete
    JSON objects (a torn line, a foreign file)."""
    p = Path(path)
    if not p.exists():
        return [], []
    out: list[dict[str, Any]] = []
    where: dict[Any, int] = {}
    skipped: list[int] = []
    for no, raw in enumerate(p.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped.append(no)
            continue
        if not isinstance(rec, dict):
            skipped.append(no)
            continue
        key = rec.get("key")
        if key is not None and key in where:
            out[where[key]] = rec
            continue
        if key is not None:
            where[key] = len(out)
        out.append(rec)
    return out, skipped


def load_results(path: Union[str, Path]) -> list[dict[str, Any]]:
    """The records of a results file (:func:`read_results` without the skipped line numbers)."""
    return read_results(path)[0]
