"""Interruption and preemption, injected for real: Ctrl-C (SIGINT) and SIGTERM finish the current
step, write a checkpoint, print the exact resume command and exit 128 + the signal (130, 143),
even with a checkpoint cadence far beyond the stop (a quick-start stopped at any step resumes);
a storm of further signals cannot cut the checkpoint short; ``kill -9`` before the first
checkpoint resumes from step 0. Every resumed run writes exactly the numbers of one that never
stopped."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mdm_core import hookimpl
from mdm_core.cli import main
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics


def _paced_module() -> Any:
    """tests/paced_cli.py (the suite imports test files by path, not as a package)."""
    spec = importlib.util.spec_from_file_location("paced_cli", Path(__file__).with_name("paced_cli.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Paced = _paced_module().Paced
MAX_STEPS = 10
#: Every step logged, and no checkpoint before the last step (as with the quick-start's 500).
RUN = [
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.log_every=1",
    "trainer.ckpt_every=500",
    "trainer.num_samples=0",
    "trainer.threads=1",
]
_REFERENCE: list[Any] = []


def numbers(run_dir: Path) -> list[dict[str, Any]]:
    """Every metric line without its timings (the only values two identical runs differ in)."""
    return [{k: v for k, v in m.items() if k not in ("elapsed", "tok_per_s")} for m in read_metrics(run_dir)]


def reference(spec: Path) -> list[dict[str, Any]]:
    """The metrics of the run never interrupted (computed once per module)."""
    if not _REFERENCE:
        run_dir = spec.parent / "uninterrupted"
        assert main(["train", str(spec), *RUN, "--run-dir", str(run_dir), "--quiet"]) == 0
        _REFERENCE.extend(numbers(run_dir))
    steps = [m["step"] for m in _REFERENCE if m["kind"] == "train"]
    assert steps == list(range(1, MAX_STEPS + 1))
    return _REFERENCE


@contextmanager
def registered(plugin: object) -> Iterator[None]:
    pm = get_registry().pm
    pm.register(plugin, name="signal-injector")
    try:
        yield
    finally:
        pm.unregister(plugin)


class SignalAt:
    """A plug-in that signals its own process at the end of step ``step``; with ``storm``, a
    thread then keeps signalling every millisecond, into the checkpoint write, the clean-up and
    beyond (``storming`` ignores the strays once the run has returned)."""

    def __init__(self, step: int, signum: int, storm: bool = False) -> None:
        self.step, self.signum, self.storm = step, signum, storm
        self.thread = threading.Thread(target=self._storm, daemon=True)

    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        if step != self.step:
            return
        os.kill(os.getpid(), self.signum)
        if self.storm:
            self.thread.start()

    def _storm(self) -> None:
        for _ in range(300):
            os.kill(os.getpid(), self.signum)
            time.sleep(0.001)

    @contextmanager
    def storming(self) -> Iterator[None]:
        previous = signal.signal(self.signum, signal.SIG_IGN)
        try:
            with registered(self):
                yield
        finally:
            if self.thread.is_alive():
                self.thread.join()
            signal.signal(self.signum, previous)


def latest(run_dir: Path) -> str:
    return (run_dir / "ckpt" / "latest").read_text().strip()


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step=st.integers(1, MAX_STEPS - 1), storm=st.booleans())
@example(step=3, storm=True)
def test_ctrl_c_at_any_step_checkpoints_there_and_resumes_exactly(
    step: int, storm: bool, tiny_spec: Path, tmp_path_factory: pytest.TempPathFactory, capfd: Any
) -> None:
    expected = reference(tiny_spec)
    run_dir = tmp_path_factory.mktemp("ctrl-c") / "run"
    injector = SignalAt(step, signal.SIGINT, storm=storm)
    with injector.storming():
        code = main(["train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet"])
    err = capfd.readouterr().err
    assert code == 130, err
    assert f"SIGINT: stopped after step {step} of {MAX_STEPS}" in err
    assert f"resume with: mdm train --resume {run_dir}\n" in err
    assert latest(run_dir) == f"step-{step:08d}"
    assert not list((run_dir / "ckpt").glob(".tmp*")), "a checkpoint write was cut short"
    assert [m["step"] for m in read_metrics(run_dir) if m["kind"] == "train"] == list(range(1, step + 1))
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "interrupted" and history[-1]["step"] == step
    assert (run_dir / "run.lock").read_text() == "", "the lock is released on the way out"

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert numbers(run_dir) == expected


def test_sigterm_preemption_exits_143_with_the_resume_command(tiny_spec: Path, tmp_path: Path) -> None:
    expected = reference(tiny_spec)
    step = random.randint(1, MAX_STEPS - 1)
    run_dir = tmp_path / "preempted"
    run = Paced("train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet", tmp=tmp_path)
    run.until_step(step)
    assert run.lines[0] == f"run  {run_dir}", "the run directory is announced before training"
    run.proc.send_signal(signal.SIGTERM)  # arrives while the step's hook waits: the step completes
    code, err = run.run_free()
    assert code == 143, err
    assert f"SIGTERM: stopped after step {step} of {MAX_STEPS}" in err, f"step {step}"
    assert f"resume with: mdm train --resume {run_dir}\n" in err
    assert latest(run_dir) == f"step-{step:08d}"
    assert max(m["step"] for m in read_metrics(run_dir)) == step

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert numbers(run_dir) == expected, f"interrupted at step {step}"


def test_kill_9_before_the_first_checkpoint_resumes_from_step_0(
    tiny_spec: Path, tmp_path: Path, capfd: Any
) -> None:
    expected = reference(tiny_spec)
    step = random.randint(1, MAX_STEPS - 1)
    run_dir = tmp_path / "killed"
    run = Paced("train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet", tmp=tmp_path)
    run.until_step(step)
    run.proc.kill()
    run.proc.wait(timeout=60)
    assert not (run_dir / "ckpt" / "latest").exists(), "killed before its first checkpoint"
    assert max(m["step"] for m in read_metrics(run_dir)) == step
    assert json.loads((run_dir / "run.lock").read_text())["pid"] == run.proc.pid  # a stale lock

    capfd.readouterr()
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    err = capfd.readouterr().err
    assert f"was left by pid {run.proc.pid} on host {socket.gethostname()}" in err
    assert "taking it over" in err and "starting from step 0" in err
    assert numbers(run_dir) == expected, f"killed at step {step}"
