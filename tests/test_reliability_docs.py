"""docs/common-mistakes.md, section "Python API": every quoted call raises or warns with exactly
the message quoted under it (the page shows each message as the user sees it)."""

import math
import re
import warnings
from pathlib import Path

import pytest
import torch

import flowode

PAGE = Path(__file__).resolve().parents[1] / "docs" / "common-mistakes.md"
MESSAGE = re.compile(r"^    (\w+(?:Error|Warning)): (.*)$")


def _python_section() -> str:
    text = PAGE.read_text()
    start = text.index("## Python API")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _cases() -> list[tuple[str, str, str]]:
    """(code, expected class, expected message) for each quoted call followed by a message."""
    out, code = [], None
    for line in _python_section().splitlines():
        m = MESSAGE.match(line)
        if m and code is not None:
            out.append((code, m.group(1), m.group(2)))
            code = None
        elif line.startswith("    flowode."):
            code = line.strip().split("    #")[0].strip()
    return out


def _namespace() -> dict:
    sched = flowode.DiscreteVPSchedule.linear()
    ring = flowode.analytic.gmm_ring()
    return {
        "math": math, "torch": torch, "flowode": flowode, "sched": sched, "gmm_ring": flowode.analytic.gmm_ring,
        "model": ring.model(sched), "x": torch.randn(64, 2, generator=torch.Generator().manual_seed(0)),
        "net": lambda x, t: x, "network_model": flowode.EpsilonModel(lambda x, t: x * 0, sched),
    }


CASES = _cases()


def test_the_page_quotes_every_area():
    assert len(CASES) >= 20
    kinds = {c for _, c, _ in CASES}
    assert {"SolverError", "GridError", "NetworkOutputError", "ValueError", "WarmupWarning",
            "PriorScaleWarning"} <= kinds


@pytest.mark.parametrize("code,kind,message", CASES, ids=[c[0][:60] for c in CASES])
def test_quoted_message_is_what_the_user_sees(code, kind, message):
    ns = _namespace()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            eval(code, ns)
        except Exception as exc:  # noqa: BLE001 - the page quotes errors of several types
            assert (type(exc).__name__, str(exc)) == (kind, message)
            return
    seen = [(w.category.__name__, str(w.message)) for w in caught]
    assert (kind, message) in seen, seen


def test_latent_stats_reason_as_quoted():
    st = flowode.latent_stats(torch.tensor([[math.nan, 0.0]] * 8))
    assert st.off_distribution and st.reasons == ["8 of 16 coordinates are NaN/Inf"]
    assert "`reasons == ['8 of 16 coordinates are NaN/Inf']`" in _python_section()
