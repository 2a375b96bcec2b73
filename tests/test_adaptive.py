"""Adaptive solvers (torchdiffeq, scipy, per-sample Bogacki-Shampine) on the closed-form Gaussian flow.

* the error against the exact flow scales with the tolerance and stays within a small multiple of it;
* NFE equals the number of network calls (a counter wrapped around the network), rejected steps and
  the initial step selection included;
* stats are consistent: len(step_sizes) == accepted, sum(step_sizes) == interval length, and for the
  explicit FSAL pairs nfe == 2 + stages * (accepted + rejected);
* the call of issue 3 works as written; ``max_nfe`` raises or returns the partial state.
"""

from __future__ import annotations

import math

import pytest
import torch

import flowode
from flowode.analytic import Gaussian, gmm_ring, reference_solve
from flowode.solvers import MaxNFEError

F64 = torch.float64
GAUSS = Gaussian([0.5, -1.0, 2.0], [0.5, 1.0, 2.0])
LVP = flowode.LinearVPSchedule()
VP = flowode.DiscreteVPSchedule.linear()
GRID = torch.tensor([10.0, 0.1], dtype=F64)

TORCHDIFFEQ = ["dopri5", "bosh3", "adaptive_heun", "dopri8"]
SCIPY = ["scipy_rk45", "scipy_dop853", "scipy_lsoda"]
OWN = ["bs23", "dp45", "bs23_per_sample"]  # flowode tableaux under the driver's PI controller
ALL = TORCHDIFFEQ + SCIPY + OWN


def _x(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def _counted_model(sched):
    """A plain EpsilonModel(fn, sched) whose fn evaluates the exact eps at per-sample timesteps and
    counts its calls (the per-sample solver calls it once per batched evaluation)."""

    def fn(x, t):
        sig = torch.as_tensor(sched.sigma(t.to(F64))).to(x)
        alpha = 1.0 / torch.sqrt(1.0 + sig * sig)
        xbar = x / alpha[:, None]
        return sig[:, None] * (xbar - GAUSS.mean) / (GAUSS.std**2 + sig[:, None] ** 2)

    counter = _Counter(fn)
    return flowode.EpsilonModel(counter, sched), counter


@pytest.mark.parametrize("solver", ALL)
def test_error_scales_with_tolerance(solver):
    m = GAUSS.model(LVP)
    x = _x()
    ref = GAUSS.flow(x, 10.0, 0.1, LVP)
    tols = [1e-4, 1e-5] if solver in ("adaptive_heun", "bs23_per_sample", "bs23") else [1e-4, 1e-5, 1e-6, 1e-7]
    errs = []
    for tol in tols:
        sol = flowode.integrate(m, x, GRID, solver=solver, rtol=tol, atol=tol)
        errs.append(float((sol.x - ref).abs().max()))
    bound = 40 if solver == "scipy_lsoda" else 20  # LSODA's error estimate is the loosest
    for tol, e in zip(tols[1:], errs[1:]):
        assert e < bound * tol, (solver, tols, errs)
    assert errs[-1] < errs[0] / (3 if len(tols) == 2 else 30), (solver, errs)


@pytest.mark.parametrize("solver", ["dopri5", "bosh3", "scipy_rk45", "scipy_dop853", "bs23", "dp45"])
@pytest.mark.parametrize("coordinates", ["lambda", "t"])
def test_other_coordinates(solver, coordinates):
    m = GAUSS.model(LVP)
    x = _x()
    ref = GAUSS.flow(x, 10.0, 0.1, LVP)
    sol = flowode.integrate(m, x, GRID, solver=solver, rtol=1e-6, atol=1e-6, coordinates=coordinates)
    assert float((sol.x - ref).abs().max()) < 3e-5
    fld = flowode.ProbabilityFlow(m, coordinates)
    length = fld.s_of_sigma(0.1) - fld.s_of_sigma(10.0)
    assert abs(sum(sol.stats["step_sizes"]) - length) < 1e-10 * abs(length)


STAGES = {"dopri5": 6, "bosh3": 3, "adaptive_heun": 1, "dopri8": 13, "scipy_rk45": 6, "scipy_dop853": 12,
          "bs23": 3, "dp45": 6}


@pytest.mark.parametrize("solver", ALL)
def test_nfe_and_stats(solver):
    m = GAUSS.model(VP)
    counter = _Counter(m.exact_eps)
    m.exact_eps = counter
    grid = torch.tensor([50.0, 0.05], dtype=F64)
    if solver == "bs23_per_sample":
        m, counter = _counted_model(VP)
    sol = flowode.integrate(m, _x(), grid, solver=solver, rtol=1e-5, atol=1e-5)
    st = sol.stats
    assert sol.nfe == counter.calls
    assert st["status"] == "ok" and st["boundary_steps"] == []
    assert len(st["step_sizes"]) == len(st["step_sigmas"])
    span = {"sigma": 0.05 - 50.0, "lambda": math.log(50.0 / 0.05)}[st["coordinates"]]  # in the solver's variable
    assert abs(sum(st["step_sizes"]) - span) < 1e-10
    assert math.isclose(st["step_sigmas"][0], 50.0, rel_tol=1e-14)  # through lambda and back in lambda coordinates
    assert all(a > b for a, b in zip(st["step_sigmas"], st["step_sigmas"][1:]))
    if solver == "bs23_per_sample":
        assert st["accepted"] == sum(st["accepted_per_sample"])
        for sizes in st["step_sizes_per_sample"]:
            assert abs(sum(sizes) - (0.05 - 50.0)) < 1e-10
        # 1 (first field value) + 1 (initial step probe) + 3 per round of attempts
        assert sol.nfe == 2 + 3 * st["rounds"]
    else:
        assert len(st["step_sizes"]) == st["accepted"]
    if solver in STAGES:
        assert sol.nfe == 2 + STAGES[solver] * (st["accepted"] + st["rejected"])
        assert st["rejected"] >= 0
    if solver == "scipy_lsoda":
        assert st["rejected"] is None


def test_issue3_call_as_written():
    sched = VP
    model = GAUSS.model(sched)
    counter = _Counter(model.exact_eps)
    model.exact_eps = counter
    x_T = _x()
    sol = flowode.integrate(model, x_T, flowode.sigma_grid(sched, 1), solver="dopri5", rtol=1e-5, atol=1e-5)
    assert sol.nfe == counter.calls
    smin = sched.sigma_min
    assert sol.stats["boundary_steps"] == [(smin, 0.0)]
    assert sol.stats["interval"] == (sched.sigma_max, smin)
    # = exact flow to sigma_min, then the DDIM step to 0 (the exact denoiser there)
    x_min = GAUSS.flow(x_T, sched.sigma_max, smin, sched)
    expected = GAUSS.denoise(x_min / float(sched.alpha_from_sigma(smin)), smin)
    # rtol applies to xbar = x / alpha, which is ~ sigma_max |x| ~ 160 at the start
    assert float((sol.x - expected).abs().max()) < 2e-3
    assert sol.stats["nfe_adaptive"] == sol.nfe - 1


def test_trajectory_at_inner_levels():
    m = GAUSS.model(LVP)
    x = _x()
    grid = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.0], dtype=F64)
    for solver in ("dopri5", "scipy_dop853", "bs23_per_sample", "bs23", "dp45"):
        sol = flowode.integrate(m, x[:4], grid, solver=solver, rtol=1e-6, atol=1e-6, save_trajectory=True)
        assert sol.trajectory_sigmas.tolist() == [10.0, 3.0, 1.0, 0.3, LVP.sigma_min, 0.0]
        for i, s in enumerate([3.0, 1.0, 0.3]):
            exact = GAUSS.flow(x[:4], 10.0, s, LVP)
            assert float((sol.trajectory[i + 1] - exact).abs().max()) < 1e-4, (solver, s)


@pytest.mark.parametrize("solver", ["dopri5", "scipy_rk45", "scipy_lsoda", "bs23_per_sample", "dp45"])
def test_max_nfe(solver):
    m = GAUSS.model(VP)
    m.reset_nfe()
    grid = flowode.sigma_grid(VP, 1)
    with pytest.raises(MaxNFEError, match="max_nfe") as info:
        flowode.integrate(m, _x(), grid, solver=solver, max_nfe=30)
    err = info.value
    assert m.nfe <= 30 and err.nfe == m.nfe
    assert 0 < err.sigma < VP.sigma_max and err.x.shape == (16, 3)
    assert err.stats["status"] == "max_nfe"
    m.reset_nfe()
    sol = flowode.integrate(m, _x(), grid, solver=solver, max_nfe=30, on_max_nfe="return")
    assert sol.nfe <= 30 and sol.stats["status"] == "max_nfe"
    assert sol.stats["sigma_reached"] == pytest.approx(err.sigma)
    if solver != "bs23_per_sample":  # the partial state is the exact flow's value up to the tolerance
        exact = GAUSS.flow(_x(), VP.sigma_max, err.sigma, VP)
        assert float((sol.x - exact).abs().max()) < 1e-3


def test_encode_decode_and_inf_start():
    m = GAUSS.model(VP)
    x0 = GAUSS.sample(8, torch.Generator().manual_seed(1))
    grid = torch.tensor([0.0, 20.0], dtype=F64)
    z = flowode.integrate(m, x0, grid, solver="dopri5", rtol=1e-8, atol=1e-8)
    assert z.stats["boundary_steps"] == [(0.0, VP.sigma_min)]
    back = flowode.integrate(m, z.x, grid.flip(0), solver="dopri5", rtol=1e-8, atol=1e-8)
    assert float((back.x - x0).abs().max()) < 5e-3  # two DDIM boundary steps at sigma_min
    zsnr = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    mv = GAUSS.model(zsnr, prediction="v")
    with pytest.raises(ValueError, match="inf, 0"):
        flowode.integrate(mv, _x(), [math.inf, 0.0], solver="dopri5")


def test_bad_options():
    with pytest.raises(ValueError, match="rtol"):
        flowode.solvers.make("dopri5", rtol=0.0)
    with pytest.raises(ValueError, match="coordinates"):
        flowode.solvers.make("scipy_rk45", coordinates="x")
    with pytest.raises(ValueError, match="max_nfe"):
        flowode.solvers.make("dopri5", max_nfe=0)
    with pytest.raises(ValueError, match="sigma"):
        flowode.solvers.make("bs23_per_sample", coordinates="lambda")
    with pytest.raises(ValueError, match="adaptive"):
        flowode.sample(GAUSS.model(VP), _x(), nfe=10, solver="dopri5")


def test_per_sample_control_bounds_every_sample():
    """On a nonlinear flow (8-mode ring mixture) every sample of the batch gets its own step sequence,
    and every sample's error stays within a small multiple of the tolerance."""
    g = gmm_ring(8, 2.0, 0.05)
    m = g.model(LVP)
    x = _x(8, seed=0)[:, :2].contiguous()
    grid = torch.tensor([10.0, 0.02], dtype=F64)
    ref = reference_solve(m, x, 10.0, 0.02)
    tol = 1e-4
    per = flowode.integrate(m, x, grid, solver="bs23_per_sample", rtol=tol, atol=tol)
    e_per = (per.x - ref).abs().flatten(1).max(1).values
    assert float(e_per.max()) < 10 * tol
    acc = per.stats["accepted_per_sample"]
    assert len(set(acc)) > 1  # different samples took different numbers of steps
    for sizes in per.stats["step_sizes_per_sample"]:
        assert abs(sum(sizes) - (0.02 - 10.0)) < 1e-10
