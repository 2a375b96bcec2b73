"""Fuzz the Python API (issue 10): random grids, shapes, dtypes, solvers and option values thrown at
``integrate``, ``sample``, ``encode`` and ``roundtrip``. Every call either returns a result that
passes the documented checks (finite, the input's shape and dtype) or raises a flowode error / a
ValueError or TypeError raised by flowode itself (never from inside torch, numpy or scipy) whose
message names an argument. Bounded to about 30 s in all (120 derandomized examples per test, under 15 s)."""

import math
import os
import traceback
import warnings

import pytest
import torch

import flowode

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FLOWODE_DIR = os.path.dirname(os.path.abspath(flowode.__file__))
GAUSS = flowode.Gaussian([0.5, -0.5], [0.5, 1.0])
SCHEDULES = {
    "discrete": flowode.DiscreteVPSchedule.linear(),
    "linear_vp": flowode.LinearVPSchedule(),
    "cosine_vp": flowode.CosineVPSchedule(),
    "edm": flowode.EDMSchedule(),
    "ve": flowode.VESchedule(),
}
SOLVERS = [n for n in flowode.solvers.available() if not n.startswith("scipy")] + ["scipy_rk45", "nonsense", "DDIM"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool, torch.complex64]
GRID_VALUES = st.sampled_from([0.0, 1e-4, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 80.0, 157.40728081040737, 500.0,
                               math.inf, -1.0, math.nan, 1e300])
OPTION_VALUES = st.sampled_from([0, 1, 2, 3, 0.5, -1, 1e-3, math.nan, math.inf, True, False, "True", "false", "no",
                                 "abc", "", None, [1, 2], "sigma", "lambda", "t"])
OPTION_NAMES = st.sampled_from(["eta", "corrector", "order", "rtol", "atol", "coordinates", "skip_prk_steps",
                                "lower_order_final", "variance", "max_nfe", "r", "warmup", "final", "rho", "offset",
                                "nonsense"])
GRID_DTYPES = st.sampled_from(["list", torch.float64, torch.float32, torch.float16, torch.int64, torch.bool])
#: the flowode errors a user may catch
FLOWODE_ERRORS = (flowode.GridError, flowode.SolverError, flowode.UnknownSolverError, flowode.MaxNFEError,
                  flowode.NetworkOutputError)


def _from_flowode(exc: BaseException) -> bool:
    """Whether the innermost frame that raised ``exc`` is flowode's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(FLOWODE_DIR + os.sep)


OUTCOMES: dict = {}


def _check_outcome(call, x):
    key = call.__qualname__.split(".")[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = call()
    except FLOWODE_ERRORS + (ValueError, TypeError) as exc:
        msg = str(exc)
        assert _from_flowode(exc), f"{type(exc).__name__} from outside flowode: {msg}\n" + "".join(
            traceback.format_tb(exc.__traceback__)[-3:])
        named = "`" in msg or "'" in msg or (isinstance(exc, flowode.NetworkOutputError) and "sigma=" in msg)
        assert named, f"the message names no argument: {msg}"
        OUTCOMES.setdefault(key, []).append(type(exc).__name__ + ": " + msg[:90])
        return None
    for res in ([out.x] if hasattr(out, "x") else [out.latent, out.reconstruction]):
        assert res.shape == x.shape and res.dtype == x.dtype, (res.shape, res.dtype, x.shape, x.dtype)
        assert torch.isfinite(res).all(), "a result with NaN/Inf"
    OUTCOMES.setdefault(key, []).append("ok")
    return out


def _fields(solver):
    import dataclasses

    cls = flowode.solvers.SOLVERS.get(solver)
    return [f.name for f in dataclasses.fields(cls) if f.init and f.name != "controller"] if cls else []


@st.composite
def problems(draw):
    sched = SCHEDULES[draw(st.sampled_from(sorted(SCHEDULES)))]
    batch = draw(st.integers(1, 3))
    dims = draw(st.sampled_from([(2,), (1, 2), (2, 1, 1)]))  # the Gaussian is 2-D: any shape holding 2 numbers
    dtype = draw(st.sampled_from(DTYPES[:2] * 6 + DTYPES[2:]))  # mostly float32 / float64 states
    x = torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).view(batch, *dims)
    x = x.to(dtype) if dtype != torch.bool else x > 0
    solver = draw(st.sampled_from(SOLVERS))
    # mostly the solver's own options (random values), sometimes any name
    own = _fields(solver)
    names = st.sampled_from(own * 4 + ["nonsense", "eta", "final", "rho"]) if own else OPTION_NAMES
    options = draw(st.dictionaries(names, OPTION_VALUES, max_size=draw(st.sampled_from([0, 0, 1, 2]))))
    return sched, x, solver, options


@st.composite
def grids(draw, sched):
    """Half the time a valid decode or encode grid of the schedule's levels, else anything."""
    if draw(st.booleans()):
        n = draw(st.integers(1, 5))
        levels = sorted(draw(st.lists(st.floats(sched.sigma_min, min(sched.sigma_max, 1e6)), min_size=n, max_size=n,
                                      unique=True)), reverse=True)
        levels = levels + ([0.0] if draw(st.booleans()) else [])
        if draw(st.booleans()):
            levels = levels[::-1]
    else:
        levels = draw(st.lists(GRID_VALUES, min_size=0, max_size=6))
    kind = draw(GRID_DTYPES)
    return levels if kind == "list" else torch.tensor(levels, dtype=torch.float64).to(kind)


class _Shaped(flowode.EpsilonModel):
    """The exact Gaussian model on any state shape holding two numbers per sample (``per_sample_network``:
    it takes per-sample levels like the analytic model it wraps)."""

    per_sample_network = True

    def __init__(self, sched):
        super().__init__(lambda x, t: x, sched)
        self._exact = GAUSS.model(sched)

    def network(self, x, sigma):  # in float64 (the analytic eps overflows float16 at large sigma), cast back
        return self._exact.network(x.reshape(x.shape[0], 2).double(), sigma).reshape(x.shape).to(x.dtype)


#: FLOWODE_FUZZ_EXAMPLES=2000 fuzzes deeper with fresh random examples (the suite runs 120 fixed ones per test)
_DEEP = int(os.environ.get("FLOWODE_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(max_examples=_DEEP or 120, deadline=None, derandomize=not _DEEP, database=None,
                    suppress_health_check=list(HealthCheck))


@SETTINGS
@given(problems(), st.data())
def test_fuzz_integrate(problem, data):
    sched, x, solver, options = problem
    grid = data.draw(grids(sched))
    _check_outcome(lambda: flowode.integrate(_Shaped(sched), x, grid, solver, **options), x)


@SETTINGS
@given(problems(), st.sampled_from([1, 2, 3, 5] * 3 + [-1, 0, 2.5, None, "3"]),
       st.sampled_from([None, "trailing", "leading", "linspace", "quadratic", "uniform_t", "logsnr", "karras", "x"]))
def test_fuzz_sample(problem, steps, spacing):
    sched, x, solver, options = problem
    _check_outcome(lambda: flowode.sample(_Shaped(sched), x, steps, solver=solver, spacing=spacing, **options), x)


@SETTINGS
@given(problems(), st.sampled_from([1, 2, 4] * 3 + [0, 3.0, None]),
       st.sampled_from([None, "trailing", "logsnr", "karras"]))
def test_fuzz_encode(problem, steps, spacing):
    sched, x, solver, options = problem
    _check_outcome(lambda: flowode.encode(_Shaped(sched), x, steps, solver=solver, spacing=spacing, **options), x)


@SETTINGS
@given(problems(), st.sampled_from([1, 2, 4] * 3 + [0, None]),
       st.sampled_from(["ddim", "heun", "dpm_solver++_2m", "fixed_point", "edict", "bdia", "ddpm", "nope"]))
def test_fuzz_roundtrip(problem, steps, method):
    sched, x, _, options = problem
    options = {k: v for k, v in options.items() if k not in ("variance",)}
    _check_outcome(lambda: flowode.roundtrip(_Shaped(sched), x, steps, method, reference=False, **options), x)
