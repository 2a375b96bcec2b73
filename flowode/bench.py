"""Stepper benchmarks: problems x solvers x NFE budgets (x grid spacings x seeds), resumable.

For every *cell* ``(problem, solver, options, NFE budget, spacing, seed, samples)`` the engine

1. builds the grid: the largest step count whose exact cost ``solver.nfe(grid)`` fits the budget
   (:func:`flowode.grids.steps_for_nfe` via :func:`flowode.grids.resolve_grid`, the same rule as
   ``flowode.sample(..., nfe=N)``);
   adaptive solvers ignore budgets and run once per tolerance in ``tolerances`` instead;
2. draws ``x_T`` from the prior at ``grid[0]`` with ``torch.Generator().manual_seed(seed)``, so every
   solver starts from the same noise;
3. times ``flowode.integrate`` (``time.perf_counter``, CUDA-synchronised on GPU) and measures its
   peak memory (see :class:`MemoryMeter`);
4. compares the result with a reference started from the same ``x_T`` between the same grid ends:
   the closed-form flow map for :class:`~flowode.analytic.Gaussian` problems, otherwise
   :func:`~flowode.analytic.reference_solve` (scipy DOP853; rtol 1e-10 for analytic models). The
   reference is cached per ``(problem, seed, samples, sigma_from, sigma_to)`` in memory and on disk
   (``<results>.refs/``), so it is computed once per grid end pair, not once per solver;
5. for problems with a data sampler, the sliced 2-Wasserstein distance between the samples and as
   many fresh data samples (``sw``), together with the same distance for the reference samples
   (``sw_ref``: the finite-sample floor that no solver can beat).

Each finished cell becomes one JSON object on one line of the results file, appended with a single
``os.write`` on an ``O_APPEND`` descriptor followed by ``fsync``; a killed run therefore leaves only
complete lines (a torn last line, if the file system ever produced one, is ignored on reading).
Re-running the same grid skips every cell whose key is already in the file.

Fields of a record: ``key, problem, solver, options, label, spacing, seed, samples, nfe_budget,
nfe`` (exact, ``sol.nfe``), ``steps, sigma_from, sigma_to, rmse, max_err`` (max absolute error
over all entries), ``sw, sw_ref, seconds, peak_mem_bytes, mem_method, reference, dtype, device,
error`` (the message when the cell failed; such cells are recorded, not retried), ``flowode``
(version) and ``finished`` (UTC time).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import math
import os
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from .analytic import Gaussian, GaussianMixture, gmm_grid, gmm_random, gmm_ring, reference_solve
from .grids import resolve_grid, sigma_grid
from .integrate import integrate
from .models import EpsilonModel
from .schedules import DiscreteVPSchedule
from .solvers import SOLVERS, Stepper, UnknownSolverError, get_class, make

__all__ = [
    "Problem", "PROBLEMS", "register_problem", "get_problem", "as_problem", "BenchSpec", "Cell",
    "run_bench", "run_cell", "load_results", "append_record", "cell_key", "parse_solver_spec",
    "split_list", "resolve_solvers", "sliced_wasserstein", "markdown_table", "MemoryMeter",
    "DEMO_SOLVERS", "preferred_solvers",
]


# ====================================================================================== problems
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

    @property
    def dim(self) -> int:
        return int(math.prod(self.shape))

    def prior(self, n: int, sigma: float, seed: int, device: Union[str, torch.device] = "cpu") -> Tensor:
        """``n`` prior draws at noise level ``sigma``, reproducible from ``seed`` (drawn on the CPU)."""
        gen = torch.Generator().manual_seed(int(seed))
        x = self.model.prior_sample((n, *self.shape), sigma, generator=gen, dtype=self.dtype)
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
        raise ValueError(f"unknown `problem` {spec!r}: not a built-in problem ({', '.join(PROBLEMS)}), not "
                         f"'module:function', and flowode.load_pretrained({spec!r}) failed: {exc}") from exc
    return as_problem(obj, spec)


# ====================================================================================== solvers
#: solvers the demo and the CLI's default compare, in order of preference (whichever are registered)
DEMO_SOLVERS = ("ddim", "heun", "dpm_solver++_2m", "unipc", "dpm_solver++_3m", "deis", "plms", "rk4")


def preferred_solvers(k: int = 4, candidates: Sequence[str] = DEMO_SOLVERS) -> list[str]:
    """The first ``k`` of ``candidates`` that are registered in this build."""
    return [n for n in candidates if n in SOLVERS][:k]


def split_list(text: str) -> list[str]:
    """Split ``"a,b[x=1,y=2],c"`` at top-level commas (commas inside brackets stay)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [s for s in out if s]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_solver_spec(spec: Union[str, dict, tuple]) -> tuple[str, dict[str, Any]]:
    """``"heun"`` -> ``("heun", {})``; ``"ddim[eta=0.5]"`` -> ``("ddim", {"eta": 0.5})``; also a dict
    ``{"name": ..., "options": {...}}`` or a ``(name, options)`` pair (config files)."""
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ValueError(f"a solver entry needs a 'name', got {spec!r}.")
        return str(spec["name"]), dict(spec.get("options", {}))
    if isinstance(spec, (tuple, list)):
        return str(spec[0]), dict(spec[1])
    spec = spec.strip()
    if "[" not in spec:
        return spec, {}
    if not spec.endswith("]"):
        raise ValueError(f"solver spec {spec!r}: options go in brackets at the end, e.g. 'ddim[eta=0.5]'.")
    name, _, rest = spec[:-1].partition("[")
    opts: dict[str, Any] = {}
    for item in split_list(rest):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"solver spec {spec!r}: option {item!r} is not key=value.")
        opts[key.strip()] = _value(val.strip())
    return name.strip(), opts


def resolve_solvers(specs: Iterable[Union[str, dict, tuple]]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Split solver specs into registered ``(name, options)`` pairs and messages for the unknown ones.

    Unknown options of a registered solver raise ``TypeError`` (a typo should stop the run)."""
    ok, missing = [], []
    for spec in specs:
        name, opts = parse_solver_spec(spec)
        try:
            cls = get_class(name)
        except UnknownSolverError as exc:
            missing.append(str(exc))
            continue
        make(cls, **opts)  # validates the options now, not in the middle of a run
        ok.append((cls.name, opts))
    return ok, missing


# ====================================================================================== records
def cell_key(problem: str, solver: str, nfe: Optional[int], spacing: Optional[str], seed: int,
             options: dict[str, Any], samples: int) -> str:
    """Canonical identity of a cell (what a rerun compares)."""
    return json.dumps({"problem": problem, "solver": solver, "nfe": nfe, "spacing": spacing, "seed": seed,
                       "options": options, "samples": samples}, sort_keys=True, separators=(",", ":"))


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def append_record(path: Union[str, Path], record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line: a single ``os.write`` on an ``O_APPEND`` descriptor, then
    ``fsync``. Non-finite floats become ``null`` (strict JSON)."""
    line = (json.dumps(_clean(record), sort_keys=True, allow_nan=False) + "\n").encode()
    fd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):  # pragma: no cover - a full disk
            raise OSError(f"short write to {path}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def load_results(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Read a results file; lines that are not complete JSON objects (a torn last line) are skipped,
    and a repeated key keeps its first record."""
    p = Path(path)
    if not p.exists():
        return []
    out, seen = [], set()
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        key = rec.get("key")
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        out.append(rec)
    return out


# ====================================================================================== metrics
def sliced_wasserstein(a: Tensor, b: Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (Rabin et al. 2011; Bonneel et
    al. 2015): ``sqrt(mean_theta W2^2(theta^T a, theta^T b))`` over ``projections`` random unit
    directions, each 1-D W2 computed exactly from sorted projections."""
    a = a.reshape(a.shape[0], -1).to(torch.float64).cpu()
    b = b.reshape(b.shape[0], -1).to(torch.float64).cpu()
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal-size samples, got {tuple(a.shape)} and {tuple(b.shape)}.")
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = torch.sort(a @ dirs, dim=0).values
    pb = torch.sort(b @ dirs, dim=0).values
    return float(((pa - pb) ** 2).mean().sqrt())


class MemoryMeter:
    """Peak extra memory of a block of code, in bytes; ``method`` says how it was measured.

    * ``"cuda_max_allocated"``: CUDA device: ``torch.cuda.max_memory_allocated`` minus the memory
      allocated on entry (tensors only, exact).
    * ``"rss_hwm"``: Linux CPU: the process's resident-set high-water mark (``VmHWM``), reset on entry
      through ``/proc/self/clear_refs``, minus the resident set on entry. Counts every allocation
      (tensors, Python, allocator slack), so small results are noisy at the page level.
    * ``"tracemalloc"``: elsewhere: Python allocations only. torch's CPU tensors do not go through
      Python's allocator, so this underestimates tensor memory; treat it as a lower bound.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0
        if self.device.type == "cuda":
            self.method = "cuda_max_allocated"
        elif sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK):
            self.method = "rss_hwm"
        else:
            self.method = "tracemalloc"

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0  # pragma: no cover

    def __enter__(self) -> "MemoryMeter":
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.method == "rss_hwm":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:  # pragma: no cover
                self.method = "tracemalloc"
            self._base = self._status("VmRSS")
        if self.method == "tracemalloc":
            tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.method == "cuda_max_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method == "rss_hwm":
            self.peak = self._status("VmHWM") - self._base
        else:
            self.peak = tracemalloc.get_traced_memory()[1] - self._base
            tracemalloc.stop()
        self.peak = max(int(self.peak), 0)


# ====================================================================================== engine
@dataclass
class Cell:
    """One benchmark cell."""

    problem: str
    solver: str
    options: dict[str, Any]
    nfe: Optional[int]  # None for adaptive solvers (their tolerance is in options)
    spacing: Optional[str]
    seed: int
    samples: int

    @property
    def key(self) -> str:
        return cell_key(self.problem, self.solver, self.nfe, self.spacing, self.seed, self.options, self.samples)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        text = self.solver + (f"[{opts}]" if opts else "")
        return text + (f" ({self.spacing})" if self.spacing else "")


@dataclass
class BenchSpec:
    """A benchmark grid. ``solvers`` are specs (``"ddim"``, ``"ddim[eta=0.5]"``, dicts);
    ``spacings`` entries may be ``None`` (each solver's default spacing); ``samples=None`` uses
    each problem's default batch size; adaptive solvers run once per entry of ``tolerances``
    (as ``rtol = atol``) when they take an ``rtol`` option."""

    problems: list[str]
    solvers: list[Any]
    nfe: list[int]
    spacings: list[Optional[str]] = field(default_factory=lambda: [None])
    seeds: list[int] = field(default_factory=lambda: [0])
    samples: Optional[int] = None
    tolerances: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    device: str = "cpu"
    repeats: int = 1
    sw_projections: int = 256

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown benchmark setting(s) {unknown}; valid: {sorted(names)}.")

        def listify(v: Any) -> list[Any]:
            return split_list(v) if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]

        kw = dict(d)
        for k in ("problems", "solvers", "spacings", "seeds", "nfe", "tolerances"):
            if k in kw:
                kw[k] = listify(kw[k])
        kw["nfe"] = [int(v) for v in kw.get("nfe", [])]
        if "seeds" in kw:
            kw["seeds"] = [int(v) for v in kw["seeds"]]
        if "tolerances" in kw:
            kw["tolerances"] = [float(v) for v in kw["tolerances"]]
        if "spacings" in kw:
            kw["spacings"] = [None if v in (None, "", "default") else str(v) for v in kw["spacings"]]
        return cls(**kw)

    def validate(self) -> None:
        if not self.problems:
            raise ValueError("no `problems` given.")
        if not self.solvers:
            raise ValueError("no `solvers` given.")
        if any(n < 1 for n in self.nfe):
            raise ValueError(f"`nfe` budgets must be positive integers, got {self.nfe}.")
        if self.repeats < 1:
            raise ValueError(f"`repeats` must be >= 1, got {self.repeats}.")

    def cells(self, solvers: list[tuple[str, dict[str, Any]]], problems: dict[str, Problem]) -> list[Cell]:
        out = []
        for pname, prob in problems.items():
            n = self.samples or prob.samples
            for sname, opts in solvers:
                cls = SOLVERS[sname]
                for spacing in self.spacings:
                    for seed in self.seeds:
                        if cls.adaptive:
                            takes_tol = any(f.name == "rtol" for f in dataclasses.fields(cls))
                            if takes_tol and "rtol" not in opts:
                                for tol in self.tolerances:
                                    o = dict(opts, rtol=tol)
                                    if any(f.name == "atol" for f in dataclasses.fields(cls)):
                                        o.setdefault("atol", tol)
                                    out.append(Cell(pname, sname, o, None, spacing, seed, n))
                            else:
                                out.append(Cell(pname, sname, dict(opts), None, spacing, seed, n))
                            continue
                        for budget in self.nfe:
                            out.append(Cell(pname, sname, dict(opts), budget, spacing, seed, n))
        return out


class _ReferenceCache:
    """Reference solutions per ``(problem, seed, samples, sigma_from, sigma_to)``; in memory and, when a
    folder is given, as ``.pt`` files there (so a resumed run does not redo them)."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.folder = folder
        self.mem: dict[str, tuple[Tensor, str]] = {}

    def get(self, problem: Problem, x_T: Tensor, seed: int, s0: float, s1: float) -> tuple[Tensor, str]:
        key = json.dumps([problem.name, seed, x_T.shape[0], repr(s0), repr(s1), str(problem.dtype)])
        if key in self.mem:
            return self.mem[key]
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = self.folder / f"{digest}.pt" if self.folder is not None else None
        if path is not None and path.exists():
            try:
                ref = torch.load(path, weights_only=True)
                kind = "closed_form" if problem.exact is not None else "reference_solve"
                self.mem[key] = (ref.to(x_T.device), kind)
                return self.mem[key]
            except Exception:  # noqa: BLE001 - a torn cache file is recomputed
                pass
        if problem.exact is not None:
            ref, kind = problem.exact(x_T, s0, s1), "closed_form"
        else:
            ref = reference_solve(problem.model, x_T, s0, s1, rtol=problem.ref_rtol, atol=problem.ref_rtol)
            kind = "reference_solve"
        ref = ref.detach()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(ref.cpu(), tmp)
            os.replace(tmp, path)
        self.mem[key] = (ref, kind)
        return ref, kind


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grid_for(problem: Problem, slv: Stepper, cell: Cell) -> Tensor:
    # adaptive solvers choose their own steps between the ends of a one-step grid
    steps = 1 if cell.nfe is None else None
    return resolve_grid(problem.model.schedule, slv, steps=steps, nfe=cell.nfe, spacing=cell.spacing)


def run_cell(problem: Problem, cell: Cell, refs: _ReferenceCache, *, device: Union[str, torch.device] = "cpu",
             repeats: int = 1, sw_projections: int = 256) -> dict[str, Any]:
    """Run one cell and return its record (raises on failure; :func:`run_bench` records the error)."""
    import flowode

    dev = torch.device(device)
    slv = make(cell.solver, **cell.options)
    grid = _grid_for(problem, slv, cell)
    s0, s1 = float(grid[0]), float(grid[-1])
    x_T = problem.prior(cell.samples, s0, cell.seed, dev)
    times, sol = [], None
    meter = MemoryMeter(dev)
    for r in range(repeats):
        gen = torch.Generator(device=dev).manual_seed(cell.seed + 1)
        _sync(dev)
        if r == 0:
            with meter:
                t0 = time.perf_counter()
                sol = integrate(problem.model, x_T, grid, slv, generator=gen)
                _sync(dev)
                times.append(time.perf_counter() - t0)
        else:
            t0 = time.perf_counter()
            integrate(problem.model, x_T, grid, slv, generator=gen)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    assert sol is not None
    ref, kind = refs.get(problem, x_T, cell.seed, s0, s1)
    diff = (sol.x.detach().to(torch.float64) - ref.to(sol.x.device, torch.float64))
    rec: dict[str, Any] = {
        "key": cell.key, "problem": cell.problem, "solver": cell.solver, "options": cell.options,
        "label": cell.label, "spacing": cell.spacing or slv.default_spacing or problem.model.schedule.default_spacing,
        "spacing_requested": cell.spacing, "seed": cell.seed, "samples": cell.samples, "nfe_budget": cell.nfe,
        "nfe": int(sol.nfe), "steps": int(sol.steps), "sigma_from": s0, "sigma_to": s1,
        "order": getattr(type(slv), "order", None), "stochastic": bool(slv.stochastic),
        "adaptive": bool(slv.adaptive),
        "rmse": float(diff.pow(2).mean().sqrt()), "max_err": float(diff.abs().max()),
        "seconds": sorted(times)[len(times) // 2], "repeats": repeats,
        "peak_mem_bytes": meter.peak, "mem_method": meter.method, "reference": kind,
        "dtype": str(problem.dtype).replace("torch.", ""), "device": str(dev), "error": None,
        "flowode": flowode.__version__,
    }
    sw = sw_ref = None
    if problem.data is not None and problem.dim <= 4096:
        gen = torch.Generator().manual_seed(10_000 + cell.seed)
        data = problem.data(cell.samples, gen)
        sw = sliced_wasserstein(sol.x, data, sw_projections, seed=cell.seed)
        sw_ref = sliced_wasserstein(ref, data, sw_projections, seed=cell.seed)
    rec["sw"], rec["sw_ref"] = sw, sw_ref
    for k in ("accepted", "rejected"):
        if k in sol.stats:
            rec[k] = sol.stats[k]
    return rec


def _warm_up(problem: Problem, samples: int, device: Union[str, torch.device]) -> None:
    sched = problem.model.schedule
    grid = sigma_grid(sched, 2, sched.default_spacing)
    try:
        integrate(problem.model, problem.prior(samples, float(grid[0]), 0, device), grid, "ddim")
    except (ValueError, RuntimeError):  # the timed cell will report it
        pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def run_bench(spec: BenchSpec, results: Union[str, Path], *, progress: bool = True,
              log: Callable[[str], None] = _stderr) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every cell of ``spec`` not yet in ``results`` (a JSON-lines file), appending each record
    as it finishes. Returns ``(records of this grid, messages about unknown solvers)``.

    Unknown solver names are reported (returned and logged), not fatal, so one grid can list solvers
    that only some builds have; unknown problems and bad options raise ``ValueError`` / ``TypeError``.
    """
    spec.validate()
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    solvers, missing = resolve_solvers(spec.solvers)
    for msg in missing:
        log(f"flowode bench: skipped: {msg}")
    if not solvers:
        raise ValueError("none of the requested `solvers` is registered: " + " ".join(missing))
    problems = {p: get_problem(p) for p in spec.problems}
    cells = spec.cells(solvers, problems)
    done = {r["key"]: r for r in load_results(results) if "key" in r}
    todo = [c for c in cells if c.key not in done]
    if len(todo) < len(cells):
        log(f"flowode bench: {len(cells) - len(todo)} of {len(cells)} cells already in {results}; running "
            f"{len(todo)}.")
    refs = _ReferenceCache(results.with_name(results.name + ".refs"))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="cell", desc="bench", dynamic_ncols=True)
    new: dict[str, dict[str, Any]] = {}
    warm: set[str] = set()
    try:
        for cell in todo:
            if cell.problem not in warm:  # first call pays one-time costs (kernels, caches): not timed
                warm.add(cell.problem)
                _warm_up(problems[cell.problem], cell.samples, spec.device)
            if bar is not None:
                bar.set_postfix_str(f"{cell.problem} {cell.label} NFE={cell.nfe if cell.nfe else 'adaptive'} "
                                    f"seed={cell.seed}")
            try:
                rec = run_cell(problems[cell.problem], cell, refs, device=spec.device, repeats=spec.repeats,
                               sw_projections=spec.sw_projections)
            except (ValueError, RuntimeError, TypeError, NotImplementedError) as exc:
                rec = {"key": cell.key, "problem": cell.problem, "solver": cell.solver, "options": cell.options,
                       "label": cell.label, "spacing": cell.spacing, "spacing_requested": cell.spacing,
                       "seed": cell.seed, "samples": cell.samples, "nfe_budget": cell.nfe, "nfe": None,
                       "rmse": None, "max_err": None, "seconds": None,
                       "error": f"{type(exc).__name__}: {exc}"}
                log(f"flowode bench: cell {cell.problem} {cell.label} NFE={cell.nfe} failed: {rec['error']}")
            rec["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            append_record(results, rec)
            new[cell.key] = rec
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    records = [done.get(c.key) or new[c.key] for c in cells if c.key in done or c.key in new]
    return records, missing


# ====================================================================================== tables
def _fmt(v: Any, spec: str = ".3e") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _mean(vals: list[float]) -> Optional[float]:
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Average successful records over seeds: one row per (problem, label, nfe budget / tolerance)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("error"):
            continue
        k = (r["problem"], r.get("label", r["solver"]), r.get("nfe_budget"),
             json.dumps(r.get("options", {}), sort_keys=True))
        groups.setdefault(k, []).append(r)
    rows = []
    for rs in groups.values():
        row = dict(rs[0])
        for f in ("rmse", "max_err", "sw", "sw_ref", "seconds", "peak_mem_bytes", "nfe"):
            row[f] = _mean([r.get(f) for r in rs if r.get(f) is not None])  # type: ignore[misc]
        row["seeds"] = len(rs)
        rmses = [r["rmse"] for r in rs if r.get("rmse") is not None]
        row["rmse_std"] = (sum((v - row["rmse"]) ** 2 for v in rmses) / (len(rmses) - 1)) ** 0.5 if len(rmses) > 1 \
            else None
        rows.append(row)
    rows.sort(key=lambda r: (r["problem"], r.get("label", ""), r.get("nfe") or 0))
    return rows


def markdown_table(records: Sequence[dict[str, Any]], missing: Sequence[str] = ()) -> str:
    """Markdown: per problem, an RMSE-by-budget pivot, then the full table (means over seeds)."""
    rows = aggregate(records)
    out: list[str] = []
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    for prob in problems:
        pr = [r for r in rows if r["problem"] == prob]
        budgets = sorted({r["nfe_budget"] for r in pr if r.get("nfe_budget") is not None})
        labels = list(dict.fromkeys(r["label"] for r in pr))
        out.append(f"### {prob}\n")
        ref_kinds = sorted({r.get("reference", "") for r in pr})
        out.append(f"RMSE against the exact flow ({', '.join(ref_kinds)}), mean over seeds; "
                   "the exact NFE used is in brackets.\n")
        if budgets:
            out.append("| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
            out.append("|---|" + "---|" * len(budgets))
            for lab in labels:
                cells = []
                for b in budgets:
                    hit = [r for r in pr if r["label"] == lab and r.get("nfe_budget") == b]
                    cells.append(f"{_fmt(hit[0]['rmse'])} ({_fmt(hit[0]['nfe'], '.0f')})" if hit else "-")
                if any(c != "-" for c in cells):
                    out.append(f"| {lab} | " + " | ".join(cells) + " |")
            out.append("")
        out.append("| solver | spacing | budget | NFE | steps | RMSE | max err | SW to data (floor) | seconds | "
                   "peak MiB | seeds |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in pr:
            rm = _fmt(r["rmse"]) + (f" ± {_fmt(r['rmse_std'], '.1e')}" if r.get("rmse_std") else "")
            sw = f"{_fmt(r.get('sw'), '.4f')} ({_fmt(r.get('sw_ref'), '.4f')})" if r.get("sw") is not None else "-"
            budget = r["nfe_budget"] if r.get("nfe_budget") is not None else (
                f"rtol {r['options'].get('rtol')}" if "rtol" in r.get("options", {}) else "adaptive")
            mem = _fmt(r["peak_mem_bytes"] / 2**20, ".1f") if r.get("peak_mem_bytes") is not None else "-"
            out.append(f"| {r['label']} | {r.get('spacing', '-')} | {budget} | {_fmt(r.get('nfe'), '.0f')} | "
                       f"{r.get('steps', '-')} | {rm} | {_fmt(r.get('max_err'))} | {sw} | "
                       f"{_fmt(r.get('seconds'), '.3f')} | {mem} | {r['seeds']} |")
        out.append("")
    failed = [r for r in records if r.get("error")]
    if failed:
        out.append("Failed cells:\n")
        out += [f"- {r['problem']} {r.get('label', r['solver'])} NFE={r.get('nfe_budget')}: {r['error']}"
                for r in failed]
        out.append("")
    if missing:
        out.append("Not run (not registered in this build):\n")
        out += [f"- {m}" for m in missing]
        out.append("")
    methods = sorted({str(r["mem_method"]) for r in records if r.get("mem_method")})
    if methods:
        out.append(f"Peak memory measured by: {', '.join(methods)} (see flowode.bench.MemoryMeter). "
                   "SW = sliced 2-Wasserstein distance to fresh data samples; the bracket is the reference "
                   "flow's own distance (the finite-sample floor).")
    return "\n".join(out).rstrip() + "\n"
