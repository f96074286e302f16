"""Documents through ``datasets``: which local files, which splits, which format, read in batches.

``path`` may be a file, a folder (split names come from the file names the way ``datasets``
infers them: ``train*``, ``validation*``/``valid*``/``dev*``, ``test*``; otherwise every file is
``train``) or a glob; ``data_files`` is what ``datasets.load_dataset`` takes (a pattern, a list,
or a split → patterns mapping), read relative to ``path`` when that is a folder. Every file is
checked to exist and to be the format it is read as before anything is tokenized.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import pyarrow
from datasets.data_files import DataFilesDict, get_data_patterns

from mdm_core.errors import SpecError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
BUILDERS = {"text": "text", "jsonl": "json", "parquet": "parquet", "csv": "csv"}
#: Every parquet file starts (and ends) with these four bytes.
PARQUET_MAGIC = b"PAR1"
#: Files sniffed per split (a folder may hold thousands; the first few catch a wrong format).
SNIFFED = 8
#: Documents per batch read from ``datasets``.
BATCH = 2048

DataFiles = str | list[str] | dict[str, str | list[str]]


def sniff(path: Path) -> str:
    """What the file's first bytes say it is: ``parquet`` (its magic bytes), ``jsonl`` (the first
    non-empty line opens a JSON object or array) or ``text``."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    first = next((line for line in head.decode("utf-8", "replace").splitlines() if line.strip()), "")
    return "jsonl" if first.lstrip().startswith(("{", "[")) else "text"


def check_format(path: Path, fmt: str, chosen_by: str) -> None:
    """Refuse a format the file cannot be (or, for JSON lines read as text, should not be) read
    as, naming the file, the format and the fix; no run trains on a parquet file's raw bytes."""
    found = sniff(path)
    if fmt == found or (fmt == "csv" and found == "text"):
        return
    suffix_says = SUFFIX_FORMATS.get(path.suffix.lower(), "text")
    mismatch = (
        (fmt == "parquet" or found == "parquet")
        or (fmt == "jsonl" and found == "text")
        or (fmt in ("text", "csv") and found == "jsonl" and suffix_says == "jsonl")
    )
    if mismatch:
        hint = "or give the file its real suffix" if chosen_by.startswith("chosen") else "or auto"
        raise SpecError(
            f"data.format: {path} looks like {found}, not {fmt} ({chosen_by}); set data.format={found} "
            f"({hint}: auto picks by suffix, .jsonl/.json, .parquet, .csv, anything else text)"
        )


def _glob(base: Path, patterns: str | list[str], key: str) -> list[str]:
    files: list[str] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        full = Path(pattern).expanduser()
        full = full if full.is_absolute() else base / full
        found = sorted(p for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not found:
            raise SpecError(f"{key}: no file matches {full} (relative patterns are read from {base})")
        files.extend(str(Path(p).resolve()) for p in found)
    return files


def resolve_files(path: str | None, data_files: DataFiles | None) -> dict[str, list[str]]:
    """Split name → absolute file paths, each checked to exist."""
    cwd = Path.cwd()
    if data_files is not None:
        base = cwd
        if path:
            base = Path(path).expanduser().resolve()
            if not base.is_dir():
                raise SpecError(
                    f"data.path: with data.data_files, data.path is the folder the patterns are read "
                    f"from, and {base} is not a folder"
                )
        mapping = data_files if isinstance(data_files, dict) else {"train": data_files}
        return {split: _glob(base, pats, f"data.data_files.{split}") for split, pats in mapping.items()}
    if not path:
        raise SpecError("data.path: give data.path (a file, folder or glob) or data.data_files")
    target = Path(path).expanduser()
    if target.is_file():
        return {"train": [str(target.resolve())]}
    if target.is_dir():
        folder = str(target.resolve())
        try:
            found = DataFilesDict.from_patterns(get_data_patterns(folder), base_path=folder)
        except (FileNotFoundError, datasets.exceptions.DataFilesNotFoundError) as exc:
            raise SpecError(f"data.path: the folder {folder} holds no data files ({exc})") from exc
        return {str(split): [str(f) for f in files] for split, files in found.items()}
    if glob.has_magic(path):
        return {"train": _glob(cwd, path, "data.path")}
    raise SpecError(f"data.path: file not found: {target.resolve()} (relative paths are read from {cwd})")


def file_format(files: list[str], fmt: str, split: str) -> str:
    """The one format of a split's files: ``fmt`` or, for ``auto``, their common suffix's."""
    if fmt == "auto":
        by_suffix = {f: SUFFIX_FORMATS.get(Path(f).suffix.lower(), "text") for f in files}
        kinds = sorted(set(by_suffix.values()))
        if len(kinds) > 1:
            a = next(f for f, k in by_suffix.items() if k == kinds[0])
            b = next(f for f, k in by_suffix.items() if k == kinds[1])
            raise SpecError(
                f"data.format: the {split} files mix formats ({a} is {kinds[0]}, {b} is {kinds[1]}); "
                "give data.data_files one format per split or set data.format"
            )
        chosen, by = kinds[0], "chosen by its suffix"
    else:
        chosen, by = fmt, f"data.format={fmt}"
    for f in files[:SNIFFED]:
        check_format(Path(f), chosen, f"{by} '{Path(f).suffix}'" if fmt == "auto" else by)
    return chosen


@contextmanager
def reading(where: str, fmt: str) -> Iterator[None]:
    """Turn ``datasets``/Arrow read failures into a spec error naming the files and the format."""
    try:
        yield
    except (datasets.exceptions.DatasetGenerationError, pyarrow.ArrowException, UnicodeDecodeError) as exc:
        cause = exc.__cause__ or exc
        raise SpecError(
            f"data.path: could not read {where} as {fmt} ({type(cause).__name__}: {cause}); "
            "set data.format to the files' real format (text files must be UTF-8)"
        ) from exc


def load_local(files: list[str], fmt: str, split: str, streaming: bool, sample_by: str) -> Any:
    """One split of local files as a ``datasets`` (Iterable)Dataset."""
    kwargs = {"sample_by": sample_by} if fmt == "text" else {}
    with reading(", ".join(files[:3]) + (" ..." if len(files) > 3 else ""), fmt):
        return datasets.load_dataset(
            BUILDERS[fmt], data_files={split: files}, split=split, streaming=streaming, **kwargs
        )


def batches(ds: Any, field: str, where: str, fmt: str) -> Iterator[list[str]]:
    """The documents of ``ds`` (column ``field``) in batches; missing values are skipped."""
    columns = ds.column_names
    if columns is not None and field not in columns:
        raise SpecError(f"data.text_field: {where} has no column {field!r}; its columns are {columns}")
    with reading(where, fmt):
        for batch in ds.iter(batch_size=BATCH):
            if field not in batch:
                raise SpecError(
                    f"data.text_field: {where} has no column {field!r}; its columns are {sorted(batch)}"
                )
            docs = [t for t in batch[field] if t is not None]
            if docs and not isinstance(docs[0], str):
                raise SpecError(
                    f"data.text_field: column {field!r} of {where} holds {type(docs[0]).__name__}, not text"
                )
            yield docs
