"""Run under torchrun: PanGu-α built on the meta device with a pipeline (and tensor) split; rank 0 writes,
per pipeline group, whether the last stage's output layer equals the first stage's word embedding, and the
losses of a few training steps. usage: pangu_meta_init.py OUT.json LAYOUT"""

import json
import sys

import torch
import torch.distributed as dist

from paperbook.dist import distributed
from paperbook.pangu.distributed import build_parallel, synthetic_rows, train_parallel
from paperbook.pangu.model import ModelConfig
from paperbook.pangu.parallel import ParallelPlan
from paperbook.pangu.train import TrainConfig

LAYOUTS = {"pp2": dict(pp=2, microbatches=2), "pp2-tp2": dict(pp=2, tp=2, microbatches=2)}
MODEL = ModelConfig(vocab_size=96, seq_len=16, num_layers=4, d=32, num_heads=4, dropout=0.0)


def main(out, name):
    with distributed("cpu", timeout_s=120):
        plan = ParallelPlan(**LAYOUTS[name])
        par = build_parallel(MODEL, plan, device="cpu", eod_id=0, seed=0, meta_init=True)
        local = lambda p: (p.to_local() if hasattr(p, "to_local") else p).detach().clone()
        mine = {"first": [local(m.tok.weight) for m in par.modules if m.is_first],
                "last": [local(m.head.weight) for m in par.modules if m.is_last]}
        coord = dict(zip(par.mesh.mesh_dim_names, par.mesh.get_coordinate()))
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, (coord, mine))
        data = synthetic_rows(64, MODEL.seq_len, MODEL.vocab_size, eod_id=0, mean_doc=6, seed=1)
        train = TrainConfig(steps=4, batch_size=8, warmup=1, lr=3e-3)
        loss = train_parallel(par, data, eod_id=0, train=train, seed=0, device="cpu")["losses"]
        if dist.get_rank() == 0:
            checks = []
            for c, m in everyone:
                for head in m["last"]:
                    peers = [m2["first"][0] for c2, m2 in everyone if m2["first"]
                             and all(c2[k] == c[k] for k in c if k != "pp")]
                    checks.append(bool(torch.equal(head, peers[0])) and head.abs().sum().item() > 0)
            json.dump({"world": dist.get_world_size(), "tied": checks, "losses": loss}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
