"""The shard store: a corpus tokenized once into memory-mapped Arrow files, shared by all ranks.

A store lives in ``<cache dir>/<key>/`` where the key hashes everything the token rows depend on
(the data params, the tokenizer, the sizes and modification times of the data files, this
module's format version). It holds one Arrow stream file per split (``<split>.arrow``: a
fixed-length ``input_ids`` column of ``uint16`` ids, or ``int32`` for vocabularies over 65,534
regular ids), the fitted tokenizer (``tokenizer.json``) and ``meta.json``.

Building happens under a file lock, into a temporary folder renamed into place only when complete:
the first process (any rank) builds, the others wait on the lock and then map the finished files;
a build that dies leaves no store, and its leftovers are removed by the next build. Splits are
opened with ``datasets.Dataset.from_file``, which memory-maps the file: a rank reads only the
pages of the rows it gathers, and no process holds the corpus in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from filelock import FileLock

from mdm_core.errors import SpecError

#: Bumped whenever the files a store holds change meaning; old stores are then simply not found.
FORMAT_VERSION = 1
#: Environment variable that moves the default cache directory.
CACHE_ENV = "MDM_CACHE_DIR"
META_FILE = "meta.json"
TOKENIZER_FILE = "tokenizer.json"


def cache_root(override: str | None = None) -> Path:
    """Where stores live: the data key ``cache_dir``, else ``$MDM_CACHE_DIR/shards``, else
    ``~/.cache/mdm/shards``."""
    if override:
        return Path(override).expanduser().resolve()
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "mdm") / "shards"


def file_stamp(paths: list[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of local files: a changed or replaced file changes the key."""
    out: list[list[Any]] = []
    for p in paths:
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


def store_key(material: dict[str, Any]) -> str:
    """A short, stable hash of what the token rows depend on."""
    blob = json.dumps({"format": FORMAT_VERSION, **material}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def id_dtype(vocab_size: int) -> np.dtype[Any]:
    """The narrowest stored id type that holds every id including PAD and MASK."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


class SplitWriter:
    """Appends ``[n, seq_len]`` row blocks to one split's Arrow stream file (constant memory)."""

    def __init__(self, path: Path, seq_len: int, dtype: np.dtype[Any]) -> None:
        self.seq_len, self.dtype, self.rows = seq_len, dtype, 0
        value = pa.from_numpy_dtype(dtype)
        self.schema = pa.schema([("input_ids", pa.list_(value, seq_len))])
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)

    def write(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        flat = pa.array(np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, self.seq_len)
        self._writer.write_batch(pa.record_batch([column], schema=self.schema))
        self.rows += len(rows)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()


@contextmanager
def _locked(root: Path, key: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):
        yield


def build_or_open(
    root: Path, key: str, build: Callable[[Path], dict[str, Any]], splits: tuple[str, ...]
) -> tuple[Path, dict[str, Any], bool]:
    """The store ``key`` under ``root``: opened if complete, else built by ``build(tmp_folder)``.

    ``build`` writes the split files and the tokenizer into the folder it is given and returns
    the metadata to keep. Returns ``(folder, meta, built)``; ``built`` is False when reused.
    """
    try:
        final = root / key
        with _locked(root, key):
            meta_path = final / META_FILE
            if meta_path.is_file() and all((final / f"{s}.arrow").is_file() for s in splits):
                return final, json.loads(meta_path.read_text()), False
            for leftover in root.glob(f"{key}.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            tmp = root / f"{key}.tmp-{os.getpid()}"
            tmp.mkdir()
            try:
                meta = build(tmp)
                (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return final, meta, True
    except PermissionError as exc:
        raise SpecError(
            f"data.cache_dir: cannot write the shard store under {root} ({exc}); set data.cache_dir "
            f"or ${CACHE_ENV} to a writable folder"
        ) from exc


def open_split(folder: Path, split: str) -> datasets.Dataset:
    """A split of a finished store, memory-mapped (nothing is read until rows are gathered)."""
    return datasets.Dataset.from_file(str(folder / f"{split}.arrow"))
