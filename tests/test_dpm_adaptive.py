"""Adaptive DPM-Solver (Lu et al. 2022, sec. 3.3): DPM-Solver-12 / -23 as embedded pairs in lambda.

Checked: one attempt equals k-diffusion's DPM-Solver steps (test-only oracle) to round-off in
float64; the local orders of the propagated solution and of the error estimate on the closed-form
Gaussian flow; tolerance-proportional global error; the evaluation count (the start of a rejected
step is not re-evaluated); encoding; options that cannot work are refused.
"""

from __future__ import annotations

import math

import pytest
import torch

import flowode
from flowode.analytic import Gaussian, gmm_random
from flowode.bench.peers import k_diffusion_sampling
from flowode.schedules import lambda_to_sigma, sigma_to_lambda
from flowode.solvers import SolverError, make
from flowode.solvers.run import Run

SCHED = flowode.DiscreteVPSchedule.linear()
GMM = gmm_random(dim=6, k=5, std=0.4, seed=1)
GAUSS = Gaussian([0.5, -1.0, 2.0, 0.0], [0.2, 0.7, 1.5, 3.0])


def _attempt(model, order, x, sig_s, sig_t):
    """(high, low) of one attempt from sig_s to sig_t, through the driver's interface."""
    run = Run(model, [sig_s, sig_t])
    fld = run.field("lambda")
    lam_s, lam_t = float(sigma_to_lambda(sig_s)), float(sigma_to_lambda(sig_t))
    h = lam_t - lam_s
    k1, p1 = fld(x, lam_s)
    high, err, k_last = make("dpm_solver_adaptive", order=order).attempt(
        fld, x, lam_s, h, (k1, p1), lambda c: lam_t if c == 1.0 else lam_s + c * h)
    assert k_last is None
    return high, high - err, run.nfe


@pytest.mark.parametrize("order", [2, 3])
def test_one_attempt_equals_k_diffusion(order):
    ks = k_diffusion_sampling()
    assert ks is not None, "k-diffusion's sampling module is a test oracle (installed by .ci/run)"
    model = GMM.model(SCHED)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sig_s, sig_t = 2.0, 0.35
    high, low, nfe = _attempt(model, order, x, sig_s, sig_t)
    assert nfe == order  # the start's evaluation is shared by both solutions

    def denoiser(xbar, sigma):  # k-diffusion's model: the denoiser in VE coordinates (xbar, sigma)
        s = float(sigma[0])
        return xbar - s * model.predict(xbar * float(SCHED.alpha_from_sigma(s)), s).eps

    solver = ks.DPMSolver(denoiser)
    a_s, a_t = float(SCHED.alpha_from_sigma(sig_s)), float(SCHED.alpha_from_sigma(sig_t))
    xb = x / a_s
    t, t_next = torch.tensor(-math.log(sig_s), dtype=torch.float64), torch.tensor(-math.log(sig_t), dtype=torch.float64)
    if order == 2:
        low_k, cache = solver.dpm_solver_1_step(xb, t, t_next)
        high_k, _ = solver.dpm_solver_2_step(xb, t, t_next, eps_cache=cache)
    else:
        low_k, cache = solver.dpm_solver_2_step(xb, t, t_next, r1=1 / 3)
        high_k, _ = solver.dpm_solver_3_step(xb, t, t_next, eps_cache=cache)
    scale = float(high_k.abs().max())
    assert float((high / a_t - high_k).abs().max()) <= 1e-12 * scale
    assert float((low / a_t - low_k).abs().max()) <= 1e-12 * scale


@pytest.mark.parametrize("order", [2, 3])
def test_local_orders_on_the_closed_form_gaussian(order):
    """Local error of the propagated solution ~ h^(order+1); the error estimate ~ h^order."""
    model = GAUSS.model(SCHED)
    sig_s = 3.0
    x = GAUSS.flow(GAUSS.sample(16, torch.Generator().manual_seed(0)), 0.0, sig_s, SCHED)
    lam_s = float(sigma_to_lambda(sig_s))
    errs, ests = [], []
    hs = [0.4, 0.2, 0.1, 0.05]
    for h in hs:
        sig_t = float(lambda_to_sigma(lam_s + h))
        high, low, _ = _attempt(model, order, x, sig_s, sig_t)
        exact = GAUSS.flow(x, sig_s, sig_t, SCHED)
        errs.append(float((high - exact).abs().max()))
        ests.append(float((high - low).abs().max()))
    steps = [1 / h for h in hs]  # fit_order: error ~ steps^(-p)
    assert abs(flowode.orders.fit_order(steps, errs) - (order + 1)) < 0.2, errs
    assert abs(flowode.orders.fit_order(steps, ests) - order) < 0.2, ests


def _reference(model, x, grid):
    return flowode.integrate(model, x, grid, "dp45", rtol=1e-12, atol=1e-12).x


@pytest.mark.parametrize("order", [2, 3])
def test_error_follows_the_tolerance_and_nfe_is_counted(order):
    model = GMM.model(SCHED)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = [SCHED.sigma_max, SCHED.sigma_min]
    ref = _reference(model, x, grid)
    calls = []
    counted = flowode.EpsilonModel(lambda xx, t: (calls.append(1), model.fn(xx, t))[1], SCHED)
    rmse = []
    for tol in (1e-3, 1e-5):
        calls.clear()
        sol = flowode.integrate(counted, x, grid, "dpm_solver_adaptive", order=order, rtol=tol, atol=tol)
        assert sol.nfe == len(calls)
        st = sol.stats
        attempts = st["accepted"] + st["rejected"]
        # one evaluation at the start, the initial-step probe, (order - 1) per attempt, one at each
        # new accepted point except the end: a rejected step reuses its start's evaluation
        assert sol.nfe == 1 + 1 + attempts * (order - 1) + st["accepted"] - 1
        rmse.append(float((sol.x - ref).pow(2).mean().sqrt()))
    assert rmse[1] < rmse[0] / 10, rmse
    assert rmse[1] < 1e-3


def test_sigma_zero_and_inf_ends_and_encoding():
    model = GMM.model(SCHED)
    x0 = GMM.sample(16, torch.Generator().manual_seed(2))
    up = flowode.integrate(model, x0, [0.0, SCHED.sigma_max], "dpm_solver_adaptive", rtol=1e-7, atol=1e-7)
    back = flowode.integrate(model, up.x, [SCHED.sigma_max, 0.0], "dpm_solver_adaptive", rtol=1e-7, atol=1e-7)
    assert up.stats["boundary_steps"] and back.stats["boundary_steps"]
    exact_up = _reference(model, x0, [0.0, SCHED.sigma_max])
    assert float((up.x - exact_up).abs().max()) < 1e-4 * float(exact_up.abs().max())


@pytest.mark.parametrize("opts, word", [({"coordinates": "sigma"}, "coordinates"), ({"order": 4}, "order"),
                                        ({"error_norm": "per_sample"}, "error_norm"), ({"order": True}, "order")])
def test_options_that_cannot_work_are_refused(opts, word):
    with pytest.raises(SolverError, match=word):
        make("dpm_solver_adaptive", **opts)


def test_registered_and_described():
    d = make("dpm_solver_adaptive").describe()
    assert d["adaptive"] and d["order"] == 3 and "Lu et al." in d["source"]
    assert make("dpm_solver_adaptive", order=2).describe()["order"] == 2


@pytest.mark.parametrize("solver", ["dpm_solver_adaptive", "bs23", "dp45"])
def test_a_step_that_ends_within_round_off_of_the_stop_lands_on_it(solver):
    """A first step of 0.1 in lambda over an interval of 0.1 in lambda misses the end by round-off; the
    leftover step of length ~1e-16 divided by zero in DPM-Solver-3's update (h in a denominator)."""
    model = Gaussian(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)).model(
        flowode.schedules.EDMSchedule())
    x = 2 * torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sol = flowode.integrate(model, x, [2.0, 2.0 * math.exp(-0.1)], solver=solver, first_step=0.1,
                            rtol=1e3, atol=1e3)
    assert torch.isfinite(sol.x).all()
    assert sol.stats["accepted"] == 1
