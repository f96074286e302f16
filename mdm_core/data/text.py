"""Real text through ``datasets``: local files (``text``) or a hub dataset by name (``hub``).

Both use the *wrapped* protocol: a split's documents are joined with ``"\\n"`` into one stream,
tokenized, and cut into consecutive rows of exactly ``seq_len`` tokens; the incomplete last row
is dropped and nothing is padded. Sequences therefore start mid-document, and numbers under this
protocol are not comparable with padded (one document per row) ones. The tokenizer is fitted on
the training split only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import datasets
import numpy as np
import pyarrow
from pydantic import Field

from mdm_core.data.loader import rows_dataset
from mdm_core.data.tokenizers import TokenizerSpec, build_tokenizer
from mdm_core.errors import SpecError
from mdm_core.interfaces import DatasetBundle, DataSource, Params, Tokenizer

#: What joins documents into one stream.
DOC_SEPARATOR = "\n"

_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_BUILDERS = {"text": "text", "jsonl": "json", "parquet": "parquet"}
#: Every parquet file starts (and ends) with these four bytes.
_PARQUET_MAGIC = b"PAR1"


def _sniff(path: Path) -> str:
    """What the file's first bytes say it is: ``parquet`` (its magic bytes), ``jsonl`` (the first
    non-empty line opens a JSON object or array) or ``text``."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    first = next((line for line in head.decode("utf-8", "replace").splitlines() if line.strip()), "")
    return "jsonl" if first.lstrip().startswith(("{", "[")) else "text"


def _check_format(path: Path, fmt: str, chosen_by: str) -> None:
    """Refuse a format the file cannot be (or, for JSON lines read as text, should not be) read
    as, naming the file, the format and the fix; no run trains on a parquet file's raw bytes."""
    found = _sniff(path)
    if fmt == found:
        return
    suffix_says = _SUFFIX_FORMATS.get(path.suffix.lower(), "text")
    mismatch = (
        (fmt == "parquet" or found == "parquet")
        or (fmt == "jsonl" and found == "text")
        or (fmt == "text" and found == "jsonl" and suffix_says == "jsonl")
    )
    if mismatch:
        hint = "or give the file its real suffix" if chosen_by.startswith("chosen") else "or auto"
        raise SpecError(
            f"data.format: {path} looks like {found}, not {fmt} ({chosen_by}); set data.format={found} "
            f"({hint}: auto picks by suffix, .jsonl/.json, .parquet, anything else text)"
        )


def _chunk(ids: list[int], seq_len: int, split: str, where: str) -> np.ndarray:
    rows = len(ids) // seq_len
    if rows == 0:
        raise SpecError(
            f"{where}: the {split} split has {len(ids)} tokens, fewer than one row of "
            f"data.seq_len={seq_len}; use more text or a smaller data.seq_len"
        )
    return np.asarray(ids[: rows * seq_len], dtype=np.int64).reshape(rows, seq_len)


def _join(ds: Any, field: str, where: str) -> str:
    if field not in ds.column_names:
        raise SpecError(
            f"data.text_field: {where} has no column {field!r}; its columns are {ds.column_names}"
        )
    return DOC_SEPARATOR.join(t for t in ds[field] if t is not None)


def _wrapped_bundle(
    train_text: str, val_text: str, spec: TokenizerSpec, seq_len: int, where: str, info: dict[str, Any]
) -> DatasetBundle:
    """Tokenizer from the training text; both splits tokenized and cut into fixed rows."""
    tokenizer: Tokenizer = build_tokenizer(spec, train_text)
    train = _chunk(tokenizer.encode(train_text), seq_len, "train", where)
    val = _chunk(tokenizer.encode(val_text), seq_len, "validation", where)
    info = {
        **info,
        "protocol": "wrapped",
        "tokenizer": spec.name,
        "vocab_size": tokenizer.num_regular,
        "train_tokens": int(train.size),
        "validation_tokens": int(val.size),
    }
    return DatasetBundle(
        splits={"train": rows_dataset(train), "validation": rows_dataset(val)},
        tokenizer=tokenizer,
        seq_len=seq_len,
        info=info,
    )


class TextFileSource(DataSource):
    """Local text, jsonl or parquet files through ``datasets`` (wrapped into fixed-length rows).

    Validation is the contiguous tail ``val_fraction`` of the text (after ``max_chars``), so it
    never overlaps training. ``format: auto`` picks by suffix: ``.jsonl``/``.json`` → jsonl,
    ``.parquet`` → parquet, anything else → plain text (read whole, line breaks normalised to ``\\n``).
    A relative ``path`` is resolved against the current directory.
    """

    name: ClassVar[str] = "text"

    class Params(Params):
        path: str = Field(description="a text, jsonl or parquet file")
        format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
        text_field: str = Field(default="text", description="column holding the text (jsonl/parquet)")
        tokenizer: TokenizerSpec = TokenizerSpec()
        seq_len: int = Field(default=128, ge=1)
        val_fraction: float = Field(default=0.05, gt=0, lt=1, description="tail share used for validation")
        max_chars: int | None = Field(default=None, ge=1, description="read only the first max_chars")

    params: Params

    def resolved_format(self, path: Path) -> str:
        if self.params.format == "auto":
            return _SUFFIX_FORMATS.get(path.suffix.lower(), "text")
        return self.params.format

    def read_text(self) -> str:
        """The whole corpus as one string (documents joined with a newline)."""
        p = self.params
        path = Path(p.path).expanduser().resolve()
        if not path.is_file():
            raise SpecError(f"data.path: file not found: {path} (relative paths are read from {Path.cwd()})")
        fmt = self.resolved_format(path)
        chosen_by = (
            f"data.format={p.format}" if p.format != "auto" else f"chosen by its suffix '{path.suffix}'"
        )
        _check_format(path, fmt, chosen_by)
        kwargs = {"sample_by": "document"} if fmt == "text" else {}
        try:
            ds = datasets.load_dataset(_BUILDERS[fmt], data_files=str(path), split="train", **kwargs)
        except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException) as exc:
            cause = exc.__cause__ or exc
            raise SpecError(
                f"data.path: could not read {path} as {fmt} ({type(cause).__name__}: {cause}); "
                "set data.format to the file's real format (text files must be UTF-8)"
            ) from exc
        return _join(ds, "text" if fmt == "text" else p.text_field, str(path))

    def load(self, seed: int) -> DatasetBundle:
        """Read, split by tail fraction, fit the tokenizer on train, cut rows (seed unused)."""
        del seed
        p = self.params
        text = self.read_text()
        if p.max_chars is not None:
            text = text[: p.max_chars]
        cut = len(text) - int(round(p.val_fraction * len(text)))
        where = f"data.path {p.path}"
        info = {"source": str(Path(p.path).expanduser().resolve()), "chars": len(text)}
        return _wrapped_bundle(text[:cut], text[cut:], p.tokenizer, p.seq_len, where, info)


class HubSource(DataSource):
    """A Hugging Face hub dataset by name (needs network or a local cache), wrapped into rows.

    ``dataset`` is anything ``datasets.load_dataset`` accepts, including a local folder of
    parquet/jsonl files. Split names accept slicing, e.g. ``train[:95%]`` / ``train[95%:]`` for
    a dataset without a validation split.
    """

    name: ClassVar[str] = "hub"

    class Params(Params):
        dataset: str = Field(description="hub dataset name (or a local dataset folder)")
        config: str | None = Field(default=None, description="dataset configuration name")
        text_field: str = "text"
        tokenizer: TokenizerSpec = TokenizerSpec()
        seq_len: int = Field(default=128, ge=1)
        train_split: str = "train"
        validation_split: str = "validation"
        max_rows: int | None = Field(default=None, ge=1, description="first max_rows of each split")

    params: Params

    def _split(self, split: str) -> Any:
        p = self.params
        try:
            ds = datasets.load_dataset(p.dataset, p.config, split=split)
        except ConnectionError as exc:
            raise SpecError(
                f"data.dataset: could not reach '{p.dataset}' on the Hugging Face hub ({exc}). "
                "The hub source needs network access or a local datasets cache of it; offline, use "
                "data.name=text with data.path pointing to a local text/jsonl/parquet file"
            ) from exc
        except datasets.exceptions.DatasetNotFoundError as exc:
            raise SpecError(f"data.dataset: no dataset '{p.dataset}' ({exc})") from exc
        except ValueError as exc:
            if "split" not in str(exc).lower():
                raise
            raise SpecError(
                f"data.train_split/data.validation_split: {exc}. A dataset without a validation split "
                "can use slices, e.g. data.train_split='train[:95%]' data.validation_split='train[95%:]'"
            ) from exc
        if p.max_rows is not None and len(ds) > p.max_rows:
            ds = ds.select(range(p.max_rows))
        return ds

    def load(self, seed: int) -> DatasetBundle:
        """Download (or read the cache of) both splits, then tokenize and cut rows (seed unused)."""
        del seed
        p = self.params
        where = f"data.dataset {p.dataset}"
        train = _join(self._split(p.train_split), p.text_field, where)
        val = _join(self._split(p.validation_split), p.text_field, where)
        info = {"source": p.dataset, "config": p.config}
        return _wrapped_bundle(train, val, p.tokenizer, p.seq_len, where, info)
