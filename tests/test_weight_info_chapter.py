"""Chapter 5's glue (paperbook.weight_info.chapter) with data, training and measures replaced by stand-ins: what
each step is given (seeds, labels, settings) and what a run records from their answers, by hand."""

from types import SimpleNamespace

import pytest
import torch

from paperbook.core import resolve
from paperbook.data import Located
from paperbook.weight_info import chapter as ch
from paperbook.weight_info.data import Split


def test_splits_read_the_configured_images(monkeypatch):
    monkeypatch.setattr(ch, "load_cifar10", lambda folder: ("cifar10", folder))
    monkeypatch.setattr(ch, "load_images", lambda name, **kw: (name, kw))
    cfg = resolve("weight-info", overrides={"data.n_train": 5, "data.n_val": 3, "data.n_test": 2})
    assert ch.splits(cfg, seed=4) == ("digits", {"n_train": 5, "n_val": 3, "n_test": 2, "seed": 4})
    cifar = resolve("weight-info", overrides={"data.images": "cifar10", "data.folder": "/c"})
    assert ch.splits(cifar, seed=4) == ("cifar10", "/c")


def _rows(n):
    "Training records of n epochs: epoch i has distance 10i, path 20i, and accuracies that tell epochs apart."
    return [{"step": float(i), "distance": 10.0 * i, "path": 20.0 * i, "val_acc": [0.1, 0.5, 0.9, 0.4, 0.3][i % 5],
             "test_acc": 0.01 * i, "train_acc": 0.1 * i} for i in range(n)]


def test_one_run_corrupts_trains_and_records(monkeypatch):
    log = {"corrupt": []}
    y_train, y_val = torch.arange(6) % 3, torch.arange(4) % 3

    def corrupt(y, p, seed):
        log["corrupt"].append((len(y), p, seed))
        new = y.clone()
        new[:2] = (new[:2] + 1) % 3  # three labels redrawn, the third to its old value: two change
        return new, torch.tensor([True, True, True] + [False] * (len(y) - 3))

    monkeypatch.setattr(ch, "corrupt", corrupt)

    def make_model(kind, shape, width):
        log["model"] = (kind, shape, width, torch.rand(1).item())
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(ch, "make_model", make_model)

    def train_recording(model, train, val, test, **kw):
        log["train"] = (train, val, test, kw)
        return {"rows": _rows(8), "fitted": True, "start": "start"}

    monkeypatch.setattr(ch, "train_recording", train_recording)
    monkeypatch.setattr(ch, "sharpness_sigma", lambda model, X, Y, *, tolerance, seed: log.update(
        sigma=(Y.tolist(), tolerance, seed)) or 0.5)
    monkeypatch.setattr(ch, "distance_stop", lambda steps, *, window, rise: log.update(dstop=(steps, window, rise))
                        or 3)
    monkeypatch.setattr(ch, "validation_stop", lambda vals: max(range(len(vals)), key=vals.__getitem__))
    monkeypatch.setattr(ch, "kl_bits", lambda d, sigma: d / sigma)
    monkeypatch.setattr(ch, "layer_distances", lambda model, start: f"layers from {start}")
    cfg = resolve("weight-info", overrides={"train.width": 12, "train.lr": 0.3, "train.batch": 4,
                                            "train.max_epochs": 9, "measure.tolerance": 0.2, "measure.window": 2,
                                            "measure.rise": 0.4, "measure.probe_epochs": 3})
    data = {"train": Split(torch.zeros(6, 1, 2, 2), y_train), "val": Split(torch.ones(4, 1, 2, 2), y_val),
            "test": "test"}
    out = ch.one_run(cfg, data, p=0.4, seed=7, info=SimpleNamespace(device="cpu"))
    assert log["corrupt"] == [(6, 0.4, 7), (4, 0.4, 10_007)]  # validation labels corrupted with their own draw
    torch.manual_seed(7)
    assert log["model"] == ("mlp", (1, 2, 2), 12, torch.rand(1).item())  # built from the seed's stream
    train, val, test, kw = log["train"]
    assert train.y.tolist() == [1, 2, 2, 0, 1, 2] and val.y.tolist() == [1, 2, 2, 0] and test == "test"
    assert kw["redrawn"].tolist() == [True, True, True, False, False, False]
    assert {k: kw[k] for k in ("lr", "batch", "max_epochs", "seed")} == {"lr": 0.3, "batch": 4, "max_epochs": 9,
                                                                        "seed": 7}
    assert log["sigma"] == ([1, 2, 2, 0, 1, 2], 0.2, 7) and log["dstop"] == ([float(i) for i in range(8)], 2, 0.4)
    assert out["distance"] == 70.0 and out["path"] == 140.0 and out["kl_bits"] == 140.0  # D / σ, last epoch
    assert out["changed"] == 2 and out["layers"] == "layers from start" and out["fitted"]
    assert out["stop"] == {"distance": 3, "validation": 2, "fit": 7}
    assert out["test_at"] == {"distance": 0.03, "validation": 0.02, "fit": 0.07}
    assert out["probe_train_acc"] == pytest.approx(0.2)  # the third epoch's training accuracy


def test_estimation_errors_calibrate_on_the_other_seeds(monkeypatch):
    fits = []
    monkeypatch.setattr(ch, "calibrate", lambda ps, vals: fits.append((ps, vals)) or "curve")
    monkeypatch.setattr(ch, "invert", lambda curve, v: v)  # p̂ is the (signed) measure itself
    runs = [{"seed": s, "p": p, "distance": p + 0.1 * s, "probe_train_acc": 1 - p} for s in (0, 1) for p in (0, 1)]
    assert ch.estimation_errors(runs, "distance", [0, 1]) == {0: pytest.approx(0.0), 1: pytest.approx(0.1)}
    assert fits == [([0, 1], [0.1, 1.1]), ([0, 1], [0.0, 1.0])]  # each seed's curve from the other seed
    fits.clear()
    errs = ch.estimation_errors(runs, "probe_train_acc", [0])  # accuracy falls with p: flipped to −(1 − p)
    assert fits == [([0, 1], [-1, 0])] and errs == {0: pytest.approx(1.0)}  # |−(1 − p) − p| = 1


RUN_KEYS = ("p", "seed", "fitted", "distance", "path", "sigma", "kl_bits", "layers", "changed", "stop", "test_at",
            "probe_train_acc")


def test_experiment_runs_the_seeds_and_the_code_lengths(monkeypatch):
    calls = []
    data = {"train": Split(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))}
    monkeypatch.setattr(ch, "splits", lambda cfg, s: calls.append(("splits", s)) or data)
    monkeypatch.setattr(ch, "one_run",
                        lambda cfg, d, p, s, info: calls.append(("run", p, s)) or dict.fromkeys(RUN_KEYS, 0))
    monkeypatch.setattr(ch, "corrupt", lambda y, p, seed: (y + 10 * p + 100 * seed, None))

    def preq(factory, X, y, **kw):
        calls.append(("preq", y.tolist(), kw))
        return 1.0

    monkeypatch.setattr(ch, "prequential_bits", preq)

    from paperbook.dist import process_map

    def in_order(*a, **kw):  # the jobs run here, one after another, so that the stand-ins record them
        calls.append(("map", kw["workers"], kw["threads_per_worker"], kw["device"]))
        return process_map(*a, **kw | {"workers": 1})

    monkeypatch.setattr(ch, "process_map", in_order)
    monkeypatch.setattr(ch, "make_claims", lambda runs, preq, cfg: [])
    cfg = resolve("weight-info", overrides={"seed": 3, "train.seeds": 2, "train.levels": [0.0, 0.5, 1.0],
                                            "cpu_threads": 2, "measure.preq_epochs": 6, "train.lr": 0.2,
                                            "train.batch": 8})
    res = ch.experiment(cfg, SimpleNamespace(device="cpu"))
    assert calls[0] == ("map", 2, 2, "cpu")  # the config's workers and threads, the run's device
    # each run on its seed's split; then per seed the code lengths of its labels, corrupted with its seed
    kw = lambda s: {"epochs": 6, "lr": 0.2, "batch": 8, "seed": s}
    preqs = lambda s: [("preq", [100.0 * s + v + 10 * p for v in (0, 1, 2, 0)], kw(s)) for p in (0.0, 0.5, 1.0)]
    run = lambda p, s: [("splits", s), ("run", p, s)]
    assert calls[1:] == [*run(0.0, 3), *run(0.5, 3), *run(1.0, 3), *run(0.0, 4), *run(0.5, 4), *run(1.0, 4),
                         ("splits", 3), *preqs(3), ("splits", 4), *preqs(4)]
    assert res.metrics["prequential_bits"] == {s: {0.0: 1.0, 0.5: 1.0, 1.0: 1.0} for s in (3, 4)}
    assert len(res.metrics["runs"]) == 6


def test_runs_record_which_images_they_used(monkeypatch):
    import paperbook.data as registry

    found = Located("fashion_mnist", "/usr/share/datasets/fashion-mnist", "folder")
    monkeypatch.setattr(registry, "locate", lambda name, quiet: found)
    used = lambda **kw: ch.data_used(resolve("weight-info", overrides=kw))
    assert used() == {"digits": {"source": "package", "note": "scikit-learn's digits"}}
    assert used(**{"data.images": "fashion-mnist"}) == {"fashion_mnist": found.record()}
    assert found.record()["sha256"] == registry.REGISTRY["fashion_mnist"].digest
    assert used(**{"data.images": "cifar10", "data.folder": "/c"}) == {"cifar10": {"source": "folder", "path": "/c"}}


@pytest.mark.parametrize("overrides, message", [
    ({"data.images": "cifar10"}, "needs data.folder"),
    ({"train.levels": [0.0, 1.0]}, "at least 3 probabilities"),
    ({"nproc_per_node": 3}, "train.batch 64 is not divisible by the 3 processes"),
])
def test_inconsistent_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("weight-info", overrides=overrides)


def test_code_lengths_train_on_the_runs_device(monkeypatch):
    # the code lengths' networks and data go where the runs go (a GPU preset would otherwise train them on the CPU);
    # the meta device stands in for an accelerator: the stand-in records where everything is
    seen = []

    def preq(make, X, y, **kw):
        seen.append((X.device.type, y.device.type, next(make().parameters()).device.type, kw["seed"]))
        return 0.0

    monkeypatch.setattr(ch, "prequential_bits", preq)
    data = {"train": Split(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))}
    cfg = resolve("weight-info", overrides={"train.levels": [0.0, 0.5, 1.0]})
    assert ch.code_lengths(cfg, data, seed=7, device="meta") == {0.0: 0.0, 0.5: 0.0, 1.0: 0.0}
    assert seen == [("meta", "meta", "meta", 7)] * 3
    got = []  # and the experiment hands them the run's device
    monkeypatch.setattr(ch, "splits", lambda cfg, s: data)
    monkeypatch.setattr(ch, "one_run", lambda cfg, d, p, s, info: dict.fromkeys(RUN_KEYS, 0))
    monkeypatch.setattr(ch, "code_lengths", lambda cfg, d, s, device: got.append((s, device)) or {})
    monkeypatch.setattr(ch, "make_claims", lambda runs, preq, cfg: [])
    ch.experiment(resolve("weight-info", overrides={"train.levels": [0.0, 0.5, 1.0], "workers": 1}),
                  SimpleNamespace(device="meta"))
    assert got == [(s, "meta") for s in range(6)]  # cpu-toy: six seeds


SMALL = {"train.seeds": 3, "train.levels": (0.0, 0.5, 1.0), "train.max_epochs": 3, "measure.preq_epochs": 2,
         "data.n_train": 200, "data.n_val": 100, "data.n_test": 100}


def test_runs_in_worker_processes_give_the_metrics_of_one_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # room for two workers of one thread (a parallel test run sets 1)
    from paperbook.dist import DistInfo

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    alone = ch.experiment(resolve("weight-info", overrides=SMALL | {"workers": 1}), info)
    side = ch.experiment(resolve("weight-info", overrides=SMALL | {"workers": 2}), info)
    assert alone.metrics == side.metrics
    assert [(r["seed"], r["p"]) for r in side.metrics["runs"]] == [(s, p) for s in range(3) for p in (0.0, 0.5, 1.0)]
    assert len({r["distance"] for r in side.metrics["runs"]}) == 9 and list(side.metrics["prequential_bits"]) == [
        0, 1, 2]
    assert [c["per_seed"] for c in alone.claims] == [c["per_seed"] for c in side.claims]


def test_worker_processes_are_refused_under_torchrun():
    with pytest.raises(ValueError, match="workers=2 runs jobs in worker processes, which cannot join the 2 processes "
                                         "of torchrun's group: set workers=1"):
        resolve("weight-info", overrides={"nproc_per_node": 2})
    assert resolve("weight-info", overrides={"nproc_per_node": 2, "workers": 1}).world_size == 2
    assert resolve("weight-info", "node-8").workers == 1 and resolve("weight-info", "gpu-1").workers == 1
