"""The training job end to end on a tiny spec: run directory, exact resume, divergence, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mdm_core import hookimpl
from mdm_core.errors import TrainingDiverged
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import train


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(run_dir) if m["kind"] == "train"]


def _evals(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["val/nll"]) for m in read_metrics(run_dir) if m["kind"] == "eval"]


def test_run_directory_holds_everything(tiny_spec: Path) -> None:
    summary = train(load_spec(tiny_spec, ["trainer.ema=0.9"]), quiet=True)
    run_dir = Path(summary["run_dir"])
    for name in (
        "spec.yaml",
        "resolved.yaml",
        "overrides.json",
        "plugins.lock",
        "env.json",
        "tokenizer.json",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
        "samples.txt",
    ):
        assert (run_dir / name).is_file(), name
    lock = (run_dir / "plugins.lock").read_text()
    assert "mdm-core==" in lock and "backbone dit -> mdm-plugin-dit" in lock
    assert json.loads((run_dir / "overrides.json").read_text())["overrides"] == ["trainer.ema=0.9"]
    assert [s for s, _ in _evals(run_dir)] == [4, 8]
    assert summary["final"]["val/nll"] == pytest.approx(_evals(run_dir)[-1][1])
    assert (run_dir / "ckpt" / "latest").read_text().strip() == "step-00000008"
    assert not list((run_dir / "ckpt").glob(".tmp*")), "no temporary checkpoint left behind"
    # A second run of the same spec never overwrites the first.
    second = Path(train(load_spec(tiny_spec), quiet=True)["run_dir"])
    assert second != run_dir and second.parent == run_dir.parent


class _CrashAt:
    """A real plug-in object whose step hook kills the run at a given step (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def test_killed_and_resumed_run_matches_uninterrupted(tiny_spec: Path, tmp_path: Path) -> None:
    overrides = ["trainer.max_steps=10", "trainer.ckpt_every=3", "trainer.ema=0.5"]
    full = Path(train(load_spec(tiny_spec, overrides), quiet=True)["run_dir"])
    pm = get_registry().pm
    crash = _CrashAt(step=7)
    pm.register(crash, name="crash")
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_spec(tiny_spec, overrides), run_dir=tmp_path / "killed", quiet=True)
    finally:
        pm.unregister(crash)
    killed = tmp_path / "killed"
    assert (killed / "ckpt" / "latest").read_text().strip() == "step-00000006"
    resumed = train(load_spec(killed / "resolved.yaml"), run_dir=killed, resume=True, quiet=True)
    assert _losses(killed) == _losses(full)
    assert _evals(killed) == _evals(full)
    assert resumed["final"]["val/nll"] == json.loads((full / "summary.json").read_text())["final"]["val/nll"]


class _Poison:
    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        if step == 2:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("nan"))  # type: ignore[attr-defined]


def test_nan_stops_with_a_clear_error(tiny_spec: Path) -> None:
    pm = get_registry().pm
    poison = _Poison()
    pm.register(poison, name="poison")
    try:
        with pytest.raises(TrainingDiverged, match="NaN/Inf at step 3") as info:
            train(load_spec(tiny_spec), quiet=True)
    finally:
        pm.unregister(poison)
    assert info.value.exit_code == 4 and "trainer.lr" in str(info.value)


def _mdm(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mdm_core.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def test_cli_errors_exit_2_without_traceback(tiny_spec: Path) -> None:
    out = _mdm("train", str(tiny_spec), "trainer.max_stepz=3")
    assert out.returncode == 2
    assert "trainer.max_stepz" in out.stderr and "did you mean 'max_steps'" in out.stderr
    assert "Traceback" not in out.stderr
    out = _mdm("train", str(tiny_spec), "backbone.name=ditt")
    assert out.returncode == 2 and "did you mean 'dit'" in out.stderr and "Traceback" not in out.stderr


def test_cli_train_eval_sample(tiny_spec: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "cli-run"
    out = _mdm("train", str(tiny_spec), "--run-dir", str(run_dir), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "done: val_nll" in out.stdout and "entropy floor" in out.stdout
    ev = _mdm("eval", str(run_dir), "--json")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    assert metrics["val/nll"] == pytest.approx(final["val/nll"], rel=1e-5)
    sample = _mdm("sample", str(run_dir), "--num", "2", "--sampler", "confidence", "--steps", "8")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.count("--- sample") == 2 and "NFE" in sample.stdout


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun is part of torch; missing only in broken installs",
)
def test_torchrun_two_processes_match_one(tiny_spec: Path, tmp_path: Path) -> None:
    overrides = [
        "trainer.max_steps=24",
        "trainer.ckpt_every=24",
        "evaluators.0.every=24",
        "trainer.num_samples=0",
    ]
    single = train(load_spec(tiny_spec, overrides), run_dir=tmp_path / "one", quiet=True)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    out = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mdm_core.cli",
            "train",
            str(tiny_spec),
            *overrides,
            "--run-dir",
            str(tmp_path / "two"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert json.loads((tmp_path / "two" / "env.json").read_text())["world_size"] == 2
    assert two["tokens"] == single["tokens"]
    # Same data, same global batch; only the per-rank masking noise differs.
    assert two["final"]["val/nll"] == pytest.approx(single["final"]["val/nll"], rel=0.05)
