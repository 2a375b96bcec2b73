"""``flowode invert``: encode/decode round trips of several inversion methods on an analytic problem
(or a shipped model), printed as a table; with ``--out``, also the error-vs-NFE figure and, for
image-shaped data, an input / latent / reconstruction grid."""

from __future__ import annotations

import argparse
from typing import Any

INVERT_PROBLEMS = ("ring", "random64", "gaussian", "digits")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser(
        "invert", help="measure encode/decode round trips (naive and exact inversion)",
        description="Encode data to latents and decode back with naive inversion (any deterministic solver) "
                    "and the exact methods fixed_point, edict, bdia; print reconstruction error, NFE, latent error "
                    "and latent normality per method and step count.")
    p.add_argument("--problem", default="ring", choices=INVERT_PROBLEMS,
                   help="ring: 2-D 8-component mixture; random64: 64-D mixture; gaussian: 2-D Gaussian (closed-form "
                        "latent); digits: the shipped digits model (needs flowode.load_pretrained)")
    p.add_argument("--methods", default="ddim,heun,fixed_point,edict,bdia",
                   help="comma-separated methods; 'fixed_point:heun' inverts Heun's step (default %(default)s)")
    p.add_argument("--steps", default="10,20,50", help="comma-separated step counts (default %(default)s)")
    p.add_argument("--samples", type=int, default=256, help="number of data samples (default %(default)s)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="(default %(default)s)")
    p.add_argument("--spacing", default=None, help="grid spacing (default: the schedule's)")
    p.add_argument("--reference", action="store_true",
                   help="also compute the latent error against a tight reference solve (slow)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--out", default=None, help="folder for table.md, rows.json, error_vs_nfe.png (and grid.png)")
    return p


def _problem(name: str, n: int, seed: int, dtype: Any) -> tuple[Any, Any]:
    import torch

    import flowode
    from flowode.analytic import Gaussian, gmm_random, gmm_ring

    gen = torch.Generator().manual_seed(seed)
    if name == "digits":
        from flowode.data import load_digits

        model = flowode.load_pretrained("digits")
        data = load_digits()
        assert isinstance(data, torch.Tensor)  # no labels asked for
        idx = torch.randperm(data.shape[0], generator=gen)[:n]
        return model, data[idx].to(dtype)
    sched = flowode.DiscreteVPSchedule.linear()
    dist = {"ring": gmm_ring, "random64": lambda: gmm_random(64),
            "gaussian": lambda: Gaussian([0.5, -1.0], [0.3, 0.7])}[name]()
    return dist.model(sched), dist.sample(n, gen).to(dtype)


def run(args: argparse.Namespace) -> int:
    import torch

    from flowode.invert import invertibility_report

    from ._util import ints, out_dir

    if args.samples < 1:
        raise ValueError(f"`--samples` must be a positive integer, got {args.samples}.")
    if args.out:
        out_dir(args.out)  # refused before the round trips, not after
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    model, x0 = _problem(args.problem, args.samples, args.seed, dtype)
    methods: list = []
    for m in [v.strip() for v in args.methods.split(",") if v.strip()]:
        if ":" in m:
            name, solver = m.split(":", 1)
            methods.append((name, {"solver": solver}))
        else:
            methods.append(m)
    steps = ints(args.steps, "--steps") or []
    if not steps or min(steps) < 1:
        raise ValueError(f"`--steps` must list positive step counts, e.g. 10,20,50; got {args.steps!r}.")
    kw: dict = {"reference": True if args.reference else None}
    if args.spacing:
        kw["spacing"] = args.spacing
    rep = invertibility_report(model, x0, methods, steps, **kw)
    print(rep.table())
    orders = ", ".join(f"{k}: {v:.2f}" for k, v in rep.orders().items())
    print(f"\nfitted order of round-trip RMSE vs steps: {orders}")
    if args.out:
        for p in rep.save(args.out):
            print(f"wrote {p}")
    return 0
