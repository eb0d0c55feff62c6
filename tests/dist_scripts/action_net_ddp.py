"""Run under torchrun (or alone): an ensemble of three small ACTION-NETs (no dropout, so no random masks)
trained for two epochs on generated features; rank 0 writes losses and parameters to argv[1]."""

import json
import sys

import numpy as np
import torch

from paperbook.action_net.data import Routines, generate_features
from paperbook.action_net.model import ActionNet, Ensemble, train_ensemble
from paperbook.dist import distributed


def main(out):
    rng = np.random.default_rng(0)
    n = 16
    r = Routines(tuple(f"Ball_{i}" for i in range(n)), np.array(["Ball"] * n), rng.uniform(3, 12, n).round(1),
                 rng.uniform(4, 9, n).round(2), np.zeros(n), np.zeros(n), np.full(n, 90.0))
    r = Routines(r.names, r.apparatus, r.D, r.E, r.P, r.D + r.E, r.length)
    data = [(f.dynamic, f.static, f.y) for f in (generate_features(r, d_dyn=8, d_sta=8, seed=s) for s in range(3))]
    with distributed("cpu", timeout_s=120) as info:
        torch.manual_seed(0)
        ens = Ensemble([ActionNet(8, 8, 16, 32, 8, dropout=0.0) for _ in range(3)])
        losses = train_ensemble(ens, data, epochs=2, batch=8, lr=1e-2, clips=16, frames=32, optimizer="sgd",
                                seed=0, info=info)
        if info.is_main:
            params = torch.cat([p.detach().flatten() for p in ens.parameters()]).tolist()
            json.dump({"world": info.world_size, "losses": losses, "params": params}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
