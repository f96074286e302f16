"""Tokenizers for the built-in data sources, each saved and restored as plain JSON.

A run directory stores ``tokenizer.to_json()`` so that ``mdm eval`` / ``mdm sample`` rebuild the
exact tokenizer the model was trained with (``tokenizer_from_json``); nothing is pickled.
Regular ids are always ``0..n-1``; PAD and MASK come after them (``Tokenizer.vocab``) and are not
text, so decoding them is an error rather than a silent guess.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import Tokenizer

#: What CharTokenizer encodes a character unseen in training as (U+FFFD REPLACEMENT CHARACTER).
UNKNOWN_CHAR = "\ufffd"


def _check_ids(ids: Sequence[int], n: int, what: str) -> None:
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise MdmError(
            f"{what} cannot decode id {bad[0]}: regular ids are 0..{n - 1} "
            f"(PAD = {n} and MASK = {n + 1} are not text; strip them before decoding)"
        )


class CharTokenizer(Tokenizer):
    """One id per character: the sorted characters of the training text, plus U+FFFD.

    Characters never seen in training (typically a few in a validation tail) encode as U+FFFD
    instead of failing, so an unseen character costs the model its (low) probability of U+FFFD
    rather than vanishing from the evaluation.
    """

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise MdmError("CharTokenizer needs each character once, in sorted order")
        if UNKNOWN_CHAR not in chars:
            raise MdmError("CharTokenizer's characters must include U+FFFD (the unknown-character id)")
        self.chars = chars
        self._ids = {c: i for i, c in enumerate(chars)}
        self._unknown = self._ids[UNKNOWN_CHAR]

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text) | {UNKNOWN_CHAR})))

    @property
    def num_regular(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        ids, unknown = self._ids, self._unknown
        return [ids.get(c, unknown) for c in text]

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, len(self.chars), "CharTokenizer")
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"type": "char", "chars": self.chars}


class ByteTokenizer(Tokenizer):
    """The 256 byte values of the UTF-8 encoding: no training, no unknown input."""

    @property
    def num_regular(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, 256, "ByteTokenizer")
        # A sample may cut a multi-byte character; show U+FFFD there instead of failing.
        return bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {"type": "byte"}


class BPETokenizer(Tokenizer):
    """Byte-level BPE from the ``tokenizers`` library: lossless for any UTF-8 text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on ``text`` (the training split only) up to ``vocab_size`` ids.

        The vocabulary may end up smaller when the text has fewer distinct merges.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tok)

    @property
    def num_regular(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        # Line by line through the batch encoder: the pre-tokenizer never merges across a
        # newline, so this gives the same ids as one call, several times faster on long text.
        lines = text.splitlines(keepends=True)
        return [i for enc in self.tokenizer.encode_batch(lines) for i in enc.ids]

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, self.num_regular, "BPETokenizer")
        return str(self.tokenizer.decode(ids))

    def to_json(self) -> dict[str, Any]:
        return {"type": "bpe", "tokenizer": self.tokenizer.to_str()}


#: Readable one-character names for up to 62 symbols.
_SYMBOL_CHARS = string.ascii_lowercase + string.ascii_uppercase + string.digits


class SymbolTokenizer(Tokenizer):
    """Ids of a synthetic corpus shown as readable symbols.

    With ``sep = ""`` every symbol must be one character and text is read character by
    character; otherwise symbols are separated by ``sep`` (default a space).
    """

    def __init__(self, symbols: Sequence[str], sep: str = " ") -> None:
        symbols = list(symbols)
        if not symbols or len(set(symbols)) != len(symbols) or "" in symbols:
            raise MdmError("SymbolTokenizer needs a non-empty list of distinct, non-empty symbols")
        if sep == "" and any(len(s) != 1 for s in symbols):
            raise MdmError("SymbolTokenizer with sep='' needs one-character symbols")
        if sep and any(sep in s for s in symbols):
            raise MdmError(f"SymbolTokenizer symbols must not contain the separator {sep!r}")
        self.symbols = symbols
        self.sep = sep
        self._ids = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def numbered(cls, n: int) -> SymbolTokenizer:
        """``n`` symbols: letters then digits (no separator) up to 62, decimal ids beyond."""
        if n <= len(_SYMBOL_CHARS):
            return cls(list(_SYMBOL_CHARS[:n]), sep="")
        return cls([str(i) for i in range(n)], sep=" ")

    @property
    def num_regular(self) -> int:
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        parts = list(text) if self.sep == "" else text.split(self.sep) if text else []
        unknown = [p for p in parts if p not in self._ids]
        if unknown:
            raise MdmError(f"SymbolTokenizer: unknown symbol {unknown[0]!r} (known: {self.symbols[:10]}...)")
        return [self._ids[p] for p in parts]

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, len(self.symbols), "SymbolTokenizer")
        return self.sep.join(self.symbols[i] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"type": "symbol", "symbols": self.symbols, "sep": self.sep}


def tokenizer_from_json(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer saved with ``to_json`` (the kinds in this module and the Sudoku task's)."""
    kind = d.get("type")
    if kind == "char":
        return CharTokenizer(d["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(d["tokenizer"]))
    if kind == "symbol":
        return SymbolTokenizer(d["symbols"], sep=d["sep"])
    if kind == "sudoku":
        from mdm_core.tasks.sudoku import SudokuTokenizer

        return SudokuTokenizer()
    raise MdmError(f"unknown saved tokenizer type {kind!r}; expected char, byte, bpe, symbol or sudoku")


class TokenizerSpec(BaseModel):
    """Which tokenizer a text source builds from its training split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["char", "byte", "bpe"] = "char"
    #: Target vocabulary of ``bpe`` (at least the 256 byte symbols); ignored otherwise.
    vocab_size: int = Field(default=512, ge=256)


def build_tokenizer(spec: TokenizerSpec, train_text: str) -> Tokenizer:
    """The tokenizer ``spec`` names, fitted on the training text only."""
    if spec.name == "char":
        return CharTokenizer.from_text(train_text)
    if spec.name == "byte":
        return ByteTokenizer()
    if spec.name == "bpe":
        return BPETokenizer.train(train_text, spec.vocab_size)
    raise SpecError(f"tokenizer.name: unknown tokenizer {spec.name!r}; use char, byte or bpe")
