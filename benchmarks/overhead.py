"""Per-step overhead of flowode's sampling loop.

Times one full sampling run (``--steps`` steps, a (64, 3, 32, 32) float32 batch, DDPM linear
schedule, trailing grid) with a nearly free model ``eps = 0.1 * x`` and reports the time per step of

* ``floor``: a hand-written minimal DDIM loop -- precomputed float coefficients and timestep tensors,
  one model call and one fused update ``x' = c1 * x + c2 * eps`` (2 tensor ops) per step;
* ``floor (textbook)``: the same loop written as in the DDIM paper (x0 first, then x');
* ``flowode ddim`` (and ``flowode ddim, check_finite=False``), ``flowode <dpm++ 2M>`` when registered;
* ``diffusers DDIMScheduler`` / ``DPMSolverMultistepScheduler`` loops, when diffusers is installed;
* ``k-diffusion sample_euler`` / ``sample_dpmpp_2m``, when k-diffusion is installed;

each the median of ``--repeats`` runs, run in a shuffled order every round (so load drift and the
allocator state left by the previous loop hit all alike); "vs floor" is the median over rounds of
the per-round ratio to the floor (paired, so slow rounds cancel). The overhead of a loop is its step
time minus one model call; it is also reported as a share of one forward pass of a small conv net
(3 -> 64 -> 64 -> 3 channels, 3x3 convolutions, SiLU) on the batch.

Allocator: by default (``--malloc pin``) glibc's mmap and trim thresholds are raised at start
(``mallopt``), so every loop reuses heap memory instead of mapping fresh pages for each 786 KB
tensor; with glibc's defaults (``--malloc default``) first-touch page faults, which depend on the
order the loops ran in, move every row by +-15 % between runs on this machine. The pinning applies to
every row alike.

Usage:  OMP_NUM_THREADS=1 python benchmarks/overhead.py [--steps 50] [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import random
import statistics
import time
from typing import Callable

import torch

import flowode


def cheap(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x * 0.1


def floor_loop(x: torch.Tensor, coeffs: list[tuple[float, float]], ts: list[torch.Tensor]) -> torch.Tensor:
    for (c1, c2), t in zip(coeffs, ts):
        eps = cheap(x, t)
        x = torch.add(x * c1, eps, alpha=c2)
    return x


def textbook_loop(x: torch.Tensor, abars: list[tuple[float, float]], ts: list[torch.Tensor]) -> torch.Tensor:
    for (a, a_next), t in zip(abars, ts):
        eps = cheap(x, t)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x


def pin_malloc() -> bool:
    """Raise glibc's mmap / trim thresholds (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, 256 << 20)) and bool(libc.mallopt(-1, 1 << 30))
    except (OSError, AttributeError):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--malloc", choices=("pin", "default"), default="pin",
                    help="pin glibc's mmap/trim thresholds (default) or keep glibc's defaults")
    args = ap.parse_args()
    pinned = pin_malloc() if args.malloc == "pin" else False
    dev = torch.device(args.device)
    # CPU: the benchmark thread's own CPU time (time.thread_time), which a machine shared with other
    # jobs inflates far less than wall-clock time; GPU: wall-clock time (the GPU works asynchronously).
    clock = time.thread_time if dev.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    clock_name = "thread CPU time" if clock is time.thread_time else "wall-clock time"
    S = args.steps
    x_T = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(dev)

    sched = flowode.DiscreteVPSchedule.linear()
    model = flowode.EpsilonModel(cheap, sched)
    model_nocheck = flowode.EpsilonModel(cheap, sched, check_finite=False)
    grid = flowode.sigma_grid(sched, S, "trailing")
    sig = [float(s) for s in grid]

    # floor: the DDIM update in its fused form x' = (a'/a) x + a' (s' - s) eps; last step x0 = x/a - s eps
    coeffs = []
    abars = []
    for s, s_next in zip(sig[:-1], sig[1:]):
        a, a_next = float(sched.alpha_from_sigma(s)), float(sched.alpha_from_sigma(s_next))
        coeffs.append((a_next / a, a_next * (s_next - s)) if s_next > 0 else (1 / a, -s))
        abars.append((a * a, a_next * a_next))
    ts = [torch.full((args.batch,), float(sched.t(s)), device=dev) for s in sig[:-1]]

    runs: dict[str, Callable[[], object]] = {
        "hand-written DDIM loop, fused (floor)": lambda: floor_loop(x_T, coeffs, ts),
        "hand-written DDIM loop, textbook": lambda: textbook_loop(x_T, abars, ts),
        "flowode ddim": lambda: flowode.integrate(model, x_T, grid, "ddim"),
        "flowode ddim, check_finite=False": lambda: flowode.integrate(model_nocheck, x_T, grid, "ddim"),
    }
    dpm = next((n for n in ("dpm_solver++_2m", "dpmpp_2m", "dpm_solver_pp_2m") if n in flowode.solvers.SOLVERS),
               None)
    if dpm:
        runs[f"flowode {dpm}"] = lambda: flowode.integrate(model, x_T, grid, dpm)
    notes = []
    if not dpm:
        notes.append("DPM-Solver++(2M) is not registered in this build: its flowode row is missing.")
    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        ddim_s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", timestep_spacing="trailing",
                               set_alpha_to_one=True, clip_sample=False)
        dpm_s = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                            timestep_spacing="trailing", algorithm_type="dpmsolver++", solver_order=2)

        def diffusers_loop(sch) -> torch.Tensor:  # type: ignore[no-untyped-def]
            sch.set_timesteps(S, device=dev)
            x = x_T
            for t in sch.timesteps:
                eps = cheap(x, t)
                x = sch.step(eps, t, x).prev_sample
            return x

        runs["diffusers DDIMScheduler loop"] = lambda: diffusers_loop(ddim_s)
        runs["diffusers DPMSolverMultistepScheduler (2M) loop"] = lambda: diffusers_loop(dpm_s)
    except ImportError:
        notes.append("diffusers is not installed: its rows are missing.")
    from flowode.bench.peers import k_diffusion_sampling  # the package, or k_diffusion.sampling loaded alone

    ksampling = k_diffusion_sampling()
    try:
        if ksampling is None:
            raise ImportError

        sig_k = torch.tensor([s * math.sqrt(1) for s in sig], device=dev)
        kmodel = lambda x, s, **kw: x * 0.1  # noqa: E731  (VE-style denoiser, just as cheap)
        runs["k-diffusion sample_euler"] = lambda: ksampling.sample_euler(kmodel, x_T, sig_k, disable=True)
        runs["k-diffusion sample_dpmpp_2m"] = lambda: ksampling.sample_dpmpp_2m(kmodel, x_T, sig_k, disable=True)
    except ImportError:
        notes.append("k-diffusion is not installed: its rows are missing.")

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(64, 64, 3, padding=1),
        torch.nn.SiLU(), torch.nn.Conv2d(64, 3, 3, padding=1)).to(dev)

    def conv_call() -> object:
        with torch.no_grad():
            return net(x_T)

    def model_call() -> object:
        return cheap(x_T, ts[0])

    with torch.no_grad():
        for fn in runs.values():  # warm-up
            fn()
        times: dict[str, list[float]] = {k: [] for k in runs}
        walls: dict[str, list[float]] = {k: [] for k in runs}
        order = random.Random(0)
        for _ in range(args.repeats):
            keys = list(runs)
            order.shuffle(keys)
            for k in keys:
                fn = runs[k]
                _sync(dev)
                t0, c0 = time.perf_counter(), clock()
                fn()
                _sync(dev)
                times[k].append((clock() - c0) / S)
                walls[k].append((time.perf_counter() - t0) / S)
        m_times, c_times = [], []
        for _ in range(max(args.repeats, 5) * 5):
            t0 = clock()
            model_call()
            _sync(dev)
            m_times.append(clock() - t0)
        for _ in range(max(3, args.repeats // 3)):
            t0 = clock()
            conv_call()
            _sync(dev)
            c_times.append(clock() - t0)
        same = float((floor_loop(x_T, coeffs, ts) - flowode.integrate(model, x_T, grid, "ddim").x).abs().max())
        ddim_d = runs.get("diffusers DDIMScheduler loop")
        vs_diffusers = float((ddim_d() - flowode.integrate(model, x_T, grid, "ddim").x).abs().max()) \
            if ddim_d else float("nan")  # type: ignore[operator]
    med = {k: statistics.median(v) for k, v in times.items()}
    model_t = statistics.median(m_times)
    conv_t = statistics.median(c_times)
    floor_key = "hand-written DDIM loop, fused (floor)"
    ratio = {k: statistics.median(a / b for a, b in zip(v, times[floor_key])) for k, v in times.items()}
    wratio = {k: statistics.median(a / b for a, b in zip(v, walls[floor_key])) for k, v in walls.items()}
    print(f"device {dev}, batch ({args.batch}, 3, 32, 32) float32, {S} steps, median of {args.repeats} runs, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, malloc "
          f"{'pinned' if pinned else 'glibc defaults'}")
    print(f"one cheap-model call: {model_t * 1e6:.1f} us; one small conv-net call: {conv_t * 1e3:.2f} ms\n")
    wmed = {k: statistics.median(v) for k, v in walls.items()}
    print(f"times: {clock_name}\n")
    print("| loop | us / step | vs floor | overhead us / step (step - model call) | overhead / conv-net call | "
          "wall us / step | wall vs floor |")
    print("|---|---|---|---|---|---|---|")
    for k, v in med.items():
        over = v - model_t
        print(f"| {k} | {v * 1e6:.1f} | {ratio[k]:.2f}x | {over * 1e6:.1f} | {over / conv_t * 100:.2f} % | "
              f"{wmed[k] * 1e6:.1f} | {wratio[k]:.2f}x |")
    print(f"\nmax |flowode ddim - floor| = {same:.2e}; max |flowode ddim - diffusers DDIM| = {vs_diffusers:.2e} "
          "(same arithmetic, float32)")
    for n in notes:
        print(f"\nNote: {n}")


if __name__ == "__main__":
    main()
