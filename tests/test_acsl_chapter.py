"""Chapter 2's glue (paperbook.acsl.chapter) with data, networks, training and evaluation replaced by stand-ins:
what each step is given (seeds, settings, which split) and what the chapter keeps from their answers, by hand."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from paperbook.acsl import chapter as ch
from paperbook.acsl.data import BaseImages, Category, Scene
from paperbook.core import resolve

# six categories: two garments × three variants; variant 0 is the plain (head) one
CATS = [Category(1, "a (plain)", 0, 0, 50, "f"), Category(2, "a (x)", 0, 1, 5, "r"),
        Category(3, "a (y)", 0, 2, 20, "c"), Category(4, "b (plain)", 1, 0, 40, "f"),
        Category(5, "b (x)", 1, 1, 10, "c"), Category(6, "b (y)", 1, 2, 3, "r")]


def test_build_task_draws_train_scenes_from_train_images_and_test_scenes_from_test_images(monkeypatch):
    base = BaseImages(X_train="Xtr", y_train="ytr", X_test="Xte", y_test="yte", names=("a", "b"), source="x")
    calls = []
    monkeypatch.setattr(ch, "load_base_images", lambda images: calls.append(("base", images)) or base)
    monkeypatch.setattr(ch, "make_long_tail", lambda n, **kw: calls.append(("tail", n, kw)) or CATS)

    def scenes(ids, cats, X, y, **kw):
        calls.append(("scenes", list(ids), X, y, kw))
        return [f"{X} scene"]

    monkeypatch.setattr(ch, "make_scenes", scenes)
    cfg = resolve("acsl", "cpu-toy", {"images": "digits", "n_max": 50, "n_min": 3, "test_per_class": 2,
                                      "canvas": 40, "obj_size": 12, "per_image": 2})
    rng = np.random.default_rng(0)
    task = ch.build_task(cfg, rng)
    assert calls[0] == ("base", "digits")
    assert calls[1] == ("tail", 2, {"n_max": 50, "n_min": 3, "rng": rng, "names": ("a", "b")})
    kw = {"canvas": 40, "obj_size": 12, "per_image": 2, "rng": rng}
    assert calls[2] == ("scenes", [1] * 50 + [2] * 5 + [3] * 20 + [4] * 40 + [5] * 10 + [6] * 3, "Xtr", "ytr", kw)
    assert calls[3] == ("scenes", [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], "Xte", "yte", kw)
    assert task.train == ["Xtr scene"] and task.test == ["Xte scene"]
    assert task.groups == ["-", "f", "r", "c", "f", "c", "r"] and task.counts.tolist() == [50, 5, 20, 40, 10, 3]
    assert task.lookalike == {2: 1, 3: 1, 5: 4, 6: 4}  # each variant -> the plain garment it varies


def test_build_task_reads_lvis_train_and_val(monkeypatch):
    def scenes(lvis, image_dir, *, canvas):
        labels = {"train.json": [np.array([1, 1, 3]), np.array([2, 1])], "val.json": [np.array([3])]}[lvis]
        return [Scene(None, None, lab) for lab in labels], ["-", "f", "r", "c"]

    monkeypatch.setattr(ch, "load_lvis", lambda path: path)
    monkeypatch.setattr(ch, "lvis_scenes", scenes)
    cfg = resolve("acsl", "cpu-toy", {"lvis_json": "train.json", "lvis_val_json": "val.json", "lvis_image_dir": "im"})
    task = ch.build_task(cfg, np.random.default_rng(0))
    assert task.counts.tolist() == [3, 1, 1] and task.names == ["1", "2", "3"] and task.lookalike == {}
    assert [s.labels.tolist() for s in task.test] == [[3]] and len(task.train) == 2


def test_methods_add_the_other_background_rule_and_the_xi_sweep_with_zero():
    cfg = resolve("acsl", "cpu-toy", {"xi": 0.7, "xi_sweep": "0.9,0.3,0.7", "background": "paper"})
    rows = ch.methods(cfg)
    assert [r[0] for r in rows] == ["ce", "bce", "focal", "eql", "acsl", "acsl (code bg rule)", "acsl xi=0",
                                    "acsl xi=0.3", "acsl xi=0.9"]
    assert rows[5][1:] == ("acsl", {"xi": 0.7, "background": "code"})
    assert rows[6][1:] == ("acsl", {"xi": 0.0, "background": "paper"})
    assert [r[0] for r in ch.methods(resolve("acsl", "cpu-toy", {"losses": "ce,bce"}))] == ["ce", "bce"]


class _Net:
    "Detector stand-in: remembers its settings and whether it is in training mode."

    def __init__(self, num_classes, **kw):
        self.kw, self.training = {"num_classes": num_classes, **kw}, True
        self.cls = torch.nn.Linear(2, num_classes + 1)

    def to(self, device):
        self.device = device
        return self

    def eval(self):
        self.training = False
        return self


def test_run_seed_passes_every_setting_and_keeps_what_the_chapter_reports(monkeypatch):
    log = {"retrain": [], "evaluate": [], "props": [], "features": []}
    names, groups = ["a", "b", "c"], ["-", "f", "r", "c"]
    task = ch.Task(train=["tr0", "tr1"], test=["te0"], groups=groups, counts=np.array([30, 2, 10]), names=names,
                   lookalike={2: 1})

    def build(cfg, rng):
        log["random"] = (torch.rand(1).item(), rng.random())
        return task

    monkeypatch.setattr(ch, "build_task", build)
    monkeypatch.setattr(ch, "Detector", _Net)
    monkeypatch.setattr(ch, "train_pool", lambda s, rng: f"pool {s}")

    def train_rep(net, scenes, pools, **kw):
        log["stage1"] = (net, scenes, pools, kw)
        return [3.0, 2.0]

    monkeypatch.setattr(ch, "train_representation", train_rep)
    Lte = torch.tensor([1, 2, 0])

    def features(net, scenes, props):
        log["features"].append((net.training, scenes, props))
        return (torch.ones(4, 2), torch.tensor([1, 2, 3, 0]), torch.tensor([0, 0, 1, 1])) if scenes == task.train \
            else (torch.zeros(3, 2), Lte, torch.tensor([0, 0, 0]))

    monkeypatch.setattr(ch, "roi_features", features)
    monkeypatch.setattr(ch, "eval_proposals", lambda s, rng, *, n_background: log["props"].append(n_background)
                        or f"props {s}")

    def retrain(F, L, init, loss, **kw):
        log["retrain"].append((loss, kw))
        if kw["grad_stats"] is not None:
            kw["grad_stats"]["pos"] = torch.tensor([1.0, 2.0])
        return lambda x: torch.full((len(x), 4), float(len(log["retrain"])))

    monkeypatch.setattr(ch, "retrain_classifier", retrain)
    monkeypatch.setattr(ch, "class_scores", lambda loss, logits: logits + {"ce": 0.0}.get(loss, 0.5))

    def evaluate(s, L, image, groups_, *, max_dets):
        log["evaluate"].append(max_dets)
        v = float(s[0, 0]) + (max_dets or 0)
        return {"mAP": v, "APr": v + 1, "APc": v + 2, "APf": v + 3, "bg_share": 0.1, "per_class": [v]}

    monkeypatch.setattr(ch, "evaluate", evaluate)
    monkeypatch.setattr(ch, "lookalike_auc", lambda s, lab, look, g: float(s[0, 0]) / 100 + len(look))
    cfg = resolve("acsl", "cpu-toy", {"cls_seeds": 2, "losses": "ce,acsl", "xi_sweep": "0.0", "canvas": 40,
                                      "obj_size": 12, "width": 8, "hidden": 16, "roi_out": 3, "epochs": 4,
                                      "batch_size": 5, "lr": 0.01, "rois_per_image": 6, "pos_fraction": 0.5,
                                      "test_background": 7, "cls_epochs": 3, "cls_lr": 0.2, "cls_batch": 64,
                                      "focal_gamma": 1.5, "focal_alpha": 0.4, "eql_max_count": 10, "max_dets": 9,
                                      "budgets": "50,0"})
    out = ch.run_seed(cfg, 3, info=SimpleNamespace(device="cpu"))
    torch.manual_seed(3)
    assert log["random"] == (torch.rand(1).item(), np.random.default_rng(3).random())  # seeded before the task
    net, scenes, pools, kw = log["stage1"]
    assert net.kw == {"num_classes": 3, "width": 8, "hidden": 16, "roi_out": 3, "image_size": 40}
    assert scenes == ["tr0", "tr1"] and pools == ["pool tr0", "pool tr1"]
    assert {k: kw[k] for k in ("epochs", "batch", "lr", "rois_per_image", "pos_fraction")} == {
        "epochs": 4, "batch": 5, "lr": 0.01, "rois_per_image": 6, "pos_fraction": 0.5}
    assert [f[0] for f in log["features"]] == [False, False]  # features come from the network in eval mode
    assert log["features"][1][1:] == (["te0"], ["props te0"]) and log["props"] == [7]
    # per stage-2 seed: ce, acsl, acsl (paper bg rule), acsl xi=0
    assert [(loss, kw["seed"]) for loss, kw in log["retrain"]] == [(m, 3000 + k) for k in (0, 1)
                                                                   for m in ("ce", "acsl", "acsl", "acsl")]
    first = log["retrain"][0][1]
    assert {k: first[k] for k in ("epochs", "lr", "batch", "rois_per_image", "pos_fraction", "gamma", "alpha",
                                  "xi", "background")} == {"epochs": 3, "lr": 0.2, "batch": 64, "rois_per_image": 6,
                                                           "pos_fraction": 0.5, "gamma": 1.5, "alpha": 0.4,
                                                           "xi": 0.7, "background": "code"}
    assert first["tail"].tolist() == [False, False, True, True]  # at most eql_max_count = 10 instances
    assert first["groups"] == groups and first["image"].tolist() == [0, 0, 1, 1]
    assert [kw["grad_stats"] is not None for _, kw in log["retrain"]] == [True, True] + [False] * 6
    assert log["evaluate"] == [9, 50, None] * 8  # the headline budget, then 50 and none
    ce0, acsl1 = out["units"]["3/0"]["ce"], out["units"]["3/1"]["acsl"]
    assert ce0["mAP"] == 1.0 + 9 and acsl1["mAP"] == 6.5 + 9  # the headline budget's numbers
    assert ce0["budget"]["50"]["APr"] == 52.0 and ce0["budget"]["none"] == {
        "mAP": 1.0, "APr": 2.0, "APc": 3.0, "APf": 4.0, "bg_share": 0.1}
    assert ce0["auc_lookalike"] == pytest.approx(1.01) and acsl1["auc_lookalike"] == pytest.approx(1.065)
    assert set(out["grads"]) == {"ce", "acsl"} and out["grads"]["acsl"] == {"pos": [1.0, 2.0]}
    assert out["scores"]["acsl"][0, 0] == 2.5  # the first stage-2 seed's scores
    assert out["rare"] == ["b"] and out["stage1_loss"] == [3.0, 2.0] and out["test_labels"].tolist() == [1, 2, 0]


def test_run_all_runs_consecutive_seeds(monkeypatch):
    monkeypatch.setattr(ch, "run_seed", lambda cfg, seed, info: seed)
    assert ch.run_all(resolve("acsl", "cpu-toy", {"seed": 5, "seeds": 3})) == [5, 6, 7]


def test_metrics_keep_the_per_unit_numbers_and_first_units_per_class():
    runs = [{"seed": s, "rare": [f"r{s}"], "counts": [3, 1], "groups": ["-", "f", "r"], "grads": {"g": s},
             "stage1_loss": [s], "units": {f"{s}/{k}": {m: {"mAP": s + k + i, "APr": 1.0, "APc": 2.0, "APf": 3.0,
                                                          "per_class": [s, k, i]} for i, m in enumerate(("ce", "acsl"))}
                                           for k in (0, 1)}} for s in (4, 5)]
    table = ch.summary(runs)
    assert list(table.index) == ["ce", "acsl"]  # in the order trained
    m = ch.metrics_of(runs, table)
    assert m["summary"]["acsl"]["mAP"] == [pytest.approx(6.0), pytest.approx(np.std([5, 6, 6, 7], ddof=1))]
    assert m["per_class_first_unit"] == {"ce": [4, 0, 0], "acsl": [4, 0, 1]}
    assert "per_class" not in m["units"]["5/1"]["ce"] and m["units"]["5/1"]["ce"]["mAP"] == 6
    assert m["rare"] == {4: ["r4"], 5: ["r5"]} and m["seeds"] == [4, 5] and m["gradients_first_unit"] == {"g": 4}


def test_data_used_says_digits_when_digits_are_asked_for(monkeypatch):
    import paperbook.data as registry

    found = registry.Located("fashion_mnist", "/some/folder", "folder")
    monkeypatch.setattr(registry, "locate", lambda name, quiet: found)
    assert ch.data_used(resolve("acsl", "cpu-toy", {"images": "digits"}))["fashion_mnist"]["source"] == "generated"
    assert ch.data_used(resolve("acsl", "cpu-toy", {"images": "auto"}))["fashion_mnist"]["source"] == "folder"


def test_an_object_larger_than_the_canvas_is_refused():
    with pytest.raises(ValueError, match="obj_size 50 does not fit the canvas 48"):
        resolve("acsl", "cpu-toy", {"obj_size": 50})
