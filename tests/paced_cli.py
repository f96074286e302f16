"""``mdm`` whose training loop a test drives, for fault tests that signal or kill a run at an
exact step: both ends of it.

Run as a script (``python tests/paced_cli.py train SPEC ...``), it is the real command line with
one lifecycle hook, what any plug-in may register: after each step the run prints ``step N`` and
waits for a line on stdin (at end of input it runs freely), so it computes exactly what
``mdm train`` computes. :class:`Paced` starts it and steps it from a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mdm_core import hookimpl


class Pace:
    """The hook of the child process."""

    def __init__(self) -> None:
        self.free = False

    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        print(f"step {step}", flush=True)
        if not self.free and not sys.stdin.readline():
            self.free = True


class Paced:
    """A paced ``mdm`` subprocess, seen from the test: its stdout lines and stderr file."""

    def __init__(self, *args: str, tmp: Path) -> None:
        self.stderr_path = tmp / "paced-stderr.txt"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr_path.open("w"),
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.lines: list[str] = []

    def until_step(self, step: int) -> None:
        """Let the run go until it has finished ``step``; it then waits in that step's hook."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("step "):
                if int(line.split()[1]) == step:
                    return
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
        raise AssertionError(f"the run ended before step {step}:\n{self.stderr()}")

    def run_free(self) -> tuple[int, str]:
        """Let the run go to its end: (exit code, stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.lines += self.proc.stdout.read().splitlines()
        return self.proc.wait(timeout=120), self.stderr()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


if __name__ == "__main__":
    from mdm_core.cli import main
    from mdm_core.plugins import get_registry

    get_registry().pm.register(Pace(), name="pace")
    sys.exit(main(sys.argv[1:]))
