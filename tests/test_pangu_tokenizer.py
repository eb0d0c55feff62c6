"""PanGu-α tokenizer: jieba + SentencePiece round trip, EOD id, bad vocabulary size."""

import random

import pytest

from paperbook.pangu.tokenizer import NEWLINE, SPACE, Tokenizer, segment

rng = random.Random(0)
COMMON = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就"
          "分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经")
TEXTS = ["".join(rng.choice(COMMON) for _ in range(rng.randint(50, 200))) + "。\n第二行 有空格" for _ in range(300)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXTS, vocab_size=400)


def test_segment_marks_spaces_and_newlines():
    # jieba's words joined by spaces; the text's space is ▂, its newline ▃ (as tokenization_jieba.py)
    assert segment("中国 人民\n万岁") == f"中国 {SPACE} 人民 {NEWLINE} 万岁"
    assert segment("我爱北京天安门") == "我 爱 北京 天安门"


def test_bpe_is_the_default_and_unigram_an_option():
    # a BPE model scores its pieces by merge rank (0, -1, -2, ...), a unigram model by log-probabilities
    def scores(t):
        sp = t.sp
        return [sp.get_score(i) for i in range(sp.get_piece_size()) if sp.is_unused(i) is False
                and not sp.is_byte(i) and not sp.is_control(i) and not sp.is_unknown(i)
                and sp.id_to_piece(i) not in ("<eod>", SPACE, NEWLINE)]

    bpe, uni = Tokenizer.train(TEXTS, vocab_size=400), Tokenizer.train(TEXTS, vocab_size=400, model_type="unigram")
    assert all(float(x).is_integer() for x in scores(bpe))
    assert not all(float(x).is_integer() for x in scores(uni))
    for t in (bpe, uni):
        assert t.decode(t.encode(TEXTS[0])) == TEXTS[0]
    with pytest.raises(ValueError, match="allowed: bpe, unigram"):
        Tokenizer.train(TEXTS, vocab_size=400, model_type="wordpiece")


def test_round_trip_keeps_everything(tok):
    for text in ["中国人民 迈向新世纪！\n床前明月光，疑是地上霜。", "𠀀 rare and ASCII 123", TEXTS[3]]:
        assert tok.decode(tok.encode(text)) == text


def test_eod_token_and_save_load(tok, tmp_path):
    assert tok.sp.id_to_piece(tok.eod_id) == "<eod>"
    # <eod>, ▂ and ▃ are user-defined pieces: ids 3, 4, 5, after SentencePiece's <unk>, <s>, </s>
    assert [tok.sp.id_to_piece(i) for i in (3, 4, 5)] == ["<eod>", SPACE, NEWLINE]
    assert tok.decode(tok.encode("人民") + [tok.eod_id]) == "人民"
    back = Tokenizer.load(tok.save(tmp_path / "t.model"))
    assert back.encode("中国人民") == tok.encode("中国人民") and back.vocab_size == tok.vocab_size == 400


def test_vocab_too_small_names_the_limit():
    with pytest.raises(ValueError, match="vocab_size 100 is too small: byte fallback alone needs 261"):
        Tokenizer.train(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="could not build a 100000-entry vocabulary"):
        Tokenizer.train(TEXTS[:5], vocab_size=100_000)
    with pytest.raises(ValueError, match="no text"):
        Tokenizer.train([], vocab_size=400)


def test_a_large_corpus_is_sampled_by_seed_from_all_of_it():
    # SentencePiece unshuffled reads only the first max_sentences texts: a corpus whose two halves use
    # disjoint characters would give a vocabulary of the first half alone. Sampled, both halves are seen.
    first, second = COMMON[:30], COMMON[30:]
    half = [["".join(rng.choice(chars) for _ in range(60)) for _ in range(100)] for chars in (first, second)]
    corpus = half[0] + half[1]

    def pieces(t):
        return {t.sp.id_to_piece(i) for i in range(t.vocab_size)}

    a, b = (Tokenizer.train(corpus, vocab_size=400, max_sentences=100, seed=s) for s in (0, 1))
    for t in (a, b):
        assert set(first) <= pieces(t) and set(second) <= pieces(t)
    assert a.model_proto != b.model_proto  # another seed draws other texts
    assert Tokenizer.train(corpus, vocab_size=400, max_sentences=100, seed=0).model_proto == a.model_proto
    whole = Tokenizer.train(corpus, vocab_size=400, max_sentences=200, seed=0)
    assert whole.model_proto == Tokenizer.train(corpus, vocab_size=400, max_sentences=200, seed=5).model_proto
    with pytest.raises(ValueError, match="max_sentences must be at least 1, got 0"):
        Tokenizer.train(corpus, vocab_size=400, max_sentences=0)


def test_a_character_below_the_coverage_is_spelled_in_bytes():
    # character_coverage 0.995: a character seen once in ~40,000 is no piece of its own; byte fallback spells it
    t = Tokenizer.train(TEXTS + ["的一是鑫在不"], vocab_size=400)
    assert t.sp.piece_to_id("鑫") == t.sp.unk_id()
    assert t.sp.encode(segment("鑫"), out_type=str) == ["▁", "<0xE9>", "<0x91>", "<0xAB>"]  # UTF-8 of 鑫
    assert t.decode(t.encode("鑫")) == "鑫"


def test_the_eod_id_is_read_from_the_model_and_the_smallest_vocabulary_is_named():
    import io

    import sentencepiece as spm

    out = io.BytesIO()  # a model whose <eod> is not the first user-defined piece
    spm.SentencePieceTrainer.train(sentence_iterator=iter([segment(t) for t in TEXTS]), model_writer=out,
                                   vocab_size=400, byte_fallback=True, user_defined_symbols=[SPACE, NEWLINE, "<eod>"],
                                   minloglevel=2)
    t = Tokenizer(out.getvalue())
    assert t.eod_id == 5 and t.sp.id_to_piece(5) == "<eod>"
    with pytest.raises(ValueError, match="vocab_size 260 is too small: byte fallback alone needs 261"):
        Tokenizer.train(TEXTS, vocab_size=260)


def test_a_sample_keeps_the_corpus_order(monkeypatch):
    import paperbook.pangu.tokenizer as tokenizer

    seen = []

    class Enough(Exception):
        pass

    def record(text):
        seen.append(text)
        if len(seen) == 50:
            raise Enough

    monkeypatch.setattr(tokenizer, "segment", record)
    corpus = [f"文本{i:03d}" for i in range(200)]
    with pytest.raises(Enough):
        Tokenizer.train(corpus, vocab_size=400, max_sentences=50, seed=3)
    assert seen == sorted(seen) and len(set(seen)) == 50  # 50 of the 200, in the corpus's order
