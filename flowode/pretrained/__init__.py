"""Shipped checkpoints and the card format of trained models.

A model on disk is two files side by side: ``NAME.pt`` (a torch state dict of the EMA weights,
float32) and ``NAME.json`` (the card). The card holds everything needed to rebuild the
:class:`~flowode.models.EpsilonModel` and to judge it:

* ``arch``: ``{"class": "UNet" | "MLP", "config": {...}}`` (see :func:`flowode.nets.build_network`);
* ``schedule``: :func:`flowode.train.schedule_spec`; ``prediction``: ``"eps"``, ``"v"`` or ``"x0"``;
* ``data``: what it was trained on; ``training``: the :class:`~flowode.train.TrainConfig`, steps,
  final loss, wall time; ``command``: the command that reproduces it;
* ``quality``: figures measured by ``scripts/train_pretrained.py`` (see docs/models.md).

:func:`list_pretrained` names the checkpoints shipped in this folder; :func:`load_pretrained` loads
one of them (or any card path written by ``flowode train``) offline, on the CPU by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..models import EpsilonModel

__all__ = ["list_pretrained", "load_pretrained", "load_card", "save_model", "init_from_pretrained",
           "PRETRAINED_DIR"]

PRETRAINED_DIR = Path(__file__).resolve().parent


def list_pretrained() -> list[str]:
    """Names of the checkpoints shipped with flowode (each has ``NAME.json`` and ``NAME.pt``)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.json") if p.with_suffix(".pt").exists())


def _card_path(name: Union[str, Path]) -> Path:
    if str(name) in list_pretrained():
        return PRETRAINED_DIR / f"{name}.json"
    path = Path(name)
    if path.suffix == ".pt":
        path = path.with_suffix(".json")
    if path.suffix == ".json" and path.exists():
        return path
    raise ValueError(
        f"no pretrained model {str(name)!r}: shipped ones are {', '.join(list_pretrained()) or '(none)'}; "
        "or give the path of a card (NAME.json next to NAME.pt) written by `flowode train`."
    )


def first_sentence(exc: BaseException) -> str:
    """The first line and sentence of an exception's message (torch's loaders write paragraphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0].rstrip(".")


def _read_card(path: Path) -> dict[str, Any]:
    """The card at ``path``; a ``ValueError`` naming the file when it is not a readable card."""
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"card {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); it is truncated or not "
                         "a flowode card: write it again with `flowode train`.") from None
    missing = [k for k in ("arch", "schedule", "prediction") if not isinstance(card, dict) or k not in card]
    if missing:
        raise ValueError(f"card {str(path)!r} is not a flowode card (no {', '.join(map(repr, missing))} entry); "
                         "write it again with `flowode train`.")
    return card  # type: ignore[no-any-return]


def load_card(name: Union[str, Path]) -> dict[str, Any]:
    """The JSON card of a shipped model (by name) or of a card file."""
    return _read_card(_card_path(name))


def _check_label(label: Union[int, Tensor, None], num_classes: int, name: str) -> None:
    if label is None:
        return
    values = label.flatten().tolist() if isinstance(label, Tensor) else [label]
    bad = [v for v in values if isinstance(v, bool) or v != int(v) or not 0 <= int(v) < num_classes]
    if bad:
        raise ValueError(f"`label`={bad[0]!r} is not a class of model {name!r}: use an integer in "
                         f"0..{num_classes - 1} (or None for unconditional samples).")


class _Conditional(nn.Module):
    """``fn(x, t) = net(x, t, y)`` with fixed labels ``y`` (broadcast over the batch)."""

    def __init__(self, net: nn.Module, label: Union[int, Tensor, None], null: int) -> None:
        super().__init__()
        self.net = net
        self.label = label
        self.null = null

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.label is None:
            y = torch.full((x.shape[0],), self.null, dtype=torch.long, device=x.device)
        elif isinstance(self.label, Tensor) and self.label.dim() == 1:
            if self.label.shape[0] != x.shape[0]:
                raise ValueError(f"`label` holds {self.label.shape[0]} labels for a batch of {x.shape[0]}.")
            y = self.label.to(device=x.device, dtype=torch.long)
        else:
            y = torch.full((x.shape[0],), int(self.label), dtype=torch.long, device=x.device)
        return self.net(x, t, y)


def load_pretrained(name: Union[str, Path], *, device: Union[str, torch.device] = "cpu",
                    label: Union[int, Tensor, None] = None, guidance_scale: Optional[float] = None,
                    **model_kwargs: Any) -> EpsilonModel:
    """Load a trained model as a ready :class:`~flowode.models.EpsilonModel` (float32, offline).

    Args:
        name: a shipped name (:func:`list_pretrained`, e.g. ``"digits"``, ``"ring8"``) or the path of
            a card ``.json`` (or its ``.pt``) written by ``flowode train``.
        device: where to put the network.
        label: class-conditional models only: the class (an int, or one label per sample as a 1-D
            tensor) to generate; ``None`` samples unconditionally.
        guidance_scale: with ``label``, classifier-free guidance weight ``w`` (Ho & Salimans 2022):
            ``eps = eps_uncond + w (eps_cond - eps_uncond)``, two network calls per evaluation.
        **model_kwargs: passed to :class:`EpsilonModel` (e.g. ``clip_x0=(-1, 1)``).

    The returned model has the attributes ``net`` (the network, parameters frozen, eval mode) and
    ``card`` (the card as a dict) and, when the card records it, ``sample_shape`` (the shape of one
    sample, e.g. ``(1, 8, 8)``; what ``flowode bench`` / ``flowode sample --problem NAME`` read).
    Its data live in ``[-1, 1]`` for images; for 2-D toys see ``card["data"]``.
    """
    from ..nets import build_network
    from ..train import schedule_from_spec

    card_path = _card_path(name)
    card = _read_card(card_path)
    net = build_network(card["arch"])
    weights = card_path.with_suffix(".pt")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or mismatched weights: name the file
        raise ValueError(f"weights {str(weights)!r} cannot be loaded for the card {str(card_path)!r} "
                         f"({type(exc).__name__}: {first_sentence(exc)}); the file is "
                         "truncated, not a state dict, or from another architecture: write it again with "
                         "`flowode train`.") from None
    net.to(device=device, dtype=torch.float32).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    schedule = schedule_from_spec(card["schedule"])
    num_classes = card["arch"]["config"].get("num_classes")
    fn: nn.Module = net
    if num_classes:
        _check_label(label, int(num_classes), str(name))
        fn = _Conditional(net, label, num_classes)
        if guidance_scale is not None:
            if label is None:
                raise ValueError("`guidance_scale` needs a `label` to guide towards.")
            model_kwargs.update(uncond_fn=_Conditional(net, None, num_classes), guidance_scale=guidance_scale)
    elif label is not None or guidance_scale is not None:
        raise ValueError(f"model {str(name)!r} is unconditional; it takes no `label` / `guidance_scale`.")
    model = EpsilonModel(fn, schedule, prediction=card["prediction"], **model_kwargs)
    model.net = net  # type: ignore[attr-defined]
    model.card = card  # type: ignore[attr-defined]
    shape = (card.get("data") or {}).get("shape")
    if shape is not None:  # the shape of one sample, as flowode.bench and `flowode sample` read it
        model.sample_shape = tuple(int(s) for s in shape)  # type: ignore[attr-defined]
    return model


def save_model(path: Union[str, Path], net: nn.Module, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``net``'s float32 state dict to ``path`` (``.pt``) and ``card`` next to it (``.json``).

    ``card`` must hold ``arch``, ``schedule`` and ``prediction``; see the module docstring.
    """
    for key in ("arch", "schedule", "prediction"):
        if key not in card:
            raise ValueError(f"the card needs a {key!r} entry.")
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in net.state_dict().items()}
    torch.save(state, path)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path, card_path


def init_from_pretrained(net: nn.Module, name: Union[str, Path]) -> dict[str, Any]:
    """Copy the weights of a trained model (shipped name or card path) into ``net``, for fine-tuning.

    ``net`` must have the same layout as that model's network, except that a class-conditional
    source may initialise an *unconditional* UNet: the conditional UNet adds the "no label"
    embedding ``label.weight[num_classes]`` to the time embedding ``time.lin2(...)``, so folding it
    into ``time.lin2.bias`` gives an unconditional network whose output equals the source's
    unconditional output exactly (to float32 round-off). Returns the source's card.
    """
    from ..nets import build_network

    card_path = _card_path(name)
    card = _read_card(card_path)
    src = build_network(card["arch"])
    weights = card_path.with_suffix(".pt")
    src.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    state = src.state_dict()
    target = net.state_dict()
    if "label.weight" in state and "label.weight" not in target:
        null = state.pop("label.weight")[-1]
        if "time.lin2.bias" not in state:
            raise ValueError(f"cannot fold the null label of {str(name)!r} into `net`: no `time.lin2.bias`.")
        state["time.lin2.bias"] = state["time.lin2.bias"] + null
    missing = sorted(set(target) - set(state))
    extra = sorted(set(state) - set(target))
    shapes = [k for k in set(target) & set(state) if target[k].shape != state[k].shape]
    if missing or extra or shapes:
        detail = "; ".join(f"{what}: {', '.join(keys[:3])}" for what, keys in
                           (("missing", missing), ("unexpected", extra), ("other shape", sorted(shapes))) if keys)
        raise ValueError(f"`init_from`={str(name)!r} holds another network ({detail}); build `net` with the "
                         f"architecture of its card ({card['arch']}); CLI: the same --data and network options "
                         f"as its train_command ({card.get('train_command', 'in its card')}).")
    with torch.no_grad():
        for k, v in net.state_dict().items():
            v.copy_(state[k].to(v.dtype))
    return card
