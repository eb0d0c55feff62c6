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
