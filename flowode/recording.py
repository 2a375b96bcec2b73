"""What the driver keeps of a solve (``save_at``) and what it reports per step (callbacks).

``save_at`` selects the states to keep:

* ``None`` / ``False`` (default): nothing -- memory does not grow with the number of steps;
* ``"steps"`` / ``True``: the initial state and the state after every step, with the x0 prediction
  made at the start of every step (``Solution.denoised``); for adaptive solvers the state at every
  grid level and boundary-step end (the accepted steps are in ``Solution.stats``);
* a sequence of noise levels: the states at those levels (grid levels for fixed-step solvers; any
  level inside the integrated interval for adaptive ones, where the steps land on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from .models import Prediction

__all__ = ["StepEvent", "Recorder", "SaveAt"]

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

    def __init__(self, save_at: SaveAt) -> None:
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
            self.states.append(x.detach())
            self.sigmas.append(sigma)

    def revise(self, sigma: float, x: Tensor) -> None:
        """Replace the state recorded at ``sigma`` (the last one) by a corrected one."""
        if self.states and self.sigmas[-1] == sigma:
            self.states[-1] = x.detach()

    def prediction(self, sigma: float, pred: Optional[Prediction]) -> None:
        """Keep the x0 prediction made at ``sigma`` (the start of a step)."""
        if pred is not None and self.wants(sigma):
            self.denoised.append(pred.x0.detach())

    def result(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """``(trajectory, trajectory_sigmas, denoised)`` stacked, or ``None`` each."""
        if not self.states:
            return None, None, None
        traj = torch.stack(self.states)
        sig = torch.tensor(self.sigmas, dtype=torch.float64)
        den = torch.stack(self.denoised) if self.denoised else None
        return traj, sig, den
