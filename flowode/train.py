"""DDPM training: the simple objective with eps / v / x0 targets, EMA, clipping and exact resume.

The objective is DDPM's ``L_simple`` (Ho et al. 2020, eq. 14 and Algorithm 1): draw a data point
``x0``, an integer timestep ``n ~ U{0, .., N-1}`` and ``eps ~ N(0, I)``, form

    x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps

and regress the network output at ``(x_n, n)`` on the target with the mean squared error. The
target is ``eps`` (default), ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022,
sec. 4) or ``x0``; the trained network is then an :class:`~flowode.models.EpsilonModel` with
``prediction`` = the target. Timesteps reach the network as float tensors of the integers, the
same values flowode's discrete schedules pass at integer grid points.

Reproducibility. Every random draw of training (batch indices or on-the-fly toy samples,
timesteps, noise, label dropout) comes from one ``torch.Generator`` seeded with ``config.seed``.
A checkpoint holds the network, the EMA copy, the optimizer, that generator's state, torch's
global RNG state (dropout), the step and the loss history, and is written atomically. Resuming
from it continues the same random stream, so on the same machine and torch build an interrupted
and resumed run ends with *bit-identical* weights to an uninterrupted run (tested in
``tests/test_train.py``). The learning rate is a pure function of the step (linear warm-up, then
constant or cosine decay), so it needs no saved state.

Resuming is refused (a ``ValueError`` naming ``resume=False`` / ``--no-resume``) when the
checkpoint was written with other training options, another network layout (parameter names and
shapes) or other data (``data_id``; by default a hash of a dataset tensor and its labels, or the
qualified name of a sampler), so a resumed run never continues old weights on new data.

Divergence. A step whose loss is not finite, or exceeds ``DIVERGENCE_FACTOR`` (1e6) times the
smallest loss of the first 10 steps, and weights that are not finite when a checkpoint is due, stop
training with :class:`TrainingDivergedError` before anything is written: the last good
checkpoint stays as it was and no weights are returned.

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
from .schedules import DiscreteVPSchedule

__all__ = ["TrainConfig", "TrainResult", "train", "make_schedule", "schedule_spec", "schedule_from_spec",
           "TARGETS", "CHECKPOINT_FORMAT", "training_target", "TrainingDivergedError", "DIVERGENCE_FACTOR",
           "data_fingerprint"]

TARGETS = ("eps", "v", "x0")
SCHEDULES = ("linear", "cosine", "scaled_linear")
CHECKPOINT_FORMAT = "flowode-train-checkpoint/1"

DataSource = Union[Tensor, Callable[[int, Optional[torch.Generator]], Tensor]]

# config fields that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every")

#: a loss this many times the smallest loss of the first 10 steps counts as divergence
DIVERGENCE_FACTOR = 1e6


class TrainingDivergedError(ValueError):
    """Training diverged (a non-finite or exploding loss, non-finite weights); nothing was written."""


@dataclass
class TrainConfig:
    """Training options (all plain values, stored in checkpoints and cards).

    Attributes:
        steps: total optimizer steps.
        batch_size: samples per step.
        lr: peak Adam learning rate; ``warmup`` linear warm-up steps; ``lr_decay`` ``"constant"`` or
            ``"cosine"`` (to 0 at ``steps``).
        weight_decay: AdamW weight decay.
        target: ``"eps"``, ``"v"`` or ``"x0"`` (the model's ``prediction``).
        schedule: ``"linear"`` (DDPM, ``beta_start``..``beta_end``), ``"cosine"`` (Nichol & Dhariwal)
            or ``"scaled_linear"``; ``num_timesteps`` of them; ``zero_terminal_snr`` rescales them.
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
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"`lr` must be a finite positive number, got {self.lr}; e.g. 1e-3.")

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
    spec: dict[str, Any] = {"class": "DiscreteVPSchedule", "kind": config.schedule,
                            "num_timesteps": config.num_timesteps, "zero_terminal_snr": config.zero_terminal_snr}
    if config.schedule != "cosine":
        spec.update(beta_start=config.beta_start, beta_end=config.beta_end)
    return spec


def schedule_from_spec(spec: dict[str, Any]) -> DiscreteVPSchedule:
    """Rebuild a :class:`DiscreteVPSchedule` from :func:`schedule_spec`'s dictionary."""
    if spec.get("class") != "DiscreteVPSchedule" or spec.get("kind") not in SCHEDULES:
        raise ValueError(f"cannot build a schedule from {spec!r}.")
    kw: dict[str, Any] = {"num_timesteps": int(spec["num_timesteps"]),
                          "zero_terminal_snr": bool(spec.get("zero_terminal_snr", False))}
    if spec["kind"] != "cosine":
        kw.update(beta_start=float(spec["beta_start"]), beta_end=float(spec["beta_end"]))
    return getattr(DiscreteVPSchedule, spec["kind"])(**kw)


def make_schedule(config: TrainConfig) -> DiscreteVPSchedule:
    """The :class:`DiscreteVPSchedule` that ``config`` trains on."""
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
    schedule: DiscreteVPSchedule
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


def _layout(net: nn.Module) -> dict[str, list[int]]:
    """Parameter and buffer names with their shapes: what a checkpoint's weights must fit."""
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def _check_layout(saved: Optional[dict[str, Any]], net: nn.Module, path: Path) -> None:
    if saved is None:  # a checkpoint from before layouts were stored: load_state_dict decides
        return
    now = _layout(net)
    diff = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)} -> {now.get(k)}" for k in diff[:3]) + (", ..." if len(diff) > 3
                                                                                          else "")
        raise ValueError(f"checkpoint {path} holds another network ({type(net).__name__} layout {detail}); resume "
                         "with the same network options, or pass resume=False (CLI: --no-resume) to start again.")


def data_fingerprint(data: Any, labels: Optional[Tensor] = None) -> str:
    """The default ``data_id`` of :func:`train`: a hash of a dataset tensor (values and shape) and
    its labels, or ``"sampler:module.qualname"`` of a sampler function."""
    import hashlib

    if isinstance(data, Tensor):
        h = hashlib.sha256(repr((tuple(data.shape), str(data.dtype))).encode())
        h.update(data.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        if labels is not None:
            h.update(labels.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return "tensor:" + h.hexdigest()[:16]
    return f"sampler:{getattr(data, '__module__', '?')}.{getattr(data, '__qualname__', type(data).__name__)}"


def _load_checkpoint(path: Path, device: Any) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated or garbage file: name it and the way out
        from .pretrained import first_sentence

        raise ValueError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first_sentence(exc)}); it is "
                         "truncated or not "
                         "a flowode checkpoint: delete it, or pass resume=False (CLI: --no-resume) to start "
                         "again.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a flowode training checkpoint; delete it, or pass resume=False "
                         "(CLI: --no-resume) to start again.")
    return state


# ------------------------------------------------------------------------------ training
def training_target(target: str, x0: Tensor, eps: Tensor, alpha: Tensor, std: Tensor) -> Tensor:
    """The regression target for ``x_n = alpha x0 + std eps`` (``alpha = sqrt(abar_n)``,
    ``std = sqrt(1 - abar_n)``): ``eps``, ``v = alpha eps - std x0`` or ``x0``
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
    data_id: Optional[str] = None,
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
        data_id: what the data are, stored in the checkpoint; resuming with another ``data_id`` is
            refused (default :func:`data_fingerprint`; give one for samplers, e.g. the data set name).

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainingDivergedError: the loss or the weights stopped being finite, or the loss exploded
            (see the module docstring); nothing is saved at or after that step.
        ValueError: bad options, a network without trainable parameters, non-finite data, or a
            checkpoint that cannot be resumed (unreadable; other options, network or data).
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
    params = [p for p in net.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"`net` ({type(net).__name__}) has no trainable parameters; give a network with weights "
                         "that require grad, e.g. flowode.nets.MLP(dim=2).")
    if isinstance(data, Tensor):
        bad = ~torch.isfinite(data.reshape(data.shape[0], -1)).all(dim=1) if data.is_floating_point() else None
        if bad is not None and bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise ValueError(f"`data` has {len(rows)} row(s) with NaN or Inf (first: row {rows[0]}); remove them, "
                             f"e.g. data[torch.isfinite(data).flatten(1).all(1)].")
    data_id = data_fingerprint(data, labels) if data_id is None else str(data_id)
    schedule = make_schedule(config)
    param = params[0]
    dtype, device = param.dtype, param.device
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
    good_step: Optional[int] = None  # the step of the last checkpoint written or resumed from
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path, device)
        _check_resumable(state["config"], config, ckpt_path)
        if state.get("data") is not None and state["data"] != data_id:
            raise ValueError(f"checkpoint {ckpt_path} was trained on other data ({state['data']} -> {data_id}); "
                             "resume with the same data, or pass resume=False (CLI: --no-resume) to start again.")
        _check_layout(state.get("layout"), net, ckpt_path)
        try:
            net.load_state_dict(state["net"])
            ema.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {ckpt_path} does not fit this network ({str(exc).splitlines()[0]}); resume "
                             "with the same network options, or pass resume=False (CLI: --no-resume).") from None
        good_step = int(state["step"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        losses = list(state["losses"])
        start = resumed_from = int(state["step"])
        elapsed0 = float(state.get("seconds") or 0.0)
        if start > config.steps:
            raise ValueError(f"checkpoint {ckpt_path} is at step {start}, beyond `steps`={config.steps}.")

    def diverged(step: int, why: str) -> TrainingDivergedError:
        kept = (f"the last good checkpoint (step {good_step}) is kept in {ckpt_path}" if good_step is not None
                else "no checkpoint was written")
        clip = f"`grad_clip`={config.grad_clip}" if config.grad_clip is not None else "no `grad_clip`"
        return TrainingDivergedError(
            f"training diverged at step {step} ({why}); {kept} and no weights were saved. Lower `lr` (now "
            f"{config.lr:g}; CLI --lr), clip gradients ({clip}; CLI --grad-clip 1) or check the data for outliers.")

    def save(step: int) -> None:
        nonlocal good_step
        if not all(bool(torch.isfinite(p).all()) for m in (net, ema) for p in m.parameters()):
            raise diverged(step, "the weights are not finite")
        if ckpt_path is None:
            return
        _save_atomic({
            "format": CHECKPOINT_FORMAT, "step": step, "config": dataclasses.asdict(config),
            "data": data_id, "layout": _layout(net),
            "net": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses,
            "seconds": elapsed0 + time.perf_counter() - t0,
        }, ckpt_path)
        good_step = step

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
            n = torch.randint(0, config.num_timesteps, (x0.shape[0],), generator=gen)
            eps = torch.randn(x0.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
            shape = (-1,) + (1,) * (x0.dim() - 1)
            n_dev = n.to(device)
            a, s = sqrt_abar[n_dev].view(shape), sqrt_1m[n_dev].view(shape)
            xt = a * x0 + s * eps
            tt = n_dev.to(dtype)
            if y is not None:
                drop = torch.rand(y.shape[0], generator=gen) < config.label_dropout
                y = torch.where(drop, torch.full_like(y, int(num_classes)), y).to(device)  # type: ignore[arg-type]
                out = net(xt, tt, y)
            else:
                out = net(xt, tt)
            target = training_target(config.target, x0, eps, a, s)
            loss = torch.mean((out - target) ** 2)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise diverged(step + 1, f"loss {value}")
            if losses:
                base = min(losses[:10])
                if value > DIVERGENCE_FACTOR * max(base, 1e-12):
                    raise diverged(step + 1, f"loss {value:.3g}, over {DIVERGENCE_FACTOR:g} x the first steps' "
                                             f"{base:.3g}")
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
