"""An on-disk cache for generated task data, keyed by everything that determines it.

Files live in ``$MDM_CACHE_DIR/tasks`` (default ``~/.cache/mdm/tasks``) as ``.npz`` archives
of plain integer arrays, read back with ``allow_pickle=False``. They are written under a
temporary name and renamed into place, so concurrent runs (a sweep, DDP ranks) never read a
half-written file; at worst two processes generate the same data once each. A directory that
cannot be written only costs the regeneration next time, never the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cache_dir() -> Path:
    """Where generated task data is kept (``MDM_CACHE_DIR`` overrides ``~/.cache/mdm``)."""
    root = os.environ.get("MDM_CACHE_DIR") or Path.home() / ".cache" / "mdm"
    return Path(root) / "tasks"


def cache_path(task: str, key: dict[str, Any]) -> Path:
    """The file for ``task`` generated with ``key`` (parameters plus a generator version)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{task}-{digest}.npz"


def cached_arrays(
    task: str, key: dict[str, Any], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, read from the cache when ``key`` was generated before."""
    path = cache_path(task, key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring unreadable task cache {path} ({exc}); regenerating", stacklevel=2)
    arrays = build()
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            # numpy types **kwds as its bool keyword; the arrays are plain ndarrays.
            np.savez(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        warnings.warn(f"could not write the task cache {path} ({exc}); it will be regenerated", stacklevel=2)
    return arrays
