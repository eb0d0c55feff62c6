"""Run under torchrun: DDP over N processes equals one process on the whole batch.

Writes {"world": N, "params": [...], "mean_rank": ..., "sum_ones": ...} to argv[1] (rank 0).
"""

import json
import sys

import torch

from paperbook.dist import all_reduce_mean, all_reduce_sum, distributed, print0, wrap_ddp


def train(model, X, y, steps=3, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()


def main(out):
    torch.manual_seed(0)
    X, y = torch.randn(32, 4), torch.randn(32, 1)
    net = torch.nn.Linear(4, 1)
    with distributed("cpu", timeout_s=60) as info:
        shard = slice(info.rank * 32 // info.world_size, (info.rank + 1) * 32 // info.world_size)
        model = wrap_ddp(net, info)
        train(model, X[shard], y[shard])
        mean_rank = all_reduce_mean(float(info.rank))
        ones = all_reduce_sum({"n": 1.0})["n"]
        print0(f"world {info.world_size}: done")
        if info.is_main:
            params = [p.detach().flatten().tolist() for p in net.parameters()]
            json.dump({"world": info.world_size, "params": params, "mean_rank": mean_rank, "sum_ones": ones},
                      open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
