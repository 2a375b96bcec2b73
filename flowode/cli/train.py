"""``flowode train``: train a small eps network on a 2-D toy or on the 8x8 digits, resumably.

Writes into ``--out``: ``checkpoint.pt`` (resumable training state; an interrupted run started
again with the same command continues from it), and at the end ``NAME.pt`` + ``NAME.json`` (the
EMA weights and their card), loadable with ``flowode.load_pretrained("OUT/NAME.json")``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

DATASETS = ("ring8", "grid9", "moons", "swissroll", "checkerboard", "digits")


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    from ..train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a small eps network (2-D toys or 8x8 digits), resumable",
                       description="Train an MLP (2-D toys) or a small UNet (digits) with the DDPM simple "
                                   "objective. Re-running the same command after an interruption resumes "
                                   "from OUT/checkpoint.pt.")
    p.add_argument("--data", default="ring8", choices=DATASETS, help="training data (default ring8)")
    p.add_argument("--out", required=True, help="output folder (checkpoint, weights, card)")
    p.add_argument("--name", default=None, help="file name of the weights/card (default: the data name)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up steps (default {d.warmup})")
    p.add_argument("--lr-decay", default=d.lr_decay, choices=("constant", "cosine"), help="learning-rate decay")
    p.add_argument("--target", default=d.target, choices=("eps", "v", "x0", "flow"),
                   help="regression target (flow: eps - x0, for --schedule flow_match)")
    p.add_argument("--schedule", default=d.schedule, choices=("linear", "cosine", "scaled_linear", "flow_match"),
                   help="noise schedule (default linear, DDPM's 1e-4..0.02; flow_match: x_t = (1-t) x0 + t eps)")
    p.add_argument("--num-timesteps", type=int, default=d.num_timesteps, help="training timesteps N")
    p.add_argument("--zero-terminal-snr", action="store_true", help="rescale the schedule to zero terminal SNR")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help=f"EMA decay (default {d.ema_decay})")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (<= 0: off)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed (weights init and training stream)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="checkpoint period in steps (default 200)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start again")
    p.add_argument("--conditional", action="store_true", help="digits: class-conditional with label dropout")
    p.add_argument("--label-dropout", type=float, default=d.label_dropout, help="label dropout (conditional)")
    p.add_argument("--hidden", type=int, default=128, help="MLP width (2-D toys)")
    p.add_argument("--depth", type=int, default=3, help="MLP residual blocks (2-D toys)")
    p.add_argument("--base-channels", type=int, default=32, help="UNet channels at full resolution (digits)")
    p.add_argument("--channel-mults", default="1,2", help="UNet channel multipliers per level (digits)")
    p.add_argument("--res-blocks", type=int, default=1, help="UNet residual blocks per level (digits)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="start from the weights of a shipped model or card (fine-tuning); a class-conditional "
                        "digits model may initialise an unconditional one (its null label is folded in)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build(args: argparse.Namespace) -> tuple[Any, Any, Any, Optional[int], dict[str, Any]]:
    """The network, data source, labels, number of classes and data description for ``args``."""
    import torch

    from .. import data as fdata
    from ..nets import MLP, UNet

    torch.manual_seed(args.seed)
    if args.data == "digits":
        x, y = fdata.load_digits(return_labels=True)
        try:
            mults = tuple(int(v) for v in str(args.channel_mults).split(",") if v)
        except ValueError:
            raise ValueError(f"`--channel-mults` must be comma-separated integers, e.g. 1,2; got "
                             f"{args.channel_mults!r}.") from None
        net: Any = UNet(in_channels=1, base_channels=args.base_channels, channel_mults=mults,
                   num_res_blocks=args.res_blocks, num_classes=10 if args.conditional else None,
                   time_scale=1000.0 if getattr(args, "schedule", None) == "flow_match" else 1.0)
        desc = {"name": "digits", "source": "sklearn.datasets.load_digits (1797 images, 8x8)",
                "scaling": "x / 8 - 1, in [-1, 1]", "shape": [1, 8, 8], "conditional": bool(args.conditional)}
        return net, x, (y if args.conditional else None), (10 if args.conditional else None), desc
    if args.conditional:
        raise ValueError("`--conditional` applies to --data digits only.")
    name = args.data

    def sampler(n: int, g: Any) -> Any:
        return fdata.toy_2d(name, n, generator=g)

    # a flow-matching network gets continuous t in [0, 1]: scale it like DDPM's integer timesteps
    time_scale = 1000.0 if getattr(args, "schedule", None) == "flow_match" else 1.0
    net = MLP(dim=2, hidden=args.hidden, depth=args.depth, time_scale=time_scale)
    desc = {"name": name, "source": f"flowode.data.toy_2d({name!r}, n, generator=g), fresh samples every step",
            "shape": [2]}
    return net, sampler, None, None, desc


def check_name(name: str) -> str:
    """``--name`` as a plain file name inside ``--out`` (no folders, no ``..``)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ValueError(f"`--name` {name!r} must be a plain file name (no '/', '\\' or '..'), e.g. --name ring8; "
                         "the files go into `--out`.")
    return name


def train_named(args: argparse.Namespace, argv: Optional[list[str]] = None) -> tuple[Any, dict[str, Any], Path]:
    """Train as the CLI does; return the :class:`~flowode.train.TrainResult`, the card and the weights path.

    ``--name`` and ``--out`` are checked before training; a diverging run raises
    :class:`~flowode.train.TrainingDivergedError` and writes no weights or card."""
    import torch

    from ..nets import describe
    from ..pretrained import save_model
    from ..train import TrainConfig, schedule_spec, train
    from ._util import out_dir

    name = check_name(args.data if args.name is None else args.name)
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"`--threads` must be a positive integer, got {args.threads}.")
    out = out_dir(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, lr_decay=args.lr_decay,
        target=args.target, schedule=args.schedule, num_timesteps=args.num_timesteps,
        zero_terminal_snr=args.zero_terminal_snr, ema_decay=args.ema_decay,
        grad_clip=args.grad_clip if args.grad_clip and args.grad_clip > 0 else None,
        label_dropout=args.label_dropout, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    net, data, labels, num_classes, desc = build(args)
    init_from = getattr(args, "init_from", None)
    if init_from:
        from ..pretrained import init_from_pretrained

        src = init_from_pretrained(net, init_from)
    result = train(net, data, config, labels=labels, num_classes=num_classes, checkpoint=out / "checkpoint.pt",
                   resume=not args.no_resume, progress=not args.quiet,
                   data_id=f"{desc['name']}{' (conditional)' if desc.get('conditional') else ''}"
                   + (f" from {init_from}" if init_from else ""))
    command = "flowode train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[2:]))
    card: dict[str, Any] = {
        "name": name,
        "arch": describe(result.ema),
        "parameters": sum(p.numel() for p in result.ema.parameters()),
        "schedule": schedule_spec(config),
        "prediction": config.target,
        "weights": "EMA",
        "data": desc,
        "training": {
            "config": dataclasses.asdict(config), "steps": result.step, "final_loss": result.final_loss,
            "final_loss_definition": "mean MSE of the last 200 steps",
            "seconds": round(result.seconds_total, 1), "resumed_from": result.resumed_from,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
        },
        "command": command,
    }
    if init_from:
        card["training"]["init_from"] = {"model": str(init_from), "its_train_command": src.get("train_command")}
    weights, _ = save_model(out / f"{name}.pt", result.ema, card)
    return result, card, weights


def run(args: argparse.Namespace) -> int:
    result, card, weights = train_named(args)
    print(f"trained {result.step} steps, final loss {result.final_loss:.5f} "
          f"({result.seconds:.1f} s this run); wrote {weights} and {weights.with_suffix('.json')}")
    return 0
