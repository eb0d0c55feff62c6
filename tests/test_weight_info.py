"""Chapter 5 (weight distance): corruption, distances, the bound, stopping rules, code length, the chapter."""

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from paperbook.core import resolve
from paperbook.weight_info.data import Split, corrupt, load_cifar10, load_images, make_model, read_cifar_batch
from paperbook.weight_info.measures import (calibrate, distance_stop, flat_params, invert, kl_bits,
                                            layer_distances, prequential_bits, sharpness_sigma, train_recording,
                                            validation_stop)

from helpers import cli, one_and_two_processes


def test_corruption_rate_and_refusals():
    y = torch.arange(10).repeat(2000)
    noisy, redrawn = corrupt(y, 0.5, seed=1)
    assert abs(redrawn.float().mean().item() - 0.5) < 0.02
    assert abs((noisy != y).float().mean().item() - 0.45) < 0.02  # redrawn, and landed on another class
    assert torch.equal(noisy[~redrawn], y[~redrawn])
    drawn = torch.bincount(noisy[redrawn], minlength=10).float() / int(redrawn.sum())
    assert drawn.shape == (10,) and float((drawn - 0.1).abs().max()) < 0.015  # uniform over all 10 classes
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
        corrupt(y, 1.5)
    with pytest.raises(ValueError, match="empty"):
        corrupt(torch.tensor([], dtype=torch.long), 0.5)


def test_distances_by_hand():
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        m.bias.fill_(1.0)  # unchanged below; biases are not a layer's distance
    start = {k: v.detach().clone() for k, v in m.named_parameters()}
    th0 = flat_params(m)
    with torch.no_grad():
        m.weight.add_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    assert float((flat_params(m) - th0).norm()) == pytest.approx(1.0)
    assert layer_distances(m, start) == {"weight": pytest.approx(1.0 / 5.0)}  # ‖Δ‖ = 1, ‖θ0‖ = 5; no bias entry
    assert kl_bits(3.0, 0.5) == pytest.approx(9 / (2 * 0.25) / math.log(2))


def test_sharpness_sigma_brackets_the_tolerance():
    from paperbook.weight_info.measures import perturbed_loss

    torch.manual_seed(0)
    X = torch.randn(300, 4)
    y = (X[:, 0] + X[:, 1] > 0).long()
    m = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(100):
        loss = nn.functional.cross_entropy(m(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    base = nn.functional.cross_entropy(m(X), y).item()
    sigma = sharpness_sigma(m, X, y, tolerance=0.1)
    # the same perturbation directions at every σ (one seed): the bisection brackets the tolerance
    assert perturbed_loss(m, X, y, sigma) - base <= 0.1 < perturbed_loss(m, X, y, sigma * 1.01) - base
    assert perturbed_loss(m, X, y, 0.0) == pytest.approx(base, abs=1e-6)
    assert torch.isclose(nn.functional.cross_entropy(m(X), y), torch.tensor(base))  # weights restored


class _Probe(nn.Module):
    "Zero logits (loss log 2 for two classes); records the spread of its weights at each call."

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(20000))
        self.seen = []

    def forward(self, x):
        self.seen.append(float(self.w.detach().std()))
        return torch.zeros(len(x), 2) + 0 * self.w[:1]


def test_perturbation_scale_and_geometric_bisection(monkeypatch):
    from paperbook.weight_info import measures

    probe, X, y = _Probe(), torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    assert measures.perturbed_loss(probe, X, y, sigma=0.1, draws=2) == pytest.approx(math.log(2))
    assert probe.seen == pytest.approx([0.1, 0.1], rel=0.02)  # N(0, σ²): sd σ = 0.1 (σ² would give 0.01)
    assert float(probe.w.detach().abs().max()) == 0.0  # restored
    # a loss that rises as (σ / 0.003)² · 0.1: the tolerance 0.1 is reached at σ* = 0.003 exactly. Bisection in log σ
    # over [1e-4, 1] for 12 steps narrows the bracket to a factor 1e4^(1/4096) = 1.0023; an arithmetic one would be
    # 2.4e-4 wide (8% of σ*)
    monkeypatch.setattr(measures, "perturbed_loss", lambda m, X, y, s, seed=0: math.log(2) + 0.1 * (s / 0.003) ** 2)
    sigma = measures.sharpness_sigma(probe, X, y, tolerance=0.1)
    assert 0.003 / 1.0023 <= sigma <= 0.003
    monkeypatch.setattr(measures, "perturbed_loss", lambda m, X, y, s, seed=0: 9.0)  # sharp beyond the bracket
    probe.train()
    assert measures.sharpness_sigma(probe, X, y, lo=1e-3) == 1e-3 and probe.training  # its mode restored


def test_training_records_and_fits_small_data():
    d = load_images("digits", n_train=200, n_val=50, n_test=50, seed=0)
    y, redrawn = corrupt(d["train"].y, 0.3, seed=0)
    torch.manual_seed(0)
    rec = train_recording(make_model("mlp", (1, 8, 8), width=64), Split(d["train"].X, y), d["val"], d["test"],
                          redrawn=redrawn, max_epochs=200, seed=0)
    rows = rec["rows"]
    assert rec["fitted"] and rows[-1]["memorised"] == 1.0 and rows[-1]["train_acc"] == 1.0
    assert all(r["path"] >= r["distance"] - 1e-9 for r in rows)  # a path is never shorter than the chord
    assert [r["path"] for r in rows] == pytest.approx(np.cumsum([r["step"] for r in rows]).tolist())
    assert rows[0]["step"] == pytest.approx(rows[0]["distance"])  # epoch 1 starts from θ(0)
    assert any(r["step"] < r["distance"] - 1e-6 for r in rows[1:])  # later steps are from the previous epoch
    # one epoch, then the records against the returned model: memorised counts the redrawn labels only
    model = make_model("mlp", (1, 8, 8), width=8)
    row = train_recording(model, Split(d["train"].X, y), d["val"], d["test"], redrawn=redrawn, max_epochs=1,
                          seed=0)["rows"][0]
    with torch.no_grad():
        pred = model(d["train"].X).argmax(1)
        hand = {"memorised": (pred[redrawn] == y[redrawn]).float().mean().item(),
                "train_acc": (pred == y).float().mean().item(),
                "val_acc": (model(d["val"].X).argmax(1) == d["val"].y).float().mean().item()}
    assert {k: row[k] for k in hand} == pytest.approx(hand)
    assert row["memorised"] != pytest.approx(row["train_acc"])  # the two differ after one epoch of this seed
    with pytest.raises(ValueError, match="empty"):
        train_recording(make_model("mlp", (1, 8, 8)), Split(d["train"].X[:0], y[:0]), d["val"], d["test"],
                        redrawn=redrawn[:0])


def test_stopping_rules_by_hand():
    assert distance_stop([1, 3, 2, 1.5, 1.2, 1.0, 1.0, 1.1, 1.3, 1.6], window=1, rise=0.2) == 5
    assert distance_stop([1, 1, 1, 1], window=1) == 3  # no rise: train to the end
    # window 3: smoothed [4, 3, 2, 4/3, 1, 4/3, 2, 3]; the minimum 1 is the window over epochs 4-6, and 4/3 > 1.15
    # rises past it, so the stop is the centre of that window, epoch 5
    assert distance_stop([5, 4, 3, 2, 1, 1, 1, 2, 3, 4], window=3, rise=0.15) == 5
    assert validation_stop([0.1, 0.7, 0.7, 0.6]) == 1
    # the burst ends at the first fall (epoch 2, after the flat start), not at epoch 0: stop at the minimum 1.0
    assert distance_stop([1, 1, 3, 2, 1.5, 1.2, 1.0, 1.0, 1.1, 1.3, 1.6], window=1, rise=0.2) == 6
    # the rise is relative: 11 is within 20% of 10, so training goes on to the new minimum 9 (epoch 5)
    assert distance_stop([10, 30, 20, 10, 11, 9, 20], window=1, rise=0.2) == 5


def test_measures_edges_found_by_mutation():
    # smoothing: one noisy step (epoch 5) does not stop training. Window 3 gives [4, 3, 2, 5/3, 4/3, 4/3, 1, 1, 5/3,
    # 7/3, 3]: the minimum 1 is the window over epochs 6-8 and 5/3 > 1.15 rises past it, so the stop is epoch 7
    assert distance_stop([5, 4, 3, 2, 1, 2, 1, 1, 1, 1, 3, 3, 3], window=3, rise=0.15) == 7
    lin = nn.Linear(2, 2)
    assert flat_params(lin).dtype == torch.float64  # distances summed over millions of weights in float64

    class Flat(nn.Module):  # its parameters do not change its output: every σ leaves the loss as it is
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 2))

        def forward(self, x):
            return 0 * (x @ self.w) + torch.tensor([1.0, 0.0])

    X, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    # tolerance 0 admits an unchanged loss: the bisection climbs to the top of [1e-4, 1]
    assert sharpness_sigma(Flat(), X, y, tolerance=0.0) == pytest.approx(1.0, rel=0.02)


def test_training_stops_once_fitted_and_memorised_without_redrawn_labels():
    d = load_images("digits", n_train=100, n_val=20, n_test=20, seed=0)
    torch.manual_seed(0)
    none = torch.zeros(100, dtype=torch.bool)
    rec = train_recording(make_model("mlp", (1, 8, 8), width=64), d["train"], d["val"], d["test"], redrawn=none,
                          max_epochs=100, seed=0)
    accs = [r["train_acc"] for r in rec["rows"]]
    assert rec["fitted"] and accs[-1] == 1.0 and all(a < 1.0 for a in accs[:-1]) and len(accs) < 100
    assert {r["memorised"] for r in rec["rows"]} == {0.0}  # no redrawn labels: 0, not the mean of nothing (nan)


def test_prequential_blocks_start_from_the_seed_and_shuffle():
    X = torch.randn(60, 3)
    y = (X[:, 0] > 0).long()
    make = lambda: nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 10))
    a = prequential_bits(make, X, y, blocks=(0.5, 1.0), epochs=2, seed=3)
    torch.randn(100)  # the global generator moves on between the two calls
    assert prequential_bits(make, X, y, blocks=(0.5, 1.0), epochs=2, seed=3) == a  # each block's model from the seed
    order = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 10)

        def forward(self, x):
            if torch.is_grad_enabled():
                order.extend(x[:, 0].long().tolist())
            return self.lin(x)

    rows = torch.arange(40.0)[:, None].repeat(1, 3)
    prequential_bits(Spy, rows, torch.zeros(40, dtype=torch.long), blocks=(0.5, 1.0), epochs=1, lr=0.0, batch=5)
    assert sorted(order) == list(range(20)) and order != list(range(20))  # every row once, in shuffled order


def test_prequential_code_separates_structure_from_noise():
    X = torch.randn(400, 3)
    make = lambda: nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 10))
    structured = prequential_bits(make, X, (X[:, 0] > 0).long(), epochs=15)
    noise = prequential_bits(make, X, torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(0)),
                             epochs=15)
    assert structured < 0.4 * noise and noise > 0.8 * 400 * math.log2(10)
    with pytest.raises(ValueError, match="increasing fractions"):
        prequential_bits(make, X, X[:, 0].long(), blocks=(0.5, 0.25, 1.0))

    def uniform():  # predicts 1/10 for every class and never learns (lr 0)
        lin = nn.Linear(3, 10)
        nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)
        return lin

    # the first block is sent with the uniform code (100 labels × log2 10), then each later block costs the same
    bits = prequential_bits(uniform, X, (X[:, 0] > 0).long(), blocks=(0.25, 0.5, 1.0), epochs=1, lr=0.0)
    assert bits == pytest.approx(400 * math.log2(10), rel=1e-6)
    with pytest.raises(ValueError, match="ending at 1.0"):
        prequential_bits(make, X, X[:, 0].long(), blocks=(0.5, 0.9))

    seen = []

    class Spy(nn.Module):  # uniform, and notes the rows it is trained on (x = the row's index)
        def __init__(self):
            super().__init__()
            self.lin = uniform()

        def forward(self, x):
            if torch.is_grad_enabled():
                seen.append(set(x[:, 0].long().tolist()))
            return self.lin(x)

    rows = torch.arange(10.0)[:, None].repeat(1, 3)
    # ends round(3.5) = 4 and 10: rows 0-3 sent with the uniform code, a model trained on them alone codes 4-9
    bits = prequential_bits(Spy, rows, torch.zeros(10, dtype=torch.long), blocks=(0.35, 1.0), epochs=2, lr=0.0)
    assert set().union(*seen) == {0, 1, 2, 3} and bits == pytest.approx(10 * math.log2(10))


def test_calibration_by_hand():
    curve = calibrate([0, 0.5, 1, 0, 0.5, 1], [10, 20, 18, 12, 22, 22])  # means 11, 21, 20 -> monotone 11, 21, 21
    assert curve[1].tolist() == [11, 21, 21]
    assert invert(curve, 16) == pytest.approx(0.25) and invert(curve, 5) == 0.0
    assert invert(curve, 21) == 0.5 and invert(curve, 30) == 0.5  # the first level that reaches the value


def test_the_cifar_reader_refuses_code(tmp_path):
    data = (np.arange(3072 * 2) % 256).astype(np.uint8).reshape(2, 3072)
    (tmp_path / "ok").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2]}))
    X, y = read_cifar_batch(tmp_path / "ok")
    assert X.shape == (2, 3, 32, 32) and X[0, 0, 0, 1] == 1 and y.tolist() == [1, 2]

    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Payload(), b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        read_cifar_batch(tmp_path / "evil")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "wrong").write_bytes(pickle.dumps({b"x": 1}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        read_cifar_batch(tmp_path / "wrong")
    (tmp_path / "unlabelled").write_bytes(pickle.dumps({b"data": data}))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        read_cifar_batch(tmp_path / "unlabelled")
    (tmp_path / "flat").write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"data of shape \(2, 1024\), expected \(n, 3072\)"):
        read_cifar_batch(tmp_path / "flat")


def test_cifar_folder_splits_batches_1_to_4_train_5_validation(tmp_path):
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        data = np.full((2, 3072), 51 * (i % 6), np.uint8)  # batch i holds pixels 51·i and labels i
        (tmp_path / name).write_bytes(pickle.dumps({b"data": data, b"labels": [i, i]}))
    s = load_cifar10(tmp_path)
    assert s["train"].y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and s["val"].y.tolist() == [4, 4]
    assert s["test"].y.tolist() == [5, 5] and s["train"].X.shape == (8, 3, 32, 32)
    assert s["val"].X.max().item() == pytest.approx(204 / 255) and s["test"].X.max().item() == 1.0  # in [0, 1]


def test_fashion_mnist_is_train_and_test_pooled_and_scaled(monkeypatch):
    import paperbook.data

    fake = {"X_train": np.full((6, 28, 28), 255, np.uint8), "y_train": np.arange(6),
            "X_test": np.zeros((4, 28, 28), np.uint8), "y_test": np.arange(6, 10)}
    monkeypatch.setattr(paperbook.data, "load_fashion_mnist", lambda: fake)
    s = load_images("fashion-mnist", n_train=5, n_val=3, n_test=2, seed=0)
    X = torch.cat([s[k].X for k in s])
    y = torch.cat([s[k].y for k in s])
    assert sorted(y.tolist()) == list(range(10)) and X.shape == (10, 1, 28, 28)
    assert set(X.flatten().tolist()) == {0.0, 1.0} and torch.equal(X[y < 6].amin((1, 2, 3)), torch.ones(6))
    monkeypatch.setattr(paperbook.data, "load_fashion_mnist", lambda: None)
    with pytest.raises(FileNotFoundError, match="paperbook data fetch fashion_mnist"):
        load_images("fashion-mnist")


def test_image_splits_are_disjoint_and_sized():
    s = load_images("digits", n_train=300, n_val=100, n_test=50, seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [300, 100, 50]
    assert float(s["train"].X.max()) == 1.0 and float(s["train"].X.min()) == 0.0  # 16 grey levels scaled to [0, 1]
    # asking for all 1,797 images: the three splits are the data set, each image once
    from sklearn.datasets import load_digits

    full = load_images("digits", n_train=1000, n_val=400, n_test=397, seed=3)
    got = np.concatenate([np.c_[full[k].X.reshape(-1, 64).numpy() * 16, full[k].y.numpy()] for k in full])
    digits = load_digits()
    want = np.c_[digits.data, digits.target]
    assert np.array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])
    assert not torch.equal(full["train"].y[:50], torch.tensor(digits.target[:50]))  # shuffled, not the file order
    assert not torch.equal(load_images("digits", n_train=300, n_val=100, n_test=50, seed=4)["train"].y, s["train"].y)
    with pytest.raises(ValueError, match=r"1000 \+ 400 \+ 398 images asked for, digits has 1797"):
        load_images("digits", n_train=1000, n_val=400, n_test=398)
    with pytest.raises(ValueError, match=r"100 \+ 0 \+ 50 images asked for"):  # an empty split
        load_images("digits", n_train=100, n_val=0, n_test=50)


def test_models_and_bad_names():
    for kind in ("mlp", "cnn"):
        assert make_model(kind, (3, 32, 32))(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    layers = lambda kind: [type(m).__name__ for m in make_model(kind, (1, 8, 8), width=16)]
    assert layers("mlp") == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert layers("cnn") == ["Conv2d", "ReLU", "Conv2d", "ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear", "ReLU",
                             "Linear"]
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        make_model("vit", (1, 8, 8))
    with pytest.raises(ValueError, match="unknown image set 'svhn'"):
        load_images("svhn")


def _runs(slope=20.0, val=0.81, fit=0.70, probe=0.05, kl=None):
    "Crafted runs, levels 0..1, six seeds: D = 10 + slope·p (+ a seed offset), probe accuracy 1 - p/2 ± `probe`."
    out = []
    for s, e in enumerate((0.0, 0.1, -0.1, 0.0, 0.0, 0.0)):
        for p in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
            d = 10 + slope * p + e
            out.append({"seed": s, "p": p, "distance": d, "kl_bits": d ** 2 / 2 if kl is None else kl(p),
                        "probe_train_acc": 1 - p / 2 + probe * (-1) ** s,
                        # the stopping rows average the levels with both clean and corrupted labels only
                        "test_at": {"distance": 0.80 if 0 < p < 1 else 0.5, "validation": val, "fit": fit}})
    return out


def test_claims_follow_crafted_runs():
    from paperbook.weight_info.chapter import estimation_errors, make_claims

    cfg = resolve("weight-info", "cpu-toy")
    code = {p: 100 + 500 * p for p in cfg.train.levels}
    preq = {s: code for s in range(6)}  # per seed: the code length of each level's labels
    rows = make_claims(_runs(), preq, cfg)
    assert all(r["holds"] for r in rows), [r["claim"] for r in rows if not r["holds"]]
    # p̂ of seed 1 from the other five seeds (mean offset -0.02): its D is 0.12 above that curve, so p̂ - p = 0.006
    # at p = 0..0.8 (at p = 1 the curve's end clips it): mean 0.005
    assert estimation_errors(_runs(), "distance", [1])[1] == pytest.approx(0.005)
    # the probe: seed 1 is 0.06 below the others' mean accuracy, on a curve of slope -1/2: p̂ higher by 0.12, clipped
    # at p = 1: mean 0.1; the row pairs it with the distance's 0.005
    assert rows[3]["per_seed"][1]["value"] == pytest.approx({"distance |p̂ − p|": 0.005, "probe |p̂ − p|": 0.1})
    # validation stopping 3 points better than the distance rule; trained to fit better than it; D falling with p
    assert [r["holds"] for r in make_claims(_runs(val=0.83), preq, cfg)][4] is False
    assert [r["holds"] for r in make_claims(_runs(fit=0.81), preq, cfg)][5] is False
    falling = make_claims(_runs(slope=-20.0), preq, cfg)
    assert [r["holds"] for r in falling][:2] == [False, False] and falling[0]["k_of_n"] == "0/6"
    assert make_claims(_runs(probe=0.0), preq, cfg)[3]["holds"] is False  # a probe as good as the distance
    # the bound ranks the levels backwards: row 2 needs both Spearman ρ ≥ 0.9; then the code length backwards
    backwards = make_claims(_runs(kl=lambda p: 1 - p), preq, cfg)[1]
    assert backwards["per_seed"][0]["value"] == pytest.approx([1.0, -1.0]) and not backwards["holds"]
    # each seed against its own code lengths: seed 4's reversed fails that seed only
    reversed_code = make_claims(_runs(), {**preq, 4: {p: 600 - 500 * p for p in cfg.train.levels}}, cfg)[1]
    assert [v["value"] for v in reversed_code["per_seed"]] == [pytest.approx([1.0, 1.0])] * 4 + [
        pytest.approx([-1.0, -1.0]), pytest.approx([1.0, 1.0])]
    assert reversed_code["k_of_n"] == "5/6" and not reversed_code["holds"]


@pytest.mark.parametrize("overrides, words", [
    ({"train.levels": "0,1.5,0.5"}, r"train.levels\[1\] must lie in \[0, 1\], got 1.5"),
    ({"train.levels": "0,0.5"}, "at least 3 probabilities"),
    ({"train.seeds": 1}, "train.seeds must be >= 2"),
    ({"data.images": "cifar10"}, "needs data.folder"),
    ({"train.model": "vit"}, "train.model' must be one of 'mlp', 'cnn'; got 'vit'"),
])
def test_bad_config_fails_before_any_work(overrides, words):
    with pytest.raises(ValueError, match=words):
        resolve("weight-info", "cpu-toy", overrides)


@pytest.mark.dist
def test_two_processes_give_the_same_distances_as_one(tmp_path):
    one, two = one_and_two_processes(Path(__file__).parent / "dist_scripts" / "weight_info_ddp.py", tmp_path)
    assert len(one["distances"]) == len(two["distances"]) == 3
    assert np.allclose(one["distances"], two["distances"], rtol=1e-5)
    assert np.allclose(one["params"], two["params"], atol=1e-5)


def test_the_chapter_runs_small(tmp_path):
    from paperbook.weight_info.chapter import CHAPTER

    text = lambda v: json.dumps(v) if isinstance(v, tuple) else v
    sets = [a for k, v in CHAPTER.smoke.items() for a in ("--set", f"{k}={text(v)}")]
    r = cli("run", "weight-info", *sets, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rec["metrics"]["runs"]) == 6 and len(rec["reproduction"]) == 6
    assert rec["data"]["digits"]["source"] == "package"
