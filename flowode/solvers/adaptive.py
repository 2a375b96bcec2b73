"""Adaptive solvers: torchdiffeq (``dopri5``, ``bosh3``, ``adaptive_heun``, ``dopri8``), scipy
(``scipy_rk45``, ``scipy_dop853``, ``scipy_lsoda``) and an own Bogacki-Shampine 3(2) pair with
per-sample step sizes (``bs23_per_sample``).

What is integrated (all of them):

* The ODE is integrated adaptively between the grid's first and last level, in the chosen
  ``coordinates`` (``"sigma"``: state ``xbar``, field ``eps``; ``"lambda"``; ``"t"``; see
  :mod:`flowode.field`). The grid's inner levels are *output* points only (the trajectory is
  interpolated there by the solver's dense output); they do not constrain the steps. Usually the
  grid is ``flowode.sigma_grid(sched, 1) = [sigma_max, 0]``.
* **sigma = 0** is never evaluated: when the grid ends at 0, the adaptive part ends at the
  schedule's ``sigma_min`` and one DDIM step (:func:`~.base.boundary_step`, 1 evaluation) goes from
  ``sigma_min`` to 0, returning the denoised estimate there (the same final step as EDM / k-diffusion
  and as :func:`flowode.reference_solve` for network models). When the grid starts at 0 (encode),
  one DDIM step goes from 0 to ``sigma_min`` first. A start at ``sigma = inf`` is a DDIM step to
  the next grid level. ``stats["boundary_steps"]`` lists these steps; their evaluations are in
  ``sol.nfe``.
* **NFE** is counted by the model's counter, so it includes the initial step-size selection,
  rejected steps, FSAL re-use and (scipy LSODA) finite-difference Jacobians.
* ``max_nfe`` bounds ``sol.nfe`` including the boundary steps. When it runs out, ``on_max_nfe="raise"``
  (default) raises :class:`MaxNFEError`, which carries the partial result (``.x`` at ``.sigma``,
  the last accepted state, in model coordinates, and ``.stats``); ``on_max_nfe="return"`` returns it
  as the solution with ``stats["status"] = "max_nfe"`` and ``stats["sigma_reached"]``. For
  ``scipy_lsoda`` the budget is checked between steps (LSODA cannot be interrupted inside a step),
  so it may overrun by one step's evaluations.

Statistics (``sol.stats``): ``accepted``, ``rejected`` (``None`` for LSODA, which does not report
its error-test failures), ``step_sizes`` (signed increments of the integration variable of every
accepted step; they sum to the length of the adaptive interval), ``step_sigmas`` (sigma at the
start of every accepted step), ``coordinates``, ``interval`` (the sigmas of the adaptive part),
``nfe_adaptive``, ``boundary_steps`` and ``status``.

Error control: torchdiffeq and scipy measure the error of the *whole batch* as one system
(torchdiffeq: RMS norm over all elements; scipy: RMS norm over the flattened state), so the step
size follows the batch average. ``bs23_per_sample`` instead keeps one sigma and one step size per
sample (docs/adaptive.md compares them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch
from torch import Tensor

from ..field import COORDINATES, ProbabilityFlow
from ..models import EpsilonModel
from .base import Context, Solver, SolverError, boundary_step
from .registry import register

__all__ = ["AdaptiveSolver", "MaxNFEError", "TorchdiffeqSolver", "ScipySolver", "BS23PerSample"]


class MaxNFEError(SolverError):
    """The ``max_nfe`` budget of an adaptive solver ran out.

    Attributes:
        x: the last accepted state (model coordinates) at noise level ``sigma``.
        sigma: where the integration stopped.
        nfe: evaluations used.
        stats: the solver statistics up to that point.
    """

    def __init__(self, message: str, x: Tensor, sigma: float, nfe: int, stats: dict[str, Any]) -> None:
        super().__init__(message)
        self.x, self.sigma, self.nfe, self.stats = x, sigma, nfe, stats


class _Budget(Exception):
    """Internal: raised inside the field when ``max_nfe`` would be exceeded."""


@dataclass
class _Result:
    y: Tensor  # state (integration coordinates) at the end, or the last accepted state
    s_end: float  # where ``y`` is
    outputs: list[Tensor]  # states at the requested output points (those reached)
    accepted: int
    rejected: Optional[int]
    step_sizes: list[float]
    step_starts: list[float]
    status: str = "ok"
    extra: Optional[dict[str, Any]] = None


@dataclass
class AdaptiveSolver(Solver):
    """Base class of the adaptive solvers (options common to all of them).

    Options:
        rtol, atol: relative and absolute tolerances on the state of the chosen coordinates
            (default ``1e-5`` each, the probability-flow sampler of Song et al. 2021, score SDE).
        coordinates: ``"sigma"`` (default), ``"lambda"`` or ``"t"``.
        max_nfe: evaluation budget for the whole solve (``None``: no limit).
        on_max_nfe: ``"raise"`` (:class:`MaxNFEError` with the partial state) or ``"return"``.
        first_step: initial step size (magnitude, in the integration variable); ``None``: the
            solver's own selection (Hairer, Norsett & Wanner I, II.4), which costs evaluations.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    coordinates: str = "sigma"
    max_nfe: Optional[int] = None
    on_max_nfe: str = "raise"
    first_step: Optional[float] = None

    nfe_per_step = float("nan")
    adaptive = True
    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for key in ("rtol", "atol"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise SolverError(f"`{key}` must be a positive number, got {v!r}.")
        if self.coordinates not in COORDINATES:
            raise SolverError(f"`coordinates` must be one of {COORDINATES}, got {self.coordinates!r}.")
        if self.max_nfe is not None and (isinstance(self.max_nfe, bool) or not isinstance(self.max_nfe, int)
                                         or self.max_nfe < 1):
            raise SolverError(f"`max_nfe` must be a positive integer or None, got {self.max_nfe!r}.")
        if self.on_max_nfe not in ("raise", "return"):
            raise SolverError(f"`on_max_nfe` must be 'raise' or 'return', got {self.on_max_nfe!r}.")
        if self.first_step is not None and not (math.isfinite(self.first_step) and self.first_step > 0):
            raise SolverError(f"`first_step` must be a positive number or None, got {self.first_step!r}.")

    def nfe(self, sigmas: list[float]) -> int:
        raise SolverError(
            f"solver {self.name!r} is adaptive: its NFE is known only after the solve (sol.nfe); "
            "bound it with `max_nfe`."
        )

    # ------------------------------------------------------------------ subclass hook
    def _integrate(self, ctx: Context, fld: ProbabilityFlow, y0: Tensor, s0: float, s1: float,
                   outputs: list[float], field: Callable[[Tensor, float], Tensor]) -> _Result:
        """Integrate ``dy/ds = field(y, s)`` from ``s0`` to ``s1``; return the states at ``outputs``
        (increasing distance from ``s0``, ending with ``s1``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ driver
    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        s = ctx.sigma_list
        sched = ctx.model.schedule
        model = ctx.model
        nfe0 = model.nfe
        budget = self.max_nfe
        boundary: list[tuple[float, float]] = []
        ctx.record(x, s[0]) if ctx.save_trajectory else None

        # ---- the two ends
        start, end = s[0], s[-1]
        a, b = start, end
        if math.isinf(start):
            if s[1] == 0.0:
                raise SolverError(
                    f"solver {self.name!r} got the grid [inf, 0]: give a finite level in between "
                    "(e.g. flowode.sigma_grid(sched, 1, sigma_max=...)) so there is something to integrate."
                )
            a = s[1]
        elif start == 0.0:
            a = sched.sigma_min
        if end == 0.0:
            b = sched.sigma_min
        n_boundary = int(a != start) + int(b != end)
        if budget is not None and budget <= n_boundary:
            raise SolverError(f"`max_nfe`={budget} leaves nothing for the adaptive part after "
                              f"{n_boundary} boundary step(s).")
        if a != start:
            x, pred = boundary_step(ctx, x, start, a)
            boundary.append((start, a))
            if a in s[1:-1] or start == 0.0:
                ctx.record(x, a, pred) if ctx.save_trajectory else None

        fld = ctx.field(self.coordinates)
        inner = [v for v in s[1:-1] if (b < v < a if a > b else a < v < b)]
        outs = inner + [b]
        stats: dict[str, Any] = {"coordinates": self.coordinates, "interval": (a, b), "boundary_steps": boundary}
        ctx.stats.update(stats)

        if a == b:
            res = _Result(fld.to_state(x, a), fld.s_of_sigma(a), [], 0, 0, [], [])
        else:
            adaptive_budget = None if budget is None else budget - n_boundary
            nfe_a = model.nfe
            lo, hi = sorted((fld.s_of_sigma(a), fld.s_of_sigma(b)))

            def field(y: Tensor, sv: float) -> Tensor:
                if adaptive_budget is not None and model.nfe - nfe_a >= adaptive_budget:
                    raise _Budget
                # steps never leave [a, b] except by round-off (t0 + c h at the last stage) or in
                # torchdiffeq's initial-step probe: evaluate at the interval's end instead, so a
                # network is never asked for a noise level outside its range
                f, _ = fld(y, min(max(sv, lo), hi))
                return f

            res = self._integrate(ctx, fld, fld.to_state(x, a), fld.s_of_sigma(a), fld.s_of_sigma(b),
                                  [fld.s_of_sigma(v) for v in outs], field)
        ctx.stats.update({
            "accepted": res.accepted, "rejected": res.rejected, "step_sizes": res.step_sizes,
            "step_sigmas": [fld.sigma_of_s(v) for v in res.step_starts], "status": res.status,
            "nfe_adaptive": model.nfe - nfe0 - len(boundary),
        })
        if res.extra:
            ctx.stats.update(res.extra)
        for v, y in zip(outs, res.outputs):
            if ctx.save_trajectory:
                ctx.record(fld.from_state(y, v), v)
        if res.status != "ok":
            sig = fld.sigma_of_s(res.s_end)
            xs = fld.from_state(res.y, sig)
            ctx.stats["sigma_reached"] = sig
            if self.on_max_nfe == "raise":
                raise MaxNFEError(
                    f"solver {self.name!r} used its `max_nfe`={budget} evaluations at sigma={sig:.6g} "
                    f"before reaching sigma={end:.6g}; raise `max_nfe` or loosen `rtol`/`atol`. The "
                    "partial state is in this exception's `.x` (at `.sigma`).",
                    xs, sig, model.nfe - nfe0, dict(ctx.stats))
            return xs
        x = fld.from_state(res.y, b)
        if b != end:
            x, pred = boundary_step(ctx, x, b, end)
            boundary.append((b, end))
            ctx.record(x, end, pred) if ctx.save_trajectory else None
        return x


# ---------------------------------------------------------------------------------- torchdiffeq
class _Recorder(torch.nn.Module):
    """The field as torchdiffeq sees it, with its step callbacks."""

    def __init__(self, field: Callable[[Tensor, float], Tensor]) -> None:
        super().__init__()
        self.field = field
        self.accepted: list[tuple[float, float]] = []
        self.rejected = 0
        self.last: Optional[tuple[float, Tensor]] = None

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.field(y, float(t.detach()))

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.last = (float(t0.detach()), y0)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted.append((float(t0.detach()), float(dt.detach())))

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1


@dataclass
class TorchdiffeqSolver(AdaptiveSolver):
    """An adaptive embedded Runge-Kutta pair of torchdiffeq (Chen et al. 2018), run through
    ``torchdiffeq.odeint`` with ``step_t=[end]`` so the last step ends exactly at the end of the
    interval. Accepted / rejected steps come from torchdiffeq's ``callback_accept_step`` /
    ``callback_reject_step`` hooks (torchdiffeq >= 0.2.3). Error norm: torchdiffeq's RMS norm over
    the whole batch."""

    def _integrate(self, ctx: Context, fld: ProbabilityFlow, y0: Tensor, s0: float, s1: float,
                   outputs: list[float], field: Callable[[Tensor, float], Tensor]) -> _Result:
        from torchdiffeq import odeint

        rec = _Recorder(field)
        times = torch.tensor([s0] + outputs, dtype=torch.float64, device=y0.device)
        options: dict[str, Any] = {"step_t": torch.tensor([s1], dtype=torch.float64, device=y0.device)}
        if self.first_step is not None:
            options["first_step"] = self.first_step
        status = "ok"
        ys: list[Tensor] = []
        try:
            sol = odeint(rec, y0, times, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
            ys = list(sol[1:])
            y_end, s_end = ys[-1], s1
        except _Budget:
            status = "max_nfe"
            if rec.last is None:
                y_end, s_end = y0, s0
            else:
                s_end, y_end = rec.last
        sign = 1.0 if s1 > s0 else -1.0
        starts = [t for t, _ in rec.accepted]
        sizes = [sign * dt for _, dt in rec.accepted]
        if status == "ok" and starts:  # the last step was cut to end exactly at s1 (step_t)
            sizes[-1] = s1 - starts[-1]
        return _Result(y_end, s_end, ys, len(rec.accepted), rec.rejected, sizes, starts, status)


def _torchdiffeq(name: str, method: str, order: int, cls_name: str, source: str) -> type[TorchdiffeqSolver]:
    doc = (f"{cls_name}: torchdiffeq's ``{method}`` adaptive pair, order {order}. {source}\n\n"
           f"{AdaptiveSolver.__doc__}")
    cls = type(cls_name, (TorchdiffeqSolver,), {
        "__doc__": doc, "name": name, "order": order, "method": method, "source": source,
        "__annotations__": {},
    })
    return register(dataclass(cls))  # type: ignore[return-value]


Dopri5 = _torchdiffeq("dopri5", "dopri5", 5, "Dopri5",
                      "Dormand & Prince (1980) 5(4) pair, FSAL (6 evaluations per attempted step).")
Bosh3 = _torchdiffeq("bosh3", "bosh3", 3, "Bosh3",
                     "Bogacki & Shampine (1989) 3(2) pair, FSAL (3 evaluations per attempted step).")
AdaptiveHeun = _torchdiffeq("adaptive_heun", "adaptive_heun", 2, "AdaptiveHeun",
                            "Heun-Euler 2(1) pair (2 evaluations per attempted step).")
Dopri8 = _torchdiffeq("dopri8", "dopri8", 8, "Dopri8",
                      "Dormand-Prince 8(7) pair (Prince & Dormand 1981), 13 stages.")


# ---------------------------------------------------------------------------------------- scipy
@dataclass
class ScipySolver(AdaptiveSolver):
    """A ``scipy.integrate`` ``OdeSolver`` driven step by step (``solver.step()`` in a loop), so
    accepted steps, step sizes and (explicit RK) rejections are exact: every attempt of an explicit
    RK step costs ``stages`` evaluations (FSAL), so ``rejected = evals / stages - accepted`` for the
    evaluations made inside ``step()``. The state is the flattened batch in float64 (one system)."""

    stages: ClassVar[Optional[int]] = None

    def _integrate(self, ctx: Context, fld: ProbabilityFlow, y0: Tensor, s0: float, s1: float,
                   outputs: list[float], field: Callable[[Tensor, float], Tensor]) -> _Result:
        import scipy.integrate as si

        shape, dtype, device = y0.shape, y0.dtype, y0.device
        model = ctx.model
        lsoda = self.method == "LSODA"

        def fun(sv: float, y: np.ndarray) -> np.ndarray:
            yt = torch.from_numpy(np.ascontiguousarray(y)).view(shape).to(device=device, dtype=dtype)
            return field(yt, float(sv)).detach().to("cpu", torch.float64).flatten().numpy()

        def to_t(y: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(y, dtype=np.float64)).view(shape).to(device=device, dtype=dtype)

        y_np = y0.detach().to("cpu", torch.float64).flatten().numpy().copy()
        kw: dict[str, Any] = {"rtol": self.rtol, "atol": self.atol}
        if self.first_step is not None:
            kw["first_step"] = self.first_step
        budget_hit = False
        starts: list[float] = []
        sizes: list[float] = []
        rejected = 0
        ys: list[Tensor] = []
        pending = list(outputs)
        try:
            solver = getattr(si, self.method)(fun, s0, y_np, s1, **kw)
        except _Budget:
            return _Result(y0, s0, [], 0, 0, [], [], "max_nfe")
        direction = 1.0 if s1 > s0 else -1.0
        while solver.status == "running":
            if lsoda and self.max_nfe is not None and model.nfe >= self._lsoda_cap:
                budget_hit = True
                break
            t_old = solver.t
            n0 = model.nfe
            try:
                msg = solver.step()
            except _Budget:
                budget_hit = True
                break
            if solver.status == "failed":
                raise SolverError(f"scipy {self.method} failed at sigma={fld.sigma_of_s(solver.t):.6g}: {msg}")
            used = model.nfe - n0
            starts.append(float(t_old))
            sizes.append(float(solver.t - t_old))
            if self.stages is not None:
                rejected += used // self.stages - 1
            while pending and direction * (pending[0] - solver.t) <= 0:
                v = pending.pop(0)
                if v == solver.t:
                    ys.append(to_t(solver.y))
                else:
                    ys.append(to_t(solver.dense_output()(v)))
        if budget_hit:
            return _Result(to_t(solver.y), float(solver.t), ys, len(starts), None if lsoda else rejected,
                           sizes, starts, "max_nfe")
        extra = {"scipy_nfev": int(solver.nfev), "scipy_njev": int(getattr(solver, "njev", 0))}
        return _Result(to_t(solver.y), s1, ys, len(starts), None if lsoda else rejected, sizes, starts, "ok", extra)

    _lsoda_cap: ClassVar[int] = 0

    def solve(self, ctx: Context, x: Tensor) -> Tensor:
        # LSODA checks the budget between steps: the total it may reach before the last boundary step
        s = ctx.sigma_list
        self._lsoda_cap = ctx.model.nfe + (self.max_nfe or 0) - int(s[-1] == 0.0)  # type: ignore[misc]
        return super().solve(ctx, x)


def _scipy(name: str, method: str, order: int, stages: Optional[int], cls_name: str, source: str) -> type[ScipySolver]:
    doc = (f"{cls_name}: scipy's ``{method}`` (``scipy.integrate.{method}``), order {order}. {source}\n\n"
           f"{AdaptiveSolver.__doc__}")
    cls = type(cls_name, (ScipySolver,), {
        "__doc__": doc, "name": name, "order": order, "method": method, "source": source, "stages": stages,
        "__annotations__": {},
    })
    return register(dataclass(cls))  # type: ignore[return-value]


ScipyRK45 = _scipy("scipy_rk45", "RK45", 5, 6, "ScipyRK45",
                   "Dormand & Prince (1980) 5(4), FSAL: 6 evaluations per attempted step.")
ScipyDOP853 = _scipy("scipy_dop853", "DOP853", 8, 12, "ScipyDOP853",
                     "Hairer, Norsett & Wanner I, II.10 (DOP853): 12 evaluations per attempted step "
                     "(+3 for each dense-output interpolation at an inner grid level).")
ScipyLSODA = _scipy("scipy_lsoda", "LSODA", 12, None, "ScipyLSODA",
                    "Petzold (1983) / ODEPACK LSODA: Adams (orders 1-12) / BDF switching; its finite-"
                    "difference Jacobian costs one evaluation per state entry (small problems only).")


# ---------------------------------------------------------------------------- per-sample BS3(2)
def _eps_per_sample(model: EpsilonModel, x: Tensor, sigma: Tensor) -> Tensor:
    """``eps`` at per-sample noise levels ``sigma`` (shape ``(B,)``), counted as one evaluation.

    A plain :class:`EpsilonModel` gets one network call with per-sample timesteps (its ``fn`` takes a
    1-D ``t`` with one entry per sample). Models that override ``network`` (analytic models) or use
    guidance / thresholding are called once per distinct sigma through ``predict``; the counter is then
    corrected so that ``nfe`` still counts one evaluation of the batch (``network_passes`` keeps the
    true number of network calls).
    """
    sigma = sigma.detach().to("cpu", torch.float64)
    uniq = torch.unique(sigma)
    if len(uniq) == 1:
        return model.predict(x, float(uniq[0])).eps
    plain = (type(model).network is EpsilonModel.network and model.uncond_fn is None
             and model.batched_cfg is None and model.clip_x0 is None and model.dynamic_threshold is None)
    sched = model.schedule
    if plain:
        sig = sigma.to(torch.float64)
        t = torch.as_tensor(sched.t(sig)).to(dtype=x.dtype, device=x.device)
        out = model.fn(x, t)
        model._check(out, x, float(sig.max()))
        model.nfe += 1
        model.network_passes += 1
        view = (-1,) + (1,) * (x.dim() - 1)
        alpha = torch.as_tensor(sched.alpha_from_sigma(sig)).to(x).view(view)
        std = torch.as_tensor(sched.std_from_sigma(sig)).to(x).view(view)
        p = model.prediction
        if p == "eps":
            return out
        if p == "x0":
            return (x - alpha * out) / std
        if p == "v":
            return alpha * out + std * x
        return -std * out
    eps = torch.empty_like(x)
    n0 = model.nfe
    for v in uniq.tolist():
        idx = (sigma == v).nonzero().flatten().to(x.device)
        eps[idx] = model.predict(x[idx], float(v)).eps
    model.nfe = n0 + 1
    return eps


@register
@dataclass
class BS23PerSample(AdaptiveSolver):
    """Bogacki-Shampine 3(2) pair (Bogacki & Shampine 1989; FSAL, 3 evaluations per attempted step)
    in ``(xbar, sigma)`` with **per-sample** error control: every sample of the batch has its own
    sigma and its own step size, accepted or rejected on its own error
    ``||err_b / (atol + rtol max(|y_b|, |y1_b|))||_RMS <= 1`` (RMS over that sample's entries only).
    All unfinished samples advance together, each at its own noise level, in one batched evaluation
    per stage (see :func:`_eps_per_sample`); finished samples are left out of the evaluations.
    Step-size update ``h <- h min(5, max(0.2, 0.9 err^(-1/3)))`` (Hairer et al. I, II.4).
    Initial step: Hairer's selection per sample (1 extra evaluation) unless ``first_step``.

    Only ``coordinates="sigma"``. ``stats`` holds totals (``accepted``, ``rejected``) and per-sample
    lists (``accepted_per_sample``, ``rejected_per_sample``, ``step_sizes_per_sample``, ...);
    ``step_sizes`` / ``step_sigmas`` are those of sample 0.
    """

    name = "bs23_per_sample"
    order = 3
    source = "Bogacki & Shampine, Appl. Math. Lett. 2 (1989) 321-325, with per-sample step control"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.coordinates != "sigma":
            raise SolverError("`coordinates` of bs23_per_sample must be 'sigma' (per-sample sigma steps).")

    def _integrate(self, ctx: Context, fld: ProbabilityFlow, y0: Tensor, s0: float, s1: float,
                   outputs: list[float], field: Callable[[Tensor, float], Tensor]) -> _Result:
        model = ctx.model
        budget = None if self.max_nfe is None else self.max_nfe - len(ctx.stats.get("boundary_steps", []))
        budget = None if budget is None else budget - int(ctx.sigma_list[-1] == 0.0)
        nfe0 = model.nfe
        B = y0.shape[0]
        view = (-1,) + (1,) * (y0.dim() - 1)
        direction = 1.0 if s1 > s0 else -1.0
        dev = y0.device

        def f(y: Tensor, sig: Tensor, idx: Tensor) -> Tensor:
            if budget is not None and model.nfe - nfe0 >= budget:
                raise _Budget
            sig64 = sig.detach().to("cpu", torch.float64)
            alpha = torch.as_tensor(model.schedule.alpha_from_sigma(sig64)).to(y).view(view)
            return _eps_per_sample(model, y * alpha, sig64)

        def norm(v: Tensor) -> Tensor:
            return v.flatten(1).pow(2).mean(1).sqrt()

        y = y0.clone()
        s = torch.full((B,), s0, dtype=torch.float64, device=dev)
        end = torch.full((B,), s1, dtype=torch.float64, device=dev)
        acc = torch.zeros(B, dtype=torch.long, device=dev)
        rej = torch.zeros(B, dtype=torch.long, device=dev)
        log: list[tuple[Tensor, Tensor, Tensor]] = []  # per round: (accepted sample ids, start, end)
        outs = [torch.empty_like(y0) for _ in outputs]
        rounds = 0
        status = "ok"
        try:
            allidx = torch.arange(B, device=dev)
            k1 = f(y, s, allidx)
            scale = self.atol + self.rtol * y.abs()
            if self.first_step is not None:
                h = torch.full((B,), self.first_step, dtype=torch.float64, device=dev)
            else:  # Hairer, Norsett & Wanner I, II.4 (p. 169), per sample
                d0, d1 = norm(y / scale).double(), norm(k1 / scale).double()
                h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
                h0 = torch.minimum(h0, (end - s).abs())
                y1 = y + (direction * h0).to(y).view(view) * k1
                k2 = f(y1, s + direction * h0, allidx)
                d2 = norm((k2 - k1) / scale).double() / h0
                h1 = torch.where(torch.maximum(d1, d2) <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                                 (0.01 / torch.maximum(d1, d2)) ** (1 / 3))
                h = torch.minimum(100 * h0, h1)
            active = torch.ones(B, dtype=torch.bool, device=dev)
            while bool(active.any()):
                idx = active.nonzero().flatten()
                rounds += 1
                ya, sa, ka = y[idx], s[idx], k1[idx]
                ha = torch.minimum(h[idx], (end[idx] - sa).abs()) * direction
                last = ha.abs() >= (end[idx] - sa).abs()
                hv = ha.to(y).view(view)
                k2 = f(ya + 0.5 * hv * ka, sa + 0.5 * ha, idx)
                k3 = f(ya + 0.75 * hv * k2, sa + 0.75 * ha, idx)
                y1 = ya + hv * (2 / 9 * ka + 1 / 3 * k2 + 4 / 9 * k3)
                s_new = torch.where(last, end[idx], sa + ha)
                k4 = f(y1, s_new, idx)
                err = hv * (-5 / 72 * ka + 1 / 12 * k2 + 1 / 9 * k3 - 1 / 8 * k4)
                sc = self.atol + self.rtol * torch.maximum(ya.abs(), y1.abs())
                en = norm(err / sc).double()
                ok = en <= 1.0
                fac = torch.clamp(0.9 * en.clamp_min(1e-10) ** (-1 / 3), 0.2, 5.0)
                fac = torch.where(ok, fac, torch.clamp(fac, max=1.0))
                h[idx] = ha.abs() * fac
                rej[idx[~ok]] += 1
                acc[idx[ok]] += 1
                log.append((idx[ok], sa[ok], s_new[ok]))
                for i, v in enumerate(outputs):  # cubic Hermite dense output (order 3, as the pair)
                    hit = ok & (direction * (v - sa) > 0) & (direction * (v - s_new) <= 0)
                    if bool(hit.any()):
                        th = ((v - sa[hit]) / ha[hit]).to(y).view(view)
                        hh = ha[hit].to(y).view(view)
                        outs[i][idx[hit]] = ((2 * th**3 - 3 * th**2 + 1) * ya[hit]
                                             + (th**3 - 2 * th**2 + th) * hh * ka[hit]
                                             + (-2 * th**3 + 3 * th**2) * y1[hit] + (th**3 - th**2) * hh * k4[hit])
                y[idx[ok]] = y1[ok]
                s[idx[ok]] = s_new[ok]
                k1[idx[ok]] = k4[ok]
                active[idx[ok & last]] = False
        except _Budget:
            status = "max_nfe"
        sizes: list[list[float]] = [[] for _ in range(B)]
        starts: list[list[float]] = [[] for _ in range(B)]
        for ids, a_, b_ in log:
            for b, v0, v1 in zip(ids.tolist(), a_.tolist(), b_.tolist()):
                starts[b].append(v0)
                sizes[b].append(v1 - v0)
        ys: list[Tensor] = outs if status == "ok" else []
        s_end = float(s.max()) if direction < 0 else float(s.min())  # the least advanced sample
        extra = {
            "accepted_per_sample": acc.tolist(), "rejected_per_sample": rej.tolist(),
            "step_sizes_per_sample": sizes, "step_sigmas_per_sample": starts, "rounds": rounds,
            "sigma_reached_per_sample": s.tolist(),
        }
        if status != "ok":
            # the samples stopped at different sigmas; the driver multiplies by alpha(s_end), so
            # pre-scale each sample to come out as its own x = alpha(s_b) xbar_b
            extra["partial_states_at"] = "sigma_reached_per_sample"
            sched = model.schedule
            a_b = torch.as_tensor(sched.alpha_from_sigma(s.cpu())).to(y).view(view)
            a_end = float(sched.alpha_from_sigma(s_end))
            y = y * a_b / a_end
        res = _Result(y, s_end if status != "ok" else s1, ys, int(acc.sum()), int(rej.sum()), sizes[0], starts[0],
                      status, extra)
        return res
