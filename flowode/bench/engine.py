"""The engine: run one cell (:func:`run_cell`) or a whole grid, resumably (:func:`run_bench`).

A cell's solver is a flowode solver (its grid from :func:`~flowode.grids.resolve_grid`, or
:func:`~flowode.optimize_grid` for the spacing ``"optimized"``) or a peer sampler
(:mod:`flowode.bench.peers`: its own grid, its NFE counted around the model); either way the
start noise, the reference, the metrics and the record are the same.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

import torch
from torch import Tensor

from ..grids import resolve_grid
from ..integrate import integrate
from ..optimize import optimize_grid
from ..solvers import Stepper, get_class, make
from .memory import MemoryMeter
from .metrics import ReferenceCache, max_err, rmse, sliced_wasserstein
from .peers import EpsCounter, get_peer, is_peer
from .problems import Problem, get_problem, model_fingerprint
from .spec import OPTIMIZED, BenchSpec, Cell, resolve_solvers
from .store import append_record, read_results

__all__ = ["run_cell", "run_bench"]

T = TypeVar("T")

#: what a failing cell may raise; it is recorded with its message (rerun with ``retry_failed``)
_CELL_ERRORS = (ValueError, RuntimeError, TypeError, NotImplementedError)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], T], dev: torch.device, repeats: int) -> tuple[T, float, MemoryMeter]:
    """``fn()`` run ``repeats`` times: the first result, the median wall time and the peak memory of
    the first run."""
    times, first = [], None
    meter = MemoryMeter(dev)
    for r in range(repeats):
        _sync(dev)
        with meter if r == 0 else contextlib.nullcontext():
            t0 = time.perf_counter()
            out = fn()
            _sync(dev)
            times.append(time.perf_counter() - t0)
        if r == 0:
            first = out
    assert first is not None
    return first, sorted(times)[len(times) // 2], meter


def _grid_for(problem: Problem, slv: Stepper, cell: Cell, refs: ReferenceCache,
              dev: torch.device) -> tuple[Tensor, dict[str, Any]]:
    """The cell's grid and the record fields it adds (those of an optimised grid)."""
    sched = problem.model.schedule
    if cell.spacing != OPTIMIZED:
        # adaptive solvers choose their own steps between the ends of a one-step grid
        steps = 1 if cell.nfe is None else None
        return resolve_grid(sched, slv, steps=steps, nfe=cell.nfe, spacing=cell.spacing), {}
    if cell.nfe is None:
        raise ValueError(f"spacing {OPTIMIZED!r} needs an NFE budget; {cell.solver!r} is adaptive.")
    # fitted on its own batch (seed + 1) against the exact flow from sigma_max to 0
    n, seed = int(cell.grid_options.get("calibration", 256)), cell.seed + 1
    x_cal = problem.prior(n, sched.sigma_max, seed, dev)
    ref_cal, _ = refs.get(problem, x_cal, seed, sched.sigma_max, 0.0)
    g, info = optimize_grid(problem.model, x_cal, nfe=cell.nfe, solver=slv, reference=ref_cal,
                            max_evals=cell.grid_options.get("max_evals"), return_info=True)
    grid = resolve_grid(sched, slv, sigmas=g)
    return grid, {"calibration": n, "calibration_seed": seed, "cal_error_before": info.error_before,
                  "cal_error_after": info.error_after, "init_spacing": info.init_spacing,
                  "opt_evals": info.evaluations, "sigmas": [float(v) for v in grid.tolist()]}


def _record(problem: Problem, cell: Cell, x: Tensor, x_T: Tensor, s0: float, s1: float, refs: ReferenceCache,
            dev: torch.device, sw_projections: int) -> dict[str, Any]:
    """The fields every successful record has: identity, errors against the reference from the
    same ``x_T`` between the same ends, and the distance to data."""
    import flowode

    ref, kind = refs.get(problem, x_T, cell.seed, s0, s1)
    rec: dict[str, Any] = {
        "key": cell.key, "problem": cell.problem, "solver": cell.solver, "options": cell.options,
        "label": cell.label, "spacing_requested": cell.spacing, "seed": cell.seed, "samples": cell.samples,
        "nfe_budget": cell.nfe, "sigma_from": s0, "sigma_to": s1, "rmse": rmse(x, ref), "max_err": max_err(x, ref),
        "reference": kind, "dtype": str(problem.dtype).replace("torch.", ""), "device": str(dev), "error": None,
        "flowode": flowode.__version__,
    }
    sw = sw_ref = None
    if problem.data is not None and problem.dim <= 4096:
        gen = torch.Generator().manual_seed(10_000 + cell.seed)
        data = problem.data(cell.samples, gen)
        sw = sliced_wasserstein(x, data, sw_projections, seed=cell.seed)
        sw_ref = sliced_wasserstein(ref, data, sw_projections, seed=cell.seed)
    rec["sw"], rec["sw_ref"] = sw, sw_ref
    return rec


def run_cell(problem: Problem, cell: Cell, refs: ReferenceCache, *, device: Union[str, torch.device] = "cpu",
             repeats: int = 1, sw_projections: int = 256) -> dict[str, Any]:
    """Run one cell and return its record (raises on failure; :func:`run_bench` records the error)."""
    dev = torch.device(device)
    if is_peer(cell.solver):
        return _run_peer(problem, cell, refs, dev, repeats, sw_projections)
    slv = make(cell.solver, **cell.options)
    grid, extra = _grid_for(problem, slv, cell, refs, dev)
    s0, s1 = float(grid[0]), float(grid[-1])
    x_T = problem.prior(cell.samples, s0, cell.seed, dev)

    def solve() -> Any:
        # a stochastic solver's draws keyed by (seed, sample index, step): sample i of a cell is the same at any
        # --samples (its x_T is a keyed draw too, Problem.prior), and the same path at any step count
        return integrate(problem.model, x_T, grid, slv, seed=cell.seed + 1)

    sol, seconds, meter = _timed(solve, dev, repeats)
    rec = _record(problem, cell, sol.x, x_T, s0, s1, refs, dev, sw_projections)
    rec.update({
        "spacing": cell.spacing or slv.default_spacing or problem.model.schedule.default_spacing,
        "nfe": int(sol.nfe), "steps": int(sol.steps), "order": slv.describe()["order"],
        "order_claim": slv.describe()["order_claims"],
        "stochastic": bool(slv.stochastic), "adaptive": bool(slv.adaptive), "seconds": seconds, "repeats": repeats,
        "peak_mem_bytes": meter.peak, "mem_method": meter.method, **extra,
    })
    rec["last_step"] = sol.stats.get("last_step")  # the step to sigma = 0 that was taken (None: no such step)
    for k in ("accepted", "rejected"):
        if k in sol.stats:
            rec[k] = sol.stats[k]
    return rec


def _run_peer(problem: Problem, cell: Cell, refs: ReferenceCache, dev: torch.device, repeats: int,
              sw_projections: int) -> dict[str, Any]:
    """A peer's cell: the largest step count that fits the budget, the start noise at its first
    level, the run timed with its model calls counted."""
    peer = get_peer(cell.solver)
    if cell.nfe is None:
        raise ValueError(f"peer {peer.name!r} needs an NFE budget.")
    sched = problem.model.schedule
    counter = EpsCounter(problem.model, problem.dtype)
    try:
        steps, dry = peer.steps_for_nfe(problem.model, problem.dtype, problem.shape, cell.nfe, cell.spacing,
                                        cell.options)
        x_T = problem.prior(cell.samples, dry.sigma_from, cell.seed, dev)

        def go() -> Any:
            counter.calls = 0
            return peer.run(counter, x_T, sched, steps, cell.spacing, cell.options)

        out, seconds, meter = _timed(go, dev, repeats)
    except _CELL_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - another library's failure is the cell's, not the run's
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    rec = _record(problem, cell, out.x, x_T, out.sigma_from, out.sigma_to, refs, dev, sw_projections)
    rec.update({
        "spacing": out.spacing, "nfe": counter.calls, "steps": steps, "order": peer.order,
        "stochastic": peer.stochastic, "adaptive": peer.adaptive, "seconds": seconds, "repeats": repeats,
        "peak_mem_bytes": meter.peak, "mem_method": meter.method, "library_version": peer.version(),
    })
    return rec


def _warm_up(problem: Problem, samples: int, device: Union[str, torch.device]) -> None:
    grid = resolve_grid(problem.model.schedule, None, steps=2)
    try:
        integrate(problem.model, problem.prior(samples, float(grid[0]), 0, device), grid, "ddim")
    except (ValueError, RuntimeError):  # the timed cell will report it
        pass


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _stop_ladder(rec: dict[str, Any], cell: Cell, spec: BenchSpec, stopped: set[Optional[str]]) -> None:
    if cell.ladder is not None and spec.adaptive_max_nfe is not None and (rec.get("nfe") or 0) > spec.adaptive_max_nfe:
        stopped.add(cell.ladder)


def _preflight(problems: dict[str, Problem], cells: list[Cell], device: str) -> None:
    """Refuse, before the first cell, a (problem, solver, options, spacing) group that cannot run
    at all. Every budget's grid is resolved (no model call); then the group runs on one sample at
    its smallest budget and, only if that fails, at its largest. A ``ValueError`` / ``TypeError``
    at both (a bad spacing for the schedule, an option no grid to 0 can take such as DDIM's
    ``eta`` > 1) is raised naming the group; a budget that fails alone stays a failed cell, and a
    ``RuntimeError`` (the network's NaN, out of memory) is left to the cells. Costs one small
    solve per group (within the timing noise of ``flowode demo``'s 40 cells)."""
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        if is_peer(c.solver) or c.spacing == OPTIMIZED or c.nfe is None:
            continue
        groups.setdefault(json.dumps([c.problem, c.solver, c.options, c.spacing], sort_keys=True), []).append(c)
    for group in groups.values():
        c0 = group[0]
        problem = problems[c0.problem]
        slv = make(c0.solver, **c0.options)
        what = f"{c0.problem} {c0.label}"
        grids: list[tuple[int, Tensor]] = []
        first: Optional[Exception] = None
        for nfe in sorted({c.nfe or 0 for c in group}):
            try:
                grids.append((nfe, resolve_grid(problem.model.schedule, slv, nfe=nfe, spacing=c0.spacing)))
            except (ValueError, TypeError) as exc:
                first = first or exc
        if not grids:
            raise ValueError(f"cell {what} cannot run at any budget of {sorted({c.nfe or 0 for c in group})}: "
                             f"{first}")
        tries = [grids[0]] if len(grids) == 1 else [grids[0], grids[-1]]
        failures = []
        for nfe, grid in tries:
            x = problem.prior(1, float(grid[0]), c0.seed, device)
            try:
                integrate(problem.model, x, grid, slv, seed=c0.seed + 1)
            except (ValueError, TypeError) as exc:
                failures.append((nfe, exc))
                continue
            except RuntimeError:  # e.g. the network's NaN: a property of the cells, recorded there
                pass
            break
        if len(failures) == len(tries):
            last_nfe, last = failures[-1]
            raise ValueError(f"cell {what} NFE={last_nfe} cannot run (tried on one sample before the benchmark, at "
                             f"NFE {' and '.join(str(n) for n, _ in failures)}): {type(last).__name__}: {last}")


def run_bench(spec: BenchSpec, results: Union[str, Path], *, progress: bool = True,
              log: Callable[[str], None] = _stderr, retry_failed: bool = False,
              preflight: bool = True, shard: Optional[tuple[int, int]] = None,
              also_done: Sequence[Union[str, Path]] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every cell of ``spec`` not yet in ``results`` (a JSON-lines file), appending each record
    as it finishes. Returns ``(records of this grid, messages about unknown solvers)``.

    Unknown solver names are reported (returned and logged), not fatal, so one grid can list solvers
    that only some builds have; unknown problems, bad options and settings that would fail every
    cell (``samples``, ``device``, ``spacings``, see :meth:`BenchSpec.validate` and the one-sample
    ``preflight`` of each solver group) raise ``ValueError`` / ``TypeError`` before the first cell.
    A cell's key holds the model's fingerprint, the device and the repeats, so a changed model
    reruns its cells. ``retry_failed`` reruns cells whose record is an error (the new record
    replaces it); torn or foreign lines of ``results`` are skipped and logged.

    ``shard=(rank, world)`` runs only this rank's cells (:func:`flowode.distributed.assign`: an
    adaptive tolerance ladder stays on one rank) and returns only their records; ``also_done``
    are more results files whose cells count as done (the merged file and the other ranks' parts
    of an interrupted sharded run).
    """
    spec.validate()
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    solvers, missing = resolve_solvers(spec.solvers, peers=True)
    for msg in missing:
        log(f"flowode bench: skipped: {msg}")
    if not solvers:
        raise ValueError("none of the requested `solvers` is registered: " + " ".join(missing))
    if not spec.nfe and any(not is_peer(n) and not get_class(n).adaptive for n, _ in solvers):
        raise ValueError("no `nfe` budgets given; every solver that is not adaptive needs one (e.g. --nfe 5,10,20).")
    problems = {p: get_problem(p) for p in spec.problems}
    fingerprints = {p: model_fingerprint(prob, spec.device) for p, prob in problems.items()}
    for p, prob in problems.items():
        prob.fingerprint = fingerprints[p]
    cells = spec.cells(solvers, problems, fingerprints)
    if not cells:
        raise ValueError("the benchmark grid has no cells; give `nfe` budgets and solvers.")
    if shard is not None:
        from ..distributed import assign

        rank, world = shard
        owner = assign([c.ladder or c.key for c in cells], world)
        cells = [c for c, r in zip(cells, owner) if r == rank]
    old, torn = read_results(results)
    for extra in also_done:
        if Path(extra) != results:
            old += read_results(extra)[0]
    if torn:
        log(f"flowode bench: skipped {len(torn)} unreadable line(s) of {results} (line "
            f"{', '.join(map(str, torn[:5]))}{', ...' if len(torn) > 5 else ''}: torn by an interrupted write or "
            "not a record); their cells run again.")
    done = {r["key"]: r for r in old if "key" in r and not (retry_failed and r.get("error"))}
    todo = [c for c in cells if c.key not in done]
    if len(todo) < len(cells):
        log(f"flowode bench: {len(cells) - len(todo)} of {len(cells)} cells already in {results}; running "
            f"{len(todo)}.")
    if preflight and todo:
        _preflight(problems, todo, spec.device)
    refs = ReferenceCache(results.with_name(results.name + ".refs"))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="cell", desc="bench", dynamic_ncols=True)
    new: dict[str, dict[str, Any]] = {}
    warm: set[str] = set()
    stopped: set[Optional[str]] = set()  # tolerance ladders past adaptive_max_nfe
    try:
        for cell in cells:
            if cell.ladder in stopped:
                continue
            if cell.key in done:
                _stop_ladder(done[cell.key], cell, spec, stopped)
                continue
            if cell.problem not in warm:  # first call pays one-time costs (kernels, caches): not timed
                warm.add(cell.problem)
                _warm_up(problems[cell.problem], cell.samples, spec.device)
            if bar is not None:
                bar.set_postfix_str(f"{cell.problem} {cell.label} NFE={cell.nfe if cell.nfe else 'adaptive'} "
                                    f"seed={cell.seed}")
            try:
                rec = run_cell(problems[cell.problem], cell, refs, device=spec.device, repeats=spec.repeats,
                               sw_projections=spec.sw_projections)
            except _CELL_ERRORS as exc:
                rec = {"key": cell.key, "problem": cell.problem, "solver": cell.solver, "options": cell.options,
                       "label": cell.label, "spacing": cell.spacing, "spacing_requested": cell.spacing,
                       "seed": cell.seed, "samples": cell.samples, "nfe_budget": cell.nfe, "nfe": None,
                       "rmse": None, "max_err": None, "seconds": None,
                       "error": f"{type(exc).__name__}: {exc}"}
                log(f"flowode bench: cell {cell.problem} {cell.label} NFE={cell.nfe} failed: {rec['error']}")
            rec["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            append_record(results, rec)
            new[cell.key] = rec
            _stop_ladder(rec, cell, spec, stopped)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    records = [done.get(c.key) or new[c.key] for c in cells if c.key in done or c.key in new]
    return records, missing

