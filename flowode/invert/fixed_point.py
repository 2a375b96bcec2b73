"""Fixed-point (implicit) inversion: make the *decode* step map the latent back to the input.

Naive inversion runs a solver on the reversed grid and so evaluates the network at the wrong end
of every step. Here each inverse step instead solves the decode step's own equation

    Phi_i(x_i) = x_{i+1}        (Phi_i: the solver's decode step from sigma_i to sigma_{i+1})

for the noisier state ``x_i``, so that decoding the latent with the same solver on the same grid
reproduces the input to the solver tolerance. This is the backward-Euler view of DDIM inversion
of Hong et al. 2024 ("On Exact Inversion of DPM-Solvers", CVPR, sec. 3-4) solved by their
"forward step" fixed-point iteration, the same iteration as AIDI (Pan et al. 2023, ICCV,
Anderson-accelerated) and FPI (Meiri et al. 2023):

    y_{k+1} = y_k + c (x_{i+1} - Phi_i(y_k)),      c = alpha(sigma_i) / alpha(sigma_{i+1}),

started from the naive inverse step. For DDIM, ``Phi(y) = A y + B eps(y)`` with ``A = 1/c``, and the
iteration is exactly ``xbar_i <- xbar_{i+1} + (sigma_i - sigma_{i+1}) eps(alpha_i xbar_i, sigma_i)``;
its Jacobian is ``(sigma_i - sigma_{i+1}) d eps / d xbar``, a contraction for a single Gaussian
(eigenvalues ``h sigma / (s^2 + sigma^2) < 1``) and usually for mixtures. For any one-step solver
``c Phi`` is the identity plus O(h), so the same preconditioner applies (the solver's ``step`` is
called as is). Anderson acceleration (Walker & Ni 2011, type II, depth ``m``) is applied on top.

Multistep solvers (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2, and every other registered multistep
stepper) also need the solver state -- the model outputs at the *noisier* neighbours ``x_{i-1}``,
... -- which is unknown while encoding. Hong et al. 2024 (sec. 4.2) estimate it by a fine-grained
naive DDIM inversion; here that estimate starts the iteration and further Gauss-Seidel sweeps over
the whole trajectory re-solve every step with the updated state until all decode equations hold
to ``tol`` (an extension that makes the round trip exact, not near-exact).

The map inverted is the registered stepper's own step (:func:`flowode.driver.take_step`, boundary
policy included), with the solver state the decode would carry: a decode of the latent with
``flowode.integrate(model, latent, sigmas, solver)`` is the same map by construction.

Cost: per step one naive step (``nfe_per_step`` evaluations) plus ``nfe_per_step`` per iteration;
the result reports the iterations and NFE of every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ..driver import take_step
from ..models import EpsilonModel
from ..solvers import SolverError, Stepper, make
from ..solvers.run import Run
from ._common import inversion_levels, scaled_residual, warn_unconverged

__all__ = ["FixedPointResult", "fixed_point_encode", "default_tol", "solve_fixed_point"]


def default_tol(dtype: torch.dtype) -> float:
    """Default fixed-point tolerance on the scaled residual ``max |r| / (1 + |x|)``:
    1e-14 in float64 (about 50 ulp), ``16 eps`` (1.9e-6) in float32, 1e-3 otherwise."""
    if dtype == torch.float64:
        return 1e-14
    if dtype == torch.float32:
        return 16 * torch.finfo(torch.float32).eps
    return 1e-3


@dataclass
class FixedPointResult:
    """Result of :func:`fixed_point_encode`.

    Attributes:
        latent: the latent at ``sigmas[0]``.
        nfe: total model evaluations.
        iterations: ``(steps, B)`` fixed-point iterations per decode step (index ``i`` = the step
            ``sigmas[i] -> sigmas[i+1]``) and sample; for multistep solvers, summed over sweeps.
        residual: ``(steps, B)`` final scaled residual ``max|Phi_i(x_i) - x_{i+1}| / (1 + |x_{i+1}|)``.
        nfe_per_step: model evaluations spent on each step (same indexing).
        converged: every residual is within ``tol``.
        sweeps: Gauss-Seidel sweeps over the trajectory (multistep solvers; 1 otherwise).
        trajectory: the states at every grid point, ``(steps + 1, *x.shape)``, decode order.
    """

    latent: Tensor
    nfe: int
    iterations: Tensor
    residual: Tensor
    nfe_per_step: list[int]
    converged: bool
    tol: float
    sweeps: int = 1
    trajectory: Optional[Tensor] = None
    stats: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ the iteration
def solve_fixed_point(
    phi: Callable[[Tensor, Tensor], tuple[Tensor, Optional[Tensor]]],
    y0: Tensor,
    target: Tensor,
    c: float,
    *,
    tol: float,
    max_iter: int,
    anderson: int,
    patience: int = 4,
) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """Solve ``phi(y) = target`` per sample by ``y <- y + c (target - phi(y))`` with optional
    Anderson acceleration (depth ``anderson``; 0 = plain iteration).

    ``phi(y, idx)`` evaluates the map on the samples ``idx`` of the batch and returns
    ``(phi(y), aux)`` (``aux``, e.g. the model's x0 prediction at ``y``, is kept for the accepted
    iterate). Converged samples leave the active set, so they stop costing work. The accepted
    iterate of each sample is the one with the smallest *evaluated* residual. A sample also stops
    when its best residual has not improved for ``patience`` iterations (stalled at its round-off
    floor, or not converging); the caller compares the returned residual with ``tol``.

    Returns:
        ``(y, aux, iterations, residual)`` with per-sample ``iterations`` (int64, the number of
        evaluations of ``phi``) and ``residual`` (float64), both on the CPU.
    """
    b, dev = target.shape[0], target.device
    y = y0.clone()
    aux_best: Optional[Tensor] = None
    best = torch.full((b,), math.inf, dtype=torch.float64, device=dev)
    iters = torch.zeros(b, dtype=torch.int64, device=dev)
    stall = torch.zeros(b, dtype=torch.int64, device=dev)
    active = torch.arange(b, device=dev)
    ya = y0.clone()
    f_hist: list[Tensor] = []
    g_hist: list[Tensor] = []
    for k in range(max_iter + 1):
        finite = torch.isfinite(ya.flatten(1)).all(1)
        if not bool(finite.all()):  # diverged samples stop (their best iterate is kept)
            keep = finite
            active, ya = active[keep], ya[keep]
            f_hist = [f[keep] for f in f_hist]
            g_hist = [g[keep] for g in g_hist]
            if active.numel() == 0:
                break
        fy, aux = phi(ya, active)
        r = target[active] - fy
        res = scaled_residual(r, target[active])
        res = torch.where(torch.isfinite(res), res, torch.full_like(res, math.inf))
        better = res < best[active]
        stall[active] = torch.where(better, torch.zeros_like(stall[active]), stall[active] + 1)
        if bool(better.any()):
            sel = active[better]
            y[sel] = ya[better]
            best[sel] = res[better]
            if aux is not None:
                if aux_best is None:
                    aux_best = torch.zeros_like(target)
                aux_best[sel] = aux[better]
        iters[active] = k + 1
        done = (res <= tol) | (stall[active] >= patience)
        if k == max_iter or bool(done.all()):
            break
        f = r * c
        g = ya + f
        if anderson > 0 and f_hist:
            ff = f.flatten(1)
            df = torch.stack([ff - h.flatten(1) for h in f_hist], -1)  # (b, D, m)
            dg = torch.stack([g.flatten(1) - h.flatten(1) for h in g_hist], -1)
            df64, ff64 = df.to(torch.float64), ff.to(torch.float64).unsqueeze(-1)
            # a sample whose residuals overflowed (a float16 state) takes the plain step: LAPACK's
            # least squares fails on NaN / Inf entries ("illegal value"), for the whole batch
            finite = (torch.isfinite(df64).flatten(1).all(1) & torch.isfinite(ff64).flatten(1).all(1)).view(-1, 1, 1)
            gamma = torch.linalg.lstsq(torch.where(finite, df64, 0.0), torch.where(finite, ff64, 0.0)).solution
            step = (dg.to(torch.float64) @ gamma).squeeze(-1).to(g.dtype).view_as(g)
            ok = (torch.isfinite(step.flatten(1)).all(1) & finite.flatten()).view(-1, *([1] * (g.dim() - 1)))
            y_new = torch.where(ok, g - step, g)
        else:
            y_new = g
        if anderson > 0:
            f_hist = (f_hist + [f])[-anderson:]
            g_hist = (g_hist + [g])[-anderson:]
        keep = ~done
        active, ya = active[keep], y_new[keep]
        f_hist = [h[keep] for h in f_hist]
        g_hist = [h[keep] for h in g_hist]
    return y, aux_best, iters.cpu(), best.cpu()


# ------------------------------------------------------------------------------------ one-step solvers
def _check_options(tol: Optional[float], max_iter: int, anderson: int, on_fail: str, dtype: torch.dtype) -> float:
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}.")
    if isinstance(anderson, bool) or not isinstance(anderson, int) or anderson < 0:
        raise ValueError(f"`anderson` (Anderson depth) must be an integer >= 0, got {anderson!r}.")
    if on_fail not in ("warn", "raise", "ignore"):
        raise ValueError(f"`on_fail` must be 'warn', 'raise' or 'ignore', got {on_fail!r}.")
    t = default_tol(dtype) if tol is None else float(tol)
    if not t > 0:
        raise ValueError(f"`tol` must be > 0, got {tol!r}.")
    return t


def _report(res: Tensor, tol: float, i: int, s0: float, s1: float, iters: int, on_fail: str, what: str) -> None:
    bad = (res > tol).nonzero().flatten()
    if bad.numel() == 0 or on_fail == "ignore":
        return
    where = f"at step {i} (sigma {s0:.4g} -> {s1:.4g}) after {iters} iteration(s)"
    hint = ("Raise `max_iter`, use Anderson acceleration (`anderson=5`), take more steps, or lower `tol`. "
            "The latent returned for these samples is the best iterate found.")
    if on_fail == "raise":
        vals = ", ".join(f"{int(j)}: {float(res[j]):.3g}" for j in bad[:8])
        raise RuntimeError(f"{what} did not converge {where} for samples {{{vals}}} (tol={tol:.3g}). {hint}")
    warn_unconverged(what, where, bad, res[bad], tol, hint)


@torch.no_grad()
def fixed_point_encode(
    model: EpsilonModel,
    x0: Tensor,
    sigmas: Tensor,
    solver: Union[str, Stepper] = "ddim",
    *,
    tol: Optional[float] = None,
    max_iter: int = 100,
    anderson: int = 3,
    on_fail: str = "warn",
    max_sweeps: int = 30,
    history_substeps: int = 4,
    save_trajectory: bool = False,
    **solver_options: Any,
) -> FixedPointResult:
    """Encode ``x0`` (the state at ``sigmas[-1]``) so that decoding with ``solver`` on the decode
    grid ``sigmas`` returns it: solve every decode step's equation by fixed-point iteration.

    Args:
        model: the model.
        x0: data (state at ``sigmas[-1]``), batch first.
        sigmas: the decode grid (decreasing; validated against the schedule, may not start at inf).

    No autograd graph is kept (a trainable network costs the memory of ``torch.no_grad()``).
        solver: any deterministic fixed-step registered solver: one-step (``"ddim"``, ``"heun"``,
            ``"rk4"``, ...) or multistep (``"dpm_solver++_2m"``, ``"ipndm"``, ...).
        tol: tolerance on the per-sample scaled residual ``max|Phi(y) - x| / (1 + |x|)``
            (default :func:`default_tol`).
        max_iter: iteration cap per step (per sweep for multistep solvers).
        anderson: Anderson-acceleration depth (0 = plain fixed-point iteration).
        on_fail: ``"warn"`` (default; :class:`InversionWarning` naming samples and residuals),
            ``"raise"`` (``RuntimeError``) or ``"ignore"``.
        max_sweeps, history_substeps: multistep solvers only: the cap on trajectory sweeps and the
            number of naive DDIM sub-steps per interval of the initial trajectory (Hong et al.).
        save_trajectory: keep every state of the encoded trajectory.
        **solver_options: options of ``solver``.
    """
    t = _check_options(tol, max_iter, anderson, on_fail, x0.dtype)
    stepper = make(solver, **solver_options)
    if stepper.stochastic or stepper.adaptive:
        kind = "stochastic" if stepper.stochastic else "adaptive"
        raise SolverError(
            f"fixed-point inversion needs a deterministic fixed-step solver (its decode step is the map to "
            f"invert); {stepper.name!r} is {kind}. Use e.g. 'ddim', 'heun', 'rk4' or 'dpm_solver++_2m'."
        )
    levels = inversion_levels(model, sigmas, encodes=True)
    run = Run(model, levels, check_calls=True)
    stepper.check(run)
    if stepper.multistep:
        return _multistep_encode(run, stepper, x0, tol=t, max_iter=max_iter, anderson=anderson, on_fail=on_fail,
                                 max_sweeps=max_sweeps, substeps=history_substeps, save_trajectory=save_trajectory)
    s = levels
    n = len(s) - 1
    b = x0.shape[0]
    iterations = torch.zeros(n, b, dtype=torch.int64)
    residual = torch.zeros(n, b, dtype=torch.float64)
    nfe_steps = [0] * n
    x = x0
    traj = [x0] if save_trajectory else []
    for i in range(n - 1, -1, -1):
        n0 = run.nfe
        run.step = i
        y0 = take_step(run, stepper, x, s[i + 1], s[i], None).x  # the naive inverse step starts the iteration
        c = run.alpha(s[i]) / run.alpha(s[i + 1])

        def phi(y: Tensor, idx: Tensor, i: int = i) -> tuple[Tensor, Optional[Tensor]]:
            run.step = i
            return take_step(run, stepper, y, s[i], s[i + 1], None).x, None

        x, _, it, res = solve_fixed_point(phi, y0, x, c, tol=t, max_iter=max_iter, anderson=anderson)
        iterations[i], residual[i] = it, res
        nfe_steps[i] = run.nfe - n0
        _report(res, t, i, s[i], s[i + 1], int(it.max()), on_fail, f"fixed-point inversion ({stepper.name})")
        if save_trajectory:
            traj.append(x)
    return FixedPointResult(
        latent=x, nfe=run.nfe, iterations=iterations, residual=residual, nfe_per_step=nfe_steps,
        converged=bool((residual <= t).all()), tol=t,
        trajectory=torch.stack(traj[::-1]) if save_trajectory else None,
    )


# ------------------------------------------------------------------------------------ multistep solvers
def _select(state: Any, idx: Tensor, batch: int) -> Any:
    """The samples ``idx`` of a solver state (tensors with the batch as first dimension are
    indexed; tuples, lists and dicts are mapped; everything else is kept)."""
    if isinstance(state, Tensor):
        return state.index_select(0, idx.to(state.device)) if state.dim() >= 1 and state.shape[0] == batch else state
    if isinstance(state, tuple):
        items = [_select(v, idx, batch) for v in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    if isinstance(state, list):
        return [_select(v, idx, batch) for v in state]
    if isinstance(state, dict):
        return {k: _select(v, idx, batch) for k, v in state.items()}
    return state


def _states(run: Run, stepper: Stepper, traj: list[Tensor], upto: int) -> list[Any]:
    """The solver state at the start of steps ``0..upto`` of a decode along ``traj`` (the decode's
    own state when the trajectory is exact): ``upto`` steps from the trajectory's points."""
    s = run.grid
    states = [stepper.init(run)]
    for i in range(upto):
        run.step = i
        states.append(take_step(run, stepper, traj[i], s[i], s[i + 1], states[-1]).state)
    return states


def _naive_trajectory(run: Run, x0: Tensor, substeps: int) -> list[Tensor]:
    """States at every grid point from a naive DDIM inversion with ``substeps`` sub-steps per
    interval (uniform in sigma), decode order (Hong et al. 2024's history estimate)."""
    s = run.grid
    ddim = make("ddim")
    out = [x0]
    x = x0
    for i in range(len(s) - 1, 0, -1):
        lo, hi = s[i], s[i - 1]
        pts = [lo + (hi - lo) * k / substeps for k in range(substeps + 1)]
        for a, b in zip(pts[:-1], pts[1:]):
            run.step = i - 1
            x = take_step(run, ddim, x, a, b, None).x
        out.append(x)
    return out[::-1]


def _multistep_encode(run: Run, stepper: Stepper, x0: Tensor, *, tol: float, max_iter: int, anderson: int,
                      on_fail: str, max_sweeps: int, substeps: int, save_trajectory: bool) -> FixedPointResult:
    """Exact inversion of a multistep decode: the whole trajectory ``Y = (x_0, ..., x_N)`` is the
    unknown. One *sweep* ``S(Y)`` computes the decode's solver states from ``Y`` and re-solves
    every step's equation by the per-step fixed-point iteration, from the data upwards; the exact
    trajectory is the fixed point ``S(Y) = Y``, found by Anderson-accelerated iteration of ``S``
    (per sample) started from the fine-grained naive DDIM inversion (Hong et al. 2024)."""
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"`history_substeps` must be a positive integer, got {substeps!r}.")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"`max_sweeps` must be a positive integer, got {max_sweeps!r}.")
    s = run.grid
    n = len(s) - 1
    b = x0.shape[0]
    iterations = torch.zeros(n, b, dtype=torch.int64)
    nfe_steps = [0] * n
    counter = {"sweeps": 0}

    def sweep(y_all: Tensor, idx: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        counter["sweeps"] += 1
        traj = list(y_all.unbind(1))
        states = _states(run, stepper, traj, n - 1)
        new = list(traj)
        new[n] = x0[idx]
        for i in range(n - 1, -1, -1):
            n0 = run.nfe
            st = states[i]

            def phi(y: Tensor, sub: Tensor, i: int = i, st: Any = st) -> tuple[Tensor, Optional[Tensor]]:
                run.step = i
                return take_step(run, stepper, y, s[i], s[i + 1], _select(st, sub, y_all.shape[0])).x, None

            new[i], _, it, _ = solve_fixed_point(phi, traj[i], new[i + 1], run.alpha(s[i]) / run.alpha(s[i + 1]),
                                                 tol=tol, max_iter=max_iter, anderson=anderson)
            iterations[i, idx.cpu()] += it
            nfe_steps[i] += run.nfe - n0
        out = torch.stack(new, 1)
        return y_all - out, None  # zero at the fixed point S(Y) = Y

    y_init = torch.stack(_naive_trajectory(run, x0, substeps), 1)  # (B, N + 1, ...)
    history_nfe = run.nfe
    y_all, _, _, _ = solve_fixed_point(sweep, y_init, torch.zeros_like(y_init), 1.0, tol=tol, max_iter=max_sweeps - 1,
                                       anderson=max(anderson, 1))
    # the decode equations, checked with the final trajectory
    traj = list(y_all.unbind(1))
    states = _states(run, stepper, traj, n - 1)
    residual = torch.zeros(n, b, dtype=torch.float64)
    for i in range(n):
        run.step = i
        r = take_step(run, stepper, traj[i], s[i], s[i + 1], states[i]).x - traj[i + 1]
        residual[i] = scaled_residual(r, traj[i + 1]).cpu()
    what = f"fixed-point inversion ({stepper.name}, {counter['sweeps']} sweep(s))"
    for i in range(n):
        _report(residual[i], tol, i, s[i], s[i + 1], int(iterations[i].max()), on_fail, what)
    return FixedPointResult(
        latent=traj[0], nfe=run.nfe, iterations=iterations, residual=residual,
        nfe_per_step=nfe_steps, converged=bool((residual <= tol).all()), tol=tol, sweeps=counter["sweeps"],
        trajectory=torch.stack(traj) if save_trajectory else None, stats={"history_nfe": history_nfe},
    )
