"""What sending the PanGu-α trainer's fp32 `nn.Linear` products to oneDNN (`train.cpu_linear`) does on this CPU.

PyTorch multiplies an fp32 `F.linear` on the CPU with its BLAS (MKL); `paperbook.pangu.train.onednn_linear` sends
the forward product and the input gradient to oneDNN instead. This measures, in one process with the machine's
threads, (1) each product of the trainer's layers (M = batch × sequence rows) by both libraries, in alternating
blocks so that a machine whose speed drifts slows both alike: the median GFLOP/s; and (2) the trainer of
`pangu_throughput.py` (14M parameters, seq 256, batch 8) with `train.cpu_linear` = "aten" and "onednn": in one
process in alternating blocks of steps (the order swapped every block), and as two one-thread processes side by side
on two cores, then swapped (`pangu_allocator.py`'s design: no state shared between the variants): tokens/s and the
paired ratio, block by block. It also records which code path MKL reports for this CPU (MKL_VERBOSE). Prints, does
not assert.

    python benchmarks/pangu_cpu_linear.py
    python benchmarks/pangu_cpu_linear.py --json nbs/records/pangu-alpha/cpu_linear_xeon.json  # named after the CPU
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pangu_allocator import paired_ratios, side_by_side  # noqa: E402
from pangu_throughput import BENCH, alternating, ratio_summary, write_record  # noqa: E402

from paperbook.core import resolve  # noqa: E402
from paperbook.pangu.train import cpuinfo_field, onednn_available, onednn_linear, pick_cpu_linear  # noqa: E402

M = BENCH["train.batch_size"] * BENCH["model.seq_len"]  # rows of a batch
_D, _V = BENCH["model.d"], BENCH["model.vocab_size"]  # the trainer's width (d_ff = 4d) and vocabulary
LAYERS = {f"q, k, v, attention output ({_D} → {_D})": (_D, _D), f"FFN in ({_D} → {4 * _D})": (_D, 4 * _D),
          f"FFN out ({4 * _D} → {_D})": (4 * _D, _D), f"output layer ({_D} → {_V})": (_D, _V),
          f"the throughput benchmark's peak shape ({4 * _D} → {4 * _D})": (4 * _D, 4 * _D)}


def products(k: int, n: int) -> dict:
    "name -> (ATen call, oneDNN call) of the three products of a linear layer k → n over M rows."
    x, w, dy = torch.randn(M, k), torch.randn(n, k), torch.randn(M, n)
    return {"forward X Wᵀ": (lambda: x @ w.t(), lambda: onednn_linear(x, w, None)),
            "∂X = ∂Y W": (lambda: dy @ w, lambda: onednn_linear(dy, w.t(), None)),
            "∂W = ∂Yᵀ X": (lambda: dy.t() @ x, lambda: onednn_linear(dy.t(), x.t(), None))}


def gflops(fn, flop: float, reps: int = 3) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return reps * flop / (time.perf_counter() - t) / 1e9


def kernels(blocks: int) -> dict:
    "Median GFLOP/s of each product of each layer shape, ATen and oneDNN alternating block by block."
    out = {}
    for layer, (k, n) in LAYERS.items():
        flop = 2 * M * k * n
        for name, (aten, dnn) in products(k, n).items():
            rates = {"aten": [], "onednn": []}
            for fn in (aten, dnn):
                gflops(fn, flop)  # first calls: primitives, caches
            for b in range(blocks):
                for kernel, fn in (("aten", aten), ("onednn", dnn))[:: 1 if b % 2 == 0 else -1]:
                    rates[kernel].append(gflops(fn, flop))
            row = {kernel: statistics.median(v) for kernel, v in rates.items()}
            out.setdefault(layer, {})[name] = row
            print(f"{layer:52s} {name:12s} ATen {row['aten']:5.0f}  oneDNN {row['onednn']:5.0f} GFLOP/s", flush=True)
    return out


def trainer(blocks: int, steps: int) -> dict:
    "tokens/s of the trainer with train.cpu_linear aten and onednn in alternating blocks of `steps` steps."
    cfg = resolve("pangu-alpha", "cpu-toy", {**BENCH, "device": "cpu"})
    runs = alternating(cfg, {k: {"cpu_linear": k} for k in ("aten", "onednn")}, blocks, steps)
    ratios = [d / a for a, d in zip(runs["aten"], runs["onednn"], strict=True)]
    summarise(f"trainer in one process, {torch.get_num_threads()} threads", runs, ratios)
    return {"tokens_per_s": runs, "ratios": ratios}


def trainer_side_by_side(blocks: int, steps: int) -> dict:
    "The same two, each in a one-thread process of its own, side by side, then on swapped cores."
    runs = side_by_side({k: {"train.cpu_linear": k} for k in ("aten", "onednn")}, max(1, blocks // 4), steps)
    ratios = paired_ratios(runs)
    tokens = {k: [b["tokens_per_s"] for r in rs for b in r["blocks"]] for k, rs in runs.items()}
    summarise("trainer side by side, one thread each", tokens, ratios)
    return {"tokens_per_s": tokens, "ratios": ratios}


def summarise(what: str, tokens: dict, ratios: list) -> None:
    print(f"{what}: median tokens/s ATen {statistics.median(tokens['aten']):,.0f}, oneDNN "
          f"{statistics.median(tokens['onednn']):,.0f}; oneDNN / ATen block by block: {ratio_summary(ratios)}",
          flush=True)


def mkl_path() -> str:
    "The first line MKL_VERBOSE prints for an fp32 product here: MKL's version and the code path it chose."
    code = "import torch; a = torch.ones(64, 64); a @ a"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MKL_VERBOSE": "1"}, text=True,
                         capture_output=True).stdout
    return next((line for line in out.splitlines() if line.startswith("MKL_VERBOSE") and "SGEMM" not in line), "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=12, help="alternating blocks per product and for the trainer")
    p.add_argument("--steps", type=int, default=6, help="trainer steps per block")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    if not onednn_available():
        p.error("oneDNN's fp32 linear kernel is not available here (needs an x86-64 PyTorch build with mkldnn)")
    os.environ["PAPERBOOK_PROGRESS"] = "0"
    mkl = mkl_path()
    print(mkl or "MKL_VERBOSE printed nothing (PyTorch without MKL?)")
    out = {"threads": torch.get_num_threads(), "rows": M, "torch": torch.__version__, "mkl": mkl,
           "cpu": cpuinfo_field("model name"), "cpu_linear_auto": pick_cpu_linear("auto"),
           "kernels": kernels(args.blocks), "trainer": trainer(args.blocks, args.steps),
           "trainer_side_by_side": trainer_side_by_side(args.blocks, args.steps), "steps_per_block": args.steps}
    if args.json:
        write_record(args.json, out)


if __name__ == "__main__":
    main()
