"""Samplers of other libraries as engine solvers: diffusers' schedulers and k-diffusion's samplers.

A peer is named ``library:method`` (``diffusers:ddim``, ``k-diffusion:dpmpp_2m``; see :data:`PEERS`)
and runs as a bench cell like a flowode solver, through the same spec language, store, metrics and
tables. The interface is small (:class:`Peer`): ``run(eps, x, schedule, steps, spacing, options)``
integrates the problem's model from its start noise with the library's own loop, calling only
``eps(x, sigma)`` -- an :class:`EpsCounter` around the model, so the NFE is the number of calls
actually made. For an NFE budget the engine runs the largest step count whose counted NFE fits
(:meth:`Peer.steps_for_nfe`, dry runs on one sample), draws the start noise at the peer's first
noise level and compares the result with the exact flow between the peer's own first and last
levels (``sigma_from`` / ``sigma_to`` in the record).

The libraries are optional: a peer whose library does not import is reported as skipped, not
fatal (:meth:`Peer.unavailable`). No code of either library is copied here; they are called.

* ``diffusers:<method>`` (a :class:`~flowode.schedules.DiscreteVPSchedule` only): the scheduler
  built on the schedule's betas with float64 ``alphas_cumprod`` / sigmas; ``spacing=None`` is the
  scheduler's own default config, any other spacing is its ``timestep_spacing`` (``"trailing"``:
  flowode's default grid; PNDM then steps to ``alpha = 1``, i.e. ``sigma = 0``). Options are
  scheduler config entries (``diffusers:dpmsolver++_2m[use_karras_sigmas=true]``).
* ``k-diffusion:<method>``: ``k_diffusion.sampling.sample_<...>`` on the model as a denoiser in
  ``xbar`` coordinates; ``spacing=None`` or ``"karras"`` is k-diffusion's Karras sigmas (rho 7,
  from ``sigma_max`` to ``sigma_min`` then 0), any other spacing flowode's grid of that spacing.
  Options are sampler keywords. The package's ``__init__`` pulls in training dependencies, so
  ``k_diffusion.sampling`` is loaded alone when the package does not import.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import math
import sys
import types
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterator, NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from ..grids import resolve_grid
from ..models import EpsilonModel
from ..schedules import DiscreteVPSchedule, Schedule
from ..solvers import UnknownSolverError

__all__ = ["Peer", "PeerRun", "EpsCounter", "DiffusersPeer", "KDiffusionPeer", "PEERS", "register_peer", "get_peer",
           "is_peer", "k_diffusion_sampling"]

EpsFn = Callable[[Tensor, float], Tensor]


class PeerRun(NamedTuple):
    """What a peer's run gives back: the final state (model coordinates), its first and last
    noise levels, and the name of the grid it used."""

    x: Tensor
    sigma_from: float
    sigma_to: float
    spacing: str


class EpsCounter:
    """``eps(x, sigma)`` of a model, counting its calls: the NFE of a peer (``calls``).

    The state is evaluated in the problem's ``dtype`` and the result returned in the caller's."""

    def __init__(self, model: EpsilonModel, dtype: torch.dtype = torch.float64) -> None:
        self.model, self.dtype, self.calls = model, dtype, 0

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        self.calls += 1
        return self.model.eps(x.to(self.dtype), float(sigma)).to(x.dtype)


class Peer(ABC):
    """A sampler of another library, run by the engine as a cell like a flowode solver."""

    #: the library's name: the part before ``:`` in the peer's name
    library: ClassVar[str] = ""
    #: record fields of a flowode solver's class attributes
    order: ClassVar[Optional[int]] = None
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False

    def __init__(self, method: str) -> None:
        self.method = method

    @property
    def name(self) -> str:
        return f"{self.library}:{self.method}"

    @abstractmethod
    def unavailable(self) -> Optional[str]:
        """Why this peer cannot run here (its library does not import), or ``None``."""

    @abstractmethod
    def options(self) -> set[str]:
        """The option names this peer takes."""

    def run(self, eps: EpsFn, x: Tensor, schedule: Schedule, steps: int, spacing: Optional[str],
            options: dict[str, Any]) -> PeerRun:
        """Integrate from ``x`` (model coordinates, at the peer's first noise level) in ``steps``
        steps, evaluating the model only through ``eps``. The library's own tensors (tables,
        sigmas) are made in ``x``'s dtype: torch's default dtype is ``x.dtype`` during the run."""
        with _default_dtype(x.dtype):
            return self._run(eps, x, schedule, steps, spacing, options)

    @abstractmethod
    def _run(self, eps: EpsFn, x: Tensor, schedule: Schedule, steps: int, spacing: Optional[str],
             options: dict[str, Any]) -> PeerRun:
        """:meth:`run` without the dtype scope."""

    def version(self) -> Optional[str]:
        """The library's version, for the record."""
        try:
            from importlib.metadata import version

            return version(self.library)
        except Exception:  # noqa: BLE001 - provenance only
            return None

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise ``TypeError`` for an option this peer does not take (a typo should stop the run)."""
        unknown = sorted(set(options) - self.options())
        if unknown:
            raise TypeError(f"peer {self.name!r}: unknown option(s) {unknown}; it takes {sorted(self.options())}.")

    def steps_for_nfe(self, model: EpsilonModel, dtype: torch.dtype, shape: tuple[int, ...], nfe: int,
                      spacing: Optional[str], options: dict[str, Any]) -> tuple[int, PeerRun]:
        """The largest step count whose counted NFE is ``<= nfe`` (dry runs on one zero sample, from
        ``nfe`` steps down; a step count the peer cannot run is skipped), with its dry run."""
        x1 = torch.zeros(1, *shape, dtype=dtype)
        for steps in range(nfe, 0, -1):
            counter = EpsCounter(model, dtype)
            try:
                dry = self.run(counter, x1, model.schedule, steps, spacing, options)
            except Exception:  # noqa: BLE001 - e.g. a warm-up that needs more steps than given
                continue
            if counter.calls <= nfe:
                return steps, dry
        raise ValueError(f"no step count fits NFE <= {nfe}")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` (float32 / float64) inside the block."""
    before = torch.get_default_dtype()
    if dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _alpha(schedule: Schedule, sigma: float) -> float:
    return float(schedule.alpha_from_sigma(sigma))


# ---------------------------------------------------------------------------------------------- diffusers
class DiffusersPeer(Peer):
    """A diffusers scheduler; ``family`` says how it is driven: ``"alpha"`` (state ``x``, timesteps
    index ``alphas_cumprod``) or ``"sigma"`` (state ``xbar``, model input scaled by
    ``1/sqrt(1+sigma^2)``)."""

    library = "diffusers"

    def __init__(self, method: str, scheduler: str, config: Optional[dict[str, Any]] = None,
                 family: str = "alpha") -> None:
        super().__init__(method)
        if family not in ("alpha", "sigma"):
            raise ValueError(f"`family` must be 'alpha' or 'sigma', got {family!r}.")
        self.scheduler, self.config, self.family = scheduler, dict(config or {}), family

    def _class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.scheduler)

    def unavailable(self) -> Optional[str]:
        try:
            self._class()
        except Exception as exc:  # noqa: BLE001 - optional dependency, any import failure
            return f"diffusers is not importable or has no {self.scheduler} ({type(exc).__name__}: {exc})"
        return None

    def options(self) -> set[str]:
        params = inspect.signature(self._class().__init__).parameters
        return set(params) - {"self", "num_train_timesteps", "trained_betas", "beta_start", "beta_end",
                              "beta_schedule", "kwargs"}

    def _make(self, schedule: DiscreteVPSchedule, steps: int, spacing: Optional[str], options: dict[str, Any]) -> Any:
        config = {**self.config, **options}
        if spacing is not None:
            config["timestep_spacing"] = spacing
            if self.scheduler == "PNDMScheduler":  # end at sigma = 0 like flowode's grids
                config["set_alpha_to_one"] = True
        n = schedule.num_timesteps
        abar = schedule.alphas_cumprod_knots.to(torch.float64)
        sch = self._class()(num_train_timesteps=n, trained_betas=schedule.betas.numpy(), **config)
        # float64 tables (the scheduler builds float32 ones)
        sch.betas = 1 - abar / torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        sch.alphas = 1 - sch.betas
        sch.alphas_cumprod = abar.clone()
        if hasattr(sch, "final_alpha_cumprod"):
            one = config.get("set_alpha_to_one", sch.config.get("set_alpha_to_one", False))
            sch.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if one else abar[0].clone()
        if hasattr(sch, "alpha_t"):
            sch.alpha_t = abar.sqrt()
            sch.sigma_t = (1 - abar).sqrt()
            sch.lambda_t = sch.alpha_t.log() - sch.sigma_t.log()
        sch.set_timesteps(steps)
        knots = _knot_sigmas(schedule)
        if getattr(sch, "sigmas", None) is not None and len(sch.sigmas) == len(sch.timesteps) + 1:
            s64 = np.interp(sch.timesteps.to(torch.float64).numpy(), np.arange(n), knots)
            s32 = sch.sigmas.to(torch.float64).numpy()
            if np.allclose(s64, s32[:-1], rtol=1e-5, atol=0):  # same levels, recomputed in float64
                last = 0.0 if float(s32[-1]) == 0.0 else float(knots[int(np.argmin(np.abs(knots - float(s32[-1]))))])
                sch.sigmas = torch.tensor(np.concatenate([s64, [last]]), dtype=torch.float64)
        return sch

    def _run(self, eps: EpsFn, x: Tensor, schedule: Schedule, steps: int, spacing: Optional[str],
             options: dict[str, Any]) -> PeerRun:
        if not isinstance(schedule, DiscreteVPSchedule):
            raise ValueError(f"peer {self.name!r} needs a DiscreteVPSchedule, got {type(schedule).__name__}.")
        sch = self._make(schedule, steps, spacing, options)
        used = str(sch.config.get("timestep_spacing", spacing or "default"))
        ts = list(sch.timesteps)
        if self.family == "sigma":
            sig = sch.sigmas.to(torch.float64)
            s_start, s_end = float(sig[0]), float(sig[-1])
            sample = x / _alpha(schedule, s_start)
            for t in ts:
                x_in = sch.scale_model_input(sample, t)
                sample = sch.step(eps(x_in, float(sch.sigmas[sch.step_index])), t, sample).prev_sample
            return PeerRun(sample.to(x.dtype) * _alpha(schedule, s_end), s_start, s_end, used)
        knots = _knot_sigmas(schedule)
        s_start = float(knots[int(ts[0])])
        if getattr(sch, "sigmas", None) is not None and len(sch.sigmas) == len(ts) + 1:
            s_end = float(sch.sigmas[-1])
        else:  # DDIM / PNDM step to t - N // n (diffusers' fixed stride), or to final_alpha_cumprod below 0
            prev = int(ts[-1]) - schedule.num_timesteps // sch.num_inference_steps
            a_fin = float(sch.final_alpha_cumprod) if prev < 0 else float(sch.alphas_cumprod[prev])
            s_end = math.sqrt((1 - a_fin) / a_fin)
        sample = x.clone()
        for t in ts:
            sample = sch.step(eps(sample, float(knots[int(t)])), t, sample).prev_sample
        return PeerRun(sample.to(x.dtype), s_start, s_end, used)


def _knot_sigmas(schedule: DiscreteVPSchedule) -> np.ndarray:
    """``sqrt((1 - abar) / abar)`` at the integer timesteps, float64 (diffusers' own formula)."""
    abar = schedule.alphas_cumprod_knots.to(torch.float64)
    return ((1 - abar) / abar).sqrt().numpy()


# ---------------------------------------------------------------------------------------------- k-diffusion
@functools.lru_cache(maxsize=1)
def k_diffusion_sampling() -> Optional[types.ModuleType]:
    """``k_diffusion.sampling`` -- through the package if it imports, else loaded alone with a
    stand-in for ``k_diffusion.utils`` (sampling uses only its ``append_dims``)."""
    try:
        import k_diffusion.sampling as ks  # type: ignore[import-not-found, unused-ignore]

        return ks
    except Exception:  # noqa: BLE001 - the package's heavy __init__ may fail in many ways
        pass
    try:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            return None
        for k in [k for k in sys.modules if k == "k_diffusion" or k.startswith("k_diffusion.")]:
            del sys.modules[k]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        utils = types.ModuleType("k_diffusion.utils")

        def append_dims(x: Tensor, target_dims: int) -> Tensor:
            return x[(...,) + (None,) * (target_dims - x.ndim)]

        utils.append_dims = append_dims  # type: ignore[attr-defined]
        pkg.utils = utils  # type: ignore[attr-defined]
        sys.modules["k_diffusion"] = pkg
        sys.modules["k_diffusion.utils"] = utils
        return importlib.import_module("k_diffusion.sampling")
    except Exception:  # noqa: BLE001 - optional dependency
        return None


class KDiffusionPeer(Peer):
    """A k-diffusion sampler ``k_diffusion.sampling.<sampler>`` on the model as a denoiser."""

    library = "k-diffusion"

    def __init__(self, method: str, sampler: str) -> None:
        super().__init__(method)
        self.sampler = sampler

    def _fn(self) -> Callable[..., Tensor]:
        ks = k_diffusion_sampling()
        if ks is None:
            raise ImportError("k_diffusion.sampling does not import")
        return getattr(ks, self.sampler)  # type: ignore[no-any-return]

    def unavailable(self) -> Optional[str]:
        try:
            self._fn()
        except Exception as exc:  # noqa: BLE001 - optional dependency
            return f"k-diffusion is not importable or has no {self.sampler} ({type(exc).__name__}: {exc})"
        return None

    def options(self) -> set[str]:
        return set(inspect.signature(self._fn()).parameters) - {"model", "x", "sigmas", "extra_args", "callback",
                                                                "disable"}

    def _run(self, eps: EpsFn, x: Tensor, schedule: Schedule, steps: int, spacing: Optional[str],
             options: dict[str, Any]) -> PeerRun:
        ks = k_diffusion_sampling()
        assert ks is not None
        if spacing in (None, "karras"):
            sig = ks.get_sigmas_karras(steps, schedule.sigma_min, schedule.sigma_max, rho=7.0,
                                       device="cpu").to(torch.float64)
            sig[0], sig[-2] = schedule.sigma_max, schedule.sigma_min
            used = "karras"
        else:
            sig = resolve_grid(schedule, None, steps=steps, spacing=spacing)
            used = spacing

        lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)

        def denoiser(xbar: Tensor, sigma: Tensor, **_: Any) -> Tensor:
            s = float(sigma.flatten()[0])
            # a float32 state rounds sigma_max / sigma_min just outside the trained range: snap them back
            if hi < s <= hi * (1 + 1e-6):
                s = hi
            elif lo * (1 - 1e-6) <= s < lo:
                s = lo
            return xbar - s * eps(xbar * _alpha(schedule, s), s)

        s_start, s_end = float(sig[0]), float(sig[-1])
        out = self._fn()(denoiser, x / _alpha(schedule, s_start), sig, disable=True, **options)
        return PeerRun(out.to(x.dtype) * _alpha(schedule, s_end), s_start, s_end, used)


# ---------------------------------------------------------------------------------------------- registry
#: peers by name (``library:method``)
PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    """Add ``peer`` under ``peer.name``."""
    PEERS[peer.name] = peer
    return peer


for _peer in (
    DiffusersPeer("ddim", "DDIMScheduler", {"clip_sample": False}),
    DiffusersPeer("dpmsolver++_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++",
                                                                    "solver_order": 2}),
    DiffusersPeer("unipc", "UniPCMultistepScheduler"),
    DiffusersPeer("euler", "EulerDiscreteScheduler", family="sigma"),
    DiffusersPeer("heun", "HeunDiscreteScheduler", family="sigma"),
    DiffusersPeer("lms", "LMSDiscreteScheduler", family="sigma"),
    DiffusersPeer("pndm", "PNDMScheduler"),
    DiffusersPeer("deis", "DEISMultistepScheduler"),
    KDiffusionPeer("euler", "sample_euler"),
    KDiffusionPeer("heun", "sample_heun"),
    KDiffusionPeer("lms", "sample_lms"),
    KDiffusionPeer("dpm_2", "sample_dpm_2"),
    KDiffusionPeer("dpmpp_2m", "sample_dpmpp_2m"),
):
    register_peer(_peer)


def is_peer(name: str) -> bool:
    """Whether ``name`` names a peer (``library:method``; flowode's solver names have no colon)."""
    return ":" in name


def get_peer(name: str) -> Peer:
    """The peer called ``name``; ``UnknownSolverError`` for an unknown one."""
    key = name.strip()
    if key not in PEERS:
        raise UnknownSolverError(f"unknown peer {name!r}; peers: {', '.join(PEERS)}.")
    return PEERS[key]
