"""The dtype policy: the network in bfloat16 / float16 while the state, conversions and levels stay
float32 / float64 (``EpsilonModel(network_dtype=)``, ``cast_network``), and its guard at zero
terminal SNR."""

from __future__ import annotations

import pytest
import torch

import flowode
from flowode.solvers import SOLVERS

#: the documented tolerance (docs/scale-out.md, benchmarks/sections/dtype.md): rms(x_bf16 - x_f32) / rms(x_f32)
BF16_REL_RMS = 5e-2


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def test_network_sees_its_dtype_and_the_solver_keeps_float32() -> None:
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x.dtype, t.dtype))
        return 0.1 * x

    sched = flowode.DiscreteVPSchedule.linear()
    model = flowode.EpsilonModel(fn, sched, network_dtype=torch.bfloat16)
    x = model.prior_sample((4, 3), seed=0)
    sol = flowode.sample(model, x, 3, solver="dpm_solver++_2m")
    assert sol.x.dtype == torch.float32
    assert seen and all(s == (torch.bfloat16, torch.float32) for s in seen)  # t is never rounded to bf16
    # guidance with two calls: both see bf16, the combination is in float32
    seen.clear()
    guided = flowode.EpsilonModel(fn, sched, guidance_scale=2.0, uncond_fn=fn, network_dtype=torch.float16)
    assert guided.predict(x, 1.0).eps.dtype == torch.float32
    assert seen == [(torch.float16, torch.float32)] * 2


def test_bad_settings_are_refused() -> None:
    sched = flowode.DiscreteVPSchedule.linear()
    with pytest.raises(TypeError, match="network_dtype"):
        flowode.EpsilonModel(lambda x, t: x, sched, network_dtype=torch.int8)
    model = flowode.EpsilonModel(lambda x, t: x, sched, network_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="keep the state .* in float32 or float64"):
        model.predict(torch.zeros(2, 2, dtype=torch.bfloat16), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        model.cast_network(torch.int32)


def test_cast_network_copies_the_weights() -> None:
    f32 = flowode.load_pretrained("ring8")
    bf16 = f32.cast_network(torch.bfloat16)
    assert next(f32.fn.parameters()).dtype == torch.float32  # type: ignore[attr-defined]
    assert next(bf16.fn.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert bf16.network_dtype == torch.bfloat16 and f32.network_dtype is None


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_zero_terminal_snr_with_a_bf16_network(prediction: str) -> None:
    sched = flowode.DiscreteVPSchedule.linear(zero_terminal_snr=True)
    model = flowode.EpsilonModel(lambda x, t: 0.1 * x, sched, prediction, network_dtype=torch.bfloat16)
    x = model.prior_sample((8, 2), seed=0)
    if prediction == "eps":
        with pytest.raises(ValueError, match="zero terminal SNR .* v- or x0-prediction"):
            flowode.sample(model, x, 5, solver="ddim")
    else:
        sol = flowode.sample(model, x, 5, solver="heun")
        assert sol.x.dtype == torch.float32 and bool(torch.isfinite(sol.x).all())


FIXED = [n for n, c in sorted(SOLVERS.items()) if not c.stochastic and not c.adaptive]


def test_bf16_within_the_documented_tolerance_for_every_fixed_step_solver() -> None:
    f32 = flowode.load_pretrained("ring8")
    bf16 = f32.cast_network(torch.bfloat16)
    x = f32.prior_sample((64, 2), seed=0)
    worst = {}
    for name in FIXED:
        a = flowode.sample(f32, x, nfe=20, solver=name).x
        b = flowode.sample(bf16, x, nfe=20, solver=name).x
        worst[name] = _rms(b - a) / _rms(a)
    assert len(FIXED) >= 18
    assert max(worst.values()) < BF16_REL_RMS, worst


@pytest.mark.parametrize("name", ["bs23", "dopri5"])
def test_bf16_adaptive(name: str) -> None:
    f32 = flowode.load_pretrained("ring8")
    x = f32.prior_sample((64, 2), seed=0)
    a = flowode.sample(f32, x, 1, solver=name, rtol=1e-3, atol=1e-3).x
    b = flowode.sample(f32.cast_network(torch.bfloat16), x, 1, solver=name, rtol=1e-3, atol=1e-3).x
    assert _rms(b - a) / _rms(a) < BF16_REL_RMS


def test_docs_example_runs() -> None:
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "scale-out.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, str(page), "exec"), {})
