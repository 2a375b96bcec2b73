"""Stepper benchmarks: problems x solvers x NFE budgets (x grid spacings x seeds), resumable.

For every *cell* ``(problem, solver, options, NFE budget, spacing, seed, samples)`` the engine

1. builds the grid: the largest step count whose exact cost ``solver.nfe(grid)`` fits the budget
   (:func:`flowode.grids.resolve_grid`, the same rule as ``flowode.sample(..., nfe=N)``);
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

Layout (one module per concern; every public name is importable from ``flowode.bench``):

* :mod:`~flowode.bench.problems`: :class:`Problem`, the registry :data:`PROBLEMS`, ``module:attr``
  plugins, :func:`as_problem` / :func:`get_problem`;
* :mod:`~flowode.bench.spec`: the solver spec language ``name[k=v]``, :class:`BenchSpec`,
  :class:`Cell`, :func:`cell_key`;
* :mod:`~flowode.bench.store`: the JSON-lines results file (:func:`append_record`, :func:`load_results`);
* :mod:`~flowode.bench.metrics`: :func:`rmse`, :func:`max_err`, :func:`sliced_wasserstein`,
  :class:`ReferenceCache`;
* :mod:`~flowode.bench.memory`: :class:`MemoryMeter`;
* :mod:`~flowode.bench.engine`: :func:`run_cell`, :func:`run_bench`;
* :mod:`~flowode.bench.report`: :func:`aggregate`, :func:`markdown_table`.
"""

from .engine import run_bench, run_cell
from .memory import MemoryMeter
from .metrics import ReferenceCache, max_err, rmse, sliced_wasserstein
from .problems import PROBLEMS, Problem, as_problem, get_problem, register_problem
from .report import aggregate, markdown_table
from .spec import (
    DEMO_SOLVERS,
    BenchSpec,
    Cell,
    cell_key,
    parse_solver_spec,
    preferred_solvers,
    resolve_solvers,
    split_list,
)
from .store import append_record, load_results

__all__ = [
    "Problem", "PROBLEMS", "register_problem", "get_problem", "as_problem", "BenchSpec", "Cell",
    "run_bench", "run_cell", "load_results", "append_record", "cell_key", "parse_solver_spec",
    "split_list", "resolve_solvers", "sliced_wasserstein", "rmse", "max_err", "ReferenceCache",
    "aggregate", "markdown_table", "MemoryMeter", "DEMO_SOLVERS", "preferred_solvers",
]
