"""Run under torchrun (or alone): the digits MLP trained for three epochs on corrupted labels; rank 0 writes the
per-epoch distances and the final parameters to argv[1]."""

import json
import sys

import torch

from paperbook.dist import distributed
from paperbook.weight_info.data import Split, corrupt, load_images, make_model
from paperbook.weight_info.measures import flat_params, train_recording


def main(out):
    d = load_images("digits", n_train=256, n_val=64, n_test=64, seed=0)
    y, redrawn = corrupt(d["train"].y, 0.4, seed=0)
    with distributed("cpu", timeout_s=120) as info:
        torch.manual_seed(0)
        model = make_model("mlp", (1, 8, 8), width=32)
        rec = train_recording(model, Split(d["train"].X, y), d["val"], d["test"], redrawn=redrawn, batch=32,
                              max_epochs=3, seed=0, info=info)
        if info.is_main:
            json.dump({"world": info.world_size, "distances": [r["distance"] for r in rec["rows"]],
                       "params": flat_params(model).tolist()}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1])
