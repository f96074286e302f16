"""A run directory belongs to one run, injected for real: a second writer (``--run-dir`` or
``--resume``) on a live run is refused with exit 2 naming the holder and changes nothing; a lock
left by a dead process is taken over; ``--run-dir`` on an existing run needs ``--resume``;
``--resume`` records run-control overrides and refuses, before loading anything, any override
that changes what the run computes; a run that fails before its first step leaves nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mdm_core.cli import main
from mdm_core.errors import MdmError, SpecError
from mdm_core.runlock import RunLock
from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import train

RUN = ["trainer.num_samples=0", "trainer.threads=1"]


def _paced_module() -> Any:
    """tests/paced_cli.py (the suite imports test files by path, not as a package)."""
    spec = importlib.util.spec_from_file_location("paced_cli", Path(__file__).with_name("paced_cli.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Paced = _paced_module().Paced


def contents(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def train_steps(run_dir: Path) -> list[int]:
    return [m["step"] for m in read_metrics(run_dir) if m["kind"] == "train"]


def test_a_second_writer_is_refused_naming_the_holder(tiny_spec: Path, tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "live"
    first = Paced("train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet", tmp=tmp_path)
    first.until_step(5)  # past its first checkpoint (step 4): a resume would truncate its metrics
    before = contents(run_dir)
    holder = f"pid {first.proc.pid} on host {socket.gethostname()}"
    for second in (
        ["train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet"],
        ["train", "--resume", str(run_dir), "--quiet"],
    ):
        assert main(second) == 2
        out = capsys.readouterr()
        assert f"{run_dir} is in use by {holder}" in out.err and "paced_cli.py train" in out.err
        assert "Traceback" not in out.err and "run  " not in out.out
        assert contents(run_dir) == before, "the refused writer changed the live run"
    with pytest.raises(MdmError, match=f"is in use by {holder}") as info:  # the lock itself
        train(load_spec(run_dir / "resolved.yaml"), run_dir=run_dir, resume=True, quiet=True)
    assert info.value.exit_code == 2 and contents(run_dir) == before
    code, err = first.run_free()
    assert code == 0, err
    assert train_steps(run_dir) == [2, 4, 6, 8], "clean metrics, no step twice"
    assert (run_dir / "run.lock").read_text() == "", "released at the end"


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    record = {"pid": pid, "host": "gone", "started": "2026-01-01 00:00:00", "command": "mdm train x"}
    (tmp_path / "run.lock").write_text(json.dumps(record))
    lock = RunLock(tmp_path)
    note = lock.acquire()
    assert note is not None and f"left by pid {pid} on host gone since 2026-01-01" in note
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / "run.lock").read_text() == ""
    assert RunLock(tmp_path).acquire() is None, "a cleanly released lock leaves no note"


def _yaml_value(run_dir: Path, key: str) -> str:
    line = next(line for line in (run_dir / "resolved.yaml").read_text().splitlines() if f"  {key}:" in line)
    return line.split(":", 1)[1].strip()


def test_existing_runs_need_resume_which_records_run_control_overrides_only(
    tiny_spec: Path, tmp_path: Path, capsys: Any
) -> None:
    run_dir = tmp_path / "empty"
    run_dir.mkdir()  # an existing empty folder is a fine --run-dir
    assert main(["train", str(tiny_spec), *RUN, "--run-dir", str(run_dir), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"run  {run_dir}\n")
    finished = contents(run_dir)

    assert main(["train", str(tiny_spec), "--run-dir", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"mdm train --resume {run_dir}" in err
    assert contents(run_dir) == finished
    with pytest.raises(SpecError, match="already holds a run"):  # the check under the lock
        train(load_spec(tiny_spec), run_dir=run_dir, quiet=True)
    assert contents(run_dir) == finished

    for override in ("backbone.dim=64", "trainer.batch_size=16", "data.seq_len=8", "trainer.lr=0.1"):
        assert main(["train", "--resume", str(run_dir), override, "--quiet"]) == 2
        out = capsys.readouterr()
        key = override.split("=")[0]
        assert f"--resume: {key} would change what the run computes" in out.err
        assert "run  " not in out.out, "refused before the run started"
        assert contents(run_dir) == finished

    assert main(["train", "--resume", str(run_dir), "trainer.max_steps=12", "trainer.log_every=1"]) == 0
    assert train_steps(run_dir) == [2, 4, 6, 8, 9, 10, 11, 12]
    assert _yaml_value(run_dir, "max_steps") == "12" and _yaml_value(run_dir, "log_every") == "1"
    overrides = json.loads((run_dir / "overrides.json").read_text())["overrides"]
    assert overrides[-2:] == ["trainer.max_steps=12", "trainer.log_every=1"]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[-1]["step"] == 8
    assert history[-1]["changed"] == {"trainer.log_every": [2, 1], "trainer.max_steps": [8, 12]}

    assert main(["train", "--resume", str(run_dir), "trainer.max_steps=4", "--quiet"]) == 2
    assert "below the checkpoint's step 12" in capsys.readouterr().err
    assert _yaml_value(run_dir, "max_steps") == "12", "a refused resume records nothing"


@pytest.mark.parametrize("where", ["auto", "new", "empty", "with-a-file"])
def test_a_run_that_fails_before_its_first_step_leaves_nothing(
    where: str, tiny_spec: Path, tmp_path: Path, capsys: Any
) -> None:
    short = tmp_path / "short.txt"
    short.write_text("abc")  # fewer tokens than one row: found only when the data is loaded
    bad_data = f"data={{name: text, path: {short}, seq_len: 16}}"
    run_dir = tmp_path / "run"
    if where in ("empty", "with-a-file"):
        run_dir.mkdir()
    if where == "with-a-file":
        (run_dir / "notes.txt").write_text("mine")
    before = contents(run_dir) if run_dir.exists() else None
    args = ["train", str(tiny_spec), bad_data, *RUN, "--quiet"]
    assert main(args if where == "auto" else [*args, "--run-dir", str(run_dir)]) == 2
    out = capsys.readouterr()
    assert "fewer than one row" in out.err and "removed" in out.err
    assert out.out.startswith("run  "), "announced, then removed"
    runs = tmp_path / "runs"  # tiny_spec's out_dir
    assert not runs.exists() or not any(runs.iterdir())
    if before is None:
        assert not run_dir.exists()
    else:
        assert contents(run_dir) == before and sorted(os.listdir(run_dir)) == sorted(before)
