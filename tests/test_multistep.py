"""Linear multistep solvers: PLMS / PNDM, iPNDM, DEIS, Adams-Bashforth.

* empirical convergence orders on the closed-form Gaussian flow (float64), on grids that do not touch
  sigma = 0: geometric grids (variable steps) for the variable-step methods, and grids uniform in
  sigma (EDM schedule, sigma = t) for the constant-step pseudo methods;
* oracles: diffusers' PNDMScheduler (skip_prk_steps True / False), DEISMultistepScheduler and
  IPNDMScheduler with their float32 tables replaced by float64 ones;
* exact NFE accounting against a counter wrapped around the network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowode
from flowode.analytic import Gaussian
from flowode.models import EpsilonModel
from flowode.solvers.multistep import lagrange_integrals

F64 = torch.float64
GAUSS = Gaussian([0.5, -1.0, 2.0], [0.5, 1.0, 2.0])
EDM = flowode.EDMSchedule()
VP = flowode.DiscreteVPSchedule.linear()
LVP = flowode.LinearVPSchedule()


def _x(n: int = 4, scale: float = 3.0, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


def _errors(sched, solver, grids, **opt):
    m = GAUSS.model(sched)
    x = _x()
    out = []
    for grid in grids:
        ref = GAUSS.flow(x, float(grid[0]), float(grid[-1]), sched)
        sol = flowode.integrate(m, x, grid, solver=solver, **opt)
        out.append(float((sol.x - ref).abs().max()))
    return out


def _order(errs):
    return math.log2(errs[-2] / errs[-1])


def geo(n, hi=10.0, lo=0.1):
    return torch.tensor(np.geomspace(hi, lo, n + 1), dtype=F64)


def uni(n, hi=2.0, lo=0.5):
    return torch.linspace(hi, lo, n + 1, dtype=F64)


# ------------------------------------------------------------------------------------ orders
@pytest.mark.parametrize("solver,opt,sched,grid,expected", [
    # variable-step methods on geometric grids, RK4 warm-up: full order
    ("adams_bashforth", {"order": 2, "warmup": "rk4"}, EDM, geo, 2),
    ("adams_bashforth", {"order": 3, "warmup": "rk4"}, EDM, geo, 3),
    ("adams_bashforth", {"order": 4, "warmup": "rk4"}, EDM, geo, 4),
    ("adams_bashforth", {"order": 3, "warmup": "rk4", "coordinates": "lambda"}, LVP, geo, 3),
    ("adams_bashforth", {"order": 3, "warmup": "rk4", "coordinates": "t"}, LVP, geo, 3),
    ("deis", {"order": 1}, VP, geo, 1),
    ("deis", {"order": 2, "warmup": "rk4", "lower_order_final": False}, VP, geo, 2),
    ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False}, VP, geo, 3),
    ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False}, LVP, geo, 3),
    ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False, "basis": "rho"}, VP, geo, 3),
    ("deis", {"order": 3, "warmup": "rk4", "lower_order_final": False, "basis": "log_rho"}, VP, geo, 3),
    # the default lower-order warm-up (Euler first step, local error h^2) caps the global order at 2
    ("adams_bashforth", {"order": 4}, EDM, geo, 2),
    ("deis", {"order": 3, "lower_order_final": False, "basis": "rho"}, LVP, geo, 2),
    # constant-step pseudo methods: order 4 (F-PNDM) / 3 (Heun start) on uniform sigma grids, ...
    ("plms", {}, EDM, uni, 4),
    ("plms", {"skip_prk_steps": True}, EDM, uni, 3),
    ("ipndm", {}, EDM, uni, 2),
    ("ipndm", {"coefficients": "variable"}, EDM, uni, 2),
    # ... and 2 on graded grids (constant weights on variable steps; iPNDM: its Euler first step)
    ("plms", {}, EDM, geo, 2),
    ("plms", {}, VP, geo, 2),
    ("ipndm", {"order": 4}, EDM, geo, 2),
    ("ipndm", {"order": 4, "coefficients": "variable"}, EDM, geo, 2),
])
def test_convergence_order(solver, opt, sched, grid, expected):
    ns = [64, 128] if grid is geo else [32, 64]
    if expected == 2 and solver in ("adams_bashforth", "deis", "ipndm") and opt.get("warmup") != "rk4" \
            and (solver != "ipndm" or opt.get("coefficients") == "variable"):
        ns = [512, 1024]  # the h^2 warm-up error takes over only on fine grids
    if opt.get("skip_prk_steps"):
        ns = [128, 256]
    errs = _errors(sched, solver, [grid(n) for n in ns], **opt)
    p = _order(errs)
    assert abs(p - expected) < 0.35, (solver, opt, errs, p)


def test_ab_rk4_warmup_on_uniform_sigma_is_f_pndm():
    """On a grid uniform in sigma with sigma = t, F-PNDM's PRK half steps are RK4's and PLMS is AB4."""
    m = GAUSS.model(EDM)
    x = _x()
    a = flowode.integrate(m, x, uni(12), solver="plms").x
    b = flowode.integrate(m, x, uni(12), solver="adams_bashforth", order=4, warmup="rk4").x
    assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_plms_half_step_in_sigma_is_rk4_on_vp():
    """F-PNDM's pseudo Runge-Kutta warm-up with the half step at the midpoint in sigma is classical RK4
    in (xbar, sigma) on any schedule, so PLMS equals AB4 with an RK4 start on a VP schedule too; the
    paper's / diffusers' half step in t (``half_step="t"``) does not."""
    m = GAUSS.model(VP)
    x = _x()
    g = uni(12, 3.0, 0.3)
    b = flowode.integrate(m, x, g, solver="adams_bashforth", order=4, warmup="rk4").x
    assert torch.allclose(flowode.integrate(m, x, g, solver="plms").x, b, rtol=0, atol=1e-13)
    assert float((flowode.integrate(m, x, g, solver="plms", half_step="t").x - b).abs().max()) > 1e-6


def test_ipndm_variable_weights_are_adams_bashforth_in_sigma():
    """iPNDM's variable-step weights are the variable-step AB step in sigma (same lower-order start),
    also for the native step to sigma = 0; on grids uniform in sigma they equal the constant table."""
    m = GAUSS.model(VP)
    x = _x()
    for g in (geo(9, 50.0, 0.05), flowode.sigma_grid(VP, 10, "trailing")):
        for order in (2, 3, 4):
            a = flowode.integrate(m, x, g, solver="ipndm", order=order, coefficients="variable").x
            b = flowode.integrate(m, x, g, solver="adams_bashforth", order=order).x
            assert torch.allclose(a, b, rtol=0, atol=1e-12), (order, float((a - b).abs().max()))
    g = uni(10)
    a = flowode.integrate(m, x, g, solver="ipndm", coefficients="variable").x
    assert torch.allclose(a, flowode.integrate(m, x, g, solver="ipndm").x, rtol=0, atol=1e-13)


def test_deis_rho_equals_adams_bashforth_sigma():
    m = GAUSS.model(VP)
    x = _x()
    g = geo(9, 50.0, 0.05)
    a = flowode.integrate(m, x, g, solver="deis", order=3, basis="rho", lower_order_final=False).x
    b = flowode.integrate(m, x, g, solver="adams_bashforth", order=3).x
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_lagrange_integrals_exact():
    # int_0^1 of the Lagrange basis on nodes -2, -1, 0 equals the AB3 constant-step weights reversed
    w = lagrange_integrals([-2.0, -1.0, 0.0], 0.0, 1.0)
    assert np.allclose(w, [5 / 12, -16 / 12, 23 / 12], atol=1e-14)
    # a density: int_0^1 e^u l_j(u) du reproduces int e^u for the constant and u e^u for the linear part
    w = lagrange_integrals([0.0, 0.5], 0.0, 1.0, density=np.exp)
    assert abs(sum(w) - (math.e - 1)) < 1e-14
    assert abs(w[1] * 0.5 - 1.0) < 1e-14  # int u e^u du over [0, 1] = 1


# ------------------------------------------------------------------------------------ NFE
class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.fn(x, sigma)


@pytest.mark.parametrize("solver,opt", [
    ("plms", {}), ("plms", {"skip_prk_steps": True}), ("ipndm", {}), ("ipndm", {"order": 2}),
    ("deis", {}), ("deis", {"warmup": "rk4"}), ("adams_bashforth", {"order": 4}),
    ("adams_bashforth", {"order": 4, "warmup": "rk4"}), ("adams_bashforth", {"coordinates": "lambda"}),
])
@pytest.mark.parametrize("steps", [1, 3, 5, 12])
def test_nfe_matches_network_calls(solver, opt, steps):
    m = GAUSS.model(VP)
    counter = _Counter(m.exact_eps)
    m.exact_eps = counter
    grid = flowode.sigma_grid(VP, steps)  # ends at sigma = 0
    sol = flowode.integrate(m, _x(), grid, solver=solver, **opt)
    slv = flowode.solvers.make(solver, **opt)
    assert sol.nfe == counter.calls == slv.nfe(grid.tolist())
    grid_min = flowode.sigma_grid(VP, steps, final="min")
    counter.calls = 0
    sol = flowode.integrate(m, _x(), grid_min, solver=solver, **opt)
    assert sol.nfe == counter.calls == slv.nfe(grid_min.tolist())


def test_nfe_formulas():
    g = flowode.sigma_grid(VP, 20).tolist()  # 20 steps, the last to 0
    assert flowode.solvers.make("plms").nfe(g) == 20 + 9
    assert flowode.solvers.make("plms", skip_prk_steps=True).nfe(g) == 21
    assert flowode.solvers.make("ipndm").nfe(g) == 20
    assert flowode.solvers.make("deis").nfe(g) == 20
    assert flowode.solvers.make("adams_bashforth", order=4, warmup="rk4").nfe(g) == 20 + 9


def test_sample_with_nfe_budget():
    m = GAUSS.model(VP)
    for solver in ("plms", "ipndm", "deis", "adams_bashforth"):
        sol = flowode.sample(m, _x(), nfe=10, solver=solver)
        assert sol.nfe <= 10
    # F-PNDM: 3 steps = PRK, PRK, final 1-NFE step to sigma = 0 = 9 NFE; 4 steps would cost 13
    assert flowode.sample(m, _x(), nfe=10, solver="plms").nfe == 9


def test_bad_options():
    with pytest.raises(ValueError, match="order"):
        flowode.solvers.make("ipndm", order=5)
    with pytest.raises(ValueError, match="order"):
        flowode.solvers.make("adams_bashforth", order=1)
    with pytest.raises(ValueError, match="basis"):
        flowode.solvers.make("deis", basis="lambda")
    with pytest.raises(ValueError, match="warmup"):
        flowode.solvers.make("deis", warmup="heun")


def test_encode_decode_round_trip():
    m = GAUSS.model(VP)
    x0 = _x(scale=1.0)
    for solver in ("ipndm", "deis", "adams_bashforth"):
        z = flowode.encode(m, x0, steps=100, solver=solver, spacing="logsnr").x
        back = flowode.decode(m, z, steps=100, solver=solver, spacing="logsnr").x
        assert float((back - x0).abs().max()) < 2e-2, solver


# ------------------------------------------------------------------------------------ oracles
diffusers = pytest.importorskip("diffusers")


def _eps(x, sigma):
    return GAUSS.eps(x, sigma, 1.0 / math.sqrt(1.0 + sigma * sigma))


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("steps", [10, 25])
def test_plms_matches_diffusers_pndm(skip, steps):
    sched = VP
    ds = diffusers.PNDMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                 skip_prk_steps=skip, set_alpha_to_one=True, steps_offset=1,
                                 timestep_spacing="leading")
    ds.set_timesteps(steps)
    ds.alphas_cumprod = torch.exp(sched.log_alphas_cumprod)  # float64 tables, same values as flowode's
    ds.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    x = _x(scale=1.0) * math.sqrt(1 + sched.sigma_max**2) / math.sqrt(1 + sched.sigma_max**2)
    y = x.clone()
    calls = 0
    for t in ds.timesteps.tolist():
        y = ds.step(_eps(y, float(sched.sigma(float(t)))), t, y).prev_sample
        calls += 1
    grid = flowode.sigma_grid(sched, steps, "leading", offset=1)
    sol = flowode.integrate(GAUSS.model(sched), x, grid, solver="plms", skip_prk_steps=skip, half_step="t")
    assert sol.nfe == calls
    assert float((sol.x - y).abs().max()) < 1e-10


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [8, 20])
def test_deis_log_rho_matches_diffusers(order, steps):
    sched = VP
    ds = diffusers.DEISMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          beta_schedule="linear", solver_order=order, lower_order_final=True)
    ds.set_timesteps(steps)
    grid = flowode.sigmas_from_timesteps(sched, ds.timesteps.numpy(), final="min")
    ds.sigmas = grid.clone()  # diffusers stores its sigmas in float32; use the float64 grid
    x = _x(scale=1.0)
    y = x.clone()
    for i, t in enumerate(ds.timesteps):
        y = ds.step(_eps(y, float(grid[i])), t, y).prev_sample
    sol = flowode.integrate(GAUSS.model(sched), x, grid, solver="deis", order=order, basis="log_rho")
    assert sol.nfe == steps
    assert float((sol.x - y).abs().max()) < 1e-10


class _VModel(EpsilonModel):
    """Exact v-prediction of a zero-mean Gaussian, defined at sigma = inf (v = -E[x0] = 0)."""

    def __init__(self, gauss, schedule):
        super().__init__(lambda x, t: x, schedule, prediction="v")
        self.gauss = gauss

    def network(self, x, sigma):
        if math.isinf(sigma):
            return torch.zeros_like(x)
        alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
        eps = self.gauss.eps(x, sigma, alpha)
        x0 = x / alpha - sigma * eps
        return alpha * eps - alpha * sigma * x0


@pytest.mark.parametrize("steps", [8, 12])
def test_ipndm_matches_diffusers(steps):
    """diffusers' IPNDMScheduler works on alpha_s = sqrt(1 - sin^4(s pi/2)), std_s = sin^2(s pi/2),
    s = 1, (N-1)/N, ..., 0 with a v-prediction model: the VP grid sigma_s = std_s/alpha_s from inf to 0.
    Its first step (alpha = 0) predicts x0 = 0, which is the exact zero-SNR answer for zero-mean data."""
    gauss = Gaussian([0.0, 0.0, 0.0], [0.5, 1.0, 2.0])
    sched = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    ds = diffusers.IPNDMScheduler(num_train_timesteps=1000)
    ds.set_timesteps(steps)
    s = torch.cat([torch.linspace(1, 0, steps + 1, dtype=F64)[:-1], torch.zeros(1, dtype=F64)])
    ds.betas = torch.sin(s * math.pi / 2) ** 2
    ds.alphas = (1.0 - ds.betas**2) ** 0.5
    grid = torch.where(ds.alphas > 0, ds.betas / ds.alphas, torch.full_like(s, math.inf))
    model = _VModel(gauss, sched)
    x = _x(scale=1.0)
    y = x.clone()
    for i, t in enumerate(ds.timesteps):
        y = ds.step(model.network(y, float(grid[i])), t, y).prev_sample
    sol = flowode.integrate(model, x, grid, solver="ipndm", order=4, coefficients="fixed")
    assert sol.nfe == steps
    assert float((sol.x - y).abs().max()) < 1e-10


def test_deis_rho_natural_step_to_zero():
    """basis rho steps to sigma = 0 with its own weights (= AB in sigma); t and log_rho take DDIM there."""
    m = GAUSS.model(VP)
    x = _x()
    grid = flowode.sigma_grid(VP, 50)
    a = flowode.integrate(m, x, grid, solver="deis", basis="rho", lower_order_final=False).x
    b = flowode.integrate(m, x, grid, solver="adams_bashforth", order=3).x
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    exact = GAUSS.flow(x, float(grid[0]), 0.0, VP)
    errs = {basis: float((flowode.integrate(m, x, grid, solver="deis", basis=basis, lower_order_final=False).x
                          - exact).abs().max()) for basis in ("t", "rho")}
    assert errs["rho"] < errs["t"] / 2, errs
