"""Peak memory of sampling a network whose parameters require grad (PyTorch's default).

Each configuration runs in a fresh Python process and reports that process's peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) minus its RSS just before sampling, so the
numbers are the memory the sampling itself added:

* a hand-written DDIM loop inside ``torch.no_grad()`` (the floor);
* ``flowode.integrate`` with the default ``grad=None`` (no autograd graph is kept);
* ``flowode.integrate`` inside ``torch.no_grad()``;
* ``flowode.invert.fixed_point_encode`` (exact DDIM inversion: many evaluations, no graph kept);
* ``flowode.integrate(..., grad="autograd")`` (backpropagation through every step: the graph of
  every step is kept, which is what sampling cost before the driver's autograd mode existed).

Network: ``flowode.nets.MLP(dim=2, hidden=512, depth=3)`` with ``requires_grad=True`` parameters,
batch 4096, float32, DDIM on the DDPM linear schedule, trailing grid. The autograd rows grow with
the number of steps; 100 steps with a graph would need ~20 GB here, so that row runs at 10 steps only.
Every configuration runs in three processes (peak RSS depends on the allocator's fragmentation; the
median and all three values are printed).

Usage:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/memory.py [--markdown]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, torch, flowode
steps, mode = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
net = flowode.nets.MLP(dim=2, hidden=512, depth=3)
assert all(p.requires_grad for p in net.parameters())
sched = flowode.DiscreteVPSchedule.linear()
model = flowode.EpsilonModel(net, sched)
x = torch.randn(4096, 2)
grid = flowode.sigma_grid(sched, steps, "trailing")
def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
flowode.integrate(model, x[:8], grid, "ddim")  # warm-up: imports, caches, allocator
before = rss_kib()
if mode == "hand":
    levels = [float(v) for v in grid]
    with torch.no_grad():
        out = x
        for s0, s1 in zip(levels[:-1], levels[1:]):
            a0, a1 = float(sched.alpha_from_sigma(s0)), float(sched.alpha_from_sigma(s1))
            eps = net(out, torch.full((4096,), float(sched.t(s0))))
            out = out * (a1 / a0) + eps * (a1 * (s1 - s0)) if s1 > 0 else out / a0 - eps * s0
elif mode == "fixed_point":
    out = flowode.invert.fixed_point_encode(model, x, grid, "ddim", on_fail="ignore").latent
elif mode == "no_grad":
    with torch.no_grad():
        out = flowode.integrate(model, x, grid, "ddim").x
elif mode == "default":
    out = flowode.integrate(model, x, grid, "ddim").x
else:
    out = flowode.integrate(model, x, grid, "ddim", grad="autograd").x
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"steps": steps, "mode": mode, "added_mib": (peak - before) / 1024,
                  "graph": out.grad_fn is not None}))
"""

CONFIGS = [(10, "hand"), (10, "no_grad"), (10, "default"), (10, "autograd"), (10, "fixed_point"), (100, "hand"),
           (100, "no_grad"), (100, "default")]
REPEATS = 3
LABELS = {"hand": "hand-written DDIM loop inside torch.no_grad()",
          "no_grad": "flowode.integrate inside torch.no_grad()",
          "default": "flowode.integrate (default grad=None)",
          "autograd": "flowode.integrate(grad=\"autograd\")",
          "fixed_point": "flowode.invert.fixed_point_encode (DDIM, exact inversion)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true")
    ap.parse_args()
    rows = []
    for steps, mode in CONFIGS:
        runs = []
        for _ in range(REPEATS):
            out = subprocess.run([sys.executable, "-c", CHILD, str(steps), mode], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["added_mib"])
        rows.append({**runs[len(runs) // 2], "all": [r["added_mib"] for r in runs]})
    print(f"torch {__import__('torch').__version__}; MLP(2, hidden 512, depth 3), batch 4096, float32, DDIM, "
          "parameters require grad\n")
    print(f"| sampling | steps | peak RSS added (MiB), median of {REPEATS} processes | all runs | result has a graph |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {LABELS[r['mode']]} | {r['steps']} | {r['added_mib']:.0f} | "
              f"{', '.join(f'{v:.0f}' for v in r['all'])} | {'yes' if r['graph'] else 'no'} |")


if __name__ == "__main__":
    main()
