"""``flowode solvers``: list every registered solver with its claimed order (and, with ``-v``, the
conditions it holds under: :mod:`flowode.solvers.claims`), NFE per step, options and source."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("solvers", help="list registered solvers (claimed order, NFE per step, source)",
                       description="List every registered solver: name, claimed order with its default options "
                                   "(every claim, e.g. '2 / 4 (uniform sigma)'), NFE per step, kind (S = stochastic, "
                                   "A = adaptive, M = multistep), source; with -v each claim's conditions and the "
                                   "options with their defaults.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--markdown", action="store_true",
                   help="print the order claims as the Markdown table of docs/solvers.md (one row per claim)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also show each order claim's conditions and each solver's options")
    return p


def _info(name: str, cls: Any) -> dict[str, Any]:
    nfe = "adaptive" if getattr(cls, "adaptive", False) or math.isnan(cls.nfe_per_step) else f"{cls.nfe_per_step:g}"
    opts = {}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only is True):  # the common last_step: last
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        opts[f.name] = default
    stoch = cls.__dict__.get("stochastic", getattr(cls, "stochastic", False))
    kind = "".join(k for k, flag in (("S", stoch is True), ("A", getattr(cls, "adaptive", False)),
                                     ("M", getattr(cls, "multistep", False))) if flag)
    claims = cls().order_claims()
    return {"name": name, "order": " / ".join(c.short() for c in claims) or "no claim",
            "order_claims": [{**dataclasses.asdict(c), "text": c.text(), "short": c.short()} for c in claims],
            "nfe_per_step": nfe, "kind": kind, "options": opts, "source": cls.source}


def run(args: argparse.Namespace) -> int:
    from ..solvers import SOLVERS
    from ..solvers.claims import COMMON_CONDITIONS

    rows = [_info(n, SOLVERS[n]) for n in sorted(SOLVERS)]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    if args.markdown:
        print("| solver | order | claim and conditions (default options) |\n|---|---|---|")
        for r in rows:
            for c in r["order_claims"] or [{"text": "no order claim", "short": "none"}]:
                print(f"| `{r['name']}` | {c['short']} | {c['text']} |")
        return 0
    cols = [("solver", "name"), ("order", "order"), ("NFE/step", "nfe_per_step"), ("kind", "kind")]
    w = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in cols]
    print("  ".join(f"{h:<{w[i]}}" for i, (h, _) in enumerate(cols)) + "  source")
    for r in rows:
        print("  ".join(f"{str(r[k]):<{w[i]}}" for i, (_, k) in enumerate(cols)) + f"  {r['source']}")
        if args.verbose:
            pad = " " * (sum(w) + 8)
            for c in r["order_claims"] or [{"text": "no order claim"}]:
                print(pad + "order: " + c["text"])
            if r["options"]:
                print(pad + "options: " + ", ".join(f"{k}={v!r}" for k, v in r["options"].items()))
    print("\norder: what the default options give (every claim, e.g. '2 / 4 (uniform sigma)'); local = of the "
          "solution an adaptive step propagates; strong / weak: stochastic. Global orders: " + COMMON_CONDITIONS
          + ". Conditions: `flowode solvers -v`.")
    print("kind: S = stochastic, A = adaptive, M = multistep. Options: `flowode solvers -v`; pass them as "
          "'name[key=value]' to `flowode bench`.")
    return 0
