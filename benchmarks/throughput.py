"""Throughput and memory of flowode's sampling loop on real networks, against a hand-written loop and
diffusers' scheduler loop over the same network (issue 14, item 3).

Networks (float32, parameters frozen, ``torch.no_grad()``):

* ``digits``: the shipped 8x8 digits UNet (``flowode.load_pretrained("digits")``, unconditional);
* ``unet32``: ``flowode.nets.UNet(in_channels=3, base_channels=32, channel_mults=(1, 2, 2))`` with
  random weights (seed 0) on ``(N, 3, 32, 32)``.

Solvers: DDIM, DPM-Solver++(2M), UniPC (bh2, order 2, corrector) and Heun (sigma coordinates), on
one trailing grid of ``--steps`` steps of the DDPM linear schedule, ending at 0. Per configuration
three loops run, each a whole solve:

* ``flowode``: ``flowode.integrate(model, x_T, grid, solver)``;
* ``hand``: the same method written out in plain torch over ``model.fn`` (the network's eps) with
  the levels, ``alpha`` and timesteps precomputed as Python floats -- what a user would write;
* ``diffusers``: ``scheduler.set_timesteps(steps)`` and ``scheduler.step`` in a loop over the same
  network (``scale_model_input`` where the scheduler has one), as diffusers' pipelines loop, without
  their image post-processing: ``DDIMScheduler``, ``DPMSolverMultistepScheduler(dpmsolver++, 2)``,
  ``UniPCMultistepScheduler`` (bh2, order 2) and ``HeunDiscreteScheduler``, all trailing spacing.

Timing: the benchmark thread's CPU time (``time.thread_time``, one torch thread; a machine shared with
other jobs inflates it far less than wall time). In each round the three loops run in a shuffled
order; the ratios are medians over rounds of the per-round ratios (paired, so slow rounds cancel).
"us / step" is a solve's time divided by its steps.

``--memory`` adds the peak memory one solve adds (``flowode.bench.memory.MemoryMeter``: the
resident-set high-water mark on Linux, ``max_memory_allocated`` on CUDA), each measured in a fresh
process with glibc's default allocator (a process that ran other solves would reuse their pages), for
flowode and the hand loop, and the peak against the number of steps (10, 50, 200) for
``save_at=None``, ``save_at="steps"`` in memory and ``save_at="steps", save_to=DIR`` (streamed) on the
32x32 UNet at batch 16. RSS peaks move by several MiB between processes (allocator arenas), so only
differences well above that are resolved.
``--compile`` adds ``model.compile_network()`` (``torch.compile``) against eager for DDIM.

Usage:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/throughput.py [--markdown] [--memory] [--compile]
        [--nets digits,unet32] [--batches 1,4,16,64,256] [--max-batch-unet32 16] [--device cpu] [--quick]
        [--out benchmarks/sections/throughput.md]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import flowode
from flowode.bench.memory import MemoryMeter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import pin_malloc  # noqa: E402

SOLVERS = ("ddim", "dpm_solver++_2m", "unipc", "heun")
Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------ hand loops
class Plan:
    """The grid as Python floats: levels, alpha, timesteps and log-SNR, one entry per level."""

    def __init__(self, model: flowode.EpsilonModel, grid: torch.Tensor) -> None:
        self.s = [float(v) for v in grid]
        self.a = [float(model.schedule.alpha_from_sigma(v)) for v in self.s]
        self.t = [model.timestep(v) for v in self.s]
        self.lam = [-math.log(v) if v > 0 else math.inf for v in self.s]


def hand_ddim(net: Net, x: torch.Tensor, p: Plan) -> torch.Tensor:
    """DDIM (eta = 0), Song et al. 2021 eq. 12, as one Euler step of d xbar / d sigma = eps."""
    b = x.shape[0]
    for i in range(len(p.s) - 1):
        s, t, a_s, a_t = p.s[i], p.s[i + 1], p.a[i], p.a[i + 1]
        eps = net(x, torch.full((b,), p.t[i], device=x.device))
        x = torch.add(x * (a_t / a_s), eps, alpha=a_t * (t - s))
    return x


def hand_dpmpp_2m(net: Net, x: torch.Tensor, p: Plan) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. 2022b Algorithm 2; first order at the first step, at the step to 0
    and (diffusers' lower_order_final for fewer than 15 steps) at the last step."""
    b = x.shape[0]
    prev = None
    n = len(p.s) - 1
    for i in range(n):
        s, t, a_s, a_t = p.s[i], p.s[i + 1], p.a[i], p.a[i + 1]
        eps = net(x, torch.full((b,), p.t[i], device=x.device))
        x0 = torch.add(x * (1.0 / a_s), eps, alpha=-s)
        if t == 0.0:
            x = x0 * a_t
        else:
            h = math.log(s / t)
            if prev is None or (i == n - 1 and n < 15):
                d = x0
            else:
                r = (p.lam[i] - p.lam[i - 1]) / h
                d = torch.add(x0 * (1.0 + 0.5 / r), prev, alpha=-0.5 / r)
            x = torch.add(x * ((a_t * t) / (a_s * s)), d, alpha=-a_t * math.expm1(-h))
        prev = x0
    return x


def hand_unipc(net: Net, x: torch.Tensor, p: Plan) -> torch.Tensor:
    """UniPC-2 with B(h) = expm1(-h) (bh2), Zhao et al. 2023 sec. 3, data prediction: UniP-2 predictor
    (UniP-1 at the first step, at the step to 0 and where order <= n - i asks for it), UniC corrector
    of every state but the last (with the model output at the uncorrected point)."""
    b = x.shape[0]
    n = len(p.s) - 1
    hist: list[tuple[int, torch.Tensor]] = []  # (level index, x0 there), newest last
    last: Any = None  # (state at the previous level, its index, the history its prediction used)
    for i in range(n):
        s, t, a_s = p.s[i], p.s[i + 1], p.a[i]
        eps = net(x, torch.full((b,), p.t[i], device=x.device))
        m = torch.add(x * (1.0 / a_s), eps, alpha=-s)
        if last is not None:  # UniC: redo the step j -> i with m added
            x_p, j, used = last
            m0 = used[-1][1]
            hh = -(p.lam[i] - p.lam[j])
            bh = math.expm1(hh)
            g1 = bh / hh - 1.0
            base = torch.add(x_p * ((a_s * s) / (p.a[j] * p.s[j])), m0, alpha=-a_s * bh)
            if len(used) == 1:
                x = base.add(m - m0, alpha=-a_s * bh * 0.5)
            else:  # c = R^-1 b, R = [[1, 1], [r1, 1]], b = (g1 / B, 2 g2 / B)
                k, mk = used[-2]
                r1 = (p.lam[k] - p.lam[j]) / -hh
                b1, b2 = g1 / bh, (g1 / hh - 0.5) * 2.0 / bh
                c1 = (b1 - b2) / (1.0 - r1)
                x = base.add((mk - m0) / r1, alpha=-a_s * bh * c1).add(m - m0, alpha=-a_s * bh * (b1 - c1))
        hist = (hist + [(i, m)])[-2:]
        order = 1 if t == 0.0 else min(2, len(hist), n - i)
        used = hist[-order:]
        if t == 0.0:
            x_next = m * p.a[i + 1]
        else:
            a_t = p.a[i + 1]
            h = p.lam[i + 1] - p.lam[i]
            x_next = torch.add(x * ((a_t * t) / (a_s * s)), m, alpha=-a_t * math.expm1(-h))
            if order == 2:
                k, mk = used[0]
                x_next = x_next.add((mk - m) / ((p.lam[k] - p.lam[i]) / h), alpha=-a_t * math.expm1(-h) * 0.5)
        last = (x, i, used)
        x = x_next
    return x


def hand_heun(net: Net, x: torch.Tensor, p: Plan) -> torch.Tensor:
    """Heun's method in (xbar, sigma) (Karras et al. 2022, Algorithm 1); the step to sigma = 0 is one
    Euler (= DDIM) step, flowode's boundary rule."""
    b = x.shape[0]
    n = len(p.s) - 1
    for i in range(n):
        s, t, a_s, a_t = p.s[i], p.s[i + 1], p.a[i], p.a[i + 1]
        xbar = x * (1.0 / a_s)
        d0 = net(x, torch.full((b,), p.t[i], device=x.device))
        if t == 0.0:
            x = torch.add(xbar, d0, alpha=-s) * a_t
            continue
        xe = torch.add(xbar, d0, alpha=t - s)
        d1 = net(xe * a_t, torch.full((b,), p.t[i + 1], device=x.device))
        x = torch.add(xbar, d0 + d1, alpha=0.5 * (t - s)) * a_t
    return x


HAND = {"ddim": hand_ddim, "dpm_solver++_2m": hand_dpmpp_2m, "unipc": hand_unipc, "heun": hand_heun}


# ------------------------------------------------------------------------------------------ diffusers loops
def diffusers_scheduler(solver: str) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler

    common = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  timestep_spacing="trailing")
    if solver == "ddim":
        return DDIMScheduler(**common, set_alpha_to_one=True, clip_sample=False)
    if solver == "dpm_solver++_2m":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    if solver == "unipc":
        return UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2")
    return HeunDiscreteScheduler(**common)


def diffusers_loop(net: Net, sch: Any, x: torch.Tensor, steps: int) -> tuple[torch.Tensor, int]:
    """A pipeline's denoising loop without its post-processing; returns the sample and the NFE."""
    sch.set_timesteps(steps, device=x.device)
    x = x * sch.init_noise_sigma
    b = x.shape[0]
    calls = 0
    for t in sch.timesteps:
        inp = sch.scale_model_input(x, t)
        eps = net(inp, torch.full((b,), float(t), device=x.device))
        calls += 1
        x = sch.step(eps, t, x).prev_sample
    return x, calls


# ------------------------------------------------------------------------------------------ measuring
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build_nets(names: list[str], dev: torch.device) -> dict[str, tuple[flowode.EpsilonModel, tuple[int, ...]]]:
    out = {}
    for name in names:
        if name == "digits":
            m = flowode.load_pretrained("digits", device=dev)
            out[name] = (m, tuple(m.sample_shape))
        elif name == "unet32":
            torch.manual_seed(0)
            net = flowode.nets.UNet(in_channels=3, base_channels=32, channel_mults=(1, 2, 2)).to(dev).eval()
            for q in net.parameters():
                q.requires_grad_(False)
            out[name] = (flowode.EpsilonModel(net, flowode.DiscreteVPSchedule.linear()), (3, 32, 32))
        else:
            raise SystemExit(f"--nets: unknown network {name!r}; choose from digits, unet32")
    return out


def measure(model: flowode.EpsilonModel, shape: tuple[int, ...], batch: int, solver: str, steps: int,
            rounds: int, dev: torch.device, clock: Callable[[], float], rng: random.Random,
            with_diffusers: bool) -> dict[str, Any]:
    sched = model.schedule
    grid = flowode.sigma_grid(sched, steps, "trailing")
    plan = Plan(model, grid)
    x_T = model.prior_sample((batch, *shape), seed=0).to(dev)
    net: Net = model.fn
    hand = HAND[solver]
    loops: dict[str, Callable[[], Any]] = {
        "flowode": lambda: flowode.integrate(model, x_T, grid, solver),
        "hand": lambda: hand(net, x_T, plan),
    }
    sch = diffusers_scheduler(solver) if with_diffusers else None
    if sch is not None:
        loops["diffusers"] = lambda: diffusers_loop(net, sch, x_T, steps)
    outs = {k: f() for k, f in loops.items()}  # warm-up, and the outputs to compare
    times: dict[str, list[float]] = {k: [] for k in loops}
    for _ in range(rounds):
        keys = list(loops)
        rng.shuffle(keys)
        for k in keys:
            _sync(dev)
            c0 = clock()
            loops[k]()
            _sync(dev)
            times[k].append(clock() - c0)
    fl = outs["flowode"]
    row: dict[str, Any] = {
        "batch": batch, "solver": solver, "steps": steps, "nfe": fl.nfe,
        "us_step": {k: statistics.median(v) / steps * 1e6 for k, v in times.items()},
        "samples_s": batch / statistics.median(times["flowode"]),
        "vs_hand": statistics.median(a / b for a, b in zip(times["flowode"], times["hand"])),
        "diff_hand": float((fl.x - outs["hand"]).abs().max()),
    }
    if sch is not None:
        row["vs_diffusers"] = statistics.median(a / b for a, b in zip(times["flowode"], times["diffusers"]))
        row["nfe_diffusers"] = outs["diffusers"][1]
        row["diff_diffusers"] = float((fl.x - outs["diffusers"][0]).abs().max())
    return row


def child_peak(net: str, batch: int, solver: str, loop: str, steps: int, save: str, device: str) -> dict[str, Any]:
    """Run in a fresh process (``--child``): the peak memory one solve adds, after a batch-1 warm-up
    (imports, caches) that touches none of the solve's own pages. glibc's allocator keeps its defaults
    here: a process that had run other solves would reuse their pages and hide the peak."""
    dev = torch.device(device)
    model, shape = build_nets([net], dev)[net]
    grid = flowode.sigma_grid(model.schedule, steps, "trailing")
    x_T = model.prior_sample((batch, *shape), seed=0).to(dev)
    kw: dict[str, Any] = {}
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        flowode.integrate(model, x_T[:1], grid[-3:], solver, save_at="steps", save_to=Path(tmp) / "warm")
        HAND[solver](model.fn, x_T[:1], Plan(model, grid[-3:]))
        if save != "none":
            kw["save_at"] = "steps"
        if save == "streamed":
            kw["save_to"] = Path(tmp) / "traj"
        with MemoryMeter(dev) as meter:
            if loop == "hand":
                out = HAND[solver](model.fn, x_T, Plan(model, grid))
            else:
                out = flowode.integrate(model, x_T, grid, solver, **kw)
            del out
    return {"peak_mib": meter.peak / 2**20, "method": meter.method}


def peak_in_child(*args: Any) -> dict[str, Any]:
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(str(a) for a in args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_table(model: flowode.EpsilonModel, shape: tuple[int, ...], batches: list[int], steps: int,
                  rounds: int, dev: torch.device, clock: Callable[[], float]) -> list[dict]:
    rows = []
    grid = flowode.sigma_grid(model.schedule, steps, "trailing")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False  # the first solve pays the whole compile, as in a fresh environment
    for batch in batches:
        torch._dynamo.reset()
        compiled = model.compile_network()
        x_T = model.prior_sample((batch, *shape), seed=0).to(dev)
        t0 = time.perf_counter()
        ref = flowode.integrate(compiled, x_T, grid, "ddim").x
        first = time.perf_counter() - t0
        eager_x = flowode.integrate(model, x_T, grid, "ddim").x
        te, tc, tg = [], [], []
        variants = [(model, te), (compiled, tc)]
        graphs_first = graphs_diff = float("nan")
        if dev.type == "cuda":  # CUDA graphs (torch.compile mode="reduce-overhead")
            graphed = model.compile_network(cuda_graphs=True)
            t0 = time.perf_counter()
            gx = flowode.integrate(graphed, x_T, grid, "ddim").x
            graphs_first = time.perf_counter() - t0
            graphs_diff = float((gx - eager_x).abs().max())
            variants.append((graphed, tg))
        for _ in range(rounds):
            for m, acc in variants:
                _sync(dev)
                c0 = clock()
                flowode.integrate(m, x_T, grid, "ddim")
                _sync(dev)
                acc.append(clock() - c0)
        rows.append({"batch": batch, "first_s": first, "eager": statistics.median(te) / steps * 1e6,
                     "compiled": statistics.median(tc) / steps * 1e6,
                     "ratio": statistics.median(c / e for c, e in zip(tc, te)),
                     "diff": float((ref - eager_x).abs().max()),
                     "graphs": statistics.median(tg) / steps * 1e6 if tg else float("nan"),
                     "graphs_ratio": statistics.median(g / e for g, e in zip(tg, te)) if tg else float("nan"),
                     "graphs_first": graphs_first, "graphs_diff": graphs_diff})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="digits,unet32")
    ap.add_argument("--batches", default="1,4,16,64,256")
    ap.add_argument("--max-batch-unet32", type=int, default=16,
                    help="largest batch of the 32x32 UNet (default 16: one call takes 80 ms at batch 16, 370 ms at "
                         "64 and ~1.5 s at 256 on one CPU core; 64 adds ~4 minutes)")
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5,
                    help="timed rounds (half as many, at least 3, for states over 49152 numbers)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--memory", action="store_true", help="peak memory against steps and save_at")
    ap.add_argument("--compile", action="store_true", help="torch.compile of the network against eager")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small config: digits, batches 1,16, 2 rounds")
    ap.add_argument("--out", help="write the section (command, then the tables) to this markdown file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import json

        net, batch, solver, loop, steps, save, device = args.child.split(",")
        print(json.dumps(child_peak(net, int(batch), solver, loop, int(steps), save, device)))
        return 0
    if args.out:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(_Tee(buf, sys.stdout)):  # type: ignore[type-var]
            rc = run(args)
        cmd = "OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/throughput.py " + " ".join(argv or sys.argv[1:])
        Path(args.out).write_text("## Throughput and memory on real networks\n\n"
                                  "Written by `benchmarks/throughput.py` (its docstring says what each loop is):\n\n"
                                  f"```\n{cmd}\n```\n\n{buf.getvalue()}")
        return rc
    return run(args)


class _Tee:
    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for st in self.streams:
            st.write(text)
        return len(text)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.nets, args.batches, args.rounds = "digits", "1,16", 2
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    pinned = pin_malloc() if dev.type == "cpu" else False
    clock = time.thread_time if dev.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    batches = [int(b) for b in args.batches.split(",")]
    solvers = [s for s in args.solvers.split(",") if s]
    with_diffusers = not args.no_diffusers
    if with_diffusers:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            with_diffusers = False
    nets = build_nets([n for n in args.nets.split(",") if n], dev)
    rng = random.Random(0)
    t_start = time.perf_counter()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{'thread CPU time' if clock is time.thread_time else 'wall-clock time'}, malloc "
          f"{'pinned' if pinned else 'default'}, {args.steps} steps (trailing grid, DDPM linear schedule), "
          f"float32, median of {args.rounds} interleaved rounds\n")
    all_rows = []
    with torch.no_grad():
        for net_name, (model, shape) in nets.items():
            print(f"### {net_name}: {model.fn.__class__.__name__} on (N, {', '.join(map(str, shape))})\n")
            print("| batch | solver | NFE | flowode us/step | hand us/step | diffusers us/step | flowode / hand | "
                  "flowode / diffusers | samples/s (flowode) | max abs diff vs hand |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for batch in batches:
                if net_name == "unet32" and batch > args.max_batch_unet32:
                    continue
                for solver in solvers:
                    rounds = args.rounds if batch * math.prod(shape) <= 64 * 3072 // 4 else max(3, args.rounds // 2)
                    r = measure(model, shape, batch, solver, args.steps, rounds, dev, clock, rng, with_diffusers)
                    all_rows.append((net_name, r))
                    us = r["us_step"]
                    dif = f"{us['diffusers']:.0f}" if "diffusers" in us else "-"
                    vsd = f"{r['vs_diffusers']:.3f}" if "vs_diffusers" in r else "-"
                    nfe = f"{r['nfe']}" + (f" ({r['nfe_diffusers']})" if "nfe_diffusers" in r and
                                           r["nfe_diffusers"] != r["nfe"] else "")
                    print(f"| {batch} | {solver} | {nfe} | {us['flowode']:.0f} | {us['hand']:.0f} | {dif} | "
                          f"{r['vs_hand']:.3f} | {vsd} | {r['samples_s']:.1f} | {r['diff_hand']:.1e} |", flush=True)
            print()
    big = [r["vs_hand"] for _, r in all_rows if r["batch"] >= 16]
    if big:
        print(f"flowode / hand at batch >= 16: median {statistics.median(big):.3f}, worst {max(big):.3f} "
              f"over {len(big)} configurations (target 1.1)\n")
    if with_diffusers:
        print("NFE in parentheses: diffusers' loop, where it differs. Max abs differences of the samples, flowode "
              "vs diffusers (the same method on the same grid, float32): " + ", ".join(
                  f"{n}/{r['batch']}/{r['solver']} {r['diff_diffusers']:.1e}" for n, r in all_rows
                  if r["batch"] == batches[0] and "diff_diffusers" in r) + "\n")
    if args.memory:
        mem_solvers = [s for s in ("ddim", "dpm_solver++_2m") if s in solvers]
        print(f"### peak memory added by one solve ({args.steps} steps, save_at=None; a fresh process per entry, "
              f"{MemoryMeter(dev).method})\n")
        heads = " | ".join(f"{s} flowode / hand (MiB)" for s in mem_solvers)
        print(f"| network | batch | one state (MiB) | {heads} |")
        print("|---|---|---|" + "---|" * len(mem_solvers))
        for net_name, (_, shape) in nets.items():
            for batch in batches:
                if (net_name == "unet32" and batch > args.max_batch_unet32) or (batch < 16 and len(batches) > 2):
                    continue  # batches below 16: a few MiB, below what RSS resolves
                cells = []
                for solver in mem_solvers:
                    f = peak_in_child(net_name, batch, solver, "flowode", args.steps, "none", args.device)
                    h = peak_in_child(net_name, batch, solver, "hand", args.steps, "none", args.device)
                    cells.append(f"{f['peak_mib']:.1f} / {h['peak_mib']:.1f}")
                state = batch * math.prod(shape) * 4 / 2**20
                print(f"| {net_name} | {batch} | {state:.3f} | " + " | ".join(cells) + " |", flush=True)
        print()
        # the largest state per network call that stays cheap: the 32x32 UNet at batch 16 (0.19 MiB a state)
        net_name, batch = ("unet32", 16) if "unet32" in nets else ("digits", 256)
        model, shape = nets[net_name] if net_name in nets else next(iter(nets.values()))
        state = batch * math.prod(shape) * 4 / 2**20
        print(f"### peak memory added by one DDIM solve against the number of steps ({net_name}, batch {batch}, one "
              f"state {state:.3f} MiB; a fresh process per entry)\n")
        print("| steps | save_at=None | save_at='steps' (in memory) | save_at='steps', save_to=DIR (streamed) | "
              "states + x0 kept (MiB) |")
        print("|---|---|---|---|---|")
        for steps in (10, 50, 200):
            vals = [peak_in_child(net_name, batch, "ddim", "flowode", steps, save, args.device)["peak_mib"]
                    for save in ("none", "memory", "streamed")]
            print(f"| {steps} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {(2 * steps + 1) * state:.1f} |",
                  flush=True)
        print()
    if args.compile:
        model, shape = nets.get("digits") or next(iter(nets.values()))
        with torch.no_grad():
            rows = compile_table(model, shape, [b for b in (16,) if b in batches] or batches[:1], args.steps,
                                 args.rounds, dev, clock)
        print(f"### torch.compile of the network (model.compile_network(), default inductor mode, FX graph cache "
              f"off), DDIM, {model.fn.__class__.__name__}\n")
        graphs = dev.type == "cuda"
        print("| batch | first solve incl. compile (s, wall) | eager us/step | compiled us/step | compiled / eager | "
              "max abs diff |" + (" CUDA graphs: first solve (s) | us/step | / eager | max abs diff |"
                                  if graphs else ""))
        print("|---|---|---|---|---|---|" + ("---|---|---|---|" if graphs else ""))
        for r in rows:
            extra = (f" {r['graphs_first']:.1f} | {r['graphs']:.0f} | {r['graphs_ratio']:.3f} | "
                     f"{r['graphs_diff']:.1e} |" if graphs else "")
            print(f"| {r['batch']} | {r['first_s']:.1f} | {r['eager']:.0f} | {r['compiled']:.0f} | {r['ratio']:.3f} | "
                  f"{r['diff']:.1e} |" + extra)
        if not graphs:
            print("\nCUDA graphs (`model.compile_network(cuda_graphs=True)`) need a CUDA device: not measured here.")
        print()
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
