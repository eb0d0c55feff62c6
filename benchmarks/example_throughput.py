"""Throughput of the example chapter's Monte Carlo kernel: points per second, 1 process and torchrun.

    python benchmarks/example_throughput.py [--samples 2**24] [--nproc 2]

Prints figures; asserts nothing (timings vary with the machine).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def single(samples: int, block: int) -> float:
    import torch

    from paperbook.dist import DistInfo
    from paperbook.example.chapter import estimate_pi

    info = DistInfo(0, 1, 0, torch.device("cpu"), None)
    estimate_pi(block, block, 0, info)  # warm-up
    t = time.perf_counter()
    estimate_pi(samples, block, 0, info)
    return samples / (time.perf_counter() - t)


def distributed(samples: int, block: int, nproc: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "paperbook.cli", "run", "example", "--preset", "cpu-dist", "--set", f"nproc_per_node={nproc}",
               "--set", f"num_samples={samples}", "--set", f"block_size={block}", "--set", "repeats=2",
               "--set", "sizes=2,4", "--out", tmp]
        env = {**os.environ, "PAPERBOOK_PROGRESS": "0"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"torchrun exited with {r.returncode}:\n{r.stderr[-3000:]}")
        wall = json.loads((Path(tmp) / "metrics.json").read_text())["environment"]["wall_time_s"]
    return samples / wall  # includes process-group start-up and the layout re-check


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=2**24)
    p.add_argument("--block", type=int, default=2**16)
    p.add_argument("--nproc", type=int, default=2)
    a = p.parse_args()
    if a.samples < 1 or a.block < 1 or a.samples % a.block:
        p.error(f"--samples ({a.samples}) must be a positive multiple of --block ({a.block})")
    print(f"1 process:         {single(a.samples, a.block) / 1e6:8.1f} M points/s")
    print(f"torchrun x{a.nproc} (gloo): {distributed(a.samples, a.block, a.nproc) / 1e6:8.1f} M points/s "
          "(end to end, with start-up)")
