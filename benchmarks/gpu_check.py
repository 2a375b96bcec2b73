"""One-GPU check (issue 14, item 4): in a few minutes on one CUDA device it

1. runs the test suite's CUDA tests on the GPU: ``pytest -k cuda`` over every test file that
   mentions ``cuda`` (found by grep, so new device-parametrised tests join by themselves);
2. with two or more GPUs, runs ``flowode sample`` under ``torchrun --nproc_per_node=2`` (NCCL) and in
   one process, for a deterministic and a stochastic solver, and reports the largest difference
   (round-off is expected on GPUs, not bitwise equality);
3. runs a small throughput configuration of ``benchmarks/throughput.py`` on CUDA (flowode against
   the hand-written loop and diffusers' loop) and ``torch.compile`` with and without CUDA graphs;

and prints one markdown table headed by the GPU's name. Without a CUDA device it prints
"no CUDA device: ..." and exits with status 0 at once (``--require-gpu``: status 2).

Usage:  PYTHONPATH=. python benchmarks/gpu_check.py [--budget 280] [--out FILE] [--require-gpu]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(cmd: list[str], timeout: float, cwd: Path = ROOT) -> tuple[int, str]:
    try:
        out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=max(timeout, 1))
        return out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:.0f} s"


def cuda_test_files() -> list[Path]:
    return sorted(p for p in (ROOT / "tests").glob("test_*.py") if "cuda" in p.read_text())


def check_tests(timeout: float) -> list[tuple[str, str, str]]:
    files = cuda_test_files()
    rc, out = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda",
                    *map(str, files)], timeout)
    summary = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ (passed|failed|error)", ln)), out[-200:])
    status = "ok" if rc == 0 else f"FAILED (exit {rc})"
    return [("CUDA tests (pytest -k cuda)", status, f"{summary.strip()} in {len(files)} files: "
             + ", ".join(p.name for p in files))]


def check_nccl(timeout: float) -> list[tuple[str, str, str]]:
    import numpy as np
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return [("2-GPU NCCL sample (torchrun)", "skipped", f"{n} GPU visible; needs 2")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for solver in ("dpm_solver++_2m", "ddpm"):
            args = ["sample", "--problem", "ring8", "--samples", "512", "--block", "128", "--steps", "10", "--solver",
                    solver, "--device", "cuda"]
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            t0 = time.perf_counter()
            rc1, out1 = _run([sys.executable, "-m", "flowode", *args, "--out", "one.npy"], timeout / 4, Path(tmp))
            rc2, out2 = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                              "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "flowode", *args,
                              "--out", "two.npy"], timeout / 4, Path(tmp))
            if rc1 or rc2:
                err = (out1 if rc1 else out2)[-300:].replace("\n", " ")
                rows.append((f"2-GPU NCCL sample, {solver}", "FAILED", err))
                continue
            a, b = np.load(Path(tmp) / "one.npy"), np.load(Path(tmp) / "two.npy")
            diff = float(np.abs(a - b).max())
            rows.append((f"2-GPU NCCL sample, {solver}", "ok" if diff < 1e-4 else "DIFFERS",
                         f"512 samples, 4 blocks on 2 ranks vs 1 process: max abs diff {diff:.1e} "
                         f"({'bitwise' if diff == 0 else 'round-off'}), {time.perf_counter() - t0:.0f} s"))
    return rows


def check_throughput(deadline: float) -> list[tuple[str, str, str]]:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import random

    import throughput as tp

    dev = torch.device("cuda")
    rows = []
    nets = tp.build_nets(["digits", "unet32"], dev)
    rng = random.Random(0)
    with torch.no_grad():
        for net, batch in (("digits", 256), ("unet32", 64), ("unet32", 256)):
            for solver in ("ddim", "dpm_solver++_2m", "unipc", "heun"):
                if time.perf_counter() > deadline:
                    rows.append((f"throughput {net} b{batch} {solver}", "skipped", "time budget used up"))
                    continue
                model, shape = nets[net]
                torch.cuda.reset_peak_memory_stats(dev)
                r = tp.measure(model, shape, batch, solver, 10, 5, dev, time.perf_counter, rng, True)
                us = r["us_step"]
                vsd = f", flowode / diffusers {r['vs_diffusers']:.3f} ({us['diffusers']:.0f} us)" \
                    if "vs_diffusers" in r else ""
                rows.append((f"throughput {net} b{batch} {solver}", "ok",
                             f"{us['flowode']:.0f} us/step, {r['samples_s']:.0f} samples/s, flowode / hand "
                             f"{r['vs_hand']:.3f} ({us['hand']:.0f} us){vsd}; peak "
                             f"{torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB; max diff vs hand "
                             f"{r['diff_hand']:.1e}"))
        if time.perf_counter() < deadline - 60:
            model, shape = nets["digits"]
            try:
                for r in tp.compile_table(model, shape, [64], 10, 5, dev, time.perf_counter):
                    rows.append((f"torch.compile digits b{r['batch']} ddim", "ok",
                                 f"compiled / eager {r['ratio']:.3f} ({r['compiled']:.0f} vs {r['eager']:.0f} us/step; "
                                 f"first solve {r['first_s']:.0f} s; diff {r['diff']:.1e}); CUDA graphs / eager "
                                 f"{r['graphs_ratio']:.3f} ({r['graphs']:.0f} us/step; first solve "
                                 f"{r['graphs_first']:.0f} s; diff {r['graphs_diff']:.1e})"))
            except Exception as exc:  # noqa: BLE001 - report it in the table, keep the other rows
                rows.append(("torch.compile / CUDA graphs", "FAILED", f"{type(exc).__name__}: {exc}"[:300]))
        else:
            rows.append(("torch.compile / CUDA graphs", "skipped", "time budget used up"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=280.0, help="seconds for the whole check (default 280)")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--require-gpu", action="store_true", help="exit with status 2 when there is no CUDA device")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); nothing was checked.")
        return 2 if args.require_gpu else 0
    t0 = time.perf_counter()
    deadline = t0 + args.budget
    name = torch.cuda.get_device_name(0)
    rows: list[tuple[str, str, str]] = []
    rows += check_tests(min(120.0, args.budget * 0.4))
    rows += check_nccl(max(deadline - time.perf_counter(), 10) * 0.3)
    rows += check_throughput(deadline)
    lines = [f"GPU check on {name} ({torch.cuda.device_count()} visible), torch {torch.__version__}, CUDA "
             f"{torch.version.cuda}; {time.perf_counter() - t0:.0f} s wall", "",
             "| check | status | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c.replace('|', '/')} |" for a, b, c in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(b in ("ok", "skipped") for _, b, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
