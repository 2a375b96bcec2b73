"""Every call that an issue says "must work as written", run as written (one place to see the contract).

DESIGN.md section 4 (issue 2), issue 3 (solvers, NFE budgets, adaptive, optimised grids), issue 4
(command line), issue 5 (round trip) and issue 6 (shipped checkpoints).
"""

from __future__ import annotations

import json

import torch

import flowode
from flowode.cli import main as cli


def _problem():
    sched = flowode.DiscreteVPSchedule.linear(num_timesteps=1000, beta_start=1e-4, beta_end=0.02)
    model = flowode.analytic.gmm_ring().model(sched)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sched, model, x_T


def test_design_section_4():
    sched, model, x_T = _problem()
    assert isinstance(sched.sigma(10), float) and sched.t(sched.sigma(10)) == 10.0
    assert model.schedule is sched
    sigmas = flowode.sigma_grid(sched, steps=10, spacing="trailing")
    assert float(sigmas[-1]) == 0.0 and bool((sigmas[1:] < sigmas[:-1]).all())
    sol = flowode.integrate(model, x_T, sigmas, solver="ddim")
    assert sol.x.shape == x_T.shape and sol.nfe == 10 and torch.equal(sol.sigmas, sigmas)
    assert sol.trajectory is None  # only with save_trajectory=True
    traj = flowode.integrate(model, x_T, sigmas, solver="ddim", save_trajectory=True).trajectory
    assert traj is not None and traj.shape == (11, *x_T.shape)
    sol2 = flowode.integrate(model, x_T, sigmas, solver="euler", coordinates="sigma")
    assert torch.allclose(sol.x, sol2.x, rtol=0, atol=1e-12)
    sol = flowode.integrate(model, x_T, torch.logspace(1, -1, 33, dtype=torch.float64), solver="rk4")
    assert sol.nfe == 32 * 4
    x0 = flowode.sample(model, x_T, steps=10, solver="heun").x
    z = flowode.encode(model, x0, steps=50, solver="ddim").x
    x0_back = flowode.decode(model, z, steps=50, solver="ddim").x
    assert x0_back.shape == x0.shape
    for name in ("euler", "heun", "midpoint", "ralston", "rk4", "rk38", "ddim", "ddpm"):
        assert name in flowode.solvers.available()


def test_issue_3_calls():
    sched, model, x_T = _problem()
    names = ("euler heun midpoint ralston rk4 rk38 ddim ddpm dpm_solver_1 dpm_solver_2 dpm_solver_3 dpm_solver++_2s "
             "dpm_solver++_2m dpm_solver++_3m unipc plms ipndm deis adams_bashforth dopri5 bosh3 adaptive_heun "
             "dopri8 scipy_rk45 scipy_dop853 scipy_lsoda").split()
    assert set(names) <= set(flowode.solvers.available())
    sol = flowode.sample(model, x_T, nfe=10, solver="unipc", order=3)
    assert sol.nfe <= 10
    sol = flowode.sample(model, x_T, nfe=10, solver="dpm_solver++_2m", spacing="logsnr")
    assert sol.nfe <= 10
    sol = flowode.integrate(model, x_T, flowode.sigma_grid(sched, 1), solver="dopri5", rtol=1e-5, atol=1e-5)
    assert sol.nfe > 0 and "accepted" in sol.stats
    x_calibration = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = flowode.optimize_grid(model, x_calibration, nfe=6, solver="dpm_solver++_2m")
    sol = flowode.integrate(model, x_T, grid, solver="dpm_solver++_2m")
    assert sol.nfe <= 6


def test_issue_4_commands(tmp_path, capsys):
    assert cli(["solvers"]) == 0
    assert "dpm_solver++_2m" in capsys.readouterr().out
    out = tmp_path / "bench"
    assert cli(["bench", "--problem", "gmm2d", "--solvers", "ddim,heun,dpm_solver++_2m", "--nfe", "5,10",
                "--samples", "16", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    assert {r["solver"] for r in rows} == {"ddim", "heun", "dpm_solver++_2m"} and len(rows) == 6
    for r in rows:
        assert {"problem", "solver", "nfe", "rmse", "seconds"} <= set(r)
        assert r["nfe"] <= r["nfe_budget"]  # `nfe` is the exact count used
    assert (out / "table.md").exists()


def test_issue_5_roundtrip():
    _, model, _ = _problem()
    x0 = flowode.analytic.gmm_ring().sample(16, torch.Generator().manual_seed(3))
    rt = flowode.roundtrip(model, x0, steps=10, method="ddim")
    assert rt.x0_rmse.shape == rt.x0_max_abs.shape == (16,)
    assert rt.latent.shape == rt.reconstruction.shape == x0.shape
    assert (rt.nfe_encode, rt.nfe_decode) == (10, 10)
    assert float(rt.x0_max_abs.max()) > 1e-3  # naive DDIM inversion is not exact at 10 steps
    for method in ("edict", "bdia"):
        rt = flowode.roundtrip(model, x0, steps=10, method=method)
        assert float(rt.x0_max_abs.max()) < 1e-9


def test_issue_6_pretrained():
    assert {"digits", "ring8"} <= set(flowode.list_pretrained())
    model = flowode.load_pretrained("digits")
    assert isinstance(model, flowode.EpsilonModel)
    x = flowode.sample(model, torch.randn(64, 1, 8, 8), steps=20, solver="ddim").x
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
