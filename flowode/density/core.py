"""``flowode.likelihood(model, x0, ...)``: the log-likelihood of data under the probability-flow ODE.

The flow of the model (DESIGN.md section 2) is a continuous normalising flow. Integrate it from
data at ``sigma_start`` to ``sigma_end`` jointly with its divergence (instantaneous change of
variables, Chen et al. 2018, Theorem 1; Song et al. 2021, score SDE, eq. 39 and app. D.2). In DDIM
coordinates ``xbar = x / alpha``, ``d xbar / d sigma = g = eps(alpha xbar, sigma)``, so

    log p_start(x_start) = log p_end(x_end) + log |det d x_end / d x_start|,
    log |det d x_end / d x_start| = int_{sigma_start}^{sigma_end} div_xbar g d sigma
                                    + D log(alpha_end / alpha_start),          div_xbar g = alpha div_x eps.

``prior`` is the first term (by default ``N(0, std_end^2 I)``, the marginal of
``x = alpha x0 + std eps`` as ``alpha -> 0``: for VP ``N(0, I)`` as in score SDE's ``prior_logp``,
for VE ``N(0, sigma_max^2 I)``), ``flow`` the second. The divergence channels ride through the
driver inside the state (:mod:`flowode.density.divergence`), so every deterministic solver and
every adaptive back-end works unchanged.

**The start level.** A trained network is not defined at ``sigma = 0``, so the flow starts at
``sigma_start > 0`` (default: the schedule's smallest trained level, ``schedule.sigma_min``; score
SDE starts at ``t = 1e-5``) with the data itself as the state there. What is computed is
``log p_{sigma_start}(x0)``, the log density of the model's marginal at ``sigma_start``; the
dropped term is ``log p_0(x0) - log p_{sigma_start}(x0)`` (it vanishes as ``sigma_start -> 0`` for
a smooth density; for quantised data it is what dequantisation accounts for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..models import EpsilonModel
from ..solvers.base import SolverError
from ..solvers.registry import make
from .dequantize import bits_offset, dequantize_with_density
from .divergence import DIVERGENCES, MAX_EXACT_DIM, AugmentedModel, draw_probes

__all__ = ["likelihood", "LikelihoodResult", "gaussian_prior"]

Prior = Callable[[Tensor, float], Tensor]


@dataclass
class LikelihoodResult:
    """What :func:`likelihood` returns; per-sample values have shape ``(B,)``.

    Attributes:
        nats: negative log-likelihood ``-(prior + flow)`` in nats per sample (summed over dimensions).
        bits_per_dim: ``(nats + dequantization) / (D ln 2) + offset``: for dequantised data the
            bound on ``-log2 P(k) / D`` (:mod:`flowode.density.dequantize`).
        prior: ``log p_end(x_end)`` (nats).
        flow: ``log |det d x_end / d x_start|`` (nats); for Hutchinson the mean over the probes.
        stderr: standard error of ``nats`` (Hutchinson: the spread of the ``K`` probe estimates over
            ``sqrt(K)``; ``nan`` for one probe; 0 for the exact trace).
        stderr_bpd: ``stderr / (D ln 2)``.
        nfe: network evaluations of the solve (each one also costs ``D`` or ``K`` backward passes).
        sigma_start, sigma_end: where the flow starts (the data) and ends (the prior).
        latent: the state at ``sigma_end``.
        dim: ``D``, the dimensions per sample.
        offset: the bits/dim offset (``log2(L / (hi - lo))``, ``L = 2^bits``, for dequantised data, else 0).
        x: the data the flow started from (dequantised when ``bits`` is given).
        dequantization: ``log q(u)`` of the dequantisation draw per sample (nats; 0 for uniform
            dequantisation and for continuous data).
        stats: the driver's statistics of the solve (``accepted``, ``rejected``, ...).
    """

    nats: Tensor
    bits_per_dim: Tensor
    prior: Tensor
    flow: Tensor
    stderr: Tensor
    stderr_bpd: Tensor
    nfe: int
    sigma_start: float
    sigma_end: float
    latent: Tensor
    dim: int
    offset: float
    x: Tensor
    dequantization: Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def log_prob(self) -> Tensor:
        """``prior + flow = -nats``: ``log p_{sigma_start}(x)`` of the model, per sample."""
        return -self.nats

    @property
    def dropped(self) -> str:
        """The term the start level leaves out, in words."""
        return (f"log p_0(x) - log p_sigma(x) at sigma_start = {self.sigma_start:.6g} (the flow cannot start at "
                "sigma = 0, where a network is not defined)")


def gaussian_prior(model: EpsilonModel) -> Prior:
    """``log N(x; 0, std(sigma)^2 I)`` per sample: the default prior at ``sigma_end``."""

    def prior(x: Tensor, sigma: float) -> Tensor:
        std = float(model.schedule.std_from_sigma(sigma))
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        d = flat.shape[1]
        return -0.5 * (flat * flat).sum(1) / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)

    return prior


def _check_level(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"`{name}` must be a finite noise level > 0, got {value!r}"
            + (": a network is not defined at sigma = 0; start at the smallest trained level "
               "(the default, schedule.sigma_min). The dropped term log p_0(x) - log p_sigma(x) is named in "
               "res.dropped." if name == "sigma_start" else ".")
        )
    return float(value)


def likelihood(
    model: EpsilonModel,
    x0: Tensor,
    *,
    solver: str = "dopri5",
    divergence: str = "exact",
    probes: int = 8,
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
    sigma_start: Optional[float] = None,
    sigma_end: Optional[float] = None,
    steps: Optional[int] = None,
    sigmas: Optional[Sequence[float]] = None,
    prior: Union[str, Prior] = "gaussian",
    bits: Optional[int] = None,
    levels: Optional[int] = None,
    data_range: tuple[float, float] = (-1.0, 1.0),
    dequantize_with: str = "uniform",
    **options: Any,
) -> LikelihoodResult:
    """Log-likelihood of ``x0`` under the probability-flow ODE of ``model`` (module docstring).

    Args:
        model: an :class:`~flowode.models.EpsilonModel` whose network treats samples independently
            (the divergence is taken of the batch's sum); no ``clip_x0`` / ``dynamic_threshold``.
        x0: data, batch first, in the model's coordinates.
        solver: any deterministic registered solver; adaptive ones (``"dopri5"`` default,
            ``"scipy_rk45"`` as in score SDE, ``"dp45"``, ...) integrate between the two levels; a
            fixed-step one needs ``steps`` (log-uniform in sigma, i.e. uniform in log-SNR) or ``sigmas``.
        divergence: ``"exact"`` (``D`` backward passes per evaluation) or ``"hutchinson"``.
        probes: ``K``, the Hutchinson probes per sample, drawn once per trajectory (``>= 2`` for a
            standard error).
        probe: ``"rademacher"`` (default) or ``"gaussian"``.
        generator: the random stream of the probes and of the dequantisation noise.
        sigma_start: where the flow starts, ``> 0`` (default ``schedule.sigma_min``; see the module
            docstring for the term this drops).
        sigma_end: where the prior is evaluated (default ``schedule.sigma_max``; finite).
        steps, sigmas: the grid of a fixed-step solver (increasing, from ``sigma_start`` to ``sigma_end``).
        prior: ``"gaussian"`` (:func:`gaussian_prior`) or ``prior(x_end, sigma_end) -> (B,)`` log density.
        bits: the data are ``bits``-bit values ``lo + (hi - lo) k / (2^bits - 1)`` in ``data_range``:
            they are dequantised (``dequantize_with="uniform"``) and ``offset = log2(2^bits / (hi - lo))``
            is added to the bits/dim (7 for 8-bit data in ``[-1, 1]``; :mod:`flowode.density.dequantize`).
        levels: instead of ``bits``, the number of quantisation levels ``L`` (``2^bits``; e.g. 17 for
            scikit-learn's digits, ``k / 8 - 1``): offset ``log2(L / (hi - lo))``.
        data_range: ``(lo, hi)`` of the data when ``bits`` / ``levels`` is given.
        dequantize_with: ``"uniform"`` (default) or ``"truncated_normal"`` (``u ~ N(1/2, 0.25^2)`` on
            ``[0, 1)``; its ``log q(u)`` enters the bound as ``res.dequantization``).
        **options: solver options (``rtol``, ``atol`` -- default ``1e-5`` each --, ``coordinates``
            ``"sigma"`` / ``"lambda"`` / ``"t"``, ``max_nfe``, ...).

    Returns:
        :class:`LikelihoodResult`.
    """
    from ..integrate import integrate

    if not isinstance(model, EpsilonModel):
        raise TypeError(f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}.")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise TypeError("`x0` must be a floating-point tensor with a batch dimension, shape (B, ...).")
    if model.clip_x0 is not None or model.dynamic_threshold is not None:
        raise ValueError("a model with `clip_x0` / `dynamic_threshold` has no probability-flow density (the clamp "
                         "is not a smooth flow); build the model without them for likelihood().")
    if divergence not in DIVERGENCES:
        raise ValueError(f"`divergence` must be one of {DIVERGENCES}, got {divergence!r}.")
    sched = model.schedule
    s0 = _check_level("sigma_start", sched.sigma_min if sigma_start is None else sigma_start)
    if sigma_end is None and math.isinf(sched.sigma_max):
        raise ValueError(
            "`sigma_end` must be given for this schedule: it reaches sigma = inf (pure noise, e.g. flow matching "
            "at t = 1), where the log-SNR flow ends at -inf and cannot be integrated; pass a finite level, e.g. "
            "sigma_end=500 (t = 0.998 on FlowMatchSchedule), with the prior of that level.")
    s1 = _check_level("sigma_end", sched.sigma_max if sigma_end is None else sigma_end)
    if not s1 > s0:
        raise ValueError(f"`sigma_end`={s1:.6g} must exceed `sigma_start`={s0:.6g}: the likelihood integrates data -> "
                         "noise (the other direction gives nonsense, e.g. ~31 bits/dim).")
    stepper = make(solver, **options)
    if stepper.stochastic:
        raise SolverError(f"solver {stepper.name!r} is stochastic: a likelihood needs a deterministic flow "
                          "(e.g. 'dopri5', 'scipy_rk45', 'heun', 'ddim').")
    b = x0.shape[0]
    shape = tuple(x0.shape[1:])
    d = math.prod(shape)
    offset = 0.0
    x = x0
    log_q: Optional[Tensor] = None
    if bits is not None:
        if levels is not None:
            raise ValueError("give `bits` or `levels`, not both (levels = 2 ** bits).")
        if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
            raise ValueError(f"`bits` must be a positive integer (8 for 8-bit images) or None, got {bits!r}.")
        levels = 2**bits
    if levels is not None:
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise ValueError(f"`levels` must be an integer >= 2 (the quantisation levels) or None, got {levels!r}.")
        lo, hi = (float(v) for v in data_range)
        if not hi > lo:
            raise ValueError(f"`data_range` must be (lo, hi) with hi > lo, got {data_range!r}.")
        x, log_q = dequantize_with_density(x0, levels, (lo, hi), dequantize_with, generator)
        offset = bits_offset(levels, (lo, hi))
    if divergence == "exact":
        if d > MAX_EXACT_DIM:
            raise ValueError(f"`divergence`='exact' needs {d} backward passes per evaluation (D = {d} > "
                             f"{MAX_EXACT_DIM}); use divergence='hutchinson'.")
        probe_t = None
    else:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"`probes` must be a positive integer, got {probes!r}.")
        probe_t = draw_probes(probe, probes, b, d, x.dtype, x.device, generator)  # once per trajectory
    aug = AugmentedModel(model, shape, probe_t)
    k = aug.channels
    if stepper.adaptive:
        if steps is not None or sigmas is not None:
            raise ValueError(f"solver {stepper.name!r} is adaptive: give `rtol`/`atol`, not `steps`/`sigmas`.")
        grid = torch.tensor([s0, s1], dtype=torch.float64)
    elif sigmas is not None:
        if steps is not None:
            raise ValueError("give `steps` or `sigmas`, not both.")
        if sigma_start is not None or sigma_end is not None:
            raise ValueError("give `sigmas` or `sigma_start` / `sigma_end`, not both: the grid's ends are the levels.")
        grid = torch.as_tensor(sigmas, dtype=torch.float64)
        if grid.dim() != 1 or len(grid) < 2 or not bool((grid[1:] > grid[:-1]).all()):
            raise ValueError("`sigmas` must be a 1-D increasing grid of >= 2 levels: the likelihood integrates "
                             "data -> noise.")
        s0 = _check_level("sigma_start", float(grid[0]))
        s1 = _check_level("sigma_end", float(grid[-1]))
    else:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"solver {stepper.name!r} takes fixed steps: give `steps` (a positive integer; the grid "
                             "is uniform in log sigma from sigma_start to sigma_end) or `sigmas`, "
                             f"got steps={steps!r}.")
        grid = torch.exp(torch.linspace(math.log(s0), math.log(s1), steps + 1, dtype=torch.float64))
        grid[0], grid[-1] = s0, s1
    y0 = torch.cat([x.reshape(b, d), torch.zeros(b, k, dtype=x.dtype, device=x.device)], dim=1)
    sol = integrate(aug, y0, grid, stepper)
    a0 = float(sched.alpha_from_sigma(s0))
    a1 = float(sched.alpha_from_sigma(s1))
    latent = sol.x[:, :d].reshape(b, *shape)
    ell = sol.x[:, d:].to(torch.float64) / a1  # (B, K): int div_xbar g d sigma, one per channel
    per_channel = ell + d * (math.log(a1) - math.log(a0))
    flow = per_channel.mean(1)
    if k > 1:
        stderr = per_channel.std(1, unbiased=True) / math.sqrt(k)
    elif probe_t is not None:
        stderr = torch.full((b,), math.nan, dtype=torch.float64)
    else:
        stderr = torch.zeros(b, dtype=torch.float64)
    prior_fn = gaussian_prior(model) if prior == "gaussian" else prior
    if not callable(prior_fn):
        raise ValueError(f"`prior` must be 'gaussian' or a callable prior(x, sigma) -> (B,), got {prior!r}.")
    lp = torch.as_tensor(prior_fn(latent, s1)).to(torch.float64).reshape(b)
    nats = -(lp + flow)
    scale = d * math.log(2.0)
    dq = torch.zeros(b, dtype=torch.float64) if log_q is None else log_q.to(torch.float64)
    return LikelihoodResult(nats=nats, bits_per_dim=(nats + dq) / scale + offset, dequantization=dq,
                            prior=lp, flow=flow, stderr=stderr,
                            stderr_bpd=stderr / scale, nfe=sol.nfe, sigma_start=s0, sigma_end=s1, latent=latent,
                            dim=d, offset=offset, x=x, stats=sol.stats)
