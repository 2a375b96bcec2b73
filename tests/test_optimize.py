"""Optimised grids: beat every built-in spacing on held-out noise, respect the NFE budget, JSON round trip."""

import math

import pytest
import torch

import flowode
from flowode.analytic import gmm_ring
from flowode.grids import SPACINGS, GridError, steps_for_nfe
from flowode.optimize import grid_error
from flowode.solvers.base import SolverError

SCHED = flowode.DiscreteVPSchedule.linear()


@pytest.fixture(scope="module")
def problem():
    gmm = gmm_ring()
    model = gmm.model(SCHED)
    g = torch.Generator().manual_seed(1234)
    x_cal = torch.randn(48, 2, generator=g, dtype=torch.float64)
    x_test = torch.randn(128, 2, generator=g, dtype=torch.float64)
    model.ref_cal = flowode.reference_solve(model, x_cal, SCHED.sigma_max, 0.0, rtol=1e-8, atol=1e-8)
    return model, x_cal, x_test


def _heldout_error(model, x, grid, solver, refs):
    s0 = float(grid[0])
    if s0 not in refs:
        refs[s0] = flowode.reference_solve(model, x, s0, float(grid[-1]), rtol=1e-8, atol=1e-8)
    return grid_error(model, x, grid, solver, refs[s0])


@pytest.mark.parametrize("solver,nfe", [("heun", 7), ("ddim", 5)])
def test_optimised_grid_beats_builtin_spacings_on_heldout_batch(problem, solver, nfe):
    model, x_cal, x_test = problem
    grid, info = flowode.optimize_grid(model, x_cal, nfe=nfe, solver=solver, reference=model.ref_cal,
                                       max_evals=100, return_info=True)
    slv = flowode.solvers.make(solver)
    assert slv.nfe(grid.tolist()) <= nfe
    sol = flowode.integrate(model, x_test, grid, solver=solver)
    assert sol.nfe <= nfe
    assert info.error_after < info.error_before
    refs: dict = {}
    opt = _heldout_error(model, x_test, grid, solver, refs)
    for sp in SPACINGS:
        steps = steps_for_nfe(slv, nfe, lambda n, sp=sp: flowode.sigma_grid(SCHED, n, sp))
        g = flowode.sigma_grid(SCHED, steps, sp)
        assert slv.nfe(g.tolist()) <= nfe
        assert opt < _heldout_error(model, x_test, g, solver, refs), sp


def test_grid_is_valid_and_deterministic(problem):
    model, x_cal, _ = problem
    g1 = flowode.optimize_grid(model, x_cal, nfe=5, solver="ddim", max_evals=60, reference=model.ref_cal)
    g2 = flowode.optimize_grid(model, x_cal, nfe=5, solver="ddim", max_evals=60, reference=model.ref_cal)
    assert torch.equal(g1, g2)
    assert g1.dtype == torch.float64 and float(g1[-1]) == 0.0
    assert float(g1[0]) == SCHED.sigma_max
    assert bool((torch.diff(g1) < 0).all())
    assert float(g1[-2]) >= SCHED.sigma_min * (1 - 1e-12)
    flowode.check_grid(g1, SCHED)


def test_json_round_trip_is_exact(problem, tmp_path):
    model, x_cal, x_test = problem
    grid, info = flowode.optimize_grid(model, x_cal, nfe=5, solver="heun", max_evals=60,
                                       reference=model.ref_cal, return_info=True)
    path = tmp_path / "grid.json"
    flowode.save_grid(path, grid, info)
    back, meta = flowode.load_grid(path, return_meta=True)
    assert torch.equal(back, grid)
    assert meta["solver"] == "heun" and meta["nfe"] <= 5 and meta["error_after"] == info.error_after
    assert "DiscreteVPSchedule" in meta["schedule"]
    a = flowode.integrate(model, x_test, back, solver="heun").x
    b = flowode.integrate(model, x_test, grid, solver="heun").x
    assert torch.equal(a, b)
    assert torch.equal(flowode.load_grid(path), grid)


def test_save_grid_handles_inf_and_rejects_bad_files(tmp_path):
    g = torch.tensor([math.inf, 3.0, 0.5, 0.0], dtype=torch.float64)
    flowode.save_grid(tmp_path / "g.json", g, {"note": "zero terminal SNR"})
    assert torch.equal(flowode.load_grid(tmp_path / "g.json"), g)
    (tmp_path / "bad.json").write_text('{"sigmas": [1, 0]}')
    with pytest.raises(ValueError, match="not a flowode grid file"):
        flowode.load_grid(tmp_path / "bad.json")
    with pytest.raises(GridError):
        flowode.save_grid(tmp_path / "x.json", [1.0, 2.0, 0.5])


def test_bad_inputs(problem):
    model, x_cal, _ = problem
    with pytest.raises(SolverError, match="stochastic"):
        flowode.optimize_grid(model, x_cal, nfe=5, solver="ddpm")
    with pytest.raises(ValueError, match="method"):
        flowode.optimize_grid(model, x_cal, nfe=5, solver="ddim", method="bfgs")
    with pytest.raises(ValueError, match="nfe"):
        flowode.optimize_grid(model, x_cal, nfe=0, solver="ddim", reference=x_cal)
