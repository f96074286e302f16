"""Tokenizers for the built-in data sources, each saved and restored as plain JSON.

A run directory stores ``tokenizer.to_json()`` so that ``mdm eval`` / ``mdm sample`` rebuild the
exact tokenizer the model was trained with (``tokenizer_from_json``); nothing is pickled, and a
Hugging Face tokenizer is stored whole, so a run reloads offline.
Regular ids are always ``0..n-1``; PAD and MASK come after them (``Tokenizer.vocab``) and are not
text, so decoding them is an error rather than a silent guess. A ``tokenizers``-library
tokenizer keeps its own ids, its special tokens included, as regular ids; mdm's PAD and MASK are
appended after its whole vocabulary, and its end-of-document token (``eos``) separates documents.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import Tokenizer

#: What CharTokenizer encodes a character unseen in training as (U+FFFD REPLACEMENT CHARACTER).
UNKNOWN_CHAR = "\ufffd"
#: How an end-of-document id added to a built-in tokenizer is shown when decoding.
EOS_TEXT = "<eos>"
#: End-of-document tokens looked for, in this order, when a library tokenizer's ``eos`` is not given.
KNOWN_EOS = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


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
    def from_text(cls, text: str | Iterable[str]) -> CharTokenizer:
        """The characters of ``text`` (a string or pieces of one) plus U+FFFD."""
        seen = {UNKNOWN_CHAR}
        for piece in [text] if isinstance(text, str) else text:
            seen.update(piece)
        return cls("".join(sorted(seen)))

    @property
    def num_regular(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        ids, unknown = self._ids, self._unknown
        return [ids.get(c, unknown) for c in text]

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Vectorised ``encode``: code points looked up in the sorted alphabet."""
        codes = np.frombuffer("".join(self.chars).encode("utf-32-le"), dtype=np.uint32)
        out = []
        for text in texts:
            points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            at = np.minimum(np.searchsorted(codes, points), len(codes) - 1)
            out.append(np.where(codes[at] == points, at, self._unknown))
        return out

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

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

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
    def train(cls, text: str | Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges on ``text`` (the training split only, a string or pieces of one) up to
        ``vocab_size`` ids.

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
        pieces = [text] if isinstance(text, str) else text
        lines = (line for piece in pieces for line in piece.splitlines(keepends=True))
        tok.train_from_iterator(lines, trainer=trainer)
        return cls(tok)

    @property
    def num_regular(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        # Line by line through the batch encoder: the pre-tokenizer never merges across a
        # newline, so this gives the same ids as one call, several times faster on long text.
        lines = text.splitlines(keepends=True)
        return [i for enc in self.tokenizer.encode_batch(lines) for i in enc.ids]

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, self.num_regular, "BPETokenizer")
        return str(self.tokenizer.decode(ids))

    def to_json(self) -> dict[str, Any]:
        return {"type": "bpe", "tokenizer": self.tokenizer.to_str()}


class LibraryTokenizer(Tokenizer):
    """Any ``tokenizers``-library tokenizer (a ``tokenizer.json`` file or a hub tokenizer).

    All of its ids, its own special tokens included, are regular ids; documents are encoded
    without its post-processor's special tokens (``add_special_tokens=False``) and without its
    padding or truncation, since mdm packs rows itself. ``eos`` is the token that ends a document.
    """

    def __init__(self, tokenizer: Any, eos: str | None, source: str) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer, self.eos, self.source = tokenizer, eos, source
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self._n = max(vocab.values()) + 1
        self.eos_id: int | None = None
        if eos is not None:
            if eos not in vocab:
                specials = sorted(t for t in vocab if t.startswith(("<", "[")))[:12]
                raise SpecError(
                    f"tokenizer.eos: {eos!r} is not a token of {source}; tokens that look special: {specials}"
                )
            self.eos_id = int(vocab[eos])

    @property
    def num_regular(self) -> int:
        return self._n

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encoded]

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, self._n, "tokenizer")
        return str(self.tokenizer.decode(ids, skip_special_tokens=False))

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "library",
            "tokenizer": self.tokenizer.to_str(),
            "eos": self.eos,
            "source": self.source,
        }


class EosTokenizer(Tokenizer):
    """A built-in tokenizer plus one end-of-document id after its regular ids (shown as ``<eos>``)."""

    def __init__(self, base: Tokenizer) -> None:
        self.base = base
        self.eos_id = base.num_regular

    @property
    def num_regular(self) -> int:
        return self.base.num_regular + 1

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        return encode_many(self.base, texts)

    def decode(self, ids: list[int]) -> str:
        _check_ids(ids, self.num_regular, "tokenizer")
        parts: list[str] = []
        current: list[int] = []
        for i in ids:
            if i == self.eos_id:
                parts.append(self.base.decode(current))
                current = []
            else:
                current.append(i)
        return EOS_TEXT.join([*parts, self.base.decode(current)])

    def to_json(self) -> dict[str, Any]:
        return {"type": "eos", "base": self.base.to_json()}


def eos_id(tokenizer: Tokenizer) -> int | None:
    """The id that ends a document, if the tokenizer has one."""
    if isinstance(tokenizer, LibraryTokenizer | EosTokenizer):
        return tokenizer.eos_id
    return None


def encode_many(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each text's ids as an array: the vectorised path of the built-in tokenizers, else ``encode``."""
    if isinstance(tokenizer, CharTokenizer | ByteTokenizer | BPETokenizer | LibraryTokenizer | EosTokenizer):
        return tokenizer.encode_many(texts)
    return [np.asarray(tokenizer.encode(t), dtype=np.int64) for t in texts]


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
    if kind == "library":
        from tokenizers import Tokenizer as HFTokenizer

        return LibraryTokenizer(HFTokenizer.from_str(d["tokenizer"]), d.get("eos"), d.get("source", "saved"))
    if kind == "eos":
        return EosTokenizer(tokenizer_from_json(d["base"]))
    if kind == "sudoku":
        from mdm_core.tasks.sudoku import SudokuTokenizer

        return SudokuTokenizer()
    raise MdmError(
        f"unknown saved tokenizer type {kind!r}; expected char, byte, bpe, library, eos, symbol or sudoku"
    )


class TokenizerSpec(BaseModel):
    """Which tokenizer a text source uses: fitted on its training split (``char``, ``bpe``), fixed
    (``byte``), a local ``tokenizer.json`` (``file``) or a Hugging Face tokenizer (``hf``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["char", "byte", "bpe", "file", "hf"] = "char"
    #: Target vocabulary of ``bpe`` (at least the 256 byte symbols); ignored otherwise.
    vocab_size: int = Field(default=512, ge=256)
    #: Fit ``char``/``bpe`` on only the first ``fit_chars`` characters of the training split.
    fit_chars: int | None = Field(default=None, ge=1)
    #: ``file``: path of a ``tokenizer.json`` written by the ``tokenizers`` library.
    path: str | None = None
    #: ``hf``: a hub repository id (``gpt2``) or a local folder holding ``tokenizer.json``.
    id: str | None = None
    #: ``hf``: the hub revision (branch, tag or commit) to take the tokenizer from.
    revision: str | None = None
    #: ``file``/``hf``: the end-of-document token; default the first of KNOWN_EOS it has.
    eos: str | None = None

    @model_validator(mode="after")
    def _needs_its_source(self) -> TokenizerSpec:
        if self.name == "file" and not self.path:
            raise ValueError("tokenizer.name=file needs tokenizer.path (a tokenizer.json file)")
        if self.name == "hf" and not self.id:
            raise ValueError("tokenizer.name=hf needs tokenizer.id (e.g. gpt2, or a local folder)")
        return self

    def identity(self) -> dict[str, Any]:
        """What the tokens depend on, for the shard store key (a file tokenizer by its content)."""
        out = self.model_dump()
        if self.name == "file" and self.path:
            out["file_content"] = _read_tokenizer_file(Path(self.path)).to_str()
        return out


def _read_tokenizer_file(path: Path) -> Any:
    from tokenizers import Tokenizer as HFTokenizer

    path = path.expanduser().resolve()
    if not path.is_file():
        raise SpecError(
            f"tokenizer.path: file not found: {path} (a tokenizer.json of the tokenizers library)"
        )
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as exc:  # the library raises bare Exceptions for malformed files
        raise SpecError(
            f"tokenizer.path: {path} is not a tokenizers-library tokenizer.json ({exc}); save one with "
            "tokenizer.save(path) or take tokenizer.json from a hub model folder"
        ) from None


def _hub_tokenizer(repo: str, revision: str | None) -> Any:
    """A hub tokenizer's ``tokenizer.json`` through the huggingface_hub cache (offline-aware)."""
    local = Path(repo).expanduser()
    if local.is_dir():
        return _read_tokenizer_file(local / "tokenizer.json")
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, "tokenizer.json", revision=revision)
    except Exception as exc:  # offline, unknown repo, no tokenizer.json: all reported the same way
        raise SpecError(
            f"tokenizer.id: could not get the Hugging Face tokenizer {repo!r} ({type(exc).__name__}: {exc}). "
            "It needs network access once (then the hub cache serves it); offline, point "
            "tokenizer.name=file and tokenizer.path to a local tokenizer.json"
        ) from None
    return _read_tokenizer_file(Path(path))


def _library(spec: TokenizerSpec) -> LibraryTokenizer:
    if spec.name == "file":
        assert spec.path is not None  # checked by the spec
        tok, source = _read_tokenizer_file(Path(spec.path)), str(Path(spec.path).expanduser().resolve())
    else:
        assert spec.id is not None
        tok, source = _hub_tokenizer(spec.id, spec.revision), spec.id
    eos = spec.eos
    if eos is None:
        vocab = tok.get_vocab(with_added_tokens=True)
        eos = next((t for t in KNOWN_EOS if t in vocab), None)
    return LibraryTokenizer(tok, eos, source)


def build_tokenizer(
    spec: TokenizerSpec, train_text: str | Iterable[str], need_eos: bool = False
) -> Tokenizer:
    """The tokenizer ``spec`` names, fitted on the training text only (a string or its pieces).

    ``need_eos``: documents are separated or ended by an end-of-document id; built-in tokenizers
    then get one after their regular ids, a library tokenizer must have one.
    """
    tokenizer: Tokenizer
    if spec.name == "char":
        tokenizer = CharTokenizer.from_text(train_text)
    elif spec.name == "byte":
        tokenizer = ByteTokenizer()
    elif spec.name == "bpe":
        tokenizer = BPETokenizer.train(train_text, spec.vocab_size)
    else:
        library = _library(spec)
        if need_eos and library.eos_id is None:
            raise SpecError(
                f"tokenizer.eos: {library.source} has none of the end-of-document tokens {list(KNOWN_EOS)}; "
                "name one of its tokens with tokenizer.eos, or use data.doc_separator with a text"
            )
        return library
    return EosTokenizer(tokenizer) if need_eos else tokenizer
