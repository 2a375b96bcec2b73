"""``flowode learn``: fit a learned solver (timesteps + multistep weights) to a problem's model and
an NFE budget, on a calibration batch with a separate validation batch, and write its JSON artefact.

The artefact runs wherever a solver is named: ``flowode sample --solver 'learned[path=FILE]' --nfe N``
and ``flowode bench --solvers 'learned[path=FILE]' --nfe N``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    p = sub.add_parser(
        "learn", help="fit a learned solver to a model and an NFE budget; write its JSON",
        description="Fit the timesteps and per-step multistep weights of a DPM-Solver++ update to a tight reference "
                    "solve of the problem's model (flowode.learn_solver), keeping the fit with the best error on a "
                    "separate validation batch, and write the artefact (model fingerprint, base solver, NFE, grid, "
                    "weights, calibration and validation errors). Use it as --solver 'learned[path=FILE]'.")
    p.add_argument("--problem", required=True, help="bench problem: a built-in (gmm2d, gmm64, ...), a shipped "
                                                   "checkpoint (digits) or module:function")
    p.add_argument("--nfe", type=int, required=True, help="the evaluation budget (= steps)")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--base", default="dpm_solver++_2m", help="base solver whose weights are corrected: "
                                                             "dpm_solver++_2m (default) or ddim")
    p.add_argument("--history", type=int, default=2, help="x0 predictions per update (default 2)")
    p.add_argument("--corrector", action="store_true",
                   help="also fit a UniC-type corrector (no extra evaluation; starts from UniPC with the "
                        "DPM-Solver++ predictor)")
    p.add_argument("--shift", action="store_true",
                   help="also fit per-step offsets of the level the network is evaluated at")
    p.add_argument("--calibration", type=int, default=256, help="calibration batch size (default 256)")
    p.add_argument("--validation", type=int, default=256, help="validation batch size (default 256)")
    p.add_argument("--calibration-seed", type=int, default=1001, help="seed of the calibration noise (default 1001)")
    p.add_argument("--validation-seed", type=int, default=2002, help="seed of the validation noise (default 2002; "
                                                                      "must differ from the calibration seed)")
    p.add_argument("--iters", type=int, default=150, help="Adam iterations at most (default 150)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam step size (default 0.05)")
    p.add_argument("--objective", default="log",
                   help="log (mean per-sample log-error, default), mse, or log+rmse (their sum in log form)")
    p.add_argument("--reference-rtol", type=float, default=None,
                   help="rtol = atol of the teacher (scipy DOP853; default the problem's reference tolerance)")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="teacher = dpm_solver++_3m on this many logsnr steps instead of scipy DOP853 (for float32 "
                        "networks, e.g. 500 for digits)")
    p.add_argument("--init", default=None, metavar="FILE",
                   help="start from this artefact (same problem, NFE, base, history, --corrector, --shift) instead of "
                        "the base solver on its best built-in spacing, e.g. to refine it with another --objective")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return p


def run(args: argparse.Namespace) -> int:
    from ..bench import get_problem
    from ..learned import learn_solver, load_learned, teacher_solve

    if args.calibration_seed == args.validation_seed:
        raise ValueError(f"`--validation-seed` must differ from `--calibration-seed` (both {args.calibration_seed}): "
                         "the validation batch must be held out.")
    for key in ("calibration", "validation"):
        if getattr(args, key) < 2:
            raise ValueError(f"`--{key}` must be at least 2, got {getattr(args, key)}.")
    if args.init and not os.path.isfile(args.init):
        raise ValueError(f"`--init`: no file {args.init!r}; give an artefact written by `flowode learn --out`.")
    init = load_learned(args.init, check_model=False) if args.init else None
    prob = get_problem(args.problem)
    sched = prob.model.schedule
    smax = float(sched.sigma_max)
    tol = prob.ref_rtol if args.reference_rtol is None else float(args.reference_rtol)
    batches: dict[str, Any] = {}
    for key, n, seed in (("calibration", args.calibration, args.calibration_seed),
                         ("validation", args.validation, args.validation_seed)):
        x = prob.prior(n, smax, seed)
        batches[key] = (x, teacher_solve(prob.model, x, steps=args.teacher_steps, rtol=tol))
    (xc, rc), (xv, rv) = batches["calibration"], batches["validation"]
    slv = learn_solver(prob.model, xc, xv, args.nfe, base=args.base, history=args.history, corrector=args.corrector,
                       shift=args.shift, reference_calibration=rc,
                       reference_validation=rv, objective=args.objective, iters=args.iters, lr=args.lr,
                       shape=prob.shape, verbose=not args.quiet, init=init,
                       meta={"problem": args.problem, "calibration_seed": args.calibration_seed,
                             "validation_seed": args.validation_seed,
                             "teacher": f"dpm_solver++_3m, {args.teacher_steps} logsnr steps" if args.teacher_steps
                             else f"scipy DOP853, rtol = atol = {tol:g}"})
    slv.save(args.out)
    e = slv.spec.errors
    print(f"flowode learn: {args.problem} NFE {args.nfe} ({args.base}): calibration RMSE "
          f"{e['base_calibration']['rmse']:.3e} -> {e['calibration']['rmse']:.3e}, validation RMSE "
          f"{e['base_validation']['rmse']:.3e} -> {e['validation']['rmse']:.3e} (median "
          f"{e['base_validation']['median']:.3e} -> {e['validation']['median']:.3e}); wrote {args.out}")
    return 0
