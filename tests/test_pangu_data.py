"""PanGu-α corpus cleaning: each step, fuzzy de-duplication quality, empty-corpus error."""

import random

import pytest

from paperbook.pangu.data import (
    Doc, chinese_ratio, clean_corpus, fortunes, near_duplicates, pack, remove_repeated_paragraphs, sensitive_count,
    shorten_symbol_runs, split_by_document, to_simplified,
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
