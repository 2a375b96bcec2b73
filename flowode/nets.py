"""Small epsilon networks: an MLP for low-dimensional data and a UNet for small one-channel images.

Both follow the :class:`~flowode.models.EpsilonModel` contract ``net(x, t) -> tensor shaped like x``,
with ``t`` a 1-D float tensor of *native* timesteps (``0 .. N-1`` for a discrete DDPM schedule), one
per sample. The time enters through the sinusoidal embedding of the Transformer (Vaswani et al.
2017, sec. 3.5) as used by DDPM (Ho et al. 2020, appendix B):

    emb(t)_i = cos(t * w_i),  emb(t)_{half+i} = sin(t * w_i),  w_i = max_period^(-i/half),

after multiplying ``t`` by ``time_scale`` (use ``time_scale=1000`` for a continuous schedule with
``t in [0, 1]`` so the frequencies see a similar range).

The UNet is the DDPM design scaled down (Ho et al. 2020, appendix B; Nichol & Dhariwal 2021):
residual blocks with GroupNorm and SiLU, the time (and optional class) embedding added inside each
block, stride-2 convolutions down, nearest-neighbour upsampling plus a convolution up, skip
connections concatenated, and one multi-head self-attention block in the middle, at the lowest
resolution. Output convolutions are zero-initialised, so an untrained network predicts ``eps = 0``.

Every network stores its constructor arguments in ``net.config`` so that :func:`build_network`
can rebuild it from a checkpoint card. Inputs of another dtype are cast to the weights' dtype and
the output is cast back, so a float32 network can be sampled with a float64 state.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["timestep_embedding", "MLP", "UNet", "ResBlock", "SelfAttention", "build_network", "NETWORKS"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of the timesteps ``t`` (shape ``(B,)``) into ``(B, dim)`` (``dim`` even)."""
    if t.dim() != 1:
        raise ValueError(f"`t` must be a 1-D tensor with one timestep per sample, got shape {tuple(t.shape)}.")
    if dim % 2:
        raise ValueError(f"the embedding dimension must be even, got {dim}.")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _check_inputs(x: Tensor, t: Tensor) -> Tensor:
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"`t` must hold one timestep per sample: shape ({x.shape[0]},), got {tuple(t.shape)}."
        )
    return t


class _TimeMLP(nn.Module):
    def __init__(self, emb_dim: int, out_dim: int, time_scale: float) -> None:
        super().__init__()
        self.emb_dim, self.time_scale = emb_dim, time_scale
        self.lin1 = nn.Linear(emb_dim, out_dim)
        self.lin2 = nn.Linear(out_dim, out_dim)

    def forward(self, t: Tensor) -> Tensor:
        e = timestep_embedding(t.to(torch.float32) * self.time_scale, self.emb_dim).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(e)))


# ------------------------------------------------------------------------------------------ MLP
class MLP(nn.Module):
    """Residual MLP ``eps(x, t)`` for flat data (e.g. 2-D toys).

    ``h = W_in x + emb(t)``; ``depth`` blocks ``h <- h + W2 silu(W1 silu(LayerNorm(h)) + emb_k(t))``;
    ``eps = W_out silu(h)`` with ``W_out`` zero-initialised.

    Args:
        dim: data dimension (inputs of shape ``(B, dim)`` or ``(B, *shape)`` with ``prod(shape) = dim``).
        hidden: width of the hidden layers.
        depth: number of residual blocks.
        emb_dim: size of the sinusoidal time embedding.
        time_scale: multiplies ``t`` before the embedding (1 for integer DDPM timesteps).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 time_scale: float = 1.0) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"`dim`, `hidden` and `depth` must be positive, got {dim}, {hidden}, {depth}.")
        self.config: dict[str, Any] = dict(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim,
                                           time_scale=time_scale)
        self.dim = dim
        self.time = _TimeMLP(emb_dim, hidden, time_scale)
        self.inp = nn.Linear(dim, hidden)
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(depth)])
        self.lin1 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.temb = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.lin2 = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)
        _zero(self.out)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = _check_inputs(x, t)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"this MLP takes {self.dim}-dimensional samples, got shape {tuple(x.shape)}.")
        w = self.out.weight
        emb = F.silu(self.time(t))
        h = self.inp(flat.to(w.dtype)) + emb
        for norm, l1, te, l2 in zip(self.norms, self.lin1, self.temb, self.lin2):
            h = h + l2(F.silu(l1(F.silu(norm(h))) + te(emb)))
        return self.out(F.silu(h)).reshape(x.shape).to(x.dtype)


# ------------------------------------------------------------------------------------------ UNet
def _zero(layer: nn.Module) -> None:
    """Zero-initialise a layer's weight and bias (the output layers: an untrained block is the identity)."""
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if p is not None:
            nn.init.zeros_(p)


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


class ResBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))) + W emb)))`` with a 1x1 skip when channels change."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        _zero(self.conv2)
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual, zero-initialised output."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"`attn_heads`={heads} must divide the channel count {channels}.")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        _zero(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        b, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid).unbind(1)
        # (b, heads, pixels, head_dim)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, hgt, wid)
        return x + self.proj(out)


class UNet(nn.Module):
    """Small DDPM-style UNet for ``(B, C, H, W)`` images (8x8 digits, 28x28 MNIST-sized).

    Args:
        in_channels: image channels (the output has the same number).
        base_channels: channels at full resolution.
        channel_mults: one multiplier per resolution level; each level after the first halves the
            resolution (``(1, 2)`` for 8x8 -> 4x4, ``(1, 2, 2)`` for 28x28 -> 14x14 -> 7x7).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_heads: heads of the self-attention block at the lowest resolution.
        groups: GroupNorm groups (reduced to a divisor of each channel count).
        dropout: dropout inside the residual blocks.
        num_classes: if given, the network also takes class labels ``y`` (``0 .. num_classes-1``; the
            extra index ``num_classes`` or ``y=None`` means "no label", for classifier-free guidance).
        time_scale: multiplies ``t`` before the embedding.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 num_res_blocks: int = 1, attn_heads: int = 4, groups: int = 8, dropout: float = 0.0,
                 num_classes: Optional[int] = None, time_scale: float = 1.0) -> None:
        super().__init__()
        mults = tuple(int(m) for m in channel_mults)
        if not mults or min(mults) < 1:
            raise ValueError(f"`channel_mults` must be a non-empty sequence of positive ints, got {channel_mults}.")
        if num_res_blocks < 1:
            raise ValueError(f"`num_res_blocks` must be >= 1, got {num_res_blocks}.")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, base_channels=base_channels, channel_mults=list(mults),
            num_res_blocks=num_res_blocks, attn_heads=attn_heads, groups=groups, dropout=dropout,
            num_classes=num_classes, time_scale=time_scale,
        )
        emb_dim = 4 * base_channels
        self.num_classes = num_classes
        self.time = _TimeMLP(base_channels, emb_dim, time_scale)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        if self.label is not None:
            nn.init.zeros_(self.label.weight)
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [base_channels]
        ch = base_channels
        for level, mult in enumerate(mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, emb_dim, groups, dropout))
                ch = base_channels * mult
                skips.append(ch)
            if level < len(mults) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, emb_dim, groups, dropout)
        self.attn = SelfAttention(ch, attn_heads, groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, groups, dropout)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(mults))):
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), base_channels * mult, emb_dim, groups, dropout))
                ch = base_channels * mult
            if level > 0:
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))  # after nearest upsampling
        self.out_norm = nn.GroupNorm(_groups(ch, groups), ch)
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)
        _zero(self.out)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        t = _check_inputs(x, t)
        if x.dim() != 4:
            raise ValueError(f"the UNet takes images (B, C, H, W), got shape {tuple(x.shape)}.")
        dtype = self.out.weight.dtype
        emb = self.time(t)
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.label.num_embeddings - 1, dtype=torch.long, device=x.device)
            emb = emb + self.label(y.to(torch.long))
        elif y is not None:
            raise ValueError("this UNet was built without `num_classes`; it takes no labels `y`.")
        emb = F.silu(emb)
        h = self.stem(x.to(dtype))
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:  # upsample to the size of the next skip (handles odd sizes such as 7 -> 4 -> 7)
                h = layer(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.out(F.silu(self.out_norm(h))).to(x.dtype)


NETWORKS: dict[str, type[nn.Module]] = {"MLP": MLP, "UNet": UNet}


def build_network(arch: dict[str, Any]) -> nn.Module:
    """Rebuild a network from ``{"class": "UNet", "config": {...}}`` (a checkpoint card's ``arch``)."""
    name = arch.get("class")
    if name not in NETWORKS:
        raise ValueError(f"unknown network class {name!r}; known: {', '.join(NETWORKS)}.")
    return NETWORKS[name](**arch.get("config", {}))


def describe(net: nn.Module) -> dict[str, Any]:
    """The ``arch`` entry of a card: class name and constructor arguments."""
    config = getattr(net, "config", None)
    if config is None or type(net).__name__ not in NETWORKS:
        raise ValueError(f"cannot describe {type(net).__name__}: only {', '.join(NETWORKS)} carry a `config`.")
    return {"class": type(net).__name__, "config": dict(config)}
