"""ACSL chapter: the losses and their gradients, the data (IDX, long tail, scenes, proposals, LVIS format),
RoI align, AP, DDP equivalence of stage 1, configs and the CLI."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paperbook.acsl.data import (box_iou, frequency_group, label_proposals, load_base_images, load_lvis,
                                 lvis_scenes, make_long_tail, make_scenes, read_idx, sample_rois, eval_proposals,
                                 train_pool)
from paperbook.acsl.detector import average_precision, evaluate, keep_top, roi_align
from paperbook.acsl.losses import (acsl_loss, acsl_weights, bce_loss, ce_loss, class_loss, class_scores, eql_loss,
                                   focal_loss, one_hot)
from paperbook.core import resolve

from helpers import cli, one_and_two_processes

GROUPS = ["-", "r", "c", "f", "f"]


# ---- losses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("xi", [0.0, 0.3, 0.7, 0.95])
def test_acsl_gradient_is_w_times_p_minus_y(xi):
    torch.manual_seed(1)
    z = (3 * torch.randn(40, 5)).requires_grad_()
    y = torch.randint(0, 5, (40,))
    acsl_loss(z, y, xi=xi).backward()
    p = torch.sigmoid(z.detach())
    t = one_hot(y, 5)
    w = ((p >= xi) | (t > 0)).float()
    assert torch.allclose(z.grad, w * (p - t) / 40, atol=1e-6)
    assert 0 < w.mean() <= 1


def test_acsl_hand_computed_values():
    p = torch.tensor([[0.5, 0.9, 0.8, 0.2], [0.75, 0.1, 0.3, 0.71]])
    z = torch.logit(p).requires_grad_()
    y = torch.tensor([1, 0])
    loss = acsl_loss(z, y, xi=0.7)
    # sample 1 (category 1): w = (0, 1, 1, 0); sample 2 (background): w = (1, 0, 0, 1)
    expect = -(np.log(0.9) + np.log(0.2) + np.log(0.75) + np.log(0.29)) / 2
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    loss.backward()
    assert torch.allclose(z.grad, torch.tensor([[0, -0.1, 0.8, 0], [-0.25, 0, 0, 0.71]]) / 2, atol=1e-6)
    # at p_i = ξ exactly the category is suppressed (the rule is p_i >= ξ): logit 0 is p = 0.5
    assert acsl_weights(torch.tensor([[0.0, 0.0, -9.0]]), torch.tensor([0]), xi=0.5).tolist() == [[1.0, 1.0, 0.0]]


def test_acsl_limits_bce_and_ground_truth_only():
    torch.manual_seed(0)
    z, y = torch.randn(30, 4), torch.randint(0, 4, (30,))
    assert torch.equal(acsl_loss(z, y, xi=0.0), bce_loss(z, y))
    assert acsl_loss(z, y, xi=1.0).item() == pytest.approx((-F.logsigmoid(z.gather(1, y[:, None]))).sum().item() / 30,
                                                           rel=1e-6)
    assert bce_loss(z, y).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(z, one_hot(y, 4), reduction="sum").item() / 30, rel=1e-6)


def test_code_background_rule_follows_the_released_code():
    g = torch.Generator().manual_seed(0)
    z = torch.logit(torch.full((300, 5), 0.8))  # every score above xi
    y = torch.zeros(300, dtype=torch.long)
    y[:100] = 2  # 100 foreground samples of category 2, 200 background
    w = acsl_weights(z, y, xi=0.7, background="code", groups=GROUPS, generator=g)
    assert (w[:100] == 1).all()  # foreground: as the paper (all scores >= xi)
    bg = w[100:]
    assert (bg[:, 0] == 1).all() and bg[:, 3:].sum().item() == 2 * 200  # frequent columns on all background
    assert bg[:, 1].sum().item() == 2 and bg[:, 2].sum().item() == 20  # rare on 1%, common on 10%
    paper = acsl_weights(z, y, xi=0.7, background="paper")
    assert (paper == 1).all()


def test_eql_drops_tail_negatives_of_foreground_samples_only():
    tail = torch.tensor([False, True, True, False, False])
    z = torch.zeros(2, 5, requires_grad=True)
    y = torch.tensor([3, 0])  # a foreground sample of category 3, a background sample
    eql_loss(z, y, tail=tail).backward()
    grad = z.grad * 2
    assert torch.allclose(grad[0], torch.tensor([0.5, 0.0, 0.0, -0.5, 0.5]))
    assert torch.allclose(grad[1], torch.tensor([-0.5, 0.5, 0.5, 0.5, 0.5]))
    # a foreground sample of a tail category keeps its own positive column; only its other tail columns drop
    z = torch.zeros(1, 5, requires_grad=True)
    eql_loss(z, torch.tensor([1]), tail=tail).backward()
    assert torch.allclose(z.grad[0], torch.tensor([0.5, -0.5, 0.0, 0.5, 0.5]))


def test_acsl_bce_and_eql_differ_as_computed_by_hand():
    # background 0.3, category 1 (the label) 0.9, category 2 (tail) 0.8, category 3 (tail) 0.2; xi = 0.7
    p = torch.tensor([[0.3, 0.9, 0.8, 0.2]])
    y, tail = torch.tensor([1]), torch.tensor([False, False, True, True])
    grads, values = {}, {}
    for name, f in (("bce", lambda z: bce_loss(z, y)), ("acsl", lambda z: acsl_loss(z, y, xi=0.7)),
                    ("eql", lambda z: eql_loss(z, y, tail=tail))):
        z = torch.logit(p).requires_grad_()
        values[name] = f(z)
        values[name].backward()
        grads[name] = z.grad[0].tolist()
    # BCE: every column; ACSL: the label and category 2 (0.8 >= xi); EQL: the label and the background
    assert grads["bce"] == pytest.approx([0.3, -0.1, 0.8, 0.2], abs=1e-6)
    assert grads["acsl"] == pytest.approx([0.0, -0.1, 0.8, 0.0], abs=1e-6)
    assert grads["eql"] == pytest.approx([0.3, -0.1, 0.0, 0.0], abs=1e-6)
    assert values["bce"].item() == pytest.approx(-np.log(0.7 * 0.9 * 0.2 * 0.8), rel=1e-5)
    assert values["acsl"].item() == pytest.approx(-np.log(0.9 * 0.2), rel=1e-5)
    assert values["eql"].item() == pytest.approx(-np.log(0.7 * 0.9), rel=1e-5)


def test_focal_and_ce_reduce_to_known_losses():
    torch.manual_seed(2)
    z, y = torch.randn(20, 4), torch.randint(0, 4, (20,))
    assert focal_loss(z, y, gamma=0.0, alpha=0.5).item() == pytest.approx(0.5 * bce_loss(z, y).item(), rel=1e-6)
    assert focal_loss(z, y).item() < bce_loss(z, y).item()
    # one sample of category 1, p = (0.2, 0.9, 0.6): α = 0.25 weighs the positive column, 1 - α the negatives,
    # and (1 - p_t)^γ with p_t = p on the positive column, 1 - p on the others
    pz = torch.logit(torch.tensor([[0.2, 0.9, 0.6]]))
    expect = -(0.75 * 0.2 ** 2 * np.log(0.8) + 0.25 * 0.1 ** 2 * np.log(0.9) + 0.75 * 0.6 ** 2 * np.log(0.4))
    assert focal_loss(pz, torch.tensor([1]), gamma=2.0, alpha=0.25).item() == pytest.approx(expect, rel=1e-5)
    assert torch.equal(ce_loss(z, y), F.cross_entropy(z, y))
    assert torch.allclose(class_scores("ce", z).sum(1) + torch.softmax(z, 1)[:, 0], torch.ones(20))
    assert class_scores("acsl", z).shape == (20, 3)


def test_loss_errors_name_the_problem():
    z, y = torch.zeros(3, 4), torch.tensor([0, 1, 4])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3"):
        bce_loss(z, y)
    with pytest.raises(ValueError, match="allowed: ce, bce, focal, eql, acsl"):
        class_loss("softmax", z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="needs the LVIS groups"):
        acsl_loss(z, torch.tensor([0, 1, 2]), background="code")
    with pytest.raises(ValueError, match="allowed: paper, code"):
        acsl_loss(z, torch.tensor([0, 1, 2]), background="lvis")
    with pytest.raises(ValueError, match="xi must lie in"):
        acsl_loss(z, torch.tensor([0, 1, 2]), xi=1.5)
    with pytest.raises(ValueError, match="'r', 'c', 'f'"):
        acsl_loss(z, torch.tensor([0, 1, 2]), background="code", groups=["-", "r", "x", "f"])
    with pytest.raises(ValueError, match="tail"):
        class_loss("eql", z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"shape \(samples, C \+ 1\) with C >= 1, got \(3, 1\)"):
        bce_loss(torch.zeros(3, 1), torch.tensor([0, 0, 0]))  # a background column alone
    with pytest.raises(ValueError, match="'-' for background"):
        acsl_loss(z, torch.tensor([0, 1, 2]), background="code", groups=["r", "r", "c", "f"])
    with pytest.raises(ValueError, match=r"tail\[0\] \(background\) False"):
        eql_loss(z, torch.tensor([0, 1, 2]), tail=torch.tensor([True, False, True, False]))


def test_class_loss_passes_its_settings_on():
    pz, y = torch.logit(torch.tensor([[0.2, 0.9, 0.6], [0.8, 0.1, 0.75]])), torch.tensor([1, 0])
    # xi = 0.7 suppresses column 2 of sample 2 (0.75 >= 0.7); xi = 0.8 does not
    for xi in (0.7, 0.8):
        assert torch.equal(class_loss("acsl", pz, y, xi=xi), acsl_loss(pz, y, xi=xi))
    assert class_loss("acsl", pz, y, xi=0.8) < class_loss("acsl", pz, y, xi=0.7)
    # gamma = 0 and alpha = 0.5: half the BCE
    assert class_loss("focal", pz, y, gamma=0.0, alpha=0.5).item() == pytest.approx(0.5 * bce_loss(pz, y).item())


# ---- data -----------------------------------------------------------------------------------------
def _write_idx(path, arr, type_code=0x08):
    raw = bytes([0, 0, type_code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def test_idx_round_trip_and_bad_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        _write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    _write_idx(tmp_path / "f.idx", arr, type_code=0x0D)
    with pytest.raises(ValueError, match="allowed: 0x08"):
        read_idx(tmp_path / "f.idx")
    (tmp_path / "t.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-5])
    with pytest.raises(ValueError, match="but the file holds"):
        read_idx(tmp_path / "t.idx")


def test_base_images_fashion_folder_and_digits_fallback(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    b = load_base_images("auto", tmp_path)
    assert b.source == "fashion-mnist" and b.X_train.shape == (6, 28, 28) and b.y_test.shape == (4,)
    d = load_base_images("auto", tmp_path / "absent")
    assert d.source == "digits" and d.X_train.shape[1:] == (28, 28) and d.X_train.dtype == np.uint8
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_base_images("fashion-mnist", tmp_path / "absent")
    with pytest.raises(ValueError, match="allowed: auto, fashion-mnist, digits"):
        load_base_images("cifar")


def test_long_tail_follows_the_lvis_split():
    assert [frequency_group(n) for n in (1, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]
    with pytest.raises(ValueError, match="at least one"):
        frequency_group(0)
    cats = make_long_tail(10, n_max=400, n_min=1, rng=np.random.default_rng(0))
    assert len(cats) == 50 and [c.id for c in cats] == list(range(1, 51))
    counts = sorted((c.count for c in cats), reverse=True)
    assert counts[0] == 400 and counts[-1] == 1
    assert all(c.frequency == frequency_group(c.count) for c in cats)
    assert all(c.frequency == "f" for c in cats if c.variant == 0)  # the plain garments are the head
    assert {c.frequency for c in cats} == {"r", "c", "f"}


def test_rarity_is_independent_of_the_variant():
    # the schedule by hand: n_r = 400 (1/400)^(r/49); rounded counts <= 10 from rank 30 on
    # (400 · 400^(-30/49) = 10.2): 20 rare categories
    expect_rare = sum(round(400 * (1 / 400) ** (r / 49)) <= 10 for r in range(50))
    assert expect_rare == 20
    rare_variants, rare_sets = set(), set()
    for seed in range(10):
        cats = make_long_tail(10, n_max=400, n_min=1, rng=np.random.default_rng(seed))
        rare = [c for c in cats if c.frequency == "r"]
        assert len(rare) == expect_rare
        assert all(c.variant != 0 for c in rare)
        assert len({c.variant for c in rare}) >= 3  # every seed's rare set mixes the variants
        rare_variants |= {c.variant for c in rare}
        rare_sets.add(frozenset((c.base, c.variant) for c in rare))
    assert rare_variants == {1, 2, 3, 4} and len(rare_sets) == 10
    with pytest.raises(ValueError, match="n_min <= n_max"):
        make_long_tail(10, n_max=5, n_min=9, rng=np.random.default_rng(0))


def test_scenes_and_proposals():
    rng = np.random.default_rng(0)
    base = load_base_images("digits")
    cats = make_long_tail(10, n_max=20, n_min=1, rng=rng, names=base.names)
    ids = np.concatenate([[c.id] * c.count for c in cats])
    scenes = make_scenes(ids, cats, base.X_train, base.y_train, canvas=48, obj_size=20, per_image=3, rng=rng)
    assert sum(len(s.labels) for s in scenes) == len(ids)
    assert sorted(np.concatenate([s.labels for s in scenes])) == sorted(ids)
    s = scenes[0]
    assert s.image.shape == (3, 48, 48) and 0 <= s.image.min() and s.image.max() <= 1
    assert (label_proposals(s.boxes, s) == s.labels).all()
    P, L = eval_proposals(s, rng, n_background=7)
    assert len(P) == len(s.labels) + 7 and (L[:len(s.labels)] == s.labels).all() and (L[len(s.labels):] == 0).all()
    assert (box_iou(P[:len(s.labels)], s.boxes).diagonal() >= 0.7).all()
    pool = train_pool(s, rng)
    rois, labels = sample_rois(pool, rng, rois_per_image=16, pos_fraction=0.25)
    assert rois.shape == (16, 4) and 0 < (labels > 0).sum() <= 4
    with pytest.raises(ValueError, match="no objects"):
        make_scenes(np.array([], int), cats, base.X_train, base.y_train, canvas=48, obj_size=20, per_image=3, rng=rng)
    for sc in scenes:  # over every scene (a jittered box misses IoU 0.7 about one time in eight)
        P, L = eval_proposals(sc, rng, n_background=5)
        k = len(sc.labels)
        assert (box_iou(P[:k], sc.boxes).diagonal() >= 0.7).all() and (box_iou(P[k:], sc.boxes) < 0.5).all()
        P, _ = train_pool(sc, rng)
        assert (P[:, 2] - P[:, 0] >= 4).all() and (P[:, 3] - P[:, 1] >= 4).all()  # no sliver proposals
    # the IoU threshold is inclusive: a proposal twice the height of its box (IoU exactly 0.5) is labelled
    one = type(s)(image=s.image, boxes=np.array([[0.0, 0.0, 10.0, 10.0]]), labels=np.array([4]))
    assert label_proposals(np.array([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 21.0]]), one).tolist() == [4, 0]


def _lvis_file(tmp_path, **change):
    from PIL import Image

    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(tmp_path / "a.jpg")
    spec = {"images": [{"id": 1, "file_name": "a.jpg", "width": 80, "height": 40}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [8, 4, 40, 20]},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 10, 10, 10]}],
            "categories": [{"id": 3, "name": "pug", "frequency": "r"}, {"id": 7, "name": "dog", "frequency": "f"}]}
    spec.update(change)
    (tmp_path / "lvis.json").write_text(json.dumps(spec))
    return tmp_path / "lvis.json"


def test_lvis_loader_reads_the_real_format(tmp_path):
    lvis = load_lvis(_lvis_file(tmp_path))
    assert [c["frequency"] for c in lvis.categories] == ["r", "f"]
    scenes, groups = lvis_scenes(lvis, tmp_path, canvas=40)
    assert groups == ["-", "r", "f"]
    s = scenes[0]
    assert s.image.shape == (3, 40, 40) and list(s.labels) == [2, 1]
    assert np.allclose(s.boxes[0], [4, 4, 24, 24]) and np.allclose(s.boxes[1], [25, 10, 30, 20])


@pytest.mark.parametrize("change,message", [
    ({"categories": [{"id": 3, "name": "pug", "frequency": "rare"}, {"id": 7, "name": "dog", "frequency": "f"}]},
     "allowed: r, c, f"),
    ({"annotations": [{"id": 1, "image_id": 9, "category_id": 7, "bbox": [0, 0, 5, 5]}]}, "unknown image 9"),
    ({"annotations": [{"id": 1, "image_id": 1, "category_id": 8, "bbox": [0, 0, 5, 5]}]}, "unknown category 8"),
    ({"annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 0, 5]}]}, "width > 0"),
    ({"annotations": []}, "no annotations"),
    ({"categories": []}, "no categories"),
])
def test_lvis_loader_errors(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_lvis(_lvis_file(tmp_path, **change))


def test_lvis_loader_bad_json_and_missing_image(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_lvis(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="missing the list 'annotations'"):
        load_lvis(tmp_path / "y.json")
    lvis = load_lvis(_lvis_file(tmp_path))
    with pytest.raises(FileNotFoundError, match="a.jpg not found"):
        lvis_scenes(lvis, tmp_path / "elsewhere", canvas=32)


# ---- detector and evaluation -------------------------------------------------------------------
def _bilinear(fmap, x, y):
    "Reference bilinear sample of fmap (C, H, W) at pixel coordinates (x, y), zero outside."
    C, H, W = fmap.shape
    x, y = x - 0.5, y - 0.5
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    out = torch.zeros(C)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < W and 0 <= yi < H:
                out += wgt * fmap[:, yi, xi]
    return out


def test_roi_align_matches_a_reference_bilinear_sampler():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 12, 12)  # stride 4 of a 48-pixel image
    rois = torch.tensor([[[4.0, 8.0, 30.0, 40.0], [0.0, 0.0, 48.0, 48.0]], [[10.0, 2.0, 20.0, 22.0], [3, 5, 9, 11]]])
    out = roi_align(fmap, rois, out=3, image_size=48).view(2, 2, 3, 3, 3)
    for n in range(2):
        for r in range(2):
            x1, y1, x2, y2 = rois[n, r].tolist()
            for i in range(3):
                for j in range(3):
                    px = (x1 + (x2 - x1) * (j + 0.5) / 3) / 4  # feature-map pixels
                    py = (y1 + (y2 - y1) * (i + 0.5) / 3) / 4
                    assert torch.allclose(out[n, r, :, i, j], _bilinear(fmap[n], px, py), atol=1e-5)


def test_roi_align_refuses_rois_for_another_number_of_images():
    with pytest.raises(ValueError, match="2 feature maps but RoIs for 3 images"):
        roi_align(torch.zeros(2, 3, 12, 12), torch.zeros(3, 1, 4), out=3, image_size=48)


def test_retrain_classifier_starts_from_init_steps_with_momentum_and_splits_the_gradients():
    from paperbook.acsl.detector import retrain_classifier

    torch.manual_seed(0)
    feats, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 1, 0, 2])
    init = {"weight": torch.randn(3, 4) * 0.5, "bias": torch.zeros(3)}
    kw = dict(epochs=2, lr=0.1, batch=6, seed=0)  # one batch of all six rows per epoch
    assert torch.equal(retrain_classifier(feats, labels, init, "ce", **{**kw, "epochs": 0}).weight, init["weight"])
    w = init["weight"].clone().requires_grad_()
    b = init["bias"].clone().requires_grad_()
    velocity = None
    for _ in range(2):  # SGD with momentum 0.9 by hand: v = 0.9 v + g; w -= lr v
        gw, gb = torch.autograd.grad(F.cross_entropy(feats @ w.T + b, labels), (w, b))
        velocity = (gw, gb) if velocity is None else (0.9 * velocity[0] + gw, 0.9 * velocity[1] + gb)
        with torch.no_grad():
            w -= 0.1 * velocity[0]
            b -= 0.1 * velocity[1]
    lin = retrain_classifier(feats, labels, init, "ce", **kw)
    torch.testing.assert_close(lin.weight, w.detach(), rtol=1e-5, atol=1e-6)
    # the positive / negative gradient of each column, with lr 0 (the same every epoch): for cross-entropy the
    # per-sample gradient of z_j is p_j − y_j: 1 − p_j from samples of j, p_j from the others
    stats = {}
    retrain_classifier(feats, labels, init, "ce", **{**kw, "lr": 0.0, "epochs": 1}, grad_stats=stats)
    p = torch.softmax(feats @ init["weight"].T, 1)
    y = F.one_hot(labels, 3).float()
    torch.testing.assert_close(stats["pos"], ((1 - p) * y).sum(0))
    torch.testing.assert_close(stats["neg"], (p * (1 - y)).sum(0))
    torch.testing.assert_close(stats["neg_bg"], (p * (1 - y))[labels == 0].sum(0))


def test_box_iou_by_hand():
    # [0, 2]² against [1, 3]² (overlap 1 of 4 + 4 - 1 = 7), itself, and a disjoint box
    iou = box_iou(np.array([[0.0, 0, 2, 2]]), np.array([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]]))
    assert iou.tolist() == [pytest.approx([1 / 7, 1.0, 0.0])]


def test_average_precision_by_hand():
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == \
        pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([0.9, 0.1]), np.array([True, True]), 2) == 1.0
    assert average_precision(np.array([0.9]), np.array([True]), 2) == pytest.approx(51 / 101)  # half the objects missed
    assert np.isnan(average_precision(np.array([0.5]), np.array([False]), 0))
    # hit, miss, miss, hit, hit of 3 objects: precision 1, .5, .33, .5, .6 at recall 1/3, 1/3, 1/3, 2/3, 1; COCO takes
    # the best precision at any recall at least r, so recall 0.34..0.66 scores .6 (not .5): (34 + 67 × 0.6) / 101
    hits = np.array([True, False, False, True, True])
    assert average_precision(np.linspace(1, 0.5, 5), hits, 3) == pytest.approx((34 + 67 * 0.6) / 101)


def test_per_image_budget_and_perfect_scores():
    scores = torch.tensor([[0.9, 0.8], [0.7, 0.1], [0.95, 0.2]])
    image = torch.tensor([0, 0, 1])
    keep = keep_top(scores, image, 2)
    assert keep.tolist() == [[True, True], [False, False], [True, True]]
    labels = torch.tensor([1, 2, 0, 2, 1, 0])
    perfect = F.one_hot(labels, 3)[:, 1:].float()
    r = evaluate(perfect, labels, torch.tensor([0, 0, 0, 1, 1, 1]), ["-", "r", "f"], max_dets=2)
    assert r["mAP"] == 100 and r["APr"] == 100 and r["APf"] == 100 and np.isnan(r["APc"])


def test_budget_keeps_each_images_top_scores_whatever_the_image_sizes_and_order():
    # images of 1..9 proposals in shuffled order; the reference ranks each image's (box, category) scores
    g = torch.Generator().manual_seed(0)
    image = torch.repeat_interleave(torch.arange(6), torch.tensor([3, 1, 9, 2, 5, 4]))
    image = image[torch.randperm(len(image), generator=g)]
    scores = torch.rand(len(image), 3, generator=g)
    for budget in (1, 4, 7, 30):
        for block in (1, 60, 2 ** 24):  # one image per pass, a few, all at once
            keep = keep_top(scores, image, budget, block=block)
            for i in range(6):
                mine = scores[image == i].flatten()
                cutoff = sorted(mine.tolist(), reverse=True)[min(budget, len(mine)) - 1]
                assert keep[image == i].flatten().tolist() == (mine >= cutoff).tolist(), (budget, block)


def test_budget_free_evaluation_and_background_share():
    # one image: an object of category 1 and two background proposals; category 2 scores high on background
    scores = torch.tensor([[0.6, 0.1], [0.2, 0.9], [0.1, 0.8]])
    labels, image = torch.tensor([1, 0, 0]), torch.tensor([0, 0, 0])
    tight = evaluate(scores, labels, image, ["-", "r", "f"], max_dets=2)
    assert tight["bg_share"] == 1.0 and tight["APr"] == 0.0  # the budget goes to category 2's background boxes
    free = evaluate(scores, labels, image, ["-", "r", "f"], max_dets=None)
    assert free["APr"] == 100.0 and free["bg_share"] == pytest.approx(4 / 6)
    # category 2 has no ground truth here: its AP is undefined and left out of the mean, not counted as 0
    assert np.isnan(free["per_class"][1]) and free["mAP"] == 100.0 and np.isnan(free["APf"])


def test_draw_rois_respects_the_quota_per_image():
    from paperbook.acsl.detector import draw_rois

    labels = torch.tensor([1, 2, 3, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0])
    image = torch.tensor([0] * 9 + [1] * 7)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        rows = draw_rois(labels, image, rng, rois_per_image=4, pos_fraction=0.5).numpy()
        lab, img = labels.numpy()[rows], image.numpy()[rows]
        assert ((img == 0) & (lab > 0)).sum() == 2 and ((img == 0) & (lab == 0)).sum() == 2  # 2 of 3 positives
        assert ((img == 1) & (lab > 0)).sum() == 1 and ((img == 1) & (lab == 0)).sum() == 3  # its only positive
        seen.add(tuple(rows))
    assert len(seen) > 5  # fresh draws


def test_lookalike_auc_by_hand():
    from paperbook.acsl.chapter import lookalike_auc

    # category 2 (rare) looks like category 1; its scores (column 1): on itself 0.9, 0.8; on category 1: 0.85, 0.1
    scores = np.array([[0, 0.9], [0, 0.8], [0, 0.85], [0, 0.1]])
    labels = np.array([2, 2, 1, 1])
    assert lookalike_auc(scores, labels, {2: 1}, ["-", "f", "r"]) == pytest.approx(3 / 4)
    assert np.isnan(lookalike_auc(scores, labels, {2: 1}, ["-", "f", "c"]))  # no rare category


def _crafted_runs(gain: float, noise: float, n: int = 6):
    "Runs in the chapter's shape where ACSL's APr exceeds every other method's by `gain` (± noise)."
    rng = np.random.default_rng(0)
    units = {}
    for u in range(n):
        base = {k: 10.0 + rng.normal() for k in ("mAP", "APr", "APc", "APf", "auc_lookalike")}
        res = {}
        for m in ("ce", "bce", "focal", "eql", "acsl", "acsl (paper bg rule)", "acsl xi=0"):
            d = {k: v + (gain if m == "acsl" else 0.0) + noise * rng.normal() for k, v in base.items()}
            res[m] = d | {"budget": {"20": d, "none": d}}
        units[f"0/{u}"] = res
    return [{"seed": 0, "units": units}]


def test_claims_follow_the_paired_differences():
    from paperbook.acsl.chapter import make_claims

    cfg = resolve("acsl", "cpu-toy", {})
    rows = {r["claim"]: r for r in make_claims(_crafted_runs(gain=5.0, noise=0.5), cfg)}
    acsl_rows = [r for c, r in rows.items() if c.startswith(("ACSL raises", "mechanism"))]
    assert len(acsl_rows) >= 6 and all(r["holds"] for r in acsl_rows)
    assert not rows["the regime: EQL raises rare-category AP50 over CE"]["holds"]  # EQL = CE here
    assert rows["frequent categories keep their AP50"]["holds"]
    rows = {r["claim"]: r for r in make_claims(_crafted_runs(gain=0.0, noise=0.5), cfg)}
    assert not any(r["holds"] for c, r in rows.items() if c.startswith(("ACSL raises", "mechanism")))
    rows = {r["claim"]: r for r in make_claims(_crafted_runs(gain=-4.0, noise=0.5), cfg)}
    assert not rows["frequent categories keep their AP50"]["holds"]  # 4 points below: beyond the margin of 2
    assert all(r["k_of_n"].endswith("/6") for r in rows.values())


def test_each_claim_pairs_the_right_methods_metrics_and_budget():
    from paperbook.acsl.chapter import make_claims, summary

    # every method, metric and budget its own number: method + metric (+ 100 without a budget) + unit / 10
    method = {"ce": 0, "bce": 1, "focal": 2, "eql": 3, "acsl xi=0": 4, "acsl (paper bg rule)": 5, "acsl": 6}
    metric = {"mAP": 10, "APr": 20, "APc": 30, "APf": 40, "auc_lookalike": 50}
    units = {}
    for u in range(3):
        units[f"0/{u}"] = {m: {k: o + q + u / 10 for k, q in metric.items()}
                           | {"budget": {"none": {k: o + q + 100 + u / 10 for k, q in metric.items()}}}
                           for m, o in method.items()}
    runs = [{"seed": 0, "units": units}]
    rows = make_claims(runs, resolve("acsl", "cpu-toy", {}))  # background 'code': the other rule is 'paper'
    first = [r["per_seed"][0]["value"] for r in rows]
    assert first == [{"acsl APr": 26, "ce APr": 20}, {"acsl APr": 26, "bce APr": 21}, {"acsl mAP": 16, "ce mAP": 10},
                     {"acsl APf": 46, "ce APf": 40}, {"eql APr": 23, "ce APr": 20},
                     {"acsl APr": 26, "acsl xi=0 APr": 24}, {"acsl APr": 26, "eql APr": 23},
                     {"acsl auc_lookalike": 56, "eql auc_lookalike": 53}, {"acsl APr": 126, "ce APr": 120},
                     {"acsl (paper bg rule) APr": 25, "ce APr": 20}]
    assert summary(runs, "none").loc["bce", ("APr", "mean")] == pytest.approx(121.1)  # units 0, 0.1, 0.2
    for missing in ("bce", "eql"):
        short = [{"seed": 0, "units": {u: {m: r for m, r in res.items() if m != missing} for u, res in units.items()}}]
        (only,) = make_claims(short, resolve("acsl", "cpu-toy", {}))
        assert not only["holds"] and "needs the losses ce, bce, eql and acsl" in only["note"]


def test_stage1_ddp_two_processes_equal_one(tmp_path):
    a, b = one_and_two_processes(Path(__file__).parent / "dist_scripts" / "acsl_ddp.py", tmp_path)
    assert np.allclose(a["losses"], b["losses"], atol=1e-5)
    assert np.allclose(a["params"], b["params"], atol=1e-5)


# ---- config and CLI ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"losses": ["softmax"]}, "allowed: ce, bce, focal, eql, acsl"),
    ({"xi": 1.5}, r"xi must lie in \[0, 1\]"),
    ({"background": "lvis"}, "paper"),
    ({"lvis_json": "a.json"}, "LVIS needs all of"),
    ({"n_min": 50, "n_max": 10}, "n_min <= n_max"),
    ({"seeds": 0}, "override seeds must be >= 1, got 0"),
    ({"cls_seeds": 0}, "override cls_seeds must be >= 1, got 0"),
    ({"budgets": [100, -1]}, r"override budgets\[1\] must be >= 0, got -1"),
    ({"xi_sweep": "0.3,1.5"}, r"override xi_sweep\[1\] must lie in \[0, 1\], got 1.5"),
    ({"pos_fraction": 0}, r"override pos_fraction must lie in \(0, 1\], got 0"),
])
def test_bad_config_fails_before_compute(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("acsl", "cpu-toy", overrides)


def test_cli_runs_a_tiny_acsl_experiment(tmp_path):
    sets = ["seeds=1", "cls_seeds=2", "n_max=30", "epochs=1", "cls_epochs=1", "test_per_class=2", "width=8",
            "hidden=16", "xi_sweep=[0.0]", "budgets=[0]", "images=digits"]
    r = cli("run", "acsl", "--out", tmp_path, *[a for s in sets for a in ("--set", s)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ACSL raises rare-category AP50 over softmax CE" in r.stdout
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"ce", "bce", "focal", "eql", "acsl"} <= set(m["metrics"]["summary"])
    paired = [r for r in m["reproduction"] if "difference" in r]
    assert paired and all(len(r["per_seed"]) == 2 and r["k_of_n"].endswith("/2") for r in paired)


def test_run_takes_its_device_from_the_config():
    from paperbook.acsl.chapter import run_seed

    cfg = resolve("acsl", "cpu-toy", {"device": "cuda:7" if not torch.cuda.is_available() else "cuda:999"})
    with pytest.raises(ValueError, match="cuda"):
        run_seed(cfg, 0)


# ---- found by mutation of losses.py and detector.py ------------------------------------------------
def test_loss_checks_name_negative_labels_short_groups_and_a_background_column_alone():
    from paperbook.acsl.losses import group_masks

    z = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3 \(0 = background\), got -1\.\.2"):
        bce_loss(z, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="groups must be '-' for background then"):
        group_masks(["-"])  # no category
    with pytest.raises(ValueError, match="groups has 3 entries; the logits have 4 columns"):
        acsl_loss(z, torch.tensor([0, 0, 2]), background="code", groups=["-", "r", "f"])


def test_code_background_rule_rounds_each_share_down():
    # 250 background samples: 1% is 2.5 and 10% is 25, so 2 samples suppress the rare column and 25 the common one
    z = torch.logit(torch.full((250, 5), 0.8))
    w = acsl_weights(z, torch.zeros(250, dtype=torch.long), background="code", groups=GROUPS,
                     generator=torch.Generator().manual_seed(0))
    assert w[:, 1].sum().item() == 2 and w[:, 2].sum().item() == 25 and w[:, 3:].sum().item() == 2 * 250


def test_class_loss_draws_the_code_rule_from_the_generator_it_is_given():
    torch.manual_seed(0)
    z, y = torch.randn(400, 5), torch.zeros(400, dtype=torch.long)
    kw = dict(background="code", groups=GROUPS)

    def seeded(s):
        return torch.Generator().manual_seed(s)
    assert torch.equal(class_loss("acsl", z, y, generator=seeded(3), **kw), acsl_loss(z, y, generator=seeded(3), **kw))
    assert not torch.equal(acsl_loss(z, y, generator=seeded(3), **kw), acsl_loss(z, y, generator=seeded(4), **kw))


def _coco_ap(scores, hits, num_gt):
    "COCO's 101-point AP written out plainly: ties in input order (pycocotools sorts with mergesort)."
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    tp = fp = 0
    recall, precision = [], []
    for i in order:
        tp, fp = tp + hits[i], fp + (not hits[i])
        recall.append(tp / num_gt)
        precision.append(tp / (tp + fp))
    for j in range(len(precision) - 2, -1, -1):  # the best precision at this recall or beyond
        precision[j] = max(precision[j], precision[j + 1])
    points = []
    for r in np.linspace(0, 1, 101):  # COCO's recall thresholds, compared exactly as its searchsorted does
        reached = [j for j, rec in enumerate(recall) if rec >= r]
        points.append(precision[reached[0]] if reached else 0.0)
    return sum(points) / 101


def test_average_precision_breaks_ties_in_input_order_as_coco():
    rng = np.random.default_rng(0)
    for n in (20, 60):
        for _ in range(5):
            scores = np.round(rng.random(n), 1)  # many ties
            hits = rng.random(n) < 0.4
            assert average_precision(scores, hits, int(hits.sum()) + 1) == pytest.approx(
                _coco_ap(scores.tolist(), hits.tolist(), int(hits.sum()) + 1), abs=1e-12)


def test_group_ap_leaves_out_categories_without_ground_truth():
    # two rare categories; category 2 has no object, so APr is category 1's AP alone
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.6, 0.1], [0.1, 0.7, 0.9]])
    labels, image = torch.tensor([1, 0, 3]), torch.tensor([0, 0, 0])
    r = evaluate(scores, labels, image, ["-", "r", "r", "f"], max_dets=None)
    assert np.isnan(r["per_class"][1]) and r["APr"] == 100.0 and r["APf"] == 100.0


def test_draw_rois_takes_the_same_share_of_positives_as_sample_rois():
    # 6 RoIs with a quarter positive: 1.5 rounds down to 1, as sample_rois does for stage 1
    from paperbook.acsl.detector import draw_rois

    labels = torch.tensor([1, 2, 3, 0, 0, 0, 0, 0, 0, 0])
    rng = np.random.default_rng(0)
    rows = draw_rois(labels, torch.zeros(10, dtype=torch.long), rng, rois_per_image=6, pos_fraction=0.25)
    _, lab = sample_rois((np.zeros((10, 4)), labels.numpy()), rng, rois_per_image=6, pos_fraction=0.25)
    assert (labels[rows] > 0).sum().item() == 1 == (lab > 0).sum()
    assert len(rows) == 6


def _scenes(sizes, S=48, seed=0):
    "Scenes of random images with `sizes[i]` proposals each (boxes inside the image, labels 0..2)."
    from paperbook.acsl.data import Scene

    rng = np.random.default_rng(seed)
    scenes, pools = [], []
    for k in sizes:
        lo = rng.uniform(0, S / 2, (k, 2))
        P = np.concatenate([lo, lo + rng.uniform(4, S / 2, (k, 2))], 1)
        L = np.r_[1, 2, np.zeros(k - 2, dtype=int)]
        scenes.append(Scene(torch.rand(3, S, S, generator=torch.Generator().manual_seed(int(k))), P[:2], L[:2]))
        pools.append((P, L))
    return scenes, pools


def test_roi_features_numbers_images_across_batches_and_drops_the_padding():
    from paperbook.acsl.detector import Detector, roi_features

    torch.manual_seed(0)
    net = Detector(2, width=8, hidden=16).eval()
    scenes, pools = _scenes([5, 3, 4])
    feats, labels, image = roi_features(net, scenes, pools, batch=2)
    assert image.tolist() == [0] * 5 + [1] * 3 + [2] * 4
    assert labels.tolist() == [lab for _, L in pools for lab in L.tolist()]
    alone = torch.cat([net.features(s.image[None], torch.tensor(P[None], dtype=torch.float32))
                       for s, (P, _) in zip(scenes, pools, strict=True)])
    torch.testing.assert_close(feats, alone.detach(), rtol=1e-5, atol=1e-6)


def test_stage1_loss_is_the_mean_cross_entropy_per_roi_over_the_epochs_batches():
    # a zeroed classification layer scores every class alike: log(C + 1) per RoI, whatever the batches; lr 0 keeps it
    from paperbook.acsl.detector import Detector, train_representation

    torch.manual_seed(0)
    net = Detector(2, width=8, hidden=16)
    torch.nn.init.zeros_(net.cls.weight)
    torch.nn.init.zeros_(net.cls.bias)
    scenes, pools = _scenes([8] * 5)
    losses = train_representation(net, scenes, pools, epochs=2, batch=2, lr=0.0, rois_per_image=4,
                                  pos_fraction=0.25, rng=np.random.default_rng(0))  # 3 batches per epoch
    assert losses == pytest.approx([np.log(3)] * 2, rel=1e-6)
