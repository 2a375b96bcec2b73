"""Reliability (issue 10), misc: a start state far off the prior's scale warns; a NaN latent is
off-distribution; reference_solve refuses bad tolerances and levels the network never saw."""

import math
import warnings

import pytest
import torch

import flowode
from flowode import PriorScaleWarning

G = flowode.Gaussian([0.5, -1.0], [0.3, 0.8])


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("sched,scale,pattern", [
    (flowode.EDMSchedule(), 1.0, r"RMS 1.019, but at sigma=80 .*standard deviation 80.01"),       # EDM from randn
    (flowode.VESchedule(), 1.0, r"standard deviation 50.01"),
    (flowode.DiscreteVPSchedule.linear(), 157.40728, r"at sigma=157.407 .*standard deviation 1 "),  # VE habit
    (flowode.LinearVPSchedule(), 10.0, r"standard deviation 1 "),
])
def test_start_state_far_off_the_prior_warns(sched, scale, pattern):
    with pytest.warns(PriorScaleWarning, match=pattern):
        flowode.sample(G.model(sched), scale * randn(64, 2), steps=3, solver="heun")


@pytest.mark.parametrize("sched", [flowode.EDMSchedule(), flowode.VESchedule(), flowode.DiscreteVPSchedule.linear(),
                                   flowode.LinearVPSchedule(), flowode.CosineVPSchedule()])
def test_prior_draws_do_not_warn(sched):
    model = G.model(sched)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorScaleWarning)
        flowode.sample(model, model.prior_sample((64, 2), dtype=torch.float64,
                                                 generator=torch.Generator().manual_seed(1)), steps=3, solver="heun")
        # data far larger than the noise at the start is legitimate within the factor 4
        x = model.prior_sample((64, 2), dtype=torch.float64) + 3.0 * float(sched.alpha_from_sigma(sched.sigma_max))
        flowode.sample(model, x, steps=2)


def test_no_warning_where_the_prior_says_nothing():
    edm = G.model(flowode.EDMSchedule())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorScaleWarning)
        flowode.integrate(edm, randn(64, 2), [5.0, 1.0, 0.0])          # start below sigma 10: data may dominate
        flowode.encode(edm, randn(64, 2), steps=3)                     # encodes start at the data
        flowode.sample(edm, randn(4, 2), steps=3)                      # 8 numbers: RMS too noisy to judge


def test_latent_stats_of_a_nan_latent_is_off_distribution():
    z = randn(256, 4)
    assert not flowode.latent_stats(z).off_distribution
    z[3, 1] = math.nan
    st = flowode.latent_stats(z)
    assert st.off_distribution and "1 of 1024 coordinates are NaN/Inf" in st.reasons[0]
    z[3, 1] = math.inf
    assert flowode.latent_stats(z).off_distribution


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, "2"])
def test_latent_stats_bad_scale(scale):
    with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0"):
        flowode.latent_stats(randn(8, 2), scale=scale)


SCHED = flowode.DiscreteVPSchedule.linear()
NET = flowode.EpsilonModel(lambda x, t: torch.zeros_like(x), SCHED)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(rtol=-1), r"`rtol` must be a finite number > 0 .*got -1"),
    (dict(atol=0.0), r"`atol` must be a finite number > 0 .*got 0.0"),
    (dict(rtol=math.nan), r"`rtol` must be a finite number > 0"),
])
def test_reference_solve_bad_tolerances(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        flowode.reference_solve(G.model(SCHED), randn(4, 2), 10.0, 1.0, **kwargs)


@pytest.mark.parametrize("s0,s1,pattern", [
    (500.0, 1.0, r"`sigma_from` = 500.0 is outside the schedule's noise range"),
    (10.0, 1e-4, r"`sigma_to` = 0.0001 is outside the schedule's noise range"),
    (math.inf, 1.0, r"`sigma_from` must be a finite noise level >= 0, got inf"),
    (math.nan, 1.0, r"`sigma_from` must be a finite noise level >= 0, got nan"),
    (10.0, -1.0, r"`sigma_to` must be a finite noise level >= 0, got -1.0"),
])
def test_reference_solve_levels_outside_the_trained_range(s0, s1, pattern):
    with pytest.raises(ValueError, match=pattern):
        flowode.reference_solve(NET, randn(4, 2), s0, s1)


def test_reference_solve_still_takes_the_range_and_analytic_models_anywhere():
    x = randn(4, 2)
    flowode.reference_solve(NET, x, SCHED.sigma_max, 0.0, rtol=1e-6, atol=1e-6)
    out = flowode.reference_solve(G.model(SCHED), x * 500, 500.0, 1e-4, rtol=1e-9, atol=1e-9)
    assert torch.allclose(out, G.flow(x * 500, 500.0, 1e-4, SCHED), rtol=0, atol=1e-6)


def test_fixed_point_inversion_of_a_float16_state_does_not_crash_lapack():
    """Found by tests/test_fuzz.py: a float16 residual overflowed, and the Anderson least squares got
    NaN/Inf and failed inside LAPACK ("INTERNAL ASSERT FAILED ... illegal value")."""
    sched = flowode.CosineVPSchedule()
    exact = G.model(sched)
    model = flowode.EpsilonModel(lambda x, t: x, sched)
    model.per_sample_network = True
    model.network = lambda x, sigma: exact.network(x.double(), sigma).to(x.dtype)
    x = torch.tensor([[1.5410, -0.2935], [-2.1797, 0.5684], [-1.0850, -1.3984]], dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = flowode.roundtrip(model, x, 1, "fixed_point", reference=False)
    assert rt.latent.dtype == torch.float16 and torch.isfinite(rt.latent).all()


def test_check_prior_false_and_round_trips_do_not_warn():
    edm = G.model(flowode.EDMSchedule())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorScaleWarning)
        warnings.simplefilter("ignore", flowode.InversionWarning)
        flowode.sample(edm, randn(64, 2), steps=3, check_prior=False)
        flowode.decode(edm, randn(64, 2), steps=3, check_prior=False)
        flowode.roundtrip(edm, 0.01 * randn(64, 2), 2, "ddim", reference=False)  # decodes a latent, not a prior draw
        flowode.roundtrip(edm, 0.01 * randn(64, 2), 2, "fixed_point", reference=False)
