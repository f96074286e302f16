"""From documents to fixed-length token rows: the wrapped and the padded protocols.

*wrapped* (nanoGPT, MDLM's OpenWebText): a split's documents, joined by the separator (a text,
an end-of-document id, or nothing), form one token stream cut into consecutive rows of exactly
``seq_len`` tokens; the incomplete last row is dropped and nothing is padded, so rows start
mid-document. *padded* (MDLM's LM1B numbers): one document per row, truncated to ``seq_len - 1``
tokens, then the end-of-document id, then PAD to ``seq_len``; empty documents are skipped.
Numbers under one protocol are not comparable with the other's.

Everything streams: documents arrive in batches, rows leave in blocks of about ``BLOCK`` tokens,
so memory does not grow with the corpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mdm_core.data.shards import SplitWriter
from mdm_core.data.tokenizers import encode_many
from mdm_core.interfaces import Tokenizer

#: Tokens gathered before rows are written (one Arrow record batch).
BLOCK = 1 << 22


def carve(
    batches: Iterable[list[str]], sep: str, cut: int | None, limit: int | None, whole_docs: bool
) -> Iterator[tuple[str, list[str]]]:
    """Route documents to ``train`` then ``validation`` at character ``cut`` of the joined text.

    The joined text is the documents with ``sep`` between them, read up to ``limit`` characters;
    the document (or separator) at the cut is split in two, or, with ``whole_docs``, kept whole
    in train. ``cut=None`` sends everything to train.
    """
    pos, first, in_val, stop = 0, True, False, False
    for docs in batches:
        train: list[str] = []
        val: list[str] = []
        for doc in docs:
            gap_start, gap = pos, ("" if first else sep)
            pos += len(gap)
            first = False
            if limit is not None:
                if pos >= limit:
                    stop = True
                    break
                doc = doc[: limit - pos]
            start, pos = pos, pos + len(doc)
            if cut is None or (pos <= cut and not in_val):
                train.append(doc)
            elif in_val:
                val.append(doc)
            else:  # the first document at or across the cut
                in_val = True
                if start >= cut:
                    val.append(doc if whole_docs else gap[cut - gap_start :] + doc)
                elif whole_docs:
                    train.append(doc)
                else:
                    train.append(doc[: cut - start])
                    val.append(doc[cut - start :])
        if train:
            yield "train", train
        if val:
            yield "validation", val
        if stop or (limit is not None and pos >= limit):
            return


@dataclass
class Packer:
    """Tokenizes one split's document batches and writes its rows (one protocol, one separator)."""

    tokenizer: Tokenizer
    writer: SplitWriter
    seq_len: int
    padded: bool
    sep: str | None  # a text separator, or None for an id (``eos_id``) or nothing
    eos_id: int | None
    pad_id: int

    def __post_init__(self) -> None:
        self._pending: list[np.ndarray] = []
        self._size = 0
        self._started = False
        self.tokens = 0  # seen, before rows are cut

    def add(self, docs: list[str]) -> None:
        if self.padded:
            self._pad_rows(docs)
            return
        if self.sep is not None:
            piece = self.sep.join(docs)
            arrays = encode_many(self.tokenizer, [self.sep + piece if self._started else piece])
        else:
            arrays = []
            glue = np.asarray([] if self.eos_id is None else [self.eos_id], dtype=np.int64)
            for i, ids in enumerate(encode_many(self.tokenizer, docs)):
                if self._started or i:
                    arrays.append(glue)
                arrays.append(ids)
        self._started = True
        self._pending.extend(arrays)
        added = sum(len(a) for a in arrays)
        self._size += added
        self.tokens += added
        if self._size >= BLOCK:
            self._flush_wrapped()

    def _flush_wrapped(self) -> None:
        stream = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.int64)
        rows = len(stream) // self.seq_len
        self.writer.write(stream[: rows * self.seq_len].reshape(rows, self.seq_len))
        rest = stream[rows * self.seq_len :]
        self._pending, self._size = [rest], len(rest)

    def _pad_rows(self, docs: list[str]) -> None:
        assert self.eos_id is not None  # the source asks the tokenizer for one
        encoded = [ids for ids in encode_many(self.tokenizer, [d for d in docs if d]) if len(ids)]
        self.tokens += sum(len(ids) for ids in encoded)
        rows = np.full((len(encoded), self.seq_len), self.pad_id, dtype=np.int64)
        for row, ids in zip(rows, encoded, strict=True):
            keep = min(len(ids), self.seq_len - 1)
            row[:keep] = ids[:keep]
            row[keep] = self.eos_id
        self.writer.write(rows)

    def finish(self) -> int:
        """Write what is left (a wrapped split drops its incomplete last row); the row count."""
        if not self.padded:
            self._flush_wrapped()
        self.writer.close()
        return self.writer.rows
