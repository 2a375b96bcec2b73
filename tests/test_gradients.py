"""Gradient modes of integrate (issue 12, item 3): autograd, checkpoint, truncated (DRaFT-K),
adjoint; gradients with respect to the start state, the network's parameters and a guidance scale,
checked across modes and against central finite differences in float64."""

import math

import pytest
import torch
from torch import nn

import flowode


class TinyNet(nn.Module):
    """eps(x, t): a smooth two-layer network with a time feature (float64)."""

    def __init__(self, dim: int = 3, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(dim + 1, hidden, generator=g, dtype=torch.float64) * 0.5)
        self.w2 = nn.Parameter(torch.randn(hidden, dim, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, x, t):
        h = torch.tanh(torch.cat([x, (t / 1000.0)[:, None].to(x)], 1) @ self.w1)
        return h @ self.w2 + 0.3 * x


def guided_model(scale, sched=None):
    sched = flowode.DiscreteVPSchedule.linear() if sched is None else sched
    cond, uncond = TinyNet(seed=0), TinyNet(seed=1)
    return flowode.EpsilonModel(cond, sched, guidance_scale=scale, uncond_fn=uncond), cond, uncond


def start(n=4):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def loss_and_grads(mode, solver="ddim", steps=10, **kw):
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    model, cond, uncond = guided_model(scale)
    x = start().requires_grad_(True)
    params = [scale, *cond.parameters(), *uncond.parameters()]
    sol = flowode.sample(model, x, steps=steps, solver=solver, grad=mode, **kw)
    loss = (sol.x**2).sum() + sol.x.sum()
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return float(loss.detach()), grads


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpm_solver++_2m"])
def test_checkpoint_equals_autograd(solver):
    want_loss, want = loss_and_grads("autograd", solver)
    for seg in (None, 1, 3):
        loss, got = loss_and_grads("checkpoint", solver, grad_segment=seg)
        assert loss == want_loss
        for g, w in zip(got, want):
            assert rel(g, w) < 1e-12  # the same arithmetic, recomputed


def test_truncated_is_backprop_through_the_last_k_steps():
    want_loss, full = loss_and_grads("autograd")
    loss, same = loss_and_grads("truncated", grad_steps=10)
    assert loss == want_loss and all(rel(g, w) < 1e-12 for g, w in zip(same, full))
    # K = 3: the same as autograd from the (constant) state three steps before the end
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    model, cond, uncond = guided_model(scale)
    grid = flowode.sigma_grid(model.schedule, 10)
    with torch.no_grad():
        mid = flowode.integrate(model, start(), grid[:8]).x
    sol = flowode.integrate(model, mid, grid[7:], grad="autograd")
    params = [scale, *cond.parameters()]
    want = torch.autograd.grad((sol.x**2).sum() + sol.x.sum(), params)
    sol = flowode.integrate(model, start(), grid, grad="truncated", grad_steps=3)
    got = torch.autograd.grad((sol.x**2).sum() + sol.x.sum(), params)
    assert all(rel(g, w) < 1e-12 for g, w in zip(got, want))


def test_autograd_matches_central_finite_differences():
    _, grads = loss_and_grads("autograd", "heun")
    gx, gscale, gw1 = grads[0], grads[1], grads[2]
    h = 1e-6

    def loss_at(x=None, scale=2.0, dw=None):
        model, cond, _ = guided_model(torch.tensor(scale, dtype=torch.float64))
        if dw is not None:
            with torch.no_grad():
                cond.w1 += dw
        sol = flowode.sample(model, start() if x is None else x, steps=10, solver="heun")
        return float((sol.x**2).sum() + sol.x.sum())

    fd_scale = (loss_at(scale=2.0 + h) - loss_at(scale=2.0 - h)) / (2 * h)
    assert abs(fd_scale - float(gscale)) < 1e-6 * max(1.0, abs(fd_scale))
    d = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    fd_x = (loss_at(start() + h * d) - loss_at(start() - h * d)) / (2 * h)
    assert abs(fd_x - float((gx * d).sum())) < 1e-6 * max(1.0, abs(fd_x))
    dw = torch.randn_like(gw1)
    fd_w = (loss_at(dw=h * dw) - loss_at(dw=-h * dw)) / (2 * h)
    assert abs(fd_w - float((gw1 * dw).sum())) < 1e-6 * max(1.0, abs(fd_w))


def test_adjoint_matches_autograd_to_its_tolerance():
    def grads(mode):
        scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        model, cond, uncond = guided_model(scale, flowode.LinearVPSchedule())
        params = (scale, *cond.parameters(), *uncond.parameters())
        x = start().requires_grad_(True)
        extra = {"adjoint_params": params} if mode == "adjoint" else {}
        sol = flowode.integrate(model, x, [50.0, 0.5], solver="dopri5", rtol=1e-9, atol=1e-9, grad=mode, **extra)
        return sol, torch.autograd.grad((sol.x**2).sum() + sol.x.sum(), [x, *params])

    (sol_a, want), (sol_b, got) = grads("autograd"), grads("adjoint")
    assert torch.equal(sol_a.x, sol_b.x)  # the same forward solve
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-6  # measured 5e-9


def test_autograd_through_torchdiffeq_is_not_biased_by_its_initial_step():
    """torchdiffeq's initial-step heuristic used to sit in the graph: 0.5 % off at rtol 1e-10."""
    sched = flowode.LinearVPSchedule()
    d = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def loss(x, grad=None):
        model, _, _ = guided_model(torch.tensor(2.0, dtype=torch.float64), sched)
        sol = flowode.integrate(model, x, [50.0, 0.5], solver="dopri5", rtol=1e-10, atol=1e-10, grad=grad)
        return (sol.x**2).sum() + sol.x.sum()

    h = 1e-5
    fd = float((loss(start() + h * d) - loss(start() - h * d)) / (2 * h))
    x = start().requires_grad_(True)
    out = loss(x, "autograd")
    assert float(out.detach()) == float(loss(start()))  # the same trajectory as without a graph
    (g,) = torch.autograd.grad(out, [x])
    assert abs(float((g * d).sum()) - fd) < 1e-7 * abs(fd)  # measured 7e-10


def test_gradient_options_are_checked():
    model, cond, _ = guided_model(2.0)
    x = start()
    with pytest.raises(ValueError, match="adjoint_params"):
        flowode.integrate(model, x, [50.0, 0.5], solver="dopri5", grad="adjoint")
    with pytest.raises(flowode.SolverError, match="torchdiffeq"):
        flowode.sample(model, x, steps=5, grad="adjoint", adjoint_params=())
    with pytest.raises(flowode.SolverError, match="fixed grids"):
        flowode.integrate(model, x, [50.0, 0.5], solver="dopri5", grad="checkpoint")
    with pytest.raises(ValueError, match="grad_steps"):
        flowode.sample(model, x, steps=5, grad="truncated")
    with pytest.raises(ValueError, match="grad_segment"):
        flowode.sample(model, x, steps=5, grad="autograd", grad_segment=2)
    with pytest.raises(flowode.SolverError, match="bdia_sample"):
        flowode.sample(model, x, steps=5, grad="reversible")
    with pytest.raises(ValueError, match="positive integer"):
        flowode.sample(model, x, steps=5, grad="checkpoint", grad_segment=0)
    assert math.isfinite(float(flowode.sample(model, x, steps=5, grad="checkpoint").x.detach().sum()))


def test_reversible_bdia_equals_backprop_to_round_off():
    def grads(mode, gamma=1.0):
        scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        model, cond, uncond = guided_model(scale)
        params = (scale, *cond.parameters(), *uncond.parameters())
        z = start().requires_grad_(True)
        grid = flowode.sigma_grid(model.schedule, 12)
        out = flowode.gradients.bdia_sample(model, z, grid, gamma, grad=mode, params=params)
        return out, torch.autograd.grad((out**2).sum() + out.sum(), [z, *params])

    # measured 2.6e-14 (gamma = 1) and 7e-11 (gamma = 0.5: the inverse divides by gamma at every step,
    # so the reconstruction's round-off grows like gamma^-k)
    for gamma, tol in ((1.0, 1e-12), (0.5, 1e-9)):
        (xa, want), (xb, got) = grads("autograd", gamma), grads("reversible", gamma)
        assert torch.equal(xa, xb)
        for g, w in zip(got, want):
            assert rel(g, w) < tol, gamma
    # the same map as the inverter's decode
    model, _, _ = guided_model(2.0)
    grid = flowode.sigma_grid(model.schedule, 12)
    ref = flowode.invert.bdia_decode(model, flowode.invert.BdiaLatent(start(), None), grid)
    assert torch.equal(flowode.gradients.bdia_sample(model, start(), grid), ref)


def test_reversible_bdia_matches_finite_differences():
    model, cond, _ = guided_model(2.0)
    grid = flowode.sigma_grid(model.schedule, 8)
    z = start().requires_grad_(True)
    out = flowode.gradients.bdia_sample(model, z, grid, grad="reversible", params=tuple(cond.parameters()))
    gz, gw1, _ = torch.autograd.grad((out**2).sum(), [z, *cond.parameters()])
    d = torch.randn(4, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    h = 1e-6

    def loss(zz):
        return float((flowode.gradients.bdia_sample(model, zz, grid) ** 2).sum())

    fd = (loss(start() + h * d) - loss(start() - h * d)) / (2 * h)
    assert abs(fd - float((gz * d).sum())) < 1e-6 * abs(fd)
    dw = torch.randn_like(gw1)
    with torch.no_grad():
        cond.w1 += h * dw
        up = loss(start())
        cond.w1 -= 2 * h * dw
        down = loss(start())
        cond.w1 += h * dw
    fd_w = (up - down) / (2 * h)
    assert abs(fd_w - float((gw1 * dw).sum())) < 1e-6 * max(1.0, abs(fd_w))
    with pytest.raises(ValueError, match="reversible"):
        flowode.gradients.bdia_sample(model, start(), grid, grad="adjoint")


def test_docs_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "gradients.md").read_text()
    blocks = re.findall(r"<!-- example: gradients -->\n```python\n(.*?)```", text, flags=re.S)
    assert blocks
    exec(compile("\n".join(blocks), "docs/gradients.md", "exec"), {})


def test_reversible_edict_equals_backprop_to_round_off():
    def grads(mode):
        scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        model, cond, uncond = guided_model(scale)
        params = (scale, *cond.parameters(), *uncond.parameters())
        z = start().requires_grad_(True)
        grid = flowode.sigma_grid(model.schedule, 12)
        out = flowode.gradients.edict_sample(model, z, grid, grad=mode, params=params)
        return out, torch.autograd.grad((out**2).sum() + out.sum(), [z, *params])

    (xa, want), (xb, got) = grads("autograd"), grads("reversible")
    assert torch.equal(xa, xb)
    for g, w in zip(got, want):
        assert rel(g, w) < 1e-12  # measured 3e-15
    model, _, _ = guided_model(2.0)
    grid = flowode.sigma_grid(model.schedule, 12)
    ref = flowode.invert.edict_decode(model, flowode.invert.EdictLatent(start(), start()), grid, accumulate=False)
    assert torch.equal(flowode.gradients.edict_sample(model, start(), grid), ref.x)
    with pytest.raises(ValueError, match="EDICT mixing"):
        flowode.gradients.edict_sample(model, start(), grid, p=0.0)


def test_checkpoint_replays_the_noise_of_stochastic_solvers():
    """A recomputed segment draws the same noise as the forward pass (the caller's generator too)."""
    def grads(mode, **kw):
        scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        model, cond, _ = guided_model(scale)
        x = start().requires_grad_(True)
        sol = flowode.sample(model, x, steps=9, solver="ddpm", grad=mode,
                             generator=torch.Generator().manual_seed(7), **kw)
        return sol.x, torch.autograd.grad((sol.x**2).sum(), [x, scale, *cond.parameters()])

    (xa, want), (xb, got) = grads("autograd"), grads("checkpoint", grad_segment=2)
    assert torch.equal(xa, xb)
    assert all(rel(g, w) < 1e-12 for g, w in zip(got, want))
