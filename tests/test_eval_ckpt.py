"""Watching a run: ``curves.png`` is redrawn at every evaluation (not only at the end), and
``mdm eval`` says which checkpoint it evaluates, shows progress, and evaluates the one ``--ckpt``
names after verifying it like a resume (unknown step: exit 2 listing those there are)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mdm_core import checkpoint, hookimpl
from mdm_core.cli import main
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec
from mdm_core.trainer import train


class CurveWatcher:
    """After each step: does curves.png exist, and when was it last written?"""

    def __init__(self, run_dir: Path) -> None:
        self.curves = run_dir / "curves.png"
        self.seen: dict[int, int | None] = {}

    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        self.seen[step] = self.curves.stat().st_mtime_ns if self.curves.is_file() else None


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CurveWatcher]]:
    """The conftest's tiny spec (8 steps, evaluations and checkpoints at 4 and 8), trained once."""
    from tests.conftest import TINY_SPEC

    tmp = tmp_path_factory.mktemp("watched")
    spec = tmp / "tiny.yaml"
    spec.write_text(TINY_SPEC.format(out=tmp / "runs"))
    run_dir = tmp / "run"
    watcher = CurveWatcher(run_dir)
    registry = get_registry()
    registry.pm.register(watcher, name="curve-watcher")
    try:
        train(load_spec(spec), run_dir=run_dir, quiet=True)
    finally:
        registry.pm.unregister(watcher)
    yield run_dir, watcher


def test_curves_are_redrawn_at_every_evaluation(watched_run: tuple[Path, CurveWatcher]) -> None:
    _, watcher = watched_run
    assert watcher.seen[3] is None  # nothing evaluated yet
    assert watcher.seen[4] is not None  # the evaluation at step 4 drew it, mid-run
    assert watcher.seen[5] == watcher.seen[4]  # not redrawn between evaluations


def test_eval_states_the_step_and_shows_progress(
    watched_run: tuple[Path, CurveWatcher], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = watched_run
    assert main(["eval", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split() == ["step", "8"]
    assert f"eval: {run_dir} at step 8, 1 evaluator(s)" in captured.err
    assert "[1/1] nll in " in captured.err


def test_an_unknown_step_is_exit_2_listing_the_steps(
    watched_run: tuple[Path, CurveWatcher], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = watched_run
    assert main(["eval", str(run_dir), "--ckpt", "5"]) == 2
    assert f"eval --ckpt 5: {run_dir} has no checkpoint of step 5; its checkpoints are of steps 4, 8" in (
        capsys.readouterr().err
    )


def test_ckpt_evaluates_that_checkpoint_verified_like_a_resume(
    watched_run: tuple[Path, CurveWatcher], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = watched_run
    assert main(["eval", str(run_dir), "--ckpt", "4", "--json"]) == 0
    captured = capsys.readouterr()
    at_4 = json.loads(captured.out)
    assert "at step 4" in captured.err
    assert main(["eval", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val/nll"] != at_4["val/nll"]
    recorded = {m["step"]: m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if m["kind"] == "eval"}  # fmt: skip
    assert at_4["val/nll"] == pytest.approx(recorded[4]["val/nll"], rel=1e-5)

    weights = checkpoint.step_dir(run_dir / "ckpt", 4) / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + bytes(b ^ 0xFF for b in original[-8:]))  # its digest fails
    try:
        assert main(["eval", str(run_dir), "--ckpt", "4"]) == 3
        assert "model.safetensors" in capsys.readouterr().err
        assert main(["eval", str(run_dir)]) == 0  # the latest is untouched
    finally:
        weights.write_bytes(original)
