"""Run under torchrun (or alone): ACSL's stage 1 on a tiny task; rank 0 writes losses and parameters to argv[1]."""

import json
import sys

import numpy as np
import torch

from paperbook.acsl.chapter import build_task
from paperbook.acsl.data import train_pool
from paperbook.acsl.detector import Detector, train_representation
from paperbook.core import resolve, seed_everything
from paperbook.dist import distributed


def main(out):
    cfg = resolve("acsl", "cpu-toy", {"n_max": 40, "n_min": 1, "test_per_class": 1, "images": "digits"})
    with distributed("cpu", timeout_s=120) as info:
        seed_everything(0)
        rng = np.random.default_rng(0)
        task = build_task(cfg, rng)
        net = Detector(len(task.names), width=8, hidden=16, roi_out=3, image_size=cfg.canvas)
        pools = [train_pool(s, rng) for s in task.train]
        losses = train_representation(net, task.train, pools, epochs=2, batch=8, lr=1e-2, rois_per_image=8,
                                      pos_fraction=0.25, rng=rng, info=info)
        if info.is_main:
            params = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
            json.dump({"world": info.world_size, "losses": losses, "params": params}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
