"""The results file: one JSON object per line, appended atomically, read back skipping torn lines.

Each record is appended with a single ``os.write`` on an ``O_APPEND`` descriptor followed by
``fsync``, so a killed run leaves only complete lines; :func:`load_results` skips a torn last line
anyway and keeps the first record of a repeated key.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Union

__all__ = ["append_record", "load_results"]


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
    ``fsync``. Non-finite floats become ``null`` (strict JSON)."""
    line = (json.dumps(_clean(record), sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover - a full disk
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def load_results(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Read a results file; lines that are not complete JSON objects (a torn last line) are skipped,
    and a repeated key keeps its first record."""
    p = Path(path)
    if not p.exists():
        return []
    out, seen = [], set()
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        key = rec.get("key")
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(rec)
    return out

