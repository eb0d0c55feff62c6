"""Smoke test of every chapter's GPU preset: run it with its work cut to a few steps, report what broke.

    python benchmarks/gpu_smoke.py                    # every chapter's gpu-1 preset + a 2-GPU NCCL run of PanGu-α
    python benchmarks/gpu_smoke.py --chapters acsl    # some chapters only
    python benchmarks/gpu_smoke.py --cpu              # the same runs on the CPU (checks the script and the cuts)

Each chapter declares the overrides that cut a preset to a few steps beside its presets (`Chapter.smoke`);
this script runs `paperbook run CHAPTER --preset gpu-1 --set ...` with them in a subprocess and prints, per
chapter: ok / error (skipped: a chapter without the preset), seconds, peak GPU memory. With two or more GPUs it
also trains PanGu-α for a few steps on two processes under torchrun (NCCL, data parallel × tensor parallel). On a
machine without a GPU it says so and exits 0. It prints; it asserts nothing.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sets(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        v = json.dumps([list(x) if isinstance(x, tuple) else x for x in v]) if isinstance(v, (tuple, list)) else v
        out += ["--set", f"{k}={v}"]
    return out


def _run(cmd: list[str], out: Path, timeout: int) -> dict:
    "Run one command; ok/error, seconds, the peak GPU memory its run record holds."
    env = {**os.environ, "PAPERBOOK_PROGRESS": "0"}
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        ok, err = r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1][:200]
        if r.returncode < 0:  # killed: by the kernel's out-of-memory killer when the signal is SIGKILL
            err = f"killed by {signal.Signals(-r.returncode).name}" + (" (out of memory?)"
                                                                         if r.returncode == -signal.SIGKILL else "")
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout} s"
    seconds = time.perf_counter() - t
    peak = None
    if (out / "metrics.json").is_file():
        peak = json.loads((out / "metrics.json").read_text())["environment"].get("peak_cuda_mib")
    return {"ok": ok, "error": "" if ok else err, "seconds": seconds, "peak_cuda_mib": peak}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chapters", nargs="*", default=None)
    p.add_argument("--preset", default="gpu-1")
    p.add_argument("--cpu", action="store_true", help="run the same cut-down presets on the CPU")
    p.add_argument("--timeout", type=int, default=300, help="seconds per chapter")
    args = p.parse_args()

    import torch

    from paperbook.core import chapters

    gpus = torch.cuda.device_count()
    if not gpus and not args.cpu:
        print("no GPU on this machine (torch.cuda.device_count() == 0): nothing to run; --cpu runs the same "
              "cut-down presets on the CPU")
        return 0
    print(f"torch {torch.__version__}, {gpus} GPU(s)"
          + (f": {torch.cuda.get_device_name(0)}" if gpus else "") + (" — running on the CPU" if args.cpu else ""))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ch in chapters().items():
            if args.chapters and name not in args.chapters:
                continue
            if args.preset not in ch.presets:  # a CPU-only chapter: nothing to check on a GPU
                rows.append((name, {"ok": None, "error": f"no preset {args.preset!r}", "seconds": 0.0,
                                    "peak_cuda_mib": None}))
                print(f"  {name}: skipped", flush=True)
                continue
            out = Path(tmp) / name
            extra = {"device": "cpu"} if args.cpu else {}
            cmd = [sys.executable, "-m", "paperbook.cli", "run", name, "--preset", args.preset,
                   *_sets({**ch.smoke, **extra, "nnodes": 1, "nproc_per_node": 1}), "--out", str(out)]
            rows.append((name, _run(cmd, out, args.timeout)))
            print(f"  {name}: {'ok' if rows[-1][1]['ok'] else 'error'}", flush=True)
        if gpus >= 2 and not args.cpu and (not args.chapters or "pangu-alpha" in args.chapters):
            out = Path(tmp) / "pangu-nccl"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   "-m", "paperbook.pangu", "--preset", "cpu-dist", "--set", "device=cuda",
                   "--set", "nproc_per_node=2", "--set", "parallel.pp=1", "--set", "parallel.microbatches=1",
                   "--set", "parallel.tp=2", "--set", "train.steps=5", "--out", str(out)]
            rows.append(("pangu-alpha 2×GPU (NCCL, tp 2)", _run(cmd, out, args.timeout)))
    print(f"\n{'chapter':34s} {'result':7s} {'seconds':>8s} {'peak GPU MiB':>13s}  error")
    for name, r in rows:
        peak = f"{r['peak_cuda_mib']:.0f}" if r["peak_cuda_mib"] is not None else "—"
        result = "skipped" if r["ok"] is None else "ok" if r["ok"] else "ERROR"
        print(f"{name:34s} {result:7s} {r['seconds']:8.1f} {peak:>13s}  {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
