"""Round-trip measurement: encode data to a latent, decode it back, and report what was lost.

``roundtrip(model, x0, steps, method)`` encodes ``x0`` on the reverse of the decode grid and decodes
the latent on the decode grid (DESIGN.md sec. 4: encode and decode visit the same
``(sigma_i, sigma_{i+1})`` pairs). ``method`` is any deterministic registered solver (naive
inversion: the solver integrates the reversed grid, as :func:`flowode.encode` does) or one of the
exact methods ``"fixed_point"``, ``"edict"``, ``"bdia"`` (:mod:`flowode.invert.fixed_point`,
:mod:`flowode.invert.coupled`).

Naive inversion with a solver of order ``p`` has a round-trip error ``O(h^p)``: for DDIM the
Euler step forward then backward leaves ``-h^2 f' f`` per step, so the global round-trip error is
first order. The exact methods are exact up to round-off (EDICT, BDIA) or up to the fixed-point
tolerance.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..analytic import AnalyticModel, Gaussian, GaussianMixture, reference_solve
from ..grids import split_grid_options
from ..integrate import integrate
from ..models import EpsilonModel
from ..orders import fit_order
from ..solvers import SolverError, make
from ._common import decode_grid, rel_max_error
from .coupled import _bdia_decode, bdia_encode, edict_decode, edict_encode
from .fixed_point import fixed_point_encode

__all__ = ["RoundTrip", "roundtrip", "EXACT_METHODS", "fit_order", "ConvergenceStudy", "convergence",
           "reference_latent"]

#: inversion methods that are not plain solvers
EXACT_METHODS = ("fixed_point", "edict", "bdia")


@dataclass
class RoundTrip:
    """Result of :func:`roundtrip`. Per-sample tensors have shape ``(B,)`` (float64).

    Attributes:
        method: the inversion method (solver name or exact method).
        sigmas: the decode grid (the encode grid is its reverse).
        latent: the encoded latent at ``sigmas[0]`` (for EDICT the ``x`` chain, for BDIA ``z_0``;
            the full state is in ``latent_state``).
        reconstruction: the decoded data at ``sigmas[-1]``.
        x0_rmse, x0_max_abs: reconstruction error per sample (root-mean-square, max abs).
        x0_rel_error: ``x0_max_abs / max|x0|`` per sample.
        psnr: ``10 log10(data_range^2 / mse)`` per sample for image-shaped data (``x0.dim() >= 3``)
            or when ``data_range`` is given, else ``None``.
        nfe_encode, nfe_decode: model evaluations of each direction.
        latent_error: RMSE of the latent against a reference encode (closed form for a
            :class:`~flowode.analytic.Gaussian`, else :func:`~flowode.analytic.reference_solve`),
            or ``None`` when not computed.
        latent_state: the method's full latent (``EdictLatent``, ``BdiaLatent``), or the
            ``FixedPointResult`` (iterations and NFE per step), else ``None``.
    """

    method: str
    sigmas: Tensor
    latent: Tensor
    reconstruction: Tensor
    x0_rmse: Tensor
    x0_max_abs: Tensor
    x0_rel_error: Tensor
    nfe_encode: int
    nfe_decode: int
    psnr: Optional[Tensor] = None
    latent_error: Optional[Tensor] = None
    latent_reference: Optional[Tensor] = None
    latent_state: Any = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def summary(self) -> dict[str, Any]:
        """Batch summary: means / maxima of the per-sample errors and the NFE."""
        out: dict[str, Any] = {
            "method": self.method, "steps": self.steps, "nfe_encode": self.nfe_encode,
            "nfe_decode": self.nfe_decode, "x0_rmse": float(self.x0_rmse.mean()),
            "x0_max_abs": float(self.x0_max_abs.max()), "x0_rel_error": float(self.x0_rel_error.max()),
        }
        if self.psnr is not None:
            out["psnr"] = float(self.psnr.mean())
        out["latent_error"] = None if self.latent_error is None else float(self.latent_error.mean())
        return out


def _gaussian_of(model: EpsilonModel, data: Optional[GaussianMixture]) -> Optional[GaussianMixture]:
    if data is not None:
        return data
    fn = getattr(model, "exact_eps", None)
    for cell in getattr(fn, "__closure__", None) or ():
        if isinstance(cell.cell_contents, GaussianMixture):
            return cell.cell_contents
    return None


def reference_latent(model: EpsilonModel, x0: Tensor, sigmas: Tensor, data: Optional[GaussianMixture] = None,
                     solve: bool = True) -> Optional[Tensor]:
    """The exact encode of ``x0`` from ``sigmas[-1]`` to ``sigmas[0]``: the closed-form flow for a
    :class:`~flowode.analytic.Gaussian` model, else (``solve=True``) a tight
    :func:`~flowode.analytic.reference_solve` (analytic models only for grids starting at 0: a
    network is not defined at sigma = 0). Does not count towards any round-trip NFE."""
    lo, hi = float(sigmas[-1]), float(sigmas[0])
    g = _gaussian_of(model, data)
    if isinstance(g, Gaussian):
        return g.flow(x0.to(torch.float64), lo, hi, model.schedule).to(x0.dtype)
    if not solve:
        return None
    if lo == 0.0 and not isinstance(model, AnalyticModel):
        return None
    return reference_solve(model, x0.to(torch.float64) if isinstance(model, AnalyticModel) else x0, lo, hi).to(x0.dtype)


def _errors(x0: Tensor, rec: Tensor, data_range: Optional[float]) -> dict[str, Any]:
    d = (rec.detach() - x0.detach()).to(torch.float64).flatten(1)
    mse = (d * d).mean(1)
    out: dict[str, Any] = {"x0_rmse": mse.sqrt(), "x0_max_abs": d.abs().amax(1), "x0_rel_error": rel_max_error(
        rec - x0, x0)}
    if data_range is not None or x0.dim() >= 3:
        rng = 2.0 if data_range is None else float(data_range)
        out["psnr"] = 10 * torch.log10(rng**2 / mse.clamp_min(1e-300))
    return out


def roundtrip(
    model: EpsilonModel,
    x0: Tensor,
    steps: Optional[int] = 10,
    method: str = "ddim",
    spacing: Optional[str] = None,
    *,
    sigmas: Optional[Union[Tensor, Sequence[float], np.ndarray]] = None,
    reference: Optional[bool] = None,
    data: Optional[GaussianMixture] = None,
    data_range: Optional[float] = None,
    **options: Any,
) -> RoundTrip:
    """Encode ``x0`` and decode it back; report the reconstruction and latent errors and the NFE.

    Args:
        model: the model.
        x0: data, batch first (the state at the clean end of the grid, usually ``sigma = 0``).
        steps: number of steps (ignored when ``sigmas`` is given).
        method: a deterministic registered solver (``flowode.solvers.available()``) for naive
            inversion, or ``"fixed_point"``, ``"edict"``, ``"bdia"``.
        spacing: grid spacing (default: the solver's, else the schedule's).
        sigmas: an explicit *decode* grid (strictly decreasing), instead of ``steps`` / ``spacing``.
        reference: latent reference: ``None`` (default) uses the closed form when the model is a
            single :class:`~flowode.analytic.Gaussian` and skips otherwise; ``True`` also runs
            :func:`~flowode.analytic.reference_solve` (costly); ``False`` never.
        data: the analytic data distribution (found automatically for ``GaussianMixture.model``).
        data_range: PSNR data range (default 2.0 for data in [-1, 1]; PSNR is reported for
            image-shaped data or when this is given).
        **options: grid keywords (``final``, ``sigma_min``, ``sigma_max``, ``rho``, ``offset``), then
            the method's options: solver options for a solver; ``p`` for EDICT (default 0.93) and
            ``accumulate`` (default True: float64 chains around a lower-precision network);
            ``gamma`` for BDIA (default 1.0); for fixed_point ``solver`` (default ``"ddim"``; or
            ``"dpm_solver++_2m"``), ``tol``, ``max_iter``, ``anderson``, ``on_fail`` and the solver's options.

    Raises:
        GridError: an increasing ``sigmas`` (a decode grid must decrease) or a bad grid;
        SolverError: a stochastic solver, or encoding to ``sigma = inf``.
    """
    if not isinstance(model, EpsilonModel):
        raise TypeError(f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}.")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise TypeError("`x0` must be a floating-point tensor with a batch dimension.")
    grid_kwargs, options = split_grid_options(options)
    key = str(method).strip().lower().replace("-", "_")
    stats: dict[str, Any] = {}
    state: Any = None
    steps_arg = steps if sigmas is None else None
    if key in EXACT_METHODS:
        fp_solver = make(options.get("solver", "ddim")) if key == "fixed_point" else None
        g = decode_grid(model, steps_arg, spacing, sigmas, fp_solver, **grid_kwargs)
        if key == "edict":
            p = float(options.pop("p", 0.93))
            acc = bool(options.pop("accumulate", True))
            _no_more(options, key)
            state = edict_encode(model, x0, g, p, accumulate=acc)
            pair = edict_decode(model, state, g, p, accumulate=acc)
            rec, latent, nfe_enc, nfe_dec = pair.x, state.x.to(x0.dtype), state.nfe, pair.nfe
        elif key == "bdia":
            gamma = float(options.pop("gamma", 1.0))
            _no_more(options, key)
            state = bdia_encode(model, x0, g, gamma)
            rec, nfe_dec = _bdia_decode(model, state, g, gamma)
            latent, nfe_enc = state.z0, state.nfe
        else:
            solver = options.pop("solver", "ddim")
            state = fixed_point_encode(model, x0, g, solver, **options)
            latent = state.latent
            solver_opts = {k: v for k, v in options.items() if k not in _FIXED_POINT_KEYWORDS}
            back = integrate(model, latent, g, solver, check_prior=False, **solver_opts)
            rec, nfe_enc, nfe_dec = back.x, state.nfe, back.nfe
            stats.update(iterations=state.iterations, nfe_per_step=state.nfe_per_step,
                         fixed_point_residual=state.residual, converged=state.converged)
    else:
        slv = make(key, **options)
        if slv.stochastic:
            raise SolverError(
                f"solver {slv.name!r} is stochastic; a round trip needs a deterministic map. Use e.g. 'ddim' "
                "(eta=0), 'heun', or an exact method: 'fixed_point', 'edict', 'bdia'."
            )
        g = decode_grid(model, steps_arg, spacing, sigmas, slv, **grid_kwargs)
        enc = integrate(model, x0, torch.flip(g, [0]), slv)
        dec = integrate(model, enc.x, g, slv, check_prior=False)  # an encoded latent, judged by latent_stats
        latent, rec, nfe_enc, nfe_dec = enc.x, dec.x, enc.nfe, dec.nfe
        stats.update(encode_stats=enc.stats, decode_stats=dec.stats)
    errs = _errors(x0, rec, data_range)
    ref = None
    lat_err = None
    if reference is not False:
        ref = reference_latent(model, x0, g, data, solve=bool(reference))
        if ref is not None:
            lat_err = (latent.detach() - ref).to(torch.float64).flatten(1).pow(2).mean(1).sqrt()
    return RoundTrip(method=key, sigmas=g, latent=latent, reconstruction=rec, nfe_encode=nfe_enc,
                     nfe_decode=nfe_dec, latent_error=lat_err, latent_reference=ref, latent_state=state,
                     stats=stats, **errs)


#: the keyword-only options of fixed_point_encode (the rest are the solver's)
_FIXED_POINT_KEYWORDS = tuple(name for name, p in inspect.signature(fixed_point_encode).parameters.items()
                              if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _no_more(options: dict[str, Any], method: str) -> None:
    if options:
        takes = {"edict": "`p`, `accumulate`", "bdia": "`gamma`"}[method]
        raise TypeError(f"method {method!r} got unknown option(s) {sorted(options)}; it takes {takes} "
                        "(and the grid keywords).")


# ------------------------------------------------------------------------------------ convergence
@dataclass
class ConvergenceStudy:
    """Round-trip and latent errors against the step count, with fitted orders."""

    method: str
    steps: list[int]
    nfe_encode: list[int]
    nfe_decode: list[int]
    x0_error: list[float]
    latent_error: list[Optional[float]]
    order_x0: float
    order_latent: float
    roundtrips: list[RoundTrip] = field(default_factory=list, repr=False)


def convergence(model: EpsilonModel, x0: Tensor, method: str = "ddim", steps: Sequence[int] = (10, 20, 40, 80),
                **kwargs: Any) -> ConvergenceStudy:
    """Run :func:`roundtrip` at each step count and fit the order of the mean reconstruction RMSE
    and of the mean latent error against ``steps`` (:func:`fit_order`)."""
    rts = [roundtrip(model, x0, int(n), method, **kwargs) for n in steps]
    x_err = [float(r.x0_rmse.mean()) for r in rts]
    l_err = [None if r.latent_error is None else float(r.latent_error.mean()) for r in rts]
    return ConvergenceStudy(
        method=str(method), steps=[int(n) for n in steps], nfe_encode=[r.nfe_encode for r in rts],
        nfe_decode=[r.nfe_decode for r in rts], x0_error=x_err, latent_error=l_err,
        order_x0=fit_order(steps, x_err),
        order_latent=fit_order(steps, [float("nan") if e is None else e for e in l_err]),
        roundtrips=rts,
    )
