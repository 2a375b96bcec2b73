"""diffusers as a test-only oracle for the exponential integrators, in float64 on an exact model.

Each scheduler is built from the flowode schedule's betas, then its ``alphas_cumprod`` (and the
``alpha_t / sigma_t / lambda_t`` tables) are replaced by float64 tensors and, after
``set_timesteps``, its ``sigmas`` by the float64 values at its own timesteps (``set_timesteps``
casts them to float32). The diffusers loop is fed the exact Gaussian-mixture eps at each of its
timesteps; flowode runs on ``sigmas_from_timesteps(schedule, scheduler.timesteps)``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import flowode
from flowode.analytic import gmm_random

diffusers = pytest.importorskip("diffusers")

torch.set_num_threads(1)

SCHED = flowode.DiscreteVPSchedule.linear(1000, 1e-4, 0.02)
GMM = gmm_random(dim=6, k=5, std=0.4, seed=1)
TOL = 1e-8


class _Float64Sample(torch.Tensor):
    """A tensor whose ``.to(torch.float32)`` is a no-op: ``DPMSolverMultistepScheduler.step`` casts the
    sample to float32 before its update; this keeps the oracle in float64 without editing diffusers."""

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if (args and args[0] is torch.float32) or kwargs.get("dtype") is torch.float32:
            return self
        return super().to(*args, **kwargs)


def _make(cls: type, **config: Any) -> Any:
    betas = SCHED.betas.numpy()
    sch = cls(num_train_timesteps=len(betas), trained_betas=betas, **config)
    abar = SCHED.alphas_cumprod_knots.clone()
    sch.alphas_cumprod = abar
    sch.alpha_t = torch.sqrt(abar)
    sch.sigma_t = torch.sqrt(1 - abar)
    sch.lambda_t = torch.log(sch.alpha_t) - torch.log(sch.sigma_t)
    return sch


def _float64_sigmas(sch: Any, final: str) -> torch.Tensor:
    ts = sch.timesteps.to(torch.float64)
    sig = torch.as_tensor(SCHED.sigma(ts), dtype=torch.float64)
    last = 0.0 if final == "zero" else SCHED.sigma_min
    return torch.cat([sig, torch.tensor([last], dtype=torch.float64)])


def _eps(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return GMM.eps(x, sigma, float(SCHED.alpha_from_sigma(sigma)))


def _run_diffusers(sch: Any, x: torch.Tensor, sigmas: torch.Tensor, wrap: bool = False,
                   before_step: Any = None) -> torch.Tensor:
    sch.sigmas = sigmas
    x = x.clone()
    for i, t in enumerate(sch.timesteps):
        eps = _eps(x.as_subclass(torch.Tensor), float(sigmas[i]))
        if before_step is not None:
            before_step(sch, i)
        x = sch.step(eps, t, x.as_subclass(_Float64Sample) if wrap else x).prev_sample
    return x.as_subclass(torch.Tensor)


def _x_T(sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(16, 6, generator=g, dtype=torch.float64) * (sigma / math.sqrt(1 + sigma**2))


CASES = [(n, sp, fin) for n in (5, 10, 20) for sp in ("linspace", "trailing") for fin in ("zero", "sigma_min")]


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_dpm_solver_pp_multistep_vs_diffusers(case: tuple, order: int) -> None:
    n, spacing, final = case
    sch = _make(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver++", solver_order=order,
                solver_type="midpoint", lower_order_final=True, final_sigmas_type=final, timestep_spacing=spacing)
    sch.set_timesteps(n)
    sigmas = _float64_sigmas(sch, final)
    x_T = _x_T(float(sigmas[0]))
    ref = _run_diffusers(sch, x_T, sigmas, wrap=True)
    grid = flowode.sigmas_from_timesteps(SCHED, sch.timesteps.numpy(), "zero" if final == "zero" else "min")
    assert torch.equal(grid, sigmas)
    opts = {} if order == 2 else {"coefficients": "reference"}
    ours = flowode.integrate(GMM.model(SCHED), x_T, grid, solver=f"dpm_solver++_{order}m", **opts)
    diff = float((ours.x - ref).abs().max())
    assert diff < TOL, f"max |flowode - diffusers| = {diff:.3e}"


UNIPC_CASES = [(5, "linspace", "zero"), (7, "trailing", "sigma_min"), (10, "trailing", "zero"),
               (20, "linspace", "zero")]


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("case", UNIPC_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_unipc_vs_diffusers(case: tuple, order: int, variant: str) -> None:
    n, spacing, final = case
    sch = _make(diffusers.UniPCMultistepScheduler, solver_order=order, solver_type=variant, predict_x0=True,
                lower_order_final=True, final_sigmas_type=final, timestep_spacing=spacing)
    sch.set_timesteps(n)
    sigmas = _float64_sigmas(sch, final)
    x_T = _x_T(float(sigmas[0]))
    ref = _run_diffusers(sch, x_T, sigmas)
    grid = flowode.sigmas_from_timesteps(SCHED, sch.timesteps.numpy(), "zero" if final == "zero" else "min")
    ours = flowode.integrate(GMM.model(SCHED), x_T, grid, solver="unipc", order=order, variant=variant,
                             save_trajectory=True)
    # diffusers' `last_sample` is the corrected state at the last noisy level
    diff_last = float((ours.trajectory[-2] - sch.last_sample).abs().max())
    assert diff_last < TOL, f"max |flowode - diffusers| before the last step = {diff_last:.3e}"
    assert bool(torch.isfinite(ours.x).all())
    if variant == "bh1" and final == "zero":
        # diffusers 0.42 returns NaN here: its last (first-order) step multiplies B(h) = -h = -inf by
        # the empty predictor sum 0. flowode's last step returns the denoised estimate.
        assert torch.equal(ours.x, ours.denoised[-1])
        return
    diff = float((ours.x - ref).abs().max())
    assert diff < TOL, f"max |flowode - diffusers| = {diff:.3e}"


def _interleave(grid: torch.Tensor, r: tuple[float, ...]) -> torch.Tensor:
    """Insert the intermediate levels ``sigma_s exp(-r_k h)`` of each step (not of a step to 0)."""
    out = []
    for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
        out.append(s)
        if t > 0:
            h = math.log(s / t)
            out.extend(s * math.exp(-rk * h) for rk in r)
    out.append(float(grid[-1]))
    return torch.tensor(out, dtype=torch.float64)


# diffusers refuses final_sigmas_type='zero' with algorithm_type='dpmsolver' (noise prediction), so
# DPM-Solver-2/3 are compared on grids ending at sigma_min only (test_diffusers_refuses_... below)
@pytest.mark.parametrize("name,final", [("dpm_solver_2", "min"), ("dpm_solver_3", "min"),
                                        ("dpm_solver++_2s", "min"), ("dpm_solver++_2s", "zero")])
def test_singlestep_vs_diffusers(name: str, final: str) -> None:
    """DPM-Solver-2/3 and DPM-Solver++(2S) vs ``DPMSolverSinglestepScheduler`` run on the interleaved
    grid (each flowode step = 2 or 3 diffusers sub-steps of orders 1, 2(, 3)). DPM-Solver-3
    (Algorithm 2) is diffusers' order-2 sub-step with ``solver_type="heun"`` followed by its order-3
    sub-step with ``solver_type="midpoint"``."""
    third = name == "dpm_solver_3"
    r = (1 / 3, 2 / 3) if third else (0.5,)
    k = len(r) + 1
    grid = flowode.sigma_grid(SCHED, 6, "logsnr", final=final)
    fine = _interleave(grid, r)
    orders = []
    for t in grid[1:].tolist():
        orders += [1] if t == 0 else list(range(1, k + 1))
    sch = _make(diffusers.DPMSolverSinglestepScheduler, solver_order=k,
                algorithm_type="dpmsolver++" if "++" in name else "dpmsolver", solver_type="midpoint",
                lower_order_final=True, final_sigmas_type="zero" if final == "zero" else "sigma_min")
    sch.set_timesteps(len(fine) - 1)
    sch.timesteps = torch.arange(len(fine) - 1, 0, -1, dtype=torch.int64) * 10
    sch.num_inference_steps = len(fine) - 1
    sch.order_list = orders
    sch.model_outputs = [None] * k
    x_T = _x_T(float(grid[0]))

    def switch(s: Any, i: int) -> None:
        if third:
            s.register_to_config(solver_type="heun" if orders[i] == 2 else "midpoint")

    ref = _run_diffusers(sch, x_T, fine, before_step=switch)
    ours = flowode.integrate(GMM.model(SCHED), x_T, grid, solver=name)
    assert ours.nfe == len(fine) - 1
    diff = float((ours.x - ref).abs().max())
    assert diff < TOL, f"max |flowode - diffusers| = {diff:.3e}"


def test_diffusers_refuses_zero_final_sigma_for_noise_prediction() -> None:
    """Why DPM-Solver-2/3 are compared on ``final="min"`` grids only: diffusers' singlestep scheduler
    refuses a final sigma of 0 with noise prediction. (flowode takes that last step with the DDIM
    boundary step; `tests/test_exponential.py` checks it stays finite for every step count.)"""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="final_sigmas_type"):
            diffusers.DPMSolverSinglestepScheduler(algorithm_type="dpmsolver", final_sigmas_type="zero")
