"""Models: a network plus its schedule, seen as an epsilon / x0 predictor at a noise level ``sigma``.

A network may predict ``eps``, ``x0``, ``v`` or the score. Given the state ``x`` and ``sigma``
(``alpha = alpha(sigma)``, ``std = alpha * sigma``) they convert exactly into each other:

    x0  = (x - std * eps) / alpha              eps = (x - alpha * x0) / std
    v   = alpha * eps - std * x0               (Salimans & Ho 2022, sec. 4; VP only)
    eps = alpha * v + std * x                  x0  = alpha * x - std * v
    score = -eps / std                         (Song et al. 2021, score-SDE)

Solvers never see the raw output: they ask :meth:`EpsilonModel.predict` for ``(eps, x0)``.
Every call of the network increments :attr:`EpsilonModel.nfe`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["EpsilonModel", "Prediction", "NetworkOutputError", "PREDICTIONS"]

PREDICTIONS = ("eps", "x0", "v", "score")

NetworkFn = Callable[[Tensor, Tensor], Tensor]


class NetworkOutputError(RuntimeError):
    """The network returned a tensor of the wrong shape or with NaN / Inf entries."""


class Prediction:
    """What a solver gets from one model evaluation at ``(x, sigma)``: ``eps`` and the denoised
    ``x0``. For an eps-prediction network ``x0 = x/alpha - sigma*eps`` is computed on first access
    only, so solvers that need only ``eps`` (DDIM, Runge-Kutta in sigma) pay nothing for it."""

    __slots__ = ("eps", "_x0", "_x", "_alpha", "_sigma")

    def __init__(self, eps: Tensor, x0: Optional[Tensor] = None, *, x: Optional[Tensor] = None,
                 alpha: float = 1.0, sigma: float = 0.0) -> None:
        self.eps = eps
        self._x0 = x0
        self._x, self._alpha, self._sigma = x, alpha, sigma

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            assert self._x is not None
            if self._sigma == 0.0:
                self._x0 = self._x
            else:
                self._x0 = torch.add(self._x / self._alpha, self.eps, alpha=-self._sigma)
            self._x = None
        return self._x0


class EpsilonModel:
    """Wrap ``fn(x, t) -> output`` and its schedule as an epsilon / x0 predictor.

    Args:
        fn: the network. It receives the state ``x`` (model coordinates, i.e. ``alpha * xbar``
            for VP) and ``t``, a 1-D tensor with one native timestep per sample (the state's dtype
            and device), and returns a tensor shaped like ``x``.
        schedule: the :class:`~flowode.schedules.Schedule` the network was trained with.
        prediction: what ``fn`` returns: ``"eps"`` (default), ``"x0"``, ``"v"`` or ``"score"``.
        clip_x0: optional ``(low, high)``; the x0 prediction is clamped to it and ``eps`` is
            recomputed from the clamped x0 (DDPM's ``clip_denoised``).
        dynamic_threshold: optional percentile ``p`` in (0, 1); Imagen's dynamic thresholding
            (Saharia et al. 2022, sec. 2.3): ``s = max(1, quantile(|x0|, p))``, ``x0 <- clamp(x0, -s, s)/s``.
        guidance_scale, uncond_fn: classifier-free guidance (Ho & Salimans 2022, eq. 6):
            ``eps = eps_uncond + w * (eps_cond - eps_uncond)``. With ``uncond_fn`` the two
            predictions come from two calls; with ``batched_cfg=(cond, uncond)`` they come from one
            call ``fn(cat[x, x], cat[t, t], cat[cond, uncond])``. Guidance combines the outputs in
            eps space after conversion, so it works for every parameterisation.
        check_finite: raise :class:`NetworkOutputError` on NaN / Inf output (one reduction per call).

    Attributes:
        nfe: number of model evaluations so far (a guided evaluation counts once; see
            :attr:`network_passes` for the number of network calls times batch copies).
    """

    def __init__(
        self,
        fn: NetworkFn,
        schedule: Schedule,
        prediction: str = "eps",
        *,
        clip_x0: Optional[tuple[float, float]] = None,
        dynamic_threshold: Optional[float] = None,
        guidance_scale: Optional[float] = None,
        uncond_fn: Optional[NetworkFn] = None,
        batched_cfg: Optional[tuple[Tensor, Tensor]] = None,
        check_finite: bool = True,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"`fn` must be callable fn(x, t) -> tensor, got {type(fn).__name__}.")
        if not isinstance(schedule, Schedule):
            raise TypeError(
                f"`schedule` must be a flowode Schedule, got {type(schedule).__name__}; "
                "build one with e.g. flowode.DiscreteVPSchedule.linear()."
            )
        if prediction not in PREDICTIONS:
            raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")
        if prediction == "v" and schedule.family != "vp":
            raise ValueError("`prediction='v'` is defined for VP schedules only.")
        if dynamic_threshold is not None and not 0 < dynamic_threshold < 1:
            raise ValueError(f"`dynamic_threshold` is a percentile in (0, 1), got {dynamic_threshold}.")
        if (uncond_fn is not None or batched_cfg is not None) and guidance_scale is None:
            raise ValueError("`uncond_fn` / `batched_cfg` need `guidance_scale`.")
        if uncond_fn is not None and batched_cfg is not None:
            raise ValueError("give either `uncond_fn` (two calls) or `batched_cfg` (one call), not both.")
        if guidance_scale is not None and uncond_fn is None and batched_cfg is None:
            raise ValueError("`guidance_scale` needs `uncond_fn` or `batched_cfg`.")
        self.fn = fn
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold
        self.guidance_scale = guidance_scale
        self.uncond_fn = uncond_fn
        self.batched_cfg = batched_cfg
        self.check_finite = check_finite
        self.nfe = 0
        self.network_passes = 0
        self.step_hint: Optional[int] = None  # set by the driver so errors can name the step
        self._coef_cache: dict[float, tuple[float, float]] = {}
        self._t_cache: dict[float, float] = {}
        self._coef_owner: Optional[Schedule] = None

    # ----------------------------------------------------------------------------- counting
    #: whether the model can be evaluated at sigma = 0 itself (exact analytic models can)
    defined_at_zero: bool = False

    def reset_nfe(self) -> None:
        self.nfe = 0
        self.network_passes = 0

    # ----------------------------------------------------------------------------- network
    def coefficients(self, sigma: float) -> tuple[float, float]:
        """``(alpha, std)`` at the noise level ``sigma``, memoised per ``sigma`` (a sampling loop asks
        for the same few levels at every step and every run, and the schedule's tensor maths costs
        more than a cheap network call)."""
        cache = self._coef_cache
        if self._coef_owner is not self.schedule or len(cache) > 65536:  # schedule swapped / unbounded grids
            cache.clear()
            self._t_cache.clear()
            self._coef_owner = self.schedule
        hit = cache.get(sigma)
        if hit is None:
            sched = self.schedule
            hit = (float(sched.alpha_from_sigma(sigma)), float(sched.std_from_sigma(sigma)))
            cache[sigma] = hit
        return hit

    def timestep(self, sigma: float) -> float:
        """The network's native timestep at ``sigma`` (memoised). ``sigma = 0`` (clean data, first
        step of an encode) is evaluated at the smallest trained noise level, as diffusers'
        DDIMInverseScheduler does; the conversions still use ``sigma = 0``."""
        self.coefficients(sigma)  # validates the cache owner
        t = self._t_cache.get(sigma)
        if t is None:
            sched = self.schedule
            t = float(sched.t(max(sigma, sched.sigma_min) if sigma == 0.0 else sigma))
            self._t_cache[sigma] = t
        return t

    def _timesteps(self, x: Tensor, sigma: float) -> Tensor:
        return torch.full((x.shape[0],), self.timestep(sigma), dtype=x.dtype, device=x.device)

    def network(self, x: Tensor, sigma: float) -> Tensor:
        """Raw network output at noise level ``sigma`` (one NFE). Subclasses may override."""
        t = self._timesteps(x, sigma)
        return self.fn(x, t)

    def _raw(self, x: Tensor, sigma: float) -> list[Tensor]:
        """Outputs to be converted to eps; two for guidance, else one."""
        if self.uncond_fn is not None:
            t = self._timesteps(x, sigma)
            self.network_passes += 2
            return [self.fn(x, t), self.uncond_fn(x, t)]
        if self.batched_cfg is not None:
            cond, uncond = self.batched_cfg
            t = self._timesteps(x, sigma)
            out = self.fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond]))  # type: ignore[call-arg]
            self.network_passes += 2
            return list(out.chunk(2))
        self.network_passes += 1
        return [self.network(x, sigma)]

    def _where(self, sigma: float) -> str:
        return f"at sigma={sigma:.6g}" + ("" if self.step_hint is None else f" (step {self.step_hint})")

    def _check(self, out: Tensor, x: Tensor, sigma: float) -> None:
        if not isinstance(out, Tensor) or out.shape != x.shape:
            where = self._where(sigma)
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise NetworkOutputError(
                f"the network returned shape {shape} {where}, expected {tuple(x.shape)} "
                "(the shape of the state x). Check the network's output channels."
            )
        # one reduction first (NaN / Inf propagate through a sum); the exact element-wise test only
        # when the sum is not finite (a bad entry, or a sum that overflowed)
        if self.check_finite and not math.isfinite(float(out.detach().sum())) and not bool(torch.isfinite(out).all()):
            bad = (~torch.isfinite(out)).flatten(1).any(1).nonzero().flatten().tolist()
            where = self._where(sigma)
            raise NetworkOutputError(
                f"the network returned NaN/Inf {where} for samples {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}. Lower the step size, check the inputs, or "
                "run the network in float32."
            )

    # ----------------------------------------------------------------------------- conversions
    def _to_eps(self, out: Tensor, x: Tensor, sigma: float) -> Tensor:
        sched = self.schedule
        if self.prediction == "eps":
            return out
        alpha = float(sched.alpha_from_sigma(sigma))
        std = float(sched.std_from_sigma(sigma))
        if self.prediction == "x0":
            if std == 0.0:
                raise ValueError("an x0-prediction network cannot give eps at sigma = 0.")
            return (x - alpha * out) / std
        if self.prediction == "v":
            return alpha * out + std * x
        return -std * out  # score

    def _convert(self, out: Tensor, x: Tensor, sigma: float, alpha: float, std: float) -> Prediction:
        """Raw output -> (eps, x0) by the exact identities in the module docstring."""
        p = self.prediction
        if p == "eps" or p == "score":
            eps = out if p == "eps" else -std * out
            if alpha == 0.0:
                raise ValueError(
                    f"an {p}-prediction model cannot give x0 at zero terminal SNR (sigma = inf): "
                    "x0 = (x - std * eps) / alpha divides by zero. Start the grid below sigma = inf, "
                    "or use a v- or x0-prediction network (Lin et al. 2024, sec. 3)."
                )
            return Prediction(eps, x=x, alpha=alpha, sigma=sigma)
        if p == "x0":
            eps = (x - alpha * out) / std if std != 0.0 else torch.zeros_like(out)
            return Prediction(eps, out)
        # v-prediction
        return Prediction(torch.add(alpha * out, x, alpha=std), torch.add(alpha * x, out, alpha=-std))

    def predict(self, x: Tensor, sigma: Union[float, Tensor]) -> Prediction:
        """One model evaluation: ``(eps, x0)`` at ``(x, sigma)``; increments :attr:`nfe`.

        ``sigma`` is a Python float (or a 0-d tensor) shared by the whole batch.
        """
        sigma = float(sigma)
        if sigma == 0.0 and not self.defined_at_zero:
            # The network is not trained at sigma = 0 (the first step of an encode): evaluate it at the
            # smallest trained level and convert with that level's coefficients, as diffusers'
            # DDIMInverseScheduler does; the clean state is its own x0. For an eps network this is just
            # eps(x, t_min); for x0 / v networks it keeps eps informative instead of 0/0.
            pred = self.predict(x, self.schedule.sigma_min)
            return Prediction(pred.eps, x)
        alpha, std = self.coefficients(sigma)
        outs = self._raw(x, sigma)
        for out in outs:
            self._check(out, x, sigma)
        self.nfe += 1
        preds = [self._convert(o, x, sigma, alpha, std) for o in outs]
        if len(preds) == 2:
            w = float(self.guidance_scale)  # type: ignore[arg-type]
            c, u = preds
            pred = Prediction(torch.lerp(u.eps, c.eps, w), torch.lerp(u.x0, c.x0, w))
        else:
            pred = preds[0]
        if self.clip_x0 is not None or self.dynamic_threshold is not None:
            x0 = self._threshold(pred.x0)
            eps = (x - alpha * x0) / std if std != 0.0 else pred.eps
            pred = Prediction(eps, x0)
        return pred

    def _threshold(self, x0: Tensor) -> Tensor:
        if self.clip_x0 is not None:
            x0 = x0.clamp(*self.clip_x0)
        if self.dynamic_threshold is not None:
            flat = x0.abs().flatten(1)
            if flat.dtype not in (torch.float32, torch.float64):  # quantile needs float32/64
                flat = flat.to(torch.float32)
            s = torch.quantile(flat, self.dynamic_threshold, dim=1).to(x0.dtype)
            s = torch.clamp(s, min=1.0).view(-1, *([1] * (x0.dim() - 1)))
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        return x0

    # ----------------------------------------------------------------------------- conveniences
    def eps(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Epsilon prediction at ``(x, sigma)`` (one NFE)."""
        return self.predict(x, sigma).eps

    def x0(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Denoised prediction at ``(x, sigma)`` (one NFE)."""
        return self.predict(x, sigma).x0

    def score(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Score ``grad_x log p_sigma(x) = -eps / std`` (one NFE)."""
        std = float(self.schedule.std_from_sigma(float(sigma)))
        return -self.predict(x, sigma).eps / std

    def prior_sample(self, shape: tuple[int, ...], sigma: Optional[float] = None, *,
                     generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                     device: Union[str, torch.device] = "cpu") -> Tensor:
        """Draw the state at ``sigma`` (default ``sigma_max``) from the prior ``N(0, std^2 I)``
        with ``std = alpha * sqrt(1 + sigma^2)`` in ``x`` coordinates (1 for VP, ``sqrt(1+sigma^2)``
        for VE), ignoring the data variance as the peers do."""
        s = self.schedule.sigma_max if sigma is None else float(sigma)
        alpha = float(self.schedule.alpha_from_sigma(s))
        std = alpha * math.sqrt(1 + s * s) if math.isfinite(s) else 1.0
        return torch.randn(shape, generator=generator, dtype=dtype, device=device) * std

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"EpsilonModel(prediction={self.prediction!r}, schedule={self.schedule!r}, nfe={self.nfe})"
