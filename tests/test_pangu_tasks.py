"""PanGu-α studies: batched scoring, intervals, McNemar, next-sentence items, label-first sentiment, the data split."""

import math
import random

import numpy as np
import pytest
import torch

from paperbook.pangu.fewshot import query_nll
from paperbook.pangu.model import ModelConfig, PanguAlpha
from paperbook.pangu.tasks import (
    REVIEW_WORDS, draw_shots, mcnemar, next_sentence_items, next_sentence_predictions, overlap_predictions, sentences,
    sentiment_predictions, sequence_nll, summarise, wilson,
)


def test_batched_padded_scoring_equals_one_at_a_time():
    torch.manual_seed(0)
    model = PanguAlpha(ModelConfig(vocab_size=30, seq_len=16, num_layers=2, d=16, num_heads=2, dropout=0.0)).eval()
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    starts = [2, 1, 4]
    total = sequence_nll(model, seqs, starts, reduce="sum", batch=3)
    for s, st, t in zip(seqs, starts, total):
        assert t == pytest.approx(query_nll(model, s[:st], s[st:]), abs=1e-4)  # padding changes nothing
    assert sequence_nll(model, seqs, starts, reduce="sum", batch=2) == pytest.approx(total, abs=1e-4)  # sorted, back
    mean = sequence_nll(model, seqs, starts)
    assert mean == pytest.approx(total / [len(s) - st for s, st in zip(seqs, starts)], abs=1e-5)
    with pytest.raises(ValueError, match="reduce must be 'mean' or 'sum'"):
        sequence_nll(model, seqs, starts, reduce="max")
    with pytest.raises(ValueError, match="equal lengths, got 3 and 2"):
        sequence_nll(model, seqs, starts[:2])


def test_wilson_interval_by_hand():
    k, n, z = 30, 80, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_mcnemar_exact_by_hand():
    a = [True, True, True, False, True, False]
    b = [False, False, False, False, True, False]  # 3 items only a gets right, none only b
    assert mcnemar(a, b) == pytest.approx(2 * 0.5**3)
    assert mcnemar(a, a) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar(a, b[:-1])


def test_sentences_and_next_sentence_items():
    got = sentences("今天的天气非常好。我们去公园散步吧！短句。你觉得这样怎么样？")
    assert got == ["今天的天气非常好。", "我们去公园散步吧！", "你觉得这样怎么样？"]  # under 8 characters: dropped
    assert sentences("七个字的句子。八个字的一句话。") == ["八个字的一句话。"]  # 8 characters (with 。) is kept
    docs = [f"第{i}篇的第一句话在这里。第{i}篇的第二句话在这里。第{i}篇的第三句话在这里。" for i in range(12)]
    items = next_sentence_items(docs, 20, seed=0)
    assert len(items) == 20
    for it in items:
        assert len(it["candidates"]) == 4 and len(set(it["candidates"])) == 4
        doc = it["context"][1:it["context"].index("篇")]
        nxt = it["candidates"][it["answer"]]
        assert nxt.startswith(f"第{doc}篇") and nxt != it["context"]
        assert all(not c.startswith(f"第{doc}篇") for j, c in enumerate(it["candidates"]) if j != it["answer"])
    # distractors are of similar length (0.7 to 1.3 times the answer's): length alone does not give it away
    mixed = [f"第{i}篇的第一句话在这里。第{i}篇的第二句话在这里。" for i in range(6)] + [
        f"第{i}篇句子很短。第{i}篇这一句比较长很多很多很多很多很多很多很多。" for i in range(6, 12)]
    for it in next_sentence_items(mixed, 12, seed=1):
        n = len(it["candidates"][it["answer"]])
        assert all(0.7 * n <= len(c) <= 1.3 * n for c in it["candidates"])
    assert sorted({it["answer"] for it in items}) == [0, 1, 2, 3]  # the answer's place is shuffled
    with pytest.raises(ValueError, match="no next-sentence items"):
        next_sentence_items(["只有一句话在这里。"], 5)


def test_the_overlap_baseline_picks_the_largest_share_of_shared_characters():
    ctx = "北京大学今天举行典礼。"  # 11 distinct characters
    first = {"context": ctx, "candidates": ["上海天气晴朗。", "北京大学校长讲话。", "股市大涨了。", "典礼今天结束了。"]}
    # shares by hand: 2/7, 5/9, 2/6, 5/8 -> the last
    second = {"context": ctx,
              "candidates": ["北京大学举行的活动都来参加了。", "今天的典礼。", "股市大涨了。", "上海天气晴朗。"]}
    # 7 of 15 vs 5 of 6: the share, not the count, decides -> the second
    assert overlap_predictions([first, second]) == [3, 1]


class Chars:
    def __init__(self, text):
        self.chars = sorted(set(text))
        self.vocab_size = len(self.chars)

    def encode(self, text):
        return [self.chars.index(c) for c in text]


class Keyword(torch.nn.Module):
    "A passage's characters are likely after the matching label; `bias` is a prior for the positive label."

    def __init__(self, tok, bias=0.0, seq_len=64):
        super().__init__()
        self.tok, self.bias = tok, bias
        self.cfg = type("C", (), {"seq_len": seq_len})()
        ids = lambda t: torch.tensor(tok.encode(t))
        self.pos_label, self.neg_label, self.pos_words, self.neg_words = ids("好"), ids("差"), ids("很棒"), ids("太烂")

    def forward(self, ids, eod_id=None):
        out = torch.zeros(*ids.shape, self.tok.vocab_size)
        seen = lambda label: (torch.isin(ids, label).cumsum(1) > 0).float()[..., None]
        out[..., self.pos_words] += 3.0 * seen(self.pos_label)
        out[..., self.neg_words] += 3.0 * seen(self.neg_label)
        out[..., self.pos_label] += self.bias
        return out


CHARS = Chars("这是一条好评差评：很棒太烂N/A\n")
TEST = [("很棒很棒", "pos"), ("太烂太烂", "neg")] * 10


def test_sentiment_raw_is_fooled_by_a_label_prior_and_calibration_removes_it():
    fair = sentiment_predictions(Keyword(CHARS), CHARS, TEST, TEST, k=0, max_len=64)
    assert summarise(fair["raw"], fair["truth"])["accuracy"] == 1.0
    biased = sentiment_predictions(Keyword(CHARS, bias=20.0), CHARS, TEST, TEST, k=0, max_len=64)
    raw = summarise(biased["raw"], biased["truth"])
    assert raw["accuracy"] == 0.5 and raw["positive_share"] == 1.0  # one label for everything: chance, visibly
    assert summarise(biased["calibrated"], biased["truth"])["accuracy"] == 1.0
    assert REVIEW_WORDS == {"pos": "好评", "neg": "差评"}


def test_shots_are_balanced_and_shuffling_changes_labels_and_truncation_is_counted():
    pool = [(f"t{i}", "pos") for i in range(10)] + [(f"u{i}", "neg") for i in range(10)]
    rng = random.Random(0)
    for _ in range(20):
        assert sorted(lab for _, lab in draw_shots(pool, 2, rng)) == ["neg", "pos"]
    flipped = [draw_shots(pool, 2, random.Random(s), shuffle_labels=True) for s in range(30)]
    assert any(sorted(lab for _, lab in f) != ["neg", "pos"] for f in flipped)
    p = sentiment_predictions(Keyword(CHARS), CHARS, TEST[:4], TEST, k=2, max_len=14)
    assert all(p["truncated"])  # two 9-character examples and a 9-character query do not fit in 14
    p = sentiment_predictions(Keyword(CHARS), CHARS, TEST[:4], TEST, k=2, max_len=64)
    assert not any(p["truncated"])


def test_truncation_keeps_the_candidate_and_the_most_recent_examples(monkeypatch):
    import paperbook.pangu.tasks as tasks

    seen = []
    monkeypatch.setattr(tasks, "sequence_nll", lambda model, seqs, starts, **kw: seen.append((seqs, starts))
                        or np.zeros(len(seqs)))

    class Digits:
        def encode(self, text):
            return [int(c) for c in text if c.isdigit()]

    digits = Digits()
    item = {"context": "123456", "candidates": ["78", "90", "11", "22"], "answer": 0}
    next_sentence_predictions(None, digits, [item], max_len=5)
    assert seen[0][0] == [[4, 5, 6, 7, 8], [4, 5, 6, 9, 0], [4, 5, 6, 1, 1], [4, 5, 6, 2, 2]]  # the context's end cut
    seen.clear()
    # one example (the pool has one): its 12 tokens '这是一条好评：很棒很棒\n', then the 11-token query; max_len 14
    # keeps the example's last 3 tokens, those just before the query
    ex = CHARS.encode("这是一条好评：很棒很棒\n")
    sentiment_predictions(Keyword(CHARS), CHARS, TEST[:1], [TEST[0]], k=1, max_len=14)
    seqs, starts = seen[0]
    q = CHARS.encode("这是一条好评：很棒很棒")
    assert seqs[1] == ex[-(14 - len(q)):] + q and starts[1] == 14 - len(q)


def test_scoring_edges_found_by_mutation(monkeypatch):
    import paperbook.pangu.tasks as tasks

    shapes = []

    class Flat(torch.nn.Module):  # uniform over 3 tokens; records the batches it is given
        def forward(self, ids):
            shapes.append(tuple(ids.shape))
            return torch.zeros(*ids.shape, 3)

    nll = sequence_nll(Flat(), [[1] * 5, [1] * 2, [1] * 5, [1] * 2], [1] * 4, batch=2)
    assert nll == pytest.approx([math.log(3)] * 4)
    assert shapes == [(2, 2), (2, 5)]  # sorted by length: no batch pads a short sequence to a long one
    assert sentences("一二三四\n五六七八。") == ["一二三四五六七八。"]  # line breaks inside a sentence are dropped
    sixty = "字" * 59 + "。"
    assert sentences(sixty + "字" * 60 + "。") == [sixty]  # at most 60 characters, 60 included
    with pytest.raises(ValueError, match="need equally many predictions and labels, got 0 and 0"):
        summarise([], [])
    assert summarise(["pos", "neg", "pos"], ["pos", "pos", "pos"])["n"] == 3
    seen = []
    monkeypatch.setattr(tasks, "sequence_nll", lambda model, seqs, starts, **kw: seen.append((seqs, starts))
                        or np.zeros(len(seqs)))
    item = {"context": "我们今天", "candidates": ["去", "去公园", "回家了吗", "好"], "answer": 0}
    next_sentence_predictions(None, Chars("我们今天去公园回家了吗好"), [item], max_len=32)
    assert seen[0][1] == [1, 1, 1, 1]  # §5.3.2: the perplexity of the whole sequence, context included
    seen.clear()
    long = [("很棒" * 20, "pos")]  # 47 tokens of query: cut to max_len - 1, and the example is cut too
    p = sentiment_predictions(None, CHARS, long, [TEST[0]], k=1, max_len=22)  # example 12 + N/A query 10 fit
    assert all(len(s) <= 22 for s in seen[0][0]) and p["truncated"] == [True]  # the text's queries are cut


def test_items_need_enough_distractors_drawn_at_random():
    few = ["第一篇的第一句话在这里。第一篇的第二句话在这里。", "第二篇只有这一句话的。", "第三篇只有这一句话的。"]
    with pytest.raises(ValueError, match="no next-sentence items"):  # two distractors for four choices: no item
        next_sentence_items(few, 5)
    docs = [f"第{i}篇的第一句话在这里。第{i}篇的第二句话在这里。" for i in range(12)]
    per_seed = [{it["context"]: frozenset(it["candidates"]) for it in next_sentence_items(docs, 12, seed=s)}
                for s in range(3)]
    ctx = next(iter(per_seed[0]))
    assert len({frozenset(p[ctx]) for p in per_seed}) > 1  # the same pair gets other distractors under another seed


def test_balanced_shots_come_in_random_order():
    pool = [(f"t{i}", "pos") for i in range(10)] + [(f"u{i}", "neg") for i in range(10)]
    rng = random.Random(0)
    firsts = {draw_shots(pool, 2, rng)[0][1] for _ in range(30)}
    assert firsts == {"pos", "neg"}  # not always the labels' sorted order


def test_next_sentence_prefers_the_continuation_a_model_knows():
    class Digits:
        def encode(self, text):
            return [10 if c == "。" else int(c) for c in text if c.isdigit() or c == "。"]

    # the context repeats the start of the true continuation, so a copying model finds it
    items = [{"context": "1234。12", "candidates": ["5678。", "3456。", "9999。", "1111。"], "answer": 1}]
    from test_pangu_fewshot import Induction  # favours what followed the last earlier copy of the current token

    assert next_sentence_predictions(Induction(vocab=11), Digits(), items, max_len=32) == [1]


def test_study_data_keeps_the_held_out_texts_out_of_training():
    from paperbook.core import resolve
    from paperbook.pangu.chapter import build_data
    from paperbook.pangu.data import near_duplicates_of, reviews

    cfg = resolve("pangu-alpha", overrides={"data.raw_docs": 800, "data.max_docs": 300, "fewshot.reviews": 60,
                                           "study.controls": True})
    data = build_data(cfg, seed=0)
    full = {r.text[: cfg.fewshot.chars]: r.text for r in reviews()}
    test_full = [full[t] for t, _ in data["test"]]
    assert len(data["test"]) == 60 and sum(lab == "pos" for _, lab in data["test"]) == 30
    assert not near_duplicates_of(data["mix_reviews"], test_full)  # no test review (or near copy) is trained on
    assert not set(data["mix_reviews"]) & set(test_full) and not {t for t, _ in data["pool"]} & set(data["test"])
    assert 0.27 <= data["review_share"] <= 0.30  # Table 4: public datasets 27.99% of the mix
    assert len(data["mix"]) > len(data["clean"]) and data["valid"].shape[1] == cfg.model.seq_len
    assert all(len(t) > 0 for t in data["news"]) and data["docs"]["valid"] > 0
