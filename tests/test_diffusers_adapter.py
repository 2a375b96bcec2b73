"""flowode.from_diffusers against diffusers' own DDIM loop on a tiny random UNet2DModel (float32)."""

import pytest
import torch

import flowode
from flowode.adapters import diffusers_schedule, diffusers_sigmas

diffusers = pytest.importorskip(
    "diffusers", reason="diffusers is not installed: `pip install flowode[diffusers]` to run the adapter tests"
)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4,
    ).eval()
    return net


def _diffusers_ddim(unet, scheduler, noise, steps):
    scheduler.set_timesteps(steps)
    x = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(x, t).sample
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
    return x


CASES = [
    dict(prediction_type="epsilon", timestep_spacing="leading", steps_offset=1),
    dict(prediction_type="epsilon", timestep_spacing="trailing", set_alpha_to_one=False),
    dict(prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True),
    dict(prediction_type="sample", timestep_spacing="leading", beta_schedule="scaled_linear",
         beta_start=0.00085, beta_end=0.012),
    dict(prediction_type="epsilon", timestep_spacing="trailing", beta_schedule="squaredcos_cap_v2"),
]
# Not "linspace": diffusers' DDIMScheduler.step always lands on t - N // steps, which is not the next
# timestep of a linspace grid, so its loop is not a DDIM discretisation of any one sigma grid.


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c['prediction_type']}-{c['timestep_spacing']}")
def test_ddim_matches_diffusers(unet, cfg):
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, **cfg)
    steps = 10
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _diffusers_ddim(unet, sched, noise, steps)
    model = flowode.from_diffusers(unet, sched)
    sigmas = diffusers_sigmas(sched, steps)
    with torch.no_grad():
        sol = flowode.integrate(model, noise, sigmas, solver="ddim")
    assert sol.x.dtype == torch.float32
    assert sol.nfe == steps
    assert torch.isfinite(ref).all()
    # a random eps network drives x0 far from [-1, 1] (|x| up to a few hundred), so compare relative to
    # the size of the result: float32 round-off is ~6e-8 of it per operation
    scale = max(1.0, float(ref.abs().max()))
    err = float((sol.x - ref).abs().max()) / scale
    assert err < 1e-5, f"max |flowode - diffusers| / max(1, max|x|) = {err:.3g}"
    # the result really depends on the network (not just the noise)
    assert float((ref - noise).abs().max()) > 1e-2


def test_schedule_and_prediction_mapping():
    s = diffusers.DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    sched = diffusers_schedule(s)
    assert sched.zero_terminal_snr and sched.num_timesteps == 1000
    abar = sched.alphas_cumprod_knots
    assert torch.allclose(abar, s.alphas_cumprod.to(torch.float64), rtol=1e-6, atol=1e-12)
    model = flowode.from_diffusers(lambda x, t: (x,), s)
    assert model.prediction == "v"
    # tuple output and integer knots: t reaches the network as exact integers
    seen = []

    def net(x, t):
        seen.append(t.clone())
        return (torch.zeros_like(x),)

    m = flowode.from_diffusers(net, diffusers.DDPMScheduler())
    flowode.integrate(m, torch.randn(2, 4), diffusers_sigmas(diffusers.DDIMScheduler(), 5), solver="ddim")
    ts = torch.cat(seen)
    assert torch.equal(ts, ts.round()) and ts.dtype == torch.float32


def test_bad_prediction_type():
    s = diffusers.DDIMScheduler()
    s.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type"):
        flowode.from_diffusers(lambda x, t: x, s)
    with pytest.raises(TypeError, match="scheduler"):
        flowode.from_diffusers(lambda x, t: x, object())
