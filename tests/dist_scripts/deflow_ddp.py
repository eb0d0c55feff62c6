"""Run under torchrun (or alone): ST-ResNet (no batch norm) trained two epochs on a small curved city; rank 0
writes the validation RMSE per epoch and the final parameters to argv[1]."""

import json
import sys

import torch

from paperbook.deflow.data import make_samples, simulate_city, split
from paperbook.deflow.model import STResNet, train
from paperbook.dist import distributed


def main(out):
    flows = simulate_city("curved", size=8, days=10, corridors=3, seed=0)
    tr, va, te, scaler = split(flows, make_samples(flows, 3, 1, 1), test_days=1)
    with distributed("cpu", timeout_s=120) as info:
        torch.manual_seed(0)
        model = STResNet(2, 8, 8, ch=4, units=1, bn=False, deformable=True)
        hist = train(model, tr, va, scaler, epochs=2, lr=1e-3, batch=8, seed=0, info=info)
        if info.is_main:
            params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            json.dump({"world": info.world_size, "val": hist["val"], "params": params.tolist()}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
