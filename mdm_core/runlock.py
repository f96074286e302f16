"""One writer per run directory: an OS lock held for the life of a run.

``RUN/run.lock`` is locked with ``fcntl.flock`` and holds who has it (pid, host, start time,
command). The operating system drops the lock when its process dies, however it dies, so a lock
whose file still names a holder but can be taken was left by a run that was killed: it is taken
over with a note. The file itself is never deleted (deleting a lock file lets two processes lock
two different files); a clean release empties it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from mdm_core.errors import MdmError

LOCK_FILE = "run.lock"


def describe(holder: dict[str, Any]) -> str:
    """``pid 123 on host h since 2026-01-01 10:00:00 (mdm train ...)`` from a lock file's record."""
    if not holder:
        return "another process (it has not written its details yet)"
    text = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    return text


class RunLock:
    """The exclusive claim on one run directory; ``acquire`` once, ``release`` when the run ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock or raise ``MdmError`` (exit 2) naming the holder. Returns a note when
        the lock was left behind by a run that died without releasing it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise MdmError(f"cannot write {self.path}: {exc.strerror or exc}", exit_code=3) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        previous = _parse(_read(fd))
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": shlex.join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        if previous:
            return (
                f"note: {self.path} was left by {describe(previous)}, which stopped without "
                "releasing it; taking it over"
            )
        return None

    def check_free(self) -> None:
        """Raise the ``acquire`` error if a live run holds the directory, without taking it (an
        early check, before a refused command loads anything)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return  # no lock file, so no live run (what else is wrong is said on creating it)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)  # also drops the probe's shared lock

    def _in_use(self, fd: int) -> MdmError:
        return MdmError(
            f"{self.run_dir} is in use by {describe(_parse(_read(fd)))}; wait for that run to end "
            "(or stop it) or choose another --run-dir",
            exit_code=2,
        )

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays: see the module docstring)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a run directory removed under us: the lock goes with the descriptor
        finally:
            os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 65536, 0).decode(errors="replace")


def _parse(text: str) -> dict[str, Any]:
    """The holder record, or ``{}`` for an empty file; a torn or foreign text is kept as-is."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"command": text.strip()[:200]}
    return value if isinstance(value, dict) else {"command": str(value)[:200]}
