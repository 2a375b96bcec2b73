"""Learned solvers: timesteps and per-step multistep weights fitted to one model and one NFE budget.

A learned solver is the DPM-Solver++ multistep update with two things fitted against teacher
trajectories (a tight reference solve of the *same* model from the *same* noise), in the spirit of
LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs", ICLR 2025, arXiv 2405.15506:
the timesteps, by backpropagation through the solver against a high-NFE teacher; its soft
teacher-forcing surrogate loss is not used here) and S4S (Frankel et al., "S4S: Solving for a
Diffusion Model Solver", ICML 2025, arXiv 2502.17423: the solver's coefficients matched to a
teacher's output; S4S-Alt alternates them with the timesteps -- here both are fitted jointly):

* the noise levels ``sigma_max = s_0 > s_1 > ... > s_{S-1} > s_S = 0`` (``S = nfe`` steps, one
  evaluation each); parameterised monotone, ``log s_k = L_hi - (L_hi - L_last) cumsum(softmax(z))_k``
  for ``k = 1 .. S-1`` with ``L_last = L_lo + sigmoid(u) (L_hi - L_lo)``, so ``s_0 = sigma_max`` and
  the final 0 are fixed and every parameter value is a valid grid;
* per step ``i``, the weights ``c_{i,j}`` of the last ``history`` data predictions in

      xbar_{i+1} = r_i xbar_i + (1 - r_i) D_i,     D_i = sum_j c_{i,j} x0_{i-j},     r_i = s_{i+1} / s_i

  (``xbar = x / alpha``; with ``D_i`` the exact exponential integral of a polynomial through the
  ``x0`` history this is DPM-Solver++ (Lu et al. 2022b, arXiv 2211.01095, eq. 3.5 / Algorithm 2)).
  ``c_{i,j} = base_{i,j}(s) + delta_{i,j}`` with ``base`` the DPM-Solver++(2M) weights on the current
  grid (``(1 + 1/(2 r), -1/(2 r))``, ``r = h_{i-1} / h_i``; first order at the first step and at
  the step to 0) or DDIM's ``(1, 0, ...)``, and ``sum_j delta_{i,j} = 0`` (consistency: a constant
  ``x0`` is kept exactly). At ``delta = 0`` on a built-in grid the learned solver *is*
  ``dpm_solver++_2m`` (or ``ddim``) to round-off; the fitted ``delta`` of the last step (to 0) is a
  learned extrapolation of the last ``x0`` predictions;
* optionally (``corrector=True``) a UniC-type corrector (Zhao et al., NeurIPS 2023, sec. 3): once the
  network has been evaluated at the predicted ``x_i``, the step ``i-1 -> i`` is redone with that
  prediction added, ``xbar_i^c = r_{i-1} xbar_{i-1} + (1 - r_{i-1}) sum_j e_{i,j} x0_{i-j}`` (``j = 0
  .. history``, ``e`` = UniC's weights (:func:`corrector_weights`) + corrections summing to 0), no
  extra evaluation; at zero corrections it is ``unipc[predictor=dpm_solver++]``;
* optionally (``shift=True``) per step after the first the offset ``c_i`` of the level the network
  is evaluated at, ``sigma_in = s_i e^(c_i)`` on the rescaled state (a learned "time shift", Li et
  al., ICLR 2024, arXiv 2305.15583).

Gradients. The solve runs under the one driver (:func:`flowode.integrate` with ``grad="autograd"``
or ``"checkpoint"``); the state's gradient flows through the network by autograd. The driver's grid
is made of floats, so the levels enter the update as straight-through tensors (value: the float;
gradient: the parameter's), and the dependence of the prediction on its own noise level at a fixed
state, ``d x0 / d log sigma``, is a one-sided finite difference (``h = 1e-3``, one extra evaluation
per step, training only) -- so the level gradient is the total derivative, not only that of the
update formula. Optimiser: Adam on ``(u, z, delta)``.

Held-out evaluation. :func:`learn_solver` takes separate calibration and validation batches (it
refuses a validation batch that shares a start state with the calibration one), evaluates the
validation objective every ``val_every`` iterations and keeps the parameters with the best
validation value (iteration 0, the base solver on its best built-in spacing, included), stopping
after ``patience`` evaluations without improvement. Both errors (RMSE and median per-sample error)
are stored in the artefact.

Objective: ``mean_n log(e_n^2 + floor^2) / 2`` with ``e_n`` the per-sample RMSE against the teacher
(``objective="log"``, default), the batch MSE (``"mse"``) or their sum in log form (``"log+rmse"``).
On multimodal data a few samples per batch flow into another mode at low NFE; their errors are O(1)
and decide an MSE objective, which then fits the calibration batch's few switchers (the overfitting
measured for ``optimize_grid``). The log objective weights every sample's *relative* improvement
equally. Measured on ``gmm64`` (256 calibration / 256 validation / 512 test samples, NFE 10): the
log fit takes the test median from 4.6e-2 (base, validation) to 1.7e-3 and leaves the RMSE (1.4e-1,
the switchers) alone; the MSE fit reaches a validation RMSE of 2.2e-2 but a test RMSE of 5.1e-2 (it
fits the validation batch's switchers through the model selection), median 2.1e-2. Table in
docs/learned-solvers.md.

Artefacts are JSON (:meth:`LearnedSolver.save`, :func:`load_learned`): format ``flowode.learned``,
the model's fingerprint (:func:`~flowode.bench.problems.model_fingerprint`), sample shape and
dtype, the base solver, NFE, grid, weights and both errors. A solver built from an artefact refuses
to run a model with another fingerprint (``check_model=False`` overrides) and a grid other than its
own; ``flowode.sample(model, x, nfe=N, solver=learned)`` and ``resolve_grid`` give its own grid.
Usable as ``solver=`` everywhere, by instance or by name: ``"learned[path=file.json]"``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .solvers import SolverError, Step, Stepper
from .solvers.boundary import Boundary
from .solvers.registry import register_artefact

if TYPE_CHECKING:  # pragma: no cover
    from .models import EpsilonModel
    from .solvers.run import Run

__all__ = ["LearnedSolver", "LearnedSpec", "learn_solver", "load_learned", "teacher_solve", "per_sample_errors",
           "BASES", "OBJECTIVES", "ModelMismatchError"]

#: base solvers whose weights the learned ones start from (and correct)
BASES = ("dpm_solver++_2m", "ddim")
OBJECTIVES = ("log", "mse", "log+rmse")
_FORMAT = "flowode.learned"
_VERSION = 2  # 2: the corrector (version-1 files load as corrector=False)
_FD_H = 1e-3  # log-sigma step of the finite difference d x0 / d log sigma (training only)
_FLOOR = 1e-12  # per-sample error floor of the log objective


class ModelMismatchError(SolverError):
    """A learned solver run on a model other than the one it was fitted to."""


# ------------------------------------------------------------------------------------------- maths
def base_weights(base: str, history: int, levels: Sequence[Any], i: int) -> list[Any]:
    """The base solver's weights of ``x0_i, x0_{i-1}, ...`` (newest first, ``history`` entries) at
    step ``i`` of the grid ``levels`` (floats or 0-d tensors; differentiable in them).

    ``dpm_solver++_2m``: ``(1 + 1/(2r), -1/(2r))`` with ``r = h_{i-1} / h_i``, ``h_i = log(s_i /
    s_{i+1})`` (Lu et al. 2022b, Algorithm 2); first order (``(1, 0)``) at the first step and at the
    step to 0, as flowode's ``dpm_solver++_2m``. ``ddim``: ``(1, 0, ...)``.
    """
    w: list[Any] = [1.0] + [0.0] * (history - 1)
    nxt = levels[i + 1]
    nxt_value = float(nxt.detach() if isinstance(nxt, Tensor) else nxt)
    if base == "dpm_solver++_2m" and history >= 2 and i >= 1 and nxt_value > 0:
        lg = torch.log if isinstance(levels[i], Tensor) else math.log
        h = lg(levels[i] / levels[i + 1])
        h_prev = lg(levels[i - 1] / levels[i])
        half_inv_r = h / (2 * h_prev)
        w[0], w[1] = 1 + half_inv_r, -half_inv_r
    return w


def corrector_weights(history: int, levels: Sequence[Any], i: int, used: int) -> list[Any]:
    """The base corrector's weights of ``x0_i, x0_{i-1}, ...`` (newest first, ``history + 1`` entries)
    for the start of step ``i >= 1``: the step ``s_{i-1} -> s_i`` redone with the prediction ``x0_i``
    made at its (predicted) end, as UniC (Zhao et al., NeurIPS 2023, sec. 3) with ``B(h) = expm1(-h)``
    ("bh2") on top of the ``used`` points the predictor of step ``i - 1`` combined (at most 2 enter
    here: UniC-1 ``(1/2, 1/2)``, UniC-2 from the ``R_2 rho = b_2`` system), in the form

        xbar_i^c = r xbar_{i-1} + (1 - r) D^c,   D^c = m0 + rho_1 (m1 - m0) / r_1 + rho_2 (x0_i - m0)

    (``m0 = x0_{i-1}``, ``m1 = x0_{i-2}``, ``r = s_i / s_{i-1}``, ``h = log(s_{i-1} / s_i)``,
    ``r_1 = -log(s_{i-2} / s_{i-1}) / h``). With zero corrections and ``history = 2`` on
    ``dpm_solver++_2m`` weights this is flowode's ``unipc[predictor=dpm_solver++]`` (tests/test_learned.py).
    Differentiable in the levels (floats or 0-d tensors): the system of
    :func:`flowode.solvers.exponential.updates._system` (numpy, floats) solved here in closed form."""
    w: list[Any] = [0.0] * (history + 1)
    p = min(used, 2, history)
    if p <= 1:
        w[0], w[1] = 0.5, 0.5
        return w
    tens = isinstance(levels[i], Tensor)
    lg: Any = torch.log if tens else math.log
    em1: Any = torch.expm1 if tens else math.expm1
    h = lg(levels[i - 1] / levels[i])
    hh = -h
    b_h = em1(hh)
    g1 = em1(hh) / hh - 1.0
    b1 = g1 / b_h
    b2 = (g1 / hh - 0.5) * 2.0 / b_h
    r1 = -lg(levels[i - 2] / levels[i - 1]) / h
    rho1 = (b1 - b2) / (1.0 - r1)
    rho2 = b1 - rho1
    w[0], w[2] = rho2, rho1 / r1
    w[1] = 1.0 - rho2 - rho1 / r1
    return w


def multistep_x0_update(x: Tensor, a_s: Any, a_t: Any, ratio: Any, x0s: Sequence[Tensor],
                        weights: Sequence[Any]) -> Tensor:
    """``x_t = a_t (ratio x_s / a_s + (1 - ratio) sum_j w_j x0_j)``: one step of the learned
    solver (module docstring), ``ratio = s_t / s_s``, ``a = alpha``; ``x0s`` newest first."""
    d = x0s[0] * weights[0]
    for w, x0 in zip(weights[1:], x0s[1:]):
        d = d + x0 * w
    return a_t * (ratio * (x / a_s) + (1 - ratio) * d)


def per_sample_errors(x: Tensor, reference: Tensor) -> Tensor:
    """Per-sample RMSE over every entry of a sample, ``(B,)`` float64."""
    diff = (x.to(torch.float64) - reference.to(torch.float64)).reshape(x.shape[0], -1)
    return torch.sqrt(torch.mean(diff * diff, dim=1))


def _summary(e: Tensor) -> dict[str, float]:
    e = e.detach().to(torch.float64)
    return {"rmse": float(torch.sqrt(torch.mean(e * e))), "median": float(torch.median(e)),
            "log_mean": float(torch.mean(torch.log(e * e + _FLOOR**2)) / 2)}


def _objective(e: Tensor, objective: str) -> Tensor:
    """``log``: mean per-sample log-error; ``mse``: mean squared error; ``log+rmse``: their sum in log
    form, ``mean_n log e_n + log RMSE`` (the typical sample and the tail weighted alike)."""
    log_mean = torch.mean(torch.log(e * e + _FLOOR**2)) / 2
    if objective == "log":
        return log_mean
    if objective == "mse":
        return torch.mean(e * e)
    return log_mean + torch.log(torch.mean(e * e) + _FLOOR**2) / 2


class _Params(torch.nn.Module):
    """The unconstrained parameters ``(u, z, delta)`` and the map to levels and weights."""

    def __init__(self, steps: int, history: int, sigma_min: float, sigma_max: float, init: Tensor,
                 corrector: bool = False, shifts: bool = False, last_floor: float = 1e-2) -> None:
        super().__init__()
        self.steps, self.history = steps, history
        self.sigma_max = float(sigma_max)
        self.l_lo, self.l_hi = math.log(sigma_min), math.log(sigma_max)
        logs = np.log(init[:-1].numpy())
        # the last level starts at least `last_floor` of the log range above sigma_min: sigmoid(u) has no
        # gradient at 0 (1 % from a built-in grid; a fitted grid is taken as it is)
        frac = float(np.clip((logs[-1] - self.l_lo) / (self.l_hi - self.l_lo), last_floor, 1 - 1e-6))
        self.u = torch.nn.Parameter(torch.tensor(math.log(frac / (1 - frac)), dtype=torch.float64))
        d = -np.diff(logs)
        z = np.log(np.maximum(d / d.sum(), 1e-12)) if steps > 1 else np.zeros(0)
        self.z = torch.nn.Parameter(torch.tensor(z - (z.mean() if z.size else 0.0), dtype=torch.float64))
        self.delta = torch.nn.Parameter(torch.zeros(steps, max(history - 1, 0), dtype=torch.float64))
        self.cdelta = torch.nn.Parameter(torch.zeros(steps if corrector else 0, history, dtype=torch.float64))
        self.shift = torch.nn.Parameter(torch.zeros(steps - 1 if shifts else 0, dtype=torch.float64))

    def start_from(self, spec: "LearnedSpec") -> None:
        """Set the weight corrections and shifts to those of a fitted artefact (same shape)."""
        with torch.no_grad():
            if self.delta.numel():
                self.delta.copy_(torch.tensor(spec.deltas, dtype=torch.float64)[:, 1:])
            if self.cdelta.numel() and spec.corrector_deltas is not None:
                self.cdelta.copy_(torch.tensor(spec.corrector_deltas, dtype=torch.float64)[:, 1:])
            if self.shift.numel() and spec.shifts is not None:
                self.shift.copy_(torch.tensor(spec.shifts[1:], dtype=torch.float64))

    def levels(self) -> list[Tensor]:
        """``S + 1`` 0-d tensors: ``sigma_max``, the learned levels, 0."""
        l_last = self.l_lo + torch.sigmoid(self.u) * (self.l_hi - self.l_lo)
        out = [torch.tensor(self.sigma_max, dtype=torch.float64)]
        if self.steps > 1:
            cum = torch.cumsum(torch.softmax(self.z, 0), 0)
            inner = torch.exp(self.l_hi - (self.l_hi - l_last) * cum)
            out += [inner[k] for k in range(self.steps - 1)]
        return out + [torch.tensor(0.0, dtype=torch.float64)]

    def deltas(self) -> Tensor:
        """``(S, history)``: the weight corrections, each row summing to 0."""
        if self.history == 1:
            return torch.zeros(self.steps, 1, dtype=torch.float64)
        return torch.cat([-self.delta.sum(1, keepdim=True), self.delta], 1)

    def shift_of(self, i: int) -> Optional[Tensor]:
        """The network-input shift ``c_i`` of step ``i`` (``None``: not learned; step 0 has none)."""
        return self.shift[i - 1] if self.shift.numel() and i > 0 else None

    def shifts(self) -> Optional[list[float]]:
        return [0.0] + self.shift.detach().tolist() if self.shift.numel() else None

    def corrector_deltas(self) -> Optional[Tensor]:
        """``(S, history + 1)``: the corrector's weight corrections (rows sum to 0), or ``None``."""
        if self.cdelta.shape[0] == 0:
            return None
        return torch.cat([-self.cdelta.sum(1, keepdim=True), self.cdelta], 1)


# --------------------------------------------------------------------------------------- the artefact
@dataclass
class LearnedSpec:
    """Everything a learned solver is: what :meth:`LearnedSolver.save` writes.

    Attributes:
        base: the base solver (:data:`BASES`); history: x0 predictions per update.
        nfe: the budget (= steps: one evaluation per step); sigmas: the grid (``nfe + 1`` levels, ends at 0).
        deltas: ``(nfe, history)`` weight corrections (rows sum to 0).
        corrector: apply the learned UniC-type corrector at the start of every step but the first
            (format version 2; version-1 files have none); corrector_deltas: ``(nfe, history + 1)``
            corrections of its weights (rows sum to 0; row 0 unused).
        shifts: per step, the offset ``c_i`` in ``log sigma`` of the level the network is evaluated at,
            ``sigma_in = s_i e^(c_i)`` with the state rescaled to it, ``x_in = x alpha(sigma_in) /
            alpha(s_i)`` (clamped to the trained range; ``c_0 = 0``); ``None``: none (version 2).
        fingerprint, shape, dtype: the model it was fitted to and its sample shape and dtype.
        errors: ``{"calibration": {...}, "validation": {...}}`` after fitting, ``"base_calibration"`` /
            ``"base_validation"`` for the base solver on its best built-in spacing (each ``rmse``,
            ``median``, ``log_mean``).
        meta: how it was fitted (objective, iterations, batch sizes, seeds, teacher, problem, ...).
    """

    base: str
    history: int
    nfe: int
    sigmas: list[float]
    deltas: list[list[float]]
    corrector: bool = False
    corrector_deltas: Optional[list[list[float]]] = None
    shifts: Optional[list[float]] = None
    fingerprint: Optional[str] = None
    shape: Optional[list[int]] = None
    dtype: Optional[str] = None
    errors: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, doc: Any, where: str = "the document") -> "LearnedSpec":
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{where} is not a flowode learned-solver file (expected format {_FORMAT!r}); "
                             "write one with `flowode learn` or flowode.learn_solver(...).save(path).")
        if int(doc.get("version", 0)) > _VERSION:
            raise ValueError(f"{where} has learned-solver format version {doc['version']}; this flowode reads "
                             f"version {_VERSION}. Upgrade flowode.")
        keys = [f for f in cls.__dataclass_fields__]
        missing = [k for k in ("base", "history", "nfe", "sigmas", "deltas") if k not in doc]
        if missing:
            raise ValueError(f"{where} lacks {missing}.")
        spec = cls(**{k: doc[k] for k in keys if k in doc})
        spec.validate(where)
        return spec

    def validate(self, where: str = "the learned solver") -> None:
        if self.base not in BASES:
            raise ValueError(f"{where}: unknown base {self.base!r}; one of {', '.join(BASES)}.")
        s = [float(v) for v in self.sigmas]
        if len(s) != self.nfe + 1 or s[-1] != 0.0 or any(b >= a for a, b in zip(s, s[1:])):
            raise ValueError(f"{where}: `sigmas` must be {self.nfe + 1} strictly decreasing levels ending at 0, "
                             f"got {s}.")
        if len(self.deltas) != self.nfe or any(len(r) != self.history for r in self.deltas):
            raise ValueError(f"{where}: `deltas` must be {self.nfe} rows of {self.history} weights.")
        cd = self.corrector_deltas
        if cd is not None and (len(cd) != self.nfe or any(len(r) != self.history + 1 for r in cd)):
            raise ValueError(f"{where}: `corrector_deltas` must be {self.nfe} rows of {self.history + 1} weights.")
        sh = self.shifts
        if sh is not None and (len(sh) != self.nfe or not all(math.isfinite(float(v)) for v in sh)):
            raise ValueError(f"{where}: `shifts` must be {self.nfe} finite numbers.")


@dataclass
class LearnedSolver(Stepper):
    """A solver fitted by :func:`learn_solver` to one model and one NFE budget (module docstring).

    Options:
        path: the JSON artefact to load (``"learned[path=file.json]"`` from the CLI or bench specs).
        check_model: refuse a model whose fingerprint differs from the artefact's (default ``True``;
            ``False`` runs it anyway, e.g. on a fine-tuned copy of the network).

    The grid is the solver's own (:attr:`sigmas`): ``integrate`` with another grid is an error;
    ``flowode.sample(model, x, nfe=solver.spec.nfe, solver=solver)`` uses it.
    """

    path: str = ""
    check_model: bool = True

    name = "learned"
    order = 1  # no convergence order: it is fitted to one budget
    nfe_per_step = 1.0
    multistep = True
    encodes = False
    default_spacing = "learned"  # its own grid (resolve_grid asks own_grid); no built-in spacing has this name
    source = ("timesteps (LD3, Tong et al. ICLR 2025) and multistep weights (S4S, Frankel et al. ICML 2025) fitted to "
              "teacher endpoints, on DPM-Solver++ (Lu et al. 2022b, eq. 3.5)")

    def __post_init__(self) -> None:
        self._spec: Optional[LearnedSpec] = None
        self._params: Optional[_Params] = None  # training mode: levels and weights as tensors
        self._verified: dict[int, str] = {}
        if self.path:
            if not os.path.exists(self.path):
                raise SolverError(f"`path` of 'learned': no file {self.path!r}; write one with `flowode learn`.")
            try:
                with open(self.path, encoding="utf-8") as f:
                    doc = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SolverError(f"`path` of 'learned': {self.path!r} is not JSON ({exc}); give a file written by "
                                  "`flowode learn` or flowode.learn_solver(...).save(path).") from None
            try:
                self._spec = LearnedSpec.from_json(doc, repr(self.path))
            except (ValueError, TypeError, json.JSONDecodeError) as exc:
                raise SolverError(f"`path` of 'learned': {exc}") from None

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_spec(cls, spec: LearnedSpec, check_model: bool = True) -> "LearnedSolver":
        spec.validate()
        out = cls(check_model=check_model)
        out._spec = spec
        return out

    @property
    def spec(self) -> LearnedSpec:
        if self._spec is None:
            raise SolverError("solver 'learned' needs an artefact: `learned[path=file.json]` (written by "
                              "`flowode learn`) or flowode.load_learned(path).")
        return self._spec

    @property
    def sigmas(self) -> Tensor:
        """The solver's own grid (float64, ends at 0)."""
        return torch.tensor([float(v) for v in self.spec.sigmas], dtype=torch.float64)

    def own_grid(self, steps: Optional[int] = None, nfe: Optional[int] = None) -> Tensor:
        """The grid for a request of ``steps`` or ``nfe`` (either must equal the fitted budget)."""
        from .grids import GridError

        n = self.spec.nfe
        for key, v in (("steps", steps), ("nfe", nfe)):
            if v is not None and v != n:
                raise GridError(f"this learned solver was fitted for {n} steps / NFE {n}, got `{key}`={v}; learn "
                                f"one for that budget (`flowode learn --nfe {v}`) or ask for {key}={n}.")
        return self.sigmas

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the artefact as JSON (floats as Python's exact repr)."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.spec.to_json(), f, indent=1, allow_nan=False)
            f.write("\n")

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self._spec is not None:
            d.update({"base": self._spec.base, "nfe": self._spec.nfe, "errors": self._spec.errors})
        return d

    # ------------------------------------------------------------------------------------ the step
    def check(self, run: "Run") -> None:
        super().check(run)
        spec = self.spec
        own = [float(v) for v in spec.sigmas]
        if len(run.grid) != len(own) or any(abs(a - b) > 1e-12 * max(abs(b), 1e-300) for a, b in zip(run.grid, own)):
            raise SolverError(
                f"solver 'learned' runs on its own grid of {spec.nfe} steps ({own[0]:.6g} -> 0), got a grid of "
                f"{len(run.grid) - 1} steps ({run.grid[0]:.6g} -> {run.grid[-1]:.6g}). Pass `solver.sigmas` to "
                f"integrate, or use flowode.sample(model, x, nfe={spec.nfe}, solver=...)."
            )
        if self.check_model and spec.fingerprint is not None and not getattr(run, "dry_run", False):
            fp = self._fingerprint(run.model)
            if fp != spec.fingerprint:
                raise ModelMismatchError(
                    f"this learned solver was fitted to the model with fingerprint {spec.fingerprint} "
                    f"({spec.meta.get('problem', 'unknown problem')}), but the model given has fingerprint {fp}: "
                    "its timesteps and weights are tuned to the other network. Learn one for this model "
                    "(`flowode learn`), or pass check_model=False (`learned[path=...,check_model=false]`) to run it "
                    "anyway."
                )

    def _fingerprint(self, model: "EpsilonModel") -> str:
        hit = self._verified.get(id(model))
        if hit is None:
            hit = self._verified[id(model)] = model_fingerprint_of(model, self.spec.shape, self.spec.dtype)
        return hit

    def init(self, run: "Run") -> Any:
        return ((), None)  # (the x0 history, newest first; the previous step's (x, weights used))

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO  # r = 0: x_next = D, the learned combination of the last x0s

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        spec, i = self.spec, run.step
        k = spec.history
        hist_prev, last = state
        deltas: Any
        cdeltas: Any
        if self._params is not None:  # training: straight-through levels, total derivative in sigma
            levels = self._params.levels()
            deltas, cdeltas = self._params.deltas()[i], self._params.corrector_deltas()
            lv: list[Any] = [_straight(lv_, float(g)) for lv_, g in zip(levels, run.grid)]

            def a(j: int) -> Any:
                return _alpha_st(run, lv[j], float(run.grid[j]))

            log_in = torch.log(lv[i])
            shift = self._params.shift_of(i)
            if shift is not None:  # the network's input level, inside the trained range
                log_in = torch.clamp(log_in + shift, math.log(run.sigma_min), math.log(run.sigma_max))
            s_in = float(torch.exp(log_in.detach())) if shift is not None else sigma
            x_in = x * (_alpha_st(run, torch.exp(log_in), s_in) / a(i)) if shift is not None else x
            pred = run.predict(x_in, s_in)
            x0 = pred.x0
            if i > 0 or shift is not None:
                x0 = x0 + (log_in - math.log(s_in)) * _dx0_dlogsigma(run, x_in, s_in, x0)
        else:
            deltas, cdeltas = spec.deltas[i], spec.corrector_deltas
            lv = list(run.grid)

            def a(j: int) -> Any:
                return run.alpha(float(run.grid[j]))

            c = spec.shifts[i] if spec.shifts is not None else 0.0
            if c != 0.0:
                s_in = min(max(sigma * math.exp(c), run.sigma_min), run.sigma_max)
                pred = run.predict(x * (run.alpha(s_in) / run.alpha(sigma)), s_in)
            else:
                pred = run.predict(x, sigma)
            x0 = pred.x0
        revised = None
        if spec.corrector and last is not None:  # UniC-type: redo step i-1 with x0_i (no extra evaluation)
            x_prev, used = last
            chist = ((x0,) + tuple(hist_prev))[:k + 1]
            cbase = corrector_weights(k, lv, i, used)
            cd = cdeltas[i] if cdeltas is not None else [0.0] * (k + 1)
            x = revised = multistep_x0_update(x_prev, a(i - 1), a(i), lv[i] / lv[i - 1], chist,
                                              _folded(cbase, cd, len(chist)))
        hist = ((x0,) + tuple(hist_prev))[:k]
        w = _folded(base_weights(spec.base, k, lv, i), deltas, len(hist))
        x_next = multistep_x0_update(x, a(i), a(i + 1), lv[i + 1] / lv[i], hist, w)
        return Step(x_next, (hist, (x, len(hist))), pred, revised, {"orders": len(hist),
                                                                    "corrected_steps": revised is not None})


def _folded(base: Sequence[Any], deltas: Sequence[Any], n: int) -> list[Any]:
    """``base + deltas`` for the ``n`` points there are; the weights of the missing ones (warm-up) go to
    the newest point, so the weights still sum to one (consistency)."""
    w = [base[j] + deltas[j] for j in range(n)]
    if n < len(base):
        w[0] = w[0] + sum(base[j] + deltas[j] for j in range(n, len(base)))
    return w


def _straight(t: Tensor, value: float) -> Tensor:
    """``value`` with the gradient of ``t`` (the driver's float grid, the parameter's derivative)."""
    return t - t.detach() + value


def _alpha_st(run: "Run", s: Tensor, sigma: float) -> Any:
    """``alpha(sigma)`` with its derivative in ``log sigma`` (a central difference of ``run.alpha``)."""
    a = run.alpha(sigma)
    if sigma == 0.0 or not s.requires_grad:
        return a
    da = (run.alpha(sigma * math.exp(_FD_H)) - run.alpha(sigma * math.exp(-_FD_H))) / (2 * _FD_H)
    return a + (torch.log(s) - math.log(sigma)) * da


def _dx0_dlogsigma(run: "Run", x: Tensor, sigma: float, x0: Tensor) -> Tensor:
    """``d x0 / d log sigma`` at the fixed state ``x``: a one-sided difference from ``x0`` (the
    prediction at ``sigma``) to ``sigma e^(+-h)``, towards the inside of the trained range; one
    extra evaluation, no graph."""
    up = sigma * math.exp(_FD_H)
    other = up if up <= run.sigma_max else sigma * math.exp(-_FD_H)
    if other < run.sigma_min:  # a range narrower than 2 h: no derivative (the level gets the update's only)
        return torch.zeros_like(x0)
    with torch.no_grad():
        return (run.predict(x.detach(), other).x0 - x0.detach()) / math.log(other / sigma)


register_artefact(LearnedSolver)


def model_fingerprint_of(model: "EpsilonModel", shape: Optional[Sequence[int]], dtype: Optional[str]) -> str:
    """:func:`~flowode.bench.problems.model_fingerprint` of ``model`` for samples of ``shape`` / ``dtype``;
    for a network its weights, schedule and parameterisation only (``probe_networks=False``: its float32
    output differs in the last digits between thread counts and machines)."""
    from .bench.problems import Problem, model_fingerprint

    if shape is None:
        raise SolverError("the learned solver has a fingerprint but no sample shape; it cannot check the model.")
    dt = getattr(torch, str(dtype or "float64").replace("torch.", ""))
    prob = Problem(name="learned", model=model, shape=tuple(int(v) for v in shape), dtype=dt)
    return model_fingerprint(prob, probe_networks=False)


def teacher_solve(model: "EpsilonModel", x: Tensor, *, steps: Optional[int] = None, rtol: float = 1e-10) -> Tensor:
    """The teacher's endpoints at ``sigma = 0`` of start states ``x`` at ``sigma_max``.

    ``steps=None``: :func:`~flowode.analytic.reference_solve` (scipy DOP853 at ``rtol = atol``;
    for a network it stops at ``sigma_min`` and returns the denoised estimate there). ``steps=N``:
    ``dpm_solver++_3m`` on ``N`` ``logsnr`` steps -- for float32 networks, where an adaptive solve at a
    tight tolerance is slow (the digits network: 3063 evaluations at ``rtol = 1e-6``, since the
    discrete schedule's field has kinks at the integer timesteps and the network float32 round-off).
    """
    from .analytic import reference_solve
    from .grids import sigma_grid
    from .integrate import integrate

    sched = model.schedule
    if steps is None:
        return reference_solve(model, x, float(sched.sigma_max), 0.0, rtol=rtol, atol=rtol)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` of the teacher must be a positive integer, got {steps!r}.")
    return integrate(model, x, sigma_grid(sched, steps, "logsnr"), "dpm_solver++_3m").x


def load_learned(path: Union[str, os.PathLike], *, check_model: bool = True) -> LearnedSolver:
    """The learned solver saved at ``path`` (``check_model=False``: run it on any model)."""
    return LearnedSolver(path=os.fspath(path), check_model=check_model)


# ------------------------------------------------------------------------------------------ fitting
def _is_start(v: Any) -> bool:
    """One start of the fit (a spacing name or an explicit grid) rather than a list of them."""
    return isinstance(v, (str, Tensor, np.ndarray)) or (isinstance(v, (list, tuple)) and len(v) > 0
                                            and all(isinstance(e, (int, float)) for e in v))


def _start_grid(grid: Any, nfe: int, smax: float, smin: float) -> Tensor:
    """An explicit start grid of ``spacing_init``, checked: ``nfe + 1`` strictly decreasing levels
    from ``sigma_max`` to 0, the last nonzero one at least ``sigma_min``."""
    try:
        g = torch.as_tensor(grid, dtype=torch.float64).detach().flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"`spacing_init` entry {grid!r}: give a spacing name or a grid (a sequence of "
                         "floats).") from None
    ok = (len(g) == nfe + 1 and bool(torch.isfinite(g).all()) and abs(float(g[0]) - smax) <= 1e-9 * smax
          and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all()) and (nfe == 1 or float(g[-2]) >= smin * (1 - 1e-12)))
    if not ok:
        shown = ", ".join(f"{v:.4g}" for v in g.tolist())
        raise ValueError(f"`spacing_init` grid ({shown}): a start grid needs {nfe + 1} strictly decreasing levels "
                         f"from sigma_max = {smax:.6g} to 0, the last nonzero one >= sigma_min = {smin:.4g} (e.g. "
                         f"flowode.sigma_grid(schedule, {nfe}, 'logsnr', sigma_min=...)).")
    g = g.clone()
    g[0] = smax  # exactly: the fit's levels start at sigma_max, and so does the start state
    return g


def _solve(model: "EpsilonModel", slv: Stepper, x: Tensor, grid: Tensor, grad: Optional[str] = None) -> Tensor:
    from .integrate import integrate

    return integrate(model, x, grid, slv, grad=grad).x


def learn_solver(
    model: "EpsilonModel",
    x_calibration: Tensor,
    x_validation: Tensor,
    nfe: int,
    *,
    base: str = "dpm_solver++_2m",
    history: int = 2,
    corrector: bool = False,
    shift: bool = False,
    reference_calibration: Optional[Tensor] = None,
    reference_validation: Optional[Tensor] = None,
    objective: str = "log",
    iters: int = 150,
    lr: float = 0.05,
    val_every: int = 5,
    patience: int = 6,
    spacing_init: Optional[Union[str, Tensor, Sequence[Union[str, Tensor, Sequence[float]]]]] = None,
    learn_grid: bool = True,
    learn_weights: bool = True,
    init: Optional["LearnedSolver"] = None,
    grad: str = "autograd",
    shape: Optional[Sequence[int]] = None,
    meta: Optional[dict[str, Any]] = None,
    verbose: bool = False,
) -> LearnedSolver:
    """Fit a :class:`LearnedSolver` for ``model`` and ``nfe`` evaluations (module docstring).

    Args:
        model: the model (an :class:`~flowode.models.EpsilonModel`).
        x_calibration, x_validation: start states at ``sigma_max`` (model coordinates), two separate
            batches (e.g. different seeds); a shared start state is refused.
        nfe: the budget (steps, one evaluation each; >= 1).
        base: the solver whose weights are corrected (:data:`BASES`).
        history: x0 predictions combined per step (1 .. 4; 2 with ``base="dpm_solver++_2m"`` gives
            its exact weights plus one free weight per step).
        corrector: also fit a UniC-type corrector (:func:`corrector_weights`; no extra evaluation):
            the start is then UniPC with the DPM-Solver++ predictor.
        shift: also fit, per step after the first, the offset of the level the network is evaluated
            at (``LearnedSpec.shifts``; the "time shift" against exposure bias of Li et al., ICLR 2024,
            arXiv 2305.15583, learned here instead of searched).
        reference_calibration, reference_validation: the teachers' endpoints at ``sigma = 0``;
            default :func:`~flowode.analytic.reference_solve` (scipy DOP853, ``rtol = 1e-10``; for a
            network it stops at ``sigma_min`` and returns the denoised estimate there).
        objective: ``"log"`` (mean per-sample log-error, default), ``"mse"`` or ``"log+rmse"``.
        iters, lr: Adam iterations and initial step size (cosine decay to ``lr / 20``).
        val_every, patience: validation period (iterations) and how many validations without
            improvement stop the fit.
        spacing_init: the built-in spacing(s) the grid starts from, or explicit start grids
            (``nfe + 1`` decreasing levels from ``sigma_max`` to 0, e.g. ``sigma_grid(schedule, nfe,
            "logsnr", sigma_min=0.05)``), the best on the calibration objective kept (default: the best
            of ``logsnr``, ``karras``, ``uniform_t``, ``quadratic``, ``trailing``). The timesteps move
            little from their start in a fit (Adam at ``lr`` on the softmax parameters), so on a rugged
            objective separate fits from several starts, compared on validation, can beat one fit.
        learn_grid, learn_weights: fit the timesteps (and the shifts) / the weights (both by default).
        init: a fitted solver of the same model, NFE, base, history, corrector and shifts to start
            from instead of the base on its best built-in spacing (to refine an artefact, e.g. with
            another objective or more data; S4S-Alt-style alternation with ``learn_grid`` /
            ``learn_weights``). Its grid and weights are then "iteration 0" and the ``base_*`` errors.
        grad: ``"autograd"`` or ``"checkpoint"`` (the driver's gradient mode).
        shape: sample shape for the fingerprint (default ``x_calibration.shape[1:]``).
        meta: extra metadata for the artefact (problem name, seeds, ...).

    Returns:
        The fitted solver (``.spec.errors`` holds calibration and validation errors, before and after).

    Raises:
        ValueError: bad budget, options, batches (shape, shared start states) or references.
    """
    from .analytic import reference_solve
    from .grids import SPACINGS, GridError, sigma_grid
    from .models import EpsilonModel

    if not isinstance(model, EpsilonModel):
        raise TypeError(f"`model` must be a flowode.EpsilonModel, got {type(model).__name__}.")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"`nfe` must be a positive integer (steps of one evaluation each), got {nfe!r}.")
    if base not in BASES:
        raise ValueError(f"`base` must be one of {', '.join(BASES)}, got {base!r}.")
    if isinstance(history, bool) or not isinstance(history, int) or not 1 <= history <= 4:
        raise ValueError(f"`history` must be an integer in 1..4, got {history!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    if grad not in ("autograd", "checkpoint"):
        raise ValueError(f"`grad` must be 'autograd' or 'checkpoint', got {grad!r}.")
    for key, v in (("iters", iters), ("val_every", val_every), ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "iters" else 1):
            kind = "non-negative" if key == "iters" else "positive"
            raise ValueError(f"`{key}` must be a {kind} integer, got {v!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a positive number, got {lr!r}.")
    for key, xb in (("x_calibration", x_calibration), ("x_validation", x_validation)):
        if not isinstance(xb, Tensor) or xb.dim() < 1 or xb.shape[0] < 2:
            raise ValueError(f"`{key}` must be a tensor of at least 2 start states (batch first).")
    if x_calibration.shape[1:] != x_validation.shape[1:]:
        raise ValueError(f"`x_calibration` samples have shape {tuple(x_calibration.shape[1:])} but `x_validation` "
                         f"samples {tuple(x_validation.shape[1:])}.")
    flat_c = x_calibration.detach().reshape(x_calibration.shape[0], -1).to(torch.float64)
    flat_v = x_validation.detach().reshape(x_validation.shape[0], -1).to(torch.float64)
    if torch.cdist(flat_v, flat_c).min() == 0:
        raise ValueError("`x_validation` shares start states with `x_calibration`: the validation error would not be "
                         "held out. Draw the two batches with different seeds.")
    sched = model.schedule
    smin, smax = float(sched.sigma_min), float(sched.sigma_max)
    if not math.isfinite(smax):
        raise GridError("learn_solver needs a finite sigma_max (zero-terminal-SNR schedules are not supported).")
    refs = []
    for key, xb, ref in (("reference_calibration", x_calibration, reference_calibration),
                         ("reference_validation", x_validation, reference_validation)):
        if ref is None:
            ref = reference_solve(model, xb, smax, 0.0)
        if ref.shape != xb.shape:
            raise ValueError(f"`{key}` has shape {tuple(ref.shape)}, expected {tuple(xb.shape)}.")
        refs.append(ref.detach())
    ref_c, ref_v = refs

    for key, v in (("corrector", corrector), ("shift", shift)):
        if not isinstance(v, bool):
            raise ValueError(f"`{key}` must be True or False, got {v!r}.")
    shape_list = [int(v) for v in (shape if shape is not None else x_calibration.shape[1:])]
    dtype_name = str(x_calibration.dtype).replace("torch.", "")
    if init is not None:
        if spacing_init is not None:
            raise ValueError(f"`spacing_init`={spacing_init!r} and `init` both choose the start of the fit; give one.")
        if not isinstance(init, LearnedSolver):
            raise TypeError("`init` must be a flowode LearnedSolver (e.g. load_learned(path)), got "
                            f"{type(init).__name__}.")
        fp = model_fingerprint_of(model, shape_list, dtype_name)
        if init.spec.fingerprint is not None and init.spec.fingerprint != fp:
            raise ModelMismatchError(f"`init` was fitted to another model (fingerprint {init.spec.fingerprint[:12]}, "
                                     f"this one {fp[:12]}): start from an artefact of this model, or leave `init` "
                                     "unset.")
        want = {"nfe": nfe, "base": base, "history": history, "corrector": corrector, "shift": shift}
        have = {"nfe": init.spec.nfe, "base": init.spec.base, "history": init.spec.history,
                "corrector": init.spec.corrector, "shift": init.spec.shifts is not None}
        diff = [f"{k}={have[k]!r} (here {want[k]!r})" for k in want if want[k] != have[k]]
        if diff:
            raise ValueError(f"`init` does not match this fit: it has {', '.join(diff)}; pass the same options or "
                             "leave `init` unset.")
    spec0 = LearnedSpec(base=base, history=history, nfe=nfe, sigmas=[], deltas=[[0.0] * history] * nfe,
                        corrector=corrector, corrector_deltas=[[0.0] * (history + 1)] * nfe if corrector else None)

    def solver_on(grid: Tensor, deltas: Optional[list[list[float]]] = None,
                  cdeltas: Optional[list[list[float]]] = None, shifts: Optional[list[float]] = None) -> LearnedSolver:
        s = copy.deepcopy(spec0)
        s.sigmas = [float(v) for v in grid.tolist()]
        if deltas is not None:
            s.deltas = deltas
        if cdeltas is not None:
            s.corrector_deltas = cdeltas
        s.shifts = shifts
        return LearnedSolver.from_spec(s, check_model=False)

    def errors(slv: LearnedSolver, xb: Tensor, ref: Tensor) -> Tensor:
        with torch.no_grad():
            return per_sample_errors(_solve(model, slv, xb, slv.sigmas), ref)

    # the start: the base solver on its best built-in spacing (calibration objective), or `init`
    spacings = [] if init is not None else [spacing_init] if _is_start(spacing_init) else list(
        spacing_init or ("logsnr", "karras", "uniform_t", "quadratic", "trailing"))
    tried: dict[str, float] = {}
    best: Optional[tuple[float, str, Tensor]] = None
    if init is not None:
        best = (math.nan, f"init ({init.path or 'a LearnedSolver'})", init.sigmas.to(torch.float64))
    for sp in spacings:
        if isinstance(sp, str):
            if sp not in SPACINGS:
                raise ValueError(f"`spacing_init` {sp!r} is not a spacing; give one of {', '.join(SPACINGS)} or an "
                                 "explicit grid.")
            try:
                g = sigma_grid(sched, nfe, sp)
            except (GridError, ValueError):
                continue
            if abs(float(g[0]) - smax) > 1e-9 * smax or float(g[-1]) != 0.0 or len(g) != nfe + 1:
                continue
            label = sp
        else:
            g = _start_grid(sp, nfe, smax, smin)
            label = "grid (" + ", ".join(f"{v:.4g}" for v in g.tolist()) + ")"
        val = float(_objective(errors(solver_on(g), x_calibration, ref_c), objective))
        tried[label] = val
        if best is None or val < best[0]:
            best = (val, label, g)
    if best is None:
        raise GridError(f"none of the spacings {spacings} gives a full-range grid of {nfe} steps on this schedule.")
    _, init_spacing, g0 = best
    if init is None:
        base_slv = solver_on(g0)
    else:
        base_slv = solver_on(g0, init.spec.deltas, init.spec.corrector_deltas, init.spec.shifts)
    e_base_c, e_base_v = errors(base_slv, x_calibration, ref_c), errors(base_slv, x_validation, ref_v)

    params = _Params(nfe, history, smin, smax, g0, corrector, shift, last_floor=1e-2 if init is None else 1e-9)
    if init is not None:
        params.start_from(init.spec)
    trainable = (([params.u, params.z, params.shift] if learn_grid else [])
                 + ([params.delta, params.cdelta] if learn_weights else []))
    trainable = [p for p in trainable if p.numel() > 0]

    def snapshot() -> LearnedSolver:
        with torch.no_grad():
            grid = torch.stack(params.levels()).clone()
            cd = params.corrector_deltas()
            return solver_on(grid, params.deltas().tolist(), None if cd is None else cd.tolist(), params.shifts())

    best_slv, best_val = base_slv, float(_objective(e_base_v, objective))
    history_log: list[dict[str, float]] = [{"iter": 0, "validation": best_val}]
    stale, it = 0, 0
    if trainable and iters > 0:
        opt = torch.optim.Adam(trainable, lr=lr)
        sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=lr / 20)
        for it in range(1, iters + 1):
            cur = snapshot()
            cur._params = params
            opt.zero_grad()
            out = _solve(model, cur, x_calibration, cur.sigmas, grad=grad)
            loss = _objective(per_sample_errors(out, ref_c), objective)
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            sched_lr.step()
            if it % val_every == 0 or it == iters:
                cand = snapshot()
                try:
                    val = float(_objective(errors(cand, x_validation, ref_v), objective))
                except (SolverError, ValueError, RuntimeError):
                    val = math.inf
                history_log.append({"iter": it, "calibration": float(loss.detach()), "validation": val})
                if verbose:
                    print(f"learn_solver: iter {it}: calibration {float(loss.detach()):.4f}, validation {val:.4f}")
                if val < best_val:
                    best_slv, best_val, stale = cand, val, 0
                else:
                    stale += 1
                    if stale >= patience:
                        break
    e_c, e_v = errors(best_slv, x_calibration, ref_c), errors(best_slv, x_validation, ref_v)
    spec = best_slv.spec
    spec.errors = {"calibration": _summary(e_c), "validation": _summary(e_v),
                   "base_calibration": _summary(e_base_c), "base_validation": _summary(e_base_v)}
    spec.shape, spec.dtype = shape_list, dtype_name
    spec.fingerprint = model_fingerprint_of(model, spec.shape, spec.dtype)
    spec.meta = {"objective": objective, "corrector": corrector, "shift": shift,
                 "iters_run": it, "lr": lr, "val_every": val_every, "patience": patience,
                 "init_spacing": init_spacing, "init_objectives": tried,
                 "calibration_size": int(x_calibration.shape[0]),
                 "validation_size": int(x_validation.shape[0]), "learn_grid": learn_grid,
                 "learn_weights": learn_weights, "grad": grad, "teacher": "flowode.reference_solve (scipy DOP853)"
                 if reference_calibration is None else "given", "trace": history_log, **(meta or {})}
    return LearnedSolver.from_spec(spec)
