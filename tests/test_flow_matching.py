"""Flow matching (x_t = (1 - t) x0 + t eps) as one more Gaussian path: the schedule, the "flow"
parameterisation u = eps - x0, the DDIM = Euler-in-sigma = flow-matching-Euler identity, and every
registered solver on the path (orders against the closed-form Gaussian flow, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowode
from flowode.analytic import Gaussian, gmm_ring
from flowode.parameterization import PREDICTIONS, from_eps_x0, to_eps, to_x0
from flowode.solvers import SOLVERS, make

torch.set_num_threads(1)
F64 = torch.float64

FM = flowode.FlowMatchSchedule()
FM3 = flowode.FlowMatchSchedule(shift=3.0)
GAUSS = Gaussian([0.5, -1.0, 2.0, 0.0], [0.2, 0.7, 1.5, 3.0])
RING = gmm_ring()
SCHEDULES = [FM, FM3, flowode.DiscreteVPSchedule.linear(), flowode.LinearVPSchedule(), flowode.EDMSchedule()]


def _x(n: int = 8, dim: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _slope(ns: list[int], errs: list[float]) -> float:
    return -float(np.polyfit(np.log(ns), np.log(errs), 1)[0])


# ------------------------------------------------------------------------------------ schedule
def test_shift_multiplies_sigma_and_keeps_the_path():
    """SD3's shift t = s u / (1 + (s - 1) u) is sigma = s u / (1 - u): it rescales sigma, and the path
    (alpha, std as functions of sigma) and the network's time t(sigma) are those of the unshifted path."""
    u = torch.linspace(0.01, 0.99, 99, dtype=F64)
    t = FM3.shift_time(u)
    torch.testing.assert_close(FM3.sigma(t), 3.0 * FM.sigma(u), rtol=1e-13, atol=0)
    torch.testing.assert_close(FM3.unshift_time(t), u, rtol=1e-15, atol=0)
    sig = torch.logspace(-3, 3, 25, dtype=F64)
    for name in ("alpha_from_sigma", "std_from_sigma", "t", "dlog_alpha_dsigma"):
        torch.testing.assert_close(getattr(FM3, name)(sig), getattr(FM, name)(sig), rtol=0, atol=0)
    # grids: uniform in the unshifted time, so interior levels are 3x the unshifted grid's (ends pinned)
    g1, g3 = flowode.sigma_grid(FM, 6), flowode.sigma_grid(FM3, 6)
    assert math.isinf(float(g3[0])) and float(g3[-1]) == 0.0 and float(g3[-2]) == pytest.approx(FM.sigma_min)
    u_lo = float(FM3.unshift_time(torch.tensor(FM.t_min, dtype=F64)))
    u_grid = torch.linspace(1.0, u_lo, 6, dtype=F64)[1:-1]
    torch.testing.assert_close(g3[1:-2], 3.0 * FM.sigma(u_grid), rtol=1e-12, atol=0)
    assert bool((g3[1:-2] > g1[1:-2]).all())


def test_flux_dynamic_shift():
    """Flux: shift = exp(mu), mu linear in the token count, 0.5 at 256 tokens and 1.15 at 4096."""
    assert flowode.FlowMatchSchedule.flux(256).shift == pytest.approx(math.exp(0.5), rel=1e-15)
    assert flowode.FlowMatchSchedule.flux(4096).shift == pytest.approx(math.exp(1.15), rel=1e-15)
    mid = flowode.FlowMatchSchedule.flux(2176).shift  # halfway in tokens
    assert mid == pytest.approx(math.exp(0.825), rel=1e-14)


@pytest.mark.parametrize("kwargs, match", [
    ({"shift": 0.0}, "shift"), ({"shift": float("nan")}, "shift"), ({"shift": -1.0}, "shift"),
    ({"t_min": 0.0}, "t_min"), ({"t_max": 1.5}, "t_max"), ({"t_min": 0.5, "t_max": 0.4}, "t_min"),
])
def test_bad_schedule_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flowode.FlowMatchSchedule(**kwargs)


def test_flux_rejects_bad_token_count():
    with pytest.raises(ValueError, match="image_seq_len"):
        flowode.FlowMatchSchedule.flux(0)


# ------------------------------------------------------------------------------------ parameterisation
@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__ + f"{getattr(s, 'shift', '')}")
def test_flow_converts_to_and_from_every_parameterisation(sched):
    """u = eps - x0 and back: eps = (x + alpha u) / (alpha + std), x0 = (x - std u) / (alpha + std),
    to round-off on every path, including sigma = inf where alpha = 0."""
    x0, eps = _x(16, 3, 1), _x(16, 3, 2)
    sigmas = [0.05, 1.0, 20.0] + ([math.inf] if sched.reaches_infinity else [])
    for sigma in sigmas:
        alpha, std = float(sched.alpha_from_sigma(sigma)), float(sched.std_from_sigma(sigma))
        x = alpha * x0 + std * eps
        for pred in PREDICTIONS:
            if alpha == 0.0 and pred in ("eps", "score"):
                continue  # these do not determine x0 at zero SNR
            out = from_eps_x0(pred, eps, x0, alpha, std)
            torch.testing.assert_close(to_eps(pred, out, x, alpha, std), eps, rtol=0, atol=1e-12)
            got = to_x0(pred, out, x, alpha, std)
            if got is not None:
                torch.testing.assert_close(got, x0, rtol=0, atol=1e-12)
        u = from_eps_x0("flow", eps, x0, alpha, std)
        torch.testing.assert_close(u, eps - x0, rtol=0, atol=0)


def test_flow_is_the_velocity_of_the_straight_path():
    """On the flow-matching path dx/dt = eps - x0: the "t"-coordinate field of the exact model is its
    flow output."""
    m = RING.model(FM, prediction="flow")
    x = _x(32, 2)
    fld = flowode.ProbabilityFlow(m, "t")
    for t in (0.1, 0.5, 0.9):
        sigma = float(FM.sigma(t))
        dx, _ = fld(fld.to_state(x, sigma), fld.s_of_sigma(sigma))
        torch.testing.assert_close(dx, m.network(x, sigma), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: type(s).__name__ + f"{getattr(s, 'shift', '')}")
def test_analytic_models_agree_across_parameterisations(sched):
    """The exact mixture model on every schedule: eps / x0 / v / score / flow outputs give one solution."""
    grid = flowode.sigma_grid(sched, 12, "karras", sigma_max=20.0, sigma_min=0.05)
    x = _x(16, 2) * float(grid[0] * sched.alpha_from_sigma(float(grid[0])))
    ref = flowode.integrate(RING.model(sched), x, grid, solver="heun").x
    for pred in PREDICTIONS[1:]:
        out = flowode.integrate(RING.model(sched, prediction=pred), x, grid, solver="heun").x
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-11)


# ------------------------------------------------------------------------------------ DDIM = Euler
@pytest.mark.parametrize("sched", [FM, FM3], ids=["shift1", "shift3"])
def test_ddim_is_euler_in_sigma_is_flow_matching_euler_in_t(sched):
    """DDIM's step x' = alpha' x0 + std' eps is (1 - t') x0 + t' eps = x + (t' - t)(eps - x0): the
    flow-matching Euler step in t. One grid from sigma = inf to 0, float64, to round-off."""
    m = RING.model(sched, prediction="flow")
    x = _x(64, 2)
    grid = flowode.sigma_grid(sched, 10)
    assert math.isinf(float(grid[0])) and float(grid[-1]) == 0.0
    ddim = flowode.integrate(m, x, grid, solver="ddim").x
    euler_sigma = flowode.integrate(m, x, grid, solver="euler", coordinates="sigma").x
    euler_t = flowode.integrate(m, x, grid, solver="euler", coordinates="t").x
    ts = sched.t(grid)
    y = x.clone()
    for i in range(len(grid) - 1):  # the flow-matching sampler, written out (diffusers' FlowMatchEuler step)
        y = y + float(ts[i + 1] - ts[i]) * m.network(y, float(grid[i]))
    for other in (euler_sigma, euler_t, y):
        torch.testing.assert_close(other, ddim, rtol=0, atol=1e-13)
    sol = flowode.integrate(m, x, grid, solver="dpm_solver_1")
    torch.testing.assert_close(sol.x, ddim, rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------ every solver
def _lambda_grid(n: int, tiny: bool = False, s_hi: float = 10.0, s_lo: float = 0.1) -> torch.Tensor:
    """Uniform in lambda; with ``tiny`` the first two steps are O(h^2) long (multistep warm-up)."""
    la, lb = -math.log(s_hi), -math.log(s_lo)
    if tiny:
        h = (lb - la) / n
        d = h * h / (lb - la)
        lam = torch.cat([torch.tensor([la, la + d], dtype=F64), torch.linspace(la + 2 * d, lb, n + 1, dtype=F64)])
    else:
        lam = torch.linspace(la, lb, n + 1, dtype=F64)
    return torch.exp(-lam)


def _uniform_sigma(n: int) -> torch.Tensor:
    return torch.linspace(2.0, 0.5, n + 1, dtype=F64)


def _uniform_t(n: int) -> torch.Tensor:
    """Uniform in the flow-matching time between t = 0.9 and 0.1 (the natural grid of flow models)."""
    return FM.sigma(torch.linspace(0.9, 0.1, n + 1, dtype=F64))


# (solver, options, claimed order, grid, step counts). Options and grids as in the VP order tests: the
# multistep methods with a full-order warm-up (their default lower-order start caps them at 2), PLMS /
# iPNDM with constant weights on constant sigma steps (iPNDM's lower-order warm-up: 2).
ORDER_CASES = [
    ("ddim", {}, 1, _lambda_grid, [32, 64, 128]),
    ("euler", {}, 1, _lambda_grid, [32, 64, 128]),
    ("dpm_solver_1", {}, 1, _lambda_grid, [32, 64, 128]),
    ("dpm_solver_2", {}, 2, _lambda_grid, [32, 64, 128]),
    ("dpm_solver_3", {}, 3, _lambda_grid, [32, 64, 128]),
    ("dpm_solver++_2s", {}, 2, _lambda_grid, [32, 64, 128]),
    ("dpm_solver_singlestep", {}, 2, _lambda_grid, [32, 64, 128]),
    ("dpm_solver_singlestep", {"solver_order": 3, "lower_order_final": False}, 3, _lambda_grid, [24, 48, 96]),
    ("dpm_solver++_2m", {"lower_order_final": False}, 2, _lambda_grid, [32, 64, 128]),
    ("dpm_solver++_3m", {"lower_order_final": False}, 3, "tiny", [64, 128, 256]),
    ("unipc", {"lower_order_final": False}, 3, "tiny", [32, 64, 128]),
    ("unipc", {"order": 3, "lower_order_final": False}, 4, "tiny", [32, 64, 128]),
    ("heun", {}, 2, _lambda_grid, [32, 64, 128]),
    ("ralston", {}, 2, _lambda_grid, [32, 64, 128]),
    ("midpoint", {"coordinates": "lambda"}, 2, _lambda_grid, [16, 32, 64]),
    ("rk4", {}, 4, _lambda_grid, [16, 32, 64]),
    ("rk38", {}, 4, _lambda_grid, [16, 32, 64]),
    ("adams_bashforth", {"order": 3, "warmup": "rk4"}, 3, _lambda_grid, [64, 128, 256]),
    ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False}, 3, _lambda_grid, [32, 64, 128]),
    ("plms", {}, 4, _uniform_sigma, [32, 64, 128]),
    ("ipndm", {}, 2, _uniform_sigma, [16, 32, 64]),
]
FIXED_DETERMINISTIC = sorted(n for n in SOLVERS if not SOLVERS[n].adaptive and not make(n).stochastic)


def test_order_table_covers_every_deterministic_fixed_step_solver():
    assert {c[0] for c in ORDER_CASES} >= set(FIXED_DETERMINISTIC) - {"my_heun3", "my_eps_ab2"}


@pytest.mark.parametrize("case", ORDER_CASES, ids=lambda c: c[0] + "".join(f"-{k}={v}" for k, v in c[1].items()))
def test_every_solver_order_on_the_flow_matching_path(case):
    """Empirical global order against the closed-form Gaussian flow on the flow-matching path (flow
    prediction, shift 3), float64."""
    name, opts, claimed, grid_fn, ns = case
    m = GAUSS.model(FM3, prediction="flow")
    errs = []
    for n in ns:
        grid = _lambda_grid(n, tiny=True) if grid_fn == "tiny" else grid_fn(n)
        s0, s1 = float(grid[0]), float(grid[-1])
        x = _x() * float(FM3.alpha_from_sigma(s0)) * math.sqrt(1 + s0 * s0)
        sol = flowode.integrate(m, x, grid, solver=name, **opts)
        errs.append(float((sol.x - GAUSS.flow(x, s0, s1, FM3)).abs().max()))
    p = _slope(ns, errs)
    assert abs(p - claimed) < 0.3, f"{name} {opts}: order {p:.2f}, claimed {claimed}, errors {errs}"


@pytest.mark.parametrize("coords", ["sigma", "lambda", "t"])
@pytest.mark.parametrize("name", ["heun", "rk4"])
def test_runge_kutta_orders_in_every_coordinate(name, coords):
    m = GAUSS.model(FM, prediction="flow")
    claimed = SOLVERS[name].order
    ns = [16, 32, 64]
    errs = []
    for n in ns:
        grid = _uniform_t(n)
        s0, s1 = float(grid[0]), float(grid[-1])
        x = _x() * float(FM.alpha_from_sigma(s0)) * math.sqrt(1 + s0 * s0)
        sol = flowode.integrate(m, x, grid, solver=name, coordinates=coords)
        errs.append(float((sol.x - GAUSS.flow(x, s0, s1, FM)).abs().max()))
    assert abs(_slope(ns, errs) - claimed) < 0.3, (name, coords, errs)


DETERMINISTIC = sorted(n for n in SOLVERS if not make(n).stochastic)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_every_deterministic_solver_samples_from_pure_noise(name):
    """From sigma = inf (t = 1, pure noise) on the default flow-matching grid (shift 3): every
    registered deterministic solver converges to the exact flow of a Gaussian, and an eps network is
    refused at sigma = inf instead of dividing by zero. The step from inf is the driver's DDIM step
    (exact x0 = the data mean there), whose error ~ std_data^2 / (2 sigma_1) bounds the adaptive ones."""
    gauss = Gaussian([0.5, -0.3], [0.4, 0.8])
    noise = _x(4, 2)
    adaptive = SOLVERS[name].adaptive
    opts = {"rtol": 1e-6, "atol": 1e-6} if adaptive else {}
    with pytest.raises(ValueError, match="terminal SNR"):
        flowode.sample(gauss.model(FM3), noise, steps=4, solver=name, spacing="uniform_t", **opts)
    errs = []
    for steps in ([8] if adaptive else [32, 64, 128]):
        grid = flowode.sigma_grid(FM3, steps, "uniform_t", final="min")
        assert math.isinf(float(grid[0]))
        sol = flowode.integrate(gauss.model(FM3, prediction="flow"), noise, grid, solver=name, **opts)
        s1 = float(grid[-1])
        exact = float(FM3.alpha_from_sigma(s1)) * (gauss.mean + noise * torch.sqrt(gauss.std**2 + s1**2))
        errs.append(float((sol.x - exact).abs().max()))
    if adaptive:
        assert errs[0] < 3e-3, errs  # measured 1.3e-3 (dopri5, bs23, lsoda): the DDIM step from inf
    else:
        # measured at 128 steps: 0.03 (DDIM) to 6e-4 (Heun), 0.095 for DPM-Solver++(3M), whose
        # third-order extrapolation in lambda over the long top steps starts badly (rate 2.4 after it)
        assert errs[-1] < 0.12 and math.log2(errs[-2] / errs[-1]) > 0.8, errs


# ------------------------------------------------------------------------------------ regressions
@pytest.mark.parametrize("sched", [flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True), FM,
                                   flowode.CosineVPSchedule(t_max=1.0), flowode.EDMSchedule()],
                         ids=["ztsnr", "flow", "cosine_tmax1", "edm"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_ipndm_one_step_grids_are_finite(sched, order):
    """iPNDM on one-step grids (sigma_max -> 0 and sigma_max -> sigma_min, from sigma = inf where the
    schedule reaches it) and on a one-step sample: finite, and equal to DDIM (its first step is DDIM's)."""
    m = GAUSS.model(sched, prediction="v")
    x = _x(4)
    for grid in ([sched.sigma_max, 0.0], [sched.sigma_max, sched.sigma_min], [1.0, 0.0]):
        out = flowode.integrate(m, x, grid, solver="ipndm", order=order).x
        assert torch.isfinite(out).all(), grid
        torch.testing.assert_close(out, flowode.integrate(m, x, grid, solver="ddim").x, rtol=0, atol=1e-12)
    assert torch.isfinite(flowode.sample(m, x, steps=1, solver="ipndm", order=order).x).all()


def test_cosine_t_max_1_samples_from_infinity():
    """CosineVPSchedule(t_max=1) reaches sigma = inf; its network is called at t = 1, not NaN."""
    sched = flowode.CosineVPSchedule(t_max=1.0)
    seen = []

    def fn(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    model = flowode.EpsilonModel(fn, sched, prediction="v")
    sol = flowode.sample(model, _x(2, 2), steps=4, solver="heun", spacing="uniform_t")
    assert torch.isfinite(sol.x).all() and seen[0] == 1.0 and all(math.isfinite(t) for t in seen)


# ------------------------------------------------------------------------------------ a trained flow model
@pytest.fixture(scope="module")
def rectified_flow_ring():
    """A tiny rectified-flow MLP on the 2-D ring, trained with flowode.train (flow objective):
    250 steps, ~3 s on one core."""
    from flowode import data as fdata
    from flowode.nets import MLP
    from flowode.train import train

    torch.manual_seed(0)
    net = MLP(dim=2, hidden=48, depth=2, time_scale=1000.0)
    res = train(net, lambda n, g: fdata.toy_2d("ring8", n, generator=g), steps=250, batch_size=256, lr=3e-3,
                warmup=25, ema_decay=0.98, schedule="flow_match", target="flow", progress=False)
    return res


def test_flow_matching_training_config(rectified_flow_ring):
    res = rectified_flow_ring
    assert isinstance(res.schedule, flowode.FlowMatchSchedule) and res.schedule.t_min == 1e-3
    model = res.model()
    assert model.prediction == "flow" and model.schedule is res.schedule
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(ValueError, match="zero_terminal_snr"):
        flowode.train.TrainConfig(schedule="flow_match", zero_terminal_snr=True)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_trained_flow_model_samples_with_every_deterministic_solver(rectified_flow_ring, name):
    """Every registered deterministic solver maps pure noise to the ring (radius 2) with the trained
    flow network, from sigma = inf on the flow-matching grid."""
    model = rectified_flow_ring.model()
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    opts = {"rtol": 1e-3, "atol": 1e-3} if SOLVERS[name].adaptive else {}
    sol = flowode.sample(model, noise, steps=12, solver=name, spacing="uniform_t", **opts)
    assert sol.x.dtype == torch.float32 and torch.isfinite(sol.x).all()
    radius = sol.x.norm(dim=1)
    assert 1.7 < float(radius.median()) < 2.3, float(radius.median())
    assert float(((radius - 2).abs() < 0.5).float().mean()) > 0.8
