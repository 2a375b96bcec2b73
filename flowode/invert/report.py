"""``invertibility_report``: compare inversion methods across step counts -- a table, a log-log
figure of reconstruction error against NFE, and an input / latent / reconstruction image grid
for image-shaped data."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

from ..models import EpsilonModel
from .latent import latent_stats
from .roundtrip import RoundTrip, fit_order, roundtrip

__all__ = ["InvertibilityReport", "invertibility_report", "DEFAULT_METHODS"]

MethodSpec = Union[str, tuple[str, dict[str, Any]]]

#: naive DDIM inversion, a reversed higher-order solver, and the three exact methods
DEFAULT_METHODS: tuple[MethodSpec, ...] = ("ddim", "heun", "fixed_point", "edict", "bdia")


def _label(name: str, opts: dict[str, Any]) -> str:
    if not opts:
        return name
    return f"{name}(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")"


@dataclass
class InvertibilityReport:
    """Rows (one per method and step count) and the round trips behind them."""

    rows: list[dict[str, Any]]
    roundtrips: dict[tuple[str, int], RoundTrip] = field(default_factory=dict, repr=False)
    x0: Optional[Tensor] = field(default=None, repr=False)

    def orders(self) -> dict[str, float]:
        """Fitted order of the mean round-trip RMSE against steps, per method."""
        out: dict[str, float] = {}
        for m in dict.fromkeys(r["method"] for r in self.rows):
            rs = [r for r in self.rows if r["method"] == m]
            out[m] = fit_order([r["steps"] for r in rs], [r["x0_rmse"] for r in rs])
        return out

    def table(self) -> str:
        """Markdown table."""
        head = ("| method | steps | NFE enc | NFE dec | x0 RMSE | x0 max abs | max rel | latent err | "
                "latent mean | latent std | KS p | chi2 p | off-dist |")
        lines = [head, "|" + "---|" * 13]
        for r in self.rows:
            def f(v: Any, fmt: str = ".2e") -> str:
                return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
            lines.append(
                f"| {r['method']} | {r['steps']} | {r['nfe_encode']} | {r['nfe_decode']} | {f(r['x0_rmse'])} | "
                f"{f(r['x0_max_abs'])} | {f(r['x0_rel_error'])} | {f(r['latent_error'])} | "
                f"{f(r.get('latent_mean'), '.3f')} | {f(r.get('latent_std'), '.3f')} | "
                f"{f(r.get('ks_pvalue'), '.2g')} | {f(r.get('chi2_pvalue'), '.2g')} | "
                f"{'yes' if r.get('off_distribution') else 'no' if 'off_distribution' in r else '-'} |"
            )
        return "\n".join(lines)

    def figure(self, path: Optional[Union[str, pathlib.Path]] = None) -> Any:
        """Log-log plot of mean round-trip RMSE against total NFE (encode + decode), one line per
        method; returns the matplotlib figure (saved to ``path`` when given)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4.5))
        floor = 1e-17
        for m, order in self.orders().items():
            rs = [r for r in self.rows if r["method"] == m]
            nfe = [r["nfe_encode"] + r["nfe_decode"] for r in rs]
            err = [max(r["x0_rmse"], floor) for r in rs]
            lab = m if math.isnan(order) else f"{m} (order {order:.2f})"
            ax.loglog(nfe, err, "o-", label=lab)
        ax.set_xlabel("NFE (encode + decode)")
        ax.set_ylabel("round-trip RMSE")
        ax.set_title("Reconstruction error vs NFE")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def image_grid(self, method: Optional[str] = None, steps: Optional[int] = None, n: int = 8,
                   path: Optional[Union[str, pathlib.Path]] = None) -> Any:
        """Rows input / latent / reconstruction / |error| for up to ``n`` image-shaped samples
        (``(B, C, H, W)`` with C in 1 or 3, or ``(B, H, W)``)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        if self.x0 is None or self.x0.dim() < 3:
            raise ValueError("image_grid needs image-shaped data (B, C, H, W) or (B, H, W).")
        keys = list(self.roundtrips)
        if method is not None:
            keys = [k for k in keys if k[0] == method]
        if steps is not None:
            keys = [k for k in keys if k[1] == steps]
        if not keys:
            raise ValueError(f"no round trip for method={method!r}, steps={steps!r}.")
        rt = self.roundtrips[keys[-1]]
        rows = [("input", self.x0), ("latent", rt.latent), ("reconstruction", rt.reconstruction),
                ("|error| x 10^3", (rt.reconstruction - self.x0).abs() * 1e3)]
        k = min(n, self.x0.shape[0])
        fig, axes = plt.subplots(len(rows), k, figsize=(1.4 * k, 1.5 * len(rows)), squeeze=False)
        for i, (name, t) in enumerate(rows):
            for j in range(k):
                img = t[j].detach().to("cpu", torch.float64)
                if img.dim() == 3:
                    img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
                if name in ("input", "reconstruction"):
                    img = (img.clamp(-1, 1) + 1) / 2
                elif name == "latent":
                    img = (img.clamp(-3, 3) + 3) / 6
                else:
                    img = img.clamp(0, 1)
                axes[i][j].imshow(img.numpy(), cmap="gray", vmin=0, vmax=1)
                axes[i][j].set_xticks([])
                axes[i][j].set_yticks([])
            axes[i][0].set_ylabel(name, fontsize=7)
        fig.suptitle(f"{keys[-1][0]}, {keys[-1][1]} steps", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def save(self, folder: Union[str, pathlib.Path]) -> list[pathlib.Path]:
        """Write ``table.md``, ``rows.json``, ``error_vs_nfe.png`` and (images) ``grid.png``."""
        out = pathlib.Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "table.md", out / "rows.json", out / "error_vs_nfe.png"]
        paths[0].write_text(self.table() + "\n")
        paths[1].write_text(json.dumps(self.rows, indent=1) + "\n")
        import matplotlib.pyplot as plt

        plt.close(self.figure(paths[2]))
        if self.x0 is not None and self.x0.dim() >= 3:
            paths.append(out / "grid.png")
            plt.close(self.image_grid(path=paths[3]))
        return paths


def invertibility_report(
    model: EpsilonModel,
    x0: Tensor,
    methods: Sequence[MethodSpec] = DEFAULT_METHODS,
    steps: Sequence[int] = (10, 20, 50),
    *,
    latent_check: bool = True,
    latent_scale: Optional[float] = None,
    **kwargs: Any,
) -> InvertibilityReport:
    """Round trips of every method at every step count.

    Args:
        model, x0: the model and a data batch.
        methods: names (a solver for naive inversion, or ``"fixed_point"``, ``"edict"``, ``"bdia"``)
            or ``(name, options)`` pairs, e.g. ``("fixed_point", {"solver": "heun"})``.
        steps: step counts.
        latent_check: add :func:`~flowode.invert.latent_stats` of each latent to its row.
        latent_scale: divide latents by this before the normality checks (VE / EDM latents).
        **kwargs: passed to every :func:`~flowode.invert.roundtrip` (``spacing``, ``reference``, ...).
    """
    rows: list[dict[str, Any]] = []
    rts: dict[tuple[str, int], RoundTrip] = {}
    for spec in methods:
        name, opts = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        label = _label(name, opts)
        for n in steps:
            rt = roundtrip(model, x0, int(n), name, **opts, **kwargs)
            row: dict[str, Any] = {"method": label, "steps": int(n), **rt.summary()}
            row["method"] = label
            if latent_check:
                row.update(latent_stats(rt.latent, scale=latent_scale).as_dict())
                row["latent_mean"] = row.pop("mean")
                row["latent_std"] = row.pop("std")
            rows.append(row)
            rts[(label, int(n))] = rt
    return InvertibilityReport(rows=rows, roundtrips=rts, x0=x0)
