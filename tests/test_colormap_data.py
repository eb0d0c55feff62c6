"""Chapter 4's data pieces (paperbook.colormap.data), by hand: the family split's per-kind choice, the network
input's transforms, and images that are not numbers."""

import math

import numpy as np
import pytest

from paperbook.colormap import data
from paperbook.colormap.data import Colormap, check_image, network_input, split_catalog


def test_each_kind_holds_out_a_family_made_mostly_of_its_kind(monkeypatch):
    # families: 0 = {c, c, d}, 1 = {d, d, c}, 2 = {c}, 3 = {d}; four maps of each kind
    kinds = ["continuous", "continuous", "discrete", "discrete", "discrete", "continuous", "continuous", "discrete"]
    fam = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    cmaps = [Colormap(f"m{i}", "x", k, np.zeros((256, 3))) for i, k in enumerate(kinds)]
    monkeypatch.setattr(data, "families", lambda maps, de: fam)
    for seed in range(20):
        train, test = split_catalog(cmaps, 0.1, seed)  # 0.1 × 4 rounds to 0: still one family per kind
        held = {int(fam[int(c.name[1:])]) for c in test}
        assert len(held & {0, 2}) == 1 and len(held & {1, 3}) == 1, (seed, held)
        assert len(train) + len(test) == 8 and not {c.name for c in train} & {c.name for c in test}


def test_network_input_min_max_and_log_by_hand():
    counts = np.full((4, 4, 4), 2.0)
    counts[3, 1, 1] = 10.0  # the largest bin; the black and white background bins are zeroed
    counts[1, 0, 0] = 6.0
    x = network_input(counts)
    # [L][a][b] -> [b][L][a]: bin (L=1, a=0, b=0) is x[0, 1, 0]
    assert x[0, 1, 0] == pytest.approx((6 - 0) / 10) and x[0, 0, 0] == pytest.approx(2 / 10)
    lg = network_input(counts, transform="log")
    assert float(lg[0, 1, 0]) == pytest.approx(math.log1p(6) / math.log1p(10))
    assert float(lg[0, 0, 0]) == pytest.approx(math.log1p(2) / math.log1p(10))


def test_an_image_with_nan_pixels_is_refused():
    img = np.full((4, 4, 3), 0.5)
    img[0, 0] = (1.0, 0.0, 0.0)
    img[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="integers in \\[0, 255\\] or floats in \\[0, 1\\]"):
        check_image(img)
