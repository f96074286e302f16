"""The TensorBoard logger through real training runs: what it writes (read back with
TensorBoard's own reader), that it is off unless enabled, how its section's errors read, and
that a failing writer never stops training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mdm_core.cli import main
from mdm_core.errors import SpecError
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import RunContext, train

SPEC = """
name: tb
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 16}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
sampler: {{name: ancestral, steps: 4}}
evaluators:
  - {{name: nll, every: 2, draws: 1}}
  - {{name: nll_by_t, every: 2, buckets: 2, max_batches: 1}}
trainer: {{max_steps: 4, batch_size: 4, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 2, log_every: 1,
          eval_batch_size: 16, num_samples: 1}}
"""
ON = "tensorboard.enabled=true"


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tb.yaml"
    path.write_text(SPEC.format(out=tmp_path / "runs"))
    return path


def run(spec_file: Path, *overrides: str) -> Path:
    return Path(train(load_spec(spec_file, list(overrides)), quiet=True)["run_dir"])


def events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in acc.Scalars(tag)]


def test_the_registration_module_imports_neither_torch_nor_tensorboard() -> None:
    code = "import sys, mdm_plugin_tensorboard\nprint(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'torch'" not in out.stdout and "'tensorboard'" not in out.stdout
    assert get_registry().sections["tensorboard"].plugin.label == "mdm-plugin-tensorboard 0.1.0"


def test_an_enabled_run_logs_every_metric_nll_by_t_and_samples(spec_file: Path) -> None:
    run_dir = run(spec_file, ON)
    acc = events(run_dir / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    train_tags = {"train/loss", "train/lr", "train/tok_per_s"}
    assert train_tags <= scalars and {"val/nll", "val/bpt", "val/ppl"} <= scalars
    buckets = sorted(t for t in scalars if t.startswith("nll_by_t/") and t != "nll_by_t/all")
    assert len(buckets) == 2 and "nll_by_t/all" in scalars
    for tag in train_tags:
        assert steps(acc, tag) == [1, 2, 3, 4], tag
    for tag in ["val/nll", *buckets]:
        assert steps(acc, tag) == [2, 4], tag
    # The values are the run's own (metrics.jsonl), to float32 precision.
    records = read_metrics(run_dir)
    logged = {(r["step"], k): v for r in records for k, v in r.items() if k not in ("kind", "step")}
    for tag, key in [("train/loss", "loss"), ("train/lr", "lr"), ("val/nll", "val/nll")]:
        for event in acc.Scalars(tag):
            assert event.value == pytest.approx(logged[(event.step, key)], rel=1e-6), tag
    bucket = buckets[0].removeprefix("nll_by_t/")
    assert acc.Scalars(buckets[0])[-1].value == pytest.approx(logged[(4, f"val/nll_by_t/{bucket}")], 1e-6)
    # The buckets as one chart, the samples and the spec as text.
    assert "custom_scalars__config__" in acc.Tags()["tensors"]
    text = {t for t in acc.Tags()["tensors"] if t.endswith("/text_summary")}
    assert text == {"samples/text_summary", "spec/text_summary"}
    sample = acc.Tensors("samples/text_summary")[0]
    assert sample.step == 4
    first_sample = (run_dir / "samples.txt").read_text().splitlines()[1]
    assert first_sample in sample.tensor_proto.string_val[0].decode()


def test_off_unless_enabled_and_only_rank_0_writes(spec_file: Path, tmp_path: Path) -> None:
    shared = tmp_path / "tb"
    run_dir = run(spec_file, f"tensorboard={{log_dir: {shared}, flush_secs: 5}}")
    assert load_spec(run_dir / "resolved.yaml").sections["tensorboard"].enabled is False  # type: ignore[attr-defined]
    assert not shared.exists() and not (run_dir / "tensorboard").exists()
    # A second rank of an enabled run writes nothing either (its hooks called as the trainer does).
    hooks = get_registry().pm.hook
    other = RunContext(run_dir=run_dir, spec=load_spec(spec_file, [ON]), rank=1, world_size=2)
    hooks.mdm_run_start(run=other)
    hooks.mdm_step_end(run=other, step=1, metrics={"loss": 1.0, "lr": 1e-3, "tok_per_s": 1.0})
    hooks.mdm_run_end(run=other, metrics={})
    assert not (run_dir / "tensorboard").exists()


def test_a_shared_log_dir_holds_one_folder_per_run_and_a_resume_does_not_double_back(
    spec_file: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "tb"
    spec = load_spec(spec_file, [ON, f"tensorboard.log_dir={shared}"])
    run_dir = Path(train(spec, quiet=True)["run_dir"])
    train(spec, run_dir=run_dir, resume=True, from_step=2, quiet=True)  # steps 3 and 4 again
    assert [p.name for p in shared.iterdir()] == [run_dir.name]
    acc = events(shared / run_dir.name)
    assert steps(acc, "train/loss") == [1, 2, 3, 4]
    assert steps(acc, "val/nll") == [2, 4]


def test_a_bad_key_is_exit_2_naming_the_key_and_the_plugin(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, ["tensorboard={enabeld: true}"])
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert "tensorboard.enabeld: unknown key; did you mean 'enabled'?" in msg
    assert "keys of tensorboard: enabled, log_dir, flush_secs, samples" in msg
    assert "(spec section 'tensorboard' from mdm-plugin-tensorboard 0.1.0)" in msg
    assert main(["train", str(spec_file), "tensorboard.flush_secs=0"]) == 2
    err = capsys.readouterr().err
    assert "tensorboard.flush_secs" in err and "mdm-plugin-tensorboard 0.1.0" in err
    assert "Traceback" not in err


def test_a_failing_writer_is_reported_once_and_training_goes_on(
    spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the event folder should go\n")
    run_dir = run(spec_file, ON, f"tensorboard.log_dir={blocker}")
    assert (run_dir / "summary.json").is_file()
    assert [r["step"] for r in read_metrics(run_dir) if r["kind"] == "train"] == [1, 2, 3, 4]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "mdm-plugin-tensorboard" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: plug-in mdm-plugin-tensorboard 0.1.0: mdm_step_end raised")
