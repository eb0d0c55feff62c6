"""paperbook.core: preset resolution, coercion, seeding, devices, run records, tables."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import pandas as pd
import pytest
import torch

from paperbook.core import (
    BaseConfig, Bound, Chapter, Count, PositiveFloat, Result, Share, check_bounds, claim, config_keys, get_chapter,
    jsonable, load_runs, markdown_table, parse_sets, pick_device, repro_table, resolve, run_dir, seed_everything,
    start_run, summarize_runs, text_table, write_json,
)


@dataclass(kw_only=True)
class Model:
    d: int = 16
    heads: int = 2
    dropout: Share = 0.1


@dataclass(kw_only=True)
class Cfg(BaseConfig):
    lr: float = 1e-3
    steps: int = 10
    use_amp: bool = False
    schedule: Literal["cosine", "constant"] = "cosine"
    sizes: tuple[int, ...] = (1, 2)
    cap: int | None = None
    data: Path = Path("data")
    model: Model = field(default_factory=Model)
    workers: Count = 2
    k: Annotated[int, Bound(ge=2)] = 3
    eps: PositiveFloat = 0.5

    def __post_init__(self):
        if self.model.d % self.model.heads:
            raise ValueError(f"model.d ({self.model.d}) must be divisible by model.heads ({self.model.heads})")


CH = Chapter(name="t", title="T", summary="s", paper="p", config=Cfg, notebook="t.ipynb",
             presets={"cpu-toy": Cfg(), "gpu-1": Cfg(device="cuda", steps=1000)},
             experiment=lambda cfg, info: Result(metrics={"x": 1, "world": info.world_size}))


def test_resolve_returns_preset_copy():
    cfg = resolve(CH, "gpu-1")
    assert cfg.steps == 1000 and cfg.device == "cuda"
    assert cfg is not CH.presets["gpu-1"]


def test_overrides_coerce_nested_and_dotted():
    cfg = resolve(CH, "cpu-toy", {"lr": "3e-4", "steps": "20", "use_amp": "true", "schedule": "constant",
                                  "sizes": "4,8", "cap": "none", "data": "/tmp/x", "model.d": "32",
                                  "model": {"heads": 4}})
    assert (cfg.lr, cfg.steps, cfg.use_amp, cfg.schedule, cfg.sizes) == (3e-4, 20, True, "constant", (4, 8))
    assert cfg.cap is None and cfg.data == Path("/tmp/x") and (cfg.model.d, cfg.model.heads) == (32, 4)
    assert CH.presets["cpu-toy"].model.d == 16  # presets are never mutated


def test_overrides_json_string_like_papermill():
    assert resolve(CH, "cpu-toy", '{"steps": 3, "model": {"d": 8}}').model.d == 8
    assert resolve(CH, "cpu-toy", "").steps == 10


@pytest.mark.parametrize("preset, overrides, words", [
    ("gpu-2", {}, ["unknown preset 'gpu-2'", "cpu-toy, gpu-1"]),
    ("cpu-toy", {"lrr": 1}, ["unknown override 'lrr'", "lr", "model.d"]),
    ("cpu-toy", {"model.depth": 1}, ["unknown override 'model.depth'", "model.heads"]),
    ("cpu-toy", {"steps": "ten"}, ["'steps'", "int", "'ten'"]),
    ("cpu-toy", {"steps": 2.5}, ["'steps'", "int"]),
    ("cpu-toy", {"steps": True}, ["'steps'", "int"]),
    ("cpu-toy", {"lr": "fast"}, ["'lr'", "float", "'fast'"]),
    ("cpu-toy", {"use_amp": "maybe"}, ["'use_amp'", "bool"]),
    ("cpu-toy", {"schedule": "linear"}, ["'schedule'", "'cosine', 'constant'", "'linear'"]),
    ("cpu-toy", {"sizes": "a,b"}, ["'sizes[0]'", "int"]),
    ("cpu-toy", {"model": 3}, ["'model'", "model.d"]),
    ("cpu-toy", {"model.d": 30, "model.heads": 4}, ["model.d (30)", "divisible"]),
    ("cpu-toy", {"workers": 0}, ["override workers must be >= 1, got 0"]),
    ("cpu-toy", {"k": "1"}, ["override k must be >= 2, got 1"]),
    ("cpu-toy", {"eps": 0}, ["override eps must be > 0, got 0.0"]),
    ("cpu-toy", {"model.dropout": 1.5}, ["override model.dropout must lie in [0, 1], got 1.5"]),
    ("cpu-toy", {"seed": -1}, ["override seed must be >= 0, got -1"]),
    ("cpu-toy", {"nproc_per_node": 0}, ["override nproc_per_node must be >= 1, got 0"]),
    ("cpu-toy", "[1, 2]", ["mapping"]),
    ("cpu-toy", {"lr": True}, ["'lr'", "float", "True"]),
    ("cpu-toy", {"model": 3, "model.d": 8}, ["override 'model.d' conflicts with a value given for 'model'"]),
    (["cpu-toy"], {}, ["unknown preset ['cpu-toy']", "cpu-toy, gpu-1"]),
    ("cpu-toy", "{bad json", ["JSON"]),
])
def test_bad_input_names_the_problem(preset, overrides, words):
    with pytest.raises(ValueError) as e:
        resolve(CH, preset, overrides)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bounds_admit_their_edges_and_check_presets():
    cfg = resolve(CH, "cpu-toy", {"workers": 1, "k": 2, "eps": 1e-9, "model.dropout": 0, "seed": 0})
    assert (cfg.workers, cfg.k, cfg.eps, cfg.model.dropout) == (1, 2, 1e-9, 0.0)
    assert resolve(CH, "cpu-toy", {"model.dropout": 1}).model.dropout == 1.0
    check_bounds(Cfg())
    with pytest.raises(ValueError, match=r"setting model.dropout must lie in \[0, 1\], got -0.5"):
        check_bounds(Cfg(model=Model(dropout=-0.5)))  # a preset's own values are checked too
    with pytest.raises(ValueError, match="setting workers must be >= 1"):  # refused when the chapter is declared
        Chapter(name="b", title="B", summary="s", paper="p", config=Cfg, notebook="b.ipynb",
                presets={"cpu-toy": Cfg(workers=0)}, experiment=CH.experiment)


def test_bound_text_and_sequence_members():
    assert [str(b) for b in (Bound(gt=0, lt=1), Bound(ge=0, le=1), Bound(gt=0, le=1), Bound(ge=2), Bound(lt=3))] == [
        "lie in (0, 1)", "lie in [0, 1]", "lie in (0, 1]", "be >= 2", "be < 3"]
    assert [Bound(gt=0, lt=1).holds(v) for v in (0, 0.5, 1)] == [False, True, False]

    @dataclass(kw_only=True)
    class Seq(BaseConfig):
        shares: tuple[Annotated[float, Bound(gt=0, lt=1)], ...] = (0.2, 0.5)
        pair: tuple[Count, Share] = (3, 0.5)
        names: list[str] = field(default_factory=lambda: ["a"])

    check_bounds(Seq())
    with pytest.raises(ValueError, match=r"setting shares\[1\] must lie in \(0, 1\), got 1.0"):
        check_bounds(Seq(shares=(0.2, 1.0)))  # a preset's tuple is checked member by member
    with pytest.raises(ValueError, match=r"setting pair\[1\] must lie in \[0, 1\], got 2"):
        check_bounds(Seq(pair=(3, 2)))
    with pytest.raises(ValueError, match=r"setting pair\[0\] must be >= 1, got 0"):
        check_bounds(Seq(pair=(0, 0.5)))
    ch = Chapter(name="q", title="Q", summary="s", paper="p", config=Seq, notebook="q.ipynb",
                 presets={"cpu-toy": Seq()}, experiment=CH.experiment)
    with pytest.raises(ValueError, match=r"override shares\[0\] must lie in \(0, 1\), got 0"):
        resolve(ch, "cpu-toy", {"shares": [0, 0.5]})
    assert resolve(ch, "cpu-toy", {"shares": "0.1,0.9"}).shares == (0.1, 0.9)
    assert resolve(ch, "cpu-toy", {"names": "a, b c"}).names == ["a", "b c"]  # items are stripped at the commas
    with pytest.raises(ValueError, match=r"override 'pair' expects 2 items, got 3"):
        resolve(ch, "cpu-toy", {"pair": [3, 0.5, 1]})


def test_override_coercion_edges():
    @dataclass(kw_only=True)
    class Inner:
        x: int = 1

    @dataclass(kw_only=True)
    class Mid:
        inner: Inner = field(default_factory=Inner)

    @dataclass(kw_only=True)
    class Edge(BaseConfig):
        pair: tuple[Count, Share] = (3, 0.5)
        sizes: tuple[int, ...] = (1, 2)
        modes: list[Literal["a", "b"]] = field(default_factory=lambda: ["a"])
        tag: int | str = 0
        extra: dict = field(default_factory=dict)
        data: Path = Path("data")
        mid: Mid = field(default_factory=Mid)
        flag: bool = False

    ch = Chapter(name="e", title="E", summary="s", paper="p", config=Edge, notebook="e.ipynb",
                 presets={"cpu-toy": Edge()}, experiment=CH.experiment)
    r = lambda o: resolve(ch, "cpu-toy", o)
    pair = r({"pair": "3,0.5"}).pair  # each member coerced to its own type
    assert pair == (3, 0.5) and type(pair[0]) is int and type(pair[1]) is float
    assert r({"sizes": "4"}).sizes == (4,) and r({"sizes": [4]}).sizes == (4,)  # one value is a list of one
    assert r({"tag": "none"}).tag == "none"  # 'none' means None only where None is allowed
    assert r({"extra": {"a": 1}}).extra == {"a": 1} and r({"extra": '{"b": 2}'}).extra == {"b": 2}
    assert r({"mid": {"inner.x": 5}}).mid.inner.x == 5 and r({"mid.inner": {"x": 6}}).mid.inner.x == 6
    assert [r({"flag": v}).flag for v in ("on", "ON", "Yes", "off", "FALSE")] == [True, True, True, False, False]
    for overrides, words in [
        ({"pair": [3]}, "override 'pair' expects 2 items, got 1"),
        ({"sizes": 3}, "override 'sizes' expects tuple[int, ...], got 3"),
        ({"modes": 3}, "override 'modes' expects list[one of 'a', 'b'], got 3"),
        ({"pair": 5}, "override 'pair' expects tuple[int that must be >= 1, float that must lie in [0, 1]], got 5"),
        ({"data": 3}, "override 'data' expects Path, got 3"),
        ({"extra": 3}, "override 'extra' expects dict, got 3"),
        ({1: 2}, "override keys must be strings, got 1"),
    ]:
        with pytest.raises(ValueError) as e:
            r(overrides)
        assert words in str(e.value), (words, str(e.value))
    with pytest.raises(ValueError, match="override 'cap' expects int or None, got 'x'"):
        resolve(CH, "cpu-toy", {"cap": "x"})
    assert str(Bound(ge=0.0, le=1.0)) == "lie in [0, 1]" and str(Bound(ge=1, gt=0)) == "be >= 1 and > 0"


def test_literal_settings_match_type_and_value():
    @dataclass(kw_only=True)
    class Lit(BaseConfig):
        level: Literal[1, 2] = 1

    ch = Chapter(name="l", title="L", summary="s", paper="p", config=Lit, notebook="l.ipynb",
                 presets={"cpu-toy": Lit()}, experiment=CH.experiment)
    assert resolve(ch, "cpu-toy", {"level": "2"}).level == 2 and resolve(ch, "cpu-toy", {"level": 2}).level == 2
    with pytest.raises(ValueError, match="must be one of 1, 2; got True"):
        resolve(ch, "cpu-toy", {"level": True})  # True == 1 in Python, but it is not the setting 1


def test_parse_sets_splits_at_the_first_equals_sign():
    assert parse_sets([" steps =3", "name=a=b", "empty="]) == {"steps": "3", "name": "a=b", "empty": ""}
    for bad in ("steps", "=3", " =3"):
        with pytest.raises(ValueError, match="--set expects key=value"):
            parse_sets([bad])


def test_unknown_chapter_lists_allowed():
    with pytest.raises(ValueError, match="unknown chapter 'nope'; allowed: .*example"):
        resolve("nope")


def test_config_keys_are_dotted():
    assert {"lr", "model.d", "model.heads", "seed", "device"} <= set(config_keys(Cfg()))


def test_chapter_needs_cpu_toy():
    with pytest.raises(ValueError, match="cpu-toy"):
        Chapter(name="x", title="", summary="", paper="", config=Cfg, presets={"gpu-1": Cfg()}, notebook="",
                experiment=CH.experiment)
    with pytest.raises(TypeError, match="preset 'cpu-toy' of 'x' is not a Cfg"):
        Chapter(name="x", title="", summary="", paper="", config=Cfg, presets={"cpu-toy": Model()}, notebook="",
                experiment=CH.experiment)


def test_chapters_found_late_and_two_of_one_name(monkeypatch):
    import sys
    import types

    import paperbook.core.registry as registry

    for mod in ("fake_a.chapter", "fake_b.chapter"):
        monkeypatch.setitem(sys.modules, mod, types.SimpleNamespace(CHAPTER=CH))
    real = registry.chapter_modules()
    try:
        registry.chapters(refresh=True)  # the cache without the new chapter ...
        monkeypatch.setattr(registry, "chapter_modules", lambda: real + ["fake_a.chapter"])
        assert get_chapter("t") is CH  # ... is looked at again before a name is called unknown
        monkeypatch.setattr(registry, "chapter_modules", lambda: real + ["fake_a.chapter", "fake_b.chapter"])
        with pytest.raises(ValueError, match="two chapters are named 't': fake_b.chapter"):
            registry.chapters(refresh=True)
    finally:
        monkeypatch.undo()
        registry.chapters(refresh=True)
    assert "t" not in registry.chapters()


def test_chapters_in_book_order_and_broken_modules_named(monkeypatch):
    import sys
    import types

    import paperbook.core.registry as registry

    mods = registry.chapter_modules()
    assert mods == sorted(mods) and "paperbook.example.chapter" in mods
    found = registry.chapters(refresh=True)
    assert [c.notebook for c in found.values()] == sorted(c.notebook for c in found.values())
    assert list(found)[0] != sorted(found)[0]  # book order is not the order of the names
    monkeypatch.setitem(sys.modules, "fake_none.chapter", None)  # importing it raises ImportError
    monkeypatch.setitem(sys.modules, "fake_bare.chapter", types.SimpleNamespace())  # no CHAPTER
    real = registry.chapter_modules()
    try:
        monkeypatch.setattr(registry, "chapter_modules", lambda: real + ["fake_none.chapter", "fake_bare.chapter"])
        registry.chapters(refresh=True)
        broken = registry.unavailable_chapters()
        assert set(broken) == {"fake_none.chapter", "fake_bare.chapter"}
        assert broken["fake_none.chapter"].startswith("ModuleNotFoundError")
        assert broken["fake_bare.chapter"].startswith("AttributeError")
        with pytest.raises(ValueError, match=r"unknown chapter 'nope'.*; fake_bare.chapter could not be imported"):
            get_chapter("nope")
        monkeypatch.setattr(registry, "chapter_modules", lambda: real)  # mended: no longer listed
        registry.chapters(refresh=True)
        assert registry.unavailable_chapters() == {}
    finally:
        monkeypatch.undo()
        registry.chapters(refresh=True)


def test_a_type_error_of_the_config_names_chapter_and_preset():
    @dataclass(kw_only=True)
    class Picky(BaseConfig):
        n: int = 1

        def __post_init__(self):
            if self.n == 3:
                raise TypeError("n = 3 is not supported")

    ch = Chapter(name="pk", title="P", summary="s", paper="p", config=Picky, notebook="pk.ipynb",
                 presets={"cpu-toy": Picky()}, experiment=CH.experiment)
    with pytest.raises(ValueError, match="pk preset 'cpu-toy': n = 3 is not supported"):
        resolve(ch, "cpu-toy", {"n": 3})


def test_chapter_run_wraps_the_experiment_in_a_world_of_one():
    assert CH.run(resolve(CH, "cpu-toy", {"device": "cpu"})).metrics == {"x": 1, "world": 1}


def test_seed_everything_repeats():
    import random

    seed_everything(5)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(5)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_seed_everything_seeds_each_generator_with_the_seed():
    import random

    seed_everything(2**32 + 3)  # numpy takes seeds below 2**32: the seed modulo 2**32
    got = (random.random(), np.random.rand(), torch.rand(1).item())
    assert got == (random.Random(2**32 + 3).random(), np.random.RandomState(3).rand(),
                   torch.rand(1, generator=torch.Generator().manual_seed(2**32 + 3)).item())
    start_run(CH, "cpu-toy", resolve(CH, "cpu-toy", {"seed": 11}))  # a run is seeded from its config
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(11)).item()


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pick_device("cuda")


def test_the_record_names_the_commit_the_run_started_from(tmp_path, monkeypatch):
    "A long run during which the checkout moves on records the code that ran, not the checkout at its end."
    import paperbook.core.records as records

    monkeypatch.setattr(records, "_git_commit", lambda: "aaaa-start")
    run = start_run(CH, "cpu-toy", resolve(CH))
    monkeypatch.setattr(records, "_git_commit", lambda: "bbbb-end")  # a commit lands while the run runs
    rec = run.finish(Result(metrics={"x": 1}), out=tmp_path / "r")
    assert rec["environment"]["commit"] == "aaaa-start" and "aaaa-start" in run.stamp()


def test_run_record_contents(tmp_path):
    cfg = resolve(CH, "cpu-toy", {"seed": 7})
    run = start_run(CH, "cpu-toy", cfg)
    rows = [claim("x is one", paper="1 (Table 2)", values={7: np.float32(1.0)}, rule=lambda v: v == 1)]
    result = Result(metrics={"x": np.array([1.0, 2.0]), "t": torch.tensor(0.5)}, claims=rows,
                    data={"d": {"source": "generated"}}, extras={"model": object()})
    rec = run.finish(result, out=tmp_path / "r")
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert on_disk == rec and "extras" not in on_disk  # extras are for the page, never recorded
    assert on_disk["metrics"] == {"x": [1.0, 2.0], "t": 0.5} and on_disk["data"] == {"d": {"source": "generated"}}
    assert on_disk["reproduction"] == [{"claim": "x is one", "paper": "1 (Table 2)", "ours": "1", "holds": True,
                                        "k_of_n": "1/1", "per_seed": [{"seed": 7, "value": 1.0, "holds": True}]}]
    assert on_disk["config"]["seed"] == 7 and on_disk["config"]["model"]["d"] == 16
    env = on_disk["environment"]
    for key in ("commit", "preset", "device", "torch", "python", "wall_time_s", "peak_rss_mib", "chapter"):
        assert key in env, key
    assert env["preset"] == "cpu-toy" and env["device"] == "cpu" and env["peak_rss_mib"] > 0
    assert [f.name for f in (tmp_path / "r").iterdir()] == ["metrics.json"]  # the atomic write leaves nothing else
    assert "cpu-toy" in run.stamp() and run.stamp().endswith("· data d: generated")  # generated data is said


def test_the_environment_names_the_world_size(monkeypatch):
    from paperbook.core.records import environment_stamp

    monkeypatch.setenv("WORLD_SIZE", "4")
    assert environment_stamp(chapter="t", preset="p", device="cpu")["world_size"] == 4
    monkeypatch.delenv("WORLD_SIZE")
    assert environment_stamp(chapter="t", preset="p", device="cpu")["world_size"] == 1


def test_jsonable_leaves_a_dataclass_type_alone():
    @dataclass
    class Needs:
        x: int  # no default: expanding the class itself would fail

    assert jsonable({"cls": Needs, "obj": Needs(2)}) == {"cls": Needs, "obj": {"x": 2}}


def test_jsonable_gives_strict_json():
    got = jsonable({1: float("nan"), "s": {3}, "a": np.float32(1.5), "p": Path("x"), "t": (1, torch.tensor([2]))})
    assert got == {"1": None, "s": [3], "a": 1.5, "p": "x", "t": [1, [2]]}
    json.dumps(got, allow_nan=False)  # NaN is not JSON: it became null


def test_only_rank_0_writes_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    start_run(CH, "cpu-toy", resolve(CH)).finish(Result(metrics={"x": 1}), out=tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_the_commit_is_marked_dirty_with_local_changes(monkeypatch):
    import subprocess
    from types import SimpleNamespace

    import paperbook.core.records as records

    def fake(status):
        def run(cmd, **kw):
            out = "0123456789ab\n" if "rev-parse" in cmd else status
            return SimpleNamespace(returncode=0, stdout=out)
        return run

    monkeypatch.setattr(subprocess, "run", fake(" M paperbook/x.py\n"))
    assert records._git_commit() == "0123456789ab-dirty"
    monkeypatch.setattr(subprocess, "run", fake(""))
    assert records._git_commit() == "0123456789ab"


def test_git_outside_a_checkout_and_untracked_files(monkeypatch):
    "Not in a checkout: no commit. Files git does not track (run folders, data) do not make the checkout dirty."
    import subprocess
    from types import SimpleNamespace

    import paperbook.core.records as records

    def git(returncode):
        def run(cmd, **kw):  # a checkout whose only change is an untracked file, as git reports it
            if "rev-parse" in cmd:
                return SimpleNamespace(returncode=returncode, stdout="" if returncode else "0123456789ab\n")
            untracked = "--untracked-files=no" not in cmd
            return SimpleNamespace(returncode=0, stdout="?? runs/metrics.json\n" if untracked else "")
        return run

    monkeypatch.setattr(subprocess, "run", git(0))
    assert records._git_commit() == "0123456789ab"
    monkeypatch.setattr(subprocess, "run", git(128))  # fatal: not a git repository
    assert records._git_commit() is None


def test_pick_device_without_the_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available"):
        pick_device("mps")


def test_records_hold_plain_json_and_a_plausible_memory(tmp_path):
    assert jsonable(np.array([1.0, np.nan])) == [1.0, None] and jsonable(torch.tensor([np.nan])) == [None]
    path = write_json(tmp_path / "a" / "x.json", {"p": Path("q"), "v": np.float32(2.5), "n": np.array([np.nan])})
    assert json.loads(path.read_text()) == {"p": "q", "v": 2.5, "n": [None]}
    run = start_run(CH, "cpu-toy", resolve(CH))
    env = run.finish(Result(metrics={"x": 1}))["environment"]
    assert 10 < env["peak_rss_mib"] < 65536  # MiB (getrusage gives KiB on Linux): a Python process with torch
    run.record["environment"]["wall_time_s"] = 12.34  # the stamp says the recorded time, not the time since
    assert "· 12.3 s ·" in run.stamp()


def test_run_dir_from_environment(monkeypatch, tmp_path):
    assert run_dir("t", "cpu-toy") is None
    monkeypatch.setenv("PAPERBOOK_RUNS", str(tmp_path))
    assert run_dir("t", "cpu-toy") == tmp_path / "t" / "cpu-toy"
    monkeypatch.setenv("PAPERBOOK_RUN_DIR", str(tmp_path / "exact"))
    assert run_dir("t", "cpu-toy") == tmp_path / "exact"


def test_no_write_without_a_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = start_run(CH, "cpu-toy", resolve(CH))
    run.finish(Result(metrics={"x": 1}))
    assert not list(tmp_path.rglob("metrics.json"))


def test_claim_judges_every_seed_and_needs_a_computed_boolean():
    row = claim("slope is -1/2", paper="p", values={0: -0.49, 1: -0.52, 2: -0.61},
                rule=lambda s: abs(s + 0.5) < 0.05)
    assert row["k_of_n"] == "2/3" and row["holds"] is False
    assert [p["holds"] for p in row["per_seed"]] == [True, True, False]
    assert [p["seed"] for p in row["per_seed"]] == [0, 1, 2]
    assert row["ours"] == "-0.54 ± 0.062 (3 seeds)"  # mean and sample sd, by hand: -1.62 / 3, sd 0.0624
    assert claim("c", paper="p", values={0: 1, 1: 1, 2: 0}, rule=lambda v: v == 1, need=2)["holds"] is True
    for bad in ("yes", 1, 0.5, None):
        with pytest.raises(ValueError, match="boolean"):
            claim("c", paper="p", values={0: 1.0}, rule=lambda v, b=bad: b)
    with pytest.raises(ValueError, match="at least one seed"):
        claim("c", paper="p", values={}, rule=lambda v: True)
    with pytest.raises(ValueError, match="need"):
        claim("c", paper="p", values={0: 1}, rule=lambda v: True, need=2)
    with pytest.raises(ValueError, match="need must lie in 1..1"):  # need=0 would make any claim hold
        claim("c", paper="p", values={0: 1}, rule=lambda v: False, need=0)
    assert claim("c", paper="p", values={0: 1, 1: 0}, rule=lambda v: v == 1, need=1)["need"] == 1
    assert "need" not in claim("c", paper="p", values={0: 1, 1: 0}, rule=lambda v: v == 1)


def test_claim_summary_of_one_value_and_of_non_numbers():
    assert claim("c", paper="p", values={0: 0.123456}, rule=lambda v: True)["ours"] == "0.1235"  # 4 significant
    flags = claim("c", paper="p", values={0: True, 1: False}, rule=lambda v: v)  # booleans are not averaged
    assert flags["ours"] == "seed 0: True; seed 1: False" and flags["k_of_n"] == "1/2"
    assert claim("c", paper="p", values={3: "AND"}, rule=lambda v: True)["ours"] == "AND"


def test_mean_interval_by_hand():
    from paperbook.core import mean_interval

    m, lo, hi = mean_interval([2.0, 4.0, 6.0, 8.0])  # mean 5, sd sqrt(20/3), t(0.975, 3) = 3.182446
    h = 3.182446 * (20 / 3) ** 0.5 / 2
    assert m == 5 and abs(lo - (5 - h)) < 1e-5 and abs(hi - (5 + h)) < 1e-5
    assert np.isnan(mean_interval([1.0])[1])


def test_paired_claim_holds_only_when_the_interval_excludes_zero():
    from paperbook.core import paired_claim

    a, b = {0: 20.1, 1: 21.0, 2: 20.5}, {0: 24.0, 1: 25.2, 2: 23.9}
    row = paired_claim("A lower", paper="p", a=a, b=b, better="lower", names=("A", "B"))
    assert row["holds"] and row["k_of_n"] == "3/3" and row["difference"]["high"] < 0
    assert [p["difference"] for p in row["per_seed"]] == pytest.approx([-3.9, -4.2, -3.4])
    # by hand: mean -3.8333, sd 0.40415, t(0.975, 2) = 4.302653, half-width 4.302653 * 0.40415 / sqrt(3) = 1.00395
    assert row["difference"]["low"] == pytest.approx(-4.83728, abs=1e-4)
    assert row["difference"]["high"] == pytest.approx(-2.82938, abs=1e-4)
    assert row["ours"] == "A 20.53 vs B 24.37; Δ -3.83 [-4.84, -2.83] over 3 seeds"  # means 61.6/3 and 73.1/3
    tiny = paired_claim("x", paper="p", a={0: 0.001, 1: 0.002}, b={0: 0.0, 1: 0.0}, better="higher")
    # below 10^-digits a difference is written in exponent form, not rounded to +0.00; t(0.975, 1) = 12.7062
    assert tiny["ours"] == "ours 1.50e-03 vs baseline 0.00; Δ +1.50e-03 [-4.85e-03, +7.85e-03] over 2 seeds"
    tie = paired_claim("A higher", paper="p", a={0: 1.0, 1: 2.0}, b={0: 1.0, 1: 1.0}, better="higher")
    assert [p["holds"] for p in tie["per_seed"]] == [False, True]  # a tie is not a win
    assert not paired_claim("A higher", paper="p", a=a, b=b, better="higher")["holds"]
    mixed = paired_claim("A lower", paper="p", a={0: 20.0, 1: 26.0}, b={0: 24.0, 1: 23.0}, better="lower")
    assert not mixed["holds"] and mixed["k_of_n"] == "1/2"
    assert not paired_claim("one seed", paper="p", a={0: 1.0}, b={0: 2.0}, better="lower")["holds"]
    margin = paired_claim("by 5", paper="p", a=a, b=b, better="lower", margin=5.0)
    assert not margin["holds"] and margin["k_of_n"] == "0/3"
    with pytest.raises(ValueError, match="same seeds"):
        paired_claim("x", paper="p", a={0: 1.0}, b={1: 1.0}, better="lower")
    with pytest.raises(ValueError, match="lower' or 'higher"):
        paired_claim("x", paper="p", a={0: 1.0}, b={0: 1.0}, better="smaller")


def test_interval_and_claim_edges():
    import warnings

    from paperbook.core import mean_interval, paired_claim

    with pytest.raises(ValueError, match="at least one value"):
        mean_interval([])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one value: nan bounds without computing a sd of one value
        m, lo, hi = mean_interval([3.0])
    assert m == 3.0 and np.isnan(lo) and np.isnan(hi)
    with pytest.raises(ValueError, match="map every seed"):
        claim("c", paper="p", values=[1.0, 2.0], rule=lambda v: True)
    # higher by a margin: differences +0.2 on every seed do not clear a margin of 0.5
    a, b = {0: 1.2, 1: 1.3, 2: 1.1}, {0: 1.0, 1: 1.1, 2: 0.9}
    assert paired_claim("by 0.1", paper="p", a=a, b=b, better="higher", margin=0.1)["holds"]
    row = paired_claim("by 0.5", paper="p", a=a, b=b, better="higher", margin=0.5)
    assert not row["holds"] and row["k_of_n"] == "0/3"
    one = paired_claim("one seed", paper="p", a={0: 1.0}, b={0: 2.0}, better="lower")
    assert one["ours"] == "ours 1.00 vs baseline 2.00; Δ -1.00 (one seed: no interval)"


def test_repro_table_columns_and_our_thresholds():
    rows = [claim("a", paper="1 (Tab. 1)", values={0: 1}, rule=lambda v: v == 1, threshold="exactly 1"),
            claim("b", paper="2 (Fig. 3)", values={0: 3}, rule=lambda v: v < 2, note="toy scale")]
    df = repro_table(rows)
    assert list(df.columns) == ["claim", "paper", "ours", "k/n", "holds", "note"]
    assert df["holds"].tolist() == [True, False] and df["k/n"].tolist() == ["1/1", "0/1"]
    assert df["claim"][0] == "a (threshold ours: exactly 1)"
    assert list(repro_table(rows[:1]).columns) == ["claim", "paper", "ours", "k/n", "holds"]
    text = text_table(rows).splitlines()
    assert text[0] == "[holds, 1/1 seeds] a (threshold ours: exactly 1)"
    assert text[3] == "[DOES NOT HOLD, 0/1 seeds] b" and text[-1].split() == ["note", "toy", "scale"]
    md = markdown_table(pd.DataFrame({"a|b": ["x\ny"]}))
    assert md.splitlines() == ["| a\\|b |", "|---|", "| x y |"]


def test_load_and_summarize_runs_pool_every_seed(tmp_path):
    for seed, vals in [(0, {0: 1.0, 1: 3.0}), (2, {2: 3.0, 3: 4.0})]:
        write_json(tmp_path / f"seed{seed}" / "metrics.json", {
            "metrics": {}, "config": {"seed": seed},
            "environment": {"chapter": "t", "preset": "cpu-toy", "commit": "abc", "device": "cpu"},
            "reproduction": [claim("c", paper="p", values=vals, rule=lambda v: v > 2)]})
    runs = load_runs(tmp_path)
    assert len(runs) == 2 and set(runs["seed"]) == {0, 2} and runs["k_of_n"].tolist() == ["1/2", "2/2"]
    s = summarize_runs(runs)
    assert s.loc[0, "k_of_n"] == "3/4" and s.loc[0, "holds"] == "1/2 runs"
    write_json(tmp_path / "seed4" / "metrics.json", {  # a record from before rows had per_seed: one seed
        "metrics": {}, "config": {"seed": 4}, "environment": {"chapter": "t", "preset": "cpu-toy"},
        "reproduction": [{"claim": "c", "paper": "p", "ours": "5", "holds": True}]})
    runs = load_runs(tmp_path)
    old = runs[runs["seed"] == 4].iloc[0]
    assert old["k_of_n"] == "1/1" and old["per_seed"] == [{"seed": 4, "value": "5", "holds": True}]
    s = summarize_runs(runs)
    assert s.loc[0, "k_of_n"] == "4/5" and s.loc[0, "holds"] == "2/3 runs"
    assert s.loc[0, "ours"] == " | ".join(runs["ours"].astype(str))  # every run's value, in run order
    (tmp_path / "bad").mkdir()
    for text in ("{not json", '{"metrics": {}}', "[1, 2]"):  # not JSON, no environment, not an object
        (tmp_path / "bad" / "metrics.json").write_text(text)
        with pytest.raises(ValueError, match="not a paperbook run record"):
            load_runs(tmp_path)


def test_load_runs_columns_and_claim_order(tmp_path):
    write_json(tmp_path / "r1" / "metrics.json", {
        "metrics": {}, "config": {"seed": 1}, "data": {"digits": {"source": "package"}, "g": {"source": "generated"}},
        "environment": {"chapter": "t", "preset": "cpu-toy"},
        "reproduction": [claim(c, paper="p", values={1: 1.0}, rule=lambda v: v > 0) for c in ("b", "a")]})
    runs = load_runs(tmp_path)
    assert runs["data"].tolist() == ["digits: package, g: generated"] * 2
    assert runs["path"].tolist() == [str(tmp_path / "r1")] * 2  # the run's folder
    assert summarize_runs(runs)["claim"].tolist() == ["b", "a"]  # claims in the order the chapter gives them


# ---- display -----------------------------------------------------------------------------------------------
def test_progress_is_off_when_asked_on_other_ranks_and_by_the_caller(monkeypatch):
    from paperbook.core.display import progress

    monkeypatch.delenv("PAPERBOOK_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert progress(range(3)).disable is False and list(progress(range(3))) == [0, 1, 2]
    assert progress(range(3), disable=True).disable is True
    for env, value in (("PAPERBOOK_PROGRESS", "0"), ("RANK", "1")):
        monkeypatch.setenv(env, value)
        assert progress(range(3)).disable is True and list(progress(range(3))) == [0, 1, 2]
        monkeypatch.delenv(env)
    monkeypatch.setenv("PAPERBOOK_PROGRESS", "1")
    monkeypatch.setenv("RANK", "0")
    assert progress(range(3)).disable is False


ROWS = [{"claim": "a | b", "paper": "Table 1", "ours": "0.5", "k_of_n": "3/3", "holds": True}]


def test_tables_and_stamps_print_plain_text_outside_a_notebook(capsys):
    from paperbook.core.display import show_stamp, show_table

    show_table(ROWS)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["claim", "paper", "ours", "k/n", "holds"] and out[1].split() == [
        "a", "|", "b", "Table", "1", "0.5", "3/3", "True"]

    class Run:
        def stamp(self):
            return "paperbook x · preset `cpu-toy`"

    show_stamp(Run())
    assert capsys.readouterr().out == "*paperbook x · preset cpu-toy*\n"  # no Markdown backticks in a terminal


def test_tables_and_stamps_are_markdown_in_a_notebook(monkeypatch):
    import IPython
    import IPython.display

    from paperbook.core import display

    assert display._plain() is True  # no IPython shell under pytest
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    assert display._plain() is False
    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    display.show_table(ROWS)
    display.show_stamp(type("Run", (), {"stamp": lambda self: "preset `cpu-toy`"})())
    assert [type(x).__name__ for x in shown] == ["Markdown", "Markdown"]
    assert shown[0].data.splitlines() == ["| claim | paper | ours | k/n | holds |", "|---|---|---|---|---|",
                                          "| a \\| b | Table 1 | 0.5 | 3/3 | True |"]
    assert shown[1].data == "*preset `cpu-toy`*"


def test_plot_style_sets_the_books_defaults():
    import matplotlib as mpl

    from paperbook.core.display import plot_style

    with mpl.rc_context():
        plot_style()
        assert mpl.rcParams["figure.figsize"] == [6.4, 3.6] and mpl.rcParams["axes.grid"] is True
        assert mpl.rcParams["axes.spines.top"] is False and mpl.rcParams["savefig.bbox"] == "tight"


def test_resolve_names_the_chapter_and_preset_of_a_config_check():
    with pytest.raises(ValueError, match=r"^example preset 'cpu-toy': num_samples \(1000\) must be a positive"):
        resolve("example", overrides={"num_samples": 1000})


def test_launch_lines_by_hand():
    from types import SimpleNamespace as NS

    from paperbook.core import launch_lines

    assert launch_lines(NS(world_size=1, nnodes=1, nproc_per_node=1), "-m m") == {"launch": "python -m m"}
    assert launch_lines(NS(world_size=4, nnodes=1, nproc_per_node=4), "-m m") == {
        "launch": "torchrun --standalone --nproc_per_node=4 -m m"}
    two = launch_lines(NS(world_size=16, nnodes=2, nproc_per_node=8), "-m m")
    assert two["launch"] == ("torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d "
                             "--rdzv_endpoint=$MASTER_ADDR:29500 -m m")
    assert two["slurm"].startswith("srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 torchrun --nnodes=2")
    assert "--rdzv_id=$SLURM_JOB_ID" in two["slurm"] and two["slurm"].endswith(" -m m")
    one_each = launch_lines(NS(world_size=2, nnodes=2, nproc_per_node=1), "-m m")  # two nodes, one process each
    assert one_each["launch"].startswith("torchrun --nnodes=2 --nproc_per_node=1 ")


@dataclass(kw_only=True)
class Loose(BaseConfig):
    tags: list = field(default_factory=list)  # no element type: items kept as given
    extra: dict = field(default_factory=dict)
    where: Path = Path("data")
    derived: int = field(default=0, init=False)  # computed, not settable


def test_untyped_lists_dicts_paths_and_computed_fields():
    from paperbook.core import apply_overrides

    cfg = apply_overrides(Loose(), {"tags": "a,b", "extra": '{"k": 1}', "where": Path("/tmp/w")})
    assert (cfg.tags, cfg.extra, cfg.where) == (["a", "b"], {"k": 1}, Path("/tmp/w"))
    with pytest.raises(ValueError, match=r"override 'extra' expects dict, got '\[1, 2\]'"):
        apply_overrides(Loose(), {"extra": "[1, 2]"})
    assert "derived" not in config_keys(Loose())
    with pytest.raises(ValueError, match="unknown override 'derived'"):
        apply_overrides(Loose(), {"derived": 3})


def test_integers_in_exponent_form():
    assert resolve(CH, "cpu-toy", {"steps": "1e3"}).steps == 1000
    with pytest.raises(ValueError, match="override 'steps' expects int, got '2.5'"):
        resolve(CH, "cpu-toy", {"steps": "2.5"})
