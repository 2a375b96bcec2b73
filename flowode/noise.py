"""Randomness keyed by ``(seed, sample index, step)``, and Brownian paths per ``(seed, sample index)``.

Every random number a stochastic solver draws comes from a :class:`NoiseSource`. Two kinds of draw:

* :meth:`NoiseSource.increment` ``(x, sigma, sigma_next)``: the normalised Brownian increment
  ``(B(tau) - B(tau')) / sqrt(tau - tau')`` of one Brownian path ``B`` per sample, in the time
  ``tau = log sigma``. Each is exactly ``N(0, I)``; increments over disjoint steps are
  independent; and over a coarse step it is the ``sqrt``-weighted sum of the fine increments
  inside it, so a solver at 20 and at 1000 steps sees the **same path** (strong convergence is
  measurable). The reverse SDE's own noise over a step, ``int sqrt(dv/dtau) dB`` with
  ``v = sigma^2``, is approximated by ``sqrt(dv / dtau) * increment`` -- an error of
  ``O(h^{3/2})`` per step, which keeps strong order 1 (docs/stochastic.md).
* :meth:`NoiseSource.normal` ``(x, step, draw)``: a fresh ``N(0, I)`` keyed by the step index (for
  noise that is not a Brownian increment, e.g. EDM's churn, whose intervals overlap).

:class:`KeyedNoise` (``seed=``) computes every number from a counter-based hash of
``(seed, stream, sample index, node or step, element)``: a sample's numbers do not depend on the
batch size, its position in a shard, or on torch's ``randn`` (whose CPU kernel draws differently
for different sizes). The Brownian path is a dyadic Brownian tree (Levy's construction) on
``tau in [-24, 24]`` (``sigma`` from ``4e-11`` to ``2.6e10``) with 38 levels, linear inside a leaf
(width ``1.7e-10``); the nodes on the way to a query are drawn in one vectorised hash call.
torchsde's ``BrownianTree`` / ``BrownianInterval`` give the same guarantees with one tree per
sample, but cost 1.2-5 ms per query per sample in Python (measured: 64 samples x 1000 steps = 77 s
to 5 minutes, ``benchmarks/stochastic_orders.py``), so flowode keeps its own vectorised tree.

:class:`GeneratorNoise` (``generator=``) draws from a ``torch.Generator``, or from a list of them,
one per sample, as diffusers does (then batch-invariant too); its "increments" are fresh normals,
not a path.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["NoiseSource", "KeyedNoise", "GeneratorNoise", "make_noise", "keyed_normal", "TAU_RANGE"]

#: the time range of the Brownian tree, in ``tau = log sigma``
TAU_RANGE = (-24.0, 24.0)
_DEPTH = 38
_CHUNK = 1 << 16  # elements per sample and hash call: bounds the memory of a path query on large states
_M32 = 0xFFFFFFFF
_STREAM_NORMAL, _STREAM_BROWNIAN, _STREAM_PRIOR = 1, 2, 3


# ------------------------------------------------------------------------------------------ the hash
def _mul32(x: Tensor, c: int) -> Tensor:
    """``x * c mod 2^32`` for ``0 <= x < 2^32`` without int64 overflow (16-bit halves of ``c``)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' "lowbias32"), on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _combine(h: Tensor, v: Union[int, Tensor]) -> Tensor:
    return _mix(h ^ (v & _M32 if isinstance(v, Tensor) else torch.tensor(v & _M32, dtype=torch.int64)))


def _key(*parts: Union[int, Tensor]) -> Tensor:
    """Hash of a sequence of integers (ints or broadcastable int64 tensors; each split in 32-bit halves)."""
    h = torch.tensor(0x9E3779B9, dtype=torch.int64)
    for p in parts:
        if isinstance(p, Tensor):
            h = _combine(_combine(h, p & _M32), (p >> 32) & _M32)
        else:
            h = _combine(_combine(h, p & _M32), (p >> 32) & _M32)
    return h


def _normals(key: Tensor) -> Tensor:
    """Standard normals (float64) from int64 keys, elementwise (Box-Muller on two 32-bit uniforms)."""
    u1 = (_mix(key ^ 0x5BD1E995).double() + 1.0) * 2.0**-32  # (0, 1]
    u2 = _mix(key ^ 0x1B873593).double() * 2.0**-32  # [0, 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


def _base(seed: int, stream: int, indices: Tensor, numel: int, device: torch.device) -> Tensor:
    """``(B, numel)`` keys of (seed, stream, sample index, element)."""
    idx = indices.to(device=device, dtype=torch.int64).view(-1, 1)
    el = torch.arange(numel, dtype=torch.int64, device=device).view(1, -1)
    k = _key(seed, stream).to(device)
    return _combine(_combine(_combine(k, idx), idx >> 32), el)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TypeError(f"`seed` must be a non-negative int, got {seed!r}.")
    return seed


def keyed_normal(shape: Sequence[int], seed: int, indices: Optional[Sequence[int]] = None, *,
                 dtype: torch.dtype = torch.float32, device: Union[str, torch.device] = "cpu") -> Tensor:
    """``N(0, I)`` of ``shape`` (batch first) keyed by ``(seed, sample index)``: sample ``i`` is the same
    at any batch size (the start noise ``x_T`` of :func:`flowode.sample` ``(..., seed=)`` in the CLI).

    ``indices`` are the samples' global indices (default ``0 .. shape[0] - 1``; a shard passes its own)."""
    seed = _check_seed(seed)
    shape = tuple(int(s) for s in shape)
    idx = torch.arange(shape[0]) if indices is None else torch.as_tensor(list(indices), dtype=torch.int64)
    if idx.numel() != shape[0]:
        raise ValueError(f"`indices` has {idx.numel()} entries for a batch of {shape[0]}.")
    numel = math.prod(shape[1:])
    dev = torch.device(device)
    z = _normals(_base(seed, _STREAM_PRIOR, idx, numel, dev))
    return z.view(shape).to(dtype)


# ------------------------------------------------------------------------------------------ sources
class NoiseSource:
    """Where a stochastic solver's random numbers come from (see the module docstring)."""

    #: whether :meth:`increment` samples one Brownian path (consistent across step counts)
    brownian: bool = False

    def increment(self, x: Tensor, sigma: float, sigma_next: float, step: int) -> Tensor:
        """The normalised Brownian increment between two finite positive levels, shaped like ``x``."""
        raise NotImplementedError

    def normal(self, x: Tensor, step: int, draw: int) -> Tensor:
        """A fresh ``N(0, I)`` shaped like ``x``, keyed by the step index and the draw within the step."""
        raise NotImplementedError

    def state(self) -> Any:
        """A snapshot to replay the draws exactly (``None``: the draws are keyed, nothing to keep)."""
        return None

    def set_state(self, state: Any) -> None:
        pass


class KeyedNoise(NoiseSource):
    """Noise keyed by ``(seed, sample index, step)`` and one Brownian path per ``(seed, sample index)``.

    Args:
        seed: a non-negative int.
        indices: the global index of each sample of the batch (default ``0 .. B-1``); a shard of a
            larger run passes its own, so it draws exactly what one process would.
        path: ``True`` (default): increments of one Brownian path per sample; ``False``: each step's
            increment is a fresh keyed normal (still batch-invariant, but no path across step counts),
            at 1/39 of the cost: a path query hashes one normal per tree level and element (measured:
            0.75 ms per step for 64 two-dimensional samples, 1.3 s for a (16, 3, 64, 64) batch).
    """

    def __init__(self, seed: int, indices: Optional[Sequence[int]] = None, path: bool = True) -> None:
        if not isinstance(path, bool):
            raise TypeError(f"`path` must be True or False, got {path!r}.")
        self.brownian = path
        self.seed = _check_seed(seed)
        self.indices = None if indices is None else torch.as_tensor(list(indices), dtype=torch.int64)
        self._cache: dict[tuple[Any, ...], Tensor] = {}
        self._bases: dict[tuple[Any, ...], Tensor] = {}

    def _base(self, x: Tensor, stream: int) -> Tensor:
        """The ``(B, numel)`` keys of (seed, stream, sample index, element), memoised per shape."""
        key = (stream, x.shape, x.device)
        hit = self._bases.get(key)
        if hit is None:
            if len(self._bases) > 8:
                self._bases.clear()
            hit = self._bases[key] = _base(self.seed, stream, self._idx(x), x[0].numel(), x.device)
        return hit

    def _idx(self, x: Tensor) -> Tensor:
        if self.indices is None:
            return torch.arange(x.shape[0])
        if self.indices.numel() != x.shape[0]:
            raise ValueError(f"KeyedNoise has {self.indices.numel()} `indices` for a batch of {x.shape[0]}.")
        return self.indices

    def normal(self, x: Tensor, step: int, draw: int) -> Tensor:
        base = self._base(x, _STREAM_NORMAL)
        z = _normals(_combine(_combine(base, int(step)), int(draw)))
        return z.view(x.shape).to(x.dtype)

    # ------------------------------------------------------------------ the Brownian tree
    def path(self, x: Tensor, tau: float) -> Tensor:
        """``B(tau)`` (float64, shaped like ``x``), with ``B(-24) = 0``; memoised per level."""
        lo, hi = TAU_RANGE
        if not lo <= tau <= hi:
            raise ValueError(f"noise level sigma={math.exp(tau):.4g} is outside the Brownian path's range "
                             f"[{math.exp(lo):.3g}, {math.exp(hi):.3g}].")
        key = (tau, x.shape, x.device)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # the nodes on the way from the root to tau and the coefficients of W(tau) in their normals
        nodes = [1]  # node 1: the root, W(hi) = sqrt(hi - lo) * xi_1
        ca: list[float] = [0.0]
        cb: list[float] = [math.sqrt(hi - lo)]
        a, b, node = lo, hi, 1
        for _ in range(_DEPTH):
            if tau == a or tau == b:
                break
            m = 0.5 * (a + b)
            s = 0.5 * math.sqrt(b - a)
            cm = [0.5 * (p + q) for p, q in zip(ca, cb)] + [s]
            nodes.append(2 * node)  # the midpoint of node [a, b] is keyed by its left child's id
            ca.append(0.0)
            cb.append(0.0)
            if tau < m:
                b, cb, node = m, cm, 2 * node
            else:
                a, ca, node = m, cm, 2 * node + 1
        if tau == a:
            coef = ca
        elif tau == b:
            coef = cb
        else:
            f = (tau - a) / (b - a)
            coef = [p + (q - p) * f for p, q in zip(ca, cb)]
        base = self._base(x, _STREAM_BROWNIAN).unsqueeze(0)
        ids = torch.tensor(nodes, dtype=torch.int64, device=x.device).view(-1, 1, 1)
        # the nodes' normals in chunks of levels (a chunk's size depends on the sample's size only), summed
        # in a fixed order with separate multiplies and adds: the same bits for a sample at any batch size
        chunk = max(1, _CHUNK // max(1, x[0].numel()))
        w: Optional[Tensor] = None
        for lo_level in range(0, len(nodes), chunk):
            part = ids[lo_level:lo_level + chunk]
            xi = _normals(_combine(_combine(base, part), part >> 32))  # (levels, B, numel)
            for j in range(xi.shape[0]):
                term = xi[j] * coef[lo_level + j]
                w = term if w is None else w + term
        assert w is not None
        out = w.view(x.shape)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[key] = out
        return out

    def increment(self, x: Tensor, sigma: float, sigma_next: float, step: int) -> Tensor:
        lo, hi = TAU_RANGE
        if not self.brownian or not all(0.0 < v < math.inf and lo <= math.log(v) <= hi for v in (sigma, sigma_next)):
            return self.normal(x, step, -1)  # off the path's range (sigma = inf, or beyond 2.6e10): keyed by step
        t0, t1 = math.log(sigma), math.log(sigma_next)
        if t0 == t1:
            return torch.zeros_like(x)
        d = (self.path(x, t0) - self.path(x, t1)) / math.sqrt(abs(t0 - t1))
        return (d if t0 > t1 else -d).to(x.dtype)


class GeneratorNoise(NoiseSource):
    """Draws from a ``torch.Generator`` (``None``: torch's global RNG), or from a list of generators,
    one per sample (each sample's numbers then come from its own generator, as in diffusers).

    Increments are fresh normals: no Brownian path, so strong convergence is not defined."""

    def __init__(self, generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None) -> None:
        self.generator = generator

    def normal(self, x: Tensor, step: int, draw: int) -> Tensor:
        g = self.generator
        if isinstance(g, (list, tuple)):
            if len(g) != x.shape[0]:
                raise ValueError(f"`generator` is a list of {len(g)} generators for a batch of {x.shape[0]}; "
                                 "give one per sample.")
            return torch.cat([torch.randn((1, *x.shape[1:]), generator=gi, dtype=x.dtype,
                                          device=gi.device).to(x.device) for gi in g])
        return torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)  # type: ignore[arg-type]

    def increment(self, x: Tensor, sigma: float, sigma_next: float, step: int) -> Tensor:
        return self.normal(x, step, 0)

    def state(self) -> Any:
        g = self.generator
        if isinstance(g, (list, tuple)):
            return [gi.get_state() for gi in g]
        if g is not None:
            return g.get_state()  # type: ignore[union-attr]
        return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def set_state(self, state: Any) -> None:
        g = self.generator
        if isinstance(g, (list, tuple)):
            for gi, s in zip(g, state):
                gi.set_state(s)
        elif g is not None:
            g.set_state(state)  # type: ignore[union-attr]
        else:
            torch.set_rng_state(state[0])
            if state[1] is not None:
                torch.cuda.set_rng_state_all(state[1])


def make_noise(seed: Any = None, generator: Any = None, noise: Any = None,
               batch: Optional[int] = None) -> NoiseSource:
    """The noise source of one solve from ``integrate``'s ``seed`` / ``generator`` / ``noise`` (at most one)."""
    given = [n for n, v in (("seed", seed), ("generator", generator), ("noise", noise)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of `seed`, `generator` and `noise`, got {' and '.join(given)}.")
    if noise is not None:
        if not isinstance(noise, NoiseSource):
            raise TypeError(f"`noise` must be a flowode.noise.NoiseSource (e.g. KeyedNoise(seed)), got "
                            f"{type(noise).__name__}.")
        return noise
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise TypeError(f"`seed` must be a non-negative int, got {seed!r}.")
        return KeyedNoise(seed)
    if generator is None or isinstance(generator, torch.Generator):
        return GeneratorNoise(generator)
    if isinstance(generator, (list, tuple)):
        bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
        if bad or not generator:
            raise TypeError(f"`generator` as a list must hold one torch.Generator per sample, got "
                            f"{bad[:3] if bad else 'an empty list'}.")
        if batch is not None and len(generator) != batch:
            raise ValueError(f"`generator` is a list of {len(generator)} generators for a batch of {batch}; "
                             "give one per sample.")
        return GeneratorNoise(list(generator))
    hint = (f"; for reproducible noise from a number pass `seed={generator!r}` instead"
            if isinstance(generator, int) and not isinstance(generator, bool) else "")
    raise TypeError(f"`generator` must be a torch.Generator or a list of them (one per sample), got "
                    f"{type(generator).__name__} {generator!r}{hint}.")
