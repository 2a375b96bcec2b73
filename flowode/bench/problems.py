"""Benchmark problems: a model, the shape of one sample and what ground truth exists.

Built-ins are registered in :data:`PROBLEMS` (``@register_problem("name")``); :func:`get_problem`
also loads ``module:function`` plugins and shipped checkpoints, and :func:`as_problem` reads what
such a function returns.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from ..analytic import Gaussian, GaussianMixture, gmm_grid, gmm_random, gmm_ring
from ..models import EpsilonModel
from ..schedules import DiscreteVPSchedule

__all__ = ["Problem", "PROBLEMS", "register_problem", "get_problem", "as_problem", "model_fingerprint"]

DataSampler = Callable[[int, torch.Generator], Tensor]
FlowMap = Callable[[Tensor, float, float], Tensor]


@dataclass
class Problem:
    """A benchmark problem: a model, the shape of one sample and what ground truth exists.

    Attributes:
        name: the name results are filed under.
        model: the :class:`~flowode.models.EpsilonModel` to integrate.
        shape: shape of one sample (the batch is ``(samples, *shape)``).
        dtype: dtype of the state (float64 for analytic problems, float32 for networks).
        data: ``data(n, generator) -> (n, *shape)`` draws data samples (enables ``sw``), or ``None``.
        exact: closed-form flow map ``exact(x, sigma_from, sigma_to)``, or ``None`` (then
            :func:`~flowode.analytic.reference_solve` is the reference).
        mixture: the analytic data distribution (for density backgrounds in plots), or ``None``.
        samples: default batch size.
        ref_rtol: tolerance of the reference solve (rtol = atol).
        images: samples are images ``(C, H, W)`` (for x0 grids).
        fingerprint: :func:`model_fingerprint` of the model, set by :func:`~flowode.bench.run_bench`
            (part of cell and reference-cache keys); ``None`` until then.
    """

    name: str
    model: EpsilonModel
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float64
    data: Optional[DataSampler] = None
    exact: Optional[FlowMap] = None
    mixture: Optional[GaussianMixture] = None
    samples: int = 512
    ref_rtol: float = 1e-10
    images: bool = False
    description: str = ""
    fingerprint: Optional[str] = None

    @property
    def dim(self) -> int:
        return int(math.prod(self.shape))

    def prior(self, n: int, sigma: float, seed: int, device: Union[str, torch.device] = "cpu") -> Tensor:
        """``n`` prior draws at noise level ``sigma``, keyed by ``(seed, sample index)`` (drawn on the CPU):
        sample ``i`` is the same whatever ``n`` (a ``torch.Generator`` stream is not: its first rows change
        with the size of the draw)."""
        x = self.model.prior_sample((n, *self.shape), sigma, seed=int(seed), dtype=self.dtype)
        return x.to(device)


PROBLEMS: dict[str, Callable[[], Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[[], Problem]], Callable[[], Problem]]:
    """Decorator: ``@register_problem("name")`` over a zero-argument function returning a Problem."""

    def deco(fn: Callable[[], Problem]) -> Callable[[], Problem]:
        PROBLEMS[name] = fn
        return fn

    return deco


def _mixture_problem(name: str, mix: GaussianMixture, description: str, samples: int = 512,
                     images: bool = False) -> Problem:
    sched = DiscreteVPSchedule.linear()
    exact: Optional[FlowMap] = None
    if isinstance(mix, Gaussian):
        g = mix

        def exact(x: Tensor, s0: float, s1: float) -> Tensor:
            return g.flow(x, s0, s1, sched)

    return Problem(name=name, model=mix.model(sched), shape=tuple(mix.shape), dtype=torch.float64,
                   data=lambda n, gen: mix.sample(n, generator=gen), exact=exact, mixture=mix,
                   samples=samples, images=images, description=description)


@register_problem("gmm2d")
def _gmm2d() -> Problem:
    return _mixture_problem("gmm2d", gmm_ring(), "8 Gaussians on a ring of radius 2 (std 0.1), DDPM linear schedule")


@register_problem("gmm2d_grid")
def _gmm2d_grid() -> Problem:
    return _mixture_problem("gmm2d_grid", gmm_grid(), "3x3 grid of Gaussians, spacing 2 (std 0.1), DDPM linear "
                            "schedule")


@register_problem("gmm64")
def _gmm64() -> Problem:
    return _mixture_problem("gmm64", gmm_random(64), "8 random Gaussians in 64-D (std 0.3), DDPM linear schedule",
                            samples=256)


@register_problem("gaussian")
def _gaussian() -> Problem:
    std = torch.logspace(-1, 0, 8, dtype=torch.float64)  # 0.1 ... 1: stiff and soft directions
    mean = torch.linspace(-1, 1, 8, dtype=torch.float64)
    return _mixture_problem("gaussian", Gaussian(mean, std), "one 8-D Gaussian, stds 0.1..1 (closed-form flow map), "
                            "DDPM linear schedule")


def _shapes8() -> Tensor:
    """Eight 8x8 glyphs in [-1, 1]: bars, cross, box, diagonal, disc, checker, L."""
    g = torch.full((8, 8, 8), -1.0, dtype=torch.float64)
    g[0, :, 3:5] = 1
    g[1, 3:5, :] = 1
    g[2, :, 3:5] = 1
    g[2, 3:5, :] = 1
    g[3, 1, 1:7] = g[3, 6, 1:7] = g[3, 1:7, 1] = g[3, 1:7, 6] = 1
    idx = torch.arange(8)
    g[4, idx, idx] = 1
    g[4, idx[:-1], idx[1:]] = 1
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    g[5][((yy - 3.5) ** 2 + (xx - 3.5) ** 2) <= 7] = 1
    g[6][((yy // 2 + xx // 2) % 2) == 0] = 1
    g[7, :, 1] = 1
    g[7, 6, 1:7] = 1
    return g.reshape(8, 64)


@register_problem("shapes8x8")
def _shapes() -> Problem:
    mix = GaussianMixture(_shapes8(), 0.1, shape=(1, 8, 8))
    return _mixture_problem("shapes8x8", mix, "8 glyphs as 1x8x8 images (std 0.1): an exact image-shaped model",
                            samples=64, images=True)


def _load_object(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"`problem` {spec!r}: use 'module:function' (e.g. 'mypkg.models:make_model').")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ValueError(f"`problem` {spec!r}: cannot import module {mod_name!r} ({exc}); "
                         "is it on PYTHONPATH?") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"`problem` {spec!r}: module {mod_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    return obj() if callable(obj) and not isinstance(obj, EpsilonModel) else obj


def _sampler(data: Any) -> Optional[DataSampler]:
    if data is None:
        return None
    if isinstance(data, Tensor):
        pool = data

        def draw(n: int, gen: torch.Generator) -> Tensor:
            idx = torch.randint(0, pool.shape[0], (n,), generator=gen)
            return pool[idx]

        return draw
    if callable(data):
        return data  # type: ignore[no-any-return]
    raise TypeError(f"a problem's data must be a tensor of samples or a callable (n, generator) -> tensor, "
                    f"got {type(data).__name__}.")


def as_problem(obj: Any, name: str) -> Problem:
    """Turn what a user function (or ``flowode.load_pretrained``) returns into a :class:`Problem`.

    Accepted: a :class:`Problem`; a dict with keys ``model``, ``shape`` and optionally ``data``
    (tensor of samples or ``data(n, generator)``), ``samples``, ``dtype``, ``exact``; a tuple
    ``(model, shape[, data])``; an :class:`EpsilonModel` (or any object with a ``model``
    attribute) that carries its sample shape as ``sample_shape`` / ``shape`` and optionally its
    data as ``data`` / ``sample_data``.
    """
    if isinstance(obj, Problem):
        return obj
    fields: dict[str, Any] = {}
    if isinstance(obj, dict):
        fields = dict(obj)
    elif isinstance(obj, (tuple, list)):
        if not 2 <= len(obj) <= 3:
            raise ValueError(f"problem {name!r}: a tuple must be (model, shape) or (model, shape, data).")
        fields = {"model": obj[0], "shape": obj[1], "data": obj[2] if len(obj) == 3 else None}
    else:
        holder = obj
        model = obj if isinstance(obj, EpsilonModel) else getattr(obj, "model", None)
        fields["model"] = model
        for attr in ("sample_shape", "shape", "image_shape"):
            val = getattr(holder, attr, None) or getattr(model, attr, None)
            if val is not None:
                fields["shape"] = val
                break
        for attr in ("data", "sample_data", "data_sampler"):
            val = getattr(holder, attr, None)
            if val is not None:
                fields["data"] = val
                break
    model = fields.get("model")
    if not isinstance(model, EpsilonModel):
        raise TypeError(f"problem {name!r} did not give a flowode.EpsilonModel (got {type(model).__name__}); "
                        "return a model, (model, shape[, data]) or {'model': ..., 'shape': ...}.")
    shape = fields.get("shape")
    if shape is None:
        raise ValueError(f"problem {name!r}: the sample shape is unknown; return (model, shape) or set "
                         "`model.sample_shape = (C, H, W)`.")
    shape = tuple(int(s) for s in shape)
    dtype = fields.get("dtype")
    if dtype is None:
        fn = getattr(model, "fn", None)
        params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else []
        dtype = params[0].dtype if params else torch.float32
    mixture = fields.get("mixture")
    return Problem(name=name, model=model, shape=shape, dtype=dtype, data=_sampler(fields.get("data")),
                   exact=fields.get("exact"), mixture=mixture if isinstance(mixture, GaussianMixture) else None,
                   samples=int(fields.get("samples", 256)), ref_rtol=float(fields.get("ref_rtol", 1e-6)),
                   images=len(shape) == 3, description=str(fields.get("description", "")))


def get_problem(spec: str) -> Problem:
    """A problem by name: a built-in (:data:`PROBLEMS`), ``module:function``, or a shipped checkpoint
    (through ``flowode.load_pretrained``, when this build has it)."""
    spec = spec.strip()
    if spec in PROBLEMS:
        return PROBLEMS[spec]()
    if ":" in spec:
        return as_problem(_load_object(spec), spec)
    import flowode

    loader = getattr(flowode, "load_pretrained", None)
    if loader is None:
        raise ValueError(
            f"unknown `problem` {spec!r}: not a built-in problem ({', '.join(PROBLEMS)}) nor 'module:function', "
            "and shipped checkpoints are unavailable in this build (flowode.load_pretrained is missing)."
        )
    try:
        obj = loader(spec)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        from pathlib import Path

        from ..pretrained import list_pretrained

        if spec in list_pretrained() or Path(spec).exists():  # it is a checkpoint, just not a loadable one
            raise ValueError(f"`problem` {spec!r}: {exc}") from None
        raise ValueError(f"unknown `problem` {spec!r}: not a built-in problem ({', '.join(PROBLEMS)}), not "
                         f"'module:function', and flowode.load_pretrained({spec!r}) failed: {exc}") from exc
    return as_problem(obj, spec)



def model_fingerprint(problem: Problem, device: Union[str, torch.device] = "cpu", *,
                      probe_networks: bool = True) -> str:
    """A short hash of what a cell's numbers depend on in ``problem``'s model, so that a changed
    model never reuses old benchmark cells: the sample shape and dtype, the parameterisation, the
    schedule (``sigma`` at 17 native times), every parameter and buffer of the network when it is a
    ``torch.nn.Module`` (bit-exact), and the model's ``eps`` on a fixed probe (2 prior draws at
    ``sigma_max``, their geometric mean with ``sigma_min``, and ``sigma_min``; printed to 7
    significant digits), which catches a changed function that has no parameters. Costs 3 model
    evaluations of 2 samples; the model's NFE counters are restored.

    ``probe_networks=False`` skips the probe when a network's parameters were hashed: a float32
    network's output changes in its last digits with the thread count and the hardware, so an
    identity that must hold across machines (a learned solver's artefact) hashes the weights only."""
    import hashlib

    import numpy as np

    model = problem.model
    sched = model.schedule
    h = hashlib.sha256()
    h.update(repr((tuple(problem.shape), str(problem.dtype), model.prediction, type(model).__name__,
                   type(sched).__name__)).encode())
    t = torch.linspace(float(sched.t_min), float(sched.t_max), 17, dtype=torch.float64)
    h.update(np.ascontiguousarray(torch.as_tensor(sched.sigma(t)).double().cpu().numpy()).tobytes())
    hashed = False
    for fn in (getattr(model, "fn", None), getattr(model, "uncond_fn", None), getattr(model, "net", None)):
        if isinstance(fn, torch.nn.Module):
            hashed = True
            for name, v in fn.state_dict().items():
                if isinstance(v, Tensor):
                    h.update(f"{name}{tuple(v.shape)}{v.dtype}".encode())
                    h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if hashed and not probe_networks:
        return h.hexdigest()[:16]
    nfe, passes = getattr(model, "nfe", 0), getattr(model, "network_passes", 0)
    try:
        lo, hi = float(sched.sigma_min), float(sched.sigma_max)
        for s in (hi, math.sqrt(hi * lo), lo):
            x = problem.prior(2, s, 12345, device)
            with torch.no_grad():
                eps = model.predict(x, s, check=False).eps
            h.update(" ".join(f"{v:.6e}" for v in eps.detach().double().cpu().flatten().tolist()).encode())
    except Exception as exc:  # noqa: BLE001 - the cell itself will report a model that cannot run
        h.update(f"probe failed: {type(exc).__name__}".encode())
    finally:
        model.nfe, model.network_passes = nfe, passes
    return h.hexdigest()[:16]
