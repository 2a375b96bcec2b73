"""Models: exact parameterisation conversions, NFE counting, guidance, x0 thresholding, zero terminal SNR."""

from __future__ import annotations

import math

import pytest
import torch

import flowode
from flowode.analytic import gmm_random
from flowode.models import PREDICTIONS, NetworkOutputError

F64 = torch.float64
GMM = gmm_random(dim=8, k=4, std=0.4, seed=3)

SCHEDULES = {
    "discrete": flowode.DiscreteVPSchedule.linear(),
    "vp_linear": flowode.LinearVPSchedule(),
    "ve": flowode.VESchedule(),
    "edm": flowode.EDMSchedule(),
}


def _state(sched, sigma, n=16, seed=0):
    """A state at noise level sigma drawn from the noised data (model coordinates)."""
    g = torch.Generator().manual_seed(seed)
    x0 = GMM.sample(n, generator=g)
    xbar = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    return xbar * float(sched.alpha_from_sigma(sigma))


def _sigmas(sched):
    lo, hi = sched.sigma_min, sched.sigma_max
    return [lo * 2, math.sqrt(lo * hi), 1.0, hi / 2]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_parameterisations_agree(name):
    """eps / x0 / v / score networks of the same exact model give the same (eps, x0) to 1e-12 (v on
    every Gaussian path: eps = (alpha v + std x) / (alpha^2 + std^2), = alpha v + std x on VP)."""
    sched = SCHEDULES[name]
    preds = list(PREDICTIONS)
    models = {p: GMM.model(sched, prediction=p) for p in preds}
    for sigma in _sigmas(sched):
        x = _state(sched, sigma)
        ref = models["eps"].predict(x, sigma)
        eps_ref, x0_ref = ref.eps, ref.x0
        scale_eps = float(eps_ref.abs().max())
        scale_x0 = float(x0_ref.abs().max())
        # eps = (x - alpha x0) / std from an x0 network carries the round-off of x amplified by 1/std:
        # that part is the problem's conditioning, not the conversion's, and is allowed on top of 1e-12
        cond = 16 * torch.finfo(F64).eps * float(x.abs().max()) / float(sched.std_from_sigma(sigma))
        for p, m in models.items():
            out = m.predict(x, sigma)
            err_eps = float((out.eps - eps_ref).abs().max())
            err_x0 = float((out.x0 - x0_ref).abs().max()) / scale_x0
            assert err_eps <= 1e-12 * scale_eps + cond, (p, sigma, err_eps / scale_eps)
            assert err_x0 <= 1e-12, (p, sigma, err_x0)


def test_conversion_identities_by_hand():
    """The raw outputs of the four parameterisations satisfy the identities of models.py."""
    sched = SCHEDULES["discrete"]
    sigma = 0.8
    alpha, std = float(sched.alpha_from_sigma(sigma)), float(sched.std_from_sigma(sigma))
    assert alpha == pytest.approx(1 / math.sqrt(1 + sigma**2), rel=1e-15)
    assert std == pytest.approx(alpha * sigma, rel=1e-15)
    x = _state(sched, sigma)
    raw = {p: GMM.model(sched, prediction=p).network(x, sigma) for p in PREDICTIONS}
    eps, x0, v, score = raw["eps"], raw["x0"], raw["v"], raw["score"]
    torch.testing.assert_close(x0, (x - std * eps) / alpha, rtol=0, atol=1e-13)
    torch.testing.assert_close(v, alpha * eps - std * x0, rtol=0, atol=1e-13)
    torch.testing.assert_close(eps, alpha * v + std * x, rtol=0, atol=1e-13)
    torch.testing.assert_close(x0, alpha * x - std * v, rtol=0, atol=1e-13)
    torch.testing.assert_close(score, -eps / std, rtol=0, atol=1e-13)


def test_score_is_gradient_of_log_density():
    """model.score is grad_x log p_sigma(x), checked with autograd on the exact mixture density."""
    sched = SCHEDULES["discrete"]
    sigma = 0.6
    alpha = float(sched.alpha_from_sigma(sigma))
    x = _state(sched, sigma, n=4).requires_grad_(True)
    logp = (GMM.log_prob(x / alpha, sigma) - GMM.dim * math.log(alpha)).sum()
    (grad,) = torch.autograd.grad(logp, x)
    model = GMM.model(sched)
    torch.testing.assert_close(model.score(x.detach(), sigma), grad, rtol=1e-12, atol=1e-12)
    assert model.nfe == 1


# ------------------------------------------------------------------------------------ NFE
def test_nfe_counting():
    sched = SCHEDULES["discrete"]
    model = GMM.model(sched)
    x = _state(sched, 1.0)
    assert model.nfe == 0
    for i in range(3):
        model.predict(x, 1.0)
        assert model.nfe == i + 1
    model.eps(x, 1.0)
    model.x0(x, 1.0)
    assert model.nfe == 5
    model.reset_nfe()
    assert model.nfe == 0 and model.network_passes == 0
    sigmas = flowode.sigma_grid(sched, 10, "trailing")
    sol = flowode.integrate(model, _state(sched, float(sigmas[0])), sigmas, solver="heun")
    # 9 Heun steps at 2 evaluations, the last step to sigma = 0 is one DDIM step
    assert sol.nfe == model.nfe == 9 * 2 + 1
    assert flowode.solvers.make("heun").nfe(sigmas.tolist()) == sol.nfe


def test_network_receives_timesteps():
    """fn(x, t) gets a 1-D tensor of the native timesteps, one per sample, in the state's dtype."""
    sched = SCHEDULES["discrete"]
    seen = []

    def fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    model = flowode.EpsilonModel(fn, sched)
    x = torch.zeros(5, 3, dtype=torch.float32)
    model.predict(x, sched.sigma(417))
    assert seen[0].shape == (5,) and seen[0].dtype == torch.float32
    assert torch.equal(seen[0], torch.full((5,), 417.0))
    assert model.schedule is sched


# ------------------------------------------------------------------------------------ guidance
def _lin_nets(scale_c=1.0, scale_u=-0.5):
    def cond(x, t):
        return scale_c * x + 0.01 * t[:, None]

    def uncond(x, t):
        return scale_u * x - 0.02 * t[:, None]

    return cond, uncond


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_cfg_two_call_and_batched(prediction):
    sched = SCHEDULES["discrete"]
    cond, uncond = _lin_nets()
    w = 3.5
    sigma = float(sched.sigma(500))
    x = _state(sched, sigma, n=6)
    two = flowode.EpsilonModel(cond, sched, prediction, guidance_scale=w, uncond_fn=uncond)
    plain_c = flowode.EpsilonModel(cond, sched, prediction)
    plain_u = flowode.EpsilonModel(uncond, sched, prediction)
    pc, pu = plain_c.predict(x, sigma), plain_u.predict(x, sigma)
    out = two.predict(x, sigma)
    torch.testing.assert_close(out.eps, pu.eps + w * (pc.eps - pu.eps), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out.x0, pu.x0 + w * (pc.x0 - pu.x0), rtol=1e-13, atol=1e-13)
    assert two.nfe == 1 and two.network_passes == 2

    calls = []

    def batched(xx, t, c):
        calls.append(xx.shape[0])
        is_c = c.view(-1, *([1] * (xx.dim() - 1))) > 0
        return torch.where(is_c, cond(xx, t), uncond(xx, t))

    flags = (torch.ones(6), torch.zeros(6))
    one = flowode.EpsilonModel(batched, sched, prediction, guidance_scale=w, batched_cfg=flags)
    out1 = one.predict(x, sigma)
    assert calls == [12]  # one call on the doubled batch
    torch.testing.assert_close(out1.eps, out.eps, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(out1.x0, out.x0, rtol=1e-14, atol=1e-14)
    assert one.nfe == 1 and one.network_passes == 2


def test_cfg_scale_one_is_conditional():
    sched = SCHEDULES["discrete"]
    cond, uncond = _lin_nets()
    x = _state(sched, 2.0)
    g = flowode.EpsilonModel(cond, sched, guidance_scale=1.0, uncond_fn=uncond)
    torch.testing.assert_close(g.eps(x, 2.0), flowode.EpsilonModel(cond, sched).eps(x, 2.0), rtol=0, atol=0)


def test_cfg_in_a_solve_counts_once_per_evaluation():
    sched = SCHEDULES["discrete"]
    cond, uncond = _lin_nets(-0.1, -0.2)
    model = flowode.EpsilonModel(cond, sched, guidance_scale=2.0, uncond_fn=uncond)
    sol = flowode.sample(model, torch.randn(4, 3, dtype=F64), steps=8, solver="heun")
    assert sol.nfe == 7 * 2 + 1 and model.network_passes == 2 * sol.nfe


# ------------------------------------------------------------------------------------ thresholding
def test_clip_x0():
    sched = SCHEDULES["discrete"]
    sigma = 0.5
    alpha, std = float(sched.alpha_from_sigma(sigma)), float(sched.std_from_sigma(sigma))
    x = torch.linspace(-3, 3, 24, dtype=F64).view(4, 6)

    def x0net(x, t):
        return 2.0 * x

    plain = flowode.EpsilonModel(x0net, sched, "x0").predict(x, sigma)
    clipped = flowode.EpsilonModel(x0net, sched, "x0", clip_x0=(-1.0, 1.0)).predict(x, sigma)
    torch.testing.assert_close(clipped.x0, plain.x0.clamp(-1, 1), rtol=0, atol=0)
    torch.testing.assert_close(clipped.eps, (x - alpha * clipped.x0) / std, rtol=1e-14, atol=1e-14)
    inside = plain.x0.abs() <= 1
    torch.testing.assert_close(clipped.eps[inside], plain.eps[inside], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dynamic_thresholding(dtype):
    """Imagen (Saharia et al. 2022, sec. 2.3): s = max(1, quantile(|x0|, p)) per sample, x0 <- clamp(x0, -s, s)/s."""
    sched = SCHEDULES["discrete"]
    sigma, p = 0.5, 0.9
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 4, 4, generator=g, dtype=F64).to(dtype)
    x[0] *= 0.1  # a sample whose quantile is below 1: left unchanged

    def x0net(x, t):
        return 3.0 * x

    out = flowode.EpsilonModel(x0net, sched, "x0", dynamic_threshold=p).predict(x, sigma)
    raw = 3.0 * x.to(F64)
    s = torch.quantile(raw.abs().flatten(1), p, dim=1).clamp(min=1.0).view(-1, 1, 1, 1)
    want = torch.maximum(torch.minimum(raw, s), -s) / s
    tol = 1e-14 if dtype == F64 else 1e-6
    torch.testing.assert_close(out.x0.to(F64), want, rtol=tol, atol=tol)
    torch.testing.assert_close(out.x0[0].to(F64), raw[0], rtol=tol, atol=tol)
    assert float(out.x0.abs().max()) <= 1.0 + tol
    assert out.x0.dtype == dtype


# ------------------------------------------------------------------------------------ zero terminal SNR
def test_v_prediction_at_zero_terminal_snr():
    """At sigma = inf a v network still defines eps = x and x0 = -v; DDIM starts from there."""
    sched = flowode.DiscreteVPSchedule.scaled_linear(zero_terminal_snr=True)
    model = GMM.model(sched, prediction="v")
    x = torch.randn(8, GMM.dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    pred = model.predict(x, math.inf)
    torch.testing.assert_close(pred.eps, x, rtol=0, atol=0)
    torch.testing.assert_close(pred.x0, (GMM.weights @ GMM.means).expand_as(x), rtol=1e-14, atol=1e-14)
    sigmas = flowode.sigma_grid(sched, 10, "trailing")
    assert math.isinf(float(sigmas[0]))
    sol = flowode.integrate(model, x, sigmas, solver="ddim")
    assert bool(torch.isfinite(sol.x).all()) and sol.nfe == 10
    # the first step is x1 = alpha_1 (x0_hat + sigma_1 eps_hat)
    first = flowode.integrate(GMM.model(sched, prediction="v"), x, sigmas[:2], solver="ddim").x
    a1, s1 = float(sched.alpha_from_sigma(float(sigmas[1]))), float(sigmas[1])
    torch.testing.assert_close(first, a1 * (pred.x0 + s1 * pred.eps), rtol=1e-14, atol=1e-14)
    # an x0 network works there too
    sol_x0 = flowode.integrate(GMM.model(sched, prediction="x0"), x, sigmas, solver="ddim")
    torch.testing.assert_close(sol_x0.x, sol.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "score"])
def test_eps_prediction_at_zero_terminal_snr_raises(prediction):
    sched = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    model = GMM.model(sched, prediction=prediction)
    sigmas = flowode.sigma_grid(sched, 10, "trailing")
    x = torch.randn(4, GMM.dim, dtype=F64)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        flowode.integrate(model, x, sigmas, solver="ddim")
    # below sigma = inf it works
    sol = flowode.integrate(model, x, sigmas[1:], solver="ddim")
    assert bool(torch.isfinite(sol.x).all())


# ------------------------------------------------------------------------------------ validation
def test_model_validation():
    sched = SCHEDULES["discrete"]

    def fn(x, t):
        return x

    with pytest.raises(ValueError, match="prediction"):
        flowode.EpsilonModel(fn, sched, prediction="epsilon")
    with pytest.raises(TypeError, match="fn"):
        flowode.EpsilonModel(3, sched)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="schedule"):
        flowode.EpsilonModel(fn, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dynamic_threshold"):
        flowode.EpsilonModel(fn, sched, dynamic_threshold=99)
    with pytest.raises(ValueError, match="guidance_scale"):
        flowode.EpsilonModel(fn, sched, uncond_fn=fn)
    with pytest.raises(ValueError, match="uncond_fn"):
        flowode.EpsilonModel(fn, sched, guidance_scale=2.0)


def test_network_output_checks():
    sched = SCHEDULES["discrete"]
    x = torch.zeros(2, 3, dtype=F64)
    bad_shape = flowode.EpsilonModel(lambda x, t: x[:, :2], sched)
    with pytest.raises(NetworkOutputError, match=r"shape \(2, 2\).*expected \(2, 3\)"):
        bad_shape.predict(x, 1.0)
    nan = flowode.EpsilonModel(lambda x, t: x * float("nan"), sched)
    with pytest.raises(NetworkOutputError, match="NaN/Inf at sigma=1"):
        nan.predict(x, 1.0)


def test_prior_sample():
    sched = SCHEDULES["discrete"]
    model = GMM.model(sched)
    z = model.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert z.shape == (4000, 2) and z.dtype == F64
    assert float(z.std()) == pytest.approx(1.0, abs=0.05)
    ve = GMM.model(SCHEDULES["ve"])
    z = ve.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert float(z.std()) == pytest.approx(math.sqrt(1 + 50.0**2), rel=0.05)
