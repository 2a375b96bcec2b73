"""The core docs run as written: every ``python`` block of docs/quickstart.md, in order, in one
namespace; and the solvers table in docs/solvers.md matches the registry."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_quickstart_runs():
    blocks = _python_blocks(DOCS / "quickstart.md")
    assert len(blocks) >= 6
    env: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, code in enumerate(blocks):
            exec(compile(code, f"quickstart.md[block {i}]", "exec"), env)
    text = out.getvalue()
    assert "999.0" in text and "128" in text


def test_solvers_table_matches_registry():
    from flowode.solvers import SOLVERS

    rows = re.findall(r"^\| `(\w+)` \| (\d)[^|]*\| (\d+) \|", (DOCS / "solvers.md").read_text(), flags=re.M)
    assert {r[0] for r in rows} >= {"ddim", "ddpm", "euler", "midpoint", "heun", "ralston", "rk4", "rk38"}
    for name, order, nfe in rows:
        cls = SOLVERS[name]
        assert (int(order), float(nfe)) == (cls.order, cls.nfe_per_step), name


def test_mkdocs_nav_starts_with_core_pages():
    yml = (DOCS.parent / "mkdocs.yml").read_text()
    pages = re.findall(r"^\s+- [^:]+: (\S+\.md)", yml, flags=re.M)
    assert pages[:4] == ["index.md", "notation.md", "quickstart.md", "solvers.md"]
    for p in pages:
        assert (DOCS / p).exists(), p


@pytest.mark.parametrize("page", ["index.md", "notation.md", "quickstart.md", "solvers.md"])
def test_internal_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", text):
        assert (DOCS / target).exists(), (page, target)
