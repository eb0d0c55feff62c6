"""The example chapter (Monte Carlo π): formulas, layout independence, claims at cpu-toy."""

import math

import numpy as np
import torch

from paperbook.core import resolve
from paperbook.dist import DistInfo, block_generator
from paperbook.example import count_inside, error_scaling, estimate_pi, layout_free, main, standard_error

CPU = torch.device("cpu")


def test_count_inside_matches_hand_count():
    g = block_generator(0, 0)
    u = torch.rand(1000, 2, generator=g)
    expected = int(((u[:, 0] ** 2 + u[:, 1] ** 2) <= 1).sum())
    assert count_inside(1000, block_generator(0, 0)) == expected


def test_standard_error_formula():
    assert np.isclose(standard_error(100), math.sqrt(math.pi * (4 - math.pi) / 100))


def test_estimate_is_the_same_for_any_layout():
    cfg = resolve("example", overrides={"num_samples": 2**14, "block_size": 2**10})
    single = estimate_pi(cfg.num_samples, cfg.block_size, cfg.seed, DistInfo(0, 1, 0, CPU, None))
    for world in (2, 3, 5):
        assert layout_free(cfg, world=world) == single


def test_error_scaling_slope_near_half():
    study = error_scaling((64, 256, 1024, 4096), repeats=400, seed=1)
    assert abs(study["slope"] + 0.5) < 0.1


def test_claims_hold_at_cpu_toy():
    result = main(resolve("example"))
    assert [r["holds"] for r in result.claims] == [True] * 4, result.claims
