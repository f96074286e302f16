"""Issue #11's fault campaign: the real ``mdm`` command line, attacked the way a cluster, a disk
and a careless user attack it, with every outcome counted.

Each class drives ``python -m mdm_core.cli`` (and ``torch.distributed.run`` for two processes) in
subprocesses on tiny specs, and compares every resumed run's ``metrics.jsonl`` (train and eval
records, wall-clock fields dropped) with an uninterrupted reference run of the same spec:

* ``kill``: ``SIGKILL`` of the whole process tree at random points (a random delay after the
  start or after training began, right after a checkpoint's staging folder appears, right after
  it is renamed), for the ``absorbing`` process and PUMA, single process and torchrun; then
  ``--resume`` until done (a resume may be killed again).
* ``signal``: SIGINT / SIGTERM at random steps: exit 130 / 143, the step named, ``latest`` at it.
* ``corrupt``: flipped bytes, truncated or deleted files, a checkpoint of another step, a broken
  ``latest``, a torn ``metrics.jsonl`` line, leftover staging folders; the documented exit code and
  message, then the offered ``--from-step`` finishes exactly as the reference.
* ``disk``: a real tmpfs filled at a random moment (an injected ENOSPC where mounting is not
  permitted): exit 3 naming the path and free space; resume once space is freed.
* ``concurrent``: two writers on one run directory, and ``--resume`` of a live run.
* ``fuzz``: mutated specs, overrides and YAML text through ``mdm spec validate`` (in-process,
  one interpreter: a subprocess each would cost seconds of imports), tiny ones also trained.

Counted per class: trials, runs lost, resumes bit-identical, tracebacks, silent wrong results.

    python benchmarks/faults.py --kills 60 --fuzz 600 --out benchmarks/results/faults
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLASSES = ("kill", "signal", "corrupt", "disk", "concurrent", "fuzz")
#: Fields of a metrics record that measure wall-clock time: two identical runs differ only there.
CLOCK_FIELDS = ("elapsed", "tok_per_s")
TIMEOUT_S = 600

SPEC = """\
name: faults
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
forward_process: {{name: {process}}}
sampler: {{name: ancestral, steps: 8}}
evaluators:
  - {{name: nll, every: {every}, draws: 1}}
trainer: {{max_steps: {steps}, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: {ckpt},
          keep_checkpoints: 2, log_every: 1, eval_batch_size: 16, num_samples: 0, threads: 1}}
"""


@dataclass(frozen=True)
class Arm:
    """A forward process on one or two processes."""

    process: str
    nproc: int

    @property
    def name(self) -> str:
        return f"{self.process}/{'torchrun x2' if self.nproc > 1 else 'single'}"


ABSORBING, PUMA = Arm("absorbing", 1), Arm("puma", 1)
ABSORBING_DDP, PUMA_DDP = Arm("absorbing", 2), Arm("puma", 2)
#: Kill trials cycle through this list: torchrun costs twice a single process, so it comes half as often.
KILL_CYCLE = (ABSORBING, PUMA, ABSORBING_DDP, ABSORBING, PUMA, PUMA_DDP)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants. torchrun starts each worker in a session of its own, so
    killing torchrun's process group would leave the workers running."""
    kids, tree = _children(), [pid]
    for parent in tree:
        tree.extend(kids.get(parent, []))
    return tree


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Proc:
    """One CLI invocation in a subprocess, its output in files under ``logs``."""

    def __init__(self, argv: list[str], logs: Path, label: str, paced: bool = False) -> None:
        """``paced``: ``argv`` is ``tests/paced_cli.py``'s, which waits after each step for a line
        on stdin (free once stdin closes)."""
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{label}.out", logs / f"{label}.err"
        self.argv = argv
        self.started = time.monotonic()
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.PIPE if paced else subprocess.DEVNULL,
                cwd=logs,  # not the repository: ``-m mdm_core.cli`` imports the mdm_core installed
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                start_new_session=True,
            )

    def release(self) -> None:
        """Let a paced run go freely to its end."""
        if self.popen.stdin is not None:
            self.popen.stdin.close()

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill_tree(self, signum: int = signal.SIGKILL) -> bool:
        """Send ``signum`` to every process of the tree at once; whether the root still ran."""
        tree = process_tree(self.popen.pid)
        was_running = self.running()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if signum == signal.SIGKILL:
            self.wait()
            deadline = time.monotonic() + 60
            while any(_alive(p) for p in tree[1:]) and time.monotonic() < deadline:
                time.sleep(0.01)  # a killed rank holds the run's files until it is gone
        return was_running

    def wait(self) -> int:
        return self.popen.wait(timeout=TIMEOUT_S)

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")


def cli(arm: Arm, *args: str) -> list[str]:
    """The ``mdm`` command line for ``arm``: this interpreter's CLI, under torchrun for two."""
    if arm.nproc == 1:
        return [PY, "-m", "mdm_core.cli", *args]
    launcher = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(arm.nproc)]
    return [*launcher, "-m", "mdm_core.cli", *args]


def tracebacks(text: str) -> tuple[int, int]:
    """(tracebacks of mdm, tracebacks of torchrun's own report of a signal it received)."""
    blocks = text.split("Traceback (most recent call last):")[1:]
    launcher = sum("elastic.multiprocessing.api.SignalException" in b for b in blocks)
    return len(blocks) - launcher, launcher


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def numbers(run_dir: Path) -> list[dict[str, Any]] | None:
    """Every metrics record without its wall-clock fields; None if the file is unreadable."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None
    return [{k: v for k, v in r.items() if k not in CLOCK_FIELDS} for r in records]


def difference(got: list[dict[str, Any]] | None, want: list[dict[str, Any]]) -> str | None:
    """None if identical, else where the two first differ."""
    if got is None:
        return "metrics.jsonl unreadable"
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"record {i}: {a} != reference {b}"
    if len(got) != len(want):
        return f"{len(got)} records, reference {len(want)}"
    return None


def latest_step(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((run_dir / "ckpt" / "latest").read_text().strip().split("-")[1])
    return None


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One trial's outcome; ``failures`` lists anything that is not as documented."""

    cls: str
    name: str
    arm: str = ""
    kills: int = 0
    kills_in_write: int = 0
    signals: int = 0
    resumes: int = 0
    identical: bool | None = None
    lost: bool = False
    tracebacks: int = 0
    launcher_tracebacks: int = 0
    silent_wrong: bool = False
    seconds: float = 0.0
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(text)

    def saw(self, proc: Proc) -> None:
        mine, launcher = tracebacks(proc.err)
        self.tracebacks += mine
        self.launcher_tracebacks += launcher
        if mine:
            self.fail(f"traceback in {proc.err_path}")


@dataclass
class Reference:
    metrics: list[dict[str, Any]]
    wall_s: float
    train_window_s: float
    run_dir: Path


class Campaign:
    """Shared state of one campaign: where it works, its references, its trials."""

    def __init__(self, out: Path, seed: int, quick: bool, jobs: int) -> None:
        self.out, self.seed, self.quick, self.jobs = out, seed, quick, jobs
        self.work = out / "work"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.steps, self.ckpt = (16, 4) if quick else (60, 4)
        self.refs: dict[Arm, Future[Reference]] = {}
        self.snapshots: list[tuple[Arm, Path]] = []
        self.lock = threading.Lock()
        self.timings: dict[str, float] = {}

    def rng(self, *key: object) -> random.Random:
        return random.Random("-".join(map(str, (self.seed, *key))))

    def ref(self, arm: Arm) -> Reference:
        """The reference run of ``arm`` (started before every trial; waited for here)."""
        return self.refs[arm].result()

    def spec(self, arm: Arm) -> Path:
        path = self.work / "specs" / f"{arm.process}.yaml"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            text = SPEC.format(
                out=self.work / "runs",
                process=arm.process,
                steps=self.steps,
                ckpt=self.ckpt,
                every=self.steps // 2,
            )
            path.write_text(text)
        return path

    def train(self, arm: Arm, run_dir: Path, *extra: str) -> list[str]:
        """The command that starts ``run_dir``, or continues it once it holds a resolved spec."""
        if (run_dir / "resolved.yaml").is_file():
            return cli(arm, "train", "--resume", str(run_dir), *extra, "--quiet")
        return cli(arm, "train", str(self.spec(arm)), "--run-dir", str(run_dir), *extra, "--quiet")

    def reference(self, arm: Arm) -> Reference:
        """The uninterrupted run (its metrics, and how long the whole run and its training take)."""
        run_dir = self.work / "reference" / arm.name.replace("/", "-").replace(" ", "")
        proc = Proc(self.train(arm, run_dir), run_dir.parent / "logs", run_dir.name)
        first = None
        while proc.running():
            if first is None and (run_dir / "metrics.jsonl").exists():
                first = time.time()
            time.sleep(0.02)
        wall = time.monotonic() - proc.started
        if proc.wait() != 0:
            raise SystemExit(f"the reference run {arm.name} failed:\n{proc.err[-3000:]}")
        metrics = numbers(run_dir)
        assert metrics is not None
        # Training is over at the last metrics line (torchrun takes seconds more to wind down).
        window = (run_dir / "metrics.jsonl").stat().st_mtime - (first or time.time())
        return Reference(metrics, wall, max(window, 0.1), run_dir)

    def finish(self, trial: Trial, arm: Arm, run_dir: Path, logs: Path, *extra: str) -> None:
        """Resume until done (no fault), then compare with the reference."""
        proc = Proc(self.train(arm, run_dir, *extra), logs, f"final-{trial.resumes}")
        code = proc.wait()
        trial.resumes += 1
        trial.saw(proc)
        if code != 0:
            trial.lost = True
            trial.fail(f"resume exit {code}: {last_error(proc.err)}")
            return
        self.compare(trial, arm, run_dir)

    def compare(self, trial: Trial, arm: Arm, run_dir: Path) -> None:
        diff = difference(numbers(run_dir), self.ref(arm).metrics)
        trial.identical = diff is None
        if diff is not None:
            trial.silent_wrong = True
            trial.fail(f"not bit-identical: {diff}")


def last_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:400]


# --------------------------------------------------------------------------------------------
# 1. kill -9
# --------------------------------------------------------------------------------------------


def _growth(path: Path) -> Callable[[], bool]:
    size = path.stat().st_size if path.exists() else -1
    return lambda: path.exists() and path.stat().st_size != size


def _until(proc: Proc, ready: Callable[[], bool], poll: float = 0.0005) -> bool:
    """Wait until ``ready()`` or the process ends; whether it became ready."""
    while proc.running():
        with contextlib.suppress(OSError):
            if ready():
                return True
        time.sleep(poll)
    return False


def _staging(ckpt: Path) -> set[str]:
    with contextlib.suppress(OSError):
        return {p.name for p in ckpt.iterdir() if p.name.startswith(".tmp-")}
    return set()


def finished(run_dir: Path, steps: int) -> bool:
    """Whether the run is over (a kill of its resume would hit no training)."""
    return latest_step(run_dir) == steps and (run_dir / "summary.json").is_file()


def _uncommitted(run_dir: Path) -> list[str]:
    """What a kill inside a checkpoint write leaves: a staging folder, or a committed-looking
    folder newer than ``latest`` (killed between the rename and the pointer's update)."""
    ckpt, latest = run_dir / "ckpt", latest_step(run_dir) or 0
    with contextlib.suppress(OSError):
        return sorted(
            p.name
            for p in ckpt.iterdir()
            if p.name.startswith(".tmp-") or (p.name.startswith("step-") and int(p.name[5:]) > latest)
        )
    return []


def kill_at_random(
    proc: Proc, run_dir: Path, mode: str, ref: Callable[[], Reference], rng: random.Random
) -> bool:
    """SIGKILL the tree at a point chosen by ``mode`` (random delays are drawn within the
    reference run's times); whether it was still running."""
    ckpt = run_dir / "ckpt"
    if mode == "wall":
        time.sleep(rng.uniform(0, ref().wall_s))
    elif mode == "training":
        if _until(proc, _growth(run_dir / "metrics.jsonl"), 0.005):
            time.sleep(rng.uniform(0, ref().train_window_s))
    else:  # inside a checkpoint write: the n-th staging folder to appear
        seen: set[str] = set()
        for _ in range(rng.randint(1, 6)):
            fresh: set[str] = set()

            def new_staging(seen: set[str] = seen, fresh: set[str] = fresh) -> bool:
                fresh.update(_staging(ckpt) - seen)
                return bool(fresh)

            if not _until(proc, new_staging):
                break
            seen |= fresh
        if mode == "ckpt-write":
            time.sleep(rng.uniform(0, 0.004))
        else:  # "ckpt-commit": the moment the staging folder is renamed, before or as latest moves
            _until(proc, lambda: not (_staging(ckpt) & seen))
    return proc.kill_tree()


#: Where kills land: a random delay after the start, or after training began, or inside the n-th
#: checkpoint write (just after its staging folder appears, or as it is renamed and committed).
KILL_MODES = ("wall", "training", "training", "ckpt-write", "ckpt-write", "ckpt-commit")


def kill_trial(c: Campaign, index: int, arm: Arm, planned: int) -> Trial:
    rng = c.rng("kill", index)
    trial = Trial("kill", f"kill-{index}", arm.name)
    run_dir, logs = c.work / "kill" / f"{index:03d}", c.work / "kill" / f"{index:03d}-logs"
    attempts = 0
    # Quick mode kills only inside checkpoint writes: no wait for the reference's timings.
    modes = ("ckpt-write", "ckpt-commit") if c.quick else KILL_MODES
    while trial.kills < planned and attempts < planned + 3 and not finished(run_dir, c.steps):
        attempts += 1
        mode = rng.choice(modes)
        proc = Proc(c.train(arm, run_dir), logs, f"run-{attempts}")
        before = latest_step(run_dir)
        landed = kill_at_random(proc, run_dir, mode, partial(c.ref, arm), rng)
        trial.saw(proc)
        if not landed:
            code = proc.wait()
            trial.events.append(f"{mode}: ended first (exit {code})")
            if code != 0:
                trial.lost = True
                trial.fail(f"run exit {code} before the kill: {last_error(proc.err)}")
                return trial
            continue
        trial.kills += 1
        if attempts > 1:
            trial.resumes += 1
        left = _uncommitted(run_dir)
        trial.kills_in_write += bool(left)
        where = f"left {', '.join(left)}" if left else f"latest step {latest_step(run_dir)}"
        trial.events.append(f"{mode}: killed ({where}; latest before {before})")
    c.finish(trial, arm, run_dir, logs)
    return trial


# --------------------------------------------------------------------------------------------
# 2. SIGINT / SIGTERM
# --------------------------------------------------------------------------------------------


def signal_trial(c: Campaign, index: int, arm: Arm) -> Trial:
    rng = c.rng("signal", index)
    signum = rng.choice((signal.SIGINT, signal.SIGTERM)) if arm.nproc == 1 else signal.SIGTERM
    name = signal.Signals(signum).name
    trial = Trial("signal", f"{name.lower()}-{index}", arm.name)
    run_dir, logs = c.work / "signal" / f"{index:03d}", c.work / "signal" / f"{index:03d}-logs"
    proc = Proc(c.train(arm, run_dir), logs, "run")
    if _until(proc, _growth(run_dir / "metrics.jsonl"), 0.005):
        time.sleep(rng.uniform(0, 0.8 * c.ref(arm).train_window_s))
    # A single process gets the signal alone (Ctrl-C in its terminal); under torchrun every
    # process does, as a scheduler's preemption sends it.
    if arm.nproc == 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signum)
    else:
        proc.kill_tree(signum)
    code = proc.wait()
    trial.saw(proc)
    err = proc.err
    stopped = re.search(rf"{name}: stopped after step (\d+) of (\d+)", err)
    if code == 0:
        trial.events.append("finished before the signal")
    elif stopped is None:
        # The run was over (its last line printed) when the signal came: the process died of it
        # on its way out, or, under torchrun, the launcher reported it (exit 1).
        ended = code in (-signum, 1) and "run: " in proc.out
        if ended or "finish with:" in err or not run_dir.exists():
            trial.events.append(f"{name} outside training (exit {code})")
        else:
            trial.fail(f"exit {code} without the stop message: {last_error(err)}")
    else:
        trial.signals += 1
        step = int(stopped.group(1))
        trial.events.append(f"{name} at step {step}")
        want = 128 + signum if arm.nproc == 1 else 1  # torchrun reports its workers' exit as 1
        if code != want:
            trial.fail(f"exit {code}, documented {want}")
        if f"--resume {run_dir}" not in err:
            trial.fail("the resume command does not name the run")
        if latest_step(run_dir) != step:
            trial.fail(f"latest is {latest_step(run_dir)}, stopped after step {step}")
        if step >= 2 * c.ckpt and arm.nproc == 1:
            snapshot = c.work / "snapshots" / f"{index:03d}"
            shutil.copytree(run_dir, snapshot)
            with c.lock:
                c.snapshots.append((arm, snapshot))
    if code != 0:
        c.finish(trial, arm, run_dir, logs)
    else:
        c.compare(trial, arm, run_dir)
    return trial


# --------------------------------------------------------------------------------------------
# 3. Corruption
# --------------------------------------------------------------------------------------------

#: damage → exit code documented for ``mdm train --resume`` (0: recovered with a warning).
DAMAGES = {
    "flip": 3,
    "truncate": 3,
    "delete-file": 3,
    "meta-of-other-step": 3,
    "latest-outside": 3,
    "latest-missing": 0,
    "latest-garbage": 0,
    "latest-target-deleted": 0,
    "torn-metrics-line": 0,
    "leftover-folders": 0,
}


def damage(run_dir: Path, kind: str, rng: random.Random) -> str:
    """Inflict ``kind`` on the run; the file it damaged (for the message), if any."""
    ckpt = run_dir / "ckpt"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    files = sorted(p for p in latest.iterdir() if p.is_file())
    target = rng.choice(files)
    if kind == "flip":
        data = bytearray(target.read_bytes())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        target.write_bytes(target.read_bytes()[: rng.randrange(target.stat().st_size)])
    elif kind == "delete-file":
        target.unlink()
    elif kind == "meta-of-other-step":
        others = sorted(p for p in ckpt.glob("step-*") if p != latest)
        shutil.copy(others[-1] / "meta.json", latest / "meta.json")
        target = latest / "meta.json"
    elif kind == "latest-outside":
        pointer = ckpt / "latest"
        choice = rng.choice(("../../elsewhere/" + latest.name, "/etc", "symlink"))
        if choice == "symlink":
            outside = run_dir.parent / f"{run_dir.name}-outside"
            outside.write_text(latest.name)
            pointer.unlink()
            pointer.symlink_to(outside)
        else:
            pointer.write_text(choice)
        return "latest"
    elif kind == "latest-missing":
        (ckpt / "latest").unlink()
    elif kind == "latest-garbage":
        (ckpt / "latest").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 40))))
    elif kind == "latest-target-deleted":
        shutil.rmtree(latest)
    elif kind == "torn-metrics-line":
        line = (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(line[: rng.randrange(1, len(line))])
    else:  # a kill in a save's write, and one between its rename and the pointer's update
        step = int(latest.name.split("-")[1])
        (ckpt / f".tmp-step-{step + 1:08d}").mkdir()
        shutil.copytree(latest, ckpt / f"step-{step + 2:08d}")
    return target.name if kind in ("flip", "truncate", "delete-file", "meta-of-other-step") else ""


def corrupt_trial(c: Campaign, index: int) -> Trial:
    rng = c.rng("corrupt", index)
    arm, base = rng.choice(c.snapshots or [(a, c.ref(a).run_dir) for a in c.refs if a.nproc == 1])
    kind = list(DAMAGES)[index % len(DAMAGES)]
    trial = Trial("corrupt", f"{kind}-{index}", arm.name)
    run_dir, logs = c.work / "corrupt" / f"{index:03d}", c.work / "corrupt" / f"{index:03d}-logs"
    shutil.copytree(base, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    named = damage(run_dir, kind, rng)
    damaged_step = latest_step(base)
    proc = Proc(c.train(arm, run_dir), logs, "resume")
    code = proc.wait()
    trial.saw(proc)
    trial.resumes += 1
    err = proc.err
    trial.events.append(f"{kind} {named} of {base.name} (step {damaged_step}): exit {code}")
    if code == 0:
        if DAMAGES[kind] == 3 and kind != "flip":
            trial.fail(f"{kind} of {named} was not detected")
        if kind == "flip":
            trial.events.append("the flipped bytes read the same (law of the integrity test)")
        if kind.startswith("latest-") and "warning:" not in err:
            trial.fail("resumed from another checkpoint without a warning")
        if kind == "torn-metrics-line" and "skipping a torn last line" not in err:
            trial.fail("dropped a torn line without a warning")
        c.compare(trial, arm, run_dir)
        return trial
    offer = re.search(r"--from-step (\d+)", err)
    if code != DAMAGES[kind] or not err.startswith("error:"):
        trial.fail(f"exit {code}, documented {DAMAGES[kind]}: {last_error(err)}")
    if named and named not in err:
        trial.fail(f"the message does not name {named}")
    if offer is None:
        trial.lost = True
        trial.fail(f"no valid checkpoint offered: {last_error(err)}")
        return trial
    kept = damaged_step is None or (run_dir / "ckpt" / f"step-{damaged_step:08d}").exists()
    if not kept and kind != "latest-target-deleted":
        trial.fail("the damaged checkpoint was deleted")
    c.finish(trial, arm, run_dir, logs, "--from-step", offer.group(1))
    return trial


# --------------------------------------------------------------------------------------------
# 4. Full disk
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A real tmpfs at ``path`` (True), or nothing where mounting is not permitted (False)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


#: Run instead of the CLI where no tmpfs can be mounted: the disk "fills" after a byte budget.
ENOSPC_DRIVER = """
import errno, os, sys
from mdm_core import checkpoint
from mdm_core.cli import main
real, left = checkpoint._write_bytes, [int(sys.argv[1])]
def write(path, data):
    if len(data) <= left[0]:
        left[0] -= len(data)
        return real(path, data)
    path.write_bytes(data[: left[0]])
    left[0] = 0
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
checkpoint._write_bytes = write
sys.exit(main(sys.argv[2:]))
"""


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_trial(c: Campaign, index: int) -> Trial:
    rng = c.rng("disk", index)
    arm = (ABSORBING, PUMA)[index % 2]
    trial = Trial("disk", f"full-{index}", arm.name)
    folder, logs = c.work / "disk" / f"{index:03d}", c.work / "disk" / f"{index:03d}-logs"
    with tmpfs(folder / "mnt", "32m") as mounted:
        run_dir = folder / "mnt" / "run"
        ckpt_size = _size(next(c.ref(arm).run_dir.glob("ckpt/step-*")))
        if mounted:
            proc = Proc(c.train(arm, run_dir), logs, "run")
            # Fill the disk once a random number of checkpoints are committed, leaving less free
            # than one checkpoint (sometimes almost nothing: then a metrics line may be cut too).
            goal = c.ckpt * rng.randint(1, max(1, c.steps // c.ckpt - 2))
            _until(proc, lambda: (latest_step(run_dir) or 0) >= goal, 0.002)
            free = os.statvfs(run_dir).f_bavail * os.statvfs(run_dir).f_frsize
            leave = rng.randrange(0, int(0.9 * ckpt_size))
            with contextlib.suppress(OSError), (folder / "mnt" / "ballast").open("wb") as f:
                f.write(b"\0" * max(0, free - leave))
            trial.events.append(f"tmpfs filled after step {goal}, {leave // 1024} KiB left")
        else:
            budget = rng.randrange(ckpt_size, 4 * ckpt_size)
            driver = folder / "enospc.py"
            driver.write_text(ENOSPC_DRIVER)
            argv = [PY, str(driver), str(budget), *c.train(arm, run_dir)[3:]]
            proc = Proc(argv, logs, "run")
            trial.events.append(f"no tmpfs (not root?): ENOSPC injected after {budget} bytes")
        code = proc.wait()
        trial.saw(proc)
        err = proc.err
        if code == 0:
            trial.events.append("the run finished before the disk filled")
            c.compare(trial, arm, run_dir)
            return trial
        trial.events.append(f"exit {code}: {last_error(err)}")
        if code != 3 or not err.startswith("error:"):
            trial.fail(f"exit {code}, documented 3: {last_error(err)}")
        if "MiB free" not in err or str(run_dir) not in err:
            trial.fail("the message names no path or no free space")
        how = rng.choice(("remount", "move")) if mounted else "retry"
        trial.events.append(f"space freed: {how}")
        if how == "remount":
            (folder / "mnt" / "ballast").unlink(missing_ok=True)
            subprocess.run(["mount", "-o", "remount,size=64m", str(folder / "mnt")], check=True)
        elif how == "move":
            moved = folder / "run"
            shutil.copytree(run_dir, moved, symlinks=True)
            shutil.rmtree(run_dir)
            run_dir = moved
        c.finish(trial, arm, run_dir, logs)
    return trial


# --------------------------------------------------------------------------------------------
# 5. Concurrent writers
# --------------------------------------------------------------------------------------------


def _holder(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads((run_dir / "run.lock").read_text())["pid"])
    return None


def concurrent_trial(c: Campaign, index: int) -> Trial:
    arm = ABSORBING
    scenario = ("second writer and resume on a live run", "two new runs at once", "two resumes at once")[
        index % 3
    ]
    trial = Trial("concurrent", f"{scenario}-{index}", arm.name)
    run_dir, logs = c.work / "concurrent" / f"{index:03d}", c.work / "concurrent" / f"{index:03d}-logs"
    if index % 3 == 0:
        # The first run is held after its first step (a paced run) until both others have tried.
        paced = [PY, str(ROOT / "tests" / "paced_cli.py"), *c.train(arm, run_dir)[3:]]
        first = Proc(paced, logs, "first", paced=True)
        _until(first, lambda: "step 1" in first.out, 0.01)
        late = [
            Proc(c.train(arm, run_dir), logs, "second"),
            Proc(cli(arm, "train", "--resume", str(run_dir), "--quiet"), logs, "resume"),
        ]
        codes = [p.wait() for p in late]
        live = first.running()
        first.release()
        for proc, code in zip(late, codes, strict=True):
            trial.saw(proc)
            named = f"pid {first.popen.pid}" in proc.err
            trial.events.append(f"{proc.out_path.stem}: exit {code}{' naming the holder' if named else ''}")
            if code != 2 or (live and not named):
                trial.fail(f"{proc.out_path.stem} on a live run: exit {code}: {last_error(proc.err)}")
        ok = first.wait() == 0
        trial.saw(first)
    else:
        if index % 3 == 2:  # a killed run, then two resumes at the same moment
            killed = Proc(c.train(arm, run_dir), logs, "killed")
            kill_at_random(killed, run_dir, "ckpt-write", partial(c.ref, arm), c.rng("concurrent", index))
            trial.kills += 1
        pair = [Proc(c.train(arm, run_dir), logs, f"writer-{i}") for i in (1, 2)]
        codes = sorted(p.wait() for p in pair)
        for proc in pair:
            trial.saw(proc)
        trial.events.append(f"exits {codes}")
        ok = codes == [0, 2]
        if not ok:
            trial.fail(f"two writers at once: exits {codes}, want exactly one 0 and one 2")
    trial.resumes += 1
    history = (run_dir / "history.jsonl").read_text().splitlines()
    starts = sum(json.loads(line)["event"] == "start" for line in history)
    if starts != 1:
        trial.fail(f"history.jsonl records {starts} starts")
    if ok:
        c.compare(trial, arm, run_dir)
    else:
        trial.lost = True
    return trial


# --------------------------------------------------------------------------------------------
# 6. Fuzzed specs
# --------------------------------------------------------------------------------------------

JUNK_SCALARS: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**63, 2**64, 10**12, -(10**30), 0.5, -0.0, 1e308,
    float("nan"), float("inf"), -float("inf"), "", "abc", "../../x", "/abs", "cuda", "cuda:7", "mps",
    "jsonl", "${oc.env:NOPE}", "1e3", "0x10", "~",
]  # fmt: skip
OVERRIDE_TEXT = "[]{}:,'\"=$ \t\\#&*!|>-.0123456789abcnaif"
YAML_NOISE = [":", "[", "{", "]", "- ", "  ", "\t", "'", '"', "&a", "*a", "!!python/object:os.system", "#"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out: list[tuple[Any, ...]] = []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


def _junk(rng: random.Random, names: list[str], depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 2 and roll < 0.1:
        return [_junk(rng, names, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and roll < 0.2:
        return {rng.choice(["name", "x", "", "every", "dim"]): _junk(rng, names, depth + 1)}
    if roll < 0.35:
        return rng.choice(names)
    if roll < 0.5:
        return rng.uniform(-1e6, 1e6) if rng.random() < 0.5 else rng.randint(-(2**70), 2**70)
    return rng.choice(JUNK_SCALARS)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _mutate(tree: Any, rng: random.Random, names: list[str]) -> Any:
    paths = _paths(tree)
    if not paths:
        return tree
    path = rng.choice(paths)
    node = tree
    for key in path[:-1]:
        node = node[key]
    roll = rng.random()
    if roll < 0.25:
        del node[path[-1]]
    elif roll < 0.35 and isinstance(node, dict):
        node[rng.choice(["typo", "lr_", "extra", path[-1] + "s"])] = _junk(rng, names)
    else:
        node[path[-1]] = _junk(rng, names)
    return tree


def _yaml_text(tree: Any, rng: random.Random) -> str:
    text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)
    if rng.random() < 0.15:  # the file itself damaged: a character inserted or removed
        at = rng.randrange(len(text))
        text = text[:at] + (rng.choice(YAML_NOISE) if rng.random() < 0.7 else "") + text[at + 1 :]
    return text


def _override(rng: random.Random, paths: list[tuple[Any, ...]], names: list[str]) -> str:
    key = _dotted(rng.choice(paths)) if rng.random() < 0.9 else rng.choice(["nope", "trainer.", ".", "a..b"])
    if rng.random() < 0.5:
        value = yaml.safe_dump(_junk(rng, names), default_flow_style=True).strip()
        value = value.removesuffix("...").strip()
    else:
        value = "".join(rng.choice(OVERRIDE_TEXT) for _ in range(rng.randint(0, 12)))
    return f"{key}={value}"


def _non_finite(node: Any) -> bool:
    if isinstance(node, float):
        return not math.isfinite(node)
    if isinstance(node, dict):
        return any(_non_finite(v) for v in node.values())
    if isinstance(node, list):
        return any(_non_finite(v) for v in node)
    return False


def _small(node: Any) -> bool:
    """Whether every number is small: a tiny spec that may be trained in-process in a moment
    (sizes are the validator's business, checked by ``spec validate`` above)."""
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return True
    if isinstance(node, int | float):
        return not math.isfinite(node) or abs(node) <= 1000
    if isinstance(node, dict):
        return all(_small(v) for v in node.values())
    if isinstance(node, list):
        return all(_small(v) for v in node)
    return True


def _resolved(spec: Path, overrides: list[str]) -> Any:
    from mdm_core.errors import MdmError
    from mdm_core.spec import load_spec

    try:
        return load_spec(spec, overrides).resolved
    except MdmError:
        return None


#: The tiny variant one in eight fuzzed specs starts from, and trains one step once it validates.
TINY = {
    "data": {"name": "markov", "vocab_size": 8, "branching": 2, "seq_len": 8, "num_train": 64, "num_val": 16},
    "backbone": {"name": "dit", "dim": 16, "layers": 1, "heads": 2},
    "evaluators": [{"name": "nll", "every": 1, "draws": 1}],
    "sampler": {"name": "ancestral", "steps": 4},
    "trainer": {"max_steps": 1, "batch_size": 4, "eval_batch_size": 8, "num_samples": 1, "threads": 1},
}


def _call(argv: list[str]) -> tuple[int, str, str | None]:
    """``mdm ARGV`` in this process: (exit code, stderr, the exception that escaped, if any)."""
    from mdm_core.cli import main

    err = io.StringIO()
    escaped = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except Exception as exc:  # a crash: what the campaign counts
            code, escaped = -1, f"{type(exc).__name__}: {exc}"
    return code, err.getvalue(), escaped


def fuzz(c: Campaign, count: int) -> Trial:
    """``count`` mutated specs through ``mdm spec validate``; every eighth, from a tiny spec,
    also trained for one step when it validates."""
    from mdm_core.kinds import KIND_TABLE
    from mdm_core.plugins import get_registry
    from mdm_core.spec import load_spec

    registry = get_registry()
    names = sorted({n for kind in KIND_TABLE for n in registry.names(kind.name)})
    base = load_spec(ROOT / "specs" / "quickstart.yaml").resolved
    rng = c.rng("fuzz")
    trial = Trial("fuzz", "fuzz")
    codes: Counter[str] = Counter()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            tiny = i % 8 == 0
            tree = json.loads(json.dumps(base, default=str))
            if tiny:
                for key, value in TINY.items():
                    tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
            for _ in range(rng.randint(1, 3)):
                tree = _mutate(tree, rng, names)
            if tiny and isinstance(tree, dict) and isinstance(tree.get("trainer"), dict):
                tree["trainer"]["max_steps"] = 1
            folder = Path(tmp) / f"{i:04d}"
            folder.mkdir()
            if isinstance(tree, dict):
                tree["out_dir"] = str(folder / "runs")
            spec = folder / "fuzz.yaml"
            spec.write_text(_yaml_text(tree, rng))
            overrides = [_override(rng, _paths(base), names) for _ in range(rng.randint(0, 2))]
            code, err, escaped = _call(["spec", "validate", str(spec), *overrides])
            codes[f"validate {code}"] += 1
            crash = escaped or ("Traceback" in err and err)
            if crash or code not in (0, 2):
                trial.tracebacks += bool(crash)
                trial.fail(f"validate {spec.name} #{i} exit {code}: {str(crash or last_error(err))[:300]}")
                (c.out / "fuzz-failures").mkdir(exist_ok=True)
                shutil.copy(spec, c.out / "fuzz-failures" / f"{i:04d}.yaml")
            if code == 0 and _non_finite(_resolved(spec, overrides)):
                trial.silent_wrong = True
                trial.fail(f"#{i}: a spec holding NaN/inf validates ({' '.join(overrides)})")
            if tiny and code == 0 and _small(tree):
                code, err, escaped = _call(["train", str(spec), *overrides, "--quiet"])
                codes[f"train {code}"] += 1
                if escaped or "Traceback" in err or code not in (0, 2, 4):
                    trial.tracebacks += bool(escaped or "Traceback" in err)
                    trial.fail(f"train #{i} exit {code}: {str(escaped or last_error(err))[:300]}")
            shutil.rmtree(folder, ignore_errors=True)
    trial.events = [f"{k}: {v}" for k, v in sorted(codes.items())]
    trial.seconds = time.monotonic() - start
    return trial


# --------------------------------------------------------------------------------------------
# The campaign
# --------------------------------------------------------------------------------------------


def _timed(job: Callable[[], Trial]) -> Trial:
    start = time.monotonic()
    trial = job()
    trial.seconds = time.monotonic() - start
    print(f"  {trial.cls:10s} {trial.name:40s} {trial.arm:20s} {'FAIL' if trial.failures else 'ok'}"
          f"  {trial.seconds:5.1f}s  {'; '.join(trial.failures)[:300]}", flush=True)  # fmt: skip
    return trial


def plan_kills(total: int, quick: bool, rng: random.Random) -> list[tuple[Arm, int]]:
    """(arm, kills) of each kill trial: two or three kills a trial (one in quick mode), 35% more
    than ``total`` in all, for those that miss (the run ended before its kill)."""
    cycle = (ABSORBING,) if quick else KILL_CYCLE
    plan: list[tuple[Arm, int]] = []
    while sum(k for _, k in plan) < max(1, total if quick else math.ceil(1.35 * total)):
        plan.append((cycle[len(plan) % len(cycle)], 1 if quick else rng.choice((2, 3))))
    return plan


def run(c: Campaign, classes: list[str], kills: int, fuzz_count: int) -> dict[str, list[Trial]]:
    kill_plan = plan_kills(kills, c.quick, c.rng("plan")) if "kill" in classes else []
    needed = {arm for arm, _ in kill_plan} | {ABSORBING}
    if not c.quick and {"signal", "corrupt", "disk"} & set(classes):
        needed |= {ABSORBING, PUMA, ABSORBING_DDP}
    trials: dict[str, list[Trial]] = {cls: [] for cls in classes}
    timings: dict[str, float] = {}
    with ThreadPoolExecutor(c.jobs) as pool:
        # Submitted first, so they start before any trial that waits for them.
        c.refs = {arm: pool.submit(c.reference, arm) for arm in sorted(needed, key=lambda a: a.name)}
        signal_arms = [ABSORBING] * 2 if c.quick else [ABSORBING, PUMA] * 3 + [ABSORBING_DDP] * 2
        jobs: dict[str, list[Callable[[], Trial]]] = {
            "kill": [partial(kill_trial, c, i, a, k) for i, (a, k) in enumerate(kill_plan)],
            "signal": [partial(signal_trial, c, i, a) for i, a in enumerate(signal_arms)],
            "corrupt": [partial(corrupt_trial, c, i) for i in range(len(DAMAGES) + (0 if c.quick else 2))],
            "disk": [partial(disk_trial, c, i) for i in range(1 if c.quick else 2)],
            "concurrent": [partial(concurrent_trial, c, i) for i in range(3)],
        }
        for cls in ("kill", "signal", "corrupt", "disk", "concurrent"):  # corruption uses signal's snapshots
            if cls in classes:
                start = time.monotonic()
                trials[cls] = list(pool.map(_timed, jobs[cls]))
                timings[cls] = time.monotonic() - start
    if "fuzz" in classes:
        trials["fuzz"] = [_timed(partial(fuzz, c, fuzz_count))]
        timings["fuzz"] = trials["fuzz"][0].seconds
    c.timings = timings
    return trials


def summarise(trials: dict[str, list[Trial]], timings: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for cls, items in trials.items():
        compared = [t for t in items if t.identical is not None]
        out[cls] = {
            "trials": len(items),
            "kills": sum(t.kills for t in items),
            "signals": sum(t.signals for t in items),
            "kills_inside_checkpoint_writes": sum(t.kills_in_write for t in items),
            "runs_lost": sum(t.lost for t in items),
            "resumes": sum(t.resumes for t in items),
            "bit_identical": f"{sum(bool(t.identical) for t in compared)}/{len(compared)}",
            "tracebacks": sum(t.tracebacks for t in items),
            "launcher_tracebacks": sum(t.launcher_tracebacks for t in items),
            "silent_wrong_results": sum(t.silent_wrong for t in items),
            "failures": sum(bool(t.failures) for t in items),
            "wall_s": round(timings.get(cls, 0.0), 1),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    head = (
        "| class | trials | kills / signals | runs lost | resumes bit-identical | tracebacks "
        "| silent wrong results | failures | wall s |\n" + "|---" * 9 + "|\n"
    )
    rows = ""
    for cls, s in report["summary"].items():
        faults = (
            f"{s['kills']} kills ({s['kills_inside_checkpoint_writes']} in a checkpoint write)"
            if s["kills"]
            else (f"{s['signals']} signals" if s["signals"] else "")
        )
        cells = [cls, s["trials"], faults, s["runs_lost"], s["bit_identical"], s["tracebacks"],
                 s["silent_wrong_results"], s["failures"], s["wall_s"]]  # fmt: skip
        rows += "| " + " | ".join(map(str, cells)) + " |\n"
    failures = [f"- {t['cls']} {t['name']} ({t['arm']}): {'; '.join(t['failures'])}"
                for t in report["trials"] if t["failures"]]  # fmt: skip
    return (
        f"# Fault campaign (issue #11)\n\n{report['machine']}, {report['date']}\n{report['tested']}\n\n"
        f"```\n{report['command']}\n```\n\nWall time {report['wall_s']:.0f} s, seed {report['seed']}.\n\n"
        + head
        + rows
        + ("\nFailures:\n" + "\n".join(failures) + "\n" if failures else "\nNo failures.\n")
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import torch

    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"


def tested() -> str:
    """Which ``mdm_core`` the campaign ran (``PYTHONPATH`` may point at a frozen copy)."""
    import mdm_core

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    where = Path(mdm_core.__file__).parent
    return f"mdm_core {mdm_core.__version__} from {where} (repository HEAD {head.stdout.strip()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults")
    parser.add_argument("--kills", type=int, default=60, help="at least this many SIGKILLs")
    parser.add_argument("--fuzz", type=int, default=600, help="fuzzed specs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny runs, the absorbing arm")
    parser.add_argument("--classes", default=",".join(CLASSES), help=f"comma-separated, of {CLASSES}")
    parser.add_argument("--jobs", type=int, default=2, help="trials at once")
    args = parser.parse_args(argv)
    classes = [c for c in args.classes.split(",") if c]
    unknown = set(classes) - set(CLASSES)
    if unknown:
        parser.error(f"unknown classes {sorted(unknown)}; choose from {CLASSES}")
    args.out.mkdir(parents=True, exist_ok=True)
    campaign = Campaign(args.out, args.seed, args.quick, args.jobs)
    start = time.monotonic()
    trials = run(campaign, classes, args.kills, args.fuzz)
    wall = time.monotonic() - start
    report = {
        "machine": machine(),
        "tested": tested(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            ["python", *map(str, sys.argv if argv is None else ["benchmarks/faults.py", *argv])]
        ),
        "seed": args.seed,
        "wall_s": wall,
        "summary": summarise(trials, campaign.timings),
        "trials": [asdict(t) for items in trials.values() for t in items],
    }
    (args.out / "faults.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "faults.md").write_text(markdown(report))
    print(markdown(report))
    shutil.rmtree(campaign.work, ignore_errors=True)
    return 1 if any(t["failures"] for t in report["trials"]) else 0


if __name__ == "__main__":
    sys.exit(main())
