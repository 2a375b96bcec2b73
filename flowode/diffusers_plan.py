"""Run a diffusers scheduler's own sampling loop as a flowode solve: :func:`from_diffusers_scheduler`.

After ``scheduler.set_timesteps(n)``, :func:`from_diffusers_scheduler` reads the levels the scheduler
will visit (its own ``sigmas`` or ``timesteps``, so ``timestep_spacing``, ``steps_offset``,
``final_sigmas_type``, Karras / exponential / beta sigmas and the flow-matching shift are those
diffusers computed) and the timestep it passes to the network at each level, and returns a
:class:`DiffusersPlan`: a flowode grid, a solver with its options, and ``run(model, latents)``,
which starts from diffusers' own initial latents and returns what diffusers' loop returns.

The plan is an ODE solve: every diffusers step it reproduces is a flowode step between two
consecutive levels of the grid. A scheduler or option whose loop is not such a step (or that flowode
does not implement) is refused with :class:`UnsupportedScheduler`, which names it; nothing is
approximated. Supported, with the diffusers loop as the oracle (``tests/test_diffusers_plan.py``):

=================================  =====================  ==============================================
diffusers                          flowode                state conversion
=================================  =====================  ==============================================
``DDIMScheduler``                  ``ddim``               none (VP state)
``DPMSolverMultistepScheduler``    ``dpm_solver++_2m`` /  none (VP state)
                                   ``_3m`` (reference)
``DPMSolverSinglestepScheduler``   dpm_solver_singlestep  none (VP state); ``get_order_list`` groups
``UniPCMultistepScheduler``        ``unipc``              none (VP state)
``DEISMultistepScheduler``         ``deis`` (log-rho)     none (VP state)
``HeunDiscreteScheduler``          ``heun`` in sigma      as Euler (its last step, to 0, is Euler's)
``DDPMScheduler``                  ``ddpm``               none; same ``generator``, same draws
``LMSDiscreteScheduler``           ``adams_bashforth``    as Euler (order 4 in sigma, lower-order start)
``PNDMScheduler``                  ``plms``               none (PRK warm-up or ``skip_prk_steps``; half steps in t)
``EDMEulerScheduler``              ``euler`` in sigma     none (EDM state); EDM preconditioning in the model
``EulerAncestralDiscreteScheduler`` ``ddim``, ``eta=1``    as Euler; same ``generator``, same draws
``KDPM2DiscreteScheduler``         ``dpm_solver_2``       as Euler (DPM-2 = DPM-Solver-2, lambda midpoint)
``EulerDiscreteScheduler``         ``euler`` in sigma     ``x = latents / sqrt(1 + sigma_0^2)`` (VE -> VP)
``FlowMatchEulerDiscreteScheduler`` ``ddim`` (= Euler in t) none (flow-matching state)
=================================  =====================  ==============================================

The network is evaluated at exactly the timesteps diffusers passes (also fractional ones, e.g.
``EulerDiscreteScheduler`` with Karras sigmas, whose timesteps come from a log-sigma
interpolation rather than flowode's log-abar one): the plan's model uses a schedule whose native
time at each grid level *is* diffusers' timestep (:class:`TimestepTable`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from .adapters import _DiffusersFn, diffusers_schedule
from .models import EpsilonModel
from .schedules import FlowMatchSchedule, Schedule

__all__ = ["from_diffusers_scheduler", "DiffusersPlan", "UnsupportedScheduler", "TimestepTable"]


class UnsupportedScheduler(ValueError):
    """A diffusers scheduler, or one of its options, that flowode cannot reproduce exactly."""


class TimestepTable(Schedule):
    """A schedule that behaves as ``base`` except that its native time at the given noise levels is
    the given timestep (diffusers' own, e.g. from a log-sigma interpolation): the network sees
    exactly what the diffusers loop passes it. Everything a solver reads (``alpha``, ``std`` as
    functions of sigma) is ``base``'s."""

    def __init__(self, base: Schedule, sigmas: Tensor, timesteps: Tensor) -> None:
        self.base = base
        self.table = {float(s): float(t) for s, t in zip(sigmas.tolist(), timesteps.tolist())}
        self._keys = sorted(k for k in self.table if 0 < k < math.inf)
        self.t_min, self.t_max = base.t_min, base.t_max
        self.discrete = base.discrete
        self.default_spacing = base.default_spacing
        # the trained range: the base schedule's, widened to the levels diffusers visits
        levels = [s for s in self.table if s > 0]
        self._range = (min([base.sigma_min] + levels), max([base.sigma_max] + levels))

    @property  # type: ignore[override]
    def sigma_min(self) -> float:
        return self._range[0]

    @property  # type: ignore[override]
    def sigma_max(self) -> float:
        return self._range[1]

    def _sigma(self, t: Tensor) -> Tensor:
        return self.base._sigma(t)

    def _lookup(self, v: float) -> Optional[float]:
        """diffusers' timestep at level ``v``: an exact key, or one within float32 round-off
        (relative 1e-6; e.g. a solver's midpoint ``sqrt(s s')`` in float64 against diffusers'
        float32 interpolated sigma)."""
        hit = self.table.get(v)
        if hit is not None or not self._keys:
            return hit
        k = min(self._keys, key=lambda key: abs(key - v))
        return self.table[k] if abs(k - v) <= 1e-6 * abs(k) else None

    def _t(self, sigma: Tensor) -> Tensor:
        flat = sigma.flatten().tolist()
        hits = [self._lookup(v) for v in flat]
        if all(h is not None for h in hits):
            return torch.tensor(hits, dtype=torch.float64).view(sigma.shape)
        return self.base._t(sigma)

    def _dsigma_dt(self, t: Tensor) -> Tensor:
        return self.base._dsigma_dt(t)

    def _alpha(self, sigma: Tensor) -> Tensor:
        return self.base._alpha(sigma)

    def _std(self, sigma: Tensor) -> Tensor:
        return self.base._std(sigma)

    def _dlog_alpha_dsigma(self, sigma: Tensor) -> Tensor:
        return self.base._dlog_alpha_dsigma(sigma)

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"TimestepTable({self.base!r}, {len(self.table)} levels)"


@dataclass
class DiffusersPlan:
    """What :func:`from_diffusers_scheduler` returns.

    Attributes:
        scheduler: the diffusers scheduler's class name.
        sigmas: the flowode (DDIM) noise levels of the loop, float64, decreasing.
        timesteps: the timestep diffusers passes to the network at each level but the last.
        solver, options: the flowode solver and its options that take diffusers' steps.
        schedule: the schedule of the plan's model (:class:`TimestepTable` over the scheduler's path).
        latent_scale: ``x = latents * latent_scale`` is flowode's state at ``sigmas[0]`` (diffusers'
            Euler-type schedulers keep the VE state ``x / alpha``); ``out = x / final_scale``.
    """

    scheduler: str
    sigmas: Tensor
    timesteps: Tensor
    solver: str
    schedule: Schedule
    prediction: str
    options: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    edm: Optional[tuple[float, float]] = None  # (sigma_data, sign of c_out): EDM preconditioning
    latent_scale: float = 1.0
    final_scale: float = 1.0

    def model(self, unet: Any, *, unet_kwargs: Optional[dict[str, Any]] = None, **model_kwargs: Any) -> EpsilonModel:
        """The network as a flowode model on the plan's schedule (timesteps exactly as diffusers)."""
        fn = _DiffusersFn(unet, dict(unet_kwargs or {}))
        if self.edm is not None:
            from .adapters import DenoiserModel

            return DenoiserModel(_EDMDenoiser(fn, *self.edm), self.schedule, **{**self.model_kwargs, **model_kwargs})
        return EpsilonModel(fn, self.schedule, prediction=self.prediction, **{**self.model_kwargs, **model_kwargs})

    def run(self, model: Any, latents: Tensor, **kwargs: Any) -> Tensor:
        """Diffusers' loop as one flowode solve: ``latents`` as diffusers' loop starts from them
        (``randn * init_noise_sigma``), the result as the loop returns it.

        ``model`` is a diffusers network (``unet(x, t).sample``) or a flowode :class:`EpsilonModel`
        (e.g. :func:`flowode.from_diffusers`): only its network ``fn`` is used, on the plan's schedule,
        so it receives exactly diffusers' timesteps. ``kwargs`` pass to :func:`flowode.integrate`;
        stochastic schedulers (DDPM) take ``generator=``: the same generator state as diffusers'
        loop gives the same draws."""
        from .integrate import integrate

        if isinstance(model, EpsilonModel):
            if model.prediction != self.prediction:
                raise ValueError(
                    f"`model` predicts {model.prediction!r} but the scheduler's prediction_type means "
                    f"{self.prediction!r}; build it with flowode.from_diffusers(unet, scheduler)."
                )
            fn = model.fn
            if isinstance(fn, _DiffusersFn):  # the raw network, fed diffusers' timesteps as they are
                fn = _DiffusersFn(fn.unet, fn.unet_kwargs)
            if self.edm is not None:
                raise TypeError(f"{self.scheduler}: pass the raw network (`unet`), not an EpsilonModel; the plan "
                                "adds EDM's preconditioning itself (plan.model(unet)).")
            net = EpsilonModel(fn, self.schedule, prediction=self.prediction, **self.model_kwargs)
        else:
            net = self.model(model)
        x = latents * self.latent_scale if self.latent_scale != 1.0 else latents
        sol = integrate(net, x, self.sigmas, solver=self.solver, **{**self.options, **kwargs})
        return sol.x / self.final_scale if self.final_scale != 1.0 else sol.x


class _EDMDenoiser(torch.nn.Module):
    """EDM's preconditioning (Karras et al. 2022, Table 1; diffusers' ``EDMEulerScheduler``):
    ``D(xbar, sigma) = c_skip xbar + c_out F(c_in xbar, 0.25 log sigma)`` with
    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = +-sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)`` (``-`` for v-prediction)."""

    def __init__(self, fn: Any, sigma_data: float, sign: float) -> None:
        super().__init__()
        self.fn, self.sigma_data, self.sign = fn, float(sigma_data), float(sign)

    def forward(self, xbar: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.view((-1,) + (1,) * (xbar.dim() - 1))
        sd = self.sigma_data
        norm = (s**2 + sd**2) ** 0.5
        out = self.fn(xbar / norm, 0.25 * torch.log(sigma))
        return sd**2 / (s**2 + sd**2) * xbar + (self.sign * s * sd / norm) * out


# ------------------------------------------------------------------------------------ checks
def _cfg(scheduler: Any, name: str, default: Any = None) -> Any:
    config = scheduler.config
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def _refuse_if(scheduler: Any, name: str, bad: Any, why: str) -> None:
    value = _cfg(scheduler, name)
    if (value in bad) if isinstance(bad, tuple) else bool(value):
        raise UnsupportedScheduler(
            f"{type(scheduler).__name__}({name}={value!r}) is not reproduced by flowode: {why}"
        )


def _prediction(scheduler: Any) -> str:
    from .adapters import PREDICTION_TYPES

    ptype = _cfg(scheduler, "prediction_type", "epsilon")
    if ptype not in PREDICTION_TYPES:
        raise UnsupportedScheduler(
            f"{type(scheduler).__name__}(prediction_type={ptype!r}) is not reproduced by flowode; it handles "
            f"{', '.join(PREDICTION_TYPES)}."
        )
    return PREDICTION_TYPES[ptype]


def _timesteps(scheduler: Any) -> Tensor:
    ts = getattr(scheduler, "timesteps", None)
    if ts is None or getattr(scheduler, "num_inference_steps", None) is None:
        raise UnsupportedScheduler(
            f"call `scheduler.set_timesteps(num_inference_steps)` before from_diffusers_scheduler "
            f"({type(scheduler).__name__} has no inference timesteps yet)."
        )
    return torch.as_tensor(ts).detach().cpu().to(torch.float64)


def _snap(sigmas: Tensor, base: Schedule) -> Tensor:
    """Levels within float32 round-off (relative 1e-6) of the schedule's range ends, moved onto them:
    diffusers keeps its sigmas in float32, flowode's range is float64, and a grid may not leave it."""
    out = sigmas.clone()
    for end in (base.sigma_min, base.sigma_max):
        if math.isfinite(end):
            near = (out - end).abs() <= 1e-6 * end
            out = torch.where(near, torch.full_like(out, end), out)
    return out


# ------------------------------------------------------------------------------------ schedulers
def _ddim(scheduler: Any) -> DiffusersPlan:
    _refuse_if(scheduler, "clip_sample", None, "diffusers clips x0 and keeps the raw eps in the DDIM step, "
               "which is not one DDIM step of any model; set clip_sample=False (or use flowode's "
               "EpsilonModel(clip_x0=...), which keeps eps and x0 consistent).")
    _refuse_if(scheduler, "thresholding", None, "diffusers thresholds x0 and keeps the raw eps in the DDIM step "
               "(as clip_sample); set thresholding=False (flowode's EpsilonModel(dynamic_threshold=p, "
               "dynamic_threshold_max=m) keeps eps consistent).")
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    n_train = int(_cfg(scheduler, "num_train_timesteps"))
    stride = n_train // int(scheduler.num_inference_steps)
    prev = ts - stride
    if len(ts) > 1 and not torch.equal(prev[:-1], ts[1:]):
        raise UnsupportedScheduler(
            f"DDIMScheduler(timestep_spacing={_cfg(scheduler, 'timestep_spacing')!r}) with "
            f"{scheduler.num_inference_steps} steps lands on t - {stride} (t - num_train_timesteps // steps), "
            f"which is not the next timestep of its grid {ts.long().tolist()}: its loop evaluates the network "
            "at one set of levels and steps to another, which is not an ODE grid. Use "
            "timestep_spacing='leading' or 'trailing' with a step count that divides num_train_timesteps."
        )
    abar = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().to(torch.float64)
    final_abar = float(torch.as_tensor(scheduler.final_alpha_cumprod).to(torch.float64))
    levels = torch.sqrt((1 - abar[ts.long()]) / abar[ts.long()])
    last = float(prev[-1])
    if last >= 0:
        raise UnsupportedScheduler(f"DDIMScheduler's last step ends at timestep {last}, not at the final level.")
    sig_final = math.sqrt((1 - final_abar) / final_abar)
    sigmas = torch.cat([levels, torch.tensor([sig_final], dtype=torch.float64)])
    table = TimestepTable(schedule, sigmas[:-1], ts)
    return DiffusersPlan("DDIMScheduler", sigmas, ts, "ddim", table, _prediction(scheduler))


def _euler(scheduler: Any) -> DiffusersPlan:
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas on a VP scheduler are not implemented here; "
               "use FlowMatchEulerDiscreteScheduler.")
    schedule = diffusers_schedule(scheduler)
    sigmas, ts = _vp_sigmas(scheduler, schedule, _timesteps(scheduler))
    table = TimestepTable(schedule, sigmas[:-1], ts)
    s0, s1 = float(sigmas[0]), float(sigmas[-1])
    # diffusers' Euler keeps the VE state xbar = x / alpha; flowode's is x = alpha xbar
    a0 = 1 / math.sqrt(1 + s0 * s0)
    a1 = 1 / math.sqrt(1 + s1 * s1)
    return DiffusersPlan("EulerDiscreteScheduler", sigmas, ts, "euler", table, _prediction(scheduler),
                         {"coordinates": "sigma"}, latent_scale=a0, final_scale=a1)


def _flow_match_euler(scheduler: Any) -> DiffusersPlan:
    _refuse_if(scheduler, "stochastic_sampling", None, "its step re-noises x0 with fresh noise (not an ODE step).")
    _refuse_if(scheduler, "invert_sigmas", None, "inverted sigmas run the path backwards (use flowode.encode).")
    ts = _timesteps(scheduler)
    t_levels = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64)
    if len(t_levels) != len(ts) + 1 or float(t_levels[-1]) != 0.0 or not bool((torch.diff(t_levels) < 0).all()):
        raise UnsupportedScheduler(f"FlowMatchEulerDiscreteScheduler's sigmas {t_levels.tolist()} are not a "
                                   "decreasing grid ending at 0.")
    base = FlowMatchSchedule(shift=float(_cfg(scheduler, "shift", 1.0)), t_min=float(t_levels[-2]) / 2)
    sigmas = torch.as_tensor(base.sigma(t_levels))
    table = TimestepTable(base, sigmas[:-1], ts)
    return DiffusersPlan("FlowMatchEulerDiscreteScheduler", sigmas, ts, "ddim", table, "flow")


def _vp_sigmas(scheduler: Any, schedule: Schedule, ts: Tensor) -> tuple[Tensor, Tensor]:
    """The scheduler's own (DDIM) sigmas, one per timestep plus the final level, snapped onto the
    schedule's float64 range."""
    name = type(scheduler).__name__
    sigmas = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64)
    if len(sigmas) == len(ts) + 1 and len(sigmas) > 2 and float(sigmas[-1]) == float(sigmas[-2]) > 0:
        # final_sigmas_type="sigma_min" after a grid that already ends at sigma_min (Karras, exponential,
        # beta sigmas): diffusers' last step has dt = 0 and leaves the state as it is; drop it
        sigmas, ts = sigmas[:-1], ts[:-1]
    sigmas = torch.cat([_snap(sigmas[:-1], schedule), sigmas[-1:] if float(sigmas[-1]) == 0 else
                        _snap(sigmas[-1:], schedule)])
    if len(sigmas) != len(ts) + 1 or not bool((torch.diff(sigmas) < 0).all()):
        raise UnsupportedScheduler(f"{name}'s sigmas {sigmas.tolist()} are not a decreasing grid with one "
                                   "level per timestep plus a final one.")
    return sigmas, ts


def _threshold(scheduler: Any) -> dict[str, Any]:
    """``thresholding=True`` as model options: diffusers' ``_threshold_sample`` is flowode's
    ``dynamic_threshold=dynamic_thresholding_ratio`` with ``dynamic_threshold_max=sample_max_value``
    (the x0 prediction thresholded per sample; eps recomputed from it, which the schedulers below
    either never read or recompute the same way)."""
    if not _cfg(scheduler, "thresholding", False):
        return {}
    ratio = float(_cfg(scheduler, "dynamic_thresholding_ratio", 0.995))
    top = float(_cfg(scheduler, "sample_max_value", 1.0))
    if not 0 < ratio < 1 or not top >= 1:
        raise UnsupportedScheduler(
            f"{type(scheduler).__name__}(thresholding=True, dynamic_thresholding_ratio={ratio}, "
            f"sample_max_value={top}) is not reproduced: flowode's dynamic threshold needs a ratio in (0, 1) "
            "and sample_max_value >= 1.")
    return {"dynamic_threshold": ratio, "dynamic_threshold_max": top}


def _unipc(scheduler: Any) -> DiffusersPlan:
    name = "UniPCMultistepScheduler"
    _refuse_if(scheduler, "predict_x0", (False,), "flowode's UniPC is the data-prediction form (predict_x0=True).")
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas on UniPCMultistepScheduler are not reproduced.")
    if list(_cfg(scheduler, "disable_corrector", []) or []):
        raise UnsupportedScheduler(f"{name}(disable_corrector={_cfg(scheduler, 'disable_corrector')!r}) is not "
                                   "reproduced: flowode's UniPC corrects every step or none (corrector=False).")
    variant = _cfg(scheduler, "solver_type", "bh2")
    final_type = _cfg(scheduler, "final_sigmas_type", "zero")
    if variant == "bh1" and final_type == "zero":
        raise UnsupportedScheduler(
            f"{name}(solver_type='bh1', final_sigmas_type='zero') returns NaN in diffusers (its last step "
            "multiplies B(h) = -h = -inf by an empty sum); flowode's unipc returns the denoised estimate there. "
            "Use final_sigmas_type='sigma_min' or solver_type='bh2' for a loop flowode reproduces.")
    schedule = diffusers_schedule(scheduler)
    sigmas, ts = _vp_sigmas(scheduler, schedule, _timesteps(scheduler))
    table = TimestepTable(schedule, sigmas[:-1], ts)
    opts = {"order": int(_cfg(scheduler, "solver_order", 2)), "variant": variant,
            "lower_order_final": bool(_cfg(scheduler, "lower_order_final", True))}
    return DiffusersPlan(name, sigmas, ts, "unipc", table, _prediction(scheduler), opts, _threshold(scheduler))


def _ddpm(scheduler: Any) -> DiffusersPlan:
    name = "DDPMScheduler"
    variance = _cfg(scheduler, "variance_type", "fixed_small")
    if variance not in ("fixed_small", "fixed_large"):
        raise UnsupportedScheduler(f"{name}(variance_type={variance!r}) is not reproduced (fixed_small and "
                                   "fixed_large are).")
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    if getattr(scheduler, "custom_timesteps", False):
        raise UnsupportedScheduler(f"{name} with custom timesteps is not reproduced.")
    stride = int(_cfg(scheduler, "num_train_timesteps")) // int(scheduler.num_inference_steps)
    prev = ts - stride
    if (len(ts) > 1 and not torch.equal(prev[:-1], ts[1:])) or float(prev[-1]) >= 0:
        raise UnsupportedScheduler(
            f"{name}(timestep_spacing={_cfg(scheduler, 'timestep_spacing')!r}) with {scheduler.num_inference_steps} "
            f"steps lands on t - {stride}, which is not the next timestep of its grid {ts.long().tolist()}.")
    abar = torch.as_tensor(scheduler.alphas_cumprod).detach().cpu().to(torch.float64)
    levels = torch.sqrt((1 - abar[ts.long()]) / abar[ts.long()])
    sigmas = torch.cat([levels, torch.zeros(1, dtype=torch.float64)])
    table = TimestepTable(schedule, levels, ts)
    kwargs: dict[str, Any] = _threshold(scheduler)
    if not kwargs and _cfg(scheduler, "clip_sample", False):  # diffusers: thresholding, else clip_sample
        r = float(_cfg(scheduler, "clip_sample_range", 1.0))
        kwargs["clip_x0"] = (-r, r)
    opts = {"variance": "small" if variance == "fixed_small" else "large"}
    return DiffusersPlan(name, sigmas, ts, "ddpm", table, _prediction(scheduler), opts, kwargs)


def _deis(scheduler: Any) -> DiffusersPlan:
    name = "DEISMultistepScheduler"
    _refuse_if(scheduler, "algorithm_type", ("dpmsolver", "dpmsolver++"), "only algorithm_type='deis' is reproduced.")
    _refuse_if(scheduler, "solver_type", ("bh1", "bh2"), "only solver_type='logrho' is reproduced.")
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas on DEISMultistepScheduler are not reproduced.")
    schedule = diffusers_schedule(scheduler)
    sigmas, ts = _vp_sigmas(scheduler, schedule, _timesteps(scheduler))
    table = TimestepTable(schedule, sigmas[:-1], ts)
    # diffusers' DEIS is flowode's deis with the log-rho basis (flowode's default basis is "t")
    opts = {"order": int(_cfg(scheduler, "solver_order", 2)), "basis": "log_rho",
            "lower_order_final": bool(_cfg(scheduler, "lower_order_final", True))}
    return DiffusersPlan(name, sigmas, ts, "deis", table, _prediction(scheduler), opts, _threshold(scheduler))


def _euler_ancestral(scheduler: Any) -> DiffusersPlan:
    """k-diffusion's Euler ancestral step ``xbar' = x0 + sigma_down eps + sigma_up z`` with
    ``sigma_up^2 = s'^2 (s^2 - s'^2) / s^2``, ``sigma_down^2 = s'^2 - sigma_up^2`` is DDIM with
    ``eta = 1`` (its posterior variance in ``x = alpha xbar`` is ``alpha'^2 sigma_up^2``): one draw
    per step, from the same generator."""
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas are not reproduced.")
    plan = _euler(scheduler)
    plan.scheduler, plan.options = "EulerAncestralDiscreteScheduler", {"eta": 1.0}
    plan.solver = "ddim"
    return plan


def _kdpm2(scheduler: Any) -> DiffusersPlan:
    """k-diffusion's DPM-2: an Euler half step to the geometric mean ``sqrt(s s')`` of the two levels,
    then the full step with the derivative there. In ``xbar`` that is DPM-Solver-2 (Lu et al. 2022,
    Algorithm 1, ``r1 = 1/2``: the lambda midpoint); its last step (to 0) is Euler's."""
    name = "KDPM2DiscreteScheduler"
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    raw = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64)
    mids = torch.as_tensor(scheduler.sigmas_interpol).detach().cpu().to(torch.float64)
    n = (len(ts) + 1) // 2  # steps: n - 1 two-stage steps and the last (Euler) step to 0
    levels = torch.cat([raw[:1], raw[1:2 * n - 1:2], torch.zeros(1, dtype=torch.float64)])
    if len(levels) != n + 1 or float(raw[-1]) != 0.0 or not bool((torch.diff(levels) < 0).all()):
        raise UnsupportedScheduler(f"{name}'s sigmas {raw.tolist()} are not the interleaved DPM-2 grid.")
    sig = torch.cat([_snap(levels[:-1], schedule), levels[-1:]])
    mid = mids[1:2 * n - 2:2]
    keys = torch.cat([sig[:-1], mid])
    vals = torch.cat([ts[0::2], ts[1::2]])
    table = TimestepTable(schedule, keys, vals)
    s0 = float(sig[0])
    return DiffusersPlan(name, sig, ts[0::2], "dpm_solver_2", table, _prediction(scheduler),
                         latent_scale=1 / math.sqrt(1 + s0 * s0))


def _lms(scheduler: Any) -> DiffusersPlan:
    """k-diffusion's LMS: the Lagrange polynomial through the last ``order`` derivatives ``eps`` in sigma,
    integrated over each step (down to 0 on the last one) = variable-step Adams-Bashforth in sigma with
    the lower-order start. ``order`` is an argument of diffusers' ``step`` (default 4): the plan uses 4."""
    schedule = diffusers_schedule(scheduler)
    sigmas, ts = _vp_sigmas(scheduler, schedule, _timesteps(scheduler))
    table = TimestepTable(schedule, sigmas[:-1], ts)
    s0, s1 = float(sigmas[0]), float(sigmas[-1])
    return DiffusersPlan("LMSDiscreteScheduler", sigmas, ts, "adams_bashforth", table, _prediction(scheduler),
                         {"order": 4, "coordinates": "sigma", "warmup": "lower_order"},
                         latent_scale=1 / math.sqrt(1 + s0 * s0), final_scale=1 / math.sqrt(1 + s1 * s1))


def _pndm(scheduler: Any) -> DiffusersPlan:
    name = "PNDMScheduler"
    if _prediction(scheduler) != "eps":
        raise UnsupportedScheduler(
            f"{name}(prediction_type={_cfg(scheduler, 'prediction_type')!r}) is not reproduced: diffusers combines "
            "the raw outputs and converts the combination to eps, flowode's plms converts each output first "
            "(the two agree for eps networks only; see docs/diffusers.md).")
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    distinct = torch.unique(ts).flip(0)  # PRK stages and the repeated first PLMS step visit levels twice
    skip = bool(_cfg(scheduler, "skip_prk_steps", False))
    stride = int(_cfg(scheduler, "num_train_timesteps")) // int(scheduler.num_inference_steps)
    if not skip:
        distinct = distinct[(distinct.long() % max(stride, 1)) == (distinct[0].long() % max(stride, 1))]
    gaps = -torch.diff(distinct)
    if len(distinct) < 2 or not bool((gaps == stride).all()) or (not skip and stride % 2):
        raise UnsupportedScheduler(
            f"{name}(timestep_spacing={_cfg(scheduler, 'timestep_spacing')!r}) with {scheduler.num_inference_steps} "
            f"steps steps by t - {stride}" + ("" if skip else f" with Runge-Kutta half steps of {stride // 2}") +
            f", which is not its grid {distinct.long().tolist()} (and its midpoints): not an ODE grid flowode's plms "
            "walks. Use timestep_spacing='leading' with a step count whose stride is even.")
    final = "zero" if _cfg(scheduler, "set_alpha_to_one", True) else "min"
    from .grids import sigmas_from_timesteps

    sigmas = sigmas_from_timesteps(schedule, distinct, final)
    table = TimestepTable(schedule, sigmas[: len(distinct)], distinct)
    # diffusers' pseudo Runge-Kutta half steps are at the midpoint in timesteps, not in sigma
    return DiffusersPlan(name, sigmas, distinct, "plms", table, "eps", {"skip_prk_steps": skip, "half_step": "t"})


def _edm_euler(scheduler: Any) -> DiffusersPlan:
    from .schedules import EDMSchedule

    name = "EDMEulerScheduler"
    ptype = _cfg(scheduler, "prediction_type", "epsilon")
    if ptype not in ("epsilon", "v_prediction"):
        raise UnsupportedScheduler(f"{name}(prediction_type={ptype!r}) is not reproduced.")
    ts = _timesteps(scheduler)
    sigmas = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64)
    schedule = EDMSchedule(float(_cfg(scheduler, "sigma_min")), float(_cfg(scheduler, "sigma_max")))
    if float(sigmas[-1]) != 0.0:
        raise UnsupportedScheduler(f"{name}(final_sigmas_type={_cfg(scheduler, 'final_sigmas_type')!r}) is not "
                                   "reproduced (final_sigmas_type='zero' is).")
    sigmas = torch.cat([_snap(sigmas[:-1], schedule), sigmas[-1:]])
    if len(sigmas) != len(ts) + 1 or not bool((torch.diff(sigmas) < 0).all()):
        raise UnsupportedScheduler(f"{name}'s sigmas {sigmas.tolist()} are not a decreasing grid.")
    edm = (float(_cfg(scheduler, "sigma_data", 0.5)), 1.0 if ptype == "epsilon" else -1.0)
    # the state is EDM's own (alpha = 1); the network sees c_in xbar and c_noise = 0.25 log(sigma)
    return DiffusersPlan(name, sigmas, ts, "euler", schedule, "x0", {"coordinates": "sigma"}, edm=edm)


def _heun(scheduler: Any) -> DiffusersPlan:
    name = "HeunDiscreteScheduler"
    _refuse_if(scheduler, "clip_sample", None, "diffusers clips x0 inside the step; set clip_sample=False.")
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    raw = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float64)
    # diffusers interleaves the levels: [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] with a timestep per call;
    # every level but the first and the last is visited twice (predictor end, corrector start)
    if len(raw) != len(ts) + 1 or len(raw) < 3 or len(raw) % 2:
        raise UnsupportedScheduler(f"{name}'s sigmas {raw.tolist()} are not the interleaved Heun grid.")
    levels = torch.cat([raw[:1], raw[1:-1:2], raw[-1:]])
    if not torch.equal(raw[1:-1:2], raw[2:-1:2]) or float(raw[-1]) != 0.0:
        raise UnsupportedScheduler(f"{name}'s sigmas {raw.tolist()} are not the interleaved Heun grid ending at 0.")
    t_levels = torch.cat([ts[:1], ts[1::2]])
    sigmas = torch.cat([_snap(levels[:-1], schedule), levels[-1:]])
    if not bool((torch.diff(sigmas) < 0).all()):
        raise UnsupportedScheduler(f"{name}'s levels {sigmas.tolist()} do not decrease.")
    table = TimestepTable(schedule, sigmas[:-1], t_levels)
    s0 = float(sigmas[0])
    # like Euler: diffusers' Heun keeps the VE state; its last step (to 0) is an Euler step = the DDIM step
    return DiffusersPlan(name, sigmas, t_levels, "heun", table, _prediction(scheduler), {"coordinates": "sigma"},
                         latent_scale=1 / math.sqrt(1 + s0 * s0))


def _dpm_multistep(scheduler: Any) -> DiffusersPlan:
    name = "DPMSolverMultistepScheduler"
    _refuse_if(scheduler, "algorithm_type", ("dpmsolver", "sde-dpmsolver", "sde-dpmsolver++"),
               "flowode ships the data-prediction ODE form only (algorithm_type='dpmsolver++'); the 'dpmsolver' "
               "noise-prediction form and the SDE variants are not reproduced.")
    _refuse_if(scheduler, "solver_type", ("heun",), "only solver_type='midpoint' is implemented.")
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas on DPMSolverMultistepScheduler are not reproduced.")
    _refuse_if(scheduler, "variance_type", ("learned", "learned_range"), "learned variances are not reproduced.")
    order = int(_cfg(scheduler, "solver_order", 2))
    final_type = _cfg(scheduler, "final_sigmas_type", "zero")
    if _cfg(scheduler, "euler_at_final") and final_type != "zero":
        raise UnsupportedScheduler(f"{name}(euler_at_final=True, final_sigmas_type={final_type!r}) is not "
                                   "reproduced: flowode's last step is first order only when it ends at 0.")
    schedule = diffusers_schedule(scheduler)
    sigmas, ts = _vp_sigmas(scheduler, schedule, _timesteps(scheduler))
    table = TimestepTable(schedule, sigmas[:-1], ts)
    lof = bool(_cfg(scheduler, "lower_order_final", True))
    thr = _threshold(scheduler)
    if order == 1:
        return DiffusersPlan(name, sigmas, ts, "ddim", table, _prediction(scheduler), {}, thr)
    if order == 2:
        return DiffusersPlan(name, sigmas, ts, "dpm_solver++_2m", table, _prediction(scheduler),
                             {"lower_order_final": lof}, thr)
    if order == 3:
        return DiffusersPlan(name, sigmas, ts, "dpm_solver++_3m", table, _prediction(scheduler),
                             {"lower_order_final": lof, "coefficients": "reference"}, thr)
    raise UnsupportedScheduler(f"{name}(solver_order={order}) is not reproduced (orders 1, 2 and 3 are).")


def _dpm_singlestep(scheduler: Any) -> DiffusersPlan:
    """diffusers' singlestep DPM-Solver(++): the grid's steps grouped by ``get_order_list``, each group
    one singlestep step whose intermediate points are the grid's levels (``dpm_solver_singlestep``)."""
    name = "DPMSolverSinglestepScheduler"
    _refuse_if(scheduler, "algorithm_type", ("sde-dpmsolver++",), "the SDE variant is not reproduced (its noise "
               "draws are not an ODE step); algorithm_type 'dpmsolver++' and 'dpmsolver' are.")
    if _cfg(scheduler, "thresholding") and _cfg(scheduler, "algorithm_type") == "dpmsolver":
        raise UnsupportedScheduler(f"{name}(algorithm_type='dpmsolver', thresholding=True) is not reproduced: "
                                   "diffusers' noise-form threshold reads alpha_t[timestep] with the timestep it "
                                   "no longer receives; use algorithm_type='dpmsolver++'.")
    _refuse_if(scheduler, "use_flow_sigmas", None, "flow sigmas on DPMSolverSinglestepScheduler are not reproduced.")
    _refuse_if(scheduler, "variance_type", ("learned", "learned_range"), "learned variances are not reproduced.")
    schedule = diffusers_schedule(scheduler)
    ts = _timesteps(scheduler)
    sigmas, kept = _vp_sigmas(scheduler, schedule, ts)
    if len(kept) != len(ts):
        raise UnsupportedScheduler(
            f"{name}(final_sigmas_type='sigma_min') after sigmas that already end at sigma_min: its last step "
            "repeats the final level, and a singlestep group's update from its start does not leave the state "
            "there unchanged, which is no step of an ODE grid. Use final_sigmas_type='zero'.")
    table = TimestepTable(schedule, sigmas[:-1], ts)
    opts = {"solver_order": int(_cfg(scheduler, "solver_order", 2)),
            "algorithm": _cfg(scheduler, "algorithm_type", "dpmsolver++"),
            # set_timesteps turns lower_order_final on where diffusers cannot run without it
            "lower_order_final": bool(_cfg(scheduler, "lower_order_final", False)),
            "solver_type": _cfg(scheduler, "solver_type", "midpoint")}
    return DiffusersPlan(name, sigmas, ts, "dpm_solver_singlestep", table, _prediction(scheduler), opts,
                         _threshold(scheduler))


_PLANS = {
    "DPMSolverSinglestepScheduler": _dpm_singlestep,
    "DDPMScheduler": _ddpm,
    "DEISMultistepScheduler": _deis,
    "HeunDiscreteScheduler": _heun,
    "LMSDiscreteScheduler": _lms,
    "PNDMScheduler": _pndm,
    "EDMEulerScheduler": _edm_euler,
    "EulerAncestralDiscreteScheduler": _euler_ancestral,
    "KDPM2DiscreteScheduler": _kdpm2,
    "UniPCMultistepScheduler": _unipc,
    "DPMSolverMultistepScheduler": _dpm_multistep,
    "DDIMScheduler": _ddim,
    "EulerDiscreteScheduler": _euler,
    "FlowMatchEulerDiscreteScheduler": _flow_match_euler,
}

#: diffusers schedulers that are planned but not reproduced yet (refused by name)
NOT_YET: tuple[str, ...] = ()


def from_diffusers_scheduler(scheduler: Any) -> DiffusersPlan:
    """The flowode plan that reproduces a diffusers scheduler's loop after ``set_timesteps``.

    Args:
        scheduler: a diffusers scheduler on which ``set_timesteps(n)`` was called.

    Returns:
        :class:`DiffusersPlan` (``sigmas``, ``solver``, ``options``, ``run(model, latents)``).

    Raises:
        UnsupportedScheduler: a scheduler or option flowode does not reproduce exactly (named).
    """
    name = type(scheduler).__name__
    if getattr(scheduler, "config", None) is None:
        raise TypeError(f"`scheduler` must be a diffusers scheduler (with a .config), got {name}.")
    plan = _PLANS.get(name)
    if plan is None:
        known = ", ".join(sorted(_PLANS))
        extra = " (planned, not implemented yet)" if name in NOT_YET else ""
        raise UnsupportedScheduler(
            f"{name} is not reproduced by flowode{extra}; from_diffusers_scheduler supports {known}. "
            "Build the model with flowode.from_diffusers and pick a flowode solver and grid instead."
        )
    return plan(scheduler)
