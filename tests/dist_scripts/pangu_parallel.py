"""Run under torchrun: each named layout of PanGu-α equals the single-process run.

usage: pangu_parallel.py OUT.json LAYOUT [LAYOUT ...]
For every layout (a ParallelPlan whose world size is this job's), rank 0 writes the largest absolute
differences to the single-process run (computed on every rank, no communication): the gathered step-0
gradients, and the losses of the first steps with SGD and with AdamW.
"""

import json
import sys

import torch

from paperbook.dist import distributed, print0
from paperbook.pangu.distributed import build_parallel, forward_backward, synthetic_rows, train_parallel
from paperbook.pangu.train import TrainConfig
from paperbook.pangu.model import ModelConfig
from paperbook.pangu.parallel import ParallelPlan, build_mesh, gather_named, sync_tied_grads

LAYOUTS = {
    "dp2": dict(dp_replicate=2),
    "dp2-zero1": dict(dp_replicate=2, zero1=True),
    "fsdp2": dict(dp_shard=2),
    "tp2": dict(tp=2, remat="selective"),
    "pp2-gpipe": dict(pp=2, microbatches=2, schedule="gpipe"),
    "pp2-1f1b": dict(pp=2, microbatches=4, schedule="1f1b"),
    "pp2-interleaved": dict(pp=2, microbatches=4, schedule="interleaved-1f1b", stages_per_rank=2),
    "dp2-tp2": dict(dp_replicate=2, tp=2),
    "fsdp2-tp2": dict(dp_shard=2, tp=2),
    "pp2-tp2": dict(pp=2, tp=2, microbatches=2),
    "fsdp2-pp2": dict(dp_shard=2, pp=2, microbatches=2, remat="full"),
    "hsdp2x2": dict(dp_replicate=2, dp_shard=2),
    "fsdp2-pp2-tp2": dict(dp_shard=2, pp=2, tp=2, microbatches=2, remat="full"),
}
MODEL = ModelConfig(vocab_size=96, seq_len=16, num_layers=4, d=32, num_heads=4, dropout=0.0)
TRAIN = dict(steps=3, batch_size=8, warmup=1, weight_decay=0.1, seed=0)
LR = {"sgd": 0.05, "adamw": 3e-3}  # SGD moves with the gradient scale; AdamW would hide a wrong one
EOD = 0


def first_grads(plan, data, mesh=None):
    par = build_parallel(MODEL, plan, device="cpu", eod_id=EOD, seed=0, mesh=mesh)
    g = torch.Generator().manual_seed(TRAIN["seed"])
    ids = data[torch.randint(len(data), (TRAIN["batch_size"],), generator=g)]
    loss = forward_backward(par, par.loss_fn, ids, EOD, "cpu")
    sync_tied_grads(par)
    return loss, gather_named(par, "grad")


def losses(plan, data, optimizer, mesh=None):
    par = build_parallel(MODEL, plan, device="cpu", eod_id=EOD, seed=0, mesh=mesh)
    train = TrainConfig(steps=TRAIN["steps"], batch_size=TRAIN["batch_size"], warmup=TRAIN["warmup"],
                        weight_decay=TRAIN["weight_decay"], optimizer=optimizer, lr=LR[optimizer])
    return train_parallel(par, data, eod_id=EOD, train=train, seed=TRAIN["seed"], device="cpu")["losses"]


def main(out, names):
    data = synthetic_rows(64, MODEL.seq_len, MODEL.vocab_size, eod_id=EOD, mean_doc=6, seed=1)
    one = ParallelPlan()
    ref_loss, ref_grads = first_grads(one, data)
    ref = {opt: losses(one, data, opt) for opt in ("sgd", "adamw")}
    results = {}
    with distributed("cpu", timeout_s=120) as info:
        for name in names:
            plan = ParallelPlan(**LAYOUTS[name]).check(MODEL, batch_size=TRAIN["batch_size"],
                                                       world_size=info.world_size)
            mesh = build_mesh(plan, "cpu")
            loss0, grads = first_grads(plan, data, mesh)
            r = {"loss0_diff": abs(loss0 - ref_loss),
                 "grad_names_match": sorted(grads) == sorted(ref_grads),
                 "grad_max_diff": max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads),
                 "grad_max_abs": max(float(v.abs().max()) for v in ref_grads.values())}
            for opt in ("sgd", "adamw"):
                got = losses(plan, data, opt, mesh)
                r[f"{opt}_losses"] = got
                r[f"{opt}_max_diff"] = max(abs(a - b) for a, b in zip(got, ref[opt]))
            results[name] = r
            print0(f"{name}: grads {r['grad_max_diff']:.2e}, sgd {r['sgd_max_diff']:.2e}, "
                   f"adamw {r['adamw_max_diff']:.2e}", flush=True)
        if info.is_main:
            json.dump({"world": info.world_size, "reference": ref, "layouts": results}, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
