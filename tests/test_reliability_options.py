"""Reliability (issue 10), solver options: booleans given as strings are parsed, not truthy; a value
of the wrong kind is refused with a message that names the option, the value and what it takes."""

import pytest
import torch

import flowode
from flowode.bench.spec import resolve_solvers
from flowode.solvers import SolverError, make
from flowode.solvers.exponential.unipc import UniPC


@pytest.mark.parametrize("spelling,expected", [
    (False, False), ("False", False), ("false", False), ("0", False), (0, False),
    (True, True), ("True", True), ("true", True), ("1", True), (1, True),
])
def test_boolean_option_spellings(spelling, expected):
    assert make("unipc", corrector=spelling).corrector is expected
    assert make("plms", skip_prk_steps=spelling).skip_prk_steps is expected
    assert UniPC(corrector=spelling).corrector is expected  # direct construction checks too


@pytest.mark.parametrize("value", ["no", "yes", "off", 2, 0.5, "", None])
def test_boolean_option_refuses_other_values(value):
    with pytest.raises(SolverError, match=r"`skip_prk_steps` of 'plms' must be a boolean.*True or False"):
        make("plms", skip_prk_steps=value)


def test_string_false_turns_the_corrector_off():
    """The silent-wrong case: ``corrector='False'`` ran the corrector."""
    sched = flowode.LinearVPSchedule()
    model = flowode.analytic.gmm_ring().model(sched)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    off = flowode.sample(model, x, steps=6, solver="unipc", corrector=False)
    on = flowode.sample(model, x, steps=6, solver="unipc", corrector=True)
    as_string = flowode.sample(model, x, steps=6, solver="unipc", corrector="False")
    assert torch.equal(as_string.x, off.x) and not torch.equal(on.x, off.x)


def test_cli_spec_string_booleans_are_parsed():
    ok, missing = resolve_solvers(["unipc[corrector=False]", "plms[skip_prk_steps=true]", "unipc[corrector=0]"])
    assert not missing
    assert ok == [("unipc", {"corrector": False}), ("plms", {"skip_prk_steps": True}), ("unipc", {"corrector": False})]


@pytest.mark.parametrize("spec,pattern", [
    ("ddim[eta=abc]", r"option `eta` of 'ddim' must be a number, e.g. eta=0.5; got 'abc'"),
    ("ipndm[order=2.5]", r"option `order` of 'ipndm' must be an integer.*got 2.5"),
    ("unipc[corrector=maybe]", r"option `corrector` of 'unipc' must be a boolean.*got 'maybe'"),
    ("dopri5[rtol=tight]", r"option `rtol` of 'dopri5' must be a number.*got 'tight'"),
    ("ddpm[variance=3]", r"option `variance` of 'ddpm' must be a string.*got 3"),
])
def test_wrong_kind_of_value_names_option_value_and_fix(spec, pattern):
    with pytest.raises(SolverError, match=pattern):
        resolve_solvers([spec])


def test_numbers_still_work():
    assert make("ddim", eta=1).eta == 1.0 and isinstance(make("ddim", eta=1).eta, float)
    assert make("ipndm", order=3.0).order == 3
    assert make("dopri5", max_nfe=None).max_nfe is None
    assert make("unipc", disable_corrector=[0, 2]).disable_corrector == (0, 2)
