"""The driver's loops: the one place that walks a grid or runs a step-size controller.

Everything every solver needs is written here once:

* :func:`take_step` -- one step with the boundary policy of :mod:`flowode.solvers.boundary`
  (also the step the exact inverters call);
* :func:`fixed_loop` -- the loop over a fixed grid: solver state, recording (``save_at``), the
  progress bar, the per-step callback, per-step ``info`` for ``Solution.stats`` and the NaN / Inf
  check of the state every ``check_interval`` steps; when the check fails, the solve is replayed
  from its start with every network output checked, so the error names the exact step and sigma
  (the check costs one reduction per window, not one per step, and keeps no extra buffer);
* :func:`adaptive_loop` -- boundary steps at the ends, then the adaptive interval under the PI
  controller (:func:`embedded_interval`, flowode's own tableaux) or an external back-end
  (torchdiffeq, scipy), with the same recording, progress (one update per accepted step),
  callbacks, statistics and ``max_nfe`` budget;
* :func:`count_evaluations` -- the exact cost of a grid: a dry run of :func:`fixed_loop`.

NFE is counted by the :class:`~flowode.solvers.run.Run` of the call; nothing resets a counter.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .control import FixedGrid
from .field import ProbabilityFlow
from .models import EpsilonModel, NetworkOutputError, Prediction
from .recording import Recorder, StepEvent
from .schedules import EDMSchedule, Schedule
from .solvers.base import AdaptiveStepper, EmbeddedPair, IntervalResult, MaxNFEError, SolverError, Step, Stepper
from .solvers.boundary import (
    adaptive_interval,
    boundary_step,
    classify,
    extrapolate_x0,
    floor_free_step,
    resolve_last_step,
)
from .solvers.run import BudgetExhausted, Run

__all__ = ["take_step", "fixed_loop", "GradPlan", "adaptive_loop", "embedded_interval", "count_evaluations", "Hooks",
           "DEFAULT_CHECK_INTERVAL"]

#: steps between two NaN / Inf checks of the state (the last step is always checked)
DEFAULT_CHECK_INTERVAL = 32

Callback = Callable[[StepEvent], Any]


class Hooks:
    """The optional per-step side effects of a solve."""

    __slots__ = ("recorder", "progress", "callback", "events")

    def __init__(self, recorder: Optional[Recorder] = None, progress: Any = None,
                 callback: Optional[Callback] = None) -> None:
        self.recorder = recorder if recorder is not None and recorder.active else None
        self.progress = progress
        self.callback = callback
        self.events = 0  # accepted steps so far (adaptive solves: boundary and interval steps alike)


# ------------------------------------------------------------------------------------------ one step
def take_step(run: Run, stepper: Stepper, x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
    """One step of ``stepper`` from ``sigma`` to ``sigma_next`` under the boundary policy."""
    kind = classify(sigma, sigma_next)
    try:
        if kind is not None and not stepper.native(kind):
            return _boundary_step(run, stepper, x, sigma, sigma_next, state, kind)
        return stepper.step(run, x, sigma, sigma_next, state)
    except RuntimeError as exc:  # torch refuses a scalar factor the state's dtype cannot hold
        if "without overflow" not in str(exc):
            raise
        raise SolverError(
            f"step {run.step} of solver {stepper.name!r} (sigma {sigma:.6g} -> {sigma_next:.6g}) needs a coefficient "
            f"that a {str(x.dtype).replace('torch.', '')} state cannot hold ({exc}). Integrate a float32 state "
            "(pass `x` as x.float()), or take more, smaller steps."
        ) from None


def _boundary_step(run: Run, stepper: Stepper, x: Tensor, sigma: float, sigma_next: float, state: Any,
                   kind: Any) -> Step:
    x_next, pred = boundary_step(run, x, sigma, sigma_next)
    return Step(x_next, stepper.after_boundary(run, state, kind, sigma, pred), pred, None, {"orders": 1})


def _finite(x: Tensor) -> bool:
    """One reduction in the usual case; the exact element-wise test only if the sum is not finite."""
    return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())


# ------------------------------------------------------------------------------------------ fixed grid
class GradPlan:
    """How :func:`fixed_loop` keeps the autograd graph (``integrate(grad=...)``).

    ``segment``: checkpoint every ``segment`` consecutive steps (``torch.utils.checkpoint``,
    non-reentrant): only each segment's input state is kept, and the segment is recomputed in the
    backward pass, so memory is ``O(steps / segment + segment)`` states and one segment's
    activations (``segment = ceil(sqrt(steps))`` gives ``O(sqrt(steps))``).
    ``truncate``: backpropagate through the last ``truncate`` steps only (DRaFT-K, Clark et al.
    2024, sec. 4.2); the earlier steps run under ``torch.no_grad()``."""

    __slots__ = ("segment", "truncate")

    def __init__(self, segment: Optional[int] = None, truncate: Optional[int] = None) -> None:
        self.segment, self.truncate = segment, truncate


def fixed_loop(run: Run, stepper: Stepper, x: Tensor, hooks: Optional[Hooks] = None,
               check_interval: int = DEFAULT_CHECK_INTERVAL,
               grad: Optional[GradPlan] = None, dry: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """Integrate ``x`` along ``run.grid`` with ``stepper``; returns the final state and the per-step
    statistics (:func:`_collect` of the steps' ``info``; none when only boundary steps reported).

    The NaN / Inf check looks at the state every ``check_interval`` steps (and after the last); a
    failed check replays the solve from its start with every network output checked, so the error
    names the first bad step exactly (for a deterministic network) and the check holds no extra
    state buffer. ``grad`` (:class:`GradPlan`) checkpoints segments of steps or truncates the graph;
    recomputed steps in the backward pass run no hooks and record nothing. ``dry``: a dry run that
    counts evaluations (:func:`count_evaluations`), where a ``last_step`` this grid cannot take is
    replaced by one of the same cost instead of refused."""
    hooks = hooks or Hooks()
    rec, bar, callback = hooks.recorder, hooks.progress, hooks.callback
    steps = FixedGrid(run.grid)
    n = len(steps)
    kinds = [classify(a, b) for a, b in steps.pairs]
    native = [k is None or stepper.native(k) for k in kinds]
    last = resolve_last_step(stepper, run.model, run.grid, strict=not dry)
    free = last not in (None, "jump", "auto")  # the driver takes the last step (boundary.floor_free_step)
    auto = last == "auto"  # the solver's own last step, extrapolated where it is the jump
    previous: list[Any] = [None]  # (level, prediction) of the step before the last one, for "extrapolate"
    used: list[Optional[str]] = [last]  # what "auto" became
    state = stepper.init(run)
    check = run.model.check_finite and check_interval > 0
    start = _Start(run, stepper, x) if check else None
    if rec is not None:
        rec.state(steps.levels[0], x)
    infos: list[Optional[dict[str, Any]]] = []
    flags = {"own_info": False, "since_check": 0}
    pairs = steps.pairs

    def advance(i: int, x: Tensor, state: Any, live: bool) -> tuple[Tensor, Any]:
        a, b = pairs[i]
        run.step = i
        if free and i == n - 1:
            res = _last_step(run, stepper, x, a, state, str(last), previous[0])
        elif native[i]:
            res = stepper.step(run, x, a, b, state)
        else:
            res = _boundary_step(run, stepper, x, a, b, state, kinds[i])
        if (free or auto) and i == n - 2:
            previous[0] = (a, res.pred)
        if auto and i == n - 1:
            res, used[0] = _auto_last(res, a, previous[0], native[i])
        x, state = res.x, res.state
        if not live:  # a checkpointed segment recomputed in the backward pass
            return x, state
        infos.append(res.info)
        flags["own_info"] = flags["own_info"] or (res.info is not None and kinds[i] is None)
        if rec is not None:
            if res.revised is not None:
                rec.revise(a, res.revised)
            rec.prediction(a, res.pred)
            rec.state(b, x)
        if start is not None:
            flags["since_check"] += 1
            if (flags["since_check"] >= check_interval or i == n - 1) and not _finite(x):
                start.locate(i)
            if flags["since_check"] >= check_interval:
                flags["since_check"] = 0
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(StepEvent(i, a, b, x, res.pred, run.nfe))
        del res  # its prediction may hold the previous state: free it before the next step allocates
        return x, state

    segment = grad.segment if grad is not None else None
    first_grad = 0 if grad is None or grad.truncate is None else max(n - grad.truncate, 0)
    if segment is None:
        for i in range(n):
            if i < first_grad:
                with torch.no_grad():
                    x, state = advance(i, x, state, True)
            else:
                x, state = advance(i, x, state, True)
    else:
        from torch.utils.checkpoint import checkpoint

        for lo in range(0, n, segment):
            hi = min(lo + segment, n)
            calls = [0]
            # a stochastic stepper redraws its noise when the segment is recomputed: from the same stream state
            # (torch.utils.checkpoint restores torch's global RNG only, not a caller's generator)
            rng = run.rng_state(x.device) if stepper.stochastic else None

            def run_segment(x: Tensor, state: Any, lo: int = lo, hi: int = hi, calls: list[int] = calls,
                            rng: Any = rng) -> tuple[Tensor, Any]:
                live = calls[0] == 0
                calls[0] += 1
                after = None
                if not live and rng is not None:
                    after = run.rng_state(x.device)
                    run.set_rng_state(rng, x.device)
                try:
                    for i in range(lo, hi):
                        x, state = advance(i, x, state, live)
                finally:
                    if after is not None:
                        run.set_rng_state(after, x.device)
                return x, state

            x, state = checkpoint(run_segment, x, state, use_reentrant=False)
    stats = _collect(infos) if flags["own_info"] else {}
    if last is not None:
        mode = used[0]
        stats["last_step"] = "native" if mode == "jump" and native[-1] and kinds[-1] is not None else mode
    return x, stats


def _auto_last(res: Step, sigma: float, previous: Optional[tuple[float, Optional[Prediction]]],
               own: bool) -> tuple[Step, str]:
    """``last_step="auto"`` after the solver's last step from ``sigma`` to 0 (no evaluation): where that
    step was the jump -- the driver's DDIM step, or the solver's own update returning the denoised
    estimate bitwise -- the Richardson extrapolation of the last two x0 predictions; else the step as it was."""
    pred = res.pred
    if previous is None or previous[1] is None or pred is None:
        return res, "jump"
    if own and not torch.equal(res.x, pred.x0):
        return res, "jump"  # a solver's own higher-order update to 0 (PLMS, iPNDM, Adams-Bashforth): kept
    x0 = extrapolate_x0(pred.x0, sigma, previous[1].x0, previous[0])
    return Step(x0, res.state, pred, res.revised, res.info), "extrapolate"


def _last_step(run: Run, stepper: Stepper, x: Tensor, sigma: float, state: Any, mode: str,
               previous: Optional[tuple[float, Optional[Prediction]]]) -> Step:
    """The floor-free last step to ``sigma = 0`` (:func:`~flowode.solvers.boundary.floor_free_step`)."""
    if mode == "extrapolate" and (previous is None or previous[1] is None):
        raise SolverError(f"last_step='extrapolate': solver {stepper.name!r} made no prediction at the start of the "
                          "step before the last one; use last_step='euler_sigma2'.")
    x_next, pred = floor_free_step(run, x, sigma, mode, previous)  # type: ignore[arg-type]
    return Step(x_next, state, pred, None, {"orders": 1})


def _collect(infos: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
    """Per-step ``info`` dicts -> statistics: a key whose value is ``True`` marks an event and
    becomes the list of the steps where it happened (``corrected_steps``); any other value becomes
    the list of values per step, ``None`` where a step did not report it (``orders``)."""
    keys: list[str] = []
    for d in infos:
        for k in d or {}:
            if k not in keys:
                keys.append(k)
    out: dict[str, Any] = {}
    for k in keys:
        vals = [(d or {}).get(k) for d in infos]
        if all(v is None or v is True or v is False for v in vals):
            out[k] = [i for i, v in enumerate(vals) if v is True]
        else:
            out[k] = vals
    return out


class _Start:
    """The start of a fixed-grid solve (the caller's own input tensor, no copy): where the replay
    begins when a check of the state fails."""

    __slots__ = ("run", "stepper", "x", "rng")

    def __init__(self, run: Run, stepper: Stepper, x: Tensor) -> None:
        self.run, self.stepper, self.x = run, stepper, x
        self.rng = run.rng_state(x.device) if stepper.stochastic else None

    def locate(self, last: int) -> None:
        """Replay steps ``0..last`` with every network output checked and raise the error of the
        first step whose network output or result is not finite."""
        run, grid = self.run, self.run.grid
        if not _finite(self.x):
            raise ValueError("`x` contains NaN or Inf.")
        before, run.check_calls = run.check_calls, True
        if self.rng is not None:
            run.set_rng_state(self.rng, self.x.device)
        x, state = self.x, self.stepper.init(run)
        try:
            for i in range(last + 1):
                run.step = i
                res = take_step(run, self.stepper, x, grid[i], grid[i + 1], state)  # raises NetworkOutputError
                x, state = res.x, res.state
                if not _finite(x):
                    raise SolverError(
                        f"the state became NaN/Inf at step {i} (sigma {grid[i]:.6g} -> {grid[i + 1]:.6g}) although "
                        f"every network output was finite: the solver's update overflowed ({x.dtype}). Take smaller "
                        "steps, or run the state in float64."
                    )
        finally:
            run.check_calls = before
        raise NetworkOutputError(
            f"the state became NaN/Inf by step {last} (sigma {grid[last]:.6g} -> {grid[last + 1]:.6g}), but a replay "
            "of the solve with every network output checked stayed finite: the network is not deterministic. "
            "Check every call instead with check_interval=1."
        )


# ------------------------------------------------------------------------------------------ cost
#: (stepper class, options, grid, id(schedule)) -> (evaluations, schedule): the value holds the schedule
#: so its id cannot be reused while the entry lives
_COST_CACHE: dict[tuple[Any, ...], tuple[int, Optional[Schedule]]] = {}


def count_evaluations(stepper: Stepper, grid: list[float], schedule: Optional[Schedule] = None) -> int:
    """The exact number of evaluations of ``stepper`` on ``grid``: :func:`fixed_loop` run on a
    one-number state with a stand-in model that returns zeros (memoised)."""
    key = (type(stepper), repr(stepper), tuple(grid), id(schedule))
    hit = _COST_CACHE.get(key)
    if hit is not None:
        return hit[0]
    sched = schedule if schedule is not None else _covering_schedule(grid)
    model = EpsilonModel(lambda x, t: torch.zeros_like(x), sched, prediction="x0", check_finite=False)
    model.defined_at_zero = True  # so last_step="trapezoid" (an evaluation at sigma = 0) is counted, not refused
    run = Run(model, grid, generator=torch.Generator().manual_seed(0))
    run.dry_run = True
    stepper.check(run)
    with torch.no_grad():
        fixed_loop(run, stepper, torch.zeros(1, 1, dtype=torch.float64), check_interval=0, dry=True)
    if len(_COST_CACHE) > 4096:
        _COST_CACHE.clear()
    _COST_CACHE[key] = (run.nfe, schedule)
    return run.nfe


def _covering_schedule(grid: list[float]) -> Schedule:
    finite = [v for v in grid if 0.0 < v < math.inf]
    lo = min(finite) if finite else 1e-3
    hi = max(finite) if finite else 1.0
    return EDMSchedule(lo, max(hi, 2 * lo))


# ------------------------------------------------------------------------------------------ adaptive
def adaptive_loop(run: Run, stepper: AdaptiveStepper, x: Tensor,
                  hooks: Optional[Hooks] = None) -> tuple[Tensor, dict[str, Any]]:
    """Integrate ``x`` adaptively from ``run.grid[0]`` to ``run.grid[-1]``: boundary steps at the
    ends (:func:`~flowode.solvers.boundary.adaptive_interval`), the adaptive interval in between;
    the grid's inner levels (and ``save_at`` levels) are output points."""
    hooks = hooks or Hooks()
    rec = hooks.recorder
    grid = run.grid
    plan = adaptive_interval(grid, run.sigma_min, stepper.name)
    a, b = plan.interval
    budget = stepper.max_nfe
    last = resolve_last_step(stepper, run.model, grid)
    after_cost = 0 if plan.after is None else 2 if last == "trapezoid" else 1  # evaluations of the last step
    n_boundary = int(plan.before is not None) + after_cost
    if budget is not None and budget <= n_boundary:
        raise SolverError(f"`max_nfe`={budget} leaves nothing for the adaptive part after "
                          f"{n_boundary} boundary evaluation(s).")
    run.check_calls = True
    stats: dict[str, Any] = {"coordinates": stepper.coordinates, "interval": (a, b), "boundary_steps": []}
    if rec is not None:
        rec.check_levels(grid, (grid[0], grid[-1]))
        inside = [v for v in sorted(rec.levels or ()) if v not in (grid[0], grid[-1])
                  and not min(a, b) <= v <= max(a, b)]
        if inside:
            raise ValueError(
                f"`save_at` level(s) {inside[:5]} fall inside a boundary step of this adaptive solve ({grid[0]:.6g} -> "
                f"{a:.6g} or {b:.6g} -> {grid[-1]:.6g}: one DDIM step), where no state exists; choose levels in "
                f"[{min(a, b):.6g}, {max(a, b):.6g}] or the grid's ends."
            )
        rec.state(grid[0], x)
    if plan.before is not None:
        x = _boundary(run, x, plan.before, stats, hooks, record=a != b)
    fld = run.field(stepper.coordinates)
    inner = [v for v in grid[1:-1] if (b < v < a if a > b else a < v < b)]
    if rec is not None and rec.levels:
        inner = sorted(set(inner) | {v for v in rec.levels if (b < v < a if a > b else a < v < b)}, reverse=a > b)
    outs = [v for v in inner if rec is not None and rec.wants(v)] + [b]
    if a == b:
        res = IntervalResult(fld.to_state(x, a), fld.s_of_sigma(a), [], 0, 0, [], [])
        outs = []
    else:
        run.max_nfe = None if budget is None else budget - after_cost
        nfe_before = run.nfe
        res = _interval(run, stepper, fld, x, a, b, outs, hooks)
        run.max_nfe = budget
        stats["nfe_adaptive"] = run.nfe - nfe_before
    stats.setdefault("nfe_adaptive", 0)
    stats.update({"accepted": res.accepted, "rejected": res.rejected, "step_sizes": res.step_sizes,
                  "step_sigmas": [fld.sigma_of_s(v) for v in res.step_starts], "status": res.status})
    if res.extra:
        stats.update(res.extra)
    if rec is not None:
        for v, y in zip(outs, res.outputs):
            rec.state(v, fld.from_state(y, v))
    if res.status != "ok":
        s_end = res.s_end
        sig_b = fld.sigma_of_s(s_end) if not isinstance(s_end, Tensor) else s_end
        xs = fld.from_state(res.y, sig_b)
        sig = float(sig_b.max() if a > b else sig_b.min()) if isinstance(sig_b, Tensor) else sig_b
        stats["sigma_reached"] = sig
        if stepper.on_max_nfe == "raise":
            raise MaxNFEError(
                f"solver {stepper.name!r} used its `max_nfe`={budget} evaluations at sigma={sig:.6g} "
                f"before reaching sigma={grid[-1]:.6g}; raise `max_nfe` or loosen `rtol`/`atol`. The "
                "partial state is in this exception's `.x` (at `.sigma`).", xs, sig, run.nfe, dict(stats))
        return xs, stats
    x = fld.from_state(res.y, b)
    if plan.after is not None:
        x = _boundary(run, x, plan.after, stats, hooks, record=True, mode=last)
    if last is not None:
        stats["last_step"] = last
    return x, stats


def _boundary(run: Run, x: Tensor, ends: tuple[float, float], stats: dict[str, Any], hooks: Hooks,
              record: bool, mode: Optional[str] = None) -> Tensor:
    a, b = ends
    run.step = hooks.events
    if mode is not None and mode != "jump":
        x, pred = floor_free_step(run, x, a, mode)
    else:
        x, pred = boundary_step(run, x, a, b)
    stats["boundary_steps"].append((a, b))
    if hooks.recorder is not None:
        hooks.recorder.prediction(a, pred)
        if record:
            hooks.recorder.state(b, x)
    if hooks.progress is not None:
        hooks.progress.update(1)
    if hooks.callback is not None:
        hooks.callback(StepEvent(hooks.events, a, b, x, pred, run.nfe))
    hooks.events += 1
    return x


def _interval(run: Run, stepper: AdaptiveStepper, fld: ProbabilityFlow, x: Tensor, a: float, b: float,
              outs: list[float], hooks: Hooks) -> IntervalResult:
    y0, s0, s1 = fld.to_state(x, a), fld.s_of_sigma(a), fld.s_of_sigma(b)
    outputs = [fld.s_of_sigma(v) for v in outs]
    lo, hi = min(s0, s1), max(s0, s1)

    def on_accept(sa: Any, sb: Any, y: Optional[Tensor], pred: Any = None) -> None:
        if hooks.progress is not None:
            hooks.progress.update(1)
        if hooks.callback is not None:
            sig_b = fld.sigma_of_s(sb) if not isinstance(sb, Tensor) else sb
            state = None if y is None else fld.from_state(y, sig_b)
            sig_a = fld.sigma_of_s(sa) if not isinstance(sa, Tensor) else sa
            hooks.callback(StepEvent(hooks.events, sig_a, sig_b, state, pred, run.nfe))  # type: ignore[arg-type]
        hooks.events += 1
        run.step = hooks.events  # an evaluation that fails now names the accepted steps before it

    try:
        if isinstance(stepper, EmbeddedPair):
            return embedded_interval(run, stepper, fld, y0, s0, s1, outputs, on_accept)

        def field(y: Tensor, s: float) -> Tensor:
            # steps never leave [a, b] except by round-off (t0 + c h at the last stage) or in an initial-step
            # probe: evaluate at the interval's end instead, so a network is never asked for a level outside
            return fld(y, min(max(s, lo), hi))[0]

        return stepper.integrate_interval(run, fld, y0, s0, s1, outputs, field, on_accept)  # type: ignore[attr-defined]
    except BudgetExhausted:  # pragma: no cover - back-ends return their partial state themselves
        raise SolverError(f"solver {stepper.name!r} ran out of `max_nfe` without returning a partial state.") from None


def embedded_interval(run: Run, stepper: EmbeddedPair, fld: ProbabilityFlow, y0: Tensor, s0: float,
                      s1: float, outputs: list[float],
                      on_accept: Callable[..., None]) -> IntervalResult:
    """The controller loop: attempts of the pair (``stepper.attempt``) under ``stepper.controller``, batch-wide
    or per sample (``stepper.error_norm``), landing exactly on the output points ``outputs``
    (the last is ``s1``). Per sample, the unfinished samples advance together, each at its own
    level, one batched evaluation per stage."""
    ctrl = stepper.controller
    per = stepper.per_sample
    fsal = stepper.fsal
    q = stepper.error_order + 1
    groups = y0.shape[0] if per else 1
    direction = 1.0 if s1 > s0 else -1.0
    view = (-1,) + (1,) * (y0.dim() - 1)
    stops = torch.tensor(outputs, dtype=torch.float64)

    def take(t: Tensor, idx: Tensor) -> Tensor:
        return t.index_select(0, idx.to(t.device)) if per else t

    def at(s: Tensor) -> Any:  # the field's independent variable: per-sample levels, or one float
        return s if per else float(s[0])

    def steps_of(h: Tensor) -> Any:
        return h.to(y0).view(view) if per else float(h[0])

    y = y0
    s = torch.full((groups,), s0, dtype=torch.float64)
    acc = torch.zeros(groups, dtype=torch.long)
    rej = torch.zeros(groups, dtype=torch.long)
    err_prev = torch.ones(groups, dtype=torch.float64)
    next_stop = torch.zeros(groups, dtype=torch.long)
    active = torch.ones(groups, dtype=torch.bool)
    stale = torch.zeros(groups, dtype=torch.bool)  # first stage not yet evaluated at the new point
    outs = [torch.empty_like(y0) for _ in outputs[:-1]]
    reached = 0
    sizes: list[list[float]] = [[] for _ in range(groups)]
    starts: list[list[float]] = [[] for _ in range(groups)]
    rounds = 0
    status = "ok"
    try:
        k1, p0 = fld(y, at(s))
        p1: Optional[Prediction] = None if per else p0  # the prediction there (batch mode; the DPM pair uses its eps)
        if stepper.first_step is not None:
            h = torch.full((groups,), stepper.first_step, dtype=torch.float64)
        else:
            h = ctrl.initial_step(lambda yy, ss: fld(yy, at(ss))[0], y, k1, s, (s1 - s).abs(), direction, q,
                                  stepper.rtol, stepper.atol, per)
        while bool(active.any()):
            idx = active.nonzero().flatten()
            if bool(stale[idx].any()):  # pairs without FSAL: the first stage at the new points
                sidx = idx[stale[idx]]
                k_new, p_new = fld(take(y, sidx), at(s[sidx]))
                if per:
                    k1 = k1.index_copy(0, sidx.to(k1.device), k_new)
                else:
                    k1, p1 = k_new, p_new
                stale[sidx] = False
            rounds += 1
            ya, sa, ka = take(y, idx), s[idx], take(k1, idx)
            target = stops[next_stop[idx]]
            remaining = (target - sa).abs()
            # a step that ends within round-off of the stop lands on it: the leftover would be a step of
            # length ~1e-16, which divides by zero in the exponential updates (h in a denominator)
            slack = 64 * torch.finfo(torch.float64).eps * torch.maximum(sa.abs(), target.abs()).clamp_min(1.0)
            land = h[idx] >= remaining - slack
            ha = torch.where(land, remaining, h[idx]) * direction
            s_new = torch.where(land, target, sa + ha)  # land exactly on output points and the end
            hv = steps_of(ha)

            def stage(c: float, sa: Tensor = sa, ha: Tensor = ha, s_new: Tensor = s_new) -> Any:
                return at(s_new) if c == 1.0 else at(sa + c * ha)

            y1, err, k_last = stepper.attempt(fld, ya, at(sa), hv, (ka, p1), stage)
            en = ctrl.norm(err, ya, y1, stepper.rtol, stepper.atol, per)
            if not bool(torch.isfinite(en).all()):
                sig = fld.sigma_of_s(float(sa.max() if direction < 0 else sa.min()))
                why = ("although every network output was finite (the state overflowed, {}); pass a smaller "
                       "`first_step` or run the state in float64".format(y0.dtype) if run.model.check_finite else
                       "(the model's NaN/Inf checks are off, check_finite=False: the network or the state is not "
                       "finite)")
                raise SolverError(f"solver {stepper.name!r}: the step from sigma={sig:.6g} gave a NaN/Inf error "
                                  f"estimate {why}.")
            ok, h_new = ctrl.adapt(en, err_prev[idx], ha, q)
            h[idx] = h_new
            rej[idx[~ok]] += 1
            if not bool(ok.any()):
                continue
            gi = idx[ok]
            acc[gi] += 1
            err_prev[gi] = en[ok]
            for g, v0, v1 in zip(gi.tolist(), sa[ok].tolist(), s_new[ok].tolist()):
                starts[g].append(v0)
                sizes[g].append(v1 - v0)
            if per:
                rows, okd = gi.to(y0.device), ok.to(y0.device)
                y = y.index_copy(0, rows, y1[okd])
                if k_last is not None:
                    k1 = k1.index_copy(0, rows, k_last[okd])
            else:
                y = y1
                if k_last is not None:
                    k1, p1 = k_last, None
            if not fsal:
                stale[gi] = True
            s[gi] = s_new[ok]
            for g in gi[land[ok]].tolist():  # groups that landed on their next stop
                j = int(next_stop[g])
                if j < len(outs):
                    if per:
                        outs[j][g] = y[g]
                    else:
                        outs[j] = y
                        reached = j + 1
                next_stop[g] = j + 1
                active[g] = j + 1 < len(outputs)
            if per:
                on_accept(sa[ok], s_new[ok], None)
            else:
                on_accept(float(sa[0]), float(s_new[0]), y)
    except BudgetExhausted:
        status = "max_nfe"
    extra: dict[str, Any] = {}
    if per:
        extra = {"accepted_per_sample": acc.tolist(), "rejected_per_sample": rej.tolist(),
                 "step_sizes_per_sample": sizes, "step_sigmas_per_sample": starts, "rounds": rounds,
                 "sigma_reached_per_sample": [fld.sigma_of_s(v) for v in s.tolist()]}
    if status == "ok":
        return IntervalResult(y, s1, outs + [y], int(acc.sum()), int(rej.sum()), sizes[0], starts[0], status, extra)
    s_end: Any = s if per else float(s[0])
    if per:  # the output points every sample has passed are complete
        reached = min(int(next_stop.min()), len(outs))
    done = outs[:reached]
    return IntervalResult(y, s_end, done, int(acc.sum()), int(rej.sum()), sizes[0], starts[0], status, extra)
