"""``flowode sample``: draw samples from a problem's model with one solver and save them."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    from ..solvers.boundary import LAST_STEPS

    p = sub.add_parser("sample", help="sample with one solver; write .npy / .pt / PNG",
                       description="Integrate the probability-flow ODE of a problem's model from prior noise and "
                                   "save the samples: .npy (numpy), .pt (torch) or .png (an image grid for image "
                                   "models, a scatter plot for 2-D ones).")
    p.add_argument("--problem", default="gmm2d",
                   help="gmm2d (default), gmm2d_grid, gmm64, gaussian, shapes8x8, module:function, or a checkpoint")
    p.add_argument("--solver", default="ddim", help="solver, options in brackets, e.g. 'ddim[eta=1]' (default ddim)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--nfe", type=int, help="evaluation budget (default 20)")
    g.add_argument("--steps", type=int, help="number of steps instead of an NFE budget")
    p.add_argument("--spacing", default=None, help="grid spacing (default: the solver's own)")
    p.add_argument("--last-step", default=None, choices=LAST_STEPS, metavar="MODE",
                   help="the last step to sigma = 0: jump (default: the denoising step), auto, extrapolate "
                        "(sigma^2 Richardson of the last two x0 predictions), euler_sigma2 (Euler in sigma^2), "
                        "trapezoid (exact models only); docs/grids.md")
    p.add_argument("--samples", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed (default 0); the start noise and every stochastic draw are keyed by (seed, sample "
                        "index), so sample i does not depend on --samples")
    p.add_argument("--device", default="cpu",
                   help="torch device (default cpu); under torchrun 'cuda' means cuda:LOCAL_RANK")
    p.add_argument("--block", type=int, default=256,
                   help="samples per solve (default 256): the samples are solved in blocks of this many "
                        "consecutive indices, each block written to OUT.parts/ at once (a killed run resumes "
                        "from the finished blocks); under torchrun the blocks are spread over the ranks and "
                        "the output is the same as one process with the same --block (docs/scale-out.md)")
    p.add_argument("--x0-grid", metavar="FILE", help="also save the per-step x0 predictions (image models) as a figure")
    p.add_argument("--out", default="samples.npy", help="output file: .npy, .pt or .png (default samples.npy)")
    return p


def _png(x, path: Path, problem) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from matplotlib.figure import Figure

    if x.dim() == 4:  # (B, C, H, W) -> one tiled image
        b, c, h, w = x.shape
        cols = int(np.ceil(np.sqrt(b)))
        rows = int(np.ceil(b / cols))
        canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, 3))
        a = x.detach().to("cpu").double().clamp(-1, 1).add(1).div(2).numpy()
        for i in range(b):
            r, q = divmod(i, cols)
            tile = np.repeat(a[i][:1], 3, 0) if c == 1 else a[i][:3]
            canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = tile.transpose(1, 2, 0)
        scale = max(1, 256 // max(canvas.shape[:2]))
        canvas = canvas.repeat(scale, 0).repeat(scale, 1)
        import matplotlib.image

        matplotlib.image.imsave(path, canvas)
        return
    if x.reshape(x.shape[0], -1).shape[1] == 2:
        fig = Figure(figsize=(4.5, 4.5), layout="constrained")
        ax = fig.subplots()
        pts = x.reshape(-1, 2).detach().double().cpu().numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color="#0072B2")
        ax.set_aspect("equal")
        ax.set_xlabel("x₁ (data units)")
        ax.set_ylabel("x₂ (data units)")
        ax.set_title(f"{problem.name}: {len(pts)} samples")
        fig.savefig(path, dpi=150)
        return
    raise ValueError(f"cannot draw samples of shape {tuple(x.shape[1:])} as a PNG; write .npy or .pt instead.")


def _span(values: list[int]) -> str:
    """``"20"`` when every block took the same, else ``"18-23"`` (adaptive solvers, per block)."""
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def parts_id(args: argparse.Namespace, prob, steps, nfe) -> str:  # type: ignore[no-untyped-def]
    """The folder name of this command's parts (``OUT.parts/<id>/block-*.pt``): a hash of every setting
    the samples depend on and of the model (:func:`~flowode.bench.problems.model_fingerprint`), so a
    resumed run reuses only the blocks of the same run and never those of a changed model."""
    from .. import distributed
    from ..bench.problems import model_fingerprint

    return distributed.fingerprint({
        "model": model_fingerprint(prob, args.device), "problem": args.problem, "solver": args.solver,
        "last_step": getattr(args, "last_step", None),
        "steps": steps, "nfe": nfe, "spacing": args.spacing, "samples": args.samples, "seed": args.seed,
        "block": args.block, "device": args.device})


def _solve_block(prob, name, opts, steps, nfe, args, idx: range, device: str, trajectory: bool):  # type: ignore[no-untyped-def]
    """One block of global sample indices ``idx``: start noise and stochastic draws keyed by
    ``(seed, global index)``, so the block is the same whichever rank or run solves it."""
    from ..integrate import sample
    from ..noise import KeyedNoise

    sched = prob.model.schedule
    x_T = prob.model.prior_sample((len(idx), *prob.shape), sched.sigma_max, seed=args.seed, indices=idx,
                                  dtype=prob.dtype).to(device)
    return sample(prob.model, x_T, steps, nfe=nfe, solver=name, spacing=args.spacing, save_trajectory=trajectory,
                  noise=KeyedNoise(args.seed + 1, indices=idx), **opts)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .. import distributed
    from ..bench import get_problem, parse_solver_spec
    from ..bench.spec import check_device
    from ..plot import plot_denoised_grid
    from ..solvers import get_class
    from ._util import out_file

    out = Path(args.out)
    ext = out.suffix.lower()
    if ext not in (".npy", ".pt", ".png"):
        raise ValueError(f"`--out` {args.out!r}: use a .npy, .pt or .png file.")
    if args.samples < 1:
        raise ValueError(f"`--samples` must be a positive integer, got {args.samples}.")
    if args.block < 1:
        raise ValueError(f"`--block` must be a positive integer, got {args.block}.")
    out = out_file(args.out)  # refused before sampling, not after
    prob = get_problem(args.problem)
    if args.x0_grid and len(prob.shape) != 3:
        raise ValueError(f"`--x0-grid` draws image x0 predictions; problem {prob.name!r} has samples of shape "
                         f"{prob.shape}, not (C, H, W).")
    if args.x0_grid and args.samples > args.block:
        raise ValueError(f"`--x0-grid` draws the predictions of one solve; --samples {args.samples} is more than "
                         f"one block (--block {args.block}); give --block {args.samples} or fewer samples.")
    name, opts = parse_solver_spec(args.solver)
    if args.last_step is not None:
        if opts.get("last_step", args.last_step) != args.last_step:
            raise ValueError(f"`--last-step` {args.last_step} contradicts last_step={opts['last_step']} in `--solver` "
                             f"{args.solver!r}; give it once.")
        opts["last_step"] = args.last_step
    steps, nfe = args.steps, args.nfe
    if get_class(name).adaptive:  # it picks its own steps between sigma_max and 0
        if nfe is not None:
            raise ValueError(f"solver {name!r} is adaptive: give its tolerance as an option, e.g. "
                             f"'{name}[rtol=1e-4]', not `--nfe`.")
        steps = 1
    elif steps is None and nfe is None:
        nfe = 20
    todo = distributed.blocks(args.samples, args.block)
    with distributed.session(args.device) as dist:
        if args.x0_grid and dist.world > 1:
            raise ValueError("`--x0-grid` needs one process; run it without torchrun.")
        device = str(check_device(dist.device))
        if dist.main and len(todo) < dist.world:
            print(f"flowode sample: {len(todo)} block(s) of --block {args.block} for {dist.world} ranks: "
                  f"{dist.world - len(todo)} rank(s) stay idle; a smaller --block spreads the work.", file=sys.stderr)
        if args.x0_grid:  # one block, one process: keep the trajectory for the figure
            sol = _solve_block(prob, name, opts, steps, nfe, args, todo[0], device, True)
            x, nfe_done, label, steps_done = sol.x.detach().cpu(), str(sol.nfe), sol.solver, str(sol.steps)
        else:
            run_id = parts_id(args, prob, steps, nfe)
            parts = out.with_name(out.name + ".parts") / run_id
            for b, idx in distributed.mine(todo, dist):
                path = parts / f"block-{b:06d}.pt"
                part = distributed.load_part(path)
                if part is None or tuple(part["x"].shape) != (len(idx), *prob.shape):
                    sol = _solve_block(prob, name, opts, steps, nfe, args, idx, device, False)
                    distributed.save_atomic({"x": sol.x.detach().cpu(), "nfe": int(sol.nfe),
                                             "steps": int(sol.steps), "solver": sol.solver}, path)
            dist.barrier()  # the only collective: every block is on disk
            if not dist.main:
                return 0
            loaded = [distributed.load_part(parts / f"block-{b:06d}.pt") for b in range(len(todo))]
            missing = [b for b, p in enumerate(loaded) if p is None]
            if missing:
                raise RuntimeError(f"blocks {missing[:5]} of {len(todo)} are missing from {parts}; rerun the same "
                                   "command to resume.")
            x = torch.cat([p["x"] for p in loaded])
            label = loaded[0]["solver"]
            steps_done, nfe_done = (_span([int(p[k]) for p in loaded]) for k in ("steps", "nfe"))
        if ext == ".npy":
            np.save(out, x.numpy())
        elif ext == ".pt":
            torch.save(x, out)
        else:
            _png(x, out, prob)
        if not args.x0_grid:
            import shutil

            shutil.rmtree(parts, ignore_errors=True)
            with contextlib.suppress(OSError):
                parts.parent.rmdir()  # the .parts folder, when no other run's parts are left
        where = f" on {dist.world} ranks" if dist.world > 1 else ""
        blocks_txt = f" per block, {len(todo)} blocks" if len(todo) > 1 else ""
        print(f"{args.samples} samples of {prob.name} with {label} ({steps_done} steps, NFE {nfe_done}"
              f"{blocks_txt}{where}) -> {out}")
        if args.x0_grid:
            print(f"figure: {plot_denoised_grid(sol, args.x0_grid)}")
    return 0


