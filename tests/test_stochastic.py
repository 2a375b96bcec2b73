"""Stochastic samplers and keyed randomness (DESIGN.md 5.5, docs/stochastic.md).

* every draw keyed by (seed, sample index, step): the first 7 samples are bitwise the same at batch
  7 and 64; per-sample generators as diffusers takes them; clear errors for bad ``generator``;
* Brownian paths: a coarse increment is the weighted sum of the fine ones; a solver at 20 and at
  1000 steps follows one path, and its pathwise error falls at the claimed strong order;
* weak orders from the exact law of the output on Gaussian data (:mod:`flowode.sde_law`);
* k-diffusion's samplers as oracles: the same Brownian noise in, the same sample out.
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import flowode
from flowode.bench.peers import k_diffusion_sampling
from flowode.noise import GeneratorNoise, KeyedNoise, keyed_normal
from flowode.sde_law import gaussian_law
from flowode.solvers import SOLVERS, SolverError

#: options that make each stochastic solver a discretisation of one SDE for the order tests
ORDER_OPTIONS = {
    "ddim": {"eta": 0.5},
    "edm_stochastic": {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": 1e9, "s_noise": 1.0},
}
#: extra variants checked besides each registered stochastic solver's defaults
VARIANTS = [("ddpm", {"variance": "large"}), ("dpm_solver++_2m_sde", {"solver_type": "heun"}),
            ("ddim", {"eta": 1.0})]


def _stochastic() -> list[tuple[str, dict]]:
    names = sorted(n for n, c in SOLVERS.items() if c.stochastic is True or n == "ddim")
    cases = [(n, ORDER_OPTIONS.get(n, {})) for n in names] + VARIANTS
    return cases


CASES = _stochastic()
IDS = [n + "".join(f"[{k}={v}]" for k, v in o.items()) for n, o in CASES]

SCHED = flowode.LinearVPSchedule()
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
STD = torch.tensor([0.2, 0.7, 1.5, 3.0], dtype=torch.float64)
GAUSS = flowode.Gaussian(MU, STD)
S0, S1 = 10.0, 0.1  # the order tests integrate from sigma 10 to 0.1 (no boundary step)


def geometric(n: int, s0: float = S0, s1: float = S1) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(s0), math.log(s1), n + 1, dtype=torch.float64))


def slope(ns, errs) -> float:
    return float(-np.polyfit(np.log(ns), np.log(errs), 1)[0])


def start(n: int, sched=SCHED, s0: float = S0) -> torch.Tensor:
    a0 = float(sched.alpha_from_sigma(s0))
    return keyed_normal((n, 4), 0, dtype=torch.float64) * (a0 * (STD**2 + s0**2).sqrt()) + a0 * MU


# ------------------------------------------------------------------------------------------ registry
def test_at_least_five_new_stochastic_samplers_with_orders_and_sources():
    new = {n for n, c in SOLVERS.items() if c.stochastic is True and n != "ddpm"}
    assert {"euler_maruyama", "euler_ancestral", "edm_stochastic", "dpm_solver++_2m_sde", "dpm_solver++_sde"} <= new
    for n in new | {"ddpm", "ddim"}:
        cls = SOLVERS[n]
        assert cls.source and cls.weak_order is not None, n
        assert n == "ddim" or not cls.encodes, n
    assert SOLVERS["edm_stochastic"].strong_order is None  # no fixed Brownian path (docs/stochastic.md)


# ------------------------------------------------------------------------------------------ keyed noise
def test_keyed_normal_is_standard_and_batch_invariant():
    z = keyed_normal((100_000, 2), 3, dtype=torch.float64)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z[:, 0] * z[:, 1]).mean())) < 0.01  # elements independent
    assert torch.equal(keyed_normal((7, 5), 3), keyed_normal((64, 5), 3)[:7])
    assert torch.equal(keyed_normal((2, 5), 3, indices=[5, 6]), keyed_normal((8, 5), 3)[5:7])  # a shard
    assert not torch.equal(keyed_normal((7, 5), 3), keyed_normal((7, 5), 4))


def test_brownian_increments_are_consistent_across_step_counts():
    noise = KeyedNoise(0)
    x = torch.zeros(5, 3, dtype=torch.float64)
    fine = geometric(100, 100.0, 0.01).tolist()
    incs = [noise.increment(x, a, b, i) for i, (a, b) in enumerate(zip(fine[:-1], fine[1:]))]
    dts = [math.log(a / b) for a, b in zip(fine[:-1], fine[1:])]
    for lo in (0, 10, 50):  # coarse steps of 10 fine ones, from a fresh source
        coarse = KeyedNoise(0).increment(x, fine[lo], fine[lo + 10], 0)
        part = zip(incs[lo:lo + 10], dts[lo:lo + 10])
        summed = sum(z * math.sqrt(d) for z, d in part) / math.sqrt(sum(dts[lo:lo + 10]))
        assert float((coarse - summed).abs().max()) < 1e-12
    big = KeyedNoise(1).increment(torch.zeros(50_000, 1, dtype=torch.float64), 2.0, 1.9, 0)
    nxt = KeyedNoise(1).increment(torch.zeros(50_000, 1, dtype=torch.float64), 1.9, 1.0, 1)
    assert abs(float(big.std()) - 1) < 0.02 and abs(float((big * nxt).mean())) < 0.02  # N(0,1), independent


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_first_seven_samples_bitwise_the_same_at_batch_7_and_64(name, opts):
    sched = flowode.DiscreteVPSchedule.linear()
    model = flowode.analytic.gmm_ring().model(sched)
    x64 = model.prior_sample((64, 2), seed=11, dtype=torch.float64)
    x7 = model.prior_sample((7, 2), seed=11, dtype=torch.float64)
    assert torch.equal(x7, x64[:7])
    a = flowode.sample(model, x7, steps=10, solver=name, seed=5, **opts).x
    b = flowode.sample(model, x64, steps=10, solver=name, seed=5, **opts).x
    assert torch.equal(a, b[:7])
    c = flowode.sample(model, x7, steps=10, solver=name, seed=6, **opts).x
    assert not torch.equal(a, c)  # the seed matters


def test_ddpm_with_a_generator_is_not_batch_invariant_but_a_seed_is():
    """The bug of issue 10: one generator's draws depend on the batch size."""
    model = flowode.analytic.gmm_ring().model(flowode.DiscreteVPSchedule.linear())
    x = keyed_normal((64, 2), 0, dtype=torch.float64)
    a = flowode.sample(model, x[:7], steps=10, solver="ddpm", generator=torch.Generator().manual_seed(0)).x
    b = flowode.sample(model, x, steps=10, solver="ddpm", generator=torch.Generator().manual_seed(0)).x
    assert not torch.equal(a, b[:7])


def test_a_list_of_per_sample_generators_as_diffusers():
    model = flowode.analytic.gmm_ring().model(flowode.DiscreteVPSchedule.linear())
    x = keyed_normal((16, 2), 0, dtype=torch.float64)
    gens = lambda n: [torch.Generator().manual_seed(100 + i) for i in range(n)]  # noqa: E731
    a = flowode.sample(model, x[:7], steps=10, solver="ddpm", generator=gens(7)).x
    b = flowode.sample(model, x, steps=10, solver="ddpm", generator=gens(16)).x
    assert torch.equal(a, b[:7])
    with pytest.raises(ValueError, match="list of 3 generators for a batch of 16"):
        flowode.sample(model, x, steps=10, solver="ddpm", generator=gens(3))


@pytest.mark.parametrize("bad,err,text", [
    (0, TypeError, r"`generator` must be a torch.Generator .* got int 0.*seed=0"),
    ([torch.Generator(), 3], TypeError, r"one torch.Generator per sample"),
    ("x", TypeError, r"`generator` must be a torch.Generator"),
])
def test_bad_generators_are_refused_clearly(bad, err, text):
    model = GAUSS.model(SCHED)
    with pytest.raises(err, match=text):
        flowode.integrate(model, start(2), geometric(3), "ddpm", generator=bad)


def test_seed_errors():
    model = GAUSS.model(SCHED)
    with pytest.raises(ValueError, match="at most one of `seed`, `generator`"):
        flowode.integrate(model, start(2), geometric(3), "ddpm", seed=0, generator=torch.Generator())
    for bad in (-1, 1.5, True):
        with pytest.raises(TypeError, match="`seed` must be a non-negative int"):
            flowode.integrate(model, start(2), geometric(3), "ddpm", seed=bad)
    with pytest.raises(TypeError, match="`noise` must be a flowode.noise.NoiseSource"):
        flowode.integrate(model, start(2), geometric(3), "ddpm", noise=3)


def test_shard_with_keyed_noise_indices_draws_what_one_process_would():
    model = flowode.analytic.gmm_ring().model(flowode.DiscreteVPSchedule.linear())
    x = keyed_normal((12, 2), 0, dtype=torch.float64)
    whole = flowode.sample(model, x, steps=8, solver="dpm_solver++_2m_sde", seed=3).x
    part = flowode.sample(model, x[4:9], steps=8, solver="dpm_solver++_2m_sde",
                          noise=KeyedNoise(3, indices=range(4, 9))).x
    assert torch.equal(part, whole[4:9])


# ------------------------------------------------------------------------------------------ identities
def test_identities_between_samplers():
    model = GAUSS.model(SCHED)
    x, g = start(6), geometric(12)
    run = lambda name, **o: flowode.integrate(model, x, g, name, seed=2, **o).x  # noqa: E731
    assert torch.equal(run("euler_ancestral"), run("ddim", eta=1.0))  # one copy of the step
    assert torch.allclose(run("ddim", eta=1.0), run("ddpm"), rtol=0, atol=1e-12)  # posterior = eta 1
    # one step of the 2M SDE (no history) is DDPM's posterior step, the exact linear part
    one = geometric(1)
    a = flowode.integrate(model, x, one, "dpm_solver++_2m_sde", seed=2).x
    b = flowode.integrate(model, x, one, "ddpm", seed=2).x
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    # EDM without churn is Heun in (xbar, sigma)
    c = flowode.integrate(model, x, g, "edm_stochastic", s_churn=0.0).x
    d = flowode.integrate(model, x, g, "heun", coordinates="sigma").x
    assert torch.allclose(c, d, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ orders
STRONG = [(n, o) for n, o in CASES if SOLVERS[n].strong_order is not None]


@pytest.mark.parametrize("name,opts", STRONG, ids=[n + str(o) for n, o in STRONG])
def test_same_brownian_path_at_20_and_1000_steps_strong_order(name, opts):
    """Pathwise error against the same solver at 1024 steps on the same path falls at the strong order
    (RMS over 32 samples; nested grids of 32, 64, 128 steps)."""
    model = GAUSS.model(SCHED)
    x = start(32)
    ref = flowode.integrate(model, x, geometric(1024), name, seed=1, **opts).x
    ns = [32, 64, 128]
    errs = [float((flowode.integrate(model, x, geometric(n), name, seed=1, **opts).x - ref).pow(2).sum(1).mean().sqrt())
            for n in ns]
    p = slope(ns, errs)
    assert abs(p - SOLVERS[name].strong_order) < 0.2, (errs, p)
    # another path is far away: the error above is pathwise, not distributional
    other = flowode.integrate(model, x, geometric(128), name, seed=2, **opts).x
    assert float((other - ref).pow(2).sum(1).mean().sqrt()) > 5 * errs[-1]


@pytest.mark.parametrize("name,opts", CASES, ids=IDS)
def test_weak_order_on_gaussian_data(name, opts):
    """Error of the output's exact mean and variance against the true marginal at sigma 0.1."""
    model = GAUSS.model(SCHED)
    a0, a1 = float(SCHED.alpha_from_sigma(S0)), float(SCHED.alpha_from_sigma(S1))
    mean_t, var_t = a1 * MU, a1**2 * (STD**2 + S1**2)
    ns = [32, 64, 128, 256]
    errs = []
    for n in ns:
        m, v = gaussian_law(model, a0 * MU, a0**2 * (STD**2 + S0**2), geometric(n), name, **opts)
        errs.append(float((m - mean_t).abs().max() + (v - var_t).abs().max()))
    p = slope(ns, errs)
    assert abs(p - SOLVERS[name].weak_order) < 0.2, (errs, p)


def test_gaussian_law_agrees_with_monte_carlo():
    model = flowode.Gaussian(MU[:2], STD[[0, 3]]).model(SCHED)
    a0 = float(SCHED.alpha_from_sigma(S0))
    var0 = a0**2 * (STD[[0, 3]] ** 2 + S0**2)
    for name in ("dpm_solver++_sde", "edm_stochastic"):
        m, v = gaussian_law(model, a0 * MU[:2], var0, geometric(6), name)
        x = keyed_normal((40_000, 2), 1, dtype=torch.float64) * var0.sqrt() + a0 * MU[:2]
        out = flowode.integrate(model, x, geometric(6), name, seed=5).x
        assert torch.allclose(out.mean(0), m, atol=0.05)
        assert torch.allclose(out.var(0), v, rtol=0.03)


@pytest.mark.parametrize("sched", [flowode.VESchedule(0.01, 50.0), flowode.EDMSchedule()], ids=["ve", "edm"])
def test_every_stochastic_solver_samples_the_right_law_on_ve_and_edm(sched):
    model = GAUSS.model(sched)
    s0 = 20.0
    for name, opts in CASES:
        m, v = gaussian_law(model, MU, STD**2 + s0**2, geometric(128, s0, 0.05), name, **opts)
        assert float((m - MU).abs().max()) < 0.05 and float((v - STD**2 - 0.05**2).abs().max() / 9) < 0.05, name


# ------------------------------------------------------------------------------------------ oracles
KS = k_diffusion_sampling()
needs_k = pytest.mark.skipif(KS is None, reason="k-diffusion's sampling module is not installed")


def _denoiser(model):
    def den(xbar, s):
        s = float(s[0])
        return model.x0(xbar * float(SCHED.alpha_from_sigma(s)), s)
    return den


@needs_k
@pytest.mark.parametrize("name,kname,opts", [
    ("euler_ancestral", "euler_ancestral", {}),
    ("euler_ancestral", "euler_ancestral", {"eta": 0.5, "s_noise": 0.9}),
    ("dpm_solver++_2m_sde", "dpmpp_2m_sde", {}),
    ("dpm_solver++_2m_sde", "dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.7, "s_noise": 1.1}),
    ("dpm_solver++_sde", "dpmpp_sde", {}),
    ("dpm_solver++_sde", "dpmpp_sde", {"eta": 0.5, "r": 0.3}),
])
@pytest.mark.parametrize("to_zero", [False, True])
def test_k_diffusion_same_noise_same_sample(name, kname, opts, to_zero):
    model = GAUSS.model(SCHED)
    g = geometric(12, 20.0, 0.05)
    if to_zero:
        g = torch.cat([g, torch.zeros(1, dtype=torch.float64)])
    x = start(6, s0=20.0)
    noise = KeyedNoise(3)
    ref = getattr(KS, "sample_" + kname)(_denoiser(model), x / float(SCHED.alpha_from_sigma(20.0)), g, disable=True,
                                         noise_sampler=lambda s, t: noise.increment(x, float(s), float(t), 0), **opts)
    ref = ref * float(SCHED.alpha_from_sigma(float(g[-1])))
    sol = flowode.integrate(model, x, g, name, seed=3, **opts)
    assert float((sol.x - ref).abs().max()) < 1e-9
    assert sol.nfe == SOLVERS[name](**opts).nfe(g.tolist())


@needs_k
@pytest.mark.parametrize("to_zero", [False, True])
def test_k_diffusion_edm_sampler_same_noise_same_sample(to_zero):
    """Karras et al. Alg. 2 as k-diffusion's sample_heun has it; its torch.randn_like fed our keyed draws."""
    model = GAUSS.model(SCHED)
    g = geometric(10, 20.0, 0.05)
    if to_zero:
        g = torch.cat([g, torch.zeros(1, dtype=torch.float64)])
    x = start(6, s0=20.0)
    opts = {"s_churn": 5.0, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.003}
    noise, calls = KeyedNoise(4), [0]

    def randn_like(t, **kw):
        calls[0] += 1
        return noise.normal(t, calls[0] - 1, 0)

    with mock.patch.object(KS.torch, "randn_like", randn_like):
        ref = KS.sample_heun(_denoiser(model), x / float(SCHED.alpha_from_sigma(20.0)), g, disable=True, **opts)
    ref = ref * float(SCHED.alpha_from_sigma(float(g[-1])))
    sol = flowode.integrate(model, x, g, "edm_stochastic", seed=4, **opts)
    assert float((sol.x - ref).abs().max()) < 1e-9
    assert any(v > 0 for v in sol.stats["gammas"])


# ------------------------------------------------------------------------------------------ options, misc
@pytest.mark.parametrize("name,opts,text", [
    ("edm_stochastic", {"s_churn": -1.0}, "`s_churn`"),
    ("edm_stochastic", {"s_tmin": 2.0, "s_tmax": 1.0}, "`s_tmax`"),
    ("dpm_solver++_sde", {"r": 1.5}, "`r`"),
    ("dpm_solver++_2m_sde", {"solver_type": "rk"}, "`solver_type`"),
    ("euler_ancestral", {"s_noise": float("nan")}, "`s_noise`"),
])
def test_bad_options(name, opts, text):
    with pytest.raises(SolverError, match=text):
        flowode.solvers.make(name, **opts)


@pytest.mark.parametrize("name", [n for n, _ in CASES if n != "ddim"])
def test_stochastic_solvers_do_not_encode(name):
    with pytest.raises(SolverError, match="cannot encode|only samples"):
        flowode.encode(GAUSS.model(SCHED), start(2), steps=4, solver=name)


def test_generator_noise_replays_and_nan_check_names_the_step():
    """The driver's replay of a failed check restores the generator (and keyed noise needs nothing)."""
    calls = {"n": 0}

    def net(x, t):
        calls["n"] += 1
        return torch.full_like(x, float("nan")) if calls["n"] == 5 else torch.zeros_like(x)

    model = flowode.EpsilonModel(net, SCHED)
    with pytest.raises(flowode.NetworkOutputError):
        flowode.integrate(model, start(2).float(), geometric(8), "ddpm", seed=0)
    assert isinstance(GeneratorNoise(None).state(), tuple)


# ------------------------------------------------------------------------------------------ distribution metrics, study
def test_distribution_metrics_and_floors():
    from flowode.bench.distribution import exact_nll, floors, mmd

    ring = flowode.analytic.gmm_ring()
    a = ring.sample(400, generator=torch.Generator().manual_seed(0))
    b = ring.sample(400, generator=torch.Generator().manual_seed(1))
    fl = floors(ring, 400, repeats=3, bandwidth=0.2)  # the components' scale (the median distance, 2.8, is blind)
    nll, se = exact_nll(a, ring)
    assert abs(nll - fl["nll"][0]) < 5 * se + 3 * fl["nll"][1]  # exact samples: the entropy
    assert abs(mmd(a, b)) < 3e-3
    shifted = a + torch.tensor([0.3, 0.0], dtype=torch.float64)
    assert mmd(shifted, b, bandwidth=0.2) > 10 * max(abs(fl["mmd"][0]) + fl["mmd"][1], 1e-4)
    assert exact_nll(shifted, ring)[0] > nll + 1.0
    with pytest.raises(ValueError, match="`bandwidth` must be positive"):
        mmd(a, b, bandwidth=0.0)


def test_study_ddpm_vs_ddim_cli(tmp_path):
    from flowode.cli import main

    out = tmp_path / "t.md"
    assert main(["study", "ddpm-vs-ddim", "--model", "exact", "--steps", "4,8", "--etas", "0,1,sigma-hat",
                 "--samples", "200", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("Command: `flowode study ddpm-vs-ddim --model exact")
    tables = {}
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if len(lines) > 2 and lines[1].startswith("---"):
            tables[lines[0].split(" | ")[0]] = {ln.split(" | ")[0]: ln.split(" | ")[1:] for ln in lines[2:]}
    assert set(tables) == {"nll", "sw", "mmd", "diversity", "consistency", "same_mode", "round_trip", "us_per_sample"}
    assert tables["diversity"]["eta 0.0"] == ["0.000", "0.000"]  # DDIM: deterministic
    assert tables["consistency"]["eta 1.0"][1] == "0.000" and tables["same_mode"]["eta 1.0"][1] == "1.000"  # S_ref
    # same x_T: DDIM at 4 steps lands nearer its 8-step sample than DDPM does; only DDIM round-trips
    assert float(tables["consistency"]["eta 0.0"][0]) < float(tables["consistency"]["sigma-hat (ddpm large)"][0])
    assert float(tables["round_trip"]["eta 0.0"][1]) < 0.5 < float(tables["round_trip"]["eta 1.0"][1])
    assert all(float(v) > 0 for v in tables["us_per_sample"]["eta 1.0"])
    for bad in (["--steps", "0"], ["--etas", "2"], ["--samples", "1"]):
        assert main(["study", "ddpm-vs-ddim", *bad, "--out", str(out)]) != 0


def test_study_ddpm_vs_ddim_subprocess_ring8(tmp_path):
    """The command itself (``python -m flowode``) on the shipped ring8 network, tiny: seconds."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "r.md"
    cmd = [sys.executable, "-m", "flowode", "study", "ddpm-vs-ddim", "--steps", "3,6", "--etas", "0,sigma-hat",
           "--samples", "64", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "4 cells" in res.stdout and "### Shipped ring8 network (float32)" in out.read_text()
    bad = subprocess.run(cmd[:-2] + ["--etas", "0,x", "--out", str(out)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "`--etas` entry 'x'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("solver", ["ddpm", "dpm_solver++_2m_sde"])
def test_cli_sample_7_is_the_first_7_of_64(tmp_path, solver):
    """Issue 10: `flowode sample --samples 7` vs `--samples 64` differed (torch's randn and one generator)."""
    from flowode.cli import main

    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for n, out in ((7, a), (64, b)):
        assert main(["sample", "--samples", str(n), "--solver", solver, "--steps", "10", "--out", str(out)]) == 0
    assert np.array_equal(np.load(a), np.load(b)[:7])


def test_brownian_path_in_chunks_for_large_states(monkeypatch):
    """Large states hash the tree's levels in chunks (bounded memory); same path, still batch-invariant."""
    import flowode.noise as fn

    x64 = torch.zeros(64, 2, dtype=torch.float64)
    whole = KeyedNoise(0).increment(x64, 3.0, 2.0, 0)
    monkeypatch.setattr(fn, "_CHUNK", 5)  # 2 levels per hash call
    parts = KeyedNoise(0).increment(x64, 3.0, 2.0, 0)
    assert torch.allclose(parts, whole, rtol=0, atol=1e-12)
    assert torch.equal(KeyedNoise(0).increment(x64[:7], 3.0, 2.0, 0), parts[:7])
    img = torch.zeros(3, 3, 16, 16)
    assert torch.equal(KeyedNoise(1).increment(img[:1], 3.0, 2.0, 0), KeyedNoise(1).increment(img, 3.0, 2.0, 0)[:1])


def test_keyed_noise_without_a_path_is_batch_invariant():
    model = flowode.analytic.gmm_ring().model(flowode.DiscreteVPSchedule.linear())
    x = keyed_normal((64, 2), 0, dtype=torch.float64)
    a = flowode.sample(model, x[:7], steps=10, solver="ddpm", noise=KeyedNoise(3, path=False)).x
    b = flowode.sample(model, x, steps=10, solver="ddpm", noise=KeyedNoise(3, path=False)).x
    assert torch.equal(a, b[:7])
    assert not torch.equal(a, flowode.sample(model, x[:7], steps=10, solver="ddpm", seed=3).x)
    with pytest.raises(TypeError, match="`path` must be True or False"):
        KeyedNoise(0, path="yes")


def test_demo_short_ddpm_vs_ddim(tmp_path, capsys):
    """`flowode demo` prints and writes the short form: DDPM 1000 vs DDIM 10/20/50 on ring8."""
    from flowode.cli import main

    base = ["demo", "--problems", "gaussian", "--solvers", "ddim", "--nfe", "4", "--samples", "16", "--no-progress"]
    assert main(base + ["--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "DDPM vs DDIM on one network" in printed and (tmp_path / "ddpm_vs_ddim.png").stat().st_size > 1000
    lines = [ln for ln in (tmp_path / "ddpm_vs_ddim.md").read_text().splitlines() if ln.startswith("| DD")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert [(c[0], c[1]) for c in cells] == [("DDPM", "1000"), ("DDIM", "10"), ("DDIM", "20"), ("DDIM", "50")]
    div = [float(c[4]) for c in cells]
    trip = [float(c[5]) for c in cells]
    assert div[0] > 1.0 and div[1:] == [0.0, 0.0, 0.0]  # one x_T: DDPM spreads, DDIM is one point
    assert trip[3] < trip[2] < trip[1] < 0.5 < trip[0]  # only DDIM inverts, better with more steps
    assert main(base + ["--no-ddpm-vs-ddim"]) == 0
    assert "DDPM vs DDIM" not in capsys.readouterr().out
