"""``flowode likelihood``: bits/dim of data under a model's probability-flow ODE (docs/likelihood.md);
for 2-D models a figure of the model's log-density beside the true one."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

from ._util import floats


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser(
        "likelihood", help="log-likelihood / bits per dim through the probability-flow ODE",
        description="Integrate data -> noise jointly with the divergence of the field (instantaneous change of "
                    "variables) and print bits/dim, nats, the prior and flow terms and NFE. The flow starts at "
                    "--sigma-start (default: the schedule's smallest trained level; the term log p_0 - log p_sigma "
                    "is dropped). Quantised data need --bits or --levels (uniform dequantisation; bits/dim + "
                    "log2(L / (hi - lo)), e.g. +7 for 8-bit data in [-1, 1]).")
    p.add_argument("--model", default="ring8", help="shipped model (ring8, digits) or a card .json (default ring8)")
    p.add_argument("--data", default=None,
                   help="a .pt or .npy file of data (N, ...) in the model's coordinates (default: ring8 draws fresh "
                        "samples of its training distribution, digits uses scikit-learn's digits)")
    p.add_argument("--samples", type=int, default=None, help="use the first N data (default 256 for 2-D, 16 else)")
    p.add_argument("--solver", default="dopri5", help="a deterministic solver (default dopri5; scipy_rk45 as in "
                                                     "score SDE; a fixed-step one needs --steps)")
    p.add_argument("--steps", type=int, default=None, help="steps of a fixed-step solver (log-uniform in sigma)")
    p.add_argument("--rtol", type=float, default=1e-5, help="adaptive tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=None, help="absolute tolerance (default: --rtol)")
    p.add_argument("--coordinates", default=None, choices=("sigma", "lambda", "t"), help="integration variable")
    p.add_argument("--divergence", default=None, choices=("exact", "hutchinson"),
                   help="exact trace or Hutchinson (default: exact up to 16 dimensions, else hutchinson)")
    p.add_argument("--probes", type=int, default=8, help="Hutchinson probes per sample (default 8)")
    p.add_argument("--probe", default="rademacher", choices=("rademacher", "gaussian"))
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bits", type=int, default=None, help="the data are BITS-bit values in --data-range: dequantise")
    g.add_argument("--levels", type=int, default=None, help="the data have LEVELS quantisation levels (digits: 17)")
    p.add_argument("--data-range", default="-1,1", help="lo,hi of quantised data (default -1,1)")
    p.add_argument("--sigma-start", type=float, default=None, help="where the flow starts (default sigma_min)")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes, dequantisation and data (default 0)")
    p.add_argument("--figure", default=None, metavar="PATH",
                   help="2-D models: the model's log-density on a grid beside the true one (ring8) as PNG/PDF/SVG")
    p.add_argument("--grid", type=int, default=48, help="figure grid points per axis (default 48)")
    p.add_argument("--lim", type=float, default=3.0, help="figure extent [-lim, lim]^2 (default 3)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the per-sample results as JSON")
    p.add_argument("--block", type=int, default=None,
                   help="samples per solve (default: all in one). Under torchrun the blocks go round-robin over the "
                        "ranks and rank 0 merges; block b's probes and dequantisation noise come from its own seed, "
                        "so the results equal a one-process run with the same --block, bitwise on the CPU")
    return p


def block_seed(seed: int, b: int) -> int:
    """The seed of block ``b``'s generator: ``seed`` itself for block 0 (a one-block run is the
    unsharded run), a hash of ``(seed, b)`` for the others."""
    from .. import distributed

    return seed if b == 0 else int(distributed.fingerprint({"seed": seed, "block": b}), 16) % (1 << 63)


_FIELDS = ("bits_per_dim", "nats", "prior", "flow", "stderr", "stderr_bpd")


def _solve_blocks(args: argparse.Namespace, model: Any, x: Any, kwargs: dict[str, Any], opts: dict[str, Any],
                  ) -> Any:
    """The likelihood of ``x`` in blocks of ``--block`` samples, sharded over torchrun's ranks (each
    finished block written at once to a part file, so a rerun resumes); rank 0 returns the merged
    result, the other ranks ``None``."""
    import types

    import torch

    import flowode

    from .. import distributed

    block = args.block if args.block is not None else len(x)
    todo = distributed.blocks(len(x), block)
    with distributed.session("cpu") as dist:
        if dist.main and len(todo) < dist.world:
            print(f"flowode likelihood: {len(todo)} block(s) of --block {block} for {dist.world} ranks: "
                  f"{dist.world - len(todo)} rank(s) stay idle; a smaller --block spreads the work.", file=sys.stderr)
        if dist.world == 1 and len(todo) == 1:  # nothing to shard or resume: no files
            res = flowode.likelihood(model, x, generator=torch.Generator().manual_seed(args.seed), **kwargs, **opts)
            return res
        run_id = distributed.fingerprint({
            "model": args.model, "data": args.data, "samples": len(x), "solver": args.solver, "steps": args.steps,
            "options": opts, "kwargs": {k: v for k, v in kwargs.items() if k != "solver"}, "seed": args.seed,
            "block": block, "data_sum": float(x.double().sum())})
        parts = Path((args.json or "flowode-likelihood") + ".parts") / run_id
        for b, idx in distributed.mine(todo, dist):
            path = parts / f"block-{b:06d}.pt"
            part = distributed.load_part(path)
            if part is None or len(part["nats"]) != len(idx):
                res = flowode.likelihood(model, x[idx.start:idx.stop],
                                         generator=torch.Generator().manual_seed(block_seed(args.seed, b)),
                                         **kwargs, **opts)
                part = {k: getattr(res, k).detach().cpu() for k in _FIELDS}
                part.update(nfe=int(res.nfe), sigma_start=float(res.sigma_start), sigma_end=float(res.sigma_end),
                            offset=float(res.offset))
                distributed.save_atomic(part, path)
        dist.barrier()  # the only collective: every block is on disk
        if not dist.main:
            return None
        loaded = [distributed.load_part(parts / f"block-{b:06d}.pt") for b in range(len(todo))]
        missing = [b for b, q in enumerate(loaded) if q is None]
        if missing:
            raise RuntimeError(f"blocks {missing[:5]} of {len(todo)} are missing from {parts}; rerun the same command "
                               "to resume.")
        import contextlib
        import shutil

        shutil.rmtree(parts, ignore_errors=True)
        with contextlib.suppress(OSError):
            parts.parent.rmdir()
        merged = {k: torch.cat([q[k] for q in loaded]) for k in _FIELDS}
        nfes = [int(q["nfe"]) for q in loaded]
        lo, hi = min(nfes), max(nfes)
        where = f" on {dist.world} ranks" if dist.world > 1 else ""
        return types.SimpleNamespace(
            **merged, nfe=sum(nfes), sigma_start=loaded[0]["sigma_start"], sigma_end=loaded[0]["sigma_end"],
            offset=loaded[0]["offset"], nfe_note=f" (sum over {len(todo)} blocks of --block {block}{where}; "
                                                 f"{lo if lo == hi else f'{lo}-{hi}'} per block)")


def _load_data(path: str) -> Any:
    import numpy as np
    import torch

    f = Path(path)
    if not f.exists():
        raise ValueError(f"`--data` file {path!r} does not exist.")
    if f.suffix == ".npy":
        return torch.from_numpy(np.load(f))
    if f.suffix == ".pt":
        x = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"`--data` {path!r} must hold one tensor (N, ...), got {type(x).__name__}.")
        return x
    raise ValueError(f"`--data` {path!r}: use a .pt or .npy file.")


def _default_data(name: str, n: Optional[int], seed: int) -> Any:
    import torch

    if name == "ring8":
        from flowode.data import toy_2d

        return toy_2d("ring8", n or 256, generator=torch.Generator().manual_seed(seed))
    if name == "digits":
        from flowode.data import load_digits

        return load_digits()
    raise ValueError(f"model {name!r} has no default data: pass `--data FILE`.")


def _true_logp(name: str) -> Any:
    """The exact log density of the model's training distribution (2-D toys that are mixtures)."""
    if name == "ring8":
        from flowode.analytic import gmm_ring

        return gmm_ring()
    return None


def run(args: argparse.Namespace) -> int:

    import flowode

    model = flowode.load_pretrained(args.model)
    x = _load_data(args.data) if args.data else _default_data(args.model, args.samples, args.seed)
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"the data must be a floating-point tensor (N, ...), got {x.dtype} of shape {tuple(x.shape)}.")
    dtype = next(model.net.parameters()).dtype  # type: ignore[attr-defined]
    d = math.prod(x.shape[1:])
    n = args.samples or (256 if d == 2 else 16)
    x = x[:n].to(dtype)
    rng = floats(args.data_range, "data-range")
    if rng is None or len(rng) != 2:
        raise ValueError(f"`--data-range` must be lo,hi, got {args.data_range!r}.")
    if args.figure and d != 2:
        raise ValueError(f"`--figure` draws 2-D models only; this model's data have {d} dimensions.")
    div = args.divergence or ("exact" if d <= 16 else "hutchinson")
    opts: dict[str, Any] = {}
    sched_adaptive = flowode.solvers.make(args.solver).adaptive
    if sched_adaptive:
        opts.update(rtol=args.rtol, atol=args.atol if args.atol is not None else args.rtol)
    if args.coordinates:
        opts["coordinates"] = args.coordinates
    if args.model == "digits" and args.bits is None and args.levels is None:
        print("note: digits are 17-level data (k / 8 - 1): pass --levels 17 for the bits/dim of the discrete data; "
              "without it the result is a continuous density at the data points.", file=sys.stderr)
    if args.block is not None and args.block < 1:
        raise ValueError(f"`--block` must be a positive integer, got {args.block}.")
    kwargs = dict(solver=args.solver, steps=args.steps, divergence=div, probes=args.probes, probe=args.probe,
                  sigma_start=args.sigma_start, bits=args.bits, levels=args.levels, data_range=(rng[0], rng[1]))
    res = _solve_blocks(args, model, x, kwargs, opts)
    if res is None:  # a rank other than 0: its blocks are on disk, rank 0 reports
        return 0
    bpd = res.bits_per_dim
    sem = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    hut = float(res.stderr_bpd.pow(2).mean().sqrt() / math.sqrt(len(bpd)))
    deq = ("none (continuous density at the data points)" if res.offset == 0.0 and args.bits is None
           and args.levels is None else f"uniform, offset {res.offset:.4f} bits/dim")
    print(f"model {args.model}: {len(bpd)} samples of {d} dims, solver {args.solver} "
          f"{' '.join(f'{k}={v}' for k, v in opts.items())}, divergence {div}"
          f"{f' ({args.probes} {args.probe} probes)' if div == 'hutchinson' else ''}")
    print(f"dequantisation: {deq}; sigma_start {res.sigma_start:.6g}, sigma_end {res.sigma_end:.6g} "
          "(dropped: log p_0 - log p_sigma_start)")
    print(f"bits/dim    {float(bpd.mean()):.4f} +- {sem:.4f} (s.e. over samples)"
          + (f", Hutchinson s.e. of the mean {hut:.4f}" if div == "hutchinson" else ""))
    print(f"nats/sample {float(res.nats.mean()):.4f}   prior {float(res.prior.mean()):.4f}   "
          f"flow {float(res.flow.mean()):.4f}   NFE {res.nfe}{getattr(res, 'nfe_note', '')}")
    mix = _true_logp(args.model) if args.data is None and d == 2 else None
    if mix is not None:  # the data's own density: what a perfect model would give
        a0 = float(model.schedule.alpha_from_sigma(res.sigma_start))
        true = mix.log_prob(x.double() / a0, res.sigma_start) - d * math.log(a0)
        print(f"true bits/dim of these samples (exact density of {args.model}'s data at sigma_start): "
              f"{float(-true.mean() / (d * math.log(2)) + res.offset):.4f}")
    if args.json:
        out = {"model": args.model, "solver": args.solver, "options": opts, "divergence": div, "nfe": res.nfe,
               "sigma_start": res.sigma_start, "sigma_end": res.sigma_end, "offset": res.offset, "dim": d,
               "bits_per_dim": bpd.tolist(), "nats": res.nats.tolist(), "prior": res.prior.tolist(),
               "flow": res.flow.tolist(), "stderr": res.stderr.tolist()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out) + "\n")
        print(f"wrote {args.json}")
    if args.figure:
        _figure(args, model, x, res, opts)
    return 0


def _figure(args: argparse.Namespace, model: Any, x: Any, res: Any, opts: dict[str, Any]) -> None:
    import torch

    import flowode
    from flowode.plot import plot_log_density

    g = torch.linspace(-args.lim, args.lim, args.grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    grid_res = flowode.likelihood(model, pts.to(x.dtype), solver=args.solver, steps=args.steps,
                                  sigma_start=res.sigma_start, **opts)
    logp = grid_res.log_prob.reshape(args.grid, args.grid)
    mix = _true_logp(args.model)
    true = None
    if mix is not None:
        sched = model.schedule
        a0 = float(sched.alpha_from_sigma(res.sigma_start))
        true = (mix.log_prob(pts / a0, res.sigma_start) - 2 * math.log(a0)).reshape(args.grid, args.grid)
    path = plot_log_density(logp, args.figure, lim=args.lim, true_logp=true, data=x, title=f"{args.model} (flow)")
    if true is not None:
        err = (logp.double() - true).abs()
        print(f"figure grid: |log p_model - log p_true| median {float(err.median()):.3g} nats "
              f"(where log p_true > max - 6: {float(err[true > true.max() - 6].median()):.3g}); NFE {grid_res.nfe}")
    print(f"wrote {path}")
