"""The worked examples of docs/contributing.md run exactly as documented.

The code is not copied here: every fenced ``python`` block that follows a ``<!-- example: NAME -->``
marker in the page is extracted, and the blocks of one example are executed in order in one fresh
namespace (they end with ``assert``s on the numbers the page quotes). Whatever an example registers
(solvers, tableaux) is removed afterwards, so the registry-wide tests never see it.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import flowode
from flowode.solvers import SOLVERS, TABLEAUS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"
MARKED = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", flags=re.S)


def _examples() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, code in MARKED.findall(PAGE.read_text()):
        out.setdefault(name, []).append(code)
    return out


@contextlib.contextmanager
def _registry_restored() -> Iterator[None]:
    solvers, tableaus = set(SOLVERS), set(TABLEAUS)
    try:
        yield
    finally:
        for name in set(SOLVERS) - solvers:
            SOLVERS.pop(name)
        for name in set(TABLEAUS) - tableaus:
            TABLEAUS.pop(name)


def _run(name: str) -> tuple[dict[str, Any], str]:
    env: dict[str, Any] = {"__name__": f"contributing_example_{name}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, code in enumerate(_examples()[name]):
            exec(compile(code, f"docs/contributing.md[example {name}, block {i}]", "exec"), env)
    return env, out.getvalue()


def test_page_has_the_three_examples_and_is_in_the_nav():
    examples = _examples()
    assert sorted(examples) == ["a", "b", "c"], sorted(examples)
    assert [len(examples[k]) for k in "abc"] == [3, 2, 2]
    # every python block of the page is part of an example (nothing documented runs untested)
    assert len(re.findall(r"```python\n", PAGE.read_text())) == sum(len(v) for v in examples.values())
    assert re.search(r"^\s+- [^:]+: contributing\.md$", (PAGE.parents[1] / "mkdocs.yml").read_text(), flags=re.M)


@pytest.mark.parametrize("name", ["a", "b", "c"])
def test_example_runs_as_documented(name):
    with _registry_restored():
        env, out = _run(name)
        if name == "a":
            assert SOLVERS["my_heun3"].nfe_per_step == 3.0 and not SOLVERS["my_heun3"].adaptive
            assert SOLVERS["my_heun_euler"].adaptive and TABLEAUS["my_heun_euler"].error_order == 1
            assert "sigma" in out and "NFE^" in out
        elif name == "b":
            assert SOLVERS["my_eps_ab2"] is env["EpsAB2"] and "order" in out
        else:
            assert isinstance(env["sched"], flowode.Schedule) and env["sched"].sigma_max == pytest.approx(80.0)
    assert not {"my_heun3", "my_heun_euler", "my_eps_ab2"} & set(SOLVERS)
    assert not {"my_heun3", "my_heun_euler"} & set(TABLEAUS)


def test_example_b_equals_diffusers():
    """The from-scratch noise-prediction 2-step method of example (b) is diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver", solver_order=2, solver_type="midpoint")``
    (float64 tables, exact Gaussian-mixture eps, grids ending at sigma_min)."""
    diffusers = pytest.importorskip("diffusers")
    from flowode.analytic import gmm_random

    sched = flowode.DiscreteVPSchedule.linear(1000, 1e-4, 0.02)
    gmm = gmm_random(dim=6, k=5, std=0.4, seed=1)
    with _registry_restored():
        _run("b")
        for n in (5, 10, 20):
            for spacing in ("linspace", "trailing"):
                with warnings.catch_warnings():  # diffusers deprecates the noise-prediction form
                    warnings.simplefilter("ignore", FutureWarning)
                    sch = diffusers.DPMSolverMultistepScheduler(
                        num_train_timesteps=1000, trained_betas=sched.betas.numpy(), algorithm_type="dpmsolver",
                        solver_order=2, solver_type="midpoint", lower_order_final=False,
                        final_sigmas_type="sigma_min", timestep_spacing=spacing)
                abar = sched.alphas_cumprod_knots.clone()  # float64 tables in place of diffusers' float32 ones
                sch.alphas_cumprod, sch.alpha_t, sch.sigma_t = abar, abar.sqrt(), (1 - abar).sqrt()
                sch.lambda_t = sch.alpha_t.log() - sch.sigma_t.log()
                sch.set_timesteps(n)
                grid = flowode.sigmas_from_timesteps(sched, sch.timesteps.numpy(), "min")
                sch.sigmas = grid
                x_T = torch.randn(16, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
                x_T = x_T * float(sched.std_from_sigma(float(grid[0])))
                ref = x_T.clone()
                for i, t in enumerate(sch.timesteps):
                    s = float(grid[i])
                    eps = gmm.eps(ref, s, float(sched.alpha_from_sigma(s)))
                    ref = sch.step(eps, t, _Float64(ref)).prev_sample.as_subclass(torch.Tensor)
                ours = flowode.integrate(gmm.model(sched), x_T, grid, solver="my_eps_ab2").x
                diff = float((ours - ref).abs().max())
                assert diff < 1e-12 and math.isfinite(diff), (n, spacing, diff)


class _Float64(torch.Tensor):
    """``DPMSolverMultistepScheduler.step`` casts the sample to float32; this keeps it float64."""

    def __new__(cls, data: torch.Tensor) -> "_Float64":
        return data.as_subclass(cls)

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if (args and args[0] is torch.float32) or kwargs.get("dtype") is torch.float32:
            return self
        return super().to(*args, **kwargs)
