"""Tokenizers: lossless round trips, JSON save/restore, clear errors on ids that are not text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.data.tokenizers import (
    UNKNOWN_CHAR,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    SymbolTokenizer,
    TokenizerSpec,
    build_tokenizer,
    tokenizer_from_json,
)
from mdm_core.errors import MdmError

CORPUS = (
    "It was the best of times, it was the worst of times; the age of wisdom, the age of foolishness.\n"
    "Ünïcödé lines too: naïve café, 東京, emoji 🎉 and tabs\tand  double spaces.\n"
) * 30


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, 300)


def restored(tok):
    # Through a real JSON string, as a run directory stores it.
    return tokenizer_from_json(json.loads(json.dumps(tok.to_json())))


@given(st.text(alphabet=sorted(set(CORPUS)), max_size=200))
def test_char_round_trip_on_training_alphabet(text: str) -> None:
    tok = CharTokenizer.from_text(CORPUS)
    ids = tok.encode(text)
    assert all(0 <= i < tok.num_regular for i in ids)
    assert tok.decode(ids) == text


@given(st.text(max_size=100))
def test_char_unknown_characters_become_replacement(text: str) -> None:
    tok = CharTokenizer.from_text("abc")
    expected = "".join(c if c in "abc" + UNKNOWN_CHAR else UNKNOWN_CHAR for c in text)
    assert tok.decode(tok.encode(text)) == expected


def test_char_vocabulary_is_sorted_training_chars_plus_replacement() -> None:
    tok = CharTokenizer.from_text("banana")
    assert tok.chars == "abn" + UNKNOWN_CHAR
    assert tok.encode("nab") == [2, 0, 1]
    assert tok.vocab.pad_id == 4 and tok.vocab.mask_id == 5 and tok.vocab.size == 6


@given(st.text(max_size=200))
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


@settings(max_examples=50)
@given(st.text(max_size=120))
def test_bpe_round_trips_any_text(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.num_regular for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_learns_merges_and_restores_identically(bpe: BPETokenizer) -> None:
    assert 256 < bpe.num_regular <= 300
    assert len(bpe.encode(CORPUS)) < 0.6 * len(CORPUS.encode("utf-8"))
    again = restored(bpe)
    assert isinstance(again, BPETokenizer)
    probe = CORPUS[:500] + "unseen words: zygote quixotic"
    assert again.encode(probe) == bpe.encode(probe)
    assert again.num_regular == bpe.num_regular


def test_bpe_training_is_deterministic() -> None:
    a, b = BPETokenizer.train(CORPUS, 280), BPETokenizer.train(CORPUS, 280)
    assert a.to_json() == b.to_json()


@given(st.lists(st.integers(0, 99), max_size=50))
def test_symbol_round_trip_both_styles(ids: list[int]) -> None:
    for n in (10, 100):  # letters without separator, then numbered with spaces
        tok = SymbolTokenizer.numbered(n)
        kept = [i % n for i in ids]
        assert tok.encode(tok.decode(kept)) == kept
        assert restored(tok).decode(kept) == tok.decode(kept)


def test_symbol_decoding_is_readable() -> None:
    assert SymbolTokenizer.numbered(32).decode([0, 1, 25, 26]) == "abzA"
    assert SymbolTokenizer.numbered(100).decode([7, 42]) == "7 42"
    with pytest.raises(MdmError, match="unknown symbol"):
        SymbolTokenizer.numbered(3).encode("abz")


@pytest.mark.parametrize(
    "tok", [CharTokenizer.from_text("xy"), ByteTokenizer(), SymbolTokenizer.numbered(5)], ids=repr
)
def test_restore_and_pad_mask_are_not_text(tok) -> None:
    again = restored(tok)
    assert type(again) is type(tok) and again.to_json() == tok.to_json()
    with pytest.raises(MdmError, match="PAD"):
        tok.decode([0, tok.vocab.pad_id])
    with pytest.raises(MdmError, match="MASK"):
        tok.decode([tok.vocab.mask_id])


def test_build_tokenizer_from_spec() -> None:
    assert isinstance(build_tokenizer(TokenizerSpec(), "abc"), CharTokenizer)
    assert isinstance(build_tokenizer(TokenizerSpec(name="byte"), "abc"), ByteTokenizer)
    tok = build_tokenizer(TokenizerSpec(name="bpe", vocab_size=260), CORPUS)
    assert isinstance(tok, BPETokenizer) and tok.num_regular == 260
    with pytest.raises(ValueError, match="vocab_size"):
        TokenizerSpec(name="bpe", vocab_size=100)
    with pytest.raises(ValueError, match="extra"):
        TokenizerSpec(name="char", size=3)  # type: ignore[call-arg]


def test_unknown_saved_type_is_a_clear_error() -> None:
    with pytest.raises(MdmError, match="unknown saved tokenizer type"):
        tokenizer_from_json({"type": "sentencepiece"})
