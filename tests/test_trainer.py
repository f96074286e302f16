"""The training job end to end on a tiny spec: run directory, exact resume, divergence, DDP, and the
real ``Trainer`` with a stateful forward process under gradient accumulation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mdm_core import checkpoint, hookimpl
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.errors import TrainingDiverged
from mdm_core.interfaces import Batch, RunShape, TimeSampler, TrainingExample
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics
from mdm_core.spec import Component, ResolvedSpec, load_spec
from mdm_core.trainer import Trainer, train


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
    assert "mdm-diffusion==" in lock and "backbone dit -> mdm-plugin-dit" in lock
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


def _poisoned(spec: ResolvedSpec) -> pytest.ExceptionInfo[TrainingDiverged]:
    pm = get_registry().pm
    poison = _Poison()
    pm.register(poison, name="poison")
    try:
        with pytest.raises(TrainingDiverged) as info:
            train(spec, quiet=True)
    finally:
        pm.unregister(poison)
    assert info.value.exit_code == 4 and "trainer.lr" in str(info.value)
    return info


def test_nan_on_a_non_log_step_is_named_exactly_by_the_gradient_norm(tiny_spec: Path) -> None:
    # Step 3 is not a log step (log_every=2): its NaN gradient norm is recorded on the device
    # and reported at the next report step (4), before step 4's checkpoint would be written.
    info = _poisoned(load_spec(tiny_spec))
    assert "gradient norm became NaN/Inf at step 3; stopped at step 4" in str(info.value)
    runs = next((tiny_spec.parent / "runs").iterdir())
    assert not (runs / "ckpt" / "step-00000004").exists()


def test_nan_without_clipping_is_caught_by_the_next_logged_loss(tiny_spec: Path) -> None:
    info = _poisoned(load_spec(tiny_spec, ["trainer.grad_clip=0"]))
    assert "loss became NaN/Inf at step 4; stopped at step 4" in str(info.value)


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


# --------------------------------------------------------------------------------------------
# A stateful process with feedback, through the real Trainer with grad_accum > 1
# --------------------------------------------------------------------------------------------


class CountingProcess(AbsorbingProcess):
    """Absorbing masking whose loss weights follow a tensor state fed back from the logits.

    It records the order of ``prepare``/``feedback`` calls, checks that each micro-batch has the
    run shape's per-rank micro size, that feedback gets detached logits of the example it made,
    and (through ``watch``, the model the test hands it) that feedback comes after the
    optimiser step. Its state (a step count and a running mean of the logits) changes the loss,
    so a resume that lost it would not reproduce the uninterrupted run.
    """

    stateful = True
    wants_feedback = True

    def __init__(self, params: AbsorbingProcess.Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.feedbacks = 0
        self.mean_logits = torch.zeros(shape.vocab.size)
        self.calls: list[tuple[str, int]] = []
        self.pending: list[tuple[TrainingExample, Tensor | None]] = []
        self.watch: torch.nn.Module | None = None

    def weights(self) -> Tensor | None:
        if self.watch is None:
            return None
        return torch.cat([p.detach().flatten() for p in self.watch.parameters()])

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        assert batch.size == self.require_shape().batch_size
        example = super().prepare(batch, time_sampler, generator, progress)
        scale = 1.0 + 0.5 * torch.tanh(self.mean_logits.mean())
        example = example.with_weights(example.weights * scale)
        self.calls.append(("prepare", len(self.pending)))
        self.pending.append((example, self.weights()))
        return example

    def likelihood_process(self) -> AbsorbingProcess:
        return AbsorbingProcess(self.params, self.require_shape())

    def feedback(self, example: TrainingExample, logits: Tensor) -> None:
        made, before = self.pending.pop(0)
        assert made is example and not logits.requires_grad
        after = self.weights()
        if before is not None and after is not None:
            assert not torch.equal(before, after), "feedback came before the optimiser step"
        self.calls.append(("feedback", len(self.pending)))
        self.feedbacks += 1
        self.mean_logits = 0.9 * self.mean_logits + 0.1 * logits.float().mean(dim=(0, 1)).cpu()

    def state_dict(self) -> dict[str, object]:
        return {"feedbacks": self.feedbacks, "mean_logits": self.mean_logits.clone()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.feedbacks = int(state["feedbacks"])  # type: ignore[call-overload]
        mean = state["mean_logits"]
        assert isinstance(mean, Tensor)
        self.mean_logits = mean.clone()


class NoFeedback(CountingProcess):
    wants_feedback = False


def with_process(spec: ResolvedSpec, cls: type[AbsorbingProcess]) -> ResolvedSpec:
    """``spec`` training with ``cls`` (keeping the registered name, so the run files stay valid)."""
    old = spec.components["forward_process"]
    spec.components["forward_process"] = Component(old.kind, old.name, cls, old.params, old.where)
    return spec


ACCUM = ["trainer.grad_accum=2", "trainer.max_steps=6", "trainer.ckpt_every=3", "trainer.num_samples=0"]


def test_feedback_per_micro_step_in_order_after_the_optimiser_step(tiny_spec: Path, tmp_path: Path) -> None:
    trainer = Trainer(
        with_process(load_spec(tiny_spec, ACCUM), CountingProcess), tmp_path / "run", quiet=True
    )
    process = trainer.parts.forward_process
    assert isinstance(process, CountingProcess)
    assert trainer.shape.batch_size == 4 and trainer.shape.grad_accum == 2  # 8 / world 1 / accum 2
    process.watch = trainer.model
    for _ in range(3):
        trainer.train_step()
    one_step = [("prepare", 0), ("prepare", 1), ("feedback", 1), ("feedback", 0)]
    assert process.calls == one_step * 3
    assert process.feedbacks == 6 and not process.pending


def test_logits_are_not_fed_back_unless_asked(tiny_spec: Path, tmp_path: Path) -> None:
    trainer = Trainer(with_process(load_spec(tiny_spec, ACCUM), NoFeedback), tmp_path / "run", quiet=True)
    trainer.train_step()
    process = trainer.parts.forward_process
    assert isinstance(process, NoFeedback)
    assert process.feedbacks == 0 and [c for c, _ in process.calls] == ["prepare", "prepare"]


def test_stateful_process_state_is_checkpointed_and_resumes_exactly(tiny_spec: Path, tmp_path: Path) -> None:
    full_dir = tmp_path / "full"
    full = train(with_process(load_spec(tiny_spec, ACCUM), CountingProcess), run_dir=full_dir, quiet=True)
    step, weights, groups = checkpoint.load_checkpoint(full_dir / "ckpt" / "step-00000006")
    assert step == 6 and groups["forward_process"]["feedbacks"] == 12
    assert groups["forward_process"]["mean_logits"].abs().sum() > 0

    pm = get_registry().pm
    crash = _CrashAt(step=5)
    pm.register(crash, name="crash")
    killed = tmp_path / "killed"
    try:
        with pytest.raises(KeyboardInterrupt):
            train(with_process(load_spec(tiny_spec, ACCUM), CountingProcess), run_dir=killed, quiet=True)
    finally:
        pm.unregister(crash)
    assert (killed / "ckpt" / "latest").read_text().strip() == "step-00000003"
    resumed = train(
        with_process(load_spec(tiny_spec, ACCUM), CountingProcess), run_dir=killed, resume=True, quiet=True
    )
    assert _losses(killed) == _losses(full_dir)
    assert resumed["final"] == full["final"]
    _, resumed_weights, resumed_groups = checkpoint.load_checkpoint(killed / "ckpt" / "step-00000006")
    assert resumed_groups["forward_process"]["feedbacks"] == 12
    assert torch.equal(
        resumed_groups["forward_process"]["mean_logits"], groups["forward_process"]["mean_logits"]
    )
    assert all(torch.equal(v, weights["model"][k]) for k, v in resumed_weights["model"].items())


def test_rng_state_round_trips_and_a_cuda_state_is_handled(tmp_path: Path) -> None:
    state = checkpoint.rng_state()
    assert ("cuda" in state) == torch.cuda.is_available()
    # A checkpoint from a GPU machine: the CUDA generator states come back (keys as ints) and are
    # restored where CUDA exists, ignored on a CPU-only machine; the CPU state always returns.
    fake_cuda = {"0": torch.arange(16, dtype=torch.uint8)}
    saved = {**state, "cuda": state.get("cuda", fake_cuda)}
    checkpoint.save_checkpoint(tmp_path, 1, {}, {"trainer": {"rng": saved}}, keep=1)
    _, _, groups = checkpoint.load_checkpoint(tmp_path / "step-00000001")
    expected = torch.rand(3)
    checkpoint.set_rng_state(groups["trainer"]["rng"])
    assert torch.equal(torch.rand(3), expected)
    if torch.cuda.is_available():
        assert torch.equal(torch.cuda.get_rng_state(0), state["cuda"]["0"])


SLOW_END = """
import atexit, os, sys, time
from pathlib import Path
from mdm_core import hookimpl
from mdm_core.cli import main
from mdm_core.plugins import get_registry

OUT = Path(sys.argv[1])
RANK = os.environ["RANK"]

class SlowRankZero:
    # Rank 0 is slow to finish (plots, samples on a loaded machine).
    @hookimpl
    def mdm_run_end(self, run, metrics):
        if RANK == "0":
            time.sleep(3)
            (OUT / "rank0-end").write_text(repr(time.time()))

atexit.register(lambda: (OUT / f"rank{RANK}-exit").write_text(repr(time.time())))
get_registry().pm.register(SlowRankZero(), name="slow-rank-zero")
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun is part of torch; missing only in broken installs",
)
def test_no_rank_leaves_while_rank_zero_is_still_finishing(tiny_spec: Path, tmp_path: Path) -> None:
    """Every rank waits for rank 0 at the end, so none destroys its process group while rank 0
    still writes its summary, plots and samples."""
    script = tmp_path / "slow_end.py"
    script.write_text(SLOW_END)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    overrides = [
        "trainer.max_steps=4",
        "trainer.ckpt_every=4",
        "evaluators.0.every=4",
        "trainer.num_samples=0",
    ]
    out = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), "train",
         str(tiny_spec), *overrides, "--run-dir", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rank0_end = float((tmp_path / "rank0-end").read_text())
    assert float((tmp_path / "rank1-exit").read_text()) >= rank0_end
