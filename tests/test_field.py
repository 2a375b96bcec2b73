"""The probability-flow field in t, (xbar, sigma) and lambda coordinates: the same ODE by the chain rule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flowode
from flowode.analytic import gmm_random
from flowode.field import ProbabilityFlow

F64 = torch.float64
GMM = gmm_random(dim=6, k=3, std=0.5, seed=1)
SCHEDULES = {
    "discrete": flowode.DiscreteVPSchedule.linear(),
    "discrete_cosine": flowode.DiscreteVPSchedule.cosine(),
    "vp_linear": flowode.LinearVPSchedule(),
    "vp_cosine": flowode.CosineVPSchedule(),
    "ve": flowode.VESchedule(),
    "edm": flowode.EDMSchedule(),
}


def _fields(sched):
    model = GMM.model(sched)
    return model, {c: ProbabilityFlow(model, c) for c in ("sigma", "lambda", "t")}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(SCHEDULES)), u=st.floats(0.02, 0.98), seed=st.integers(0, 2**16))
def test_three_coordinates_agree_by_chain_rule(name, u, seed):
    sched = SCHEDULES[name]
    model, f = _fields(sched)
    lo, hi = math.log(sched.sigma_min), math.log(sched.sigma_max)
    sigma = math.exp(lo + u * (hi - lo))
    t = float(sched.t(sigma))
    if sched.discrete and abs(t - round(t)) < 1e-6:  # dsigma/dt jumps at the knots
        return
    g = torch.Generator().manual_seed(seed)
    alpha = float(sched.alpha_from_sigma(sigma))
    xbar = GMM.sample(5, generator=g) + sigma * torch.randn(5, GMM.dim, generator=g, dtype=F64)
    x = alpha * xbar

    dxbar_dsigma, _ = f["sigma"](f["sigma"].to_state(x, sigma), sigma)
    dx_dlambda, _ = f["lambda"](x, f["lambda"].s_of_sigma(sigma))
    dx_dt, _ = f["t"](x, f["t"].s_of_sigma(sigma))
    assert model.nfe == 3

    # x = alpha(sigma) xbar  =>  dx/dsigma = alpha dxbar/dsigma + alpha (dlog alpha/dsigma) xbar
    dx_dsigma = alpha * dxbar_dsigma + alpha * float(sched.dlog_alpha_dsigma(sigma)) * xbar
    # d sigma / d lambda = -sigma;  d sigma / d t = schedule derivative
    want_lambda = -sigma * dx_dsigma
    want_t = float(sched.dsigma_dt(t)) * dx_dsigma
    # relative to the size of the two terms: at large sigma they nearly cancel (x ~ std * eps)
    terms = float((alpha * dxbar_dsigma).abs().max()) + float((alpha * float(sched.dlog_alpha_dsigma(sigma))
                                                              * xbar).abs().max())
    scale_l = sigma * terms
    scale_t = abs(float(sched.dsigma_dt(t))) * terms
    assert float((dx_dlambda - want_lambda).abs().max()) <= 1e-12 * scale_l
    assert float((dx_dt - want_t).abs().max()) <= 1e-12 * scale_t


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_sigma_field_is_eps_and_karras_form(name):
    """d xbar / d sigma = eps = (xbar - x0_hat) / sigma (Karras et al. 2022, eq. 4 with s = 1)."""
    sched = SCHEDULES[name]
    model, f = _fields(sched)
    sigma = math.sqrt(sched.sigma_min * sched.sigma_max)
    alpha = float(sched.alpha_from_sigma(sigma))
    xbar = torch.randn(4, GMM.dim, dtype=F64, generator=torch.Generator().manual_seed(0)) * sigma
    d, pred = f["sigma"](xbar, sigma)
    torch.testing.assert_close(d, model.eps(alpha * xbar, sigma), rtol=0, atol=0)
    torch.testing.assert_close(d, (xbar - pred.x0) / sigma, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_field_derivative_matches_exact_flow(name):
    """The lambda and t fields are the time derivative of the closed-form Gaussian flow."""
    sched = SCHEDULES[name]
    g = flowode.Gaussian([0.3, -0.7, 1.0], [0.5, 1.0, 2.0])
    model = g.model(sched)
    sigma = math.sqrt(sched.sigma_min * sched.sigma_max)
    x = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    for coords in ("sigma", "lambda", "t"):
        f = ProbabilityFlow(model, coords)
        s = f.s_of_sigma(sigma)
        assert f.sigma_of_s(s) == pytest.approx(sigma, rel=1e-13)
        h = 1e-5 * max(abs(s), 1.0)
        y = f.to_state(x, sigma)
        ya = f.to_state(g.flow(x, sigma, f.sigma_of_s(s + h), sched), f.sigma_of_s(s + h))
        yb = f.to_state(g.flow(x, sigma, f.sigma_of_s(s - h), sched), f.sigma_of_s(s - h))
        fd = (ya - yb) / (2 * h)
        d, _ = f(y, s)
        torch.testing.assert_close(d, fd, rtol=1e-6, atol=1e-8)


def test_state_maps():
    sched = SCHEDULES["discrete"]
    model = GMM.model(sched)
    x = torch.randn(3, GMM.dim, dtype=F64)
    f = ProbabilityFlow(model, "sigma")
    assert f.coordinates == "sigma"
    xbar = f.to_state(x, 2.0)
    torch.testing.assert_close(xbar, x * math.sqrt(5.0), rtol=1e-15, atol=0)
    torch.testing.assert_close(f.from_state(xbar, 2.0), x, rtol=1e-15, atol=1e-15)
    for c in ("lambda", "t"):
        g = ProbabilityFlow(model, c)
        assert g.to_state(x, 2.0) is x and g.from_state(x, 2.0) is x
    lam = ProbabilityFlow(model, "lambda")
    assert lam.s_of_sigma(0.0) == math.inf and lam.s_of_sigma(math.e) == pytest.approx(-1.0, rel=1e-15)
    with pytest.raises(ValueError, match="coordinates"):
        ProbabilityFlow(model, "logsnr")
