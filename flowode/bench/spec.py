"""What a benchmark runs: the solver spec language, cell identities and the grid of cells.

A solver spec is ``name`` or ``name[key=value,...]`` (values are JSON where they parse, else
strings), a ``{"name": ..., "options": {...}}`` dict or a ``(name, options)`` pair. A
:class:`BenchSpec` expands into :class:`Cell` objects; :func:`cell_key` is a cell's identity in
the results file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, Union

from ..solvers import SOLVERS, UnknownSolverError, get_class, make
from ..solvers.options import coerce_options
from .peers import get_peer, is_peer
from .problems import Problem

__all__ = ["DEMO_SOLVERS", "OPTIMIZED", "preferred_solvers", "split_list", "parse_solver_spec", "resolve_solvers",
           "check_device",
           "cell_key", "Cell", "BenchSpec"]

#: the spacing name of a grid fitted by :func:`flowode.optimize_grid` (see :class:`BenchSpec`)
OPTIMIZED = "optimized"


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


def check_device(device: Any) -> str:
    """``device`` as torch spells it (``"cpu"``, ``"cuda:0"``); a ``ValueError`` naming the fix when
    it is not a device name or not available in this build / on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"`device` {device!r} is not a torch device; use cpu, cuda, cuda:1 or mps.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`device` {device!r}: CUDA is not available in this torch build or on this machine; "
                             "use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"`device` {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                             f"use cuda:0..cuda:{torch.cuda.device_count() - 1}.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"`device` {device!r}: MPS is not available on this machine; use --device cpu.")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"`device` {device!r}: flowode benchmarks run on cpu, cuda or mps.")
    return str(dev)


def _canonical(name: str, opts: dict[str, Any], peers: bool) -> str:
    """The registered name of a solver or peer, its options checked; ``UnknownSolverError`` (the
    message to report) when it cannot run here."""
    if not is_peer(name):
        cls = get_class(name)
        make(cls, **opts)  # validates the options now, not in the middle of a run
        return cls.name
    if not peers:
        raise UnknownSolverError(f"{name!r} is a peer sampler (another library's); peers run only in benchmarks.")
    peer = get_peer(name)
    why = peer.unavailable()
    if why is not None:
        raise UnknownSolverError(f"{peer.name}: {why}")
    peer.check_options(opts)
    return peer.name


def resolve_solvers(specs: Iterable[Union[str, dict, tuple]], *,
                    peers: bool = False) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Split solver specs into registered ``(name, options)`` pairs and messages for the unknown ones.

    With ``peers=True`` (the engine) a ``library:method`` name is a peer sampler
    (:mod:`flowode.bench.peers`); one whose library does not import is reported like an unknown
    solver. Unknown options of a registered solver or peer raise ``TypeError`` (a typo should stop
    the run)."""
    ok, missing = [], []
    for spec in specs:
        name, opts = parse_solver_spec(spec)
        try:
            canon = _canonical(name, opts, peers)
            if not is_peer(name):  # the options as the solver reads them ("False" is False), for labels and keys
                opts = coerce_options(get_class(name), opts)
            ok.append((canon, opts))
        except UnknownSolverError as exc:
            missing.append(str(exc))
    return ok, missing


def cell_key(problem: str, solver: str, nfe: Optional[int], spacing: Optional[str], seed: int,
             options: dict[str, Any], samples: int, grid_options: Optional[dict[str, Any]] = None, *,
             model: Optional[str] = None, device: Optional[str] = None, repeats: Optional[int] = None) -> str:
    """Canonical identity of a cell (what a rerun compares); ``grid_options`` (the calibration
    settings of an optimised grid), ``model`` (:func:`~flowode.bench.problems.model_fingerprint`),
    ``device`` and ``repeats`` (timing) are part of it when given, so a changed model, device or
    repeat count never reuses an old cell."""
    key: dict[str, Any] = {"problem": problem, "solver": solver, "nfe": nfe, "spacing": spacing, "seed": seed,
                           "options": options, "samples": samples}
    if grid_options:
        key["grid"] = grid_options
    for name, value in (("model", model), ("device", device), ("repeats", repeats)):
        if value is not None:
            key[name] = value
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


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
    #: settings of the ``"optimized"`` grid (calibration batch, optimiser evaluations), else empty
    grid_options: dict[str, Any] = field(default_factory=dict)
    #: the model's fingerprint (:func:`~flowode.bench.problems.model_fingerprint`), the device and the
    #: timing repeats: part of the key when set
    model: Optional[str] = None
    device: Optional[str] = None
    repeats: Optional[int] = None

    @property
    def key(self) -> str:
        return cell_key(self.problem, self.solver, self.nfe, self.spacing, self.seed, self.options, self.samples,
                        self.grid_options, model=self.model, device=self.device, repeats=self.repeats)

    @property
    def ladder(self) -> Optional[str]:
        """The tolerance ladder of a cell without a budget (adaptive): its key without ``rtol`` /
        ``atol``; ``None`` for a cell with an NFE budget."""
        if self.nfe is not None:
            return None
        opts = {k: v for k, v in self.options.items() if k not in ("rtol", "atol")}
        return cell_key(self.problem, self.solver, None, self.spacing, self.seed, opts, self.samples, self.grid_options,
                        model=self.model, device=self.device, repeats=self.repeats)

    @property
    def label(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        text = self.solver + (f"[{opts}]" if opts else "")
        return text + (f" ({self.spacing})" if self.spacing else "")


@dataclass
class BenchSpec:
    """A benchmark grid. ``solvers`` are specs (``"ddim"``, ``"ddim[eta=0.5]"``, dicts, peers
    ``"diffusers:ddim"``); ``spacings`` entries may be ``None`` (each solver's default spacing) or
    ``"optimized"`` (:func:`flowode.optimize_grid` for the cell's solver and budget, fitted on a
    separate batch of ``calibration`` start states drawn with seed ``seed + 1``, ``optimize_evals``
    objective evaluations); ``samples=None`` uses each problem's default batch size; adaptive
    solvers run once per entry of ``tolerances`` (as ``rtol = atol``, listed loose to tight) when
    they take an ``rtol`` option, and with ``adaptive_max_nfe`` such a ladder stops after the
    first tolerance that spent more evaluations than that."""

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
    adaptive_max_nfe: Optional[int] = None
    calibration: int = 256
    optimize_evals: int = 300

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
        """Refuse settings that would fail every cell, before the first one runs (CLI flag names)."""
        from ..grids import SPACINGS

        if not self.problems:
            raise ValueError("no `problems` given (--problem gmm2d,...).")
        if not self.solvers:
            raise ValueError("no `solvers` given (--solvers ddim,heun,...).")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.nfe):
            raise ValueError(f"`nfe` budgets must be positive integers, got {self.nfe}; e.g. --nfe 5,10,20.")
        if not self.seeds:
            raise ValueError("no `seeds` given; e.g. --seeds 0,1.")
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int)
                                         or self.samples < 1):
            raise ValueError(f"`samples` must be a positive integer (or left out for each problem's default batch), "
                             f"got {self.samples!r}.")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"`repeats` must be an integer >= 1, got {self.repeats!r}.")
        bad = [s for s in self.spacings if s is not None and s != OPTIMIZED and s not in SPACINGS]
        if bad:
            raise ValueError(f"unknown `spacing` {bad[0]!r}; choose from {', '.join(SPACINGS)}, {OPTIMIZED} "
                             "(or leave it out for each solver's own).")
        if any(not (isinstance(t, (int, float)) and 0 < t < 1) for t in self.tolerances):
            raise ValueError(f"`tolerances` must be numbers in (0, 1), got {self.tolerances}; e.g. 1e-2,1e-3.")
        check_device(self.device)

    def cells(self, solvers: list[tuple[str, dict[str, Any]]], problems: dict[str, Problem],
              fingerprints: Optional[dict[str, str]] = None) -> list[Cell]:
        """Every cell of the grid; with ``fingerprints`` (problem name -> model fingerprint) the keys
        also hold the model, ``device`` and ``repeats``."""
        out = []
        for pname, prob in problems.items():
            n = self.samples if self.samples is not None else prob.samples
            ident: dict[str, Any] = {}
            if fingerprints is not None:
                ident = {"model": fingerprints[pname], "device": check_device(self.device),
                         "repeats": self.repeats}
            for sname, opts in solvers:
                cls = None if is_peer(sname) else get_class(sname)
                for spacing in self.spacings:
                    grid = {"calibration": self.calibration, "max_evals": self.optimize_evals} \
                        if spacing == OPTIMIZED else {}
                    for seed in self.seeds:
                        if cls is not None and cls.adaptive:
                            takes_tol = any(f.name == "rtol" for f in dataclasses.fields(cls))
                            if takes_tol and "rtol" not in opts:
                                for tol in self.tolerances:
                                    o = dict(opts, rtol=tol)
                                    if any(f.name == "atol" for f in dataclasses.fields(cls)):
                                        o.setdefault("atol", tol)
                                    out.append(Cell(pname, sname, o, None, spacing, seed, n, dict(grid), **ident))
                            else:
                                out.append(Cell(pname, sname, dict(opts), None, spacing, seed, n, dict(grid),
                                                **ident))
                            continue
                        for budget in self.nfe:
                            out.append(Cell(pname, sname, dict(opts), budget, spacing, seed, n, dict(grid), **ident))
        return out

