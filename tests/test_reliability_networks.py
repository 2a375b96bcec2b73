"""Reliability (issue 10), networks: an output of another float dtype is cast to the state's, an
integer or boolean output is refused, a network that writes into its input is caught at that call
and never reaches the caller's tensor, and a reversed ``clip_x0`` is refused."""

import pytest
import torch

import flowode
from flowode.models import NetworkOutputError

SCHED = flowode.LinearVPSchedule()
RING = flowode.analytic.gmm_ring()


def x_T(dtype=torch.float32):
    return torch.randn(8, 2, dtype=dtype, generator=torch.Generator().manual_seed(0))


def exact_eps(x, t, dtype):
    sigma = float(SCHED.sigma(t[0].double()))
    return RING.model(SCHED).eps(x.double(), sigma).to(dtype)


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpm_solver++_2m", "unipc", "dopri5"])
def test_float64_output_keeps_the_float32_state(solver):
    ref = flowode.sample(flowode.EpsilonModel(lambda x, t: exact_eps(x, t, x.dtype), SCHED), x_T(), steps=5,
                         solver=solver)
    out = flowode.sample(flowode.EpsilonModel(lambda x, t: exact_eps(x, t, torch.float64), SCHED), x_T(), steps=5,
                         solver=solver)
    assert ref.x.dtype == out.x.dtype == torch.float32
    assert torch.allclose(out.x, ref.x, rtol=0, atol=1e-5)


def test_lower_precision_output_is_cast_up():
    sol = flowode.sample(flowode.EpsilonModel(lambda x, t: exact_eps(x, t, torch.float16), SCHED), x_T(torch.float64),
                         steps=3)
    assert sol.x.dtype == torch.float64


@pytest.mark.parametrize("fn,dtype", [
    (lambda x, t: torch.zeros_like(x, dtype=torch.int64), "torch.int64"),
    (lambda x, t: x > 0, "torch.bool"),
    (lambda x, t: torch.zeros_like(x, dtype=torch.int32), "torch.int32"),
])
@pytest.mark.parametrize("solver", ["ddim", "dopri5"])
def test_integer_or_boolean_output_is_refused(fn, dtype, solver):
    with pytest.raises(NetworkOutputError, match=rf"returned dtype {dtype} at sigma=.*floating-point"):
        flowode.sample(flowode.EpsilonModel(fn, SCHED), x_T(), steps=3, solver=solver)


def test_user_predict_override_output_dtype_is_cast():
    class Override(flowode.EpsilonModel):
        def predict(self, x, sigma):
            pred = RING.model(SCHED).predict(x.double(), sigma)
            return flowode.models.Prediction(pred.eps, pred.x0)

    sol = flowode.sample(Override(lambda x, t: x, SCHED), x_T(), steps=3)
    assert sol.x.dtype == torch.float32


@pytest.mark.parametrize("solver", ["ddim", "heun", "plms", "dopri5", "scipy_rk45"])
def test_network_that_writes_into_its_input(solver):
    """The silent-wrong case: ``x.mul_(0.5)`` inside the network halved the caller's x_T and the
    state the step then used. Now the call is named and the caller's tensor is untouched."""
    def net(x, t):
        x.mul_(0.5)
        return torch.zeros_like(x)

    x = x_T()
    before = x.clone()
    with pytest.raises(NetworkOutputError, match=r"modified its input x in place at sigma=.*x = x.clone\(\)"):
        flowode.sample(flowode.EpsilonModel(net, SCHED), x, steps=3, solver=solver)
    assert torch.equal(x, before)


def test_integrate_never_changes_the_callers_tensor():
    x = x_T()
    before = x.clone()
    sol = flowode.sample(RING.model(SCHED), x, steps=4, solver="dpm_solver++_2m")
    assert torch.equal(x, before) and sol.x.data_ptr() != x.data_ptr()
    z = flowode.encode(RING.model(SCHED), x, steps=4)
    assert torch.equal(x, before) and z.x.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("clip,pattern", [
    ((1, -1), r"`clip_x0` must be \(low, high\) with low < high, got \(1, -1\)"),
    ((0.5, 0.5), r"low < high"),
    ((0, float("nan")), r"low < high"),
    (1.0, r"`clip_x0` must be a pair \(low, high\) of numbers"),
    (("a", "b"), r"`clip_x0` must be a pair"),
    ((1, 2, 3), r"`clip_x0` must be a pair"),
])
def test_bad_clip_x0_is_refused(clip, pattern):
    with pytest.raises(ValueError, match=pattern):
        flowode.EpsilonModel(lambda x, t: x, SCHED, clip_x0=clip)


def test_good_clip_x0_still_clamps():
    m = flowode.EpsilonModel(lambda x, t: torch.full_like(x, 5.0), SCHED, prediction="x0", clip_x0=[-1, 1])
    assert m.clip_x0 == (-1.0, 1.0)
    assert torch.equal(m.x0(torch.zeros(2, 2), 1.0), torch.ones(2, 2))
