"""Exponential integrators (DPM-Solver 1/2/3, DPM-Solver++ 2S/2M/3M, UniPC): convergence orders on
closed-form problems, identities, diffusers oracles in float64, and sigma = 0 / NFE edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowode
from flowode.analytic import Gaussian, gmm_random, reference_solve
from flowode.solvers import SolverError

torch.set_num_threads(1)

NAMES = ["dpm_solver_1", "dpm_solver_2", "dpm_solver_3", "dpm_solver++_2s", "dpm_solver++_2m",
         "dpm_solver++_3m", "unipc"]

SCHED = flowode.DiscreteVPSchedule.linear(1000, 1e-4, 0.02)
GAUSS = Gaussian([0.5, -1.0, 2.0, 0.3], [0.3, 1.0, 0.1, 0.7])
GMM = gmm_random(dim=6, k=5, std=0.4, seed=1)


def _x_start(n: int, dim: int, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) * (sigma / math.sqrt(1 + sigma**2))


def _lambda_grid(n: int, tiny: bool, s_hi: float = 10.0, s_lo: float = 0.1) -> torch.Tensor:
    """Uniform in lambda between s_hi and s_lo; with ``tiny`` the first two steps are O(h^2) long,
    so that a multistep method's lower-order warm-up steps do not hide its order."""
    la, lb = -math.log(s_hi), -math.log(s_lo)
    if tiny:
        h = (lb - la) / n
        d = h * h / (lb - la)
        lam = torch.cat([torch.tensor([la, la + d], dtype=torch.float64),
                         torch.linspace(la + 2 * d, lb, n + 1, dtype=torch.float64)])
    else:
        lam = torch.linspace(la, lb, n + 1, dtype=torch.float64)
    return torch.exp(-lam)


def _full_order(name: str, opts: dict) -> dict:
    """Options plus ``lower_order_final=False`` for the multistep solvers (full order to the end)."""
    multistep = flowode.solvers.get_class(name).multistep
    return {**opts, "lower_order_final": False} if multistep else dict(opts)


def _slope(ns: list[int], errs: list[float]) -> float:
    return -float(np.polyfit(np.log(ns), np.log(errs), 1)[0])


# (solver, options, claimed order, tiny warm-up grid)
ORDER_CASES = [
    ("dpm_solver_1", {}, 1, False),
    ("dpm_solver_2", {}, 2, False),
    ("dpm_solver_3", {}, 3, False),
    ("dpm_solver++_2s", {}, 2, False),
    ("dpm_solver++_2m", {}, 2, False),
    ("dpm_solver++_3m", {}, 3, True),
    ("dpm_solver++_3m", {"coefficients": "reference"}, 2, True),
    ("unipc", {"order": 1, "variant": "bh1"}, 2, True),
    ("unipc", {"order": 1, "variant": "bh2"}, 2, True),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, True),
    ("unipc", {"order": 2, "variant": "bh2"}, 3, True),
    ("unipc", {"order": 3, "variant": "bh1"}, 4, True),
    ("unipc", {"order": 3, "variant": "bh2"}, 4, True),
    ("unipc", {"order": 1, "corrector": False}, 1, True),
    ("unipc", {"order": 2, "corrector": False}, 2, True),
    ("unipc", {"order": 3, "corrector": False}, 3, True),
    ("unipc", {"order": 2, "predictor": "dpm_solver++", "variant": "bh1"}, 3, True),
    ("unipc", {"order": 3, "predictor": "dpm_solver++"}, 4, True),
]


def _case_id(c: tuple) -> str:
    return c[0] + "".join(f"-{k}={v}" for k, v in c[1].items())


def test_registered() -> None:
    assert set(NAMES) <= set(flowode.solvers.available())


@pytest.mark.parametrize("case", ORDER_CASES, ids=_case_id)
def test_order_gaussian(case: tuple) -> None:
    """Empirical global order on the closed-form Gaussian flow, float64, lambda-uniform 10 -> 0.1."""
    name, opts, claimed, tiny = case
    model = GAUSS.model(SCHED)
    x = _x_start(16, 4, 10.0)
    ns = [32, 64, 128]
    errs = []
    for n in ns:
        grid = _lambda_grid(n, tiny)
        sol = flowode.integrate(model, x, grid, solver=name, **_full_order(name, opts))
        exact = GAUSS.flow(x, float(grid[0]), float(grid[-1]), SCHED)
        errs.append(float((sol.x - exact).abs().max()))
    p = _slope(ns, errs)
    assert abs(p - claimed) < 0.2, f"{name} {opts}: measured order {p:.3f}, claimed {claimed}, errors {errs}"


MIX_CASES = [c for c in ORDER_CASES if c[1].get("coefficients") != "reference" and c[1].get("variant") != "bh1"
             and c[1].get("corrector") is not False]


@pytest.mark.parametrize("case", MIX_CASES, ids=_case_id)
def test_order_mixture(case: tuple, mixture_reference: tuple) -> None:
    """Empirical order on a 6-D Gaussian mixture against a tight scipy reference solve."""
    name, opts, claimed, tiny = case
    model = GMM.model(SCHED)
    x, refs = mixture_reference
    ns = [32, 64, 128]
    errs = []
    for n in ns:
        grid = _lambda_grid(n, tiny, 10.0, 0.2)
        sol = flowode.integrate(model, x, grid, solver=name, **_full_order(name, opts))
        errs.append(float((sol.x - refs).abs().max()))
    p = _slope(ns, errs)
    assert abs(p - claimed) < 0.3, f"{name} {opts}: measured order {p:.3f}, claimed {claimed}, errors {errs}"


@pytest.fixture(scope="module")
def mixture_reference() -> tuple:
    model = GMM.model(SCHED)
    x = _x_start(8, 6, 10.0, seed=3)
    ref = reference_solve(model, x, 10.0, 0.2, rtol=1e-12, atol=1e-12)
    return x, ref


# ------------------------------------------------------------------------------------ identities
@pytest.mark.parametrize("schedule", [SCHED, flowode.VESchedule()] if hasattr(flowode, "VESchedule") else [SCHED],
                         ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("final", ["zero", "min"])
def test_dpm_solver_1_is_ddim(schedule: flowode.Schedule, final: str) -> None:
    model = GMM.model(schedule)
    grid = flowode.sigma_grid(schedule, 12, "logsnr" if final == "zero" else "karras", final=final)
    x = model.prior_sample((8, 6), float(grid[0]), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = flowode.integrate(model, x, grid, solver="dpm_solver_1").x
    b = flowode.integrate(model, x, grid, solver="ddim").x
    assert float((a - b).abs().max()) < 1e-12
    back = flowode.integrate(model, a, torch.flip(grid, [0]), solver="dpm_solver_1").x
    back_ddim = flowode.integrate(model, a, torch.flip(grid, [0]), solver="ddim").x
    assert float((back - back_ddim).abs().max()) < 1e-12


def test_unip_bh2_is_dpm_solver_pp() -> None:
    """UniP-2 (bh2, a = 1/2) is DPM-Solver++(2M) and UniP-3 (solved) is DPM-Solver++(3M) with Taylor
    coefficients: both interpolate the same x0 polynomial."""
    model = GMM.model(SCHED)
    grid = flowode.sigma_grid(SCHED, 10, "logsnr")
    x = _x_start(8, 6, float(grid[0]))
    for order, other in [(2, "dpm_solver++_2m"), (3, "dpm_solver++_3m")]:
        u = flowode.integrate(model, x, grid, solver="unipc", order=order, corrector=False).x
        d = flowode.integrate(model, x, grid, solver=other).x
        assert float((u - d).abs().max()) < 1e-12


# ------------------------------------------------------------------------------------ edge cases
ALL_CONFIGS = [(n, {}) for n in NAMES] + [
    ("dpm_solver++_2m", {"lower_order_final": False}),
    ("dpm_solver++_3m", {"coefficients": "reference", "lower_order_final": False}),
    ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": False}),
    ("unipc", {"order": 3, "predictor": "dpm_solver++", "lower_order_final": False}),
]


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda c: _case_id((c[0], c[1])))
def test_no_nan_at_sigma_zero(config: tuple) -> None:
    """Every step count 1..50 on grids ending at sigma = 0 (logsnr and trailing): finite output,
    NFE as announced, and the last step returns the denoised estimate."""
    name, opts = config
    model = GAUSS.model(SCHED)
    slv = flowode.solvers.make(name, **opts)
    x_T = _x_start(2, 4, 1.0)
    for spacing, counts in (("logsnr", range(1, 51)), ("trailing", (1, 2, 3, 4, 7, 14, 15, 16))):
        for n in counts:
            grid = flowode.sigma_grid(SCHED, n, spacing)
            sol = flowode.integrate(model, x_T, grid, solver=slv)
            assert bool(torch.isfinite(sol.x).all()), f"{name} {opts}: NaN/Inf with {n} steps ({spacing})"
            assert sol.nfe == slv.nfe(grid.tolist())


def test_nfe_budget_calls() -> None:
    """The two calls of the issue, as written."""
    model = GMM.model(SCHED)
    x_T = _x_start(4, 6, SCHED.sigma_max)
    sol = flowode.sample(model, x_T, nfe=10, solver="unipc", order=3)
    assert sol.nfe <= 10 and sol.nfe == 10 and len(sol.sigmas) == 11
    sol = flowode.sample(model, x_T, nfe=10, solver="dpm_solver++_2m", spacing="logsnr")
    assert sol.nfe == 10 and bool(torch.isfinite(sol.x).all())
    for name, nfe in [("dpm_solver_2", 10), ("dpm_solver_3", 10), ("dpm_solver++_2s", 9)]:
        sol = flowode.sample(model, x_T, nfe=nfe, solver=name)
        assert sol.nfe <= nfe and sol.nfe >= nfe - 2


def test_orders_and_corrector_schedule() -> None:
    model = GMM.model(SCHED)
    x_T = _x_start(4, 6, SCHED.sigma_max)
    grid = flowode.sigma_grid(SCHED, 6, "logsnr")
    sol = flowode.integrate(model, x_T, grid, solver="unipc", order=3)
    assert sol.stats["orders"] == [1, 2, 3, 3, 2, 1]
    assert sol.stats["corrected_steps"] == [1, 2, 3, 4, 5]
    sol = flowode.integrate(model, x_T, grid, solver="unipc", order=3, lower_order_final=False,
                            disable_corrector=(0,))
    assert sol.stats["orders"] == [1, 2, 3, 3, 3, 1] and sol.stats["corrected_steps"] == [2, 3, 4, 5]
    sol = flowode.integrate(model, x_T, grid, solver="dpm_solver++_3m")
    assert sol.stats["orders"] == [1, 2, 3, 3, 2, 1]
    grid20 = flowode.sigma_grid(SCHED, 20, "logsnr", final="min")
    sol = flowode.integrate(model, x_T, grid20, solver="dpm_solver++_3m")
    assert sol.stats["orders"] == [1, 2] + [3] * 18  # diffusers: no lower-order final from 15 steps on
    sol = flowode.integrate(model, x_T, grid20, solver="unipc", order=2, save_trajectory=True)
    assert sol.trajectory is not None and sol.trajectory.shape[0] == 21 and sol.denoised.shape[0] == 20


@pytest.mark.parametrize("name", NAMES)
def test_encode(name: str) -> None:
    """Increasing grids (encode) converge to the exact Gaussian flow; a grid starting at sigma = 0
    begins with the DDIM boundary step and stays finite."""
    model = GAUSS.model(SCHED)
    x0 = GAUSS.sample(8, torch.Generator().manual_seed(2))
    x_lo = GAUSS.flow(x0, 0.0, 0.1, SCHED)
    errs = []
    for n in (16, 32):
        grid = torch.flip(_lambda_grid(n, False, 10.0, 0.1), [0])
        z = flowode.integrate(model, x_lo, grid, solver=name).x
        errs.append(float((z - GAUSS.flow(x_lo, 0.1, 10.0, SCHED)).abs().max()))
    assert errs[1] < errs[0] / (1.8 if name == "dpm_solver_1" else 3.0), errs
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.flip(_lambda_grid(16, False, 10.0, 0.02), [0])])
    z = flowode.integrate(model, x0, grid, solver=name, save_trajectory=True)
    first = flowode.integrate(model, x0, grid[:2], solver="ddim").x
    assert bool(torch.isfinite(z.x).all()) and float((z.trajectory[1] - first).abs().max()) < 1e-12
    back = flowode.integrate(model, z.x, torch.flip(grid, [0]), solver=name).x
    assert float((back - x0).abs().max()) < (0.3 if name == "dpm_solver_1" else 0.05)


def test_zero_terminal_snr_start() -> None:
    """A grid starting at sigma = inf (v-prediction, zero terminal SNR) takes a boundary step first."""
    sched = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    model = flowode.EpsilonModel(lambda x, t: 0.5 * x - 0.1, sched, prediction="v")  # any finite v-network
    grid = torch.cat([torch.tensor([math.inf], dtype=torch.float64), flowode.sigma_grid(
        sched, 9, "logsnr", sigma_max=100.0)])
    x_T = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in NAMES:
        sol = flowode.integrate(model, x_T, grid, solver=name)
        assert bool(torch.isfinite(sol.x).all()), name


def test_bad_options() -> None:
    with pytest.raises(SolverError, match="order"):
        flowode.solvers.make("unipc", order=4)
    with pytest.raises(SolverError, match="variant"):
        flowode.solvers.make("unipc", variant="bh3")
    with pytest.raises(SolverError, match="predictor"):
        flowode.solvers.make("unipc", predictor="heun")
    with pytest.raises(SolverError, match="coefficients"):
        flowode.solvers.make("dpm_solver++_3m", coefficients="exact")
    with pytest.raises(SolverError, match="r1"):
        flowode.solvers.make("dpm_solver_2", r1=0.0)
    with pytest.raises(TypeError, match="lower_order_final"):
        flowode.solvers.make("dpm_solver_2", lower_order_final=True)
