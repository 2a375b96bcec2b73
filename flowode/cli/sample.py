"""``flowode sample``: draw samples from a problem's model with one solver and save them."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
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
    p.add_argument("--samples", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed (default 0); the start noise and every stochastic draw are keyed by (seed, sample "
                        "index), so sample i does not depend on --samples")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
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


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..bench import get_problem, parse_solver_spec
    from ..bench.spec import check_device
    from ..integrate import sample
    from ..plot import plot_denoised_grid
    from ..solvers import get_class
    from ._util import out_file

    out = Path(args.out)
    ext = out.suffix.lower()
    if ext not in (".npy", ".pt", ".png"):
        raise ValueError(f"`--out` {args.out!r}: use a .npy, .pt or .png file.")
    if args.samples < 1:
        raise ValueError(f"`--samples` must be a positive integer, got {args.samples}.")
    out = out_file(args.out)  # refused before sampling, not after
    device = check_device(args.device)
    prob = get_problem(args.problem)
    if args.x0_grid and len(prob.shape) != 3:
        raise ValueError(f"`--x0-grid` draws image x0 predictions; problem {prob.name!r} has samples of shape "
                         f"{prob.shape}, not (C, H, W).")
    name, opts = parse_solver_spec(args.solver)
    steps, nfe = args.steps, args.nfe
    if get_class(name).adaptive:  # it picks its own steps between sigma_max and 0
        if nfe is not None:
            raise ValueError(f"solver {name!r} is adaptive: give its tolerance as an option, e.g. "
                             f"'{name}[rtol=1e-4]', not `--nfe`.")
        steps = 1
    elif steps is None and nfe is None:
        nfe = 20
    sched = prob.model.schedule
    # keyed by (seed, sample index): sample i is the same with --samples 7 and --samples 64
    x_T = prob.model.prior_sample((args.samples, *prob.shape), sched.sigma_max, seed=args.seed,
                                  dtype=prob.dtype).to(device)
    sol = sample(prob.model, x_T, steps, nfe=nfe, solver=name, spacing=args.spacing,
                 save_trajectory=bool(args.x0_grid), seed=args.seed + 1, **opts)
    x = sol.x.detach().cpu()
    if ext == ".npy":
        np.save(out, x.numpy())
    elif ext == ".pt":
        torch.save(x, out)
    else:
        _png(x, out, prob)
    print(f"{args.samples} samples of {prob.name} with {sol.solver} ({sol.steps} steps, NFE {sol.nfe}) -> {out}")
    if args.x0_grid:
        print(f"figure: {plot_denoised_grid(sol, args.x0_grid)}")
    return 0
