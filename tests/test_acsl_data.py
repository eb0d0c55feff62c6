"""Chapter 2's data (paperbook.acsl.data), by hand: base images, rendering, scene composition, proposal pools and
the LVIS reader's edge cases."""

import json

import numpy as np
import torch
import torch.nn.functional as F

from paperbook.acsl.data import (Category, box_iou, load_base_images, load_lvis, lvis_scenes, make_long_tail,
                                 make_scenes, render, sample_rois, train_pool)


def test_digits_need_no_registry_and_fall_back_when_fashion_mnist_is_incomplete(monkeypatch, tmp_path):
    import paperbook.data
    from sklearn.datasets import load_digits

    def no_registry(*a, **k):
        raise AssertionError("digits asked for: the registry is not consulted")

    monkeypatch.setattr(paperbook.data, "locate", no_registry)
    d = load_base_images("digits")
    ref = load_digits()
    up = F.interpolate(torch.tensor(ref.images, dtype=torch.float32)[:, None] / 16, size=(28, 28), mode="bilinear",
                       align_corners=False)[:, 0]
    assert np.array_equal(d.X_train, np.rint(up.numpy()[:898] * 255).astype(np.uint8))  # rounded, not truncated
    assert len(d.X_train) == 898 and len(d.X_test) == 899 and (d.y_test == ref.target[898:]).all()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")  # one file of four: not Fashion-MNIST
    assert load_base_images("auto", tmp_path).source == "digits"


def test_disjoint_boxes_in_one_direction_do_not_overlap():
    iou = box_iou(np.array([[0.0, 0, 2, 2]]), np.array([[3.0, 0, 5, 2], [0, 3, 2, 5]]))  # apart in x, then in y
    assert iou.tolist() == [[0.0, 0.0]]


def test_render_scales_and_tints_by_the_variant():
    img = np.full((28, 28), 255, np.uint8)
    small = render(img, Category(1, "x", 0, 3, 5, "r"), size=20)  # 'small': scale 0.7
    red = render(img, Category(2, "x", 0, 1, 5, "r"), size=20)  # 'red': tint (1, 0.55, 0.55)
    assert small.shape == (3, 14, 14) and red.shape == (3, 20, 20)
    assert torch.allclose(red[1], 0.55 * red[0]) and torch.allclose(red[0], torch.ones(20, 20))


def test_scenes_draw_each_object_from_its_class_in_its_box_without_overlap():
    y = np.repeat(np.arange(4), 5)
    X = np.stack([np.full((28, 28), 100 + 30 * c, np.uint8) for c in y])  # class c: grey level 100 + 30c
    cats = [Category(i + 1, f"c{i}", i, 0, 10, "r") for i in range(4)]  # plain variants of classes 0..3
    ids = np.repeat([1, 2, 3, 4], 10)
    rng = np.random.default_rng(0)
    one = make_scenes(ids, cats, X, y, canvas=40, obj_size=12, per_image=1, rng=rng)
    assert [int(s.labels[0]) for s in one] != sorted(ids.tolist())  # the objects are shuffled
    for s in one:
        x0, y0, x1, y1 = s.boxes[0].astype(int)
        grey = (100 + 30 * (s.labels[0] - 1)) / 255
        assert torch.allclose(s.image[:, y0:y1, x0:x1], torch.tensor(float(grey)))  # rows are y, columns x
    many = make_scenes(np.repeat([1, 2, 3, 4], 30), cats, X, y, canvas=96, obj_size=20, per_image=3, rng=rng)
    worst = max(np.triu(box_iou(s.boxes, s.boxes), 1).max() for s in many)
    assert worst < 0.15  # a place that overlaps the others little


def test_the_training_pool_holds_the_ground_truth_and_negatives_are_drawn_without_repeats():
    scene = make_scenes(np.array([1, 2]), [Category(1, "a", 0, 0, 1, "r"), Category(2, "b", 1, 0, 1, "r")],
                        np.full((2, 28, 28), 200, np.uint8), np.array([0, 1]), canvas=48, obj_size=16, per_image=2,
                        rng=np.random.default_rng(1))[0]
    P, L = train_pool(scene, np.random.default_rng(2))
    assert all((P == b).all(1).any() for b in scene.boxes)  # every ground-truth box is a candidate
    # 4 foreground and exactly the 12 negatives 16 RoIs at 25% need: each negative once
    pool = (np.arange(64.0).reshape(16, 4), np.array([1, 2, 1, 2] + [0] * 12))
    rois, labels = sample_rois(pool, np.random.default_rng(3), rois_per_image=16, pos_fraction=0.25)
    assert sorted(rois[labels == 0][:, 0].tolist()) == [4.0 * i for i in range(4, 16)]


def test_the_head_garments_order_changes_with_the_seed():
    plain = lambda seed: [c.count for c in make_long_tail(5, n_max=100, n_min=1, rng=np.random.default_rng(seed))
                          if c.variant == 0]
    orders = {tuple(np.argsort(plain(s))) for s in range(6)}
    assert len(orders) > 1  # which plain garment is most frequent is drawn per seed


def test_lvis_categories_in_id_order_images_without_boxes_skipped_and_coco_url_names(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(tmp_path / "000000000042.jpg")
    spec = {"images": [{"id": 1, "coco_url": "http://images.cocodataset.org/train2017/000000000042.jpg",
                        "width": 80, "height": 40}, {"id": 2, "file_name": "absent.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [8, 4, 40, 20]}],
            "categories": [{"id": 7, "name": "dog", "frequency": "f"}, {"id": 3, "name": "pug", "frequency": "r"}]}
    (tmp_path / "lvis.json").write_text(json.dumps(spec))
    lvis = load_lvis(tmp_path / "lvis.json")
    assert [c["id"] for c in lvis.categories] == [3, 7]
    scenes, groups = lvis_scenes(lvis, tmp_path, canvas=40)  # image 2 has no boxes: its file is never opened
    assert groups == ["-", "r", "f"] and len(scenes) == 1 and scenes[0].labels.tolist() == [2]
