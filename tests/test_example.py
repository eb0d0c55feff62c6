"""The example chapter (Monte Carlo π): formulas, layout independence, claims at cpu-toy."""

import math

import numpy as np
import pytest
import torch

from paperbook.core import resolve
from paperbook.dist import DistInfo, block_generator
import paperbook.example.chapter as example
from paperbook.example.chapter import (CHAPTER, count_inside, error_scaling, estimate_pi, grid_estimate, layout_free,
                                       make_claims, seed_metrics, standard_error)

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


ONE = DistInfo(0, 1, 0, CPU, None)


def test_seed_metrics_by_hand(monkeypatch):
    cfg = resolve("example", overrides={"num_samples": 2**16, "sizes": (64, 256), "repeats": 2})
    sigma = math.sqrt(math.pi * (4 - math.pi) / 2**16)
    seen = []
    monkeypatch.setattr(example, "estimate_pi", lambda n, b, seed, info: math.pi + 2 * sigma)  # 2σ too high
    monkeypatch.setattr(example, "error_scaling", lambda sizes, repeats, seed, device: seen.append(seed) or {
        "sizes": list(sizes), "rmse": [0.5 * standard_error(64), 1.1 * standard_error(256)], "slope": -0.5})
    m = seed_metrics(cfg, 7, ONE)
    assert m["z_score"] == pytest.approx(2.0) and m["max_rel_dev"] == pytest.approx(0.5)  # |0.5 - 1| beats 0.1
    assert seen == [8]  # the error study draws from its own stream (seed + 1), not the main estimate's


def per_seed(z=(0.5, -1.0, 2.0), slope=(-0.5, -0.48, -0.52), dev=(0.05, 0.1, 0.12), err=(1e-3, 2e-3, 3e-3)):
    return {s: {"z_score": z[s], "slope": slope[s], "max_rel_dev": dev[s], "pi_hat": math.pi + err[s]}
            for s in range(3)}


def test_claims_follow_crafted_metrics():
    assert [r["k_of_n"] for r in make_claims(per_seed(), grid_error=1e-4)] == ["3/3"] * 4
    one_off = [  # each row fails on one seed just past its threshold (ours), on either side where it has two
        make_claims(per_seed(z=(0.5, -3.01, 2.0)), 1e-4)[0],
        make_claims(per_seed(slope=(-0.5, -0.551, -0.5)), 1e-4)[1],
        make_claims(per_seed(slope=(-0.5, -0.449, -0.5)), 1e-4)[1],
        make_claims(per_seed(dev=(0.05, 0.151, 0.12)), 1e-4)[2],
    ]
    assert [r["k_of_n"] for r in one_off] == ["2/3"] * 4 and not any(r["holds"] for r in one_off)
    assert make_claims(per_seed(), grid_error=2.5e-3)[3]["k_of_n"] == "1/3"  # the grid beats one seed of three


def test_experiment_uses_seeds_from_seed_and_reports_a_layout_difference(monkeypatch):
    cfg = resolve("example", overrides={"seed": 5, "seeds": 2, "num_samples": 2**16, "repeats": 20})
    monkeypatch.setattr(example, "layout_free", lambda cfg, device: 0.25)
    result = example.experiment(cfg, ONE)
    assert sorted(result.metrics["per_seed"]) == [5, 6]
    assert result.metrics["layout_delta"] == pytest.approx(abs(result.metrics["per_seed"][5]["pi_hat"] - 0.25))


@pytest.mark.parametrize("overrides, needle", [
    ({"num_samples": 1000}, "num_samples (1000) must be a positive multiple of block_size (65536)"),
    ({"repeats": 1}, "needs >= 2 positive sizes and >= 2 repeats"),
    ({"sizes": (64, 0)}, "needs >= 2 positive sizes"),
    ({"sizes": (64,)}, "needs >= 2 positive sizes"),
])
def test_bad_configs_name_the_rule(overrides, needle):
    with pytest.raises(ValueError) as e:
        resolve("example", overrides=overrides)
    assert needle in str(e.value)
