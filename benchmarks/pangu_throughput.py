"""Throughput of the PanGu-α parallel trainer: tokens/s and model-FLOPs utilisation (MFU).

MFU = 6 · N · tokens/s over the matmul peak measured on this machine with the same threads and dtype: on the CPU the
better of PyTorch's two fp32 matmul libraries, its BLAS (MKL) and oneDNN (N: all parameters; attention's own FLOPs
are not counted, as in the usual 6N estimate). Prints, does not assert.

    python benchmarks/pangu_throughput.py                      # single process, the trainer at ~14M parameters
    python benchmarks/pangu_throughput.py --profile            # ... and where the time goes (torch.profiler)
    python benchmarks/pangu_throughput.py --set train.compile=true            # the forward and loss compiled
    python benchmarks/pangu_throughput.py --set train.reuse_memory=false     # malloc maps fresh pages each step
    python benchmarks/pangu_throughput.py --set train.cpu_linear=aten         # nn.Linear by MKL (default: auto)
    python benchmarks/pangu_throughput.py --compare --json nbs/records/pangu-alpha/throughput_xeon.json
                    # fresh pages / MKL linear / oneDNN linear / compiled / AdamW unfused, each round in a
                    # fresh process, alternately, with profiles (name the record after the machine)
    python benchmarks/pangu_throughput.py --nproc 2 --set parallel.dp_shard=2   # distributed, through torchrun
    python benchmarks/pangu_throughput.py --preset gpu-1 --steps 50           # on a GPU (bf16 autocast)
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from paperbook.core import parse_sets, pick_device, resolve
from paperbook.pangu.distributed import build_parallel, synthetic_rows, train_parallel
from paperbook.pangu.model import num_params
from paperbook.pangu.parallel import ParallelPlan
from paperbook.pangu.train import cpuinfo_field, onednn_available, onednn_linear, pick_cpu_linear

BENCH = {"model.vocab_size": 8192, "model.seq_len": 256, "model.num_layers": 6, "model.d": 384,
         "model.num_heads": 6, "model.dropout": 0.0, "train.batch_size": 8, "data.source": "synthetic",
         "data.synthetic_rows": 256, "train.warmup": 0}  # no warm-up: any --steps; the work per step is the same


def ratio_summary(ratios: list) -> str:
    "Paired ratios, block by block, in one phrase: their median, range and how many are above 1."
    import statistics

    return (f"median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
            f"{sum(r > 1 for r in ratios)}/{len(ratios)} above 1)")


def write_record(path: str, record: dict) -> None:
    "Write a benchmark's figures as JSON to `path` (its folder made if missing) and say so."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


def matmul_peak(device, dtype, n=2048, k=384 * 4, reps=10, kernel="aten") -> float:
    "Best FLOP/s of an (n × k) @ (k × k) matmul, the shape of the model's FFN matmuls, by ATen or (CPU) oneDNN."
    a, b = torch.randn(n, k, device=device, dtype=dtype), torch.randn(k, k, device=device, dtype=dtype)
    bt = b.t().contiguous()  # oneDNN's linear takes the weight as (out, in)
    mul = (lambda: a @ b) if kernel == "aten" else (lambda: onednn_linear(a, bt, None))
    best = 0.0
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            mul()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 5 * 2 * n * k * k / (time.perf_counter() - t))
    return best


def peaks(device, dtype) -> dict:
    "kernel -> the best of three matmul_peak measurements: ATen, and oneDNN for fp32 on an x86-64 CPU."
    kernels = ["aten"] + (["onednn"] if device.type == "cpu" and dtype == torch.float32 and onednn_available() else [])
    return {k: max(matmul_peak(device, dtype, kernel=k) for _ in range(3)) for k in kernels}


GROUPS = {  # profiler op names -> where the time goes
    "matmuls": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkl", "onednn", "linear_pointwise"),
    "attention (SDPA)": ("scaled_dot_product", "flash_attention"),
    "softmax + cross-entropy": ("log_softmax", "nll_loss", "cross_entropy"),
    "layer norm": ("layer_norm",),
    "GeLU": ("gelu",),
    "optimizer": ("adam", "_foreach_", "optimizer", "clip_grad", "norm"),
    "compiled kernels (inductor)": ("compiledfxgraph", "cpp_fused", "torch-compiled", "inductor"),
}


def group_of(name: str) -> str | None:
    "The group of GROUPS whose keys occur in the op or range name `name`, or None."
    name = name.lower()
    return next((g for g, keys in GROUPS.items() if any(k in name for k in keys)), None)


def time_by_group(events) -> dict:
    """Share of the self CPU time of each group of ops (the rest: element-wise, copies, the Python loop). An op
    without a group of its own counts for the nearest enclosing op or range that has one: the per-tensor `mul_`s of
    a foreach optimizer step run inside `Optimizer.step#AdamW.step`, the copies of an attention inside SDPA."""
    out = dict.fromkeys([*GROUPS, "other"], 0.0)
    for ev in events:
        group, up = None, ev
        while group is None and up is not None:
            group, up = group_of(up.name), up.cpu_parent
        out[group or "other"] += ev.self_cpu_time_total
    total = sum(out.values()) or 1.0
    return {g: v / total for g, v in out.items()}


def warmed_up(cfg):
    "The one-process trainer of `cfg` on synthetic rows, after three steps (allocator, kernels): (par, rows, kw)."
    device = pick_device(cfg.device)
    rows = synthetic_rows(cfg.data.synthetic_rows, cfg.model.seq_len, cfg.model.vocab_size, seed=cfg.seed)
    par = build_parallel(cfg.model, ParallelPlan(remat=cfg.parallel.remat), device=device, eod_id=0)
    amp = torch.bfloat16 if cfg.train.bf16 and device.type == "cuda" else None
    kw = dict(eod_id=0, device=device, autocast_dtype=amp)
    train_parallel(par, rows, train=dataclasses.replace(cfg.train, steps=3), **kw)
    return par, rows, kw


def alternating(cfg, variants: dict, blocks: int, steps: int) -> dict:
    """name -> tokens/s per block: one warmed-up trainer of `cfg` trained with each variant's `train` fields (name ->
    {field: value}) in turn, in blocks of `steps` steps, the order reversed every other block, so that a machine
    whose speed drifts slows all alike."""
    par, rows, kw = warmed_up(cfg)
    runs = {name: [] for name in variants}
    for b in range(blocks):
        for name in list(runs)[:: 1 if b % 2 == 0 else -1]:
            r = train_parallel(par, rows, train=dataclasses.replace(cfg.train, steps=steps, **variants[name]), **kw)
            runs[name].append(r["tokens"] / r["seconds"])
    return runs


def single(cfg, steps: int, profile: bool) -> dict:
    par, rows, kw = warmed_up(cfg)
    device = kw["device"]
    short, timed = (dataclasses.replace(cfg.train, steps=n) for n in (3, steps))
    runs = sorted((train_parallel(par, rows, train=timed, **kw) for _ in range(3)), key=lambda r: r["seconds"])
    res = runs[1]  # the median of three repeats
    groups = None
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with prof(activities=acts) as p:
            train_parallel(par, rows, train=short, **kw)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(p.key_averages().table(sort_by=key, row_limit=12))
        groups = time_by_group(p.events())
        print("  ".join(f"{g} {100 * v:.0f}%" for g, v in groups.items()))
    return {"tokens_per_s": res["tokens"] / res["seconds"], "device": device,
            "dtype": kw["autocast_dtype"] or torch.float32, "profile": groups}


def distributed(args, sets) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "paperbook.pangu", "--preset", args.preset, "--out", tmp]
        for k, v in {**sets, "nproc_per_node": args.nproc, "train.steps": args.steps}.items():
            cmd += ["--set", f"{k}={v}"]
        env = {**os.environ, "PAPERBOOK_PROGRESS": "0"}
        subprocess.run(cmd, check=True, env=env)
        m = json.load(open(os.path.join(tmp, "metrics.json")))["metrics"]
    return {"tokens_per_s": m["tokens"] / m["seconds"], "device": torch.device(m["device"]),
            "dtype": torch.bfloat16 if m["device"].startswith("cuda") else torch.float32}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-toy")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--compare", action="store_true", help="the variants of COMPARE, each round in a fresh process")
    p.add_argument("--rounds", type=int, default=3, help="--compare: rounds of the variants")
    p.add_argument("--json", help="write the figures (and profiles) to this file")
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    args = p.parse_args()
    sets = parse_sets(args.set)
    if args.preset == "cpu-toy":
        sets = {**BENCH, **sets}
    cfg = resolve("pangu-alpha", args.preset, {**sets, "nproc_per_node": args.nproc})
    n = num_params(cfg.model)
    if args.child_json:  # one variant of --compare, in a process of its own
        r = single(cfg, args.steps, profile=True)
        by_kernel = peaks(r["device"], r["dtype"])
        Path(args.child_json).write_text(json.dumps({"tokens_per_s": r["tokens_per_s"],
                                                     "peak": max(by_kernel.values()), "peak_by_kernel": by_kernel,
                                                     "profile": r["profile"], "device": str(r["device"]),
                                                     "dtype": str(r["dtype"]).removeprefix("torch.")}))
        return
    if args.compare:
        if args.nproc != 1:
            p.error("--compare runs one process")
        compare(args, sets, n, cfg)
        return
    if args.nproc == 1:
        r = single(cfg, args.steps, args.profile)
    else:
        r = distributed(args, sets)
    report(cfg, n, {"compiled" if cfg.train.compile else "eager": r}, args)


COMPARE = {"eager, fresh pages": {"train.reuse_memory": False}, "eager, MKL linear": {"train.cpu_linear": "aten"},
           "eager, oneDNN linear": {"train.cpu_linear": "onednn"}, "compiled": {"train.compile": True},
           "eager, AdamW unfused": {"train.fused": False}}
# the default eager trainer is one of the two linear variants: the one train.cpu_linear="auto" picks (in the record);
# every variant but the last runs AdamW fused (train.fused, the default)


def compare(args, sets: dict, n: int, cfg) -> None:
    "Each variant of COMPARE in a fresh process (malloc's setting is process-wide), alternately, `args.rounds` times."
    rounds = {name: [] for name in COMPARE}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for name, extra in COMPARE.items():
                out = Path(tmp) / "child.json"
                cmd = [sys.executable, __file__, "--preset", args.preset, "--steps", str(args.steps),
                       "--child-json", str(out)]
                for k, v in {**sets, **extra}.items():
                    cmd += ["--set", f"{k}={v}"]
                subprocess.run(cmd, check=True, env={**os.environ, "PAPERBOOK_PROGRESS": "0"})
                rounds[name].append(json.loads(out.read_text()))
                print(f"round {i + 1} {name}: tokens/s {rounds[name][-1]['tokens_per_s']:,.0f}, matmul peak "
                      f"{rounds[name][-1]['peak'] / 1e9:,.1f} G", flush=True)
    peak = max(r["peak"] for rs in rounds.values() for r in rs)  # the best this machine reached in the whole run
    by_kernel = {k: max(r["peak_by_kernel"][k] for rs in rounds.values() for r in rs)
                 for k in next(iter(rounds.values()))[0]["peak_by_kernel"]}
    best = {}
    for name, rs in rounds.items():
        r = max(rs, key=lambda r: r["tokens_per_s"])
        best[name] = {**r, "rounds": [x["tokens_per_s"] for x in rs], "peak_rounds": [x["peak"] for x in rs],
                      "peak_by_kernel_rounds": [x.get("peak_by_kernel") for x in rs],
                      "device": torch.device(r["device"]),
                      "dtype": getattr(torch, r["dtype"])}
    report(cfg, n, best, args, peak=peak, by_kernel=by_kernel)


def report(cfg, n: int, results: dict, args, peak: float | None = None, by_kernel: dict | None = None) -> None:
    "Print tokens/s and MFU of each variant against the matmul peak (measured now if not given); optionally as JSON."
    r = next(iter(results.values()))
    if args.nproc > 1 and r["device"].type == "cpu":  # the processes share the machine: compare with all its cores
        torch.set_num_threads(os.cpu_count() or 1)
    threads = torch.get_num_threads()
    if peak is None:
        by_kernel = peaks(r["device"], r["dtype"])  # the best this machine reaches now, by library
        peak = max(by_kernel.values())
    peak_note = f"{threads} threads" if r["device"].type == "cpu" else torch.cuda.get_device_name()
    if by_kernel and len(by_kernel) > 1:
        peak_note += ", the better of " + " and ".join(f"{k} {v / 1e9:,.0f} G" for k, v in by_kernel.items())
    L, d, T = cfg.model.num_layers, cfg.model.d, cfg.model.seq_len
    print(f"model {n / 1e6:.1f}M parameters, seq {cfg.model.seq_len}, batch {cfg.train.batch_size}, "
          f"processes {args.nproc}, plan {vars(cfg.parallel)}")
    rows = {}
    for name, r in results.items():
        mfu = 6 * n * r["tokens_per_s"] / peak
        mfu_attn = (6 * n + 12 * L * d * T) * r["tokens_per_s"] / peak  # PaLM's count, attention scores included
        print(f"{name}: tokens/s {r['tokens_per_s']:,.0f}   model FLOP/s {6 * n * r['tokens_per_s'] / 1e9:,.1f} G   "
              f"matmul peak {peak / 1e9:,.1f} G ({r['dtype']}, {peak_note})   MFU {100 * mfu:.0f}% "
              f"({100 * mfu_attn:.0f}% counting attention's FLOPs)")
        rows[name] = {"tokens_per_s": r["tokens_per_s"], "mfu": mfu, "mfu_with_attention": mfu_attn,
                      "profile": r.get("profile"), "rounds": r.get("rounds"), "peak_rounds": r.get("peak_rounds"),
                      "peak_by_kernel_rounds": r.get("peak_by_kernel_rounds")}
    if args.json:
        out = {"cpu": cpuinfo_field("model name"), "cpu_linear_auto": pick_cpu_linear("auto"), "params": n,
               "seq_len": T, "batch_size": cfg.train.batch_size, "threads": threads,
               "peak_flops": peak, "peak_by_kernel": by_kernel, "dtype": str(r["dtype"]), "device": str(r["device"]),
               "steps": args.steps, "torch": torch.__version__, "cpus": os.cpu_count(), "variants": rows,
               "profile_by": "nearest enclosing group"}  # time_by_group's rule (older records: each op by its name)
        write_record(args.json, out)


if __name__ == "__main__":
    main()
