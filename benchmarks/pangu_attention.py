"""Attention kernels for the PanGu-α trainer on this machine: one layer's forward + backward, in milliseconds.

The trainer calls `F.scaled_dot_product_attention` with the packed-document mask of `positions_and_mask`. This
script times that call against the unfused paths (PyTorch's math backend, and the formula written out and compiled,
whose two products run on the matmul library) and variants that could skip the masked (upper) half of the score
matrix, at the throughput benchmark's shape (batch 8, 6 heads of 64, sequences of 256, fp32), and checks each
against the trainer's output and gradients. Prints, does not assert.

    python benchmarks/pangu_attention.py
    python benchmarks/pangu_attention.py --json nbs/records/pangu-alpha/attention.json   # the chapter shows it
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from paperbook.pangu.model import positions_and_mask


def sdpa_mask(q, k, v, mask):
    "What the trainer runs: PyTorch's SDPA with the boolean packed-document mask."
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def sdpa_causal(q, k, v, mask):
    "SDPA with `is_causal=True` (ignores document boundaries: a bound on what a causal kernel gains)."
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_math(q, k, v, mask):
    "SDPA's unfused reference path: the score matrix by a batched matmul, the masked softmax, a second matmul."
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def explicit(q, k, v, mask):
    "softmax(QKᵀ/√d + M) V written out, for torch.compile to fuse the scaling, mask and softmax between the matmuls."
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


def causal_chunks(q, k, v, mask, chunks: int = 4):
    "Queries in `chunks` blocks; block i attends only to keys up to its own end, so most masked scores are skipped."
    T, step = q.shape[-2], q.shape[-2] // chunks
    outs = []
    for i in range(chunks):
        lo, hi = i * step, T if i == chunks - 1 else (i + 1) * step
        outs.append(F.scaled_dot_product_attention(q[..., lo:hi, :], k[..., :hi, :], v[..., :hi, :],
                                                   attn_mask=mask[..., lo:hi, :hi]))
    return torch.cat(outs, dim=-2)


def time_fwd_bwd(fn, q, k, v, mask, reps: int) -> float:
    "Best of `reps` timings (ms) of forward + backward."
    best = float("inf")
    for i in range(reps + 2):  # two warm-up calls (compilation, allocator)
        t = time.perf_counter()
        fn(q, k, v, mask).sum().backward()
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    return 1e3 * best


def flex_variant():
    "FlexAttention with a causal block mask, or the reason it cannot train here."
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:
        return None, f"not available ({e})"
    flex = torch.compile(flex_attention)

    def run(q, k, v, mask):
        T = q.shape[-2]
        bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device=str(q.device))
        return flex(q, k, v, block_mask=bm)
    return run, None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=10, help="timings per round (the best is kept)")
    p.add_argument("--rounds", type=int, default=5, help="rounds over all variants (the median is reported)")
    p.add_argument("--json", help="write the timings to this file")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    B, H, T, D = args.batch, args.heads, args.seq, args.head_dim
    ids = torch.randint(1, 100, (B, T), generator=g)
    ids[:, T // 3] = 0  # one document boundary per row, as in packed training rows
    _, mask = positions_and_mask(ids, eod_id=0)
    leaves = [torch.randn(B, H, T, D, generator=g, requires_grad=True) for _ in range(3)]

    def grads(fn):
        for t in leaves:
            t.grad = None
        out = fn(*leaves, mask)
        out.sum().backward()
        return out.detach(), [t.grad.clone() for t in leaves]

    ref_out, ref_grads = grads(sdpa_mask)
    variants = {"SDPA, packed-document mask (the trainer)": (sdpa_mask, False),  # the reference itself
                "SDPA, is_causal (no document boundaries)": (sdpa_causal, False),
                "SDPA, math backend (unfused)": (sdpa_math, True),
                "written out, torch.compile": (torch.compile(explicit), True),
                "causal chunks (4), eager": (causal_chunks, True),
                "causal chunks (4), torch.compile": (torch.compile(causal_chunks), True)}
    flex, why = flex_variant()
    rows = {}
    for name, (fn, check) in variants.items():  # check: same mask as the trainer, so compare
        out, gr = grads(fn)
        ok = torch.allclose(out, ref_out, atol=1e-4) and all(torch.allclose(a, b, atol=1e-4)
                                                             for a, b in zip(gr, ref_grads, strict=True))
        rows[name] = {"ms_rounds": [], "matches_trainer": ok if check else None}
    for _ in range(args.rounds):  # the variants alternate, so a slow spell of the machine hits all of them
        for name, (fn, _check) in variants.items():
            rows[name]["ms_rounds"].append(time_fwd_bwd(fn, *leaves, mask, args.reps))
    for name, r in rows.items():
        r["ms"] = sorted(r["ms_rounds"])[len(r["ms_rounds"]) // 2]  # the median round
        flag = {True: "matches the trainer", False: "differs", None: ""}[r["matches_trainer"]]
        print(f"{name:44s} {r['ms']:7.1f} ms (rounds {min(r['ms_rounds']):.1f}-{max(r['ms_rounds']):.1f})   {flag}")
    if flex is not None:
        try:
            rows["FlexAttention, causal block mask"] = {"ms": time_fwd_bwd(flex, *leaves, mask, args.reps),
                                                        "matches_trainer": None}
        except Exception as e:  # e.g. no backward on CPU
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    if why:
        rows["FlexAttention, causal block mask"] = {"ms": None, "error": why}
        print(f"{'FlexAttention, causal block mask':44s} cannot train here: {why}")
    flops = 4 * B * H * T * T * D * 3  # forward QK^T and PV, backward twice that, the full (unmasked) matrix
    print(f"B {B}, heads {H}, seq {T}, head dim {D}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"the full score matrix is {flops / 1e9:.2f} GFLOP per layer forward + backward")
    if args.json:
        out = {"batch": B, "heads": H, "seq_len": T, "head_dim": D, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "gflop_full": flops / 1e9, "variants": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
