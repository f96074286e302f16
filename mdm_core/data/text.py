"""Real text through ``datasets``: local files (``text``) or a hub dataset by name (``hub``).

Both tokenize once into the shard store (``mdm_core.data.shards``) and return memory-mapped
splits, so a corpus larger than memory trains with flat memory and a second run (or every other
rank) reuses the store. Rows follow the wrapped or the padded protocol (``mdm_core.data.packing``).
Without a validation split, validation is the contiguous tail ``val_fraction`` of the training
text (after ``max_chars``), so it never overlaps training; ``char`` and ``bpe`` tokenizers are
fitted on the training part only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
from pydantic import Field, model_validator

from mdm_core.data import documents
from mdm_core.data.packing import Packer, carve
from mdm_core.data.shards import (
    TOKENIZER_FILE,
    SplitWriter,
    build_or_open,
    cache_root,
    file_stamp,
    id_dtype,
    open_split,
    store_key,
)
from mdm_core.data.tokenizers import TokenizerSpec, build_tokenizer, eos_id, tokenizer_from_json
from mdm_core.errors import SpecError
from mdm_core.interfaces import DatasetBundle, DataSource, Params, Tokenizer

#: What joins documents by default (the whole text of a plain file is reproduced).
DOC_SEPARATOR = "\n"

Batches = Callable[[str], Iterator[list[str]]]


class CorpusParams(Params):
    """What every text source shares: the text column, tokenizer, rows and the shard store."""

    text_field: str = Field(default="text", description="column holding the text (jsonl/parquet/csv)")
    tokenizer: TokenizerSpec = TokenizerSpec()
    seq_len: int = Field(default=128, ge=1)
    pack: Literal["wrapped", "padded"] = Field(
        default="wrapped", description="wrapped: one stream cut into rows; padded: a document per row"
    )
    doc_separator: str = Field(
        default=DOC_SEPARATOR, description="between documents (wrapped): 'eos', 'none' or a text"
    )
    val_fraction: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="tail share used for validation when there is no validation split",
    )
    streaming: bool = Field(default=False, description="read the files as a stream, without an Arrow copy")
    cache_dir: str | None = Field(
        default=None, description="shard store folder (default ~/.cache/mdm/shards)"
    )

    @model_validator(mode="after")
    def _separator_is_for_wrapped(self) -> CorpusParams:
        if self.pack == "padded" and "doc_separator" in self.model_fields_set:
            raise ValueError(
                "data.doc_separator applies to pack=wrapped; padded rows hold one document each, "
                "ended by the tokenizer's end-of-document token"
            )
        return self


def _joiner(p: CorpusParams) -> str:
    return "" if p.doc_separator in ("eos", "none") or p.pack == "padded" else p.doc_separator


def _fit_pieces(pieces: Iterator[str], limit: int | None) -> Iterator[str]:
    seen = 0
    for piece in pieces:
        if limit is not None and seen + len(piece) >= limit:
            yield piece[: limit - seen]
            return
        seen += len(piece)
        yield piece


def _too_short(where: str, split: str, p: CorpusParams, tokens: int) -> SpecError:
    what = "no non-empty document" if p.pack == "padded" else f"{tokens} tokens, fewer than one row of"
    return SpecError(
        f"{where}: the {split} split has {what} data.seq_len={p.seq_len}; "
        "use more text or a smaller data.seq_len"
    )


def tokenize_corpus(
    p: CorpusParams, batches: Batches, carve_validation: bool, limit: int | None, where: str, folder: Path
) -> dict[str, Any]:
    """Fit the tokenizer, tokenize both splits into ``folder``; the store's metadata."""
    sep, padded = _joiner(p), p.pack == "padded"
    cut = None
    chars = None
    if carve_validation:
        chars = 0
        for i, docs in enumerate(batches("train")):
            chars += sum(map(len, docs)) + len(sep) * (len(docs) - (0 if i else 1))
            if limit is not None and chars >= limit:
                chars = limit
                break
        cut = chars - int(round(p.val_fraction * chars))

    def routed() -> Iterator[tuple[str, list[str]]]:
        yield from carve(batches("train"), sep, cut, limit, whole_docs=padded)
        if not carve_validation:
            for split, docs in carve(batches("validation"), sep, None, limit, whole_docs=padded):
                yield "validation" if split == "train" else split, docs

    need_eos = padded or p.doc_separator == "eos"
    pieces = (sep + sep.join(docs) for split, docs in routed() if split == "train")
    fitted = p.tokenizer.name in ("char", "bpe")
    tokenizer: Tokenizer = build_tokenizer(
        p.tokenizer, _fit_pieces(pieces, p.tokenizer.fit_chars) if fitted else "", need_eos
    )
    vocab = tokenizer.vocab
    packers = {
        split: Packer(
            tokenizer,
            SplitWriter(folder / f"{split}.arrow", p.seq_len, id_dtype(vocab.size)),
            p.seq_len,
            padded,
            None if p.doc_separator in ("eos", "none") else sep,
            eos_id(tokenizer) if need_eos else None,
            vocab.pad_id,
        )
        for split in ("train", "validation")
    }
    for split, docs in routed():
        packers[split].add(docs)
    rows = {split: packer.finish() for split, packer in packers.items()}
    for split, n in rows.items():
        if n == 0:
            raise _too_short(where, split, p, packers[split].tokens)
    (folder / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_json()))
    info: dict[str, Any] = {
        "protocol": p.pack,
        "tokenizer": p.tokenizer.name,
        "vocab_size": tokenizer.num_regular,
        "train_tokens": rows["train"] * p.seq_len,
        "validation_tokens": rows["validation"] * p.seq_len,
    }
    if chars is not None:
        info["chars"] = chars
    return info


def stored_bundle(
    p: CorpusParams,
    key_material: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    info: dict[str, Any],
) -> DatasetBundle:
    """The store for ``key_material`` (built by ``build`` when missing) as a bundle."""
    root = cache_root(p.cache_dir)
    key = store_key(key_material)
    folder, meta, _ = build_or_open(root, key, build, ("train", "validation"))
    tokenizer = tokenizer_from_json(json.loads((folder / TOKENIZER_FILE).read_text()))
    return DatasetBundle(
        splits={"train": open_split(folder, "train"), "validation": open_split(folder, "validation")},
        tokenizer=tokenizer,
        seq_len=p.seq_len,
        info={**info, **meta, "store": str(folder)},
    )


class TextFileSource(DataSource):
    """Local text, jsonl, parquet or csv files through ``datasets``, tokenized into the shard store.

    ``path`` is a file, a folder or a glob; ``data_files`` takes what ``datasets.load_dataset``
    takes (a pattern, a list, or split → patterns). ``format: auto`` picks by suffix: ``.jsonl``/
    ``.json`` → jsonl, ``.parquet`` → parquet, ``.csv`` → csv, anything else → plain text, whose
    documents are lines (``sample_by``: also ``paragraph`` or ``document``, a whole file).
    Relative paths are resolved against the current directory.
    """

    name: ClassVar[str] = "text"

    class Params(CorpusParams):
        path: str | None = Field(default=None, description="a file, a folder or a glob")
        data_files: documents.DataFiles | None = Field(
            default=None, description="files as datasets takes them: a pattern, a list, or split → patterns"
        )
        format: Literal["auto", "text", "jsonl", "parquet", "csv"] = "auto"
        sample_by: Literal["line", "paragraph", "document"] = Field(
            default="line", description="what one document of a plain text file is"
        )
        train_split: str = "train"
        validation_split: str = Field(
            default="validation", description="used when the files have it, else val_fraction carves one"
        )
        max_chars: int | None = Field(default=None, ge=1, description="read only the first max_chars")

    params: Params

    def files(self) -> dict[str, list[str]]:
        """Split → files, the requested splits checked to exist."""
        p = self.params
        found = documents.resolve_files(p.path, p.data_files)
        wanted = [p.train_split]
        if "validation_split" in p.model_fields_set:
            wanted.append(p.validation_split)
        for split in wanted:
            if split not in found:
                key = "train_split" if split == p.train_split else "validation_split"
                raise SpecError(
                    f"data.{key}: no '{split}' split in the files (found {sorted(found)}); "
                    "name one of those, or give data.data_files a split → files mapping"
                )
        return found

    def _batches(self, files: dict[str, list[str]]) -> Batches:
        p = self.params
        names = {"train": p.train_split, "validation": p.validation_split}
        formats = {s: documents.file_format(files[names[s]], p.format, s) for s in names if names[s] in files}

        def batches(split: str) -> Iterator[list[str]]:
            chosen, fmt = files[names[split]], formats[split]
            ds = documents.load_local(chosen, fmt, names[split], p.streaming, p.sample_by)
            field = "text" if fmt == "text" else p.text_field
            yield from documents.batches(ds, field, ", ".join(chosen[:3]), fmt)

        return batches

    def read_text(self) -> str:
        """The training files' documents joined by the separator (for small corpora and checks)."""
        batches = self._batches(self.files())
        return _joiner(self.params).join(d for docs in batches("train") for d in docs)

    def load(self, seed: int) -> DatasetBundle:
        """Tokenize into the shard store once (or reuse it) and map its splits (seed unused)."""
        del seed
        p = self.params
        files = self.files()
        batches = self._batches(files)
        has_val = p.validation_split in files
        every = sorted({f for split in (p.train_split, p.validation_split) for f in files.get(split, [])})
        where = f"data.path {p.path}" if p.path else "data.data_files"
        material = {
            "source": self.name,
            "params": p.model_dump(exclude={"cache_dir", "tokenizer"}),
            "tokenizer": p.tokenizer.identity(),
            "files": file_stamp(every),
        }
        info = {"source": p.path or p.data_files}
        return stored_bundle(
            p,
            material,
            lambda folder: tokenize_corpus(p, batches, not has_val, p.max_chars, where, folder),
            info,
        )


class HubSource(DataSource):
    """A Hugging Face hub dataset by name (needs network or a local cache), into the shard store.

    ``dataset`` is anything ``datasets.load_dataset`` accepts, including a local folder of
    parquet/jsonl files. Split names accept slicing, e.g. ``train[:95%]`` / ``train[95%:]``;
    ``validation_split: null`` carves the tail ``val_fraction`` of the training text instead.
    Pin ``revision`` for reproducible runs: the store is keyed by the revision as written.
    """

    name: ClassVar[str] = "hub"

    class Params(CorpusParams):
        dataset: str = Field(description="hub dataset name (or a local dataset folder)")
        config: str | None = Field(default=None, description="dataset configuration name")
        revision: str | None = Field(default=None, description="branch, tag or commit of the dataset")
        train_split: str = "train"
        validation_split: str | None = "validation"
        max_rows: int | None = Field(default=None, ge=1, description="first max_rows of each split")

    params: Params

    def _split(self, split: str) -> Any:
        p = self.params
        try:
            ds = datasets.load_dataset(
                p.dataset, p.config, split=split, revision=p.revision, streaming=p.streaming
            )
        except ConnectionError as exc:
            raise SpecError(
                f"data.dataset: could not reach '{p.dataset}' on the Hugging Face hub ({exc}). "
                "The hub source needs network access or a local datasets cache of it; offline, use "
                "data.name=text with data.path pointing to local text/jsonl/parquet files"
            ) from exc
        except datasets.exceptions.DatasetNotFoundError as exc:
            raise SpecError(f"data.dataset: no dataset '{p.dataset}' ({exc})") from exc
        except ValueError as exc:
            if "split" not in str(exc).lower():
                raise
            raise SpecError(
                f"data.train_split/data.validation_split: {exc}. A dataset without a validation split "
                "can use slices, e.g. data.train_split='train[:95%]' data.validation_split='train[95%:]', "
                "or data.validation_split=null to carve data.val_fraction"
            ) from exc
        if p.max_rows is not None:
            ds = ds.take(p.max_rows) if p.streaming else ds.select(range(min(p.max_rows, len(ds))))
        return ds

    def load(self, seed: int) -> DatasetBundle:
        """Tokenize into the shard store once (or reuse it) and map its splits (seed unused)."""
        del seed
        p = self.params
        names = {"train": p.train_split, "validation": p.validation_split}

        def batches(split: str) -> Iterator[list[str]]:
            name = names[split]
            assert name is not None  # validation is carved when it has no name
            yield from documents.batches(self._split(name), p.text_field, f"{p.dataset} [{name}]", "hub")

        local = Path(p.dataset).expanduser()
        stamps = file_stamp(sorted(str(f) for f in local.rglob("*") if f.is_file())) if local.is_dir() else []
        material = {
            "source": self.name,
            "params": p.model_dump(exclude={"cache_dir", "tokenizer"}),
            "tokenizer": p.tokenizer.identity(),
            "files": stamps,
        }
        where = f"data.dataset {p.dataset}"
        info = {"source": p.dataset, "config": p.config, "revision": p.revision}
        carve_val = p.validation_split is None
        return stored_bundle(
            p, material, lambda folder: tokenize_corpus(p, batches, carve_val, None, where, folder), info
        )
