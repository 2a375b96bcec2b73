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

Multistep solvers (DPM-Solver++(2M), Lu et al. 2022b, Alg. 2) also need the model output at the
*noisier* neighbour ``x_{i-1}``, which is unknown while encoding. Hong et al. 2024 (sec. 4.2) estimate
it by a fine-grained naive DDIM inversion; here that estimate starts the iteration and further
Gauss-Seidel sweeps over the whole trajectory re-solve every step with the updated history until
all decode equations hold to ``tol`` (an extension that makes the round trip exact, not near-exact).
A multistep method plugs in as a :class:`MultistepForm` (see :data:`MULTISTEP_FORMS`).

Cost: per step one naive step (``nfe_per_step`` evaluations) plus ``nfe_per_step`` per iteration;
the result reports the iterations and NFE of every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Union

import torch
from torch import Tensor

from ..models import EpsilonModel
from ..solvers import Context, OneStepSolver, Solver, SolverError, make
from ..solvers.base import boundary_step
from ._common import scaled_residual, warn_unconverged

__all__ = ["FixedPointResult", "fixed_point_encode", "default_tol", "MultistepForm", "DPMSolverPP2M",
           "MULTISTEP_FORMS", "multistep_decode", "solve_fixed_point"]


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
            gamma = torch.linalg.lstsq(df.to(torch.float64), ff.to(torch.float64).unsqueeze(-1)).solution
            step = (dg.to(torch.float64) @ gamma).squeeze(-1).to(g.dtype).view_as(g)
            ok = torch.isfinite(step.flatten(1)).all(1).view(-1, *([1] * (g.dim() - 1)))
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


def fixed_point_encode(
    model: EpsilonModel,
    x0: Tensor,
    sigmas: Tensor,
    solver: Union[str, Solver] = "ddim",
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
        sigmas: the decode grid (decreasing), validated.
        solver: a one-step solver (any deterministic registered one, e.g. ``"ddim"``, ``"heun"``,
            ``"rk4"``), or a multistep form from :data:`MULTISTEP_FORMS` (``"dpm_solver++_2m"``).
        tol: tolerance on the per-sample scaled residual ``max|Phi(y) - x| / (1 + |x|)``
            (default :func:`default_tol`).
        max_iter: iteration cap per step (per sweep for multistep solvers).
        anderson: Anderson-acceleration depth (0 = plain fixed-point iteration).
        on_fail: ``"warn"`` (default; :class:`InversionWarning` naming samples and residuals),
            ``"raise"`` (``RuntimeError``) or ``"ignore"``.
        max_sweeps, history_substeps: multistep solvers only: the cap on trajectory sweeps and the
            number of naive DDIM sub-steps per interval of the initial history estimate (Hong et al.).
        save_trajectory: keep every state of the encoded trajectory.
        **solver_options: options of ``solver``.
    """
    t = _check_options(tol, max_iter, anderson, on_fail, x0.dtype)
    if isinstance(solver, str) and solver.strip().lower().replace("-", "_") in MULTISTEP_FORMS:
        if solver_options:
            raise TypeError(f"multistep form {solver!r} takes no options, got {sorted(solver_options)}.")
        form = MULTISTEP_FORMS[solver.strip().lower().replace("-", "_")]
        return _multistep_encode(model, x0, sigmas, form, tol=t, max_iter=max_iter, anderson=anderson,
                                 on_fail=on_fail, max_sweeps=max_sweeps, substeps=history_substeps,
                                 save_trajectory=save_trajectory)
    slv = make(solver, **solver_options)
    if not isinstance(slv, OneStepSolver) or slv.stochastic or slv.adaptive:
        forms = ", ".join(repr(k) for k in MULTISTEP_FORMS)
        kind = "stochastic" if slv.stochastic else "adaptive" if slv.adaptive else "not one-step"
        raise SolverError(
            f"fixed-point inversion needs a deterministic one-step solver (its decode step is the map to "
            f"invert); {slv.name!r} is {kind}. "
            f"Use e.g. 'ddim', 'heun', 'rk4', or a multistep form ({forms})."
        )
    ctx = Context(model=model, sigmas=sigmas)
    slv.check(ctx)
    s = ctx.sigma_list
    n = len(s) - 1
    b = x0.shape[0]
    iterations = torch.zeros(n, b, dtype=torch.int64)
    residual = torch.zeros(n, b, dtype=torch.float64)
    nfe_steps = [0] * n
    nfe_start = model.nfe
    x = x0
    traj = [x0] if save_trajectory else []
    for i in range(n - 1, -1, -1):
        n0 = model.nfe
        ctx.step = i
        y0, _ = slv.step(ctx, x, s[i + 1], s[i])  # the naive inverse step starts the iteration
        c = ctx.alpha(s[i]) / ctx.alpha(s[i + 1])

        def phi(y: Tensor, idx: Tensor, i: int = i) -> tuple[Tensor, Optional[Tensor]]:
            ctx.step = i
            return slv.step(ctx, y, s[i], s[i + 1])[0], None

        x, _, it, res = solve_fixed_point(phi, y0, x, c, tol=t, max_iter=max_iter, anderson=anderson)
        iterations[i], residual[i] = it, res
        nfe_steps[i] = model.nfe - n0
        _report(res, t, i, s[i], s[i + 1], int(it.max()), on_fail, f"fixed-point inversion ({slv.name})")
        if save_trajectory:
            traj.append(x)
    model.step_hint = None
    return FixedPointResult(
        latent=x, nfe=model.nfe - nfe_start, iterations=iterations, residual=residual, nfe_per_step=nfe_steps,
        converged=bool((residual <= t).all()), tol=t,
        trajectory=torch.stack(traj[::-1]) if save_trajectory else None,
    )


# ------------------------------------------------------------------------------------ multistep solvers
class MultistepForm:
    """A linear multistep decode step written so inversion can call it with a chosen history.

    Subclasses implement :meth:`update`: the state at ``sigmas[i+1]`` from the state ``x`` at
    ``sigmas[i]``, its x0 prediction ``d`` and the earlier (noisier) predictions ``history``
    (``history[0]`` at ``sigmas[i-1]``, ...; shorter during warm-up). ``order`` is the number of
    predictions used. A registered solver that exposes the same ``update`` can be inverted by
    adding an instance to :data:`MULTISTEP_FORMS` under its registry name.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    source: ClassVar[str] = ""

    def update(self, model: EpsilonModel, x: Tensor, d: Tensor, history: list[Tensor], sigmas: list[float],
               i: int) -> Tensor:
        raise NotImplementedError


class DPMSolverPP2M(MultistepForm):
    """DPM-Solver++(2M) (Lu et al. 2022b, "DPM-Solver++", Algorithm 2), data-prediction form in
    ``lambda = -log sigma``: with ``h_i = lambda_{i+1} - lambda_i``, ``r_i = h_{i-1} / h_i``,

        x_{i+1} = (std_{i+1} / std_i) x_i + alpha_{i+1} (1 - e^{-h_i}) D_i',
        D_i'    = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1}     (D_i' = D_i on the first step),

    and a first-order (DDIM) step into ``sigma = 0`` (diffusers' ``final_sigmas_type="zero"``,
    which takes the last step first-order)."""

    name = "dpm_solver++_2m"
    order = 2
    source = "Lu et al. 2022b, DPM-Solver++, Algorithm 2 (multistep, order 2)"

    def update(self, model: EpsilonModel, x: Tensor, d: Tensor, history: list[Tensor], sigmas: list[float],
               i: int) -> Tensor:
        s, s1 = sigmas[i], sigmas[i + 1]
        if s1 == 0.0:
            return d
        sched = model.schedule
        a, a1 = float(sched.alpha_from_sigma(s)), float(sched.alpha_from_sigma(s1))
        h = math.log(s / s1)
        if history and i >= 1 and math.isfinite(sigmas[i - 1]):
            r = math.log(sigmas[i - 1] / s) / h
            d = torch.add(d * (1 + 0.5 / r), history[0], alpha=-0.5 / r)
        if math.isinf(s):
            return d * a1
        return torch.add(x * ((a1 * s1) / (a * s)), d, alpha=a1 * (1 - s1 / s))


MULTISTEP_FORMS: dict[str, MultistepForm] = {DPMSolverPP2M.name: DPMSolverPP2M()}


def multistep_decode(model: EpsilonModel, z: Tensor, sigmas: Tensor, form: Union[str, MultistepForm]) -> Tensor:
    """Decode ``z`` (state at ``sigmas[0]``) with a :class:`MultistepForm` on ``sigmas``: the
    forward map that :func:`fixed_point_encode` inverts for that form."""
    f = MULTISTEP_FORMS[form] if isinstance(form, str) else form
    s = [float(v) for v in sigmas.tolist()]
    hist: list[Tensor] = []
    x = z
    for i in range(len(s) - 1):
        model.step_hint = i
        d = model.predict(x, s[i]).x0
        x = f.update(model, x, d, hist, s, i)
        hist = [d] + hist[: f.order - 2] if f.order > 1 else []
    model.step_hint = None
    return x


def _naive_trajectory(model: EpsilonModel, x0: Tensor, s: list[float], substeps: int) -> list[Tensor]:
    """States at every grid point from a naive DDIM inversion with ``substeps`` sub-steps per
    interval (uniform in sigma), decode order (Hong et al. 2024's history estimate)."""
    ctx = Context(model=model, sigmas=torch.tensor(s, dtype=torch.float64))
    out = [x0]
    x = x0
    for i in range(len(s) - 1, 0, -1):
        lo, hi = s[i], s[i - 1]
        pts = [lo + (hi - lo) * k / substeps for k in range(substeps + 1)]
        for a, b in zip(pts[:-1], pts[1:]):
            x, _ = boundary_step(ctx, x, a, b)
        out.append(x)
    return out[::-1]


def _history(preds: list[Optional[Tensor]], i: int, order: int) -> list[Tensor]:
    return [p for p in preds[max(0, i - order + 1): i][::-1] if p is not None]


def _multistep_encode(model: EpsilonModel, x0: Tensor, sigmas: Tensor, form: MultistepForm, *, tol: float,
                      max_iter: int, anderson: int, on_fail: str, max_sweeps: int, substeps: int,
                      save_trajectory: bool) -> FixedPointResult:
    """Exact inversion of a multistep decode: the whole trajectory ``Y = (x_0, ..., x_N)`` is the
    unknown. One *sweep* ``S(Y)`` takes the history predictions ``D(x_{i-1})`` from ``Y`` and
    re-solves every step's equation by the per-step fixed-point iteration, from the data upwards;
    the exact trajectory is the fixed point ``S(Y) = Y``, found by Anderson-accelerated iteration
    of ``S`` (per sample) started from the fine-grained naive DDIM inversion (Hong et al. 2024)."""
    if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
        raise ValueError(f"`history_substeps` must be a positive integer, got {substeps!r}.")
    if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"`max_sweeps` must be a positive integer, got {max_sweeps!r}.")
    s = [float(v) for v in sigmas.tolist()]
    n = len(s) - 1
    b = x0.shape[0]
    nfe_start = model.nfe
    iterations = torch.zeros(n, b, dtype=torch.int64)
    nfe_steps = [0] * n
    counter = {"sweeps": 0}
    alpha = [float(model.schedule.alpha_from_sigma(v)) for v in s]

    def sweep(y_all: Tensor, idx: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        counter["sweeps"] += 1
        traj = list(y_all.unbind(1))
        preds: list[Optional[Tensor]] = [None] * (n + 1)
        for i in range(n - 1):
            n0 = model.nfe
            model.step_hint = i
            preds[i] = model.predict(traj[i], s[i]).x0
            nfe_steps[i] += model.nfe - n0
        new = list(traj)
        new[n] = x0[idx]
        for i in range(n - 1, -1, -1):
            n0 = model.nfe
            hist = _history(preds, i, form.order)

            def phi(y: Tensor, sub: Tensor, i: int = i, hist: list[Tensor] = hist) -> tuple[Tensor, Optional[Tensor]]:
                model.step_hint = i
                return form.update(model, y, model.predict(y, s[i]).x0, [h[sub] for h in hist], s, i), None

            new[i], _, it, _ = solve_fixed_point(phi, traj[i], new[i + 1], alpha[i] / alpha[i + 1], tol=tol,
                                                 max_iter=max_iter, anderson=anderson)
            iterations[i, idx.cpu()] += it
            nfe_steps[i] += model.nfe - n0
        out = torch.stack(new, 1)
        return y_all - out, None  # zero at the fixed point S(Y) = Y

    y_init = torch.stack(_naive_trajectory(model, x0, s, substeps), 1)  # (B, N + 1, ...)
    history_nfe = model.nfe - nfe_start
    y_all, _, _, _ = solve_fixed_point(sweep, y_init, torch.zeros_like(y_init), 1.0, tol=tol, max_iter=max_sweeps - 1,
                                       anderson=max(anderson, 1))
    # the decode equations, checked with the final trajectory (N evaluations)
    traj = list(y_all.unbind(1))
    preds = []
    for i in range(n):
        model.step_hint = i
        preds.append(model.predict(traj[i], s[i]).x0)
    residual = torch.zeros(n, b, dtype=torch.float64)
    for i in range(n):
        r = form.update(model, traj[i], preds[i], _history(preds, i, form.order), s, i) - traj[i + 1]  # type: ignore[arg-type]
        residual[i] = scaled_residual(r, traj[i + 1]).cpu()
    model.step_hint = None
    what = f"fixed-point inversion ({form.name}, {counter['sweeps']} sweep(s))"
    for i in range(n):
        _report(residual[i], tol, i, s[i], s[i + 1], int(iterations[i].max()), on_fail, what)
    return FixedPointResult(
        latent=traj[0], nfe=model.nfe - nfe_start, iterations=iterations, residual=residual,
        nfe_per_step=nfe_steps, converged=bool((residual <= tol).all()), tol=tol, sweeps=counter["sweeps"],
        trajectory=torch.stack(traj) if save_trajectory else None, stats={"history_nfe": history_nfe},
    )
