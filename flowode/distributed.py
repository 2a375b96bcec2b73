"""Sharded runs on ``torch.distributed``: which rank does which work, per-shard files, the merge.

``torchrun --nproc_per_node=N -m flowode sample ...`` (or ``bench``) starts ``N`` processes with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set; :func:`session`
reads them, joins the process group (gloo for a CPU device, NCCL for CUDA when available) and
hands the command a :class:`Dist`. Without those variables it is a one-process run (no process
group) and everything below still holds with ``world = 1``.

The sharding contract (``docs/scale-out.md``):

* **sample**: the global sample indices ``0 .. S-1`` are cut into blocks of ``block`` consecutive
  indices (:func:`blocks`), independent of the process count; block ``b`` goes to rank
  ``b mod N`` (:func:`mine`). A block is one solve of its own batch, its start noise and every
  stochastic draw keyed by ``(seed, global sample index)`` (:mod:`flowode.noise`), so a block's
  samples are the same bits whichever rank solves it, and the merged output equals a one-process
  run with the same ``block`` bitwise on the CPU. Adaptive solvers choose their steps per block:
  no rank ever waits on another's step count (the only collective is one barrier before the merge).
* **bench**: the unit is a cell (its metrics need the whole batch); cells are grouped so that an
  adaptive tolerance ladder stays on one rank (its early stop reads the earlier rungs), and groups
  go round-robin over the ranks (:func:`assign`).

Each finished block / cell is written at once to its own file (atomically: a temporary file and
``os.replace``), so a killed run resumes without redoing it; rank 0 merges after the barrier.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Iterator, Optional, Sequence, TypeVar

import torch

__all__ = ["Dist", "session", "blocks", "mine", "assign", "fingerprint", "save_atomic", "load_part"]

T = TypeVar("T")

#: how long a rank waits at the merge barrier for the slowest one
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world``, its torch ``device`` and the backend
    (``None`` for a one-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: Optional[str] = None

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that merges, prints and writes the final outputs)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op in a one-process run)."""
        if self.backend is None:
            return
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; torchrun sets it, "
                         "unset it for a one-process run.") from None


@contextlib.contextmanager
def session(device: str = "cpu") -> Iterator[Dist]:
    """The run's :class:`Dist`, from the variables ``torchrun`` sets (one process when
    ``WORLD_SIZE`` is unset or 1). A CUDA ``device`` without an index becomes ``cuda:LOCAL_RANK``
    under ``torchrun``; the backend is NCCL for CUDA (when built in), else gloo. The process group
    is destroyed on exit."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield Dist(device=device)
        return
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    import torch.distributed as dist

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        device = f"cuda:{local}"
    cuda = dev.type == "cuda"
    backend = "nccl" if cuda and dist.is_nccl_available() else "gloo"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=BARRIER_TIMEOUT)
    try:
        yield Dist(rank=rank, world=world, local_rank=local, device=device, backend=backend)
    finally:
        dist.destroy_process_group()


def blocks(total: int, size: int) -> list[range]:
    """``0 .. total-1`` cut into consecutive ranges of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"the block size must be a positive integer, got {size}.")
    return [range(s, min(s + size, total)) for s in range(0, total, size)]


def mine(items: Sequence[T], dist: Dist) -> list[tuple[int, T]]:
    """``(position, item)`` of the items this rank takes: position ``i`` goes to rank ``i mod world``."""
    return [(i, it) for i, it in enumerate(items) if i % dist.world == dist.rank]


def assign(groups: Sequence[Hashable], world: int) -> list[int]:
    """The rank of each item, given its group: items of one group share a rank; the groups, in the
    order they first appear, go round-robin over ``world`` ranks."""
    order: dict[Hashable, int] = {}
    for g in groups:
        order.setdefault(g, len(order))
    return [order[g] % world for g in groups]


def fingerprint(config: dict[str, Any]) -> str:
    """A short stable hash of a run's settings (JSON-serialisable): the name of its folder of parts,
    so a resumed run reuses only the parts of the same run."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and ``os.replace``: a killed process
    leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_part(path: Path) -> Any:
    """A part written by :func:`save_atomic`, or ``None`` when it is missing or unreadable (then
    the work is redone)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a foreign or damaged file: redo the block
        return None
