"""The example chapter (Monte Carlo π): formulas, layout independence, claims at cpu-toy."""

import math

import numpy as np
import torch

from paperbook.core import resolve
from paperbook.dist import DistInfo, block_generator
from paperbook.example.chapter import (CHAPTER, count_inside, error_scaling, estimate_pi, grid_estimate, layout_free,
                                       standard_error)

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


def test_grid_baseline_by_hand():
    # N = 9: midpoints 1/6, 1/2, 5/6; (1/2, 5/6) has 1/4 + 25/36 < 1, so only (5/6, 5/6) lies outside
    assert grid_estimate(9) == 4 * 8 / 9
    assert grid_estimate(10) == grid_estimate(9)  # N is rounded down to a square


def test_claims_at_cpu_toy_over_three_seeds():
    result = CHAPTER.run(resolve("example"))
    assert [r["k_of_n"] for r in result.claims] == ["3/3"] * 4, result.claims
    assert all(r["holds"] for r in result.claims)
    assert result.metrics["layout_delta"] == 0 and sorted(result.metrics["per_seed"]) == [0, 1, 2]
