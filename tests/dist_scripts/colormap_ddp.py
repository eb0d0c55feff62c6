"""Run under torchrun (or alone): the colormap network (without ASPP, so no batch statistics) trained on a tiny
corpus; rank 0 writes losses and parameters to argv[1]."""

import json
import sys

import torch

from paperbook.colormap.data import catalog, make_corpus
from paperbook.colormap.model import ColormapNet, train_net
from paperbook.core import seed_everything
from paperbook.dist import distributed


def main(out):
    corpus = make_corpus(catalog()[:20], 24, seed=0, workers=1)
    with distributed("cpu", timeout_s=120) as info:
        seed_everything(0)
        net = ColormapNet(width=0.0625, aspp=False, knots=4)
        losses = train_net(net, corpus, steps=4, batch=8, lr=1e-3, seed=0, info=info)
        if info.is_main:
            params = torch.cat([p.detach().flatten() for p in net.parameters()]).tolist()
            json.dump({"world": info.world_size, "losses": losses, "params": params}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
