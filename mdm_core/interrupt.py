"""Ctrl-C and SIGTERM (SLURM/Kubernetes preemption): stop at a step boundary, never mid-write.

One :class:`StopSignals` covers a whole run. Before training starts a signal stops the run at
once (nothing is lost). In the training loop (``deferring()``) the first SIGINT or SIGTERM only
asks the trainer to stop: it finishes the current step, writes a checkpoint and exits with the
shell's code for the signal, 128 + its number (130 for SIGINT, 143 for SIGTERM). Every later
signal is acknowledged and ignored, so a second Ctrl-C cannot cut a checkpoint write or the
clean-up short (``kill -9`` still can, and then the previous checkpoint is intact).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from mdm_core.errors import MdmError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell convention for a process ended by a signal."""
    return 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class RunInterrupted(MdmError):
    """The run stopped on a signal; ``exit_code`` is 128 + the signal number. ``step`` is the
    step checkpointed on the way out (``None``: stopped outside the loop, nothing written)."""

    def __init__(self, message: str, signum: int, step: int | None = None) -> None:
        super().__init__(message, exit_code=exit_code(signum))
        self.signum, self.step = signum, step


class StopSignals:
    """While active (a ``with`` block in the main thread), SIGINT and SIGTERM are handled here.
    The first raises :class:`RunInterrupted` at once, or, inside ``deferring()``, is only
    recorded in ``signum`` for the trainer to act on at the end of the step; later ones are
    ignored. The previous handlers come back on exit. Outside the main thread (where Python
    cannot take signals) it does nothing."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.deferred = False
        self._told = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """A signal in this block waits for the trainer (the training loop)."""
        self.deferred = True
        try:
            yield
        finally:
            self.deferred = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal_name(signum)
        if self.signum is not None:
            if not self._told:
                _say(f"\n{name} again: already stopping, please wait (the checkpoint is kept safe)\n")
            self._told = True
            return
        self.signum = signum
        if not self.deferred:
            raise RunInterrupted(name, signum)
        _say(f"\n{name}: finishing this step, then writing a checkpoint and stopping\n")


def _say(text: str) -> None:
    """Write from a signal handler: a raw write, since the handler may have interrupted a print
    to the same stream (the progress bar's), which a buffered write would refuse re-entering."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
