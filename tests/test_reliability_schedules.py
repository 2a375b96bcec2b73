"""Reliability (issue 10), schedules and grids: parameters outside a schedule's domain, grids of the
wrong kind, float32 copies of valid grids, bad grid keywords and infeasible NFE budgets are either
handled exactly or refused with a message that names the argument, the value and the fix."""

import math
import time

import numpy as np
import pytest
import torch

import flowode
from flowode.grids import GridError
from flowode.grids.spec import steps_for_nfe
from flowode.solvers import make


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize("build,pattern", [
    (lambda: flowode.VESchedule(sigma_max=math.inf), r"`sigma_max` must be a finite number > 0, got inf"),
    (lambda: flowode.VESchedule(sigma_min=math.nan), r"`sigma_min` must be a finite number > 0, got nan"),
    (lambda: flowode.EDMSchedule(sigma_max=math.inf), r"`sigma_max` must be a finite number > 0, got inf"),
    (lambda: flowode.EDMSchedule(sigma_max="80"), r"`sigma_max` must be a finite number > 0, got '80'"),
    (lambda: flowode.CosineVPSchedule(s=-0.5), r"`s` must be a finite number >= 0, got -0.5"),
    (lambda: flowode.CosineVPSchedule(s=math.inf), r"`s` must be a finite number >= 0, got inf"),
    (lambda: flowode.LinearVPSchedule(beta_max=math.inf), r"`beta_max` must be a finite number > 0, got inf"),
    (lambda: flowode.LinearVPSchedule(t_max=math.nan), r"`t_max` must be a finite number > 0, got nan"),
    (lambda: flowode.DiscreteVPSchedule.linear(num_timesteps=2.5),
     r"`num_timesteps` must be an integer >= 2 .*got 2.5"),
    (lambda: flowode.DiscreteVPSchedule.cosine(num_timesteps=10.0),
     r"`num_timesteps` must be an integer >= 2 .*got 10.0"),
    (lambda: flowode.DiscreteVPSchedule.from_betas(torch.full((2, 10), 0.01)),
     r"`betas` must be 1-D .*got shape \(2, 10\)"),
    (lambda: flowode.DiscreteVPSchedule.from_alphas_cumprod(torch.full((1, 10), 0.5)),
     r"`alphas_cumprod` must be 1-D .*got shape \(1, 10\)"),
])
def test_schedule_parameters_outside_the_domain_are_refused(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_cosine_t_at_infinity_is_the_end_of_time():
    """t_max = 1 is the zero-terminal-SNR end: t(inf) = 1, not NaN (sigma * sigma overflowed)."""
    sched = flowode.CosineVPSchedule(t_max=1)
    assert math.isinf(sched.sigma_max)
    assert sched.t(math.inf) == 1.0
    big = torch.tensor([1e149, 1e151, 1e200, math.inf], dtype=torch.float64)
    t = sched.t(big)
    assert torch.isfinite(t).all() and (t <= 1).all() and (torch.diff(t) >= 0).all()
    # the far branch agrees with the direct one where both are finite
    assert abs(sched.t(1e149) - sched.t(1e151)) < 1e-15
    # sampling from sigma = inf passes the network finite timesteps only
    seen = []

    def net(x, tt):
        seen.append(tt.clone())
        return torch.zeros_like(x)

    model = flowode.EpsilonModel(net, sched, prediction="v")  # eps cannot give x0 at sigma = inf
    sol = flowode.integrate(model, torch.randn(3, 2, dtype=torch.float64), [math.inf, 1.0, 0.0], solver="ddim")
    assert torch.isfinite(sol.x).all() and all(torch.isfinite(t).all() for t in seen)


def test_linear_vp_t_of_large_sigma():
    sched = flowode.LinearVPSchedule()
    assert sched.t(math.inf) == math.inf
    assert math.isfinite(sched.t(1e200))
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=torch.float64)
    assert torch.allclose(sched.t(sched.sigma(t)), t, rtol=1e-13, atol=0)


# ------------------------------------------------------------------ grids
DISC = flowode.DiscreteVPSchedule.linear()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.bool, torch.complex64])
def test_grids_of_the_wrong_dtype_are_refused(dtype):
    g = flowode.sigma_grid(DISC, 10)
    with pytest.raises(GridError, match=rf"`sigmas` must hold real noise levels .*got dtype {str(dtype)[6:]}"):
        flowode.check_grid(g.to(dtype), DISC)


@pytest.mark.parametrize("grid", [["80", "0"], np.array([1.0, 0.0], dtype=np.float16), [True, False],
                                  np.array([1 + 1j, 0])])
def test_non_tensor_grids_of_the_wrong_kind_are_refused(grid):
    with pytest.raises(GridError, match=r"`sigmas` must hold real noise levels"):
        flowode.check_grid(grid)


def test_integer_grids_still_work():
    assert flowode.check_grid(torch.tensor([5, 1, 0])).tolist() == [5.0, 1.0, 0.0]


def test_float32_copy_of_a_valid_grid_is_the_same_grid():
    """A float32 copy of a DDIM grid used to be refused ("157.407 is outside [0.0100005, 157.407]");
    now it is accepted within float32 round-off, and its levels go back onto the integer timesteps."""
    g = flowode.sigma_grid(DISC, 10)
    assert g.float().double()[0] > DISC.sigma_max  # the copy really is outside the range
    assert torch.equal(flowode.check_grid(g.float(), DISC), g)
    seen = []

    def net(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    flowode.integrate(flowode.EpsilonModel(net, DISC), torch.randn(2, 2), g.float(), solver="ddim")
    assert seen == [999.0, 899.0, 799.0, 699.0, 599.0, 499.0, 399.0, 299.0, 199.0, 99.0]


def test_out_of_range_message_prints_enough_digits():
    g = flowode.sigma_grid(DISC, 10).float()
    g[0] = g[0] * (1 + 1e-5)
    with pytest.raises(GridError) as info:
        flowode.check_grid(g, DISC)
    msg = str(info.value)
    assert "157.40728081040737]" in msg and "float32 round-off" in msg
    value = float(msg.split("` = ")[1].split(" ")[0])
    assert value > DISC.sigma_max  # the printed value is visibly outside the printed range


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(spacing="leading", offset=0.5), r"`offset` .* must be an integer >= 0, got 0.5"),
    (dict(spacing="leading", offset=-1), r"`offset` .* must be an integer >= 0, got -1"),
    (dict(spacing="karras", rho=0), r"`rho` .* must be a finite number > 0, got 0"),
    (dict(spacing="karras", rho=math.inf), r"`rho` .* must be a finite number > 0, got inf"),
    (dict(spacing="karras", rho=1e-3), r"`rho`=0.001 is too small .* overflows. Use rho >= 1"),  # found by test_fuzz
])
def test_bad_grid_keywords(kwargs, pattern):
    with pytest.raises(GridError, match=pattern):
        flowode.sigma_grid(DISC, 10, **kwargs)


def test_leading_with_integer_offset_keeps_integer_timesteps():
    g = flowode.sigma_grid(DISC, 10, "leading", offset=1)
    t = torch.as_tensor(DISC.t(g[:-1]))
    assert torch.equal(t, torch.round(t)) and float(t[0]) == 901.0


# ------------------------------------------------------------------ NFE budgets
@pytest.mark.parametrize("spacing", ["logsnr", "karras", "uniform_t", "trailing", "leading", "linspace",
                                     "quadratic"])
def test_infeasible_budget_is_a_grid_error(spacing):
    sched = DISC if spacing in ("trailing", "leading", "linspace", "quadratic") else flowode.LinearVPSchedule()
    with pytest.raises(GridError, match=r"`nfe`=1 is too small for solver 'rk4'.*Give .*`nfe`"):
        flowode.sample(sched and flowode.analytic.gmm_ring().model(sched), torch.randn(2, 2), nfe=1,
                       solver="rk4", spacing=spacing, final="min")


def _brute(slv, nfe, grid_for, sched):
    best = None
    for n in range(1, nfe + 1):
        try:
            g = grid_for(n)
        except GridError:
            continue
        if slv.nfe(g.tolist(), sched) <= nfe:
            best = n
    return best


@pytest.mark.parametrize("solver", ["heun", "plms", "unipc", "dpm_solver_3", "ipndm"])
def test_budget_search_matches_the_exhaustive_one(solver):
    slv = make(solver)
    for sched, spacing in ((flowode.LinearVPSchedule(), "logsnr"), (flowode.DiscreteVPSchedule.linear(100),
                                                                    "trailing")):
        for final in ("zero", "min"):
            def grid_for(n, sched=sched, spacing=spacing, final=final):
                return flowode.sigma_grid(sched, n, spacing, final=final)
            for nfe in (2, 3, 7, 30):
                try:
                    got = steps_for_nfe(slv, nfe, grid_for, sched)
                except GridError:
                    got = None
                assert got == _brute(slv, nfe, grid_for, sched), (solver, spacing, final, nfe)


def test_large_budget_is_found_in_few_dry_runs():
    """The step count for nfe = 5000 with heun (2 per step + the boundary step) took a walk of 2500
    dry runs before (7 minutes at 3000); now a handful of dry runs."""
    sched = flowode.LinearVPSchedule()
    calls = []

    def grid_for(n):
        calls.append(n)
        return flowode.sigma_grid(sched, n, "logsnr")

    t0 = time.perf_counter()
    assert steps_for_nfe(make("heun"), 5000, grid_for, sched) == 2500
    assert len(set(calls)) <= 2 * math.ceil(math.log2(5000)) and time.perf_counter() - t0 < 20
