"""UniPC: the unified predictor-corrector of Zhao et al. (NeurIPS 2023), data-prediction form.

Notation as in :mod:`.updates`: ``lambda = -log sigma``, a step from ``s`` (the current grid point,
model output ``m0 = x0_hat``) to ``t`` has ``h = lambda_t - lambda_s``; for data prediction ``hh = -h``.

* UniP-p (Zhao et al. 2023, sec. 3) predicts ``x_t`` from the last ``p`` model outputs
  (:func:`~.updates.unip_update`).
* UniC-p (sec. 3): once the model has been evaluated at the predicted ``x_t`` (for the next step
  anyway, so no extra NFE), the step ``s -> t`` is re-done with the new output ``m_t`` added
  (:func:`~.updates.unic_update`). The corrected ``x_t^c`` is the state the next step starts from,
  while ``m_t`` stays the output at the uncorrected point (that is how the corrector costs
  nothing). UniC-p raises the order of a p-th order predictor to ``p + 1``.

As a stepper: the solver state carries the history and the previous step's start ``(x_s, s, p)``;
step ``i`` evaluates the model at its (predicted) start, corrects that start with UniC, and
predicts the next point. The corrected start is returned as ``Step.revised``, so the recorded
trajectory holds the corrected states. No correction follows the final step (it would need one
more evaluation). The step to ``sigma = 0`` is UniPC's own (its first-order predictor there returns
the denoised estimate), so the state at the last level is corrected too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ...schedules import sigma_to_lambda
from ..base import Step, Stepper, check_choice
from ..boundary import Boundary
from ..claims import WARMUP_LOWER, OrderClaim
from ..registry import register
from .updates import UNIPC_VARIANTS, History, dpmpp_multistep_update, multistep_order, unic_update, unip_update

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["UniPC"]


@register
@dataclass
class UniPC(Stepper):
    """UniPC (Zhao, Bai, Rao, Zhou & Lu, NeurIPS 2023), data prediction, one evaluation per step.

    Options:
        order: predictor order ``p`` in 1..3 (default 2, as diffusers' ``solver_order``); the
            first steps warm up with orders 1, 2, ... With the corrector the formula has order
            ``p + 1`` (given an accurate warm-up; the first step is UniP-1 + UniC-1); what a grid
            gets with these options is :meth:`order_claims` (default: 2, because of the last step).
        variant: ``"bh2"`` (default, ``B(h) = expm1(-h)``, recommended by the paper for few steps
            and diffusers' default) or ``"bh1"`` (``B(h) = -h``).
        corrector: apply UniC after every step but the last (default True; NFE unchanged).
        predictor: ``"unip"`` (default) or ``"dpm_solver++"``: the DPM-Solver++ multistep update of
            the same order (1, 2M, 3M with Taylor coefficients), corrected by UniC -- the
            paper's "UniC on top of any solver" (diffusers' ``solver_p``).
        lower_order_final: as diffusers' ``UniPCMultistepScheduler``: the predictor order at step
            ``i`` of ``n`` is at most ``n - i`` (default True). The step to ``sigma = 0`` is
            always first order (its ``h`` is infinite) -- also with ``lower_order_final=False``.
        disable_corrector: step indices ``i`` whose result is not corrected (diffusers'
            ``disable_corrector``; the paper suggests the first steps under strong guidance).
    """

    order: int = 2  # type: ignore[misc]  # an option here; the class order is the predictor order
    variant: str = "bh2"
    corrector: bool = True
    predictor: str = "unip"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()

    name = "unipc"
    source = "Zhao et al., UniPC, NeurIPS 2023, sec. 3 (UniP-p, UniC-p, B(h) = bh1 / bh2); data-prediction form"
    multistep = True
    default_spacing = "logsnr"

    def __post_init__(self) -> None:
        check_choice(self.name, "order", self.order, (1, 2, 3))
        check_choice(self.name, "variant", self.variant, UNIPC_VARIANTS)
        check_choice(self.name, "predictor", self.predictor, ("unip", "dpm_solver++"))
        self.disable_corrector = tuple(int(i) for i in self.disable_corrector)

    @property
    def convergence_order(self) -> int:
        """The order of the method with an accurate start and end: ``order + 1`` with the corrector.
        What a grid gets is :meth:`order_claims` (2 with the defaults: the last step is UniP-1)."""
        return self.order + 1 if self.corrector else self.order

    def order_claims(self) -> tuple[OrderClaim, ...]:
        """Measured in tests/test_orders_registry.py:

        * corrector, ``lower_order_final=True`` (default): 2 -- the last step is UniP-1 and no
          corrector follows it (local error ``O(h^2)``);
        * corrector, ``lower_order_final=False``: ``min(order + 1, 3)`` -- the last step is UniP-p,
          uncorrected (``O(h^(p+1))``), and the first step UniP-1 + UniC-1 (order 2, ``O(h^3)``) caps
          it at 3;
        * no corrector: UniP-p with a lower-order warm-up, ``min(order, 2)``."""
        p, nominal = self.order, self.convergence_order
        if not self.corrector:
            if p == 1:
                return (OrderClaim(1, conditions=("corrector=False",)),)
            return (OrderClaim(2, conditions=("corrector=False", WARMUP_LOWER), nominal=p,
                               reach="a refined start"),)
        if p == 1:
            return (OrderClaim(2),)
        if self.lower_order_final:
            # the UniP-1 last step's error has a small constant: the order falls to 2 late on a mixture
            return (OrderClaim(2, conditions=("lower_order_final=True: the last step is UniP-1 and no corrector "
                                              "follows it",), nominal=min(nominal, 3), reach="lower_order_final=False",
                               from_steps=1024),)
        last = f"lower_order_final=False: the last step is UniP-{p}, uncorrected"
        if p == 2:
            return (OrderClaim(3, conditions=(last,)),)
        return (OrderClaim(3, conditions=(last, "the first step is UniP-1 + UniC-1 (order 2): its O(h^3) local "
                                          "error caps the order at 3"), nominal=4, reach="a third-order first step",
                           from_steps=128),)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(predictor_order=self.order, variant=self.variant, corrector=self.corrector,
                   predictor=self.predictor)
        return out

    def native(self, kind: Boundary) -> bool:
        return kind is Boundary.TO_ZERO  # the corrector still applies to the last level's state

    def init(self, run: "Run") -> Any:
        return ((), None)  # (history of (lambda, x0), the previous step's (x_s, s, predictor order))

    def _predict(self, run: "Run", x: Tensor, s: float, t: float, hist: History) -> Tensor:
        if self.predictor == "dpm_solver++":
            return dpmpp_multistep_update(run.alpha, x, s, t, hist)
        return unip_update(run.alpha, x, s, t, hist, self.variant)

    def step(self, run: "Run", x: Tensor, sigma: float, sigma_next: float, state: Any) -> Step:
        hist, last = state
        pred = run.predict(x, sigma)
        m = pred.x0
        revised = None
        i = run.step
        if self.corrector and last is not None and hist and (i - 1) not in self.disable_corrector:
            x_prev, s_prev, p_prev = last
            x = revised = unic_update(run.alpha, x_prev, s_prev, sigma, hist[-p_prev:], m, self.variant)
        hist = (tuple(hist) + ((float(sigma_to_lambda(sigma)), m),))[-self.order:]
        p = multistep_order(self.order, len(hist), i, run.num_steps, sigma_next, self.lower_order_final, "unipc")
        x_next = self._predict(run, x, sigma, sigma_next, hist[-p:])
        return Step(x_next, (hist, (x, sigma, p)), pred, revised, {"orders": p, "corrected_steps": revised is not None})
