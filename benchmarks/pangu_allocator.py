"""What keeping freed memory (`paperbook.dist.reuse_freed_memory`, `train.reuse_memory`) does to the PanGu-α trainer.

glibc's malloc hands large tensors fresh pages from the kernel and returns them on free, so every training step
page-faults its activations and gradients in again. This runs the trainer of `pangu_throughput.py` (14M
parameters, fp32) with and without `train.reuse_memory`, as a pair at the same time: two one-thread processes
pinned to two cores, then the cores swapped, so that a machine whose speed drifts slows both alike. Per variant it
prints page faults and kernel (system) CPU seconds per step, read from getrusage, tokens/s and the process's peak
memory; and the paired ratio of tokens/s, block by block. Linux with two or more cores. Prints, does not assert.

    python benchmarks/pangu_allocator.py
    python benchmarks/pangu_allocator.py --json nbs/records/pangu-alpha/allocator.json
"""

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS = {"fresh pages": {"train.reuse_memory": False}, "freed memory kept": {"train.reuse_memory": True}}


def child(sets: dict, cpu: int, blocks: int, steps: int, out: str) -> None:
    "Train on core `cpu` with one thread; per block of `steps` steps: tokens/s, page faults and kernel s per step."
    os.sched_setaffinity(0, {cpu})
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    from pangu_throughput import BENCH, warmed_up

    from paperbook.core import resolve
    from paperbook.pangu.distributed import train_parallel

    cfg = resolve("pangu-alpha", "cpu-toy", {**BENCH, "device": "cpu", **sets})
    par, rows, kw = warmed_up(cfg)  # three steps first: the heap settles
    res = []
    for _ in range(blocks):
        u0 = resource.getrusage(resource.RUSAGE_SELF)
        r = train_parallel(par, rows, train=dataclasses.replace(cfg.train, steps=steps), **kw)
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        res.append({"tokens_per_s": r["tokens"] / r["seconds"],
                    "faults_per_step": (u1.ru_minflt - u0.ru_minflt) / steps,
                    "kernel_s_per_step": (u1.ru_stime - u0.ru_stime) / steps})
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    Path(out).write_text(json.dumps({"blocks": res, "peak_rss_mib": peak_mib}))


def side_by_side(variants: dict, blocks: int, steps: int) -> dict:
    """Two variants (name -> config overrides) of the trainer as two one-thread processes pinned to two cores, then
    the cores swapped: name -> one result per placement (its core, its blocks, its peak memory)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not sys.platform.startswith("linux") or len(cpus) < 2 or len(variants) != 2:
        raise SystemExit("needs Linux, two cores and two variants (the variants run side by side)")
    runs = {name: [] for name in variants}
    env = {**os.environ, "PAPERBOOK_PROGRESS": "0"}
    with tempfile.TemporaryDirectory() as tmp:
        for swap in (False, True):
            procs = {}
            for i, (name, sets) in enumerate(variants.items()):
                cpu = cpus[(i + swap) % 2]
                out = Path(tmp) / f"{i}-{int(swap)}.json"
                cmd = [sys.executable, __file__, "--blocks", str(blocks), "--steps", str(steps),
                       "--child", json.dumps(sets), str(cpu), str(out)]
                procs[name] = (subprocess.Popen(cmd, env=env), out, cpu)
            for name, (proc, out, cpu) in procs.items():
                if proc.wait() != 0:
                    raise SystemExit(f"the {name!r} process failed (exit {proc.returncode})")
                runs[name].append({"cpu": cpu, **json.loads(out.read_text())})
    return runs


def paired_ratios(runs: dict) -> list[float]:
    "tokens/s of the second variant over the first, block by block (blocks of the same index ran at the same time)."
    a, b = runs.values()
    return [y["tokens_per_s"] / x["tokens_per_s"] for ra, rb in zip(a, b, strict=True)
            for x, y in zip(ra["blocks"], rb["blocks"], strict=True)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="steps per block")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--child", nargs=3, metavar=("SETS", "CPU", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sets, cpu, out = args.child
        child(json.loads(sets), int(cpu), args.blocks, args.steps, out)
        return
    runs = side_by_side(VARIANTS, args.blocks, args.steps)
    summary = {}
    for name, rs in runs.items():
        blocks = [b for r in rs for b in r["blocks"]]
        summary[name] = {k: sum(b[k] for b in blocks) / len(blocks)
                         for k in ("tokens_per_s", "faults_per_step", "kernel_s_per_step")}
        summary[name]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rs)
        m = summary[name]
        print(f"{name:18s} tokens/s {m['tokens_per_s']:7,.0f}   page faults per step {m['faults_per_step']:9,.0f}   "
              f"kernel CPU s per step {m['kernel_s_per_step']:.3f}   peak memory {m['peak_rss_mib']:,.0f} MiB")
    ratios = paired_ratios(runs)
    print(f"tokens/s kept / fresh, paired block by block: mean {sum(ratios) / len(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {sum(r > 1 for r in ratios)}/{len(ratios)} above 1)")
    if args.json:
        import torch

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"threads_per_process": 1, "steps_per_block": args.steps,
                                               "torch": torch.__version__, "summary": summary, "ratios": ratios,
                                               "runs": runs}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
