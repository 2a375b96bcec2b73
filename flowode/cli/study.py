"""``flowode study ddpm-vs-ddim``: DDPM vs DDIM on one network, in the layout of the DDIM paper's Table 1."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser("study", help="measured studies: ddpm-vs-ddim (eta x steps on the ring or the digits)",
                       description="ddpm-vs-ddim: sample the 8-Gaussian ring with DDIM eta = 0 ... 1 and DDPM's "
                                   "sigma-hat variance at several step counts, from one keyed start noise, and "
                                   "write the exact NLL, sliced Wasserstein, MMD^2 (with their finite-sample "
                                   "floors), the diversity from one x_T, same-x_T consistency against the "
                                   "largest step count (distance and same-mode share), the round trip through "
                                   "the DDIM latent and the time per sample as markdown. The defaults take about "
                                   "3 CPU-minutes (docs/ddpm-vs-ddim.md). --model digits_uncond: the same rows on "
                                   "the shipped unconditional digits UNet, judged by FD-digits (with its floor "
                                   "at the sample count), the classifier's confidence and class balance, "
                                   "about 5 CPU-minutes at the default 128 samples. Under torchrun the rows "
                                   "(one per eta) go round-robin over the ranks (docs/scale-out.md).")
    p.add_argument("study", choices=["ddpm-vs-ddim"], help="the study to run")
    p.add_argument("--model", choices=["ring8", "exact", "digits_uncond"], default="ring8",
                   help="the shipped ring8 network (default), the mixture's exact eps, or the shipped "
                        "unconditional digits UNet")
    p.add_argument("--steps", default="10,20,50,100,1000",
                   help="comma-separated step counts (default 10,20,50,100,1000)")
    p.add_argument("--etas", default="0,0.2,0.5,1,sigma-hat", help="comma-separated eta values and/or sigma-hat")
    p.add_argument("--samples", type=int, default=None,
                   help="samples per cell (default 2000 on the ring, 128 on the digits; at most 597 there)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", default="ddpm_vs_ddim.md", help="markdown file to write (default ddpm_vs_ddim.md)")
    return p


DIGITS_SAMPLES = 128
DIGITS_TITLE = "Shipped digits_uncond network (float32), FD-digits"


def _parse(args: argparse.Namespace) -> tuple[list[int], list]:  # type: ignore[type-arg]
    try:
        steps = [int(v) for v in args.steps.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"`--steps` {args.steps!r}: give comma-separated positive integers, e.g. 10,20,50.") from None
    if not steps or min(steps) < 1:
        raise ValueError(f"`--steps` {args.steps!r}: give comma-separated positive integers, e.g. 10,20,50.")
    etas: list = []  # type: ignore[type-arg]
    for v in args.etas.split(","):
        v = v.strip()
        if v == "sigma-hat":
            etas.append(v)
            continue
        try:
            e = float(v)
        except ValueError:
            raise ValueError(f"`--etas` entry {v!r}: use numbers in [0, 1] or sigma-hat.") from None
        if not 0 <= e <= 1:
            raise ValueError(f"`--etas` entry {v!r}: use numbers in [0, 1] or sigma-hat.")
        etas.append(e)
    if args.samples is None:
        args.samples = DIGITS_SAMPLES if args.model == "digits_uncond" else 2000
    if args.samples < 2:
        raise ValueError(f"`--samples` must be at least 2, got {args.samples}.")
    if args.model == "digits_uncond" and args.samples > 597:
        raise ValueError(f"`--samples` {args.samples}: at most 597 on the digits (the FD floor is measured on that "
                         "many held-out real digits); e.g. --samples 128.")
    return steps, etas


def _sharded(study: Callable[..., Any], cell: type, etas: list, config: dict, out: Path) -> Any:  # type: ignore[type-arg]
    """The study's rows (one per eta) round-robin over the torchrun ranks; each rank writes its rows as
    a part (``cell`` records) under ``OUT.parts/<fingerprint of the settings>/`` (a rerun reuses finished rows), one
    barrier, then rank 0 computes the floors and returns every row in order (``None`` on the other
    ranks). Rows use keyed draws, so the cells equal a one-process run's (the time per sample aside)."""
    import dataclasses
    import shutil

    from .. import distributed

    with distributed.session("cpu") as dist:
        if dist.world == 1:
            return study(etas=etas)
        parts = Path(f"{out}.parts") / distributed.fingerprint(config)
        for i, eta in distributed.mine(etas, dist):
            path = parts / f"row-{i:03d}.pt"
            if distributed.load_part(path) is None:
                cells = study(etas=[eta], with_floors=False)[0]
                distributed.save_atomic([dataclasses.asdict(c) for c in cells], path)
        dist.barrier()  # the only collective: every row is on disk
        if not dist.main:
            return None
        cells, fl = study(etas=[])  # the floors alone
        for i in range(len(etas)):
            rows = distributed.load_part(parts / f"row-{i:03d}.pt")
            if rows is None:
                raise RuntimeError(f"row {i} (eta {etas[i]}) is missing from {parts}; rerun the same command "
                                   "to resume.")
            cells += [cell(**r) for r in rows]
        shutil.rmtree(parts.parent, ignore_errors=True)
        return cells, fl


def run(args: argparse.Namespace) -> int:
    import functools

    import torch

    from ..analytic import gmm_ring
    from ..bench.study import StudyCell, ddpm_vs_ddim, markdown
    from ..pretrained import load_pretrained
    from ..schedules import DiscreteVPSchedule

    steps, etas = _parse(args)
    out = Path(args.out)
    cmd = (f"flowode study ddpm-vs-ddim --model {args.model} --steps {args.steps} --etas {args.etas} "
           f"--samples {args.samples} --seed {args.seed}")
    config = {"model": args.model, "steps": steps, "etas": etas, "samples": args.samples, "seed": args.seed}
    study: Callable[..., Any]
    cell: type
    render: Callable[..., str]
    if args.model == "digits_uncond":
        from ..bench.study_digits import DigitsCell, digits_markdown, digits_study

        study = functools.partial(digits_study, load_pretrained("digits_uncond"), steps=steps, n=args.samples,
                                  seed=args.seed)
        cell, render, title = DigitsCell, digits_markdown, DIGITS_TITLE
    else:
        ring = gmm_ring()
        if args.model == "ring8":
            model, dtype, title = load_pretrained("ring8"), torch.float32, "Shipped ring8 network (float32)"
        else:
            model, dtype = ring.model(DiscreteVPSchedule.linear()), torch.float64
            title = "Exact eps of the ring (DiscreteVPSchedule.linear, float64)"
        study = functools.partial(ddpm_vs_ddim, model, ring, steps=steps, n=args.samples, seed=args.seed,
                                  dtype=dtype)
        cell, render = StudyCell, markdown
    res = _sharded(study, cell, etas, config, out)
    if res is None:  # a rank other than 0
        return 0
    cells, fl = res
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"Command: `{cmd}`\n\n" + render(cells, fl, title, args.samples) + "\n")
    print(f"{len(cells)} cells ({len(etas)} eta x {len(steps)} step counts, {args.samples} samples each) -> {out}")
    return 0
