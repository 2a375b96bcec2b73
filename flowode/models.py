"""Models: a network plus its schedule, seen as an epsilon / x0 predictor at a noise level ``sigma``.

A network may predict ``eps``, ``x0``, ``v`` or the score; :mod:`flowode.parameterization` holds
the one table that converts them into each other. Solvers never see the raw output: they ask
:meth:`EpsilonModel.predict` for a :class:`Prediction` ``(eps, x0)``.

A model is stateless for the solvers: :func:`flowode.integrate` counts its own evaluations and
names the step of a failing one. ``EpsilonModel.nfe`` is only a lifetime total of this object's
evaluations, for a user's own bookkeeping; flowode never reads or resets it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .parameterization import PREDICTIONS, eps_from_x0, from_eps_x0, per_sample, to_eps, to_x0, x0_from_eps
from .schedules import Schedule

__all__ = ["EpsilonModel", "Prediction", "NetworkOutputError", "PREDICTIONS"]

NetworkFn = Callable[[Tensor, Tensor], Tensor]
Level = Union[float, Tensor]


class NetworkOutputError(RuntimeError):
    """The network returned a tensor of the wrong shape or with NaN / Inf entries."""


class Prediction:
    """What a solver gets from one model evaluation at ``(x, sigma)``: ``eps`` and the denoised
    ``x0``. For an eps-prediction network ``x0 = x/alpha - sigma*eps`` is computed on first access
    only, so solvers that need only ``eps`` (DDIM, Runge-Kutta in sigma) pay nothing for it."""

    __slots__ = ("eps", "_x0", "_x", "_alpha", "_sigma")

    def __init__(self, eps: Tensor, x0: Optional[Tensor] = None, *, x: Optional[Tensor] = None,
                 alpha: Level = 1.0, sigma: Level = 0.0) -> None:
        self.eps = eps
        self._x0 = x0
        self._x, self._alpha, self._sigma = x, alpha, sigma

    @property
    def x0(self) -> Tensor:
        if self._x0 is None:
            assert self._x is not None
            self._x0 = x0_from_eps(self._x, self.eps, self._alpha, self._sigma)
            self._x = None
        return self._x0


class EpsilonModel:
    """Wrap ``fn(x, t) -> output`` and its schedule as an epsilon / x0 predictor.

    Args:
        fn: the network. It receives the state ``x`` (model coordinates, i.e. ``alpha * xbar``
            for VP) and ``t``, a 1-D tensor with one native timestep per sample (the state's dtype
            and device), and returns a floating-point tensor shaped like ``x`` (another float dtype
            is cast to ``x``'s; an integer or boolean output is a :class:`NetworkOutputError`). It
            must not write into ``x``: the solver still needs it, and a call that does is a
            :class:`NetworkOutputError` naming the step.
        schedule: the :class:`~flowode.schedules.Schedule` the network was trained with.
        prediction: what ``fn`` returns: ``"eps"`` (default), ``"x0"``, ``"v"`` or ``"score"``.
        clip_x0: optional ``(low, high)`` with ``low < high``; the x0 prediction is clamped to it and ``eps`` is
            recomputed from the clamped x0 (DDPM's ``clip_denoised``).
        dynamic_threshold: optional percentile ``p`` in (0, 1); Imagen's dynamic thresholding
            (Saharia et al. 2022, sec. 2.3): ``s = max(1, quantile(|x0|, p))``, ``x0 <- clamp(x0, -s, s)/s``,
            the quantile taken over each sample's elements; ``eps`` is recomputed from the new x0.
        dynamic_threshold_max: optional upper bound ``m >= 1`` on that ``s``:
            ``s = clamp(quantile(|x0|, p), 1, m)``, the semantics of diffusers' ``sample_max_value``
            (its ``_threshold_sample``); ``m = 1`` is clipping to ``[-1, 1]``. Needs ``dynamic_threshold``.
        guidance_scale, uncond_fn: classifier-free guidance (Ho & Salimans 2022, eq. 6):
            ``eps = eps_uncond + w * (eps_cond - eps_uncond)``. With ``uncond_fn`` the two
            predictions come from two calls; with ``batched_cfg=(cond, uncond)`` they come from one
            call ``fn(cat[x, x], cat[t, t], cat[cond, uncond])``. Guidance combines the outputs in
            eps space after conversion, so it works for every parameterisation.
        check_finite: let :func:`flowode.integrate` check for NaN / Inf (default True; it names the
            step and sigma of the first bad network output). ``predict`` called directly checks
            every output.
        network_dtype: the dtype the network runs in (the dtype policy, docs/scale-out.md):
            ``None`` (default) passes the state's own dtype; ``torch.bfloat16`` / ``torch.float16`` /
            ``torch.float32`` cast ``x`` to it before each call and the output back to the state's
            dtype at once, so the solver state, the conversions (eps / x0 / v, guidance,
            thresholding), the coefficients and the noise levels stay in the state's float32 /
            float64. The timestep ``t`` is never rounded to a half-precision dtype (bfloat16 would
            turn t = 999 into 1000): it comes in float32 (or the state's float64), and the network
            embeds it itself, as diffusers' UNets and :mod:`flowode.nets` do. A half-precision
            state is refused when it is set. :meth:`cast_network` builds such a model with the
            weights cast too.

    Attributes:
        nfe: lifetime number of evaluations of this object (a guided evaluation counts once; see
            :attr:`network_passes` for network calls times batch copies). ``Solution.nfe`` is the
            count of one solve.
    """

    #: whether the model can be evaluated at sigma = 0 itself (exact analytic models can)
    defined_at_zero: bool = False
    #: whether an overridden :meth:`network` accepts a ``(B,)`` tensor of per-sample levels; a subclass
    #: that overrides ``network`` without setting it is evaluated one distinct level at a time (still
    #: one evaluation). The base ``network`` passes per-sample timesteps to ``fn``.
    per_sample_network: bool = False

    def __init__(
        self,
        fn: NetworkFn,
        schedule: Schedule,
        prediction: str = "eps",
        *,
        clip_x0: Optional[tuple[float, float]] = None,
        dynamic_threshold: Optional[float] = None,
        dynamic_threshold_max: Optional[float] = None,
        guidance_scale: Optional[Union[float, Tensor]] = None,
        uncond_fn: Optional[NetworkFn] = None,
        batched_cfg: Optional[tuple[Tensor, Tensor]] = None,
        check_finite: bool = True,
        network_dtype: Optional[torch.dtype] = None,
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
        if clip_x0 is not None:
            clip_x0 = _check_clip(clip_x0)
        if dynamic_threshold is not None and not 0 < dynamic_threshold < 1:
            raise ValueError(f"`dynamic_threshold` is a percentile in (0, 1), got {dynamic_threshold}.")
        if dynamic_threshold_max is not None:
            if dynamic_threshold is None:
                raise ValueError(f"`dynamic_threshold_max={dynamic_threshold_max}` bounds the dynamic threshold; "
                                 "give `dynamic_threshold` (the percentile, e.g. 0.995) too.")
            if isinstance(dynamic_threshold_max, bool) or not float(dynamic_threshold_max) >= 1.0:
                raise ValueError(f"`dynamic_threshold_max` must be a number >= 1 (the threshold is at least 1), "
                                 f"got {dynamic_threshold_max!r}.")
        if (uncond_fn is not None or batched_cfg is not None) and guidance_scale is None:
            raise ValueError("`uncond_fn` / `batched_cfg` need `guidance_scale`.")
        if uncond_fn is not None and batched_cfg is not None:
            raise ValueError("give either `uncond_fn` (two calls) or `batched_cfg` (one call), not both.")
        if guidance_scale is not None and uncond_fn is None and batched_cfg is None:
            raise ValueError("`guidance_scale` needs `uncond_fn` or `batched_cfg`.")
        if network_dtype is not None and network_dtype not in _NETWORK_DTYPES:
            raise TypeError(f"`network_dtype` must be None or one of torch.float16, torch.bfloat16, torch.float32, "
                            f"torch.float64, got {network_dtype!r}.")
        self.network_dtype = network_dtype
        self.fn = fn
        self.schedule = schedule
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.dynamic_threshold = dynamic_threshold
        self.dynamic_threshold_max = None if dynamic_threshold_max is None else float(dynamic_threshold_max)
        self.guidance_scale = guidance_scale
        self.uncond_fn = uncond_fn
        self.batched_cfg = batched_cfg
        self.check_finite = check_finite
        self.nfe = 0
        self.network_passes = 0
        self._coef_cache: dict[float, tuple[float, float]] = {}
        self._t_cache: dict[float, float] = {}
        self._coef_owner: Optional[Schedule] = None

    def reset_nfe(self) -> None:
        """Zero the lifetime counters (a convenience for users; flowode never calls it)."""
        self.nfe = 0
        self.network_passes = 0

    # ----------------------------------------------------------------------------- coefficients
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

    def _timesteps(self, x: Tensor, sigma: Level) -> Tensor:
        """The network's ``t`` argument: one native timestep per sample (a fresh tensor per call:
        caching these small tensors across steps pinned the heap between the network's large
        activations and made peak memory grow with the number of steps, benchmarks/memory.py).
        Float32 for a half-precision ``x`` (bfloat16 would round t = 999 to 1000)."""
        dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if isinstance(sigma, Tensor):
            return torch.as_tensor(self.schedule.t(sigma.detach().to("cpu", torch.float64))).to(x.device, dtype)
        return torch.full((x.shape[0],), self.timestep(sigma), dtype=dtype, device=x.device)

    # ----------------------------------------------------------------------------- network
    def network(self, x: Tensor, sigma: Level) -> Tensor:
        """Raw network output at noise level ``sigma`` (a float shared by the batch, or a ``(B,)``
        tensor of per-sample levels). Subclasses may override."""
        return self.fn(x, self._timesteps(x, sigma))

    def _cast_in(self, x: Tensor) -> Tensor:
        """``x`` in the network dtype (the dtype policy); the state itself must be float32 / float64."""
        nd = self.network_dtype
        if nd is None:
            return x
        if x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the solver state is {str(x.dtype).replace('torch.', '')} with `network_dtype` "
                             f"{str(nd).replace('torch.', '')}: keep the state (x_T) in float32 or float64 and let "
                             "`network_dtype` set the network's precision.")
        return x if x.dtype == nd else x.to(nd)

    def _net(self, x: Tensor, sigma: Level) -> Tensor:
        """:meth:`network` under the dtype policy: the input cast to ``network_dtype`` (the output
        is cast back to the state's dtype by :meth:`_check`, before any conversion)."""
        return self.network(self._cast_in(x), sigma)

    def _raw(self, x: Tensor, sigma: Level) -> list[Tensor]:
        """Outputs to be converted to eps; two for guidance, else one (in the network's dtype:
        :meth:`_check` casts them to the state's)."""
        if self.uncond_fn is not None:
            t = self._timesteps(x, sigma)
            xin = self._cast_in(x)
            self.network_passes += 2
            return [self.fn(xin, t), self.uncond_fn(xin, t)]
        if self.batched_cfg is not None:
            cond, uncond = self.batched_cfg
            t = self._timesteps(x, sigma)
            xin = self._cast_in(x)
            out = self.fn(torch.cat([xin, xin]), torch.cat([t, t]), torch.cat([cond, uncond]))  # type: ignore[call-arg]
            self.network_passes += 2
            return list(out.chunk(2))
        self.network_passes += 1
        return [self._net(x, sigma)]

    def _check(self, out: Tensor, x: Tensor, sigma: Union[float, str], step: Optional[int],
               check_finite: bool) -> Tensor:
        """The network's output, checked: shape, a floating dtype (cast to the state's: a float64
        network output must not turn a float32 solve into a float64 one), finite values."""
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise NetworkOutputError(
                f"the network returned shape {shape} at {_where(sigma, step)}, expected {tuple(x.shape)} "
                "(the shape of the state x). Check the network's output channels."
            )
        if out.dtype != x.dtype:
            if not out.is_floating_point():
                raise NetworkOutputError(
                    f"the network returned dtype {out.dtype} at {_where(sigma, step)}; a prediction must be a "
                    f"floating-point tensor like the state x ({x.dtype}). Return the network's output "
                    "before any rounding, argmax or comparison."
                )
            out = out.to(x.dtype)
        # one reduction first (NaN / Inf propagate through a sum); the exact element-wise test only
        # when the sum is not finite (a bad entry, or a sum that overflowed)
        if check_finite and not math.isfinite(float(out.detach().sum())) and not bool(torch.isfinite(out).all()):
            bad = (~torch.isfinite(out)).flatten(1).any(1).nonzero().flatten().tolist()
            raise NetworkOutputError(
                f"the network returned NaN/Inf at {_where(sigma, step)} for samples {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}. Lower the step size, check the inputs, or "
                "run the network in float32."
            )
        return out

    # ----------------------------------------------------------------------------- predict
    def predict(self, x: Tensor, sigma: Union[float, Tensor], *, check: bool = True,
                step: Optional[int] = None) -> Prediction:
        """One model evaluation: ``(eps, x0)`` at ``(x, sigma)``.

        ``sigma`` is a Python float (or a 0-d tensor) shared by the whole batch, or a ``(B,)``
        tensor of per-sample levels (adaptive solvers with per-sample steps; one evaluation).
        ``check=False`` skips the NaN / Inf test of the output (the driver checks the state
        instead); the shape is always checked. ``step`` only names the solver step in error messages.
        """
        if isinstance(sigma, Tensor) and sigma.dim() == 1:
            return self._predict_per_sample(x, sigma, check, step)
        sigma = float(sigma)
        if sigma == 0.0 and not self.defined_at_zero:
            # The network is not trained at sigma = 0 (the first step of an encode): evaluate it at the
            # smallest trained level and convert with that level's coefficients, as diffusers'
            # DDIMInverseScheduler does; the clean state is its own x0. For an eps network this is just
            # eps(x, t_min); for x0 / v networks it keeps eps informative instead of 0/0.
            pred = self.predict(x, self.schedule.sigma_min, check=check, step=step)
            return Prediction(pred.eps, x)
        hit = self._coef_cache.get(sigma) if self._coef_owner is self.schedule else None
        alpha, std = hit if hit is not None else self.coefficients(sigma)
        if self.uncond_fn is None and self.batched_cfg is None:  # one network call (the fast path)
            self.network_passes += 1
            version = x._version
            out = self._net(x, sigma)
            if x._version != version:
                raise _mutated(sigma, step)
            if check or not isinstance(out, Tensor) or out.shape != x.shape or out.dtype != x.dtype:
                out = self._check(out, x, sigma, step, check and self.check_finite)
            self.nfe += 1
            if (self.prediction == "eps" and alpha != 0.0 and self.clip_x0 is None
                    and self.dynamic_threshold is None):
                return Prediction(out, x=x, alpha=alpha, sigma=sigma)
            return self._finish([self._convert(out, x, sigma, alpha, std)], x, alpha, std)
        version = x._version
        outs = self._raw(x, sigma)
        if x._version != version:
            raise _mutated(sigma, step)
        outs = [self._check(out, x, sigma, step, check and self.check_finite) for out in outs]
        self.nfe += 1
        preds = [self._convert(o, x, sigma, alpha, std) for o in outs]
        return self._finish(preds, x, alpha, std)

    def _predict_per_sample(self, x: Tensor, sigma: Tensor, check: bool, step: Optional[int]) -> Prediction:
        sig = sigma.detach().to("cpu", torch.float64)
        if sig.shape != (x.shape[0],):
            raise ValueError(f"per-sample `sigma` must have shape ({x.shape[0]},), got {tuple(sig.shape)}.")
        if bool((sig == 0).any()):
            raise ValueError("per-sample evaluation at sigma = 0 is not supported; evaluate those samples apart.")
        if bool((sig == sig[0]).all()):
            return self.predict(x, float(sig[0]), check=check, step=step)
        if type(self).network is not EpsilonModel.network and not type(self).per_sample_network:
            return self._predict_by_level(x, sig, check, step)
        alpha = per_sample(torch.as_tensor(self.schedule.alpha_from_sigma(sig)), x)
        std = per_sample(torch.as_tensor(self.schedule.std_from_sigma(sig)), x)
        version = x._version
        outs = self._raw(x, sig)
        where = f"per-sample sigma in [{float(sig.min()):.6g}, {float(sig.max()):.6g}]"
        if x._version != version:
            raise _mutated(where, step)
        outs = [self._check(out, x, where, step, check and self.check_finite) for out in outs]
        self.nfe += 1
        preds = [self._convert(o, x, per_sample(sig, x), alpha, std) for o in outs]
        return self._finish(preds, x, alpha, std)

    def _predict_by_level(self, x: Tensor, sig: Tensor, check: bool, step: Optional[int]) -> Prediction:
        """Per-sample levels for a network that takes one level per call: one call per distinct
        level, counted as one evaluation of the batch (``network_passes`` counts the calls)."""
        eps = torch.empty_like(x)
        x0 = torch.empty_like(x)
        nfe = self.nfe
        for v in torch.unique(sig).tolist():
            idx = (sig == v).nonzero().flatten().to(x.device)
            pred = self.predict(x[idx], float(v), check=check, step=step)
            eps[idx], x0[idx] = pred.eps, pred.x0
        self.nfe = nfe + 1
        return Prediction(eps, x0)

    def _convert(self, out: Tensor, x: Tensor, sigma: Level, alpha: Level, std: Level) -> Prediction:
        """Raw output -> (eps, x0) by :mod:`flowode.parameterization`."""
        p = self.prediction
        eps = to_eps(p, out, x, alpha, std)
        x0 = to_x0(p, out, x, alpha, std)
        if x0 is not None:
            return Prediction(eps, x0)
        if isinstance(alpha, float) and alpha == 0.0:
            raise ValueError(
                f"an {p}-prediction model cannot give x0 at zero terminal SNR (sigma = inf): "
                "x0 = (x - std * eps) / alpha divides by zero. Start the grid below sigma = inf, "
                "or use a v- or x0-prediction network (Lin et al. 2024, sec. 3)."
            )
        return Prediction(eps, x=x, alpha=alpha, sigma=sigma)

    def _finish(self, preds: list[Prediction], x: Tensor, alpha: Level, std: Level) -> Prediction:
        """Guidance (two predictions combined in eps and x0) and x0 thresholding."""
        if len(preds) == 2:
            gs = self.guidance_scale
            # a tensor scale stays a tensor, so a loss can be differentiated with respect to it
            w = gs.to(x.dtype) if isinstance(gs, Tensor) else float(gs)  # type: ignore[arg-type]
            c, u = preds
            pred = Prediction(torch.lerp(u.eps, c.eps, w), torch.lerp(u.x0, c.x0, w))
        else:
            pred = preds[0]
        if self.clip_x0 is not None or self.dynamic_threshold is not None:
            x0 = self._threshold(pred.x0)
            zero_std = isinstance(std, float) and std == 0.0
            eps = pred.eps if zero_std else eps_from_x0(x, x0, alpha, std)
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
            s = torch.clamp(s, min=1.0, max=self.dynamic_threshold_max).view(-1, *([1] * (x0.dim() - 1)))
            x0 = torch.maximum(torch.minimum(x0, s), -s) / s
        return x0

    # ----------------------------------------------------------------------------- conveniences
    def eps(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Epsilon prediction at ``(x, sigma)`` (one evaluation)."""
        return self.predict(x, sigma).eps

    def x0(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Denoised prediction at ``(x, sigma)`` (one evaluation)."""
        return self.predict(x, sigma).x0

    def score(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """Score ``grad_x log p_sigma(x) = -eps / std`` (one evaluation)."""
        std = float(self.schedule.std_from_sigma(float(sigma)))
        pred = self.predict(x, sigma)
        return from_eps_x0("score", pred.eps, pred.x0, 1.0, std)

    def prior_sample(self, shape: tuple[int, ...], sigma: Optional[float] = None, *,
                     generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                     device: Union[str, torch.device] = "cpu", seed: Optional[int] = None,
                     indices: Optional[Sequence[int]] = None) -> Tensor:
        """Draw the state at ``sigma`` (default ``sigma_max``) from the prior ``N(0, std^2 I)``
        with ``std = alpha * sqrt(1 + sigma^2)`` in ``x`` coordinates (1 for VP, ``sqrt(1+sigma^2)``
        for VE), ignoring the data variance as the peers do. ``seed=`` keys the draw by
        ``(seed, sample index)`` (:func:`flowode.noise.keyed_normal`): sample ``i`` is the same at any
        batch size, which a ``generator`` does not promise; ``indices`` are the samples' global indices
        (default ``0 .. B-1``; a shard of a larger run passes its own, :mod:`flowode.distributed`)."""
        s = self.schedule.sigma_max if sigma is None else float(sigma)
        alpha = float(self.schedule.alpha_from_sigma(s))
        std = alpha * math.sqrt(1 + s * s) if math.isfinite(s) else 1.0
        if seed is not None:
            if generator is not None:
                raise ValueError("give `seed` or `generator`, not both.")
            from .noise import keyed_normal

            return keyed_normal(shape, seed, indices, dtype=dtype, device=device) * std
        if indices is not None:
            raise ValueError("`indices` key the draw by global sample index; give `seed` with them.")
        return torch.randn(shape, generator=generator, dtype=dtype, device=device) * std

    def cast_network(self, dtype: torch.dtype) -> "EpsilonModel":
        """A copy whose network runs in ``dtype`` (the dtype policy, ``network_dtype``): a
        ``torch.nn.Module`` network (and ``uncond_fn``) is deep-copied and its weights cast; another
        callable is kept as it is and only its input is cast. The schedule and all options are shared."""
        import copy

        if dtype not in _NETWORK_DTYPES:
            raise TypeError(f"`dtype` must be one of torch.float16, torch.bfloat16, torch.float32, torch.float64, "
                            f"got {dtype!r}.")
        new = copy.copy(self)
        for name in ("fn", "uncond_fn"):
            f = getattr(self, name)
            if isinstance(f, torch.nn.Module):
                setattr(new, name, copy.deepcopy(f).to(dtype))
        new.network_dtype = dtype
        new.nfe = 0
        new.network_passes = 0
        new._coef_cache, new._t_cache = {}, {}
        return new

    def compile_network(self, *, cuda_graphs: bool = False, **compile_options: Any) -> "EpsilonModel":
        """A copy whose network (and ``uncond_fn``) runs through ``torch.compile`` (TorchInductor).

        Args:
            cuda_graphs: also capture the compiled network in CUDA graphs (``torch.compile``'s
                ``mode="reduce-overhead"``), which removes the per-kernel launch cost of small
                batches on a GPU. Needs a CUDA network: refused (``ValueError``) when CUDA is not
                available or a ``torch.nn.Module`` network's parameters are not on a CUDA device.
                CUDA graphs replay into the same output buffers, so every output is cloned before
                the solver keeps it (a multistep solver holds earlier outputs).
            **compile_options: passed to ``torch.compile`` (``mode``, ``dynamic``, ``fullgraph``,
                ``backend``, ...).

        The first evaluation at each new batch shape compiles (seconds to minutes); the outputs
        equal the eager network's to float round-off, not bitwise (fused kernels round
        differently). Measured on CPU in ``benchmarks/sections/throughput.md``.
        """
        import copy

        if cuda_graphs:
            if "mode" in compile_options:
                raise ValueError(f"`cuda_graphs=True` is torch.compile's mode='reduce-overhead'; drop "
                                 f"mode={compile_options['mode']!r}.")
            devices = {p.device.type for f in (self.fn, self.uncond_fn) if isinstance(f, torch.nn.Module)
                       for p in f.parameters()}
            if not torch.cuda.is_available() or (devices and devices != {"cuda"}):
                where = "CUDA is not available" if not torch.cuda.is_available() else \
                    f"the network's parameters are on {sorted(devices)}"
                raise ValueError(f"`cuda_graphs=True` needs a network on a CUDA device, but {where}. Move it with "
                                 "load_pretrained(..., device='cuda') / net.cuda(), or compile without CUDA graphs: "
                                 "model.compile_network().")
            compile_options["mode"] = "reduce-overhead"
        new = copy.copy(self)
        for name in ("fn", "uncond_fn"):
            f = getattr(self, name)
            if f is not None:
                setattr(new, name, _Compiled(f, cuda_graphs, compile_options))
        new.nfe = 0
        new.network_passes = 0
        new._coef_cache, new._t_cache = {}, {}
        return new

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"EpsilonModel(prediction={self.prediction!r}, schedule={self.schedule!r}, nfe={self.nfe})"


class _Compiled:
    """``torch.compile(fn)``; with CUDA graphs each call starts a new graph step and clones its output
    (the next replay overwrites the graph's output buffer)."""

    def __init__(self, fn: Callable[..., Tensor], cuda_graphs: bool, options: dict[str, Any]) -> None:
        self.eager = fn
        self.compiled = torch.compile(fn, **options)
        self.cuda_graphs = cuda_graphs

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if not self.cuda_graphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args, **kwargs).clone()


#: the dtypes a network may run in (``EpsilonModel(network_dtype=)``)
_NETWORK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_clip(clip: object) -> tuple[float, float]:
    """``clip_x0`` as ``(low, high)`` with ``low < high`` (``(1, -1)`` would clamp every x0 to -1)."""
    try:
        low, high = (float(v) for v in clip)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ValueError(f"`clip_x0` must be a pair (low, high) of numbers, e.g. (-1, 1), got {clip!r}.") from None
    if not low < high or math.isnan(low) or math.isnan(high):
        raise ValueError(f"`clip_x0` must be (low, high) with low < high, got {clip!r}; for data in [-1, 1] "
                         "pass clip_x0=(-1, 1).")
    return low, high


def _mutated(sigma: Union[float, str], step: Optional[int]) -> NetworkOutputError:
    return NetworkOutputError(
        f"the network modified its input x in place at {_where(sigma, step)}; the solver still needs x after "
        "the call, so the step would use a corrupted state. Work on a copy inside the network "
        "(x = x.clone()) or use out-of-place operations (x = x * s, not x *= s)."
    )


def _where(sigma: Union[float, str], step: Optional[int]) -> str:
    """``sigma=0.5 (step 3)``: where an evaluation failed (formatted only on failure)."""
    level = sigma if isinstance(sigma, str) else f"sigma={sigma:.6g}"
    return level + ("" if step is None else f" (step {step})")
