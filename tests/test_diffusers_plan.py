"""flowode.from_diffusers_scheduler against diffusers' own loop (diffusers is the test-only oracle):
the plan's run equals the scheduler's loop to float32 round-off, on a deterministic dummy network and on
a tiny random UNet2DModel; what it cannot reproduce is refused by name."""

from __future__ import annotations

import pytest
import torch

import flowode

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

SHAPE = (2, 3, 8, 8)


def dummy(x, t, **_):
    """Deterministic stand-in network: smooth in x and t, float32 (as diffusers' test dummy)."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.expand(x.shape[0])
    tt = t.to(x).view(-1, 1, 1, 1) / 1000.0
    return torch.tanh(0.7 * x) * (0.5 + tt) + 0.1 * torch.sin(3 * tt + x.mean(dim=(1, 2, 3), keepdim=True))


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=4,
                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _net_fn(net):
    if net is None:
        return dummy

    def fn(x, t):
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return net(x, t).sample

    return fn


def diffusers_loop(scheduler, fn, latents):
    """The pipeline loop: scale_model_input, network, step (what every diffusers pipeline does)."""
    x = latents.clone()
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = fn(inp, t)
        x = scheduler.step(out, t, x).prev_sample
    return x


def _latents(scheduler):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    return x * getattr(scheduler, "init_noise_sigma", 1.0)


# (scheduler class, config, steps): at least two configs per supported scheduler
CASES = [
    ("DDIMScheduler", dict(clip_sample=False), 10),
    ("DDIMScheduler", dict(clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=False), 8),
    ("DDIMScheduler", dict(clip_sample=False, steps_offset=1, prediction_type="v_prediction",
                           beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 10),
    ("DDIMScheduler", dict(clip_sample=False, timestep_spacing="trailing", rescale_betas_zero_snr=True,
                           prediction_type="v_prediction"), 5),
    ("EulerDiscreteScheduler", dict(), 10),
    ("EulerDiscreteScheduler", dict(timestep_spacing="trailing", prediction_type="v_prediction"), 7),
    ("EulerDiscreteScheduler", dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"), 9),
    ("EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1, beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012), 6),
    ("DPMSolverMultistepScheduler", dict(), 10),
    ("DPMSolverMultistepScheduler", dict(use_beta_sigmas=True, euler_at_final=True), 8),
    ("EulerDiscreteScheduler", dict(use_exponential_sigmas=True, timestep_spacing="trailing"), 8),
    ("DPMSolverMultistepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min",
                                         timestep_spacing="trailing"), 8),
    ("DPMSolverMultistepScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 20),
    ("DPMSolverMultistepScheduler", dict(solver_order=2, lower_order_final=False, final_sigmas_type="sigma_min"), 6),
    ("DPMSolverSinglestepScheduler", dict(), 10),
    ("DPMSolverSinglestepScheduler", dict(solver_order=3), 9),
    ("DPMSolverSinglestepScheduler", dict(solver_order=3, final_sigmas_type="sigma_min", lower_order_final=False,
                                          beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 9),
    ("DPMSolverSinglestepScheduler", dict(solver_order=3, use_karras_sigmas=True, prediction_type="v_prediction"), 7),
    ("DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min",
                                          prediction_type="v_prediction"), 8),
    ("DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", solver_order=3, final_sigmas_type="sigma_min",
                                          lower_order_final=True), 8),
    ("DPMSolverSinglestepScheduler", dict(solver_type="heun", solver_order=3, use_karras_sigmas=True), 10),
    ("DPMSolverSinglestepScheduler", dict(solver_type="heun", algorithm_type="dpmsolver", solver_order=3,
                                          final_sigmas_type="sigma_min", prediction_type="v_prediction"), 9),
    ("UniPCMultistepScheduler", dict(), 10),
    # thresholding=True: diffusers' _threshold_sample is the model's dynamic_threshold(_max)
    ("DPMSolverMultistepScheduler", dict(thresholding=True, sample_max_value=3.0, dynamic_thresholding_ratio=0.9), 8),
    ("DPMSolverMultistepScheduler", dict(thresholding=True, solver_order=3, prediction_type="v_prediction"), 8),
    ("DPMSolverSinglestepScheduler", dict(thresholding=True, sample_max_value=4.0, solver_order=3), 9),
    ("UniPCMultistepScheduler", dict(thresholding=True, sample_max_value=2.5), 10),
    ("DEISMultistepScheduler", dict(thresholding=True, sample_max_value=3.0, dynamic_thresholding_ratio=0.9), 8),
    ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh1", final_sigmas_type="sigma_min",
                                     timestep_spacing="trailing"), 7),
    ("UniPCMultistepScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction"), 12),
    ("DEISMultistepScheduler", dict(), 10),
    ("DEISMultistepScheduler", dict(solver_order=3, timestep_spacing="trailing"), 8),
    ("DEISMultistepScheduler", dict(solver_order=1, use_karras_sigmas=True, prediction_type="v_prediction"), 6),
    ("HeunDiscreteScheduler", dict(), 6),
    ("HeunDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction",
                                   timestep_spacing="trailing"), 5),
    ("LMSDiscreteScheduler", dict(), 10),
    ("LMSDiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction",
                                  timestep_spacing="trailing"), 8),
    ("PNDMScheduler", dict(), 6),
    ("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=True), 10),
    ("EDMEulerScheduler", dict(), 8),
    ("EDMEulerScheduler", dict(prediction_type="v_prediction", sigma_schedule="exponential", sigma_max=20.0), 6),
    ("KDPM2DiscreteScheduler", dict(), 5),
    ("KDPM2DiscreteScheduler", dict(use_karras_sigmas=True, prediction_type="v_prediction",
                                    timestep_spacing="trailing"), 6),
    ("FlowMatchEulerDiscreteScheduler", dict(), 10),
    ("FlowMatchEulerDiscreteScheduler", dict(shift=3.0), 8),
    ("FlowMatchEulerDiscreteScheduler", dict(use_dynamic_shifting=True), 6),
]


def _make(name, config, steps):
    sched = getattr(diffusers, name)(**config)
    kw = {"mu": 0.8} if config.get("use_dynamic_shifting") else {}
    sched.set_timesteps(steps, **kw)
    return sched


def _case_id(c):
    return c[0].replace("Scheduler", "") + "-" + ",".join(f"{k}={v}" for k, v in c[1].items()) + f"-{c[2]}"


@pytest.mark.parametrize("net_kind", ["dummy", "unet"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_plan_reproduces_the_diffusers_loop(case, net_kind, unet):
    name, config, steps = case
    net = unet if net_kind == "unet" else None
    fn = _net_fn(net)
    sched = _make(name, config, steps)
    latents = _latents(sched)
    with torch.no_grad():
        ref = diffusers_loop(sched, fn, latents)
    plan = flowode.from_diffusers_scheduler(_make(name, config, steps))
    out = plan.run(fn if net is None else net, latents)
    assert out.dtype == ref.dtype == torch.float32
    scale = max(1.0, float(ref.abs().max()))
    err = float((out - ref).abs().max())
    assert err <= 2e-5 * scale, f"{name} {config}: max abs difference {err:.3g} (scale {scale:.3g})"


DDPM_CASES = [
    (dict(), 10),  # clip_sample=True (default): flowode's clip_x0, exact because the DDPM step uses x0 and x
    (dict(clip_sample=False, variance_type="fixed_large", prediction_type="v_prediction"), 8),
    (dict(timestep_spacing="trailing", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012), 5),
    (dict(thresholding=True, sample_max_value=3.0, dynamic_thresholding_ratio=0.9), 6),  # replaces clip_sample
]


@pytest.mark.parametrize("net_kind", ["dummy", "unet"])
@pytest.mark.parametrize("config, steps", DDPM_CASES)
def test_ddpm_plan_draws_the_same_noise(config, steps, net_kind, unet):
    _stochastic("DDPMScheduler", config, steps, net_kind, unet)


ANCESTRAL_CASES = [
    (dict(), 10),
    (dict(timestep_spacing="trailing", prediction_type="v_prediction"), 6),
]


@pytest.mark.parametrize("net_kind", ["dummy", "unet"])
@pytest.mark.parametrize("config, steps", ANCESTRAL_CASES)
def test_euler_ancestral_plan_draws_the_same_noise(config, steps, net_kind, unet):
    _stochastic("EulerAncestralDiscreteScheduler", config, steps, net_kind, unet)


def _stochastic(name, config, steps, net_kind, unet):
    net = unet if net_kind == "unet" else None
    fn = _net_fn(net)
    sched = _make(name, config, steps)
    latents = _latents(sched)
    g = torch.Generator().manual_seed(123)
    x = latents.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(fn(sched.scale_model_input(x, t), t), t, x, generator=g).prev_sample
    plan = flowode.from_diffusers_scheduler(_make(name, config, steps))
    out = plan.run(fn if net is None else net, latents, generator=torch.Generator().manual_seed(123))
    err = float((out - x).abs().max())
    assert err <= 2e-5 * max(1.0, float(x.abs().max())), f"{name} {config}: max abs difference {err:.3g}"


def test_plan_with_from_diffusers_model_and_a_swapped_solver(unet):
    """The model of flowode.from_diffusers runs the plan too; then any solver runs on the same grid."""
    sched = _make("EulerDiscreteScheduler", {}, 10)
    latents = _latents(sched)
    with torch.no_grad():
        ref = diffusers_loop(sched, _net_fn(unet), latents)
    model = flowode.from_diffusers(unet, sched)
    plan = flowode.from_diffusers_scheduler(sched)
    out = plan.run(model, latents)
    assert float((out - ref).abs().max()) <= 2e-5 * max(1.0, float(ref.abs().max()))
    x = latents * plan.latent_scale  # flowode's state; then any solver on diffusers' grid
    sol = flowode.integrate(model, x, plan.sigmas, solver="heun")
    assert torch.isfinite(sol.x).all() and sol.nfe == 2 * 10 - 1


def test_from_diffusers_flow_matching_network():
    """A flow-matching scheduler makes a prediction='flow' model on FlowMatchSchedule whose network
    receives 1000 t, as diffusers' flow pipelines pass it."""
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    seen = []

    def net(x, t):
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    model = flowode.from_diffusers(net, sched)
    assert model.prediction == "flow" and isinstance(model.schedule, flowode.FlowMatchSchedule)
    assert model.schedule.shift == 3.0
    model.predict(torch.zeros(1, 2), float(model.schedule.sigma(0.25)))
    assert seen[-1] == pytest.approx(250.0, rel=1e-6)
    # the plan and the model agree with diffusers' loop
    sched.set_timesteps(6)
    latents = _latents(sched)
    ref = diffusers_loop(sched, dummy, latents)
    sched2 = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched2.set_timesteps(6)
    out = flowode.from_diffusers_scheduler(sched2).run(flowode.from_diffusers(dummy, sched2), latents)
    assert float((out - ref).abs().max()) <= 2e-5 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name, config, steps, match", [
    ("DDIMScheduler", {}, 10, "clip_sample"),  # diffusers' default clips x0 and keeps the raw eps
    ("DDIMScheduler", dict(clip_sample=False, thresholding=True), 10, "thresholding"),
    ("DDIMScheduler", dict(clip_sample=False, timestep_spacing="linspace"), 10, "timestep_spacing"),
    ("DDIMScheduler", dict(clip_sample=False, timestep_spacing="trailing"), 7, "lands on"),
    ("FlowMatchEulerDiscreteScheduler", dict(stochastic_sampling=True), 5, "stochastic_sampling"),
    ("FlowMatchEulerDiscreteScheduler", dict(invert_sigmas=True), 5, "invert_sigmas"),
    ("DPMSolverMultistepScheduler", dict(algorithm_type="sde-dpmsolver++"), 5, "algorithm_type"),
    ("DPMSolverMultistepScheduler", dict(solver_type="heun"), 5, "solver_type"),
    ("DPMSolverMultistepScheduler", dict(euler_at_final=True, final_sigmas_type="sigma_min"), 5, "euler_at_final"),
    ("UniPCMultistepScheduler", dict(solver_type="bh1"), 5, "bh1"),
    ("UniPCMultistepScheduler", dict(disable_corrector=[0]), 5, "disable_corrector"),
    ("UniPCMultistepScheduler", dict(predict_x0=False), 5, "predict_x0"),
    ("HeunDiscreteScheduler", dict(clip_sample=True), 5, "clip_sample"),
    ("DPMSolverSinglestepScheduler", dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min",
                                          thresholding=True), 6, "thresholding"),
    ("DDPMScheduler", dict(variance_type="learned"), 5, "variance_type"),
    ("DPMSolverSinglestepScheduler", dict(algorithm_type="sde-dpmsolver++"), 6, "algorithm_type"),
    ("DPMSolverSinglestepScheduler", dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"), 6, "sigma_min"),
    ("PNDMScheduler", dict(prediction_type="v_prediction"), 6, "prediction_type"),
    ("PNDMScheduler", dict(), 9, "stride is even"),  # 1000 // 9 = 111: PRK half steps of 55.5
    ("LCMScheduler", {}, 4, "LCMScheduler"),
])
def test_what_is_not_reproduced_is_refused_by_name(name, config, steps, match):
    sched = getattr(diffusers, name)(**config)
    sched.set_timesteps(steps)
    with pytest.raises(flowode.UnsupportedScheduler, match=match):
        flowode.from_diffusers_scheduler(sched)


def test_set_timesteps_first():
    with pytest.raises(flowode.UnsupportedScheduler, match="set_timesteps"):
        flowode.from_diffusers_scheduler(diffusers.EulerDiscreteScheduler())
    with pytest.raises(TypeError, match="scheduler"):
        flowode.from_diffusers_scheduler(object())


@pytest.mark.parametrize("ratio, top", [(0.995, 1.0), (0.9, 3.0), (0.5, 1.5)])
def test_dynamic_threshold_max_is_diffusers_sample_max_value(ratio, top):
    """EpsilonModel(dynamic_threshold=p, dynamic_threshold_max=m) thresholds x0 as diffusers'
    _threshold_sample(dynamic_thresholding_ratio=p, sample_max_value=m), per sample, exactly."""
    sched = diffusers.DPMSolverMultistepScheduler(thresholding=True, dynamic_thresholding_ratio=ratio,
                                                  sample_max_value=top)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * torch.tensor([0.5, 4.0]).view(2, 1, 1, 1)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64) * torch.tensor([0.6, 5.0]).view(2, 1, 1, 1)

    def net(xx, t):  # an x0 network
        return x0

    model = flowode.EpsilonModel(net, flowode.DiscreteVPSchedule.linear(), prediction="x0",
                                 dynamic_threshold=ratio, dynamic_threshold_max=top)
    pred = model.predict(x, 2.0)
    assert torch.equal(pred.x0, sched._threshold_sample(x0))
    # eps follows the thresholded x0: x = alpha x0 + std eps
    a = float(model.schedule.alpha_from_sigma(2.0))
    assert torch.allclose(a * pred.x0 + a * 2.0 * pred.eps, x, rtol=0, atol=1e-12)


def test_dynamic_threshold_max_needs_the_percentile():
    sched = flowode.DiscreteVPSchedule.linear()
    with pytest.raises(ValueError, match="dynamic_threshold"):
        flowode.EpsilonModel(dummy, sched, dynamic_threshold_max=2.0)
    with pytest.raises(ValueError, match=">= 1"):
        flowode.EpsilonModel(dummy, sched, dynamic_threshold=0.9, dynamic_threshold_max=0.5)
