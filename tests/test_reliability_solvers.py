"""Reliability (issue 10), solvers: one rule for every multistep solver -- a grid that is all
warm-up (the method never reaches its order) gets a WarmupWarning."""

import re
import warnings

import pytest
import torch

import flowode
from flowode.solvers import SOLVERS, WarmupWarning, make

SCHED = flowode.DiscreteVPSchedule.linear()
RING = flowode.analytic.gmm_ring()
MULTISTEP = sorted(n for n, c in SOLVERS.items() if c.multistep)


def x_T():
    return torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_plms_two_steps_warns():
    """The silent-wrong case: 2 PLMS steps on the radius-2 ring gave |x| up to 65 without a word (with
    the paper's half steps in t; the midpoint in sigma, the default since, stays near the ring)."""
    with pytest.warns(WarmupWarning, match=r"solver 'plms' spends its first 3 step\(s\) warming up.*only 2 step"):
        sol = flowode.sample(RING.model(SCHED), x_T(), steps=2, solver="plms", half_step="t")
    assert float(sol.x.abs().max()) > 10  # why it warns: the result is far off the ring
    with pytest.warns(WarmupWarning):
        sol = flowode.sample(RING.model(SCHED), x_T(), steps=2, solver="plms")
    assert float(sol.x.abs().max()) < 3


def test_every_multistep_solver_follows_the_rule():
    assert {"plms", "ipndm", "adams_bashforth", "deis", "dpm_solver++_2m", "dpm_solver++_3m", "unipc"} <= set(MULTISTEP)
    for name in MULTISTEP:
        w = make(name).warmup_steps
        # a stochastic multistep method's `order` is its strong order, not its history length
        assert w >= 1 and (SOLVERS[name].stochastic or w == make(name).order - 1), name
        with pytest.warns(WarmupWarning, match=rf"solver '{re.escape(name)}'"):
            flowode.sample(RING.model(SCHED), x_T()[:4], steps=w, solver=name)
        with warnings.catch_warnings():
            warnings.simplefilter("error", WarmupWarning)
            flowode.sample(RING.model(SCHED), x_T()[:4], steps=w + 1, solver=name)


def test_warmup_follows_the_order_option():
    assert make("ipndm", order=2).warmup_steps == 1 and make("unipc", order=3).warmup_steps == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", WarmupWarning)
        flowode.sample(RING.model(SCHED), x_T()[:4], steps=2, solver="ipndm", order=2)


@pytest.mark.parametrize("name", ["ddim", "heun", "dpm_solver_3", "dopri5"])
def test_one_step_solvers_never_warn(name):
    assert make(name).warmup_steps == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", WarmupWarning)
        flowode.sample(RING.model(SCHED), x_T()[:4], steps=1, solver=name)


def test_nfe_dry_runs_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", WarmupWarning)
        assert make("plms").nfe(flowode.sigma_grid(SCHED, 2).tolist(), SCHED) == 5


def test_float16_coefficient_overflow_is_a_solver_error():
    """Found by tests/test_fuzz.py: a 4-step float16 encode to sigma 118.8 (cosine VP) needs an
    Adams-Bashforth weight above float16's 65504, and torch raised "value cannot be converted to type
    c10::Half without overflow" from inside the step."""
    sched = flowode.CosineVPSchedule()
    exact = flowode.Gaussian([0.5, -0.5], [0.5, 1.0]).model(sched)
    model = flowode.EpsilonModel(lambda x, t: x, sched)
    model.per_sample_network = True
    model.network = lambda x, sigma: exact.network(x.double(), sigma).to(x.dtype)
    x = torch.tensor([[1.5410, -0.2935]], dtype=torch.float16)
    with pytest.raises(flowode.SolverError, match=r"solver 'adams_bashforth' needs a coefficient that a float16 state "
                                                  r"cannot hold .*pass `x` as x.float\(\)"):
        flowode.encode(model, x, 4, solver="adams_bashforth")
    assert torch.isfinite(flowode.encode(model, x.float(), 4, solver="adams_bashforth").x).all()
