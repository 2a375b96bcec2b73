"""Round trips of naive and exact inversion (flowode.invert).

Exactness is checked on the analytic 2-D ring and 64-D mixtures and on a small MLP eps-network
trained here on the ring (seeded, a few seconds). Per-sample relative error is
``max|x0' - x0| / max|x0|``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import flowode
from flowode.analytic import Gaussian, gmm_random, gmm_ring
from flowode.grids import GridError
from flowode.invert import (
    InversionWarning,
    bdia_decode,
    bdia_encode,
    convergence,
    edict_decode,
    edict_encode,
    fit_order,
    fixed_point_encode,
    latent_stats,
    roundtrip,
)
from flowode.invert.coupled import BdiaLatent
from flowode.solvers import SolverError
from flowode.solvers.ddim import ddim_coefficients

SCHED = flowode.DiscreteVPSchedule.linear()
N = 32


def _batch(data, dtype, n=N, seed=0):
    return data.sample(n, torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(scope="module")
def ring():
    return gmm_ring()


@pytest.fixture(scope="module")
def mix64():
    return gmm_random(64)


@pytest.fixture(scope="module")
def mlp():
    """A 2-32-32-2 SiLU eps-network trained 150 Adam steps on the ring (seeded, a few seconds)."""
    torch.manual_seed(0)
    data = gmm_ring()
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 32), torch.nn.SiLU(),
                              torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    abar = SCHED.alphas_cumprod_knots.to(torch.float32)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        x0 = data.sample(64, g, dtype=torch.float32)
        t = torch.randint(0, 1000, (64,), generator=g)
        e = torch.randn(64, 2, generator=g)
        a = abar[t][:, None]
        loss = ((net(torch.cat([a.sqrt() * x0 + (1 - a).sqrt() * e, t[:, None] / 1000.0], 1)) - e) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.requires_grad_(False)
    assert float(loss.detach()) < 0.8  # it learned something (unit-variance noise gives 1.0)
    return net, data


def _net_model(net, dtype):
    n = net.to(dtype)
    return flowode.EpsilonModel(lambda x, t: n(torch.cat([x, t[:, None] / 1000.0], 1)), SCHED)


# ------------------------------------------------------------------------------------------- exactness
# Per-sample relative round-trip error. "q" is the fraction of samples that must meet "tol"; the
# rest must stay within "worst" (fixed-point round trips of a few ill-conditioned samples -- points
# in low-density gaps, where the decode expands by 1e4-1e5 -- are limited by the conditioning of the
# decode times the per-step tolerance, not by the method; see docs/inversion.md).
EXACT = {
    # (method, dtype): (tol, q, worst)
    ("bdia", torch.float64): (1e-12, 1.0, 1e-12),
    ("edict", torch.float64): (1e-10, 1.0, 1e-10),
    ("fixed_point", torch.float64): (1e-10, 0.9, 1e-8),
    ("bdia", torch.float32): (3e-5, 1.0, 3e-5),
    ("edict", torch.float32): (1e-6, 1.0, 1e-6),  # float64 chains (accumulate=True, default)
    ("fixed_point", torch.float32): (3e-5, 0.9, 2.0),
}


def _check_exact(rt, method, dtype, steps):
    tol, q, worst = EXACT[(method, dtype)]
    err = rt.x0_rel_error
    assert float(torch.quantile(err, q)) <= tol, (method, dtype, steps, err.max())
    assert float(err.max()) <= worst, (method, dtype, steps, err.max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("method", ["edict", "bdia", "fixed_point"])
def test_exact_roundtrip_ring(ring, method, steps, dtype):
    model = ring.model(SCHED)
    x0 = _batch(ring, dtype)
    # On the ring, the 10-step 'trailing' / 'leading' grids end with a large DDIM step (sigma 0.34 -> 0 or
    # -> 0.01) whose denoiser cannot reach tail samples at all: no latent decodes to them, and the fixed
    # point warns (test_fixed_point_warns_...). On the log-SNR grid every sample has a preimage.
    spacing = "logsnr" if method == "fixed_point" else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", InversionWarning)
        rt = roundtrip(model, x0, steps, method, spacing=spacing)
    _check_exact(rt, method, dtype, steps)
    assert rt.reconstruction.dtype == dtype and rt.latent.shape == x0.shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("method", ["edict", "bdia", "fixed_point"])
def test_exact_roundtrip_mix64(mix64, method, steps, dtype):
    model = mix64.model(SCHED)
    rt = roundtrip(model, _batch(mix64, dtype), steps, method)
    _check_exact(rt, method, dtype, steps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("method", ["edict", "bdia", "fixed_point"])
def test_exact_roundtrip_network(mlp, method, steps, dtype):
    net, data = mlp
    rt = roundtrip(_net_model(net, dtype), _batch(data, dtype, seed=1), steps, method)
    _check_exact(rt, method, dtype, steps)


def test_nfe_accounting(ring):
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 8)
    assert (lambda r: (r.nfe_encode, r.nfe_decode))(roundtrip(model, x0, 10, "ddim")) == (10, 10)
    assert (lambda r: (r.nfe_encode, r.nfe_decode))(roundtrip(model, x0, 10, "edict")) == (20, 20)
    # BDIA: one naive step plus 1 per remaining step; the pair decode skips the first DDIM step
    assert (lambda r: (r.nfe_encode, r.nfe_decode))(roundtrip(model, x0, 10, "bdia")) == (10, 9)
    rt = roundtrip(model, x0, 10, "fixed_point", spacing="logsnr")
    fp = rt.latent_state
    assert rt.nfe_decode == 10 and rt.nfe_encode == fp.nfe == sum(fp.nfe_per_step)
    # each step: one naive step + one evaluation per iteration (converged samples stop early)
    assert all(n == 1 + int(it.max()) for n, it in zip(fp.nfe_per_step, fp.iterations))
    assert fp.converged


def test_edict_and_bdia_pieces(ring):
    """The public encode/decode pieces invert each other; EDICT returns both chains exactly."""
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 8)
    g = flowode.sigma_grid(SCHED, 20)
    lat = edict_encode(model, x0, g)
    back = edict_decode(model, lat, g)
    assert torch.allclose(back.x, x0, atol=1e-12) and torch.allclose(back.y, x0, atol=1e-12)
    pair = bdia_encode(model, x0, g, gamma=0.7)
    assert torch.allclose(bdia_decode(model, pair, g, gamma=0.7), x0, atol=1e-13)
    # decoding z0 alone is sampling (first step DDIM): a sample, not the round trip
    alone = bdia_decode(model, BdiaLatent(pair.z0, None), g, gamma=0.7)
    assert alone.shape == x0.shape and torch.isfinite(alone).all()


def _edict_decode_eq10_12(model, x, y, sigmas, p=0.93):
    """EDICT decode written literally as Wallace et al. (2023) eq. 10-12 in x coordinates."""
    s = [float(v) for v in sigmas.tolist()]
    for i in range(len(s) - 1):
        a, b = ddim_coefficients(float(SCHED.alpha_from_sigma(s[i])), float(SCHED.alpha_from_sigma(s[i + 1])), s[i],
                                 s[i + 1])
        x_in = a * x + b * model.predict(y, s[i]).eps
        y_in = a * y + b * model.predict(x_in, s[i]).eps
        x = p * x_in + (1 - p) * y_in
        y = p * y_in + (1 - p) * x
    return x, y


def test_edict_is_eq_10_12_and_accumulates(ring):
    """The xbar-coordinate arrangement is the paper's map (float64, to round-off); with float32
    data the chains are float64 around the float32 network and the round trip is exact, while
    the plain float32 arithmetic (accumulate=False) is limited by EDICT's conditioning."""
    model = ring.model(SCHED)
    g = flowode.sigma_grid(SCHED, 10)
    x0 = _batch(ring, torch.float64, 32)
    lat = edict_encode(model, x0, g, accumulate=False)
    x_ref, y_ref = _edict_decode_eq10_12(model, lat.x, lat.y, g)
    back = edict_decode(model, lat, g, accumulate=False)
    assert torch.allclose(back.x, x_ref, rtol=0, atol=1e-11) and torch.allclose(back.y, y_ref, rtol=0, atol=1e-11)
    assert torch.allclose(x_ref, x0, rtol=0, atol=1e-10)
    x32 = x0.to(torch.float32)
    lat32 = edict_encode(model, x32, g)
    assert lat32.x.dtype == torch.float64 and lat32.dtype == torch.float32
    out = edict_decode(model, lat32, g)
    assert out.x.dtype == torch.float32 and float((out.x - x32).abs().max()) <= 1e-6
    plain = edict_decode(model, edict_encode(model, x32, g, accumulate=False), g, accumulate=False)
    assert plain.x.dtype == torch.float32 and float((plain.x - x32).abs().max()) < 3e-2


def test_fixed_point_other_one_step_solvers(ring):
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 16)
    for solver in ("heun", "rk4", "euler"):
        rt = roundtrip(model, x0, 20, "fixed_point", solver=solver, spacing="logsnr")
        assert float(rt.x0_rel_error.max()) < 1e-10, solver


def test_fixed_point_multistep_dpmpp2m(ring):
    """DPM-Solver++(2M) inversion (Hong et al. 2024 history estimate + Anderson-accelerated sweeps);
    the decode is the registered solver itself (the inverted map is its own step)."""
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 8)
    g = flowode.sigma_grid(SCHED, 10, "logsnr")
    res = fixed_point_encode(model, x0, g, "dpm_solver++_2m", on_fail="ignore")
    back = flowode.integrate(model, res.latent, g, "dpm_solver++_2m").x
    rel = (back - x0).abs().flatten(1).amax(1) / x0.abs().flatten(1).amax(1)
    assert float(res.residual.max()) < 1e-12 and float(rel.max()) < 1e-10
    naive = flowode.integrate(model, fixed_point_encode(model, x0, g, "dpm_solver++_2m", max_sweeps=1,
                                                        on_fail="ignore").latent, g, "dpm_solver++_2m").x
    assert float((naive - x0).abs().max()) > 1e3 * float((back - x0).abs().max())  # the sweeps matter


@pytest.mark.parametrize("solver,opts", [("unipc", {"corrector": False}), ("ipndm", {"order": 1}),
                                         ("deis", {"order": 1})])
def test_fixed_point_other_registered_multistep_solvers(ring, solver, opts):
    """The inverted map is the stepper's own step with the decode's solver state, so registered
    multistep solvers other than DPM-Solver++(2M) invert with the same code, and the decode is the
    solver itself. (The sweeps do not contract for every one: ipndm and deis (default basis) of order
    >= 2, 3M and UniPC with its corrector stall at ~1e-1 on this grid and warn, while adams_bashforth in
    sigma and deis with basis="rho" converge; measured in docs/inversion.md.)"""
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 6)
    g = flowode.sigma_grid(SCHED, 10, "logsnr")
    res = fixed_point_encode(model, x0, g, solver, on_fail="ignore", **opts)
    back = flowode.integrate(model, res.latent, g, solver, **opts).x
    assert float(res.residual.max()) < 1e-12, solver
    assert float(((back - x0).abs().flatten(1).amax(1) / x0.abs().flatten(1).amax(1)).max()) < 1e-10, solver


# ------------------------------------------------------------------------------------------- naive inversion
def test_ddim_inversion_first_order():
    """Round-trip and latent errors of DDIM inversion fall at order ~1 (exact latent: closed form)."""
    data = Gaussian([0.5, -1.0], [0.3, 0.7])
    model = data.model(SCHED)
    study = convergence(model, _batch(data, torch.float64, 64), "ddim", steps=(20, 40, 80, 160))
    assert 0.85 < study.order_x0 < 1.15, study
    assert 0.85 < study.order_latent < 1.15, study
    assert all(a > b for a, b in zip(study.x0_error, study.x0_error[1:]))


def test_ddim_inversion_mixture_order(ring):
    study = convergence(ring.model(SCHED), _batch(ring, torch.float64), "ddim", steps=(40, 80, 160))
    assert 0.7 < study.order_x0 < 1.3, study


def test_heun_inversion_matches_integrate(ring):
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 8)
    rt = roundtrip(model, x0, 12, "heun")
    z = flowode.encode(model, x0, steps=12, solver="heun").x
    assert torch.equal(rt.latent, z)
    assert torch.equal(rt.reconstruction, flowode.decode(model, z, steps=12, solver="heun").x)


def test_latent_error_closed_form():
    data = Gaussian([0.5, -1.0], [0.3, 0.7])
    model = data.model(SCHED)
    x0 = _batch(data, torch.float64, 16)
    rt = roundtrip(model, x0, 10, "ddim")
    ref = data.flow(x0, 0.0, float(rt.sigmas[0]), SCHED)
    assert torch.allclose(rt.latent_reference, ref)
    solved = roundtrip(model, x0, 10, "ddim", reference=True, data=GaussianNotClosed(data))
    assert torch.allclose(solved.latent_error, rt.latent_error, rtol=1e-6)


class GaussianNotClosed(flowode.GaussianMixture):
    """The same single Gaussian, seen as a mixture (forces reference_solve)."""

    def __init__(self, g):
        super().__init__(g.mean[None], 1.0)


def test_fit_order():
    assert abs(fit_order([10, 20, 40], [1.0, 0.25, 0.0625]) - 2.0) < 1e-12
    assert math.isnan(fit_order([10], [1.0]))


def test_psnr_for_images():
    data = gmm_random(16, shape=(1, 4, 4))
    model = data.model(SCHED)
    rt = roundtrip(model, _batch(data, torch.float64, 4), 10, "bdia")
    assert rt.psnr is not None and bool((rt.psnr > 200).all())
    assert roundtrip(model, _batch(data, torch.float64, 4), 10, "ddim").psnr.max() < 60


# ------------------------------------------------------------------------------------------- bad inputs
def test_increasing_grid_rejected(ring):
    model = ring.model(SCHED)
    g = flowode.sigma_grid(SCHED, 10)
    with pytest.raises(GridError, match="decode.*decreasing.*torch.flip"):
        roundtrip(model, _batch(ring, torch.float64, 4), None, "edict", sigmas=torch.flip(g, [0]))
    rt = roundtrip(model, _batch(ring, torch.float64, 4), None, "bdia", sigmas=g)
    assert rt.steps == 10


def test_bad_options(ring):
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 4)
    with pytest.raises(SolverError, match="stochastic"):
        roundtrip(model, x0, 10, "ddpm")
    with pytest.raises(ValueError, match="`p`"):
        roundtrip(model, x0, 10, "edict", p=0.0)
    with pytest.raises(ValueError, match="`gamma`"):
        roundtrip(model, x0, 10, "bdia", gamma=0.0)
    with pytest.raises(TypeError, match="unknown option"):
        roundtrip(model, x0, 10, "edict", gamma=0.5)
    with pytest.raises(SolverError, match="deterministic fixed-step"):
        roundtrip(model, x0, 10, "fixed_point", solver="ddpm")
    with pytest.raises(SolverError, match="adaptive"):
        roundtrip(model, x0, 10, "fixed_point", solver="dopri5")


def test_fixed_point_warns_naming_samples_and_residual(ring):
    """A capped iteration warns; an unreachable target (outside the last DDIM step's range) too."""
    model = ring.model(SCHED)
    x0 = _batch(ring, torch.float64, 8)
    with pytest.warns(InversionWarning, match=r"step \d+ \(sigma .*sample\(s\) \{0: [0-9.e-]+"):
        roundtrip(model, x0, 10, "fixed_point", max_iter=1, anderson=0)
    with pytest.raises(RuntimeError, match="did not converge"):
        roundtrip(model, x0, 10, "fixed_point", max_iter=1, anderson=0, on_fail="raise")
    # a point 2.5 std off its component towards the next one is outside the range of the final
    # denoising step of the trailing 10-step grid (sigma 0.34 -> 0): no latent decodes to it
    off = torch.tensor([[2.0, 0.25]], dtype=torch.float64)
    x = torch.cat([x0[:2], off])
    with pytest.warns(InversionWarning, match="did not converge") as rec:
        rt = roundtrip(model, x, 10, "fixed_point", tol=1e-12)
    msgs = [str(w.message) for w in rec if issubclass(w.category, InversionWarning)]
    assert any("{2:" in m or ", 2:" in m for m in msgs), msgs
    # on the log-SNR grid the same point has a preimage
    assert roundtrip(model, off, 10, "fixed_point", spacing="logsnr").latent_state.converged
    assert not rt.latent_state.converged


# ------------------------------------------------------------------------------------------- latent checks
def test_latent_stats():
    g = torch.Generator().manual_seed(0)
    good = latent_stats(torch.randn(256, 16, generator=g))
    assert not good.off_distribution and good.ks_pvalue > 1e-3 and good.chi2_pvalue > 1e-3
    bad = latent_stats(0.5 * torch.randn(256, 16, generator=g))
    assert bad.off_distribution and bad.chi2_pvalue < 1e-6
    assert latent_stats(3 * torch.randn(64, 4, generator=g), scale=3.0).off_distribution is False


def test_invertibility_report(tmp_path):
    img = gmm_random(16, shape=(1, 4, 4))
    rep = flowode.invertibility_report(img.model(SCHED), _batch(img, torch.float64, 8), ["ddim", "bdia"], [5, 10])
    assert len(rep.rows) == 4 and "| bdia | 10 |" in rep.table()
    paths = rep.save(tmp_path)
    assert all(p.exists() for p in paths) and {p.name for p in paths} >= {"grid.png", "error_vs_nfe.png"}


@pytest.mark.filterwarnings("ignore::flowode.invert.InversionWarning")
def test_cli_invert(tmp_path, capsys):
    from flowode.cli import main

    assert main(["invert", "--samples", "16", "--steps", "5,10", "--methods", "ddim,fixed_point:heun",
                 "--spacing", "logsnr", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fixed_point(solver=heun)" in out and (tmp_path / "error_vs_nfe.png").exists()


@pytest.mark.parametrize("schedule,prediction", [
    (flowode.EDMSchedule(), "eps"), (flowode.VESchedule(), "eps"),
    (flowode.DiscreteVPSchedule.linear(), "v"), (flowode.CosineVPSchedule(), "x0"),
], ids=["edm-eps", "ve-eps", "vp-v", "cosine-x0"])
def test_exact_methods_other_schedules_and_parameterisations(ring, schedule, prediction):
    """The exact methods only use sigma, alpha(sigma) and (eps, x0): VE / EDM (alpha = 1) and v / x0
    networks invert exactly too."""
    model = ring.model(schedule, prediction=prediction)
    x0 = _batch(ring, torch.float64, 16)
    for method in ("edict", "bdia", "fixed_point"):
        rt = roundtrip(model, x0, 20, method, spacing="logsnr")
        assert float(rt.x0_rel_error.max()) < 1e-10, (method, float(rt.x0_rel_error.max()))
