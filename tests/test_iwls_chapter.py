"""Chapter 8's glue (paperbook.iwls.chapter) with the data registry, learners, selection and ABC replaced by
stand-ins: which functions run, what each learner is given, and what a function's rows record, by hand."""

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from paperbook.core import resolve
from paperbook.data import REGISTRY, Located
from paperbook.iwls import chapter as ch
from paperbook.iwls.data import PLA, generate
from paperbook.iwls.select import CV


@pytest.fixture
def registry(monkeypatch):
    "locate() finds the benchmark when `state['real']` is true; benchmark_names lists ex00 ... ex89."
    state = {"real": True, "quiet": []}

    def locate(name, quiet=False):
        state["quiet"].append(quiet)
        return Located(name, Path("/bench") if state["real"] else None, "folder" if state["real"] else "generated")

    monkeypatch.setattr(ch, "locate", locate)
    monkeypatch.setattr(ch, "benchmark_names", lambda path: [f"ex{i:02d}" for i in range(90)] if path else [])
    return state


def test_resolve_functions_follows_the_registry(registry):
    cfg = lambda **kw: resolve("iwls2020", overrides=kw)
    assert ch.resolve_functions(cfg()) == (list(ch.REAL_TOY), "real")
    assert ch.resolve_functions(cfg(functions=["all"])) == ([f"ex{i:02d}" for i in range(90)], "real")
    assert ch.resolve_functions(cfg(source="generated")) == (list(ch.GENERATED_TOY), "generated")
    assert registry["quiet"] == [False, False, True]  # a notice only when falling back on its own
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['ex95'\]; present: ex00 ... ex89"):
        ch.resolve_functions(cfg(functions=["ex01", "ex95"]))
    registry["real"] = False
    assert ch.resolve_functions(cfg()) == (list(ch.GENERATED_TOY), "generated")
    assert ch.resolve_functions(cfg(functions=["adder-4-4"])) == (["adder-4-4"], "generated")
    with pytest.raises(ValueError, match="needs the real benchmark"):
        ch.resolve_functions(cfg(functions=["all"]))
    with pytest.raises(FileNotFoundError, match="source='real' but the IWLS 2020 benchmark was not found"):
        ch.resolve_functions(cfg(source="real"))


def _pla(n_rows, n_inputs, fill):
    return PLA(np.full((n_rows, n_inputs), fill, dtype=np.uint8), np.full((n_rows, 1), fill, dtype=np.uint8))


def test_load_task_joins_train_and_valid_and_reads_the_test_set(monkeypatch):
    monkeypatch.setattr(ch, "load_benchmark", lambda name: (_pla(3, 4, 0), _pla(2, 4, 1)))
    monkeypatch.setattr(ch, "test_pla", lambda name, test_dir: _pla(1, 4, 1) if test_dir == "tests" else None)
    data, test = ch.load_task("ex01", "real", test_dir="tests")
    assert data.X[:, 0].tolist() == [0, 0, 0, 1, 1] and data.name == "ex01.train+valid" and len(test) == 1
    assert ch.load_task("ex01", "real", test_dir="")[1] is None
    monkeypatch.setattr(ch, "test_pla", lambda name, test_dir: _pla(1, 5, 1))
    with pytest.raises(ValueError, match="ex01: the test set has 5 inputs, the training set 4"):
        ch.load_task("ex01", "real", test_dir="tests")
    tr, va, te = generate("comparator-20", seed=3)
    data, test = ch.load_task("comparator-20", "generated", seed=3)
    assert np.array_equal(data.X, np.vstack([tr.X, va.X])) and np.array_equal(test.X, te.X)


def test_every_learner_gets_its_settings():
    cfg = resolve("iwls2020", overrides={"seed": 7, "tree_depth": 9, "forest_trees": 5, "forest_depth": 4,
                                         "espresso_timeout_s": 3.0, "lut_k": 3, "lut_widths": [8, 2],
                                         "fringe_rounds": 2, "max_support": 12, "boost_trees": 6, "boost_depth": 2,
                                         "max_ands": 900, "portfolio_depths": [9, 12], "fringe_depths": [9, 11]})
    assert ch.single_learners(cfg) == [
        ("tree", {"max_depth": 9}), ("forest", {"trees": 5, "max_depth": 4, "seed": 7}),
        ("espresso", {"timeout_s": 3.0}), ("lut", {"k": 3, "widths": (8, 2), "seed": 7}),
        ("fringe", {"max_depth": 9, "rounds": 2, "seed": 7}),
        ("support", {"max_support": 12, "timeout_s": 3.0, "seed": 7}),
        ("boost", {"trees": 6, "max_depth": 2, "max_ands": 900, "seed": 7}),
        ("symmetric", {}), ("arith", {}), ("chain", {})]
    # the single learners' own depth is not repeated among the portfolio's extra candidates
    assert ch.extra_candidates(cfg) == [("tree", {"max_depth": 12}),
                                        ("fringe", {"max_depth": 11, "rounds": 2, "seed": 7})]


def _cv(method, params, accs, delivered=(True, True)):
    return CV(method, params, list(accs), [10, 20], note=f"{method} note", seconds=1.5, delivered=list(delivered))


@pytest.mark.parametrize("with_test", [True, False])
def test_run_function_rows(monkeypatch, tmp_path, with_test):
    data, test = _pla(8, 3, 0), _pla(4, 3, 1)
    log = {"cv": [], "abc": [], "aig": []}
    monkeypatch.setattr(ch, "load_task", lambda name, source, seed, test_dir: log.update(task=(name, source, seed,
                                                                                               test_dir))
                        or (data, test if with_test else None))
    monkeypatch.setattr(ch, "constant_cv", lambda d, **kw: log.update(const=kw) or _cv("constant", {}, (0.5, 0.6)))

    def cross_validate(method, params, d, *, max_ands, folds, seed):
        log["cv"].append((method, params, max_ands, folds, seed))
        accs = (0.9, 0.8) if method == "tree" and params["max_depth"] == 12 else (0.7, 0.6)
        return _cv(method, params, accs, delivered=(True, method != "forest"))

    monkeypatch.setattr(ch, "cross_validate", cross_validate)
    monkeypatch.setattr(ch, "portfolio_cv", lambda cvs: ([0.85, 0.75], [f"{len(cvs)} candidates", "b"]))

    def deliver(cvs, d, *, max_ands):
        best = max(cvs, key=lambda c: c.mean)
        log["deliver"] = (len(cvs), max_ands)
        return best, SimpleNamespace(ands=33, aig=f"aig of {best.label}")

    monkeypatch.setattr(ch, "deliver", deliver)
    monkeypatch.setattr(ch, "accuracy", lambda aig, X, y: float(X[0, 0]) + 0.25)  # 0.25 on data, 1.25 on test
    monkeypatch.setattr(ch, "abc_command", lambda: "abc")
    monkeypatch.setattr(ch, "abc_check", lambda aig, pla: log["abc"].append(pla) or {"ands": 33, "accuracy": 0.5})
    monkeypatch.setattr(ch, "write_aiger", lambda aig, path: log["aig"].append((aig, path)))
    cfg = resolve("iwls2020", overrides={"seed": 4, "folds": 2, "max_ands": 700, "portfolio_depths": [12],
                                         "fringe_depths": [], "aig_dir": str(tmp_path / "aig")})
    rows = ch.run_function("comparator-6", "generated", cfg)
    assert log["task"] == ("comparator-6", "generated", 4, "") and log["const"] == {"folds": 2, "seed": 4}
    assert [c[0] for c in log["cv"]] == [m for m, _ in ch.single_learners(cfg)] + ["tree"]
    assert all(c[2:] == (700, 2, 4) for c in log["cv"])
    assert [r["learner"] for r in rows] == ["constant"] + [m for m, _ in ch.single_learners(cfg)] + ["portfolio"]
    tree, forest, port = rows[1], rows[2], rows[-1]
    assert tree == {"function": "comparator-6", "family": "comparator", "n": 3, "learner": "tree", "ands": 15.0,
                    "accuracy": pytest.approx(0.65), "folds": [0.7, 0.6], "note": "tree note", "found": True,
                    "seconds": 1.5}
    assert not forest["found"] and forest["ands"] == 10.0  # a fold without a circuit within the limit
    assert log["deliver"] == (11, 700)  # the extra depth-12 tree is a candidate, with no row of its own
    assert port["chosen_cv_accuracy"] == pytest.approx(0.85) and port["note"] == "tree {'max_depth': 12}"
    assert port["accuracy"] == pytest.approx(0.8) and port["fold_choices"] == "11 candidates; b" and port["ands"] == 33
    assert port["test_accuracy"] == (1.25 if with_test else None) and port["check_accuracy"] == (
        1.25 if with_test else 0.25)  # scored on the test set when there is one
    assert log["abc"] == [test if with_test else data] and port["abc_ands"] == 33
    assert log["aig"] == [("aig of tree {'max_depth': 12}", tmp_path / "aig" / "comparator-6.aig")]
    log["abc"].clear()
    ch.run_function("comparator-6", "generated", resolve("iwls2020", overrides={"abc_check": False}))
    assert log["abc"] == []


def test_run_all_uses_processes_when_asked(monkeypatch, registry):
    registry["real"] = False
    monkeypatch.setattr(ch, "run_function", lambda name, source, cfg: [{"function": name, "pid": os.getpid()}])
    one = ch.run_all(resolve("iwls2020", overrides={"jobs": 1, "functions": ["a-1", "b-2"]}))
    assert one.function.tolist() == ["a-1", "b-2"] and set(one.pid) == {os.getpid()}
    two = ch.run_all(resolve("iwls2020", overrides={"jobs": 2, "functions": ["a-1", "b-2"]}))
    assert two.function.tolist() == ["a-1", "b-2"] and os.getpid() not in set(two.pid)


def _table():
    "Two functions of two families; every learner's accuracy and ANDs set by hand."
    import pandas as pd

    rows = []
    for f, fam, shift in (("ex01", "adder", 0.0), ("ex02", "comparator", 0.1)):
        for i, learner in enumerate(ch.LEARNER_ORDER):
            row = {"function": f, "family": fam, "learner": learner, "accuracy": 0.5 + i / 100 + shift,
                   "ands": 10 * i + 100 * shift, "folds": [0.5, 0.6], "note": "", "found": True,
                   "seconds": None if learner == "constant" else 1.0 + i + 10 * shift}
            if learner == "portfolio":
                row |= {"chosen_cv_accuracy": 0.7, "test_accuracy": None, "fold_choices": "tree; tree"}
            rows.append(row)
    return pd.DataFrame(rows)


def test_metrics_and_family_table_by_hand():
    df = _table()
    m = ch.metrics_of(df, "real")
    assert m["functions"] == 2 and m["source"] == "real"
    assert m["mean_accuracy"]["tree"] == pytest.approx(0.56) and m["mean_ands"]["tree"] == pytest.approx(15.0)
    assert [p["function"] for p in m["portfolio"]] == ["ex01", "ex02"]
    assert m["portfolio"][1]["accuracy"] == pytest.approx(0.71)
    assert set(m["portfolio"][0]) == {"function", "family", "ands", "accuracy", "chosen_cv_accuracy",
                                      "test_accuracy", "note", "fold_choices"}
    assert m["seconds_per_function"] == pytest.approx(12.5)  # the portfolio rows' 12 and 13 s
    assert "constant" not in m["learner_seconds"] and m["learner_seconds"]["tree"] == pytest.approx(2.5)
    t = ch.family_table(df)
    assert t.loc["adder", "tree"] == 51.0 and t.loc["comparator", "portfolio"] == 71.0  # percent
    assert t.loc["mean", "tree"] == 56.0 and t.loc["comparator", "tree ANDs"] == 20


def test_experiment_records_the_real_data_it_used(monkeypatch, registry):
    monkeypatch.setattr(ch, "run_all", lambda cfg: _table())
    monkeypatch.setattr(ch, "make_claims", lambda df, cfg: [])
    res = ch.experiment(resolve("iwls2020", overrides={}), None)
    assert res.data == {"iwls2020": {"source": "folder", "sha256": REGISTRY["iwls2020"].digest, "path": "/bench"}}
    registry["real"] = False
    res = ch.experiment(resolve("iwls2020", overrides={}), None)
    assert res.data == {"iwls2020": {"source": "generated"}} and res.metrics["source"] == "generated"


# ---- found by mutation of iwls/select.py: stand-in learners record what they are given ----
class _Circuit:
    "A stand-in circuit: a size, a description, and cleanup() that returns itself."

    def __init__(self, ands, description=""):
        self.num_ands, self.description = ands, description

    def cleanup(self):
        return self


def test_selection_details_with_stand_in_learners(monkeypatch):
    from paperbook.iwls import select

    rng = np.random.default_rng(0)
    data = PLA(rng.integers(0, 2, (40, 5), dtype=np.uint8), rng.integers(0, 2, (40, 1), dtype=np.uint8))
    monkeypatch.setattr(select, "accuracy", lambda aig, X, y: 0.75)
    # over the limit: ABC is asked and the note says what it did
    monkeypatch.setattr(select, "abc_command", lambda: "abc")
    monkeypatch.setattr(select, "abc_optimize", lambda aig: _Circuit(10))
    monkeypatch.setitem(select.LEARNERS, "big", lambda train: _Circuit(9000, "a big one"))
    c = select.fit_candidate("big", {}, data, data, max_ands=5000)
    assert c.ands == 10 and c.note == "a big one; ABC: 9000 -> 10 ANDs"
    # the first fold's note is kept; a learner that delivers nothing on a fold is not tried on the others
    calls = []

    def noted(train):
        calls.append(len(train))
        return _Circuit(3, f"note {len(calls)}")

    monkeypatch.setitem(select.LEARNERS, "noted", noted)
    assert select.cross_validate("noted", {}, data, folds=4).note == "note 1"
    calls.clear()
    monkeypatch.setitem(select.LEARNERS, "none", lambda train: calls.append(1))  # returns None: nothing
    cv = select.cross_validate("none", {}, data, folds=4)
    assert calls == [1] and cv.accuracy == [0.0] * 4 and cv.delivered == [False] * 4
    with pytest.raises(ValueError, match="no candidate produced a circuit"):
        select.choose([cv])
    with pytest.raises(ValueError, match=r"cannot join PLAs with \[4, 5\] inputs"):
        select.join(data, PLA(data.X[:, :4], data.Y))
    # the portfolio names its picks with their settings
    a = CV("tree", {"depth": 3}, [0.9, 0.9], [5, 5], delivered=[True, True])
    b = CV("lut", {}, [0.5, 0.5], [1, 1], delivered=[True, True])
    assert select.portfolio_cv([a, b])[1] == ["tree {'depth': 3}"] * 2
