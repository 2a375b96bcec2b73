"""Independent review checks, parametrised over the whole solver registry.

Each test runs every registered solver (``flowode.solvers.SOLVERS``) on a closed-form
:class:`~flowode.analytic.Gaussian` and checks one part of the public contract:

* NFE accounting: ``sample``/``encode`` with ``nfe=N`` stay within the budget, and ``sol.nfe``
  equals both ``solver.nfe(grid)`` and a counter wrapped around the raw network;
* direction: encode followed by decode on the reversed grid converges to the identity, and
  encode itself converges to the exact flow map; non-encoders raise ``SolverError``;
* dtype and trajectories: float32 in, float32 out, trajectory shapes right;
* edge cases: one-step grids, zero-terminal-SNR grids starting at ``sigma = inf`` (v-prediction),
  EDM schedule with Karras spacing against the closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

import flowode
from flowode.analytic import Gaussian
from flowode.grids import GridError
from flowode.solvers import SOLVERS, SolverError, make

torch.set_num_threads(1)

ALL = sorted(SOLVERS)
FIXED = [n for n in ALL if not SOLVERS[n].adaptive]
ENCODERS = [n for n in ALL if SOLVERS[n].encodes]
NON_ENCODERS = [n for n in ALL if not SOLVERS[n].encodes]
DETERMINISTIC = [n for n in ALL if not make(n).stochastic]  # instance: ddim's `stochastic` depends on eta

G = Gaussian([0.5, -0.3], [0.4, 0.8])
VP = flowode.DiscreteVPSchedule.linear()
ZSNR = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
EDM = flowode.EDMSchedule()


def counted_model(schedule, prediction: str = "eps"):
    """An exact model whose raw network calls are counted independently of ``model.nfe``."""
    m = G.model(schedule, prediction=prediction)
    raw = m.exact_eps
    m.raw_calls = 0

    def fn(x, s):
        m.raw_calls += 1
        return raw(x, s)

    m.exact_eps = fn
    return m


def fast(name):
    """Loose tolerances for adaptive solvers where only bookkeeping is checked (keeps the file fast)."""
    return {"rtol": 1e-3, "atol": 1e-3} if SOLVERS[name].adaptive else {}


def gen():
    return torch.Generator().manual_seed(0)


def rate(errs: list[float]) -> float:
    """Observed order from errors at step counts doubling each time (last pair)."""
    return math.log2(errs[-2] / errs[-1])


# ----------------------------------------------------------------------------------- 1. NFE
@pytest.mark.parametrize("name", FIXED)
def test_nfe_budget_matches_network_calls(name):
    cls = SOLVERS[name]
    cases = [(VP, None, "zero"), (VP, None, "min"), (VP, "logsnr", "min"), (VP, "karras", "zero"),
             (EDM, "karras", "zero"), (EDM, "logsnr", "min")]
    for sched, spacing, final in cases:
        for direction in ("decode", "encode") if cls.encodes else ("decode",):
            fn = flowode.sample if direction == "decode" else flowode.encode
            for budget in (1, 2, 3, 5, 8):
                m = counted_model(sched)
                x = torch.randn(3, 2, dtype=torch.float64, generator=gen())
                try:
                    sol = fn(m, x, nfe=budget, solver=name, spacing=spacing, final=final, generator=gen())
                except ValueError as exc:
                    assert "too small" in str(exc), (name, direction, budget, exc)
                    continue
                where = (name, direction, sched.__class__.__name__, spacing, final, budget)
                assert sol.nfe <= budget, where
                assert sol.nfe == m.raw_calls == m.nfe, where
                assert sol.nfe == make(name).nfe(sol.sigmas.tolist()), where


@pytest.mark.parametrize("name", FIXED)
def test_nfe_on_user_grid_not_ending_at_zero(name):
    m = counted_model(VP)
    grid = torch.logspace(1.5, -1.5, 9, dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64, generator=gen())
    sol = flowode.integrate(m, x, grid, name, generator=gen())
    assert sol.nfe == m.raw_calls == make(name).nfe(grid.tolist())


@pytest.mark.parametrize("name", [n for n in ALL if SOLVERS[n].adaptive])
def test_adaptive_nfe_counts_every_network_call(name):
    m = counted_model(VP)
    x = torch.randn(3, 2, dtype=torch.float64, generator=gen())
    sol = flowode.integrate(m, x, flowode.sigma_grid(VP, 4), name, **fast(name))
    assert m.network_passes == m.raw_calls > 0
    if name == "bs23_per_sample":
        # documented: an evaluation of the batch at per-sample sigmas counts once in `nfe`, while an
        # analytic model is called once per distinct sigma (`network_passes` keeps that count)
        assert sol.nfe <= m.raw_calls
    else:
        assert sol.nfe == m.raw_calls


# ----------------------------------------------------------------------------- 2. direction
@pytest.mark.parametrize("name", [n for n in ENCODERS if n in DETERMINISTIC])
def test_encode_converges_to_exact_flow_and_roundtrip_to_identity(name):
    x0 = G.sample(4, torch.Generator().manual_seed(1))
    enc_err, rt_err = [], []
    steps_list = [8, 16, 32] if not SOLVERS[name].adaptive else [8]
    for steps in steps_list:
        m = G.model(VP)
        down = flowode.sigma_grid(VP, steps, "logsnr", final="min")
        up = torch.flip(down, [0])
        z = flowode.integrate(m, x0, up, name).x
        enc_err.append(float((z - G.flow(x0, float(up[0]), float(up[-1]), VP)).abs().max()))
        back = flowode.integrate(m, z, down, name).x
        rt_err.append(float((back - x0).abs().max()))
    if SOLVERS[name].adaptive:
        assert enc_err[0] < 1e-2 and rt_err[0] < 1e-2, (enc_err, rt_err)
        return
    # errors must fall with the steps, at (at least nearly) first order
    assert enc_err[-1] < 0.2 and rt_err[-1] < 0.1, (enc_err, rt_err)
    assert rate(enc_err) > 0.8 and rate(rt_err) > 0.8, (enc_err, rt_err)


@pytest.mark.parametrize("name", NON_ENCODERS)
def test_non_encoders_raise_clear_error(name):
    m = G.model(VP)
    with pytest.raises(SolverError, match="encode"):
        flowode.encode(m, G.sample(2), steps=5, solver=name)


def test_stochastic_ddim_refuses_to_encode():
    with pytest.raises(SolverError, match="eta"):
        flowode.encode(G.model(VP), G.sample(2), steps=5, solver="ddim", eta=0.5)


# -------------------------------------------------------------------------- 3. dtype / shapes
@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out_and_trajectory_shapes(name):
    cls = SOLVERS[name]
    grid = flowode.sigma_grid(VP, 6, "trailing")
    x = torch.randn(3, 2, generator=gen())
    sol = flowode.integrate(G.model(VP), x, grid, name, save_trajectory=True, generator=gen(), **fast(name))
    assert sol.x.dtype == torch.float32 and sol.x.shape == x.shape
    assert torch.isfinite(sol.x).all()
    assert sol.trajectory is not None and sol.trajectory.dtype == torch.float32
    assert sol.trajectory.shape[1:] == x.shape
    if not cls.adaptive:
        assert sol.trajectory.shape[0] == len(grid)
        assert sol.denoised is not None and sol.denoised.shape == (len(grid) - 1, *x.shape)
    assert torch.equal(sol.trajectory[-1], sol.x)
    ts = sol.trajectory_sigmas
    assert ts is not None and len(ts) == sol.trajectory.shape[0]
    assert float(ts[0]) == float(grid[0]) and float(ts[-1]) == float(grid[-1])
    if cls.encodes:
        enc = flowode.encode(G.model(VP), G.sample(3).float(), steps=6, solver=name, save_trajectory=True,
                             **fast(name))
        assert enc.x.dtype == torch.float32 and torch.isfinite(enc.x).all()
        assert enc.trajectory is not None and enc.trajectory.dtype == torch.float32


# ------------------------------------------------------------------------------ 4. edge cases
@pytest.mark.parametrize("name", ALL)
def test_one_step_grids(name):
    x = torch.randn(3, 2, dtype=torch.float64, generator=gen())
    for final in ("zero", "min"):
        grid = flowode.sigma_grid(VP, 1, "trailing", final=final)
        assert len(grid) == 2
        m = counted_model(VP)
        sol = flowode.integrate(m, x, grid, name, generator=gen(), **fast(name))
        assert torch.isfinite(sol.x).all() and sol.nfe <= m.raw_calls == m.network_passes
        if name != "bs23_per_sample":  # see test_adaptive_nfe_counts_every_network_call
            assert sol.nfe == m.raw_calls
        if not SOLVERS[name].adaptive:
            assert sol.nfe == make(name).nfe(grid.tolist())


def _exact_from_inf(x, sigma_to):
    """Exact flow of the Gaussian from sigma = inf (x is the pure noise) to ``sigma_to`` on ZSNR."""
    a = float(ZSNR.alpha_from_sigma(sigma_to))
    return a * (G.mean + x * torch.sqrt(G.std**2 + sigma_to**2))


@pytest.mark.parametrize("name", ALL)
def test_zero_terminal_snr_start_at_inf(name):
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grid8 = flowode.sigma_grid(ZSNR, 8, "trailing", final="min")
    assert math.isinf(float(grid8[0]))
    # an eps network cannot give x0 at sigma = inf: a clear error, not garbage
    with pytest.raises(ValueError, match="terminal SNR"):
        flowode.integrate(G.model(ZSNR), x, grid8, name, generator=gen())
    if make(name).stochastic:
        sol = flowode.integrate(G.model(ZSNR, prediction="v"), x, grid8, name, generator=gen())
        assert torch.isfinite(sol.x).all()
        return
    errs = []
    for steps in ([32, 64, 128] if not SOLVERS[name].adaptive else [8]):
        grid = flowode.sigma_grid(ZSNR, steps, "trailing", final="min")
        sol = flowode.integrate(G.model(ZSNR, prediction="v"), x, grid, name)
        errs.append(float((sol.x - _exact_from_inf(x, float(grid[-1]))).abs().max()))
    if SOLVERS[name].adaptive:
        assert errs[0] < 1e-3, errs
    else:
        assert errs[-1] < 0.02 and rate(errs) > 0.8, errs


@pytest.mark.parametrize("name", ALL)
def test_cannot_encode_to_inf(name):
    if not SOLVERS[name].encodes:
        return
    # SolverError from encode, or GridError from a spacing that needs a finite sigma_max
    with pytest.raises((SolverError, GridError), match="sigma"):
        flowode.encode(G.model(ZSNR, prediction="v"), G.sample(2), steps=4, solver=name)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_edm_karras_converges_to_closed_form(name):
    xT = 80.0 * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    errs = []
    for steps in ([16, 32, 64] if not SOLVERS[name].adaptive else [8]):
        grid = flowode.sigma_grid(EDM, steps, "karras", final="min")
        sol = flowode.integrate(G.model(EDM), xT, grid, name)
        errs.append(float((sol.x - G.flow(xT, float(grid[0]), float(grid[-1]), EDM)).abs().max()))
    if SOLVERS[name].adaptive:
        assert errs[0] < 1e-3, errs
    else:
        assert errs[-1] < 0.05 and rate(errs) > 0.8, errs


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_edm_final_zero_returns_denoised_of_exact_path(name):
    """On final="zero" the last step returns x0_hat; the result must approach the exact flow to 0."""
    xT = 80.0 * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    steps = 64 if not SOLVERS[name].adaptive else 8
    grid = flowode.sigma_grid(EDM, steps, "karras")
    assert float(grid[-1]) == 0.0
    sol = flowode.integrate(G.model(EDM), xT, grid, name)
    err = float((sol.x - G.flow(xT, float(grid[0]), 0.0, EDM)).abs().max())
    assert err < 0.05, err


@pytest.mark.parametrize("solver, budget, spacing, steps", [
    ("heun", 1200, "trailing", 600),        # 600 steps fit; 1001+ exceed the 1000 timesteps
    ("dpm_solver_3", 60, "quadratic", 20),  # 20 steps fit; quadratic repeats a timestep from 30 on
])
def test_nfe_budget_beyond_the_spacings_step_limit(solver, budget, spacing, steps):
    """Regression: ``steps_for_nfe`` tried every step count up to the budget and raised the GridError
    of an impossible count, although a smaller count used the budget."""
    sol = flowode.sample(G.model(VP), torch.randn(2, 2, dtype=torch.float64), nfe=budget, solver=solver,
                         spacing=spacing)
    assert len(sol.sigmas) - 1 == steps and sol.nfe <= budget


def test_nfe_budget_still_reports_impossible_grids():
    with pytest.raises(GridError, match="spacing"):
        flowode.sample(G.model(VP), torch.randn(2, 2, dtype=torch.float64), nfe=5, solver="ddim", spacing="nope")


@pytest.mark.parametrize("name", [n for n in FIXED if SOLVERS[n].encodes] + ["dopri5", "adaptive_heun"])
def test_gradients_flow_through_fixed_step_solvers_without_warnings(name):
    """Backpropagating through a sampler (latent optimisation, ``grad="autograd"``) works for every
    fixed-step solver and the torchdiffeq ones, and does not warn (the input / output checks and
    torchdiffeq callbacks called float() on tensors requiring grad; torch warns once per process, so
    this catches it only for the first solver run). Not differentiable: scipy_* (NumPy). Without
    ``grad=`` nothing is differentiable (no graph is kept)."""
    import warnings

    x = torch.randn(3, 2, dtype=torch.float64, generator=gen()).requires_grad_()
    grid = flowode.sigma_grid(VP, 16, "logsnr", final="min")
    assert not flowode.integrate(G.model(VP), x, grid, name).x.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = flowode.integrate(G.model(VP), x, grid, name, grad="autograd")
        sol.x.sum().backward()
    exact = torch.autograd.grad(G.flow(x, float(grid[0]), float(grid[-1]), VP).sum(), x)[0]
    assert x.grad is not None and float((x.grad - exact).abs().max()) < 0.2


@pytest.mark.parametrize("name", ENCODERS)
def test_integrate_refuses_increasing_grid_ending_at_inf(name):
    """Regression: ``integrate`` on an increasing grid ending at sigma = inf (e.g. a flipped
    zero-terminal-SNR decode grid) returned NaN (ddim, deis, plms, ...) or overflowed; only
    ``encode`` and the exponential integrators checked it."""
    grid = torch.flip(flowode.sigma_grid(ZSNR, 6, "trailing", final="min"), [0])
    assert math.isinf(float(grid[-1]))
    with pytest.raises(SolverError, match="sigma = inf"):
        flowode.integrate(G.model(ZSNR, prediction="v"), G.sample(3), grid, name)


@pytest.mark.parametrize("name", FIXED)
def test_nfe_budget_with_linspace_final_min(name):
    """Regression: linspace with steps=1 is the single timestep 0, so with final="min" there is no
    step; ``sample(nfe=N)`` raised that grid's error (with a message about `sigmas`) for every N
    instead of using 2 or more steps. Every budget that fits now works, on a zero-SNR schedule too."""
    for sched, pred in ((VP, "eps"), (ZSNR, "v")):
        for budget in (4, 7):
            m = counted_model(sched, pred)
            sol = flowode.sample(m, torch.randn(2, 2, dtype=torch.float64), nfe=budget, solver=name,
                                 spacing="linspace", final="min", generator=gen())
            assert sol.nfe <= budget and sol.nfe == m.raw_calls and torch.isfinite(sol.x).all()
    with pytest.raises(GridError, match="steps=1"):
        flowode.sigma_grid(VP, 1, "linspace", final="min")


def test_registry_stochastic_flag_is_a_bool_on_every_class():
    """Regression: ``SOLVERS["ddim"].stochastic`` was a (truthy) property object, so filtering the
    registry by ``cls.stochastic`` treated DDIM as stochastic. Class: default options; instance:
    its own options."""
    for name, cls in SOLVERS.items():
        assert isinstance(cls.stochastic, bool), name
        assert make(name).stochastic is cls.stochastic, name
    assert SOLVERS["ddim"].stochastic is False and make("ddim", eta=0.5).stochastic is True
    assert SOLVERS["ddpm"].stochastic is True


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver++_2m", "plms", "unipc"])
def test_progress_counts_steps_with_and_without_trajectory(name):
    """Regression: with ``save_trajectory=True`` the record of the initial state also advanced the
    progress bar (steps + 1 updates for ``steps`` steps)."""
    class Bar:
        n = 0

        def update(self, k):
            Bar.n += k

    for save in (False, True):
        Bar.n = 0
        flowode.integrate(G.model(VP), torch.randn(2, 2), flowode.sigma_grid(VP, 5), name, save_trajectory=save,
                          progress=Bar())
        assert Bar.n == 5, (save, Bar.n)
