"""The accuracy benchmark's peer adapters reproduce flowode on the same grid (so the benchmark
compares methods, not harness differences), and its table picks full-range rows only."""

import os
import sys

import pytest
import torch

import flowode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
accuracy = pytest.importorskip("accuracy")


@pytest.fixture(scope="module")
def setup():
    gmm = accuracy.gmm_ring()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gmm, gmm.model(accuracy.SCHED), x


@pytest.mark.parametrize("peer,solver", [("ddim", "ddim"), ("heun", "heun")])
def test_diffusers_adapter_matches_flowode_on_trailing_grid(setup, peer, solver):
    pytest.importorskip("diffusers")
    gmm, model, x = setup
    for n in (4, 5):  # divisors of 1000: diffusers' DDIM steps to t - 1000 // n, the next grid point only then
        ours = flowode.integrate(model, x, flowode.sigma_grid(accuracy.SCHED, n, "trailing"), solver)
        ctr = accuracy.Counter(gmm)
        r = accuracy.run_diffusers(peer, "trailing", n, x, ctr)
        assert ctr.n == ours.nfe
        assert r["sigma_start"] == accuracy.SCHED.sigma_max and r["sigma_end"] == 0.0
        assert torch.allclose(r["x"], ours.x, rtol=0, atol=1e-12)


def test_diffusers_ddim_endpoint_with_fixed_stride(setup):
    pytest.importorskip("diffusers")
    gmm, _, x = setup
    r = accuracy.run_diffusers("ddim", "trailing", 7, x, accuracy.Counter(gmm))  # 142 - 1000 // 7 = 0
    assert r["sigma_end"] == pytest.approx(accuracy.SCHED.sigma_min, rel=1e-12)


@pytest.mark.parametrize("peer,solver", [("euler", "euler"), ("heun", "heun")])
def test_k_diffusion_adapter_matches_flowode(setup, peer, solver):
    ks = accuracy.import_k_sampling()
    if ks is None:
        pytest.skip("k-diffusion not importable")
    gmm, model, x = setup
    ours = flowode.integrate(model, x, flowode.sigma_grid(accuracy.SCHED, 6, "trailing"), solver)
    ctr = accuracy.Counter(gmm)
    r = accuracy.run_k(ks, peer, "trailing", 6, x, ctr)
    assert ctr.n == ours.nfe
    assert torch.allclose(r["x"], ours.x, rtol=0, atol=1e-12)


def test_table_uses_full_range_rows_only():
    smax = accuracy.SCHED.sigma_max
    rows = [
        {"mixture": "m", "library": "flowode", "method": "a", "grid": "g", "nfe_target": 5, "nfe": 5, "rmse": 0.2,
         "sigma_start": smax, "sigma_end": 0.0},
        {"mixture": "m", "library": "flowode", "method": "b", "grid": "leading", "nfe_target": 5, "nfe": 5,
         "rmse": 0.01, "sigma_start": 10.0, "sigma_end": 0.0},
        {"mixture": "m", "library": "diffusers", "method": "c", "grid": "default", "nfe_target": 5, "nfe": 5,
         "rmse": 0.4, "sigma_start": smax, "sigma_end": 0.0},
    ]
    t = accuracy.table(rows, [5])
    assert "| 0.500 |" in t and "leading" not in t
