"""Networks (shapes, contract), data, and the k-diffusion denoiser wrapper."""

import pytest
import torch

import flowode
from flowode.data import TOYS, digits_to_pixels, load_digits, toy_2d
from flowode.nets import MLP, UNet, build_network, describe, timestep_embedding


def _unzero(net):
    """Give the zero-initialised output layers random weights so every path is exercised."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)) and m.weight.abs().sum() == 0:
            torch.nn.init.normal_(m.weight, std=0.1)
    return net


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0.0, 1.0, 999.0]), 16)
    assert e.shape == (3, 16)
    assert torch.allclose(e[0, :8], torch.ones(8)) and torch.allclose(e[0, 8:], torch.zeros(8))
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(torch.zeros(2), 5)


def test_mlp_shapes_and_zero_init():
    net = MLP(dim=2, hidden=32, depth=2)
    x, t = torch.randn(5, 2), torch.rand(5) * 999
    out = net(x, t)
    assert out.shape == (5, 2) and torch.all(out == 0)  # zero-initialised output layer
    torch.nn.init.normal_(net.out.weight)
    assert net(x, t).abs().sum() > 0
    # float64 state on a float32 network: cast in, cast back
    assert net(x.double(), t.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="one timestep per sample"):
        net(x, torch.zeros(3))


@pytest.mark.parametrize("shape,mults", [((2, 1, 8, 8), (1, 2)), ((2, 1, 28, 28), (1, 2, 2)), ((2, 1, 7, 7), (1, 2))])
def test_unet_shapes(shape, mults):
    torch.manual_seed(0)
    net = _unzero(UNet(base_channels=8, channel_mults=mults))
    x = torch.randn(*shape)
    out = net(x, torch.tensor([3.0, 500.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the time embedding matters
    assert not torch.allclose(out, net(x, torch.tensor([900.0, 10.0])))
    # exactly one attention block, at the lowest resolution
    attn = [m for m in net.modules() if type(m).__name__ == "SelfAttention"]
    assert len(attn) == 1


def test_unet_conditional_and_rebuild():
    torch.manual_seed(0)
    net = _unzero(UNet(base_channels=8, num_classes=10))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 100.0)
    a = net(x, t, torch.tensor([1, 2, 3]))
    b = net(x, t)  # no label = the null class
    assert torch.equal(b, net(x, t, torch.full((3,), 10)))
    assert not torch.allclose(a, b)
    twin = build_network(describe(net))
    twin.load_state_dict(net.state_dict())
    assert torch.equal(twin(x, t), b)
    with pytest.raises(ValueError, match="num_classes"):
        UNet(base_channels=8)(x, t, torch.zeros(3, dtype=torch.long))


def test_nets_in_epsilon_model():
    net = UNet(base_channels=8)
    model = flowode.EpsilonModel(net, flowode.DiscreteVPSchedule.linear())
    x = flowode.sample(model, torch.randn(4, 1, 8, 8), steps=3, solver="ddim").x
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("name", list(TOYS))
def test_toys(name):
    a = toy_2d(name, 500, generator=torch.Generator().manual_seed(0))
    b = toy_2d(name, 500, generator=torch.Generator().manual_seed(0))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.abs().max() < 4 and a.std() > 0.3


def test_toy_ring8_is_the_analytic_mixture():
    g = torch.Generator().manual_seed(0)
    a = toy_2d("ring8", 100, generator=g, dtype=torch.float64)
    ref = flowode.analytic.gmm_ring().sample(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, ref)
    with pytest.raises(ValueError, match="unknown toy"):
        toy_2d("spiral", 10)


def test_digits():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed: `pip install flowode[data]`")
    x, y = load_digits(return_labels=True)
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    from sklearn.datasets import load_digits as sk

    assert torch.allclose(digits_to_pixels(x), torch.as_tensor(sk().data, dtype=torch.float64))


# ------------------------------------------------------------------------------------------ denoiser
def _eps_net(x, t):
    # a smooth nonlinear "network" of (x, t)
    return torch.tanh(x * (1 + t[:, None] / 1000)) * 0.9 + 0.05 * torch.sin(3 * x)


@pytest.mark.parametrize("steps", [5, 12])
def test_denoiser_model_equals_eps_model(steps):
    sched = flowode.DiscreteVPSchedule.linear()
    eps_model = flowode.EpsilonModel(_eps_net, sched)

    def denoiser(xbar, sigma):  # D(xbar, sigma) = xbar - sigma * eps(alpha * xbar, t(sigma)) (VE picture)
        s = sigma.to(torch.float64)
        t = torch.as_tensor(sched.t(s)).to(xbar)
        alpha = torch.rsqrt(1 + s * s).to(xbar)[:, None]
        return xbar - sigma[:, None] * _eps_net(alpha * xbar, t)

    d_model = flowode.DenoiserModel(denoiser, sched)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = flowode.sample(eps_model, x, steps=steps, solver="ddim")
    b = flowode.sample(d_model, x, steps=steps, solver="ddim")
    assert b.nfe == a.nfe == steps
    assert torch.allclose(a.x, b.x, rtol=1e-10, atol=1e-10)
    # heun (2nd order) too, and encoding (first call at sigma = 0)
    assert torch.allclose(flowode.sample(eps_model, x, steps=steps, solver="heun").x,
                          flowode.sample(d_model, x, steps=steps, solver="heun").x, rtol=1e-9, atol=1e-9)
    assert torch.allclose(flowode.encode(eps_model, a.x, steps=steps).x,
                          flowode.encode(d_model, a.x, steps=steps).x, rtol=1e-8, atol=1e-8)


def test_denoiser_model_on_edm_schedule_is_exact_for_a_gaussian():
    # EDM / k-diffusion view: D(x, sigma) of N(mu, s^2) data is exact: mu + s^2 / (s^2 + sigma^2) (x - mu)
    mu, s = 0.5, 0.3
    sched = flowode.EDMSchedule()
    model = flowode.DenoiserModel(lambda x, sig: mu + (s**2 / (s**2 + sig[:, None] ** 2)) * (x - mu), sched)
    g = flowode.Gaussian([mu, mu], s)
    x = torch.randn(8, 2, dtype=torch.float64) * 80.0
    sol = flowode.sample(model, x, steps=200, solver="heun", spacing="karras", final="min")
    exact = g.flow(x, float(sol.sigmas[0]), float(sol.sigmas[-1]), sched)
    # Heun's global error from sigma = 80 (|x| ~ 100) with 200 Karras steps is ~3e-4 here
    assert torch.allclose(sol.x, exact, atol=1e-3)
    assert float((sol.x - exact).abs().max()) < 0.25 * float(
        (flowode.sample(model, x, steps=100, solver="heun", spacing="karras", final="min").x - exact).abs().max())
    with pytest.raises(TypeError, match="denoiser"):
        flowode.DenoiserModel(3, sched)


def test_digits_without_sklearn_names_the_fix(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digits()
