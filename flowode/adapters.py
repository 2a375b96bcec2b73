"""Models from elsewhere: diffusers UNets with their schedulers, and k-diffusion-style denoisers.

**diffusers** (optional: ``pip install flowode[diffusers]``). :func:`from_diffusers` reads the
noise schedule a diffusers scheduler *actually uses* -- its ``alphas_cumprod`` tensor, which
already includes ``beta_schedule``, ``trained_betas`` and ``rescale_betas_zero_snr`` (Lin et al.
2024) -- into a :class:`~flowode.schedules.DiscreteVPSchedule`, maps ``prediction_type``
(``"epsilon"`` -> ``eps``, ``"v_prediction"`` -> ``v``, ``"sample"`` -> ``x0``) and wraps the UNet as
``fn(x, t) = unet(x, t).sample``. flowode passes the timesteps as float tensors; at the integer
timesteps of a diffusers grid they hold exactly those integers, which a ``UNet2DModel`` embeds
like the integer tensors diffusers' pipelines pass. :func:`diffusers_sigmas` turns the scheduler's
own ``set_timesteps`` grid (``timestep_spacing``, ``steps_offset``) and its final level
(``set_alpha_to_one``) into a flowode sigma grid, so that ``integrate(model, x, sigmas, "ddim")``
takes the same steps as the diffusers loop.

Sampler-side options of a diffusers scheduler are not part of the model and are *not* copied:
``clip_sample`` and ``thresholding`` act on the DDIM update in diffusers (x0 is clipped, eps is
not recomputed), whereas flowode's ``EpsilonModel(clip_x0=..., dynamic_threshold=...)`` keeps
``(eps, x0)`` consistent; pass those keywords yourself if you want them.

**k-diffusion / EDM denoisers.** A denoiser ``D(xbar, sigma) -> x0_hat`` takes the state in the
variance-exploding picture ``xbar = x0 + sigma * eps`` and a noise level per sample (Karras et al.
2022, sec. 2 and Table 1; k-diffusion's ``model(x, sigma)`` convention). :class:`DenoiserModel`
makes it an :class:`~flowode.models.EpsilonModel` with ``prediction="x0"`` on any schedule: it
passes ``xbar = x / alpha(sigma)`` (``= x`` for VE / EDM schedules) and ``sigma`` itself (not the
native time) to ``D``, and the usual identity ``eps = (xbar - x0_hat) / sigma`` gives the field, so
every solver runs on it unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .grids import check_grid, sigmas_from_timesteps
from .models import EpsilonModel
from .parameterization import per_sample
from .schedules import DiscreteVPSchedule, FlowMatchSchedule, Schedule

__all__ = ["from_diffusers", "diffusers_schedule", "is_flow_matching", "diffusers_sigmas", "DenoiserModel",
           "PREDICTION_TYPES"]

#: diffusers ``prediction_type`` -> flowode ``prediction``
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}


def is_flow_matching(scheduler: Any) -> bool:
    """Whether a diffusers scheduler drives a flow-matching network (``x_t = (1 - t) x0 + t eps``): its
    class is one of diffusers' ``FlowMatch*`` schedulers, or its ``prediction_type`` is
    ``"flow_prediction"`` (a VP-type scheduler with ``use_flow_sigmas``)."""
    config = _config(scheduler)
    ptype = config.get("prediction_type", None) if hasattr(config, "get") else None
    return type(scheduler).__name__.startswith("FlowMatch") or ptype == "flow_prediction"


def _config(scheduler: Any) -> Any:
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"`scheduler` must be a diffusers scheduler (with a .config), got {type(scheduler).__name__}.")
    return config


def diffusers_schedule(scheduler: Any) -> Schedule:
    """The schedule of a diffusers scheduler: a :class:`DiscreteVPSchedule` from its ``alphas_cumprod``
    (as diffusers computed them, in float32, cast to float64), or, for schedulers without that
    attribute, rebuilt from ``betas``; for a flow-matching scheduler (:func:`is_flow_matching`) a
    :class:`~flowode.FlowMatchSchedule` with its ``shift`` (grids only) and ``t_min = 1 / N``."""
    config = _config(scheduler)
    if is_flow_matching(scheduler):
        n = int(config.get("num_train_timesteps", 1000)) if hasattr(config, "get") else 1000
        shift = float(config.get("shift", 1.0) or 1.0) if hasattr(config, "get") else 1.0
        return FlowMatchSchedule(shift=shift, t_min=1.0 / n)
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is not None:
        return DiscreteVPSchedule.from_alphas_cumprod(torch.as_tensor(abar).detach().cpu().to(torch.float64))
    betas = getattr(scheduler, "betas", None)
    if betas is None:
        raise ValueError(
            f"{type(scheduler).__name__} exposes neither `alphas_cumprod` nor `betas`; build the schedule "
            "yourself (flowode.DiscreteVPSchedule.from_betas) and use flowode.EpsilonModel."
        )
    return DiscreteVPSchedule.from_betas(torch.as_tensor(betas).detach().cpu().to(torch.float64))


class _DiffusersFn(torch.nn.Module):
    """``fn(x, t) = unet(x, time_scale * t, **kwargs).sample`` (or the first element of a tuple output).
    ``time_scale`` is ``num_train_timesteps`` for flow-matching networks (diffusers passes ``1000 t``)."""

    def __init__(self, unet: Callable[..., Any], unet_kwargs: dict[str, Any], time_scale: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.unet_kwargs = unet_kwargs
        self.time_scale = float(time_scale)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.unet(x, t * self.time_scale if self.time_scale != 1.0 else t, **self.unet_kwargs)
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def from_diffusers(unet: Callable[..., Any], scheduler: Any, *, unet_kwargs: Optional[dict[str, Any]] = None,
                   **model_kwargs: Any) -> EpsilonModel:
    """An :class:`EpsilonModel` from a diffusers ``UNet2DModel`` (or any ``unet(x, t, **kw)``
    returning an object with ``.sample``, a tuple or a tensor) and the scheduler it was trained with.

    Args:
        unet: the network; called as ``unet(x, t, **unet_kwargs)`` with ``t`` a 1-D float tensor of
            (possibly fractional) training timesteps, one per sample.
        scheduler: a diffusers scheduler (``DDIMScheduler``, ``DDPMScheduler``, ...); its
            ``alphas_cumprod`` and ``config.prediction_type`` are used (see the module docstring).
            A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``, or
            ``prediction_type="flow_prediction"``) gives a ``prediction="flow"`` model on
            :class:`~flowode.FlowMatchSchedule`, whose network receives ``num_train_timesteps * t``
            as diffusers' flow pipelines pass it.
        unet_kwargs: extra keywords for every call (e.g. ``class_labels=...``).
        **model_kwargs: passed to :class:`EpsilonModel` (``clip_x0``, guidance, ...).

    Use :func:`diffusers_sigmas` for the scheduler's own timestep grid.
    """
    config = _config(scheduler)
    ptype = config.get("prediction_type", "epsilon") if hasattr(config, "get") else "epsilon"
    flow = is_flow_matching(scheduler)
    if flow:
        ptype = "flow_prediction"
    if ptype not in PREDICTION_TYPES:
        raise ValueError(
            f"unsupported diffusers prediction_type {ptype!r}; flowode handles {', '.join(PREDICTION_TYPES)}."
        )
    if not callable(unet):
        raise TypeError(f"`unet` must be callable unet(x, t), got {type(unet).__name__}.")
    schedule = diffusers_schedule(scheduler)
    n_train = float(config.get("num_train_timesteps", 1000)) if hasattr(config, "get") else 1000.0
    model = EpsilonModel(_DiffusersFn(unet, dict(unet_kwargs or {}), n_train if flow else 1.0), schedule,
                         prediction=PREDICTION_TYPES[ptype], **model_kwargs)
    model.unet = unet  # type: ignore[attr-defined]
    return model


def diffusers_sigmas(scheduler: Any, steps: int, schedule: Optional[Schedule] = None) -> Tensor:
    """The sigma grid a diffusers scheduler steps through with ``steps`` inference steps.

    Calls ``scheduler.set_timesteps(steps)`` (so ``timestep_spacing`` and ``steps_offset`` apply as
    in diffusers), maps the timesteps to sigmas and ends at 0 when ``config.set_alpha_to_one`` is
    true or absent, else at ``sigma(t=0)`` (diffusers' ``final_alpha_cumprod = alphas_cumprod[0]``).

    With ``timestep_spacing="linspace"`` diffusers' ``DDIMScheduler.step`` does not follow this grid:
    it always lands on ``t - num_train_timesteps // steps``, which is not the next timestep of a
    linspace grid (it evaluates at one set of levels and lands on another). flowode's DDIM on the
    grid returned here steps between consecutive timesteps instead; for ``"leading"`` and
    ``"trailing"`` the two coincide (tested in ``tests/test_diffusers_adapter.py``).
    """
    config = _config(scheduler)
    schedule = schedule if schedule is not None else diffusers_schedule(scheduler)
    scheduler.set_timesteps(steps)
    ts = torch.as_tensor(scheduler.timesteps).detach().cpu().to(torch.float64)
    final = "zero" if (config.get("set_alpha_to_one", True) if hasattr(config, "get") else True) else "min"
    return check_grid(sigmas_from_timesteps(schedule, ts, final=final), schedule)


class DenoiserModel(EpsilonModel):
    """A k-diffusion / EDM denoiser ``D(xbar, sigma) -> x0_hat`` as an :class:`EpsilonModel`.

    Args:
        denoiser: ``D(xbar, sigma)`` with ``xbar`` the variance-exploding state ``x0 + sigma * eps``
            and ``sigma`` a 1-D tensor (one noise level per sample, the state's dtype and device);
            returns the denoised estimate shaped like ``xbar``.
        schedule: the schedule whose ``sigma`` range (and, for VP, whose ``alpha``) applies; an
            :class:`~flowode.schedules.EDMSchedule` for an EDM / k-diffusion model.
        **kwargs: passed to :class:`EpsilonModel` (``clip_x0``, ``check_finite``, ...).

    The model state is ``x = alpha(sigma) * xbar`` as for every flowode model (``x = xbar`` on VE
    and EDM schedules). At ``sigma = 0`` (the first evaluation of an encode) ``D`` is called at the
    schedule's ``sigma_min`` and eps is converted there, as for every network
    (:meth:`EpsilonModel.predict`), so the first encode step matches the equivalent eps model.
    """

    per_sample_network = True

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], schedule: Schedule, **kwargs: Any) -> None:
        if not callable(denoiser):
            raise TypeError(f"`denoiser` must be callable D(xbar, sigma), got {type(denoiser).__name__}.")
        self.denoiser = denoiser
        super().__init__(self._t_fn, schedule, prediction="x0", **kwargs)

    def _t_fn(self, x: Tensor, t: Tensor) -> Tensor:
        """The ``fn(x, t)`` view (native time), for code that calls ``model.fn`` directly."""
        sigma = torch.as_tensor(self.schedule.sigma(t.detach().to("cpu", torch.float64)))
        alpha = torch.as_tensor(self.schedule.alpha_from_sigma(sigma)).to(x)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return self.denoiser(x / alpha.view(shape), sigma.to(x))

    def network(self, x: Tensor, sigma: Union[float, Tensor]) -> Tensor:
        """``D(x / alpha, sigma)``: ``sigma`` a float shared by the batch (never 0: ``predict``
        evaluates sigma = 0 at sigma_min) or a ``(B,)`` tensor of per-sample levels."""
        if isinstance(sigma, Tensor):
            sig = sigma.detach().to("cpu", torch.float64)
            if bool(torch.isinf(sig).any()):
                raise ValueError(_NO_INF)
            alphas = per_sample(torch.as_tensor(self.schedule.alpha_from_sigma(sig)), x)
            return self.denoiser(x / alphas, sig.to(dtype=x.dtype, device=x.device))
        s = float(sigma)
        if math.isinf(s):
            raise ValueError(_NO_INF)
        alpha = float(self.schedule.alpha_from_sigma(s))
        xbar = x / alpha if alpha != 1.0 else x
        return self.denoiser(xbar, torch.full((x.shape[0],), s, dtype=x.dtype, device=x.device))


_NO_INF = ("a denoiser D(xbar, sigma) cannot be evaluated at sigma = inf (xbar = x / alpha is infinite at "
           "zero terminal SNR); start the grid at a finite sigma (`sigma_max=`).")
