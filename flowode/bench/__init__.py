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
   reference is cached per ``(problem, model fingerprint, seed, samples, sigma_from, sigma_to)`` in
   memory and on disk
   (``<results>.refs/``), so it is computed once per grid end pair, not once per solver;
5. for problems with a data sampler, the sliced 2-Wasserstein distance between the samples and as
   many fresh data samples (``sw``), together with the same distance for the reference samples
   (``sw_ref``: the finite-sample floor that no solver can beat).

Each finished cell becomes one JSON object on one line of the results file, appended with a single
``os.write`` on an ``O_APPEND`` descriptor followed by ``fsync``; a killed run therefore leaves only
complete lines; a torn last line (power loss, a full disk) is skipped and reported on reading, and
the next append starts on a fresh line. Re-running the same grid skips every cell whose key (which
holds the model's fingerprint, the device and the timing repeats) is already in the file.

Fields of a record: ``key, problem, solver, options, label, spacing, seed, samples, nfe_budget,
nfe`` (exact, ``sol.nfe``), ``steps, sigma_from, sigma_to, rmse, max_err`` (max absolute error
over all entries), ``sw, sw_ref, seconds, peak_mem_bytes, mem_method, reference, dtype, device,
error`` (the message when the cell failed; such cells are recorded, and rerun only with
``retry_failed``), ``flowode``
(version) and ``finished`` (UTC time).

Layout (one module per concern; every public name is importable from ``flowode.bench``):

* :mod:`~flowode.bench.problems`: :class:`Problem`, the registry :data:`PROBLEMS`, ``module:attr``
  plugins, :func:`as_problem` / :func:`get_problem`;
* :mod:`~flowode.bench.spec`: the solver spec language ``name[k=v]``, :class:`BenchSpec`,
  :class:`Cell`, :func:`cell_key`;
* :mod:`~flowode.bench.store`: the JSON-lines results file (:func:`append_record`, :func:`load_results`,
  :func:`read_results`);
* :mod:`~flowode.bench.metrics`: :func:`rmse`, :func:`max_err`, :func:`sliced_wasserstein`,
  :class:`ReferenceCache`;
* :mod:`~flowode.bench.memory`: :class:`MemoryMeter`;
* :mod:`~flowode.bench.engine`: :func:`run_cell`, :func:`run_bench`;
* :mod:`~flowode.bench.report`: :func:`aggregate`, :func:`markdown_table`, and flowode against
  peers: :func:`headline_table`, :func:`method_table`, :func:`failed_methods`, :func:`full_range`;
* :mod:`~flowode.bench.peers`: diffusers' and k-diffusion's samplers as engine solvers
  (``diffusers:ddim``, ``k-diffusion:dpmpp_2m``; :class:`Peer`, :data:`PEERS`).
"""

from .engine import run_bench, run_cell
from .memory import MemoryMeter
from .metrics import ReferenceCache, max_err, rmse, sliced_wasserstein
from .peers import PEERS, DiffusersPeer, EpsCounter, KDiffusionPeer, Peer, PeerRun, get_peer, is_peer, register_peer
from .problems import PROBLEMS, Problem, as_problem, get_problem, register_problem
from .report import aggregate, failed_methods, full_range, headline_table, markdown_table, method_table
from .spec import (
    DEMO_SOLVERS,
    OPTIMIZED,
    BenchSpec,
    Cell,
    cell_key,
    parse_solver_spec,
    preferred_solvers,
    resolve_solvers,
    split_list,
)
from .store import append_record, load_results, read_results

__all__ = [
    # problems
    "Problem", "PROBLEMS", "register_problem", "get_problem", "as_problem",
    # spec
    "BenchSpec", "Cell", "cell_key", "parse_solver_spec", "split_list", "resolve_solvers", "DEMO_SOLVERS",
    "OPTIMIZED", "preferred_solvers",
    # store, metrics, memory
    "load_results", "read_results", "append_record", "rmse", "max_err", "sliced_wasserstein", "ReferenceCache",
    "MemoryMeter",
    # engine, report
    "run_bench", "run_cell", "aggregate", "markdown_table", "full_range", "headline_table", "method_table",
    "failed_methods",
    # peers
    "Peer", "PeerRun", "EpsCounter", "DiffusersPeer", "KDiffusionPeer", "PEERS", "register_peer", "get_peer",
    "is_peer",
]
