"""Property tests of the schedules' maps t <-> sigma <-> lambda (float64 throughout)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowode.schedules import (
    CosineVPSchedule,
    DiscreteVPSchedule,
    EDMSchedule,
    FlowMatchSchedule,
    LinearVPSchedule,
    VESchedule,
    lambda_to_sigma,
    rescale_zero_terminal_snr,
    sigma_to_lambda,
)

SCHEDULES = {
    "linear": DiscreteVPSchedule.linear(),
    "scaled_linear": DiscreteVPSchedule.scaled_linear(),
    "cosine": DiscreteVPSchedule.cosine(),
    "linear_ztsnr": DiscreteVPSchedule.linear(zero_terminal_snr=True),
    "scaled_linear_ztsnr": DiscreteVPSchedule.scaled_linear(zero_terminal_snr=True),
    "cosine_ztsnr": DiscreteVPSchedule.cosine(zero_terminal_snr=True),
    "small_discrete": DiscreteVPSchedule.linear(num_timesteps=20, beta_start=1e-3, beta_end=0.3),
    "vp_linear": LinearVPSchedule(),
    "vp_cosine": CosineVPSchedule(),
    "ve": VESchedule(),
    "edm": EDMSchedule(),
    "flow": FlowMatchSchedule(),
    "flow_shift3": FlowMatchSchedule(shift=3.0),
    "flow_tmax": FlowMatchSchedule(t_min=0.02, t_max=0.98),
    "vp_cosine_tmax1": CosineVPSchedule(t_max=1.0),
}
DISCRETE = {k: v for k, v in SCHEDULES.items() if isinstance(v, DiscreteVPSchedule)}
ZTSNR = {k: v for k, v in DISCRETE.items() if v.zero_terminal_snr}
FINITE_MAX = {k: v for k, v in SCHEDULES.items() if math.isfinite(v.sigma_max)}

names = st.sampled_from(sorted(SCHEDULES))
unit = st.floats(0.0, 1.0, allow_nan=False)
PROPS = settings(max_examples=60, deadline=None, derandomize=True)  # deterministic in CI


def _t_at(sched, u: float) -> float:
    return sched.t_min + u * (sched.t_max - sched.t_min)


# ------------------------------------------------------------------------------------ round trips
@PROPS
@given(name=names, u=unit)
def test_t_sigma_t_round_trip(name, u):
    sched = SCHEDULES[name]
    t = _t_at(sched, u)
    back = sched.t(sched.sigma(t))
    # relative to t, with a floor of 1% of the range (VE: near t = 0 sigma carries t only to ~1e-16 absolute)
    scale = max(abs(t), 1e-2 * (sched.t_max - sched.t_min))
    assert abs(back - t) <= 1e-12 * scale, (name, t, back)


@PROPS
@given(name=names, u=unit)
def test_sigma_t_sigma_round_trip(name, u):
    sched = SCHEDULES[name]
    lo = math.log(sched.sigma_min)
    hi = math.log(sched.sigma_max if math.isfinite(sched.sigma_max) else float(sched.sigma(sched.t_max - 1e-3)))
    sigma = math.exp(lo + u * (hi - lo))
    sigma = min(max(sigma, sched.sigma_min), sched.sigma_max)
    t = sched.t(sigma)
    back = sched.sigma(t)
    # 1e-12 relative, plus the unavoidable part: t is a float64, so sigma(t) is known only to
    # |dsigma/dt| * ulp(t) (matters on a zero-terminal-SNR last interval, where sigma -> inf)
    conditioning = 4 * np.spacing(abs(t)) * abs(sched.dsigma_dt(t))
    assert abs(back - sigma) <= 1e-12 * sigma + conditioning, (name, sigma, back)


@PROPS
@given(name=names, u=unit)
def test_lambda_round_trip(name, u):
    sched = SCHEDULES[name]
    t = _t_at(sched, u)
    if math.isinf(sched.sigma(t)):
        assert sched.lam(t) == -math.inf and sched.t_from_lambda(-math.inf) == t
        return
    lam = sched.lam(t)
    assert lam == pytest.approx(-math.log(sched.sigma(t)), rel=1e-15, abs=1e-15)
    back = sched.t_from_lambda(lam)
    scale = max(abs(t), 1e-2 * (sched.t_max - sched.t_min))
    assert abs(back - t) <= 1e-12 * scale
    assert lambda_to_sigma(sigma_to_lambda(sched.sigma(t))) == pytest.approx(sched.sigma(t), rel=1e-14)


def test_lambda_helpers_limits():
    assert sigma_to_lambda(0.0) == math.inf
    assert sigma_to_lambda(math.inf) == -math.inf
    assert lambda_to_sigma(math.inf) == 0.0
    lam = torch.linspace(-5, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(sigma_to_lambda(lambda_to_sigma(lam)), lam, rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_round_trip_dense_tensor(name):
    """The tensor path, on a dense grid covering the whole range (ends included)."""
    sched = SCHEDULES[name]
    t = torch.linspace(sched.t_min, sched.t_max, 4001, dtype=torch.float64)
    sig = sched.sigma(t)
    assert isinstance(sig, torch.Tensor) and sig.dtype == torch.float64
    back = sched.t(sig)
    scale = torch.clamp(t.abs(), min=1e-2 * (sched.t_max - sched.t_min))
    assert float(((back - t).abs() / scale).max()) <= 1e-12
    fin = torch.isfinite(sig)
    rel = ((sched.sigma(back[fin]) - sig[fin]).abs() / sig[fin]).max()
    assert float(rel) <= 1e-12


# ------------------------------------------------------------------------------------ monotonicity
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_sigma_strictly_increasing(name):
    sched = SCHEDULES[name]
    t = torch.linspace(sched.t_min, sched.t_max, 10001, dtype=torch.float64)
    sig = sched.sigma(t)
    assert bool((torch.diff(sig) > 0).all())
    assert float(sig[0]) == pytest.approx(sched.sigma_min, rel=1e-15)
    assert float(sig[-1]) == sched.sigma_max or float(sig[-1]) == pytest.approx(sched.sigma_max, rel=1e-15)
    lam = sched.lam(t)
    assert bool((torch.diff(lam) < 0).all())


@PROPS
@given(name=names, u=unit, v=unit)
def test_sigma_monotone_pairs(name, u, v):
    sched = SCHEDULES[name]
    a, b = sorted((_t_at(sched, u), _t_at(sched, v)))
    assert sched.sigma(a) <= sched.sigma(b)
    if b - a > 1e-9 * (sched.t_max - sched.t_min):
        assert sched.sigma(a) < sched.sigma(b)
    assert sched.t(sched.sigma(a)) <= sched.t(sched.sigma(b))


# ------------------------------------------------------------------------------------ discrete knots
@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_integer_timesteps_exact(name):
    """t(sigma(n)) == n exactly, for every n, as a tensor and as Python floats."""
    sched = DISCRETE[name]
    n = torch.arange(sched.num_timesteps, dtype=torch.float64)
    assert torch.equal(sched.t(sched.sigma(n)), n)
    for i in [*range(0, sched.num_timesteps, 7), sched.num_timesteps - 1]:  # the scalar path
        assert sched.t(sched.sigma(float(i))) == float(i)
    # float32 timesteps (what a network receives) are the same integers
    assert torch.equal(sched.t(sched.sigma(n)).to(torch.float32), n.to(torch.float32))


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_alpha_squared_is_alphas_cumprod(name):
    sched = DISCRETE[name]
    n = torch.arange(sched.num_timesteps, dtype=torch.float64)
    abar = sched.alphas_cumprod_knots
    torch.testing.assert_close(sched.alpha(n) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.alphas_cumprod(n), abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(abar, torch.cumprod(1 - sched.betas, 0), rtol=1e-12, atol=0)
    # sigma is the DDIM noise-to-signal ratio
    fin = abar > 0
    torch.testing.assert_close(sched.sigma(n)[fin], torch.sqrt((1 - abar[fin]) / abar[fin]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_log_abar_piecewise_linear(name):
    """Between knots log(abar) is linear in t (abar itself on a zero-terminal-SNR last interval)."""
    sched = DISCRETE[name]
    la = sched.log_alphas_cumprod
    n = sched.num_timesteps
    lo = torch.arange(n - 1, dtype=torch.float64)
    for frac in (0.25, 0.5, 0.9):
        t = lo + frac
        got = torch.log(sched.alphas_cumprod(t))
        want = la[:-1] + frac * (la[1:] - la[:-1])
        if sched.zero_terminal_snr:
            want[-1] = math.log(math.exp(float(la[-2])) * (1 - frac))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_from_alphas_cumprod_reproduces_knots():
    sched = SCHEDULES["scaled_linear"]
    again = DiscreteVPSchedule.from_alphas_cumprod(sched.alphas_cumprod_knots)
    torch.testing.assert_close(again.alphas_cumprod_knots, sched.alphas_cumprod_knots, rtol=1e-13, atol=0)


# ------------------------------------------------------------------------------------ derivatives
def _fd(sched, t: float, h: float) -> float:
    return (sched.sigma(t + h) - sched.sigma(t - h)) / (2 * h)


@PROPS
@given(name=names, u=st.floats(0.02, 0.98))
def test_dsigma_dt_matches_finite_differences(name, u):
    sched = SCHEDULES[name]
    if sched.discrete:
        # inside one interval, away from the knots where the slope jumps
        n = min(int(u * (sched.num_timesteps - 1)), sched.num_timesteps - 2)
        t = n + 0.2 + 0.6 * (u * (sched.num_timesteps - 1) % 1)
        h = 1e-4
    else:
        t = _t_at(sched, u)
        h = 1e-5 * (sched.t_max - sched.t_min)
    d = sched.dsigma_dt(t)
    assert d > 0
    assert d == pytest.approx(_fd(sched, t, h), rel=1e-6)


@pytest.mark.parametrize("name", sorted(ZTSNR))
def test_dsigma_dt_on_zero_terminal_snr_last_interval(name):
    sched = ZTSNR[name]
    last = sched.num_timesteps - 2
    for frac in (0.1, 0.5, 0.9):
        t = last + frac
        d = sched.dsigma_dt(t)
        assert math.isfinite(d) and d > 0
        assert d == pytest.approx(_fd(sched, t, 1e-5), rel=1e-6)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_dlog_alpha_dt_chain_rule(name):
    sched = SCHEDULES[name]
    for u in (0.1, 0.37, 0.8):
        t = _t_at(sched, u) + (0.5 if sched.discrete else 0.0)
        h = 1e-4 if sched.discrete else 1e-6 * (sched.t_max - sched.t_min)
        fd = (math.log(sched.alpha(t + h)) - math.log(sched.alpha(t - h))) / (2 * h)
        assert sched.dlog_alpha_dt(t) == pytest.approx(fd, rel=1e-6, abs=1e-12)


# ------------------------------------------------------------------------------------ zero terminal SNR
@pytest.mark.parametrize("name", sorted(ZTSNR))
def test_zero_terminal_snr(name):
    sched = ZTSNR[name]
    last = sched.num_timesteps - 1
    assert sched.alphas_cumprod_knots[-1] == 0
    assert sched.sigma(float(last)) == math.inf
    assert sched.sigma_max == math.inf
    assert sched.t(math.inf) == float(last)
    assert sched.alpha(float(last)) == 0.0
    assert sched.alpha_from_sigma(math.inf) == 0.0
    assert sched.std_from_sigma(math.inf) == 1.0
    assert sched.std_from_sigma(0.0) == 0.0
    assert sched.lam(float(last)) == -math.inf
    # just below the end everything is finite and still inverts
    t = last - 1e-3
    assert math.isfinite(sched.sigma(t))
    assert sched.t(sched.sigma(t)) == pytest.approx(t, rel=1e-12)
    # the first abar is kept (Lin et al. 2024, Algorithm 1)
    plain = DiscreteVPSchedule(sched.betas.clone())
    assert float(plain.alphas_cumprod_knots[0]) == pytest.approx(float(sched.alphas_cumprod_knots[0]), rel=1e-14)


def test_rescale_zero_terminal_snr_against_diffusers():
    diffusers = pytest.importorskip("diffusers")
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as ref

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ours = rescale_zero_terminal_snr(betas)
    theirs = ref(betas.clone())
    torch.testing.assert_close(ours, theirs.to(torch.float64), rtol=1e-12, atol=1e-15)
    assert diffusers is not None


@pytest.mark.parametrize("beta_schedule,ctor", [
    ("linear", DiscreteVPSchedule.linear),
    ("scaled_linear", DiscreteVPSchedule.scaled_linear),
    ("squaredcos_cap_v2", DiscreteVPSchedule.cosine),
])
def test_discrete_betas_match_diffusers(beta_schedule, ctor):
    """diffusers builds its betas in float32; ours are float64 and agree to float32 round-off."""
    pytest.importorskip("diffusers")
    from diffusers import DDPMScheduler

    kw = {} if beta_schedule == "squaredcos_cap_v2" else \
        dict(beta_start=1e-4, beta_end=0.02) if beta_schedule == "linear" else dict(beta_start=0.00085, beta_end=0.012)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, **kw)
    sched = ctor()
    torch.testing.assert_close(sched.betas, ref.betas.to(torch.float64), rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(sched.alphas_cumprod_knots, ref.alphas_cumprod.to(torch.float64), rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------------ closed forms
def test_continuous_closed_forms():
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    lin = SCHEDULES["vp_linear"]
    abar = torch.exp(-(0.5 * t**2 * (20.0 - 0.1) + 0.1 * t))
    torch.testing.assert_close(lin.alphas_cumprod(t), abar, rtol=1e-13, atol=0)
    cos = SCHEDULES["vp_cosine"]
    s = 0.008
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    torch.testing.assert_close(cos.alphas_cumprod(t), f, rtol=1e-12, atol=0)
    ve = SCHEDULES["ve"]
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50.0 / 0.01) ** t, rtol=1e-13, atol=0)
    assert ve.alpha(0.3) == 1.0 and ve.alpha_from_sigma(7.0) == 1.0 and ve.std_from_sigma(7.0) == 7.0
    edm = SCHEDULES["edm"]
    assert edm.sigma(3.25) == 3.25 and edm.t(3.25) == 3.25 and edm.alpha(3.25) == 1.0


def test_flow_matching_closed_forms():
    """x_t = (1 - t) x0 + t eps: alpha = 1 - t, std = t, sigma = t / (1 - t); the shift moves grids only."""
    t = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    for sched in (SCHEDULES["flow"], SCHEDULES["flow_shift3"]):
        sig = sched.sigma(t)
        torch.testing.assert_close(sched.alpha(t), 1 - t, rtol=1e-15, atol=1e-16)
        torch.testing.assert_close(sched.std_from_sigma(sig), t, rtol=1e-15, atol=1e-16)
        torch.testing.assert_close(sched.t(sig), t, rtol=1e-15, atol=0)
    assert SCHEDULES["flow"].sigma_max == math.inf and SCHEDULES["flow"].t(math.inf) == 1.0
    assert SCHEDULES["flow"].alpha_from_sigma(math.inf) == 0.0 and SCHEDULES["flow"].std_from_sigma(math.inf) == 1.0


def test_cosine_t_max_1_reaches_infinity_without_nan():
    """Regression: CosineVPSchedule(t_max=1).t(inf) was NaN (sigma * sigma overflowed), so a grid from
    sigma = inf called the network with t = NaN and the error blamed the network."""
    cos = SCHEDULES["vp_cosine_tmax1"]
    assert cos.sigma_max == math.inf and cos.t(math.inf) == 1.0
    big = torch.tensor([1e150, 1e200, 1e300, math.inf], dtype=torch.float64)
    assert bool(torch.isfinite(cos.t(big)).all()) and float((cos.t(big) - 1).abs().max()) < 1e-12
    assert cos.t(1e300) == pytest.approx(1.0, abs=1e-12)


def test_scalars_in_scalars_out():
    sched = SCHEDULES["linear"]
    assert isinstance(sched.sigma(10), float)
    assert isinstance(sched.t(0.5), float)
    assert isinstance(sched.sigma(torch.tensor([10.0])), torch.Tensor)
    assert isinstance(sched.alpha_from_sigma(np.float64(0.5)), float)


@pytest.mark.parametrize("bad", [-0.5, 1000.0, float("nan")])
def test_discrete_out_of_range_timestep(bad):
    with pytest.raises(ValueError, match="timestep"):
        SCHEDULES["linear"].sigma(bad)


def test_discrete_out_of_range_sigma():
    sched = SCHEDULES["linear"]
    with pytest.raises(ValueError, match="sigma"):
        sched.t(sched.sigma_min / 2)
    with pytest.raises(ValueError, match="sigma"):
        sched.t(sched.sigma_max * 2)


@pytest.mark.parametrize("ctor,kwargs", [
    (VESchedule, dict(sigma_min=1.0, sigma_max=0.5)),
    (EDMSchedule, dict(sigma_min=0.0)),
    (LinearVPSchedule, dict(beta_min=30.0)),
    (CosineVPSchedule, dict(t_max=1.5)),
])
def test_constructor_validation(ctor, kwargs):
    with pytest.raises(ValueError):
        ctor(**kwargs)


def test_betas_validation():
    with pytest.raises(ValueError, match="betas"):
        DiscreteVPSchedule(torch.tensor([0.1]))
    with pytest.raises(ValueError, match="betas"):
        DiscreteVPSchedule(torch.tensor([0.1, 1.5]))
