"""Checkpoints you can trust: every fault a disk, a kill or a user can inflict on ``ckpt/`` and
``metrics.jsonl`` is injected here, and each test shows that nothing is lost and the error is
clear (exit 3 for a damaged checkpoint or a failed write, 2 for one that does not fit the spec,
4 for non-finite state; through the CLI, an ``error:`` line and no traceback)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdm_core import checkpoint, hookimpl
from mdm_core.cli import main
from mdm_core.errors import MdmError, SpecError, TrainingDiverged
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics, truncate_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import Trainer, train

SPEC = """
name: faults
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
forward_process: {{name: {process}}}
sampler: {{name: ancestral, steps: 8}}
evaluators:
  - {{name: nll, every: {every}, draws: 1}}
trainer: {{max_steps: {steps}, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: {ckpt},
          keep_checkpoints: 2, log_every: 1, eval_batch_size: 16, num_samples: 0, threads: 1}}
"""


def _spec(folder: Path, process: str = "absorbing", steps: int = 8, ckpt: int = 2, every: int = 4) -> Path:
    path = folder / f"{process}.yaml"
    path.write_text(SPEC.format(out=folder / "runs", process=process, steps=steps, ckpt=ckpt, every=every))
    return path


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(run_dir) if m["kind"] == "train"]


def _evals(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["val/nll"]) for m in read_metrics(run_dir) if m["kind"] == "eval"]


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 8-step run (checkpoints at 6 and 8 kept): what every recovery must equal."""
    folder = tmp_path_factory.mktemp("reference")
    train(load_spec(_spec(folder)), run_dir=folder / "run", quiet=True)
    return folder / "run"


@pytest.fixture
def run(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(reference, copy, ignore=shutil.ignore_patterns("*.lock"))
    return copy


# --------------------------------------------------------------------------------------------
# Integrity: every byte of a checkpoint is checked on load
# --------------------------------------------------------------------------------------------


def _small_checkpoint(ckpt_dir: Path, step: int = 4, scale: float = 1.0) -> Path:
    gen = torch.Generator().manual_seed(step)
    weights = {"model": {"w": torch.randn(4, 4, generator=gen) * scale, "b": torch.randn(4, generator=gen)}}
    groups: dict[str, dict[str, Any]] = {
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 4, generator=gen)}},
            "param_groups": [{"lr": 0.003, "eps": 1e-8, "params": [0]}],
        },
        "trainer": {"step": step, "elapsed": 1.25, "rng": {"cpu": torch.arange(8, dtype=torch.uint8)}},
    }
    return checkpoint.save_checkpoint(ckpt_dir, step, weights, groups, keep=5)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _small_checkpoint(tmp_path_factory.mktemp("pristine") / "ckpt")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, 10), offset=st.integers(0, 1 << 20), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected_or_changes_nothing(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, which: int, offset: int, bit: int
) -> None:
    """Law: after flipping any bit of any file, loading either fails naming that file (exit 3)
    or returns exactly what was saved (a flip that JSON reads the same, like ``1e-08``→``1E-08``)."""
    expected = checkpoint.load_checkpoint(pristine)
    copy = tmp_path_factory.mktemp("flip") / pristine.name
    shutil.copytree(pristine, copy)
    files = sorted(p for p in copy.iterdir())
    target = files[which % len(files)]
    _flip(target, offset, bit)
    try:
        step, weights, groups = checkpoint.load_checkpoint(copy)
    except checkpoint.DamagedCheckpoint as exc:
        assert exc.exit_code == 3 and target.name in str(exc)
        return
    assert step == expected[0]
    assert all(torch.equal(v, expected[1]["model"][k]) for k, v in weights["model"].items())
    assert json.dumps(groups["trainer"], default=str) == json.dumps(expected[2]["trainer"], default=str)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "optimizer.safetensors", "trainer.safetensors", "meta.json"]
)
def test_truncated_or_missing_files_are_named(pristine: Path, tmp_path: Path, name: str) -> None:
    for damage in ("truncate", "delete"):
        copy = tmp_path / damage / pristine.name
        shutil.copytree(pristine, copy)
        target = copy / name
        if damage == "truncate":
            target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        else:
            target.unlink()
        with pytest.raises(checkpoint.DamagedCheckpoint, match=name.replace(".", r"\.")) as info:
            checkpoint.load_checkpoint(copy)
        assert info.value.exit_code == 3


def test_a_checkpoint_under_another_step_is_refused(pristine: Path, tmp_path: Path) -> None:
    moved = tmp_path / "ckpt" / "step-00000008"
    shutil.copytree(pristine, moved)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="is for step 4 but its folder is step-00000008"):
        checkpoint.verify(moved)


def test_files_are_world_readable_like_any_output(pristine: Path) -> None:
    for path in pristine.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask(), path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --------------------------------------------------------------------------------------------
# Resuming: which checkpoint, and what if it does not fit
# --------------------------------------------------------------------------------------------


def test_damaged_newest_checkpoint_is_refused_with_the_command_that_resumes_from_the_previous(
    run: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _flip(run / "ckpt" / "step-00000008" / "model.safetensors", 5000)
    code = main(["train", "--resume", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err
    assert "step-00000008/model.safetensors changed after it was written" in err
    assert f"mdm train --resume {run} --from-step 6" in err
    assert (run / "ckpt" / "step-00000008").is_dir(), "nothing is deleted"
    assert main(["eval", str(run)]) == 3 and "model.safetensors changed" in capsys.readouterr().err
    # Taking the offer resumes exactly: steps 7 and 8 come out as in the uninterrupted run.
    trainer = Trainer(load_spec(run / "resolved.yaml"), run, quiet=True)
    assert trainer.restore(from_step=6) and trainer.step == 6
    assert "--from-step 6" in capsys.readouterr().err
    assert (run / "ckpt" / "latest").read_text() == "step-00000006"
    trainer.fit()
    assert _losses(run) == _losses(reference) and _evals(run) == _evals(reference)
    assert checkpoint.resume_point(run / "ckpt") == checkpoint.ResumePoint(run / "ckpt" / "step-00000008", 8)


@pytest.mark.parametrize("damage", ["missing", "deleted target", "garbage"])
def test_missing_or_broken_latest_resumes_from_the_newest_valid_and_says_so(
    run: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = run / "ckpt"
    if damage == "missing":
        (ckpt / "latest").unlink()
        expected = 8
    elif damage == "deleted target":  # what the old advice "delete it" left behind
        shutil.rmtree(ckpt / "step-00000008")
        expected = 6
    else:
        (ckpt / "latest").write_text("\x00\x00garbage")
        expected = 8
    trainer = Trainer(load_spec(run / "resolved.yaml"), run, quiet=True)
    assert trainer.restore() and trainer.step == expected
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and f"resuming from the newest valid checkpoint {ckpt}" in note
    assert (ckpt / "latest").read_text() == f"step-{expected:08d}"
    assert [m["step"] for m in read_metrics(run)][-1] == expected


@pytest.mark.parametrize("pointer", ["../../elsewhere/step-00000008", "/etc", "symlink"])
def test_latest_pointing_outside_the_run_is_refused(run: Path, tmp_path: Path, pointer: str) -> None:
    latest = run / "ckpt" / "latest"
    if pointer == "symlink":
        outside = tmp_path / "outside"
        outside.write_text("step-00000008")
        latest.unlink()
        latest.symlink_to(outside)
    else:
        latest.write_text(pointer)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="points outside the run") as info:
        checkpoint.resume_point(run / "ckpt")
    assert info.value.exit_code == 3 and "--from-step 8" in str(info.value)


def test_checkpoint_of_another_model_or_state_is_refused_before_loading(run: Path) -> None:
    ckpt = run / "ckpt"
    step, weights, groups = checkpoint.load_checkpoint(ckpt / "step-00000008")
    spec = load_spec(run / "resolved.yaml")
    # A checkpoint of another architecture: exit 2, naming the file, the key and both shapes.
    wide = Trainer(load_spec(run / "resolved.yaml", ["backbone.dim=48"]), run, quiet=True)
    with pytest.raises(
        SpecError, match=r"model\.safetensors does not fit the spec's model .*\(32,\).*\(48,\)"
    ):
        wide.restore()
    trainer = Trainer(spec, run, quiet=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    # A missing key, in a checkpoint whose checksums are intact (written that way): exit 2.
    name = sorted(weights["model"])[0]
    weights["model"].pop(name)
    checkpoint.save_checkpoint(ckpt, 10, weights, {**groups, "trainer": {**groups["trainer"], "step": 10}}, 5)
    with pytest.raises(SpecError, match=f"missing {name}"):
        trainer.restore()
    # A wrong step: step 8's state sealed as step 12 is refused, not resumed with other numbers.
    _, weights, _ = checkpoint.load_checkpoint(ckpt / "step-00000008")
    checkpoint.save_checkpoint(ckpt, 12, weights, groups, 5)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="trainer state is of step 8"):
        trainer.restore()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_optimizer_state_of_another_model_is_refused() -> None:
    model = torch.nn.Linear(3, 2)
    other = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(other.parameters())
    other(torch.ones(1, 4)).sum().backward()
    opt.step()
    with pytest.raises(SpecError, match=r"optimizer\.safetensors: optimiser state 0\.exp_avg is \(2, 4\)"):
        checkpoint.check_optimizer_fits(
            Path("optimizer.safetensors"), opt.state_dict(), torch.optim.AdamW(model.parameters())
        )


# --------------------------------------------------------------------------------------------
# Writing: leftovers, pruning, non-finite state, full or read-only disks
# --------------------------------------------------------------------------------------------


def test_leftovers_of_a_killed_save_are_ignored_and_latest_is_never_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ckpt"
    for step in (2, 4):
        _small_checkpoint(ckpt, step)

    def killed(*_: object) -> None:
        raise KeyboardInterrupt  # a kill after the rename, before the pointer moved

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_write_pointer", killed)
        with pytest.raises(KeyboardInterrupt):
            _small_checkpoint(ckpt, 6)
    (ckpt / ".tmp-step-00000008").mkdir()  # and a kill in the middle of writing step 8
    assert (ckpt / "step-00000006" / "meta.json").is_file()
    assert checkpoint.resume_point(ckpt) == checkpoint.ResumePoint(ckpt / "step-00000004", 4)
    assert checkpoint.newest_valid(ckpt) == ckpt / "step-00000004", "a leftover is never offered"
    # Resumed from step 4 with keep=1 and another cadence: step 5 is committed and kept (a
    # pruning that counted the leftover step 6 deleted it and left ``latest`` naming nothing).
    gen_weights = {"model": {"w": torch.zeros(2)}}
    checkpoint.save_checkpoint(ckpt, 5, gen_weights, {}, keep=1)
    assert (ckpt / "latest").read_text() == "step-00000005"
    assert checkpoint.resume_point(ckpt) == checkpoint.ResumePoint(ckpt / "step-00000005", 5)
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-00000005", "step-00000006"]
    # Reaching the leftover's step replaces it; saving a committed step again changes nothing.
    checkpoint.save_checkpoint(ckpt, 6, gen_weights, {}, keep=1)
    checkpoint.save_checkpoint(ckpt, 6, {"model": {"w": torch.ones(2)}}, {}, keep=1)
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-00000006"]
    assert torch.equal(checkpoint.load_checkpoint(ckpt / "step-00000006")[1]["model"]["w"], torch.zeros(2))


class _PoisonAt:
    """A plug-in whose step hook writes NaN into the weights at a checkpoint step."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def mdm_step_end(self, run: Any, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))


def test_non_finite_state_is_never_written_and_the_newest_finite_checkpoint_is_named(tmp_path: Path) -> None:
    pm = get_registry().pm
    poison = _PoisonAt(6)  # a checkpoint step that is no evaluation step: only the save sees it
    pm.register(poison, name="poison")
    try:
        with pytest.raises(TrainingDiverged) as info:
            train(load_spec(_spec(tmp_path)), run_dir=tmp_path / "run", quiet=True)
    finally:
        pm.unregister(poison)
    ckpt = tmp_path / "run" / "ckpt"
    assert info.value.exit_code == 4
    assert "(not checkpointed) became NaN/Inf at step 6; stopped at step 6" in str(info.value)
    assert f"the newest finite checkpoint is {ckpt / 'step-00000004'}" in str(info.value)
    assert not (ckpt / "step-00000006").exists() and not list(ckpt.glob(".tmp*"))
    assert checkpoint.resume_point(ckpt) == checkpoint.ResumePoint(ckpt / "step-00000004", 4)


def test_non_finite_optimizer_state_is_found_and_such_checkpoints_are_not_offered(tmp_path: Path) -> None:
    state = {
        "model": {"w": torch.ones(2)},
        "optimizer": {"state": {3: {"exp_avg_sq": torch.tensor([1.0, float("inf")])}}},
    }
    assert checkpoint.first_non_finite(state) == "optimizer.state.3.exp_avg_sq"
    assert (
        checkpoint.first_non_finite({"model": {"w": torch.ones(2)}, "count": {"n": torch.tensor(3)}}) is None
    )
    ckpt = tmp_path / "ckpt"
    _small_checkpoint(ckpt, 2)
    _small_checkpoint(ckpt, 4, scale=float("nan"))  # as an older mdm could have written it
    assert checkpoint.newest_valid(ckpt, finite=True) == ckpt / "step-00000002"


def _full_after(budget: int, fail: int = errno.ENOSPC) -> Any:
    """A drop-in for the checkpoint writer that fills the disk after ``budget`` bytes: the file
    being written is left partial, as a real full disk leaves it."""
    real = checkpoint._write_bytes
    left = [budget]

    def write(path: Path, data: bytes) -> str:
        if len(data) <= left[0]:
            left[0] -= len(data)
            return real(path, data)
        path.write_bytes(data[: left[0]])
        left[0] = 0
        raise OSError(fail, os.strerror(fail), str(path))

    return write


def test_full_disk_while_saving_is_exit_3_and_resume_works_once_space_is_freed(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    size = sum(p.stat().st_size for p in (reference / "ckpt" / "step-00000008").iterdir())
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "_write_bytes", _full_after(2 * size + size // 2))
        code = main(["train", str(_spec(tmp_path)), "--run-dir", str(run_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and "Traceback" not in err, err
    assert (
        "could not write the checkpoint of step 6 to" in err
        and "the disk is full" in err
        and "MiB free" in err
    )
    assert f"the previous checkpoint {run_dir / 'ckpt' / 'step-00000004'} is intact" in err
    ckpt = run_dir / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-00000002", "step-00000004"]
    checkpoint.verify(ckpt / "step-00000004")
    # The disk also cut the metrics file mid-line; once space is freed the run resumes exactly.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 7, "elaps')
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert "skipping a torn last line" in capsys.readouterr().err
    assert _losses(run_dir) == _losses(reference) and _evals(run_dir) == _evals(reference)


def test_read_only_directory_is_exit_3_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "ckpt"
    _small_checkpoint(ckpt, 2)
    monkeypatch.setattr(checkpoint, "_write_bytes", _full_after(0, errno.EROFS))
    with pytest.raises(MdmError, match=r"step-00000004/model\.safetensors: Read-only file system") as info:
        _small_checkpoint(ckpt, 4)
    assert info.value.exit_code == 3 and "MiB free" in str(info.value)
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-00000002"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (root only; skipped with the reason where mounting is not permitted)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_and_read_only_tmpfs(tmpfs: Path) -> None:
    """A tiny real filesystem: full, then read-only; the committed checkpoint survives both
    and saving works again once space is freed or the mount is writable."""
    ckpt = tmpfs / "ckpt"
    big = {"model": {"w": torch.zeros(100_000)}}  # 400 kB: two fit in 1 MiB, three do not
    for step in (1, 2):
        checkpoint.save_checkpoint(ckpt, step, big, {}, keep=2)
    with pytest.raises(MdmError, match="the disk is full") as info:
        checkpoint.save_checkpoint(ckpt, 3, big, {}, keep=2)
    assert info.value.exit_code == 3 and str(tmpfs) in str(info.value)
    assert checkpoint.resume_point(ckpt) == checkpoint.ResumePoint(ckpt / "step-00000002", 2)
    assert not list(ckpt.glob(".tmp*")), "a failed save leaves no staging folder taking space"
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    checkpoint.save_checkpoint(ckpt, 3, big, {}, keep=2)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    with pytest.raises(MdmError, match="Read-only file system") as info:
        checkpoint.save_checkpoint(ckpt, 4, big, {}, keep=2)
    assert info.value.exit_code == 3
    assert checkpoint.resume_point(ckpt) == checkpoint.ResumePoint(ckpt / "step-00000003", 3)


# --------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "eval", "st\x00\x00')
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
    assert "metrics.jsonl:4: skipping a torn last line" in capsys.readouterr().err
    truncate_metrics(tmp_path, 2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(line + "\n" for line in lines[:2])
    # A damaged line that is not the last is no tear: an error naming it, nothing rewritten.
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(MdmError, match=r"metrics\.jsonl:2 is not a metrics record") as info:
        truncate_metrics(tmp_path, 1)
    assert info.value.exit_code == 3 and "not json" in (tmp_path / "metrics.jsonl").read_text()


def test_compare_skips_a_torn_line_instead_of_crashing(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "eval", "step": 9, "val/n')
    assert main(["compare", str(run)]) == 0
    assert "skipping a torn last line" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# torchrun: every rank saves and restores its own forward-process state
# --------------------------------------------------------------------------------------------

SNAPSHOT = """
import shutil, sys
from mdm_core import hookimpl
from mdm_core.cli import main
from mdm_core.plugins import get_registry

class Snapshot:
    # What a kill -9 of every rank after step 5 leaves on disk (a checkpoint at step 3).
    @hookimpl
    def mdm_step_end(self, run, step, metrics):
        if step == 5 and run.rank == 0:
            shutil.copytree(run.run_dir, SNAPSHOT)

SNAPSHOT = sys.argv[1]
get_registry().pm.register(Snapshot(), name="snapshot")
sys.exit(main(sys.argv[2:]))
"""


def test_torchrun_resume_with_a_stateful_process_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("mdm_plugin_puma")
    spec = _spec(tmp_path, process="puma", steps=6, ckpt=3, every=0)
    script = tmp_path / "snapshot.py"
    script.write_text(SNAPSHOT)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    out = subprocess.run(
        [*torchrun, str(script), str(killed), "train", str(spec), "--run-dir", str(full), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (killed / "ckpt" / "latest").read_text() == "step-00000003"
    out = subprocess.run(
        [*torchrun, "-m", "mdm_core.cli", "train", "--resume", str(killed), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert _losses(killed) == _losses(full) and _evals(killed) == _evals(full)
    final_full, final_killed = full / "ckpt" / "step-00000006", killed / "ckpt" / "step-00000006"
    for rank in (0, 1):
        mine = checkpoint.rank_state(final_killed, "forward_process", rank, 2)
        theirs = checkpoint.rank_state(final_full, "forward_process", rank, 2)
        assert all(torch.equal(mine[k], theirs[k]) for k in ("x0", "z", "stage"))
    rank0 = checkpoint.rank_state(final_full, "forward_process", 0, 2)
    rank1 = checkpoint.rank_state(final_full, "forward_process", 1, 2)
    assert not torch.equal(rank0["z"], rank1["z"]), "each rank has its own pool"
    with pytest.raises(SpecError, match="holds the forward_process state of 2 process"):
        checkpoint.rank_state(final_full, "forward_process", 0, 1)
    digest = hashlib.sha256((final_full / "forward_process.rank-00001.safetensors").read_bytes()).hexdigest()
    assert (
        json.loads((final_full / "meta.json").read_text())["files"]["forward_process.rank-00001.safetensors"][
            "sha256"
        ]
        == digest
    )
