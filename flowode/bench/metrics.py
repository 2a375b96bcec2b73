"""Errors against a reference, the sliced Wasserstein distance to data, and the reference cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..analytic import reference_solve
from .problems import Problem

__all__ = ["rmse", "max_err", "sliced_wasserstein", "ReferenceCache"]


def _diff(x: Tensor, ref: Tensor) -> Tensor:
    return x.detach().to(torch.float64) - ref.to(x.device, torch.float64)


def rmse(x: Tensor, ref: Tensor) -> float:
    """``sqrt(mean((x - ref)^2))`` over every entry, in float64."""
    return float(_diff(x, ref).pow(2).mean().sqrt())


def max_err(x: Tensor, ref: Tensor) -> float:
    """``max |x - ref|`` over every entry, in float64."""
    return float(_diff(x, ref).abs().max())


def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (Rabin et al. 2011; Bonneel et
    al. 2015): ``sqrt(mean_theta W2^2(theta^T a, theta^T b))`` over ``projections`` random unit
    directions, each 1-D W2 computed exactly from sorted projections."""
    a = a.reshape(a.shape[0], -1).to(torch.float64).cpu()
    b = b.reshape(b.shape[0], -1).to(torch.float64).cpu()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(a.shape)} and {tuple(b.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a @ dirs, dim=0).values
    pb = torch.sort(b @ dirs, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())



class ReferenceCache:
    """Reference solutions per ``(problem, seed, samples, sigma_from, sigma_to)`` and the problem's
    model fingerprint (when :func:`~flowode.bench.run_bench` has set ``problem.fingerprint``, so a
    changed model never reuses an old reference); in memory and, when a folder is given, as ``.pt``
    files there (so a resumed run does not redo them)."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.folder = folder
        self.mem: dict[str, tuple[Tensor, str]] = {}

    def get(self, problem: Problem, x_T: Tensor, seed: int, s0: float, s1: float) -> tuple[Tensor, str]:
        # "keyed": the start states are keyed draws (Problem.prior); caches of the older generator draws never match
        ident = [problem.name, seed, x_T.shape[0], repr(s0), repr(s1), str(problem.dtype), "keyed"]
        if problem.fingerprint is not None:
            ident.append(problem.fingerprint)
        key = json.dumps(ident)
        if key in self.mem:
            return self.mem[key]
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = self.folder / f"{digest}.pt" if self.folder is not None else None
        if path is not None and path.exists():
            try:
                ref = torch.load(path, weights_only=True)
                kind = "closed_form" if problem.exact is not None else "reference_solve"
                self.mem[key] = (ref.to(x_T.device), kind)
                return self.mem[key]
            except Exception:  # noqa: BLE001 - a torn cache file is recomputed
                pass
        if problem.exact is not None:
            ref, kind = problem.exact(x_T, s0, s1), "closed_form"
        else:
            ref = reference_solve(problem.model, x_T, s0, s1, rtol=problem.ref_rtol, atol=problem.ref_rtol)
            kind = "reference_solve"
        ref = ref.detach()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(ref.cpu(), tmp)
            os.replace(tmp, path)
        self.mem[key] = (ref, kind)
        return ref, kind

