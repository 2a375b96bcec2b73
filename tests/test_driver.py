"""The one driver (issue 9): steppers with explicit state, the boundary policy, controllers, tableaux
with embedded weights, recording, callbacks, progress, NaN checks, NFE counted per call and the
autograd mode."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowode
from flowode.control import PIController
from flowode.driver import count_evaluations, take_step
from flowode.noise import KeyedNoise
from flowode.solvers import SOLVERS, Boundary, ButcherTableau, SolverError, make, register_tableau
from flowode.solvers.boundary import adaptive_interval, classify
from flowode.solvers.run import Run

F64 = torch.float64
G = flowode.Gaussian([0.5, -1.0, 2.0], [0.5, 1.0, 2.0])
VP = flowode.DiscreteVPSchedule.linear()
LVP = flowode.LinearVPSchedule()
FIXED = [n for n, c in sorted(SOLVERS.items()) if not c.adaptive]


def _x(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.fixture
def registered():
    names: list[str] = []
    yield names
    for n in names:
        SOLVERS.pop(n, None)


# ------------------------------------------------------------------------------------------ DESIGN 5.1
def test_design_5_1_calls_as_written(registered):
    bs3 = ButcherTableau(c=(0.0, 0.5, 0.75, 1.0), a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
                         b=(2 / 9, 1 / 3, 4 / 9, 0.0), order=3, b_error=(-5 / 72, 1 / 12, 1 / 9, -1 / 8))
    flowode.solvers.register_tableau("my_bs3", bs3, source="Bogacki & Shampine 1989")
    registered.append("my_bs3")
    model = G.model(LVP)
    x = _x()
    sigmas = torch.tensor([10.0, 0.1], dtype=F64)
    sol = flowode.integrate(model, x, sigmas, solver="my_bs3", rtol=1e-5, atol=1e-5)  # adaptive: b_error given
    assert SOLVERS["my_bs3"].adaptive and sol.stats["accepted"] > 0
    assert float((sol.x - G.flow(x, 10.0, 0.1, LVP)).abs().max()) < 2e-4
    # the same tableau as the built-in bs23 (in the sigma coordinates of a registered tableau): the same solve
    ref = flowode.integrate(model, x, sigmas, solver="bs23", rtol=1e-5, atol=1e-5, coordinates="sigma")
    torch.testing.assert_close(sol.x, ref.x, rtol=0, atol=1e-12)

    class Bar:
        n = 0

        def update(self, k):
            Bar.n += k

    sol = flowode.integrate(model, x, flowode.sigma_grid(LVP, 1), solver="dopri5", progress=Bar())
    # the bar advances per accepted step, plus the boundary step sigma_min -> 0
    assert Bar.n == sol.stats["accepted"] + len(sol.stats["boundary_steps"]) > 10
    flowode.integrate(model, x, flowode.sigma_grid(LVP, 1), solver="dopri5", progress=True)  # a tqdm bar


def test_fixed_step_tableau_is_one_line_and_has_its_order(registered):
    """Kutta's third-order method (Hairer et al. I, Table 1.1) as one tableau and one line."""
    kutta3 = ButcherTableau(c=(0.0, 0.5, 1.0), a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6), order=3)
    register_tableau("kutta3_test", kutta3, source="Kutta 1901")
    registered.append("kutta3_test")
    model = G.model(LVP)
    x = _x()
    errs = []
    for n in (8, 16, 32):
        grid = torch.logspace(1, -1, n + 1, dtype=F64)
        sol = flowode.integrate(model, x, grid, "kutta3_test")
        assert sol.nfe == 3 * n
        errs.append(float((sol.x - G.flow(x, 10.0, 0.1, LVP)).abs().max()))
    assert 2.7 < math.log2(errs[-2] / errs[-1]) < 3.3, errs


def test_tableau_validation():
    with pytest.raises(ValueError, match="b_error"):
        ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, b_error=(0.5, 0.4))
    with pytest.raises(ValueError, match="sums to"):
        ButcherTableau(c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0), order=2)
    with pytest.raises(TypeError, match="ButcherTableau"):
        register_tableau("bad_test", "rk4", source="x")  # type: ignore[arg-type]


def test_embedded_pair_without_fsal_counts_every_evaluation(registered):
    """Heun-Euler 2(1): not FSAL, so the first stage is evaluated again after every accepted step."""
    he = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), order=2, b_error=(-0.5, 0.5), embedded_order=1)
    register_tableau("heun_euler_test", he, source="Heun-Euler pair")
    registered.append("heun_euler_test")
    calls = []
    model = G.model(LVP)
    inner = model.exact_eps
    model.exact_eps = lambda x, s: calls.append(1) or inner(x, s)
    sol = flowode.integrate(model, _x(), [10.0, 0.1], "heun_euler_test", rtol=1e-4, atol=1e-4)
    st_ = sol.stats
    # 1 first value + 1 initial-step probe + 1 per attempt (second stage) + 1 per accepted step but the last
    assert sol.nfe == len(calls) == 2 + (st_["accepted"] + st_["rejected"]) + st_["accepted"] - 1
    assert float((sol.x - G.flow(_x(), 10.0, 0.1, LVP)).abs().max()) < 5e-3


def test_pi_controller_option():
    model = G.model(LVP)
    x = _x()
    i_ctl = flowode.integrate(model, x, [10.0, 0.1], "dp45", rtol=1e-7, atol=1e-7)
    pi = flowode.integrate(model, x, [10.0, 0.1], "dp45", rtol=1e-7, atol=1e-7,
                           controller=PIController(beta1=0.7, beta2=0.4))
    exact = G.flow(x, 10.0, 0.1, LVP)
    for sol in (i_ctl, pi):
        assert float((sol.x - exact).abs().max()) < 2e-6
    assert pi.stats["step_sizes"] != i_ctl.stats["step_sizes"]
    with pytest.raises(ValueError, match="controller"):
        make("dp45", controller="pi")
    with pytest.raises(ValueError, match="factor_min"):
        PIController(factor_min=2.0)
    with pytest.raises(ValueError, match="error_norm"):
        make("bs23", error_norm="sample")


# ------------------------------------------------------------------------------------------ boundaries
def test_boundary_policy_classifies_once():
    assert classify(1.0, 0.0) is Boundary.TO_ZERO
    assert classify(0.0, 1.0) is Boundary.FROM_ZERO
    assert classify(math.inf, 1.0) is Boundary.FROM_INF
    assert classify(2.0, 1.0) is None
    plan = adaptive_interval([0.0, 5.0], 0.002, "x")
    assert plan.before == (0.0, 0.002) and plan.interval == (0.002, 5.0) and plan.after is None
    with pytest.raises(SolverError, match="inf, 0"):
        adaptive_interval([math.inf, 0.0], 0.002, "x")
    assert make("plms").native(Boundary.TO_ZERO) and not make("heun").native(Boundary.TO_ZERO)
    assert make("adams_bashforth").native(Boundary.TO_ZERO)
    assert not make("adams_bashforth", coordinates="lambda").native(Boundary.TO_ZERO)


@pytest.mark.parametrize("name", [n for n in FIXED if SOLVERS[n].multistep])
def test_solver_state_is_never_mutated(name):
    """A step returns a new state: stepping twice from the same state gives the same result (the
    driver's replay and exact inversion rely on it)."""
    model = G.model(VP)
    grid = [float(v) for v in flowode.sigma_grid(VP, 6, "logsnr")]
    stepper = make(name)
    run = Run(model, grid, noise=KeyedNoise(0))  # stochastic multistep solvers: the same draws on a replay
    x, state = _x(), stepper.init(run)
    for i in range(3):
        run.step = i
        x, state = take_step(run, stepper, x, grid[i], grid[i + 1], state)[:2]
    run.step = 3
    first = take_step(run, stepper, x, grid[3], grid[4], state).x
    again = take_step(run, stepper, x, grid[3], grid[4], state).x
    assert torch.equal(first, again)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(name=st.sampled_from(FIXED), n=st.integers(1, 12), lo=st.floats(-1.9, -0.5), hi=st.floats(0.0, 2.1),
       zero=st.booleans())
def test_counted_cost_is_the_solve(name, n, lo, hi, zero):
    """``stepper.nfe(grid)`` (a dry run of the driver) equals the evaluations of the real solve."""
    grid = torch.logspace(hi, lo, n + 1, dtype=F64)
    if zero:
        grid = torch.cat([grid, torch.zeros(1, dtype=F64)])
    model = G.model(VP)
    sol = flowode.integrate(model, _x(2), grid, name, generator=torch.Generator().manual_seed(0))
    assert sol.nfe == make(name).nfe(grid.tolist(), VP) == count_evaluations(make(name), grid.tolist(), VP)


def test_nfe_is_counted_per_call_not_by_the_model():
    model = G.model(VP)
    grid = flowode.sigma_grid(VP, 10)
    model.nfe = 12345  # a user's own bookkeeping does not leak into a solve
    a = flowode.integrate(model, _x(), grid, "heun")
    b = flowode.integrate(model, _x(), grid, "heun")
    assert a.nfe == b.nfe == 19 and model.nfe == 12345 + 38


# ------------------------------------------------------------------------------------------ recording, callbacks
def test_save_at_levels_fixed_and_adaptive():
    model = G.model(LVP)
    x = _x()
    grid = torch.logspace(1, -1, 9, dtype=F64)
    levels = [float(grid[2]), float(grid[5])]
    sol = flowode.integrate(model, x, grid, "rk4", save_at=levels)
    assert sol.trajectory_sigmas.tolist() == levels and sol.trajectory.shape == (2, 8, 3)
    full = flowode.integrate(model, x, grid, "rk4", save_trajectory=True)
    torch.testing.assert_close(sol.trajectory, full.trajectory[[2, 5]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="not levels of the grid"):
        flowode.integrate(model, x, grid, "rk4", save_at=[3.0])
    with pytest.raises(ValueError, match="save_at"):
        flowode.integrate(model, x, grid, "rk4", save_at="all")
    # adaptive: any level inside the interval; the steps land on it
    ada = flowode.integrate(model, x, [10.0, 0.1], "dp45", rtol=1e-8, atol=1e-8, save_at=[3.0, 0.5])
    assert ada.trajectory_sigmas.tolist() == [3.0, 0.5]
    for i, s in enumerate((3.0, 0.5)):
        assert float((ada.trajectory[i] - G.flow(x, 10.0, s, LVP)).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="outside"):
        flowode.integrate(model, x, [10.0, 0.1], "dp45", save_at=[20.0])


def test_callback_sees_every_step():
    model = G.model(VP)
    grid = flowode.sigma_grid(VP, 7)
    events = []
    sol = flowode.integrate(model, _x(), grid, "dpm_solver++_2m", save_trajectory=True, callback=events.append)
    assert [e.step for e in events] == list(range(7))
    assert [e.sigma_next for e in events] == grid[1:].tolist()
    for e, xs in zip(events, sol.trajectory[1:]):
        torch.testing.assert_close(e.x, xs, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack([e.denoised for e in events]), sol.denoised, rtol=0, atol=0)
    assert events[-1].nfe == sol.nfe


# ------------------------------------------------------------------------------------------ autograd mode
def test_no_graph_is_kept_unless_asked():
    net = flowode.nets.MLP(dim=3, hidden=32, depth=2)
    assert all(p.requires_grad for p in net.parameters())
    model = flowode.EpsilonModel(net, VP)
    grid = flowode.sigma_grid(VP, 10)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        sol = flowode.integrate(model, _x().float(), grid, "heun")
    assert not saved and sol.x.grad_fn is None
    sol = flowode.integrate(model, _x().float(), grid, "heun", grad="autograd")
    sol.x.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="`grad`.*'autograd'"):
        flowode.integrate(model, _x().float(), grid, "heun", grad="adjoint-ish")


# ------------------------------------------------------------------------------------------ checks
def test_check_interval_and_input_checks():
    model = G.model(VP)
    grid = flowode.sigma_grid(VP, 10)
    with pytest.raises(ValueError, match="check_interval"):
        flowode.integrate(model, _x(), grid, "ddim", check_interval=0)
    bad = _x()
    bad[1, 2] = float("nan")
    for interval in (1, 16):
        with pytest.raises(ValueError, match="`x` contains NaN"):
            flowode.integrate(model, bad, grid, "ddim", check_interval=interval)


def test_solver_overflow_is_named():
    """Finite network outputs but an update that overflows float16: the step is named, not the network."""
    model = flowode.EpsilonModel(lambda x, t: torch.full_like(x, 3e4), flowode.EDMSchedule())
    x = torch.zeros(2, 3, dtype=torch.float16)
    with pytest.raises(SolverError, match=r"state became NaN/Inf at step \d+.*overflowed"):
        flowode.integrate(model, x, torch.tensor([80.0, 40.0, 20.0, 10.0, 5.0]), "euler")


# ------------------------------------------------------------------------------------------ review regressions
ZSNR = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)


def test_clamped_x0_does_not_hide_an_inf_network_output():
    """clip_x0 turns an Inf x0 into 1: the state stays finite, so such models are checked per call."""
    def net(x, t):
        out = torch.tanh(x).clone()
        if float(t[0]) < 300:
            out[1] = float("inf")
        return out

    for kw in ({"clip_x0": (-1.0, 1.0)}, {"dynamic_threshold": 0.9}):
        m = flowode.EpsilonModel(net, VP, prediction="x0", **kw)
        with pytest.raises(flowode.NetworkOutputError, match=r"NaN/Inf at sigma=.*\(step \d+\) for samples \[1\]"):
            flowode.integrate(m, _x(4), flowode.sigma_grid(VP, 20), "ddim")


def test_scipy_solvers_refuse_autograd():
    with pytest.raises(SolverError, match="cannot be differentiated"):
        flowode.integrate(G.model(LVP), _x(), [10.0, 0.1], "scipy_rk45", grad="autograd")


def test_inverters_keep_no_graph_for_a_trainable_network():
    net = flowode.nets.MLP(dim=3, hidden=16, depth=1)
    model = flowode.EpsilonModel(net, VP)
    x0 = _x(4).float()
    g = flowode.sigma_grid(VP, 5, "logsnr")
    assert not flowode.invert.fixed_point_encode(model, x0, g, on_fail="ignore").latent.requires_grad
    assert not flowode.invert.edict_encode(model, x0, g).x.requires_grad
    assert not flowode.invert.bdia_encode(model, x0, g).z0.requires_grad
    for method in ("ddim", "fixed_point", "edict", "bdia"):
        rt = flowode.roundtrip(model, x0, 5, method, on_fail="ignore") if method == "fixed_point" else \
            flowode.roundtrip(model, x0, 5, method)
        assert not rt.latent.requires_grad and not rt.reconstruction.requires_grad, method


@pytest.mark.parametrize("name", FIXED)
def test_one_step_from_inf_to_zero(name):
    """[inf, 0]: a step from zero terminal SNR straight to the data is the DDIM limit, the data mean."""
    sol = flowode.sample(G.model(ZSNR, "v"), _x(4), steps=1, solver=name, generator=torch.Generator().manual_seed(0))
    assert sol.nfe == 1 == make(name).nfe(sol.sigmas.tolist(), ZSNR)
    torch.testing.assert_close(sol.x, G.mean.expand(4, 3), rtol=1e-12, atol=1e-12)


def test_per_sample_steps_for_denoisers_and_float_only_networks():
    edm = flowode.EDMSchedule()

    def D(xbar, sigma):
        s = sigma.view(-1, 1)
        return G.mean + (xbar - G.mean) * G.std**2 / (G.std**2 + s**2)

    ref = G.flow(10 * _x(), 10.0, 0.01, edm)
    den = flowode.DenoiserModel(D, edm)
    sol = flowode.integrate(den, 10 * _x(), [10.0, 0.01], "bs23_per_sample", rtol=1e-6, atol=1e-6)
    assert float((sol.x - ref).abs().max()) < 1e-4

    class FloatOnly(flowode.EpsilonModel):  # a user subclass whose network takes one level per call
        def network(self, x, sigma):
            s = float(sigma)
            return G.eps(x, s, 1.0)

    fo = FloatOnly(lambda x, t: x, edm)
    sol = flowode.integrate(fo, 10 * _x(), [10.0, 0.01], "bs23_per_sample", rtol=1e-6, atol=1e-6)
    assert float((sol.x - ref).abs().max()) < 1e-4 and sol.nfe == 2 + 3 * sol.stats["rounds"]


def test_check_interval_one_still_checks_the_state():
    m = flowode.EpsilonModel(lambda x, t: torch.full_like(x, 1e38), LVP)
    for interval in (1, 32):
        with pytest.raises(SolverError, match="overflowed"):
            flowode.integrate(m, _x().float(), flowode.sigma_grid(LVP, 10), "ddim", check_interval=interval)


def test_inverters_validate_their_grid():
    m = G.model(VP)
    g = flowode.sigma_grid(VP, 5, "logsnr")
    x0 = _x(2)
    for fn in (flowode.invert.fixed_point_encode, flowode.invert.edict_encode, flowode.invert.bdia_encode):
        with pytest.raises(flowode.GridError, match="decode"):
            fn(m, x0, torch.flip(g, [0]))
        with pytest.raises(SolverError, match="sigma = inf"):
            fn(G.model(ZSNR, "v"), x0, flowode.sigma_grid(ZSNR, 5, "trailing"))


def test_adaptive_save_at_inside_a_boundary_step_is_refused():
    with pytest.raises(ValueError, match="boundary step"):
        flowode.integrate(G.model(LVP), _x(), [10.0, 0.0], "bs23", save_at=[LVP.sigma_min / 2, 1.0])


def test_partial_per_sample_solve_keeps_the_outputs_every_sample_passed():
    sol = flowode.integrate(G.model(LVP), _x(4), [10.0, 0.1], "bs23_per_sample", save_at=[5.0], max_nfe=40,
                            on_max_nfe="return")
    assert sol.stats["status"] == "max_nfe"
    assert sol.trajectory_sigmas.tolist() == [5.0]
    torch.testing.assert_close(sol.trajectory[0], G.flow(_x(4), 10.0, 5.0, LVP), rtol=0, atol=1e-3)


def test_adaptive_callback_steps_are_numbered_once_and_errors_name_them():
    events = []
    flowode.integrate(G.model(VP), _x(), flowode.sigma_grid(VP, 1), "bs23", callback=events.append)
    assert [e.step for e in events] == list(range(len(events))) and events[-1].sigma_next == 0.0
    calls = []

    def fn(x, t):
        calls.append(1)
        return x * float("nan") if len(calls) > 40 else G.eps(x / torch.sqrt(1 + VP.sigma(t)[:, None] ** 2),
                                                               float(VP.sigma(float(t[0]))), 1.0)

    with pytest.raises(flowode.NetworkOutputError, match=r"\(step [1-9]\d*\)"):
        flowode.integrate(flowode.EpsilonModel(fn, VP), _x(), flowode.sigma_grid(VP, 1), "bs23")


def test_user_model_overriding_predict_with_the_plain_signature():
    class Mine(flowode.EpsilonModel):
        def predict(self, x, sigma):
            return super().predict(x, sigma)

    m = Mine(lambda x, t: torch.zeros_like(x), VP)
    assert flowode.integrate(m, _x(), flowode.sigma_grid(VP, 4), "heun").nfe == 7
