"""The engine: run one cell (:func:`run_cell`) or a whole grid, resumably (:func:`run_bench`)."""

from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Any, Callable, Union

import torch
from torch import Tensor

from ..grids import resolve_grid, sigma_grid
from ..integrate import integrate
from ..solvers import Stepper, make
from .memory import MemoryMeter
from .metrics import ReferenceCache, sliced_wasserstein
from .problems import Problem, get_problem
from .spec import BenchSpec, Cell, resolve_solvers
from .store import append_record, load_results

__all__ = ["run_cell", "run_bench"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grid_for(problem: Problem, slv: Stepper, cell: Cell) -> Tensor:
    # adaptive solvers choose their own steps between the ends of a one-step grid
    steps = 1 if cell.nfe is None else None
    return resolve_grid(problem.model.schedule, slv, steps=steps, nfe=cell.nfe, spacing=cell.spacing)


def run_cell(problem: Problem, cell: Cell, refs: ReferenceCache, *, device: Union[str, torch.device] = "cpu",
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
    refs = ReferenceCache(results.with_name(results.name + ".refs"))
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

