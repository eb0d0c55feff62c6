"""PanGu-α few-shot protocol: query scoring, label choice, context truncation, generation stop rules."""

import math

import pytest
import torch

import paperbook.pangu.fewshot as fewshot
from paperbook.pangu.fewshot import classify, few_shot_accuracy, generate, query_nll


class Fixed(torch.nn.Module):
    "A 'language model' with fixed next-token log-probabilities (favours token 7)."

    def __init__(self, vocab=10, seq_len=16):
        super().__init__()
        self.cfg = type("C", (), {"seq_len": seq_len})()
        self.logits = torch.zeros(vocab)
        self.logits[7] = 3.0

    def forward(self, ids, eod_id=None):
        return self.logits.expand(*ids.shape, -1).clone()


class Tok:
    "Characters are token ids: '0'..'9'."
    eod_id = 9

    def encode(self, text):
        return [int(c) for c in text if c.isdigit()]

    def decode(self, ids):
        return "".join(str(i) for i in ids)


def test_query_nll_sums_the_query_tokens():
    m = Fixed()
    logp = torch.log_softmax(m.logits, -1)
    assert query_nll(m, [1, 2], [7, 3]) == pytest.approx(-float(logp[7] + logp[3]))
    assert query_nll(m, [], [7, 3]) == pytest.approx(-float(logp[3]))  # the first token has no prediction


def test_classify_picks_the_lower_perplexity_label_and_truncates_context():
    m, tok = Fixed(), Tok()
    labels = {"good": "7", "bad": "3"}
    assert classify(m, tok, "12", [("45", "bad")] * 3, template="{text}{label}", labels=labels) == "good"
    assert classify(m, tok, "12", [("45", "bad")] * 20, template="{text}{label}", labels=labels, max_len=16) == "good"
    with pytest.raises(ValueError, match="query alone has 20 tokens, more than the model's 16"):
        classify(m, tok, "1" * 19, [], template="{text}{label}", labels=labels, max_len=16)


class Induction(torch.nn.Module):
    "A model that reads its context: it favours the token that followed the last earlier copy of the current one."

    def __init__(self, vocab=10, seq_len=64):
        super().__init__()
        self.cfg = type("C", (), {"seq_len": seq_len})()
        self.vocab = vocab

    def forward(self, ids, eod_id=None):
        out = torch.zeros(*ids.shape, self.vocab)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                prev = [s for s in range(t) if ids[b, s] == ids[b, t]]
                if prev:
                    out[b, t, ids[b, prev[-1] + 1]] = 5.0
        return out


class Lengths(Fixed):
    "Fixed, and it records the length of every input."

    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen = []

    def forward(self, ids, eod_id=None):
        self.seen.append(ids.shape[1])
        return super().forward(ids)


def test_the_examples_are_cut_to_leave_room_for_the_query_and_generation_keeps_the_window():
    m, tok = Lengths(seq_len=16), Tok()
    classify(m, tok, "1234", [("4567", "bad")] * 10, template="{text}{label}", labels={"good": "7", "bad": "3"},
             max_len=16)
    assert m.seen == [16, 16]  # 50 tokens of examples cut to 11, so that with the 5-token query they fill 16
    m.seen.clear()
    generate(m, tok, "1" * 20, max_new_tokens=3, stop="")
    assert m.seen == [16, 16, 16]  # a 20-token prompt: the model sees its last seq_len tokens


def test_few_shot_examples_decide_and_truncation_drops_the_oldest():
    m, tok = Induction(), Tok()
    kw = dict(template="{text}{label}", labels={"bad": "3", "good": "7"})
    assert classify(m, tok, "12", [("12", "good")], **kw) == "good"
    assert classify(m, tok, "12", [("12", "bad")], **kw) == "bad"  # the examples decide, not a prior
    assert classify(m, tok, "12", [], **kw) == "bad"  # without examples: a tie, the first label
    shots = [("12", "good")] + [("45", "bad")] * 5
    assert classify(m, tok, "12", shots, **kw) == "good"
    assert classify(m, tok, "12", shots, max_len=10, **kw) == "bad"  # the one informative example was cut


def test_generate_greedy_and_stop():
    m, tok = Fixed(), Tok()
    assert generate(m, tok, "12", max_new_tokens=4, stop="") == "7777"
    m.logits[9] = 10.0  # EOD is now the most likely token
    assert generate(m, tok, "12", max_new_tokens=4, stop="") == ""
    assert math.isfinite(query_nll(m, [1], [2]))


def test_few_shot_accuracy_counts_right_answers_with_k_examples_each(monkeypatch):
    class Words(Tok):  # 好 (pos) is token 7, which Fixed favours; 差 (neg) is 3
        def encode(self, text):
            return super().encode(text.replace("好", "7").replace("差", "3"))

    test = [("1", "pos")] * 3 + [("2", "neg")]
    pool = [("4", "pos"), ("5", "neg")]
    assert few_shot_accuracy(Fixed(), Words(), test, pool, k=0) == 0.75  # always 好: 3 of 4
    seen = []
    monkeypatch.setattr(fewshot, "classify",
                        lambda m, t, text, shots, max_len: seen.append((text, shots, max_len)) or "neg")
    assert few_shot_accuracy(None, None, test, pool, k=2, max_len=8) == 0.25
    assert [(text, n) for text, _, n in seen] == [("1", 8), ("1", 8), ("1", 8), ("2", 8)]
    assert all(sorted(shots) == pool for _, shots, _ in seen)  # k = 2: one example of each label per query


def test_each_example_ends_its_line_and_a_query_may_fill_the_model():
    class LineTok(Tok):  # a newline is token 8
        def encode(self, text):
            return [8 if c == "\n" else int(c) for c in text if c.isdigit() or c == "\n"]

    m, labels = Lengths(seq_len=16), {"good": "7", "bad": "3"}
    classify(m, LineTok(), "12", [("45", "bad")] * 2, template="{text}{label}", labels=labels)
    assert m.seen == [11, 11]  # two examples "453\n" (4 tokens each) and the query "127" / "123"
    assert classify(m, Tok(), "1" * 15, [], template="{text}{label}", labels=labels, max_len=16) == "good"


class Counting(Fixed):
    "Next token: the last one plus 1 (mod 9)."

    def forward(self, ids, eod_id=None):
        out = torch.zeros(*ids.shape, 10)
        out.scatter_(-1, ((ids + 1) % 9)[..., None], 5.0)
        return out


def test_generation_stops_once_the_stop_text_appears_and_samples_among_the_top_k():
    assert generate(Counting(), Tok(), "1", max_new_tokens=6, stop="4") == "234"  # "4" ends "234"
    assert generate(Counting(), Tok(), "1", max_new_tokens=6, stop="") == "234567"
    m = Fixed()
    m.logits[2] = 3.0  # tokens 2 and 7 equally likely, the rest e^3 times less
    drawn = [generate(m, Tok(), "1", max_new_tokens=1, top_k=2, seed=s, stop="") for s in range(30)]
    assert set(drawn) == {"2", "7"}  # both of the top two, nothing else
    assert drawn == [generate(m, Tok(), "1", max_new_tokens=1, top_k=2, seed=s, stop="") for s in range(30)]
    assert generate(m, Tok(), "1", max_new_tokens=1, stop="") == "2"  # greedy: the first of the tied maxima


def test_generation_reads_the_end_of_a_long_prompt():
    # a 20-token prompt in a 16-token model: the next token follows the prompt's last token, not its 16th
    assert generate(Counting(), Tok(), "1" * 19 + "5", max_new_tokens=2, stop="") == "67"


def test_the_seed_draws_the_examples(monkeypatch):
    seen = []
    monkeypatch.setattr(fewshot, "classify", lambda m, t, text, shots, max_len: seen.append(shots) or "pos")
    pool = [(str(i), "pos" if i % 2 else "neg") for i in range(40)]
    draws = []
    for seed in (0, 0, 1):
        seen.clear()
        few_shot_accuracy(None, None, [("x", "pos")] * 5, pool, k=4, seed=seed)
        draws.append(list(seen))
    assert draws[0] == draws[1] != draws[2]
