"""DDPM and flow-matching training: the simple objective with eps / v / x0 / flow targets, EMA,
clipping and exact resume.

The objective is DDPM's ``L_simple`` (Ho et al. 2020, eq. 14 and Algorithm 1): draw a data point
``x0``, an integer timestep ``n ~ U{0, .., N-1}`` and ``eps ~ N(0, I)``, form

    x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps

and regress the network output at ``(x_n, n)`` on the target with the mean squared error. The
target is ``eps`` (default), ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022,
sec. 4) or ``x0``; the trained network is then an :class:`~flowode.models.EpsilonModel` with
``prediction`` = the target. Timesteps reach the network as float tensors of the integers, the
same values flowode's discrete schedules pass at integer grid points.

Flow matching (``schedule="flow_match"``; rectified flow, Liu et al. 2023, eq. 1; Lipman et al.
2023, eq. 23 with ``sigma_min = 0``): draw ``t ~ U(t_min, 1)`` with ``t_min = 1 / num_timesteps``
and form ``x_t = (1 - t) x0 + t eps``; the target ``"flow"`` is the straight path's velocity
``u = eps - x0`` (any other target works too: :func:`training_target` is the one conversion table).
The network receives the continuous ``t`` in ``[t_min, 1]`` (give :class:`~flowode.nets.MLP`
``time_scale=1000``), and the trained model is on :class:`~flowode.FlowMatchSchedule`.

Reproducibility. Every random draw of training (batch indices or on-the-fly toy samples,
timesteps, noise, label dropout) comes from one ``torch.Generator`` seeded with ``config.seed``.
A checkpoint holds the network, the EMA copy, the optimizer, that generator's state, torch's
global RNG state (dropout), the step and the loss history, and is written atomically. Resuming
from it continues the same random stream, so on the same machine and torch build an interrupted
and resumed run ends with *bit-identical* weights to an uninterrupted run (tested in
``tests/test_train.py``). The learning rate is a pure function of the step (linear warm-up, then
constant or cosine decay), so it needs no saved state.

EMA of the weights (Polyak averaging, as DDPM's released models): after each optimizer step
``ema <- d ema + (1 - d) w`` with ``d = min(ema_decay, (1 + k) / (10 + k))`` at step ``k``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from .models import EpsilonModel
from .parameterization import from_eps_x0
from .schedules import DiscreteVPSchedule, FlowMatchSchedule, Schedule

__all__ = ["TrainConfig", "TrainResult", "train", "make_schedule", "schedule_spec", "schedule_from_spec",
           "TARGETS", "CHECKPOINT_FORMAT", "training_target"]

TARGETS = ("eps", "v", "x0", "flow")
SCHEDULES = ("linear", "cosine", "scaled_linear", "flow_match")
CHECKPOINT_FORMAT = "flowode-train-checkpoint/1"

DataSource = Union[Tensor, Callable[[int, Optional[torch.Generator]], Tensor]]

# config fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")


@dataclass
class TrainConfig:
    """Training options (all plain values, stored in checkpoints and cards).

    Attributes:
        steps: total optimizer steps.
        batch_size: samples per step.
        lr: peak Adam learning rate; ``warmup`` linear warm-up steps; ``lr_decay`` ``"constant"`` or
            ``"cosine"`` (to 0 at ``steps``).
        weight_decay: AdamW weight decay.
        target: ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"`` (``eps - x0``; the model's ``prediction``).
        schedule: ``"linear"`` (DDPM, ``beta_start``..``beta_end``), ``"cosine"`` (Nichol & Dhariwal)
            or ``"scaled_linear"``; ``num_timesteps`` of them; ``zero_terminal_snr`` rescales them.
            ``"flow_match"``: the straight path ``x_t = (1 - t) x0 + t eps`` with continuous
            ``t ~ U(1 / num_timesteps, 1)`` (``beta_*`` and ``zero_terminal_snr`` do not apply).
        ema_decay: EMA decay (0 disables averaging: the EMA copy equals the weights).
        grad_clip: max global gradient norm (``None``: no clipping).
        label_dropout: probability of replacing a label by the "no label" index (class-conditional
            training only; makes the network usable unconditionally and with guidance).
        seed: seeds the training generator.
        checkpoint_every: write a checkpoint every this many steps (0: only at the end).
        log_every: refresh the progress bar's loss every this many steps.
    """

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 100
    lr_decay: str = "constant"
    weight_decay: float = 0.0
    target: str = "eps"
    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    ema_decay: float = 0.999
    grad_clip: Optional[float] = 1.0
    label_dropout: float = 0.1
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}, got {self.target!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.schedule == "flow_match" and self.zero_terminal_snr:
            raise ValueError("`zero_terminal_snr` rescales VP betas; the 'flow_match' path already reaches "
                             "pure noise at t = 1. Drop zero_terminal_snr=True.")
        if self.lr_decay not in ("constant", "cosine"):
            raise ValueError(f"`lr_decay` must be 'constant' or 'cosine', got {self.lr_decay!r}.")
        for name in ("steps", "batch_size", "num_timesteps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"`grad_clip` must be positive or None, got {self.grad_clip}.")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"`label_dropout` must be in [0, 1), got {self.label_dropout}.")
        if self.warmup < 0 or self.checkpoint_every < 0 or self.log_every < 1:
            raise ValueError("`warmup` and `checkpoint_every` must be >= 0 and `log_every` >= 1.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}.")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.lr_decay == "cosine":
            span = max(1, self.steps - self.warmup)
            return self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))
        return self.lr


# ------------------------------------------------------------------------------ schedules
def schedule_spec(config: TrainConfig) -> dict[str, Any]:
    """JSON-able description of the training schedule (for cards); see :func:`schedule_from_spec`."""
    if config.schedule == "flow_match":
        return {"class": "FlowMatchSchedule", "shift": 1.0, "t_min": 1.0 / config.num_timesteps, "t_max": 1.0}
    spec: dict[str, Any] = {"class": "DiscreteVPSchedule", "kind": config.schedule,
                            "num_timesteps": config.num_timesteps, "zero_terminal_snr": config.zero_terminal_snr}
    if config.schedule != "cosine":
        spec.update(beta_start=config.beta_start, beta_end=config.beta_end)
    return spec


def schedule_from_spec(spec: dict[str, Any]) -> Schedule:
    """Rebuild a :class:`DiscreteVPSchedule` or :class:`FlowMatchSchedule` from :func:`schedule_spec`'s
    dictionary."""
    if spec.get("class") == "FlowMatchSchedule":
        return FlowMatchSchedule(shift=float(spec.get("shift", 1.0)), t_min=float(spec["t_min"]),
                                 t_max=float(spec.get("t_max", 1.0)))
    if spec.get("class") != "DiscreteVPSchedule" or spec.get("kind") not in SCHEDULES:
        raise ValueError(f"cannot build a schedule from {spec!r}.")
    kw: dict[str, Any] = {"num_timesteps": int(spec["num_timesteps"]),
                          "zero_terminal_snr": bool(spec.get("zero_terminal_snr", False))}
    if spec["kind"] != "cosine":
        kw.update(beta_start=float(spec["beta_start"]), beta_end=float(spec["beta_end"]))
    return getattr(DiscreteVPSchedule, spec["kind"])(**kw)


def make_schedule(config: TrainConfig) -> Schedule:
    """The schedule that ``config`` trains on (:class:`DiscreteVPSchedule` or :class:`FlowMatchSchedule`)."""
    return schedule_from_spec(schedule_spec(config))


# ------------------------------------------------------------------------------ result
@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        net: the trained network (last weights); ``ema``: its EMA copy.
        schedule, config: the schedule and options it was trained with.
        losses: the loss of every step (including steps done before a resume).
        step: steps done; ``seconds``: wall time of this call; ``seconds_total``: training wall
            time summed over the interrupted runs; ``resumed_from``: step of the checkpoint it
            resumed from (``None``: fresh start).
    """

    net: nn.Module
    ema: nn.Module
    schedule: Schedule
    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    step: int = 0
    seconds: float = 0.0
    seconds_total: float = 0.0
    resumed_from: Optional[int] = None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last (up to) 200 steps."""
        tail = self.losses[-200:]
        return float(sum(tail) / len(tail)) if tail else float("nan")

    def model(self, use_ema: bool = True) -> EpsilonModel:
        """The trained network as an :class:`EpsilonModel` (EMA weights by default), parameters frozen."""
        net = self.ema if use_ema else self.net
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return EpsilonModel(net, self.schedule, prediction=self.config.target)


# ------------------------------------------------------------------------------ checkpoints
def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    now = dataclasses.asdict(config)
    diff = [k for k in now if k not in _RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ValueError(
            f"checkpoint {path} was written with different training options ({detail}); resume with the "
            "same options, or pass resume=False (CLI: --no-resume) to start again."
        )


# ------------------------------------------------------------------------------ training
def training_target(target: str, x0: Tensor, eps: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """The regression target for ``x_n = alpha x0 + std eps`` (``alpha = sqrt(abar_n)``,
    ``std = sqrt(1 - abar_n)``; ``1 - t`` and ``t`` on the flow-matching path): ``eps``,
    ``v = alpha eps - std x0``, ``x0`` or ``flow = eps - x0``
    (:func:`flowode.parameterization.from_eps_x0`)."""
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    return from_eps_x0(target, eps, x0, alpha, std)


def _batch(data: DataSource, labels: Optional[Tensor], n: int, g: torch.Generator
           ) -> tuple[Tensor, Optional[Tensor]]:
    if isinstance(data, Tensor):
        idx = torch.randint(0, data.shape[0], (n,), generator=g)
        return data[idx], (labels[idx] if labels is not None else None)
    return data(n, g), None


def train(
    net: nn.Module,
    data: DataSource,
    config: Optional[TrainConfig] = None,
    *,
    labels: Optional[Tensor] = None,
    num_classes: Optional[int] = None,
    checkpoint: Optional[Union[str, Path]] = None,
    resume: bool = True,
    progress: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
    **options: Any,
) -> TrainResult:
    """Train ``net`` on ``data`` with the DDPM simple objective (see the module docstring).

    Args:
        net: a network ``net(x, t) -> tensor shaped like x`` (``net(x, t, y)`` when ``labels`` are
            given), e.g. :class:`flowode.nets.MLP` or :class:`flowode.nets.UNet`. Seed torch before
            building it if the initial weights should be reproducible.
        data: a dataset tensor ``(N, ...)`` (batches drawn uniformly with replacement) or a sampler
            ``data(n, generator) -> (n, ...)`` (fresh samples, e.g. a 2-D toy).
        config: :class:`TrainConfig`; keyword ``options`` override its fields.
        labels: class labels ``(N,)`` for class-conditional training (with a dataset tensor only);
            ``num_classes`` is then the "no label" index used by ``label_dropout``
            (default ``labels.max() + 1``).
        checkpoint: file for periodic checkpoints (every ``config.checkpoint_every`` steps and at
            the end). If it exists and ``resume`` is true, training continues from it.
        progress: show a tqdm progress bar with the running loss.
        callback: ``callback(step, loss)`` after every step (``step`` counts completed steps).

    Returns:
        :class:`TrainResult`.
    """
    config = dataclasses.replace(config or TrainConfig(), **options)
    if not isinstance(net, nn.Module):
        raise TypeError(f"`net` must be a torch.nn.Module, got {type(net).__name__}.")
    if labels is not None:
        if not isinstance(data, Tensor) or labels.shape != (data.shape[0],):
            raise ValueError("`labels` must be a (N,) tensor matching a dataset tensor `data` of N samples.")
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    elif not (isinstance(data, Tensor) or callable(data)):
        raise TypeError("`data` must be a dataset tensor or a sampler data(n, generator) -> tensor.")
    schedule = make_schedule(config)
    param = next(net.parameters())
    dtype, device = param.dtype, param.device
    flow_match = isinstance(schedule, FlowMatchSchedule)
    if isinstance(schedule, DiscreteVPSchedule):
        abar = schedule.alphas_cumprod_knots.to(device)
        sqrt_abar = abar.sqrt().to(dtype)
        sqrt_1m = (1 - abar).sqrt().to(dtype)

    ema = copy.deepcopy(net)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    losses: list[float] = []
    start = 0
    resumed_from = None
    elapsed0 = 0.0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{ckpt_path} is not a flowode training checkpoint.")
        _check_resumable(state["config"], config, ckpt_path)
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        losses = list(state["losses"])
        start = resumed_from = int(state["step"])
        elapsed0 = float(state.get("seconds") or 0.0)
        if start > config.steps:
            raise ValueError(f"checkpoint {ckpt_path} is at step {start}, beyond `steps`={config.steps}.")

    def save(step: int) -> None:
        if ckpt_path is None:
            return
        _save_atomic({
            "format": CHECKPOINT_FORMAT, "step": step, "config": dataclasses.asdict(config),
            "net": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses,
            "seconds": elapsed0 + time.perf_counter() - t0,
        }, ckpt_path)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    net.train()
    running = None
    try:
        for step in range(start, config.steps):
            x0, y = _batch(data, labels, config.batch_size, gen)
            x0 = x0.to(device=device, dtype=dtype)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            if flow_match:  # t ~ U(t_min, 1): x_t = (1 - t) x0 + t eps
                t_min = schedule.t_min
                u = torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
                tt = (t_min + (1.0 - t_min) * u).to(device=device, dtype=dtype)
                eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
                s = tt.view(shape)
                a = 1 - s
            else:
                n = torch.randint(0, config.num_timesteps, (x0.shape[0],), generator=gen)
                eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
                n_dev = n.to(device)
                a, s = sqrt_abar[n_dev].view(shape), sqrt_1m[n_dev].view(shape)
                tt = n_dev.to(dtype)
            xt = a * x0 + s * eps
            if y is not None:
                drop = torch.rand(y.shape[0], generator=gen) < config.label_dropout
                y = torch.where(drop, torch.full_like(y, int(num_classes)), y).to(device)  # type: ignore[arg-type]
                out = net(xt, tt, y)
            else:
                out = net(xt, tt)
            target = training_target(config.target, x0, eps, a, s)
            loss = torch.mean((out - target) ** 2)
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
            opt.step()
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(pn, 1.0 - decay)
                for be, bn in zip(ema.buffers(), net.buffers()):
                    be.copy_(bn)
            value = float(loss.detach())
            losses.append(value)
            running = value if running is None else 0.98 * running + 0.02 * value
            done = step + 1
            if bar is not None:
                bar.update(1)
                if done % config.log_every == 0 or done == config.steps:
                    bar.set_postfix(loss=f"{running:.4f}")
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                save(done)
            if callback is not None:
                callback(done, value)
        save(config.steps)
    finally:
        if bar is not None:
            bar.close()
    net.eval()
    ema.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(net=net, ema=ema, schedule=schedule, config=config, losses=losses, step=config.steps,
                       seconds=seconds, seconds_total=elapsed0 + seconds, resumed_from=resumed_from)
