"""Figures for solver comparisons (matplotlib, no display needed).

Every function writes one file whose format follows the extension (``.png``, ``.pdf``, ``.svg``)
and returns its path. Figures are built on :class:`matplotlib.figure.Figure` directly (the Agg /
PDF / SVG canvases), so importing this module never changes pyplot's global backend.

Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), safe for the
common colour-vision deficiencies; every series also gets its own marker and line style, so the
figures read in greyscale.

* :func:`plot_error_vs_nfe` -- error vs NFE, log-log, with the fitted convergence order.
* :func:`plot_time_vs_error` -- wall time vs error with the Pareto front.
* :func:`plot_trajectories` -- 2-D sample paths from noise to data, one panel per solver.
* :func:`plot_denoised_grid` -- per-step x0 predictions of an image model.
* :func:`plot_step_sizes` -- step size against sigma (adaptive solvers and fixed grids).
* :func:`plot_results` -- the standard set for a results file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .orders import fit_order

__all__ = [
    "OKABE_ITO", "MARKERS", "LINESTYLES", "series_style", "tail_order", "plot_error_vs_nfe",
    "plot_time_vs_error", "plot_trajectories", "plot_denoised_grid", "plot_step_sizes", "plot_results",
    "plot_ddpm_vs_ddim", "FORMATS",
]

#: Okabe-Ito colours, most distinct first (black last: it is also the front / reference colour)
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES: tuple[Any, ...] = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 3)),
                               (0, (8, 2, 2, 2)))
FORMATS = ("png", "pdf", "svg")

PathLike = Union[str, Path]


def series_style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the ``i``-th series (cycling through all three)."""
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 4.0), **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Any, path: PathLike) -> Path:
    p = Path(path)
    ext = p.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise ValueError(f"figure path {str(path)!r}: use a .png, .pdf or .svg extension.")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=150)
    return p


def tail_order(nfe: Sequence[float], err: Sequence[float]) -> Optional[float]:
    """The fitted order of a series over its larger half of budgets (at least 2 points), where the
    asymptotic regime is closest (:func:`flowode.orders.fit_order`); ``None`` when it cannot be fitted."""
    n = sum(1 for e in err if e is not None and e > 0 and math.isfinite(e))
    p = fit_order(nfe, err, tail=max(2, (n + 1) // 2))
    return None if math.isnan(p) else p


def _series(records: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[str, list[Any]]]:
    """``{problem: {label: rows}}`` of successful records, averaged over seeds."""
    from .bench import aggregate

    out: dict[str, dict[str, list[Any]]] = {}
    for r in aggregate(list(records)):  # type: ignore[arg-type]
        if r.get(metric) is None or r.get("nfe") is None:
            continue
        out.setdefault(r["problem"], {}).setdefault(r.get("label", r["solver"]), []).append(r)
    return out


_METRIC_LABEL = {
    "rmse": "RMSE against the exact flow (data units)",
    "max_err": "max. abs. error against the exact flow (data units)",
    "sw": "sliced W2 distance to data (data units)",
}


def plot_error_vs_nfe(records: Sequence[Mapping[str, Any]], path: PathLike, *, metric: str = "rmse",
                      title: Optional[str] = None) -> Path:
    """Error against NFE on log-log axes, one panel per problem; the legend gives each deterministic
    solver's fitted convergence order (:func:`tail_order`; in NFE, so a 2-stage order-2 method shows
    about 2). Stochastic samplers are drawn but not fitted (their error against the ODE flow does not
    vanish); for ``metric="sw"`` nothing is fitted and the exact flow's own distance to the data (the
    finite-sample floor, ``sw_ref``) is drawn as a dashed line."""
    data = _series(records, metric)
    if not data:
        raise ValueError(f"no successful records with `{metric}` to plot.")
    fit = metric in ("rmse", "max_err")  # a distance to data saturates at its sampling floor: no order
    fig, axes = _figure(len(data), 1)
    for ax, (prob, series) in zip(axes[0], data.items()):
        for i, (label, rows) in enumerate(series.items()):
            rows = sorted(rows, key=lambda r: r["nfe"])
            xs, ys = [r["nfe"] for r in rows], [r[metric] for r in rows]
            stochastic = any(r.get("stochastic") for r in rows)
            order = None if stochastic or not fit else tail_order(xs, ys)
            tag = " (stochastic)" if stochastic else (f", order {order:.2f}" if order is not None else "")
            ax.plot(xs, ys, label=f"{label}{tag}", markersize=5, linewidth=1.5, **series_style(i))
        floors = [r["sw_ref"] for rows in series.values() for r in rows if r.get("sw_ref") is not None]
        if metric == "sw" and floors:
            ax.axhline(sum(floors) / len(floors), color="black", linestyle=(0, (2, 2)), linewidth=1,
                       label="exact flow's own distance (finite-sample floor)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
        ax.set_title(title or f"{prob}: {metric} vs NFE")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="fitted order = -slope" if fit else None, title_fontsize=8)
    return _save(fig, path)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated points (lower time and lower error), sorted by time."""
    front: list[tuple[float, float]] = []
    best = math.inf
    for t, e in sorted(points):
        if e < best:
            front.append((t, e))
            best = e
    return front


def plot_time_vs_error(records: Sequence[Mapping[str, Any]], path: PathLike, *, metric: str = "rmse") -> Path:
    """Wall-clock seconds against error, one panel per problem, with the Pareto front (no other run is
    both faster and more accurate) as a black step line."""
    data = _series(records, metric)
    data = {p: {k: [r for r in v if r.get("seconds")] for k, v in s.items()} for p, s in data.items()}
    if not any(any(v) for s in data.values() for v in s.values()):
        raise ValueError(f"no successful records with `seconds` and `{metric}` to plot.")
    fig, axes = _figure(len(data), 1)
    for ax, (prob, series) in zip(axes[0], data.items()):
        pts = []
        for i, (label, rows) in enumerate(series.items()):
            if not rows:
                continue
            st = series_style(i)
            rows = sorted(rows, key=lambda r: r["nfe"])  # a series runs along its NFE budgets
            ax.plot([r["seconds"] for r in rows], [r[metric] for r in rows], label=label, markersize=6,
                    linewidth=0.8, alpha=0.9, **st)
            pts += [(r["seconds"], r[metric]) for r in rows]
        front = _pareto(pts)
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=2,
                    alpha=0.35, label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall-clock time per batch (s)")
        ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
        ax.set_title(f"{prob}: time vs {metric}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _density_background(ax: Any, mixture: Any, lim: float) -> None:
    """Data density as grey shading of ``log p`` (clipped 8 nats below its maximum, so narrow modes
    stay visible under the markers)."""
    n = 240
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], 1)
    logp = mixture.log_prob(pts, 0.0).reshape(n, n).numpy()
    top = float(logp.max())
    ax.imshow(np.clip(logp, top - 8.0, top), extent=(-lim, lim, -lim, lim), origin="lower", cmap="Greys",
              alpha=0.5, interpolation="bilinear", vmin=top - 8.0, vmax=top + 1.0)


def plot_trajectories(problem: Any, solvers: Sequence[Any], path: PathLike, *, nfe: int = 10,
                      samples: int = 128, seed: int = 0, spacing: Optional[str] = None,
                      lim: Optional[float] = None) -> Path:
    """Sample paths of a 2-D problem from noise (sigma_max) to data, one panel per solver, over the
    data density (when the problem has an analytic mixture). Each path is the state at every grid
    point (``save_trajectory=True``); hollow circles mark where the exact flow from the same noise
    ends, filled ones where the solver ends.

    Args:
        problem: a :class:`~flowode.bench.Problem` or a problem name.
        solvers: solver specs (``"heun"``, ``"ddim[eta=0.5]"``, ``(name, options)``).
        nfe: the evaluation budget each solver gets.
        samples: number of paths.
    """
    from .analytic import reference_solve
    from .bench import get_problem, parse_solver_spec
    from .grids import resolve_grid
    from .integrate import integrate
    from .solvers import make

    prob = get_problem(problem) if isinstance(problem, str) else problem
    if prob.dim != 2:
        raise ValueError(f"plot_trajectories needs a 2-D problem; {prob.name!r} has {prob.dim} dimensions.")
    specs = [parse_solver_spec(s) for s in solvers]
    if not specs:
        raise ValueError("no `solvers` to plot.")
    sched = prob.model.schedule
    fig, axes = _figure(len(specs), 1, size=(4.2, 4.2), sharex=True, sharey=True)
    if lim is None:
        lim = 3.5 if prob.mixture is None else float(prob.mixture.means.abs().max()) + 1.5
    ref_cache: dict[tuple[float, float], Tensor] = {}
    for i, (ax, (name, opts)) in enumerate(zip(axes[0], specs)):
        slv = make(name, **opts)
        # adaptive solvers choose their own steps between the ends of a one-step grid
        grid = resolve_grid(sched, slv, steps=1 if slv.adaptive else None, nfe=None if slv.adaptive else nfe,
                            spacing=spacing)
        x_T = prob.prior(samples, float(grid[0]), seed)
        sol = integrate(prob.model, x_T, grid, slv, save_trajectory=True,
                        generator=torch.Generator().manual_seed(seed + 1))
        key = (float(grid[0]), float(grid[-1]))
        if key not in ref_cache:
            ref_cache[key] = prob.exact(x_T, *key) if prob.exact is not None else \
                reference_solve(prob.model, x_T, *key, rtol=prob.ref_rtol, atol=prob.ref_rtol)
        if prob.mixture is not None:
            _density_background(ax, prob.mixture, lim)
        traj = sol.trajectory.reshape(sol.trajectory.shape[0], samples, 2).to(torch.float64).numpy() \
            if sol.trajectory is not None else None
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        if traj is not None:
            for j in range(samples):
                ax.plot(traj[:, j, 0], traj[:, j, 1], color=colour, linewidth=0.6, alpha=0.35,
                        linestyle=LINESTYLES[i % len(LINESTYLES)])
            ax.scatter(traj[0, :, 0], traj[0, :, 1], s=5, color="#777777", label="noise (start)", zorder=2)
        ref = ref_cache[key].reshape(samples, 2).to(torch.float64).numpy()
        end = sol.x.reshape(samples, 2).to(torch.float64).numpy()
        ax.scatter(ref[:, 0], ref[:, 1], s=22, facecolors="none", edgecolors="black", linewidths=0.7,
                   label="exact flow end", zorder=3)
        ax.scatter(end[:, 0], end[:, 1], s=9, color=colour, marker=MARKERS[i % len(MARKERS)],
                   label=f"{name} end", zorder=4)
        rmse = float(((sol.x.to(torch.float64) - ref_cache[key].to(torch.float64)) ** 2).mean().sqrt())
        label = name + ("[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]" if opts else "")
        ax.set_title(f"{label}: NFE {sol.nfe}, {sol.steps} steps\nRMSE vs exact {rmse:.2e}", fontsize=9)
        _square_data_axes(ax, lim, first=i == 0)
    fig.suptitle(f"{prob.name}: probability-flow paths from noise to data ({samples} samples, seed {seed})",
                 fontsize=10)
    return _save(fig, path)


def _square_data_axes(ax: Any, lim: float, first: bool) -> None:
    """A 2-D data panel: equal axes on ``[-lim, lim]^2``, labelled; the first panel of a row carries
    the y label and the legend."""
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁ (data units)")
    if first:
        ax.set_ylabel("x₂ (data units)")
        ax.legend(fontsize=7, loc="lower left")


def plot_ddpm_vs_ddim(rows: Sequence[Any], mixture: Any, path: PathLike, *, title: Optional[str] = None,
                      lim: Optional[float] = None) -> Path:
    """The short DDPM-vs-DDIM comparison (:func:`flowode.bench.study.short_form`): one panel per row,
    its samples over the data density and, in black, the samples drawn from one fixed x_T (a single
    point for DDIM, a cloud for DDPM); the title carries the row's NLL, diversity and round trip."""
    if not rows:
        raise ValueError("no `rows` to plot.")
    fig, axes = _figure(len(rows), 1, size=(3.6, 3.8), sharex=True, sharey=True)
    if lim is None:
        lim = float(mixture.means.abs().max()) + 1.5
    for i, (ax, r) in enumerate(zip(axes[0], rows)):
        _density_background(ax, mixture, lim)
        x = r.samples.reshape(r.samples.shape[0], 2).to(torch.float64).numpy()
        d = r.draws.reshape(r.draws.shape[0], 2).to(torch.float64).numpy()
        ax.scatter(x[:, 0], x[:, 1], s=3, color=OKABE_ITO[i % len(OKABE_ITO)], alpha=0.6, label="samples")
        ax.scatter(d[:, 0], d[:, 1], s=16, color="black", marker="x", linewidths=0.8,
                   label=f"{d.shape[0]} draws from one x_T", zorder=3)
        ax.set_title(f"{r.label}, {r.steps} steps\nNLL {r.nll:.2f}, diversity {r.diversity:.2f}, "
                     f"round trip {r.round_trip:.1e}", fontsize=9)
        _square_data_axes(ax, lim, first=i == 0)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _image(t: Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, 3) in [0, 1]."""
    a = t.detach().to("cpu", torch.float64).clamp(-1, 1).add(1).div(2)
    if a.dim() == 2:
        return a.numpy()
    if a.shape[0] == 1:
        return a[0].numpy()
    return a[:3].permute(1, 2, 0).numpy()


def plot_denoised_grid(denoised: Any, path: PathLike, *, sigmas: Optional[Sequence[float]] = None,
                       rows: int = 4, max_cols: int = 12, title: Optional[str] = None) -> Path:
    """Per-step x0 predictions of an image model as a grid: one row per sample, one column per step
    (noise level in the column title). Pixel values are shown on [-1, 1] (clamped).

    Args:
        denoised: a :class:`~flowode.integrate.Solution` from ``save_trajectory=True`` (uses
            ``sol.denoised`` and the step's starting sigma) or a tensor ``(steps, batch, C, H, W)``.
        sigmas: the noise level of each column (taken from the Solution when given one).
        rows: samples shown; max_cols: steps shown (evenly thinned, the last one always kept).
    """
    if hasattr(denoised, "denoised"):
        sol = denoised
        if sol.denoised is None:
            raise ValueError("the Solution has no x0 predictions; integrate with save_trajectory=True.")
        sigmas = [float(s) for s in sol.sigmas[:-1]][: sol.denoised.shape[0]] if sigmas is None else sigmas
        denoised = sol.denoised
    d = torch.as_tensor(denoised)
    if d.dim() == 4:
        d = d[:, :, None]
    if d.dim() != 5:
        raise ValueError(f"`denoised` must be (steps, batch, C, H, W), got shape {tuple(d.shape)}.")
    steps = d.shape[0]
    cols = list(range(steps)) if steps <= max_cols else sorted(
        set(np.linspace(0, steps - 1, max_cols).round().astype(int).tolist()))
    nrow = min(rows, d.shape[1])
    fig, axes = _figure(len(cols), nrow, size=(1.1, 1.1))
    for r in range(nrow):
        for c, k in enumerate(cols):
            ax = axes[r][c]
            img = _image(d[k, r])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                lab = f"step {k + 1}"
                if sigmas is not None and k < len(sigmas):
                    lab += f"\nσ={sigmas[k]:.3g}"
                ax.set_title(lab, fontsize=7)
        axes[r][0].set_ylabel(f"sample {r}", fontsize=7)
    fig.suptitle(title or "x0 prediction at the start of each step (pixel values in [-1, 1])", fontsize=9)
    return _save(fig, path)


def _step_points(sol: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sigma at the start of each step, |step size| in sigma) from a Solution."""
    stats = getattr(sol, "stats", {}) or {}
    sizes = stats.get("step_sizes")
    sig = stats.get("step_sigmas", stats.get("sigmas"))
    if sizes is not None and sig is not None and len(sig) >= len(sizes):
        s = np.asarray(sig, dtype=np.float64)[: len(sizes)]
        h = np.abs(np.asarray(sizes, dtype=np.float64))
    else:
        pts = sol.trajectory_sigmas if getattr(sol, "trajectory_sigmas", None) is not None else sol.sigmas
        p = np.asarray(torch.as_tensor(pts, dtype=torch.float64).cpu())
        s, h = p[:-1], np.abs(np.diff(p))
    keep = (s > 0) & np.isfinite(s) & (h > 0) & np.isfinite(h)
    return s[keep], h[keep]


def plot_step_sizes(solutions: Mapping[str, Any], path: PathLike, *, title: Optional[str] = None) -> Path:
    """Step size ``|sigma_{i+1} - sigma_i|`` against the step's starting ``sigma``, log-log, for each
    solution: adaptive solvers' accepted steps (``sol.stats["step_sizes"]`` with ``step_sigmas`` /
    ``sigmas`` when the solver reports them, else the saved trajectory's sigmas) and fixed grids
    alike, so an adaptive controller can be compared with hand-made spacings."""
    if not solutions:
        raise ValueError("no solutions to plot.")
    fig, axes = _figure(1, 1, size=(6.0, 4.2))
    ax = axes[0][0]
    for i, (label, sol) in enumerate(solutions.items()):
        s, h = _step_points(sol)
        if len(s) == 0:
            continue
        ax.plot(s, h, label=f"{label} ({len(s)} steps, NFE {getattr(sol, 'nfe', '?')})", markersize=4,
                linewidth=1.2, **series_style(i))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("σ at the start of the step (noise-to-signal ratio, dimensionless)")
    ax.set_ylabel("step size |Δσ| (dimensionless)")
    ax.set_title(title or "step sizes along the path (sampling runs right to left in σ)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_results(records: Sequence[Mapping[str, Any]], out_dir: PathLike,
                 formats: Sequence[str] = ("png",)) -> list[Path]:
    """The standard figures of a results file: ``error_vs_nfe``, ``time_vs_error`` and, when any record
    has a sliced-Wasserstein distance, ``sw_vs_nfe``; one file per format."""
    out = Path(out_dir)
    paths: list[Path] = []
    ok = [r for r in records if not r.get("error") and r.get("rmse") is not None]
    if not ok:
        return paths
    for fmt in formats:
        paths.append(plot_error_vs_nfe(ok, out / f"error_vs_nfe.{fmt}"))
        paths.append(plot_time_vs_error(ok, out / f"time_vs_error.{fmt}"))
        if any(r.get("sw") is not None for r in ok):
            paths.append(plot_error_vs_nfe(ok, out / f"sw_vs_nfe.{fmt}", metric="sw",
                                           title=None))
    return paths


def plot_log_density(logp: Tensor, path: PathLike, *, lim: float, true_logp: Optional[Tensor] = None,
                     data: Optional[Tensor] = None, title: str = "model", floor: float = 12.0) -> Path:
    """2-D log-densities on a ``(G, G)`` grid over ``[-lim, lim]^2`` (rows: y, columns: x): the
    model's, and beside it ``true_logp`` when given; ``data`` points are overlaid. Both panels share
    one colour scale, clipped ``floor`` nats below the larger maximum."""
    panels = [(title, logp)] + ([("true", true_logp)] if true_logp is not None else [])
    fig, axes = _figure(len(panels), 1, (4.6, 4.0))
    top = max(float(v.max()) for _, v in panels)
    im = None
    for ax, (name, v) in zip(axes[0], panels):
        im = ax.imshow(np.clip(v.detach().cpu().double().numpy(), top - floor, top), extent=(-lim, lim, -lim, lim),
                       origin="lower", cmap="viridis", vmin=top - floor, vmax=top, interpolation="nearest")
        if data is not None:
            pts = data.detach().cpu().double().reshape(-1, 2).numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2, c="white", alpha=0.4, linewidths=0)
        ax.set_title(f"log density: {name}")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    fig.colorbar(im, ax=axes[0].tolist(), label="nats", shrink=0.85)
    return _save(fig, path)
