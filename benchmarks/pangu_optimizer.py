"""What AdamW's fused kernel (`train.fused`, the trainers' default where it applies) does to the PanGu-α trainer.

Without `fused=True`, PyTorch's AdamW updates a CPU model's tensors one at a time, each by about ten element-wise
ops that each read and write the whole tensor (its default on the CPU; on CUDA it uses foreach kernels); the fused
kernel reads and writes each tensor once. This measures, in one process with the machine's threads, (1) the
optimizer step alone on the parameters of `pangu_throughput.py`'s trainer (14M, fp32) with gradients set, both ways
in alternating blocks: the median milliseconds per step; and (2) the trainer with `train.fused` true and false in
alternating blocks of steps (the order swapped every block): tokens/s and the paired ratio, block by block. Prints,
does not assert.

    python benchmarks/pangu_optimizer.py
    python benchmarks/pangu_optimizer.py --json nbs/records/pangu-alpha/optimizer_xeon.json  # named after the CPU
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pangu_throughput import BENCH, alternating, ratio_summary, write_record  # noqa: E402

from paperbook.core import resolve  # noqa: E402
from paperbook.pangu.model import PanguAlpha, num_params  # noqa: E402
from paperbook.pangu.train import cpuinfo_field, make_optimizer, param_groups  # noqa: E402

KINDS = {"fused": True, "per-tensor loop": False}  # name -> train.fused (False: PyTorch's default on the CPU)


def step_alone(cfg, blocks: int, reps: int = 5) -> dict:
    "name -> ms per AdamW step on the trainer's parameters, per block of `reps` steps (blocks alternate)."
    model = PanguAlpha(cfg.model)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opts = {k: make_optimizer(param_groups(model, cfg.train.weight_decay), "adamw", 1e-5, cfg.train.beta2, fused=f)
            for k, f in KINDS.items()}  # groups of their own: an optimizer writes its settings into its groups
    assert [bool(o.param_groups[0]["fused"]) for o in opts.values()] == list(KINDS.values())
    for opt in opts.values():
        opt.step()  # the first step allocates the moments
    ms = {k: [] for k in opts}
    for b in range(blocks):
        for k in list(opts)[:: 1 if b % 2 == 0 else -1]:
            t = time.perf_counter()
            for _ in range(reps):
                opts[k].step()
            ms[k].append(1e3 * (time.perf_counter() - t) / reps)
    print(f"AdamW step alone ({num_params(cfg.model) / 1e6:.1f}M parameters): median ms fused "
          f"{statistics.median(ms['fused']):.1f}, per-tensor loop {statistics.median(ms['per-tensor loop']):.1f}",
          flush=True)
    return ms


def trainer(cfg, blocks: int, steps: int) -> dict:
    "tokens/s of the trainer with train.fused true and false in alternating blocks, and their ratio per block."
    runs = alternating(cfg, {k: {"fused": f} for k, f in KINDS.items()}, blocks, steps)
    ratios = [a / b for a, b in zip(runs["fused"], runs["per-tensor loop"], strict=True)]
    print(f"trainer in one process, {torch.get_num_threads()} threads: median tokens/s fused "
          f"{statistics.median(runs['fused']):,.0f}, per-tensor loop "
          f"{statistics.median(runs['per-tensor loop']):,.0f}; fused / loop block by block: {ratio_summary(ratios)}",
          flush=True)
    return {"tokens_per_s": runs, "ratios": ratios}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=12, help="alternating blocks, for the step alone and the trainer")
    p.add_argument("--steps", type=int, default=6, help="trainer steps per block")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    os.environ["PAPERBOOK_PROGRESS"] = "0"
    cfg = resolve("pangu-alpha", "cpu-toy", {**BENCH, "device": "cpu"})
    out = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpuinfo_field("model name"),
           "params": num_params(cfg.model), "step_ms": step_alone(cfg, args.blocks),
           "trainer": trainer(cfg, args.blocks, args.steps), "steps_per_block": args.steps}
    if args.json:
        write_record(args.json, out)


if __name__ == "__main__":
    main()
