"""What the driver keeps of a solve (``save_at``) and what it reports per step (callbacks).

``save_at`` selects the states to keep:

* ``None`` / ``False`` (default): nothing -- memory does not grow with the number of steps;
* ``"steps"`` / ``True``: the initial state and the state after every step, with the x0 prediction
  made at the start of every step (``Solution.denoised``); for adaptive solvers the state at every
  grid level and boundary-step end (the accepted steps are in ``Solution.stats``);
* a sequence of noise levels: the states at those levels (grid levels for fixed-step solvers; any
  level inside the integrated interval for adaptive ones, where the steps land on them).

``save_to`` (a directory) streams what ``save_at`` keeps to disk instead of memory
(:class:`TrajectoryFiles`): each state is appended to ``trajectory.npy`` (and each x0 prediction
to ``denoised.npy``) as soon as it is final, so a solve holds at most one recorded state in memory
whatever its number of steps (the last one, which a predictor-corrector step may still revise).
``Solution.trajectory`` / ``.denoised`` are then memory-mapped views of those files
(:func:`load_trajectory`), bitwise the tensors an in-memory solve returns.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .models import Prediction

__all__ = ["StepEvent", "Recorder", "SaveAt", "TrajectoryFiles", "load_trajectory"]

SaveAt = Union[None, bool, str, Sequence[float], Tensor]


@dataclass
class StepEvent:
    """What a ``callback`` receives after every accepted step.

    Attributes:
        step: index of the step (grid step for fixed-step solvers; accepted step for adaptive ones).
        sigma, sigma_next: where the step started and ended.
        x: the state at ``sigma_next`` (model coordinates); ``None`` for the rounds of a per-sample
            adaptive solve, whose ``sigma`` / ``sigma_next`` are then ``(B,)`` tensors.
        pred: the prediction made at the start of the step (``None`` if none was made there).
        nfe: evaluations so far in this solve.
    """

    step: int
    sigma: Any
    sigma_next: Any
    x: Tensor
    pred: Optional[Prediction]
    nfe: int

    @property
    def denoised(self) -> Optional[Tensor]:
        """The x0 prediction made at the start of the step."""
        return None if self.pred is None else self.pred.x0


class Recorder:
    """Keeps the states (and x0 predictions) that ``save_at`` asks for."""

    def __init__(self, save_at: SaveAt, save_to: Union[None, str, os.PathLike[str]] = None) -> None:
        self.every = save_at is True or save_at == "steps"
        self.levels: Optional[set[float]] = None
        if not self.every and save_at is not None and save_at is not False:
            if isinstance(save_at, str):
                raise ValueError(f"`save_at` must be None, 'steps' or a sequence of noise levels, got {save_at!r}.")
            vals = save_at.detach().flatten().tolist() if isinstance(save_at, Tensor) else list(save_at)  # type: ignore[arg-type]
            levels = []
            for v in vals:
                try:
                    f = float(v)
                except (TypeError, ValueError):
                    raise ValueError(f"`save_at` levels must be numbers, got {v!r}.") from None
                if math.isnan(f) or f < 0:
                    raise ValueError(f"`save_at` levels must be noise levels >= 0, got {v!r}.")
                levels.append(f)
            self.levels = set(levels)
        self.states: list[Tensor] = []
        self.sigmas: list[float] = []
        self.denoised: list[Tensor] = []
        self.files: Optional[_Streams] = None
        if save_to is not None:
            if not isinstance(save_to, (str, os.PathLike)):
                raise TypeError(f"`save_to` must be a directory path (str or os.PathLike), got "
                                f"{type(save_to).__name__}.")
            if not self.active:
                raise ValueError(f"`save_to`={str(save_to)!r} streams what `save_at` keeps, but save_at={save_at!r} "
                                 "keeps nothing: pass save_at='steps' (or noise levels) too.")
            if Path(save_to).exists() and not Path(save_to).is_dir():
                raise ValueError(f"`save_to`={str(save_to)!r} is a file, not a directory: give a directory (it is "
                                 "created if missing); the solve writes trajectory.npy and denoised.npy into it.")
            self.files = _Streams(Path(save_to))

    @property
    def active(self) -> bool:
        return self.every or bool(self.levels)

    def wants(self, sigma: float) -> bool:
        return self.every or (self.levels is not None and sigma in self.levels)

    def check_levels(self, grid: Sequence[float], interval: Optional[tuple[float, float]] = None) -> None:
        """Refuse ``save_at`` levels a fixed-grid solve never visits (or outside an adaptive interval)."""
        if not self.levels:
            return
        if interval is None:
            missing = sorted(self.levels - set(grid))
            if missing:
                raise ValueError(
                    f"`save_at` level(s) {missing[:5]} are not levels of the grid: a fixed-step solver visits only "
                    "its grid levels. Add them to the grid, or save every step with save_at='steps'."
                )
            return
        lo, hi = min(grid[0], grid[-1]), max(grid[0], grid[-1])
        outside = sorted(v for v in self.levels if not lo <= v <= hi)
        if outside:
            raise ValueError(f"`save_at` level(s) {outside[:5]} lie outside the integrated range [{lo:.6g}, {hi:.6g}].")

    def state(self, sigma: float, x: Tensor) -> None:
        if self.wants(sigma):
            if self.files is not None and self.states:  # the previous state is final now: to disk
                self.files.states.append(self.states.pop())
            self.states.append(x.detach())
            self.sigmas.append(sigma)

    def revise(self, sigma: float, x: Tensor) -> None:
        """Replace the state recorded at ``sigma`` (the last one) by a corrected one."""
        if self.states and self.sigmas[-1] == sigma:
            self.states[-1] = x.detach()

    def prediction(self, sigma: float, pred: Optional[Prediction]) -> None:
        """Keep the x0 prediction made at ``sigma`` (the start of a step)."""
        if pred is not None and self.wants(sigma):
            if self.files is not None:
                self.files.denoised.append(pred.x0.detach())
            else:
                self.denoised.append(pred.x0.detach())

    def discard(self) -> None:
        """A failed solve: close and remove the unfinished files of ``save_to``."""
        if self.files is not None:
            self.files.discard()

    def result(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(trajectory, trajectory_sigmas, denoised)`` stacked (memory-mapped from the files of
        ``save_to``), or ``None`` each."""
        if self.files is not None:
            if self.states:
                self.files.states.append(self.states.pop())
            self.files.finish(self.sigmas)
            files = load_trajectory(self.files.root)
            return files.trajectory, files.sigmas, files.denoised
        if not self.states:
            return None, None, None
        traj = torch.stack(self.states)
        sig = torch.tensor(self.sigmas, dtype=torch.float64)
        den = torch.stack(self.denoised) if self.denoised else None
        return traj, sig, den


# ------------------------------------------------------------------------------------------ streaming
#: bytes of a streamed .npy header (magic, version, length, padded dict): fixed, so the shape can be
#: rewritten in place when the file is complete (NumPy pads its own headers the same way, to 64 bytes)
_HEADER_BYTES = 256
#: torch dtypes NumPy cannot hold: stored as raw 16-bit integers, viewed back on reading
_RAW_DTYPES = {torch.bfloat16: np.dtype("<u2")}


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """An NPY 1.0 header (the format of ``numpy.lib.format``) of exactly ``_HEADER_BYTES`` bytes."""
    body = "{'descr': %r, 'fortran_order': False, 'shape': %r, }" % (np.lib.format.dtype_to_descr(dtype), shape)
    room = _HEADER_BYTES - 10 - 1  # magic (6) + version (2) + length (2); the dict ends with a newline
    if len(body) > room:  # pragma: no cover - a 20-dimensional state
        raise ValueError(f"a state of shape {shape[1:]} has too many dimensions to stream (`save_to`).")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _HEADER_BYTES - 10) + (body.ljust(room) + "\n").encode("latin1")


class _NpyStream:
    """Appends equally shaped tensors to one ``.npy`` file: written to ``NAME.partial``, header
    rewritten with the final count and the file renamed to ``NAME`` by :meth:`finish`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.fh: Optional[IO[bytes]] = None
        self.count = 0
        self.shape: tuple[int, ...] = ()
        self.dtype: Optional[torch.dtype] = None

    def append(self, x: Tensor) -> None:
        x = x.detach().to("cpu").contiguous()
        if self.fh is None:
            self.shape, self.dtype = tuple(x.shape), x.dtype
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.partial, "wb")
            self.fh.write(b"\0" * _HEADER_BYTES)
        elif tuple(x.shape) != self.shape or x.dtype != self.dtype:  # pragma: no cover - the driver's states agree
            raise ValueError(f"`save_to`: a state of shape {tuple(x.shape)} / {x.dtype} after {self.shape} / "
                             f"{self.dtype}; streamed states must all have one shape and dtype.")
        raw = _RAW_DTYPES.get(x.dtype)
        arr = x.view(torch.int16).numpy().view(raw) if raw is not None else x.numpy()
        self.fh.write(np.ascontiguousarray(arr).tobytes())  # one state: a copy of its bytes at most
        self.count += 1

    def finish(self) -> Optional[str]:
        """Close the file; returns the torch dtype's name, or ``None`` (nothing was written)."""
        if self.fh is None:
            self.remove()
            return None
        assert self.dtype is not None
        np_dtype = _RAW_DTYPES.get(self.dtype) or torch.empty(0, dtype=self.dtype).numpy().dtype
        self.fh.seek(0)
        self.fh.write(_npy_header(np_dtype, (self.count, *self.shape)))
        self.fh.close()
        self.fh = None
        os.replace(self.partial, self.path)
        return str(self.dtype).replace("torch.", "")

    def discard(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.partial.unlink(missing_ok=True)

    def remove(self) -> None:
        self.discard()
        if self.path.exists():
            self.path.unlink()


class _Streams:
    """The files of one ``save_to`` directory."""

    def __init__(self, root: Path) -> None:  # nothing touches the disk before the first state
        self.root = root
        self.states = _NpyStream(root / "trajectory.npy")
        self.denoised = _NpyStream(root / "denoised.npy")

    def finish(self, sigmas: list[float]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "meta.json").unlink(missing_ok=True)  # an older run's files are not this one's
        dtypes = {"trajectory": self.states.finish(), "denoised": self.denoised.finish()}
        np.save(self.root / "sigmas.npy", np.asarray(sigmas, dtype=np.float64))
        meta = {"format": "flowode trajectory 1", "dtypes": dtypes, "count": len(sigmas)}
        with open(self.root / "meta.json", "w") as f:
            json.dump(meta, f)

    def discard(self) -> None:
        self.states.discard()
        self.denoised.discard()


class TrajectoryFiles(NamedTuple):
    """A trajectory streamed by ``integrate(..., save_to=DIR)`` (:func:`load_trajectory`).

    Attributes:
        trajectory: ``(len, *x.shape)`` states, memory-mapped (copy-on-write: writing to it never
            changes the file), or ``None`` if no state was kept.
        sigmas: ``(len,)`` float64, the noise level of each state.
        denoised: the x0 prediction made at the start of each kept step, memory-mapped, or ``None``.
    """

    trajectory: Optional[Tensor]
    sigmas: Optional[Tensor]
    denoised: Optional[Tensor]


def load_trajectory(path: Union[str, os.PathLike[str]]) -> TrajectoryFiles:
    """Read the directory written by ``integrate(..., save_to=path)`` back, memory-mapped: only the
    pages a caller touches are read from disk."""
    root = Path(path)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"`path`={str(path)!r} holds no finished flowode trajectory (no meta.json): "
                                "write one with flowode.integrate(..., save_at='steps', save_to=path).")
    with open(meta_path) as f:
        meta = json.load(f)

    def read(name: str) -> Optional[Tensor]:
        dtype = meta["dtypes"].get(name)
        if dtype is None:
            return None
        arr = np.load(root / f"{name}.npy", mmap_mode="c")
        t = torch.from_numpy(arr)
        return t.view(torch.int16).view(torch.bfloat16) if dtype == "bfloat16" else t

    traj = read("trajectory")
    sig = torch.from_numpy(np.load(root / "sigmas.npy")) if traj is not None else None
    return TrajectoryFiles(traj, sig, read("denoised"))
