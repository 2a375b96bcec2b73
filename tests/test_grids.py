"""Noise-level grids: spacings against diffusers' numbers, continuous spacings, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import flowode
from flowode.grids import SPACINGS, GridError, check_grid, sigma_grid, sigmas_from_timesteps

F64 = torch.float64
DDPM = flowode.DiscreteVPSchedule.linear()
CONTINUOUS = {
    "vp_linear": flowode.LinearVPSchedule(),
    "vp_cosine": flowode.CosineVPSchedule(),
    "ve": flowode.VESchedule(),
    "edm": flowode.EDMSchedule(),
}


def _timesteps(sched, sigmas):
    """The integer timesteps of a discrete grid (all but a final 0)."""
    s = sigmas[sigmas > 0]
    return np.asarray(sched.t(s), dtype=np.float64)


@pytest.mark.parametrize("steps", [10, 50, 7])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_discrete_spacings_match_diffusers(spacing, steps, offset):
    """The timesteps diffusers' DDIMScheduler.set_timesteps produces (N = 1000), exactly."""
    pytest.importorskip("diffusers")
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing=spacing,
                        steps_offset=offset)
    ref.set_timesteps(steps)
    want = ref.timesteps.numpy().astype(np.float64)
    grid = sigma_grid(DDPM, steps, spacing, offset=offset)
    assert grid.dtype == F64 and grid.shape == (steps + 1,)
    assert float(grid[-1]) == 0.0
    np.testing.assert_array_equal(_timesteps(DDPM, grid), want)
    # and the sigmas are exactly those of the integer timesteps
    torch.testing.assert_close(grid[:-1], DDPM.sigma(torch.as_tensor(want)), rtol=0, atol=0)
    torch.testing.assert_close(grid, sigmas_from_timesteps(DDPM, want), rtol=0, atol=0)


def test_quadratic_is_ddim_paper():
    """DDIM's code (Song et al. 2021): ``(linspace(0, sqrt(0.8 N), S) ** 2).astype(int)``."""
    for steps in (10, 20, 29):
        want = [int(v) for v in np.linspace(0, math.sqrt(1000 * 0.8), steps) ** 2][::-1]
        grid = sigma_grid(DDPM, steps, "quadratic")
        np.testing.assert_array_equal(_timesteps(DDPM, grid), np.asarray(want, dtype=np.float64))


def test_default_spacing_and_trailing_starts_at_the_top():
    grid = sigma_grid(DDPM, 10)
    assert DDPM.default_spacing == "trailing"
    assert float(grid[0]) == DDPM.sigma_max
    ztsnr = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    assert math.isinf(float(sigma_grid(ztsnr, 10)[0]))


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_uniform_t(name):
    sched = CONTINUOUS[name]
    grid = sigma_grid(sched, 12, "uniform_t")
    assert grid.shape == (13,) and float(grid[-1]) == 0.0
    assert float(grid[0]) == sched.sigma_max and float(grid[-2]) == sched.sigma_min
    t = torch.as_tensor(sched.t(grid[:-1]))
    torch.testing.assert_close(torch.diff(t), torch.full((11,), float(t[1] - t[0]), dtype=F64),
                               rtol=1e-9, atol=1e-12)


def test_uniform_t_discrete_is_fractional():
    grid = sigma_grid(DDPM, 7, "uniform_t")
    t = np.asarray(DDPM.t(grid[:-1]))
    np.testing.assert_allclose(t, np.linspace(999, 0, 7), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CONTINUOUS) + ["discrete"])
def test_logsnr(name):
    sched = CONTINUOUS.get(name, DDPM)
    grid = sigma_grid(sched, 9, "logsnr")
    lam = -torch.log(grid[:-1])
    torch.testing.assert_close(lam, torch.linspace(-math.log(sched.sigma_max), -math.log(sched.sigma_min), 9,
                                                   dtype=F64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", sorted(CONTINUOUS))
def test_quadratic_continuous(name):
    sched = CONTINUOUS[name]
    grid = sigma_grid(sched, 6, "quadratic")
    t = np.asarray(sched.t(grid[:-1]))
    u = np.linspace(1, 0, 6) ** 2
    t_lo, t_hi = sched.t(sched.sigma_min), sched.t(sched.sigma_max)
    np.testing.assert_allclose(t, t_lo + (t_hi - t_lo) * u, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras(rho):
    """Karras et al. 2022, eq. 5."""
    sched = flowode.EDMSchedule()
    n = 18
    grid = sigma_grid(sched, n, "karras", rho=rho)
    i = torch.arange(n, dtype=F64)
    smax, smin = 80.0, 0.002
    want = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(grid[:-1], want, rtol=1e-13, atol=0)
    assert float(grid[-1]) == 0.0
    # against diffusers' EulerDiscreteScheduler karras sigmas would need its float32 schedule; the
    # formula above is the paper's.
    grid2 = sigma_grid(sched, n, "karras", sigma_min=0.01, sigma_max=10.0)
    assert float(grid2[0]) == 10.0 and float(grid2[-2]) == 0.01


@pytest.mark.parametrize("spacing", ["uniform_t", "logsnr", "karras", "quadratic"])
def test_final_min_continuous(spacing):
    sched = CONTINUOUS["vp_linear"]
    grid = sigma_grid(sched, 8, spacing, final="min")
    assert grid.shape == (9,)
    assert float(grid[0]) == sched.sigma_max and float(grid[-1]) == sched.sigma_min
    assert bool((grid > 0).all())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_final_min_discrete(spacing):
    """final='min' (diffusers' set_alpha_to_one=False) ends at sigma(t=0); never repeats that level."""
    grid = sigma_grid(DDPM, 10, spacing, final="min")
    assert float(grid[-1]) == DDPM.sigma_min
    assert bool((torch.diff(grid) < 0).all())
    zero = sigma_grid(DDPM, 10, spacing, final="zero")
    if float(zero[-2]) == DDPM.sigma_min:  # the grid already reaches t = 0 (leading, linspace)
        torch.testing.assert_close(grid, zero[:-1], rtol=0, atol=0)
    else:
        torch.testing.assert_close(grid[:-1], zero[:-1], rtol=0, atol=0)


def test_one_step_grids():
    assert sigma_grid(DDPM, 1, "trailing").tolist() == [DDPM.sigma_max, 0.0]
    g = sigma_grid(CONTINUOUS["edm"], 1, "karras")
    assert g.tolist() == [80.0, 0.0]
    g = sigma_grid(CONTINUOUS["edm"], 1, "karras", final="min")
    assert g.tolist() == [80.0, 0.002]


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("sigmas,match", [
    ([10.0, 5.0, 7.0, 0.0], r"`sigmas` must be strictly monotonic.*`sigmas\[1\]`"),
    ([10.0, 5.0, 5.0, 0.0], r"strictly monotonic"),
    ([10.0, float("nan"), 0.0], r"`sigmas\[1\]` is NaN"),
    ([10.0], r"`sigmas` must be a 1-D sequence of at least 2"),
    ([], r"at least 2"),
    ([[10.0, 0.0]], r"1-D"),
    ([10.0, 0.0, -1.0], r"`sigmas\[2\]` = -1.0 is negative"),
    ([10.0, 0.0, 0.0], r"strictly monotonic"),
    ([5.0, 0.0, 1.0], r"strictly monotonic"),
    ([1.0, 0.0, 2.0, 3.0], r"strictly monotonic"),
    ([float("inf"), float("inf"), 0.0], r"strictly monotonic"),
    ([float("inf"), 10.0, float("inf")], r"strictly monotonic"),
])
def test_check_grid_errors(sigmas, match):
    with pytest.raises(GridError, match=match):
        check_grid(sigmas)


def test_zero_in_the_middle():
    """A strictly monotonic non-negative grid can hold 0 only at its clean end, so 0 in the middle is
    reported as the break in monotonicity (or as the negative level after it), naming the index."""
    with pytest.raises(GridError, match=r"`sigmas\[1\]` = 0 and `sigmas\[2\]` = 1 break it"):
        check_grid([5.0, 0.0, 1.0, 0.5])
    with pytest.raises(GridError, match=r"`sigmas\[2\]` = -1.0 is negative"):
        check_grid([3.0, 0.0, -1.0])
    with pytest.raises(GridError, match=r"`sigmas\[0\]` = 0 and `sigmas\[1\]` = 0"):
        check_grid([0.0, 0.0, 1.0])
    check_grid([0.0, 0.5, 1.0])  # encode grids start at 0
    check_grid([1.0, 0.5, 0.0])  # decode grids end at 0


def test_out_of_range_names_the_argument():
    with pytest.raises(GridError, match=r"`sigmas\[0\]` = 500 is outside the schedule's noise range"):
        check_grid([500.0, 1.0, 0.0], DDPM)
    with pytest.raises(GridError, match=r"`sigmas\[1\]` = 0.001 is outside"):
        check_grid([1.0, 0.001], DDPM)
    with pytest.raises(GridError, match=r"`my_grid\[1\]`"):
        check_grid([1.0, float("nan")], name="my_grid")
    # integrate reports the same through its `sigmas` argument
    model = flowode.analytic.gmm_ring().model(DDPM)
    with pytest.raises(GridError, match=r"`sigmas\[0\]`"):
        flowode.integrate(model, torch.zeros(2, 2, dtype=F64), [500.0, 1.0, 0.0])
    with pytest.raises(GridError, match="strictly monotonic"):
        flowode.integrate(model, torch.zeros(2, 2, dtype=F64), [10.0, 20.0, 0.0])


def test_inf_only_with_zero_terminal_snr():
    ztsnr = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    check_grid([math.inf, 10.0, 0.0], ztsnr)
    with pytest.raises(GridError, match="outside"):
        check_grid([math.inf, 10.0, 0.0], DDPM)


def test_sigma_grid_argument_errors():
    with pytest.raises(GridError, match="`steps` must be a positive integer"):
        sigma_grid(DDPM, 0)
    with pytest.raises(GridError, match="`steps`"):
        sigma_grid(DDPM, 2.5)  # type: ignore[arg-type]
    with pytest.raises(GridError, match="`steps`"):
        sigma_grid(DDPM, True)  # type: ignore[arg-type]
    with pytest.raises(GridError, match="`steps`=2000 exceeds"):
        sigma_grid(DDPM, 2000, "trailing")
    with pytest.raises(GridError, match="unknown `spacing` 'karas'"):
        sigma_grid(DDPM, 10, "karas")
    with pytest.raises(GridError, match="`final`"):
        sigma_grid(DDPM, 10, final="end")
    with pytest.raises(GridError, match="needs a DiscreteVPSchedule"):
        sigma_grid(CONTINUOUS["edm"], 10, "trailing")
    with pytest.raises(GridError, match="repeats a timestep"):
        sigma_grid(DDPM, 50, "quadratic")  # the paper's formula gives t = 0 twice at S >= 30
    with pytest.raises(GridError, match="sigma_min < sigma_max"):
        sigma_grid(CONTINUOUS["edm"], 10, "karras", sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(GridError, match="finite sigma_max"):
        sigma_grid(flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True), 10, "karras")


def test_every_spacing_gives_a_valid_grid():
    for sched in [DDPM, *CONTINUOUS.values()]:
        for spacing in SPACINGS:
            if spacing in ("leading", "trailing", "linspace") and not sched.discrete:
                continue
            for final in ("zero", "min"):
                g = sigma_grid(sched, 5, spacing, final=final)
                check_grid(g, sched)
                assert bool((torch.diff(g) < 0).all())


def test_range_overrides_are_not_silently_ignored():
    """sigma_min / sigma_max cannot move integer-timestep spacings; saying so beats ignoring them."""
    with pytest.raises(GridError, match="`sigma_min` / `sigma_max` set the range of the continuous spacings"):
        sigma_grid(DDPM, 10, "trailing", sigma_max=50.0)
    g = sigma_grid(DDPM, 10, "uniform_t", sigma_max=50.0, sigma_min=0.1)
    assert float(g[0]) == 50.0 and float(g[-2]) == 0.1
