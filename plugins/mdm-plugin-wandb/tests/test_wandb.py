"""The W&B logger through real training runs in wandb's offline mode (no network): what the
offline run file holds (read back record by record), that it is off unless enabled, how its
section's errors read, and that a failing logger never stops training."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wandb.proto.wandb_internal_pb2 import Record  # type: ignore[attr-defined]  # generated

from mdm_core.cli import main
from mdm_core.errors import SpecError
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import RunContext, train

SPEC = """
name: wb
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
ON = "wandb.enabled=true"


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb offline (unless a spec says otherwise) and silent, its settings, caches and
    credentials in tmp_path: no network."""
    home = tmp_path / "wandb-home"
    for var, sub in [("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data"), ("NETRC", "netrc")]:  # fmt: skip
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "wb.yaml"
    path.write_text(SPEC.format(out=tmp_path / "runs"))
    return path


def run(spec_file: Path, *overrides: str) -> Path:
    return Path(train(load_spec(spec_file, list(overrides)), quiet=True)["run_dir"])


def records(path: Path) -> list[Record]:
    """The records of an offline ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    LevelDB-log chunks in 32 KiB blocks (CRC32C, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last), each record a ``wandb_internal`` protobuf. wandb ships no reader for it."""
    data, block, head = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    out, pending, pos = [], b"", head
    while pos + head <= len(data):
        room = block - pos % block
        if room < head:  # the block's tail is padding
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += room
            continue
        pending += data[pos + head : pos + head + length]
        pos += head + length
        if kind in (1, 4):
            out.append(Record.FromString(pending))
            pending = b""
    return out


def finished(path: Path, timeout: float = 30.0) -> list[Record]:
    """The records of a finished offline run file. ``run.finish()`` can return before wandb's
    service process has written the file's last records, so wait for its ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            return found
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.05)


def history(path: Path) -> dict[str, dict[int, object]]:
    """key → {step: value} of the history records of a finished offline run file."""
    found: dict[str, dict[int, object]] = {}
    for record in finished(path):
        if record.WhichOneof("record_type") == "history":
            step = record.history.step.num
            for item in record.history.item:
                name = item.key or "/".join(item.nested_key)  # a table: samples/_type, …
                found.setdefault(name, {})[step] = json.loads(item.value_json)
    return found


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_the_registration_module_imports_neither_wandb_nor_torch() -> None:
    code = "import sys, mdm_plugin_wandb\nprint(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'wandb'" not in out.stdout and "'torch'" not in out.stdout
    assert get_registry().sections["wandb"].plugin.label == "mdm-plugin-wandb 0.1.0"


def test_an_offline_run_logs_every_metric_and_samples_and_a_resume_continues_it(spec_file: Path) -> None:
    overrides = [ON, "wandb.tags=[smoke]"]
    run_dir = run(spec_file, *overrides)
    run_id = (run_dir / "wandb-run-id").read_text().strip()
    [first] = offline_runs(run_dir)
    assert first.name == f"run-{run_id}.wandb"
    logged = history(first)
    train_keys = {"train/loss", "train/lr", "train/tok_per_s"}
    assert train_keys | {"val/nll", "val/bpt", "val/ppl", "nll_by_t/all"} <= set(logged)
    buckets = sorted(k for k in logged if k.startswith("nll_by_t/") and k != "nll_by_t/all")
    assert len(buckets) == 2
    for key in train_keys:
        assert sorted(logged[key]) == [1, 2, 3, 4], key
    for key in ["val/nll", *buckets]:
        assert sorted(logged[key]) == [2, 4], key
    # The values are the run's own (metrics.jsonl).
    jsonl = {(r["step"], k): v for r in read_metrics(run_dir) for k, v in r.items()}
    for step in (1, 2, 3, 4):
        assert logged["train/loss"][step] == pytest.approx(jsonl[(step, "loss")])
    bucket = buckets[0].removeprefix("nll_by_t/")
    assert logged[buckets[0]][4] == pytest.approx(jsonl[(4, f"val/nll_by_t/{bucket}")])
    # The run record: name, tags and the resolved spec as the W&B config.
    [start] = [r.run for r in finished(first) if r.WhichOneof("record_type") == "run"]
    assert (start.display_name, list(start.tags)) == (run_dir.name, ["smoke"])
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert config["trainer"]["max_steps"] == 4 and config["wandb"]["tags"] == ["smoke"]
    # The samples, as a table at the last step.
    assert logged["samples/_type"] == {4: "table-file"}
    [table] = list(first.parent.glob("files/media/table/samples_*.table.json"))
    sample = (run_dir / "samples.txt").read_text().splitlines()[1]
    assert json.loads(table.read_text())["data"][0][0].startswith(sample)
    # A resumed run logs to the same W&B run (`wandb sync` merges the two offline files).
    train(load_spec(spec_file, overrides), run_dir=run_dir, resume=True, from_step=2, quiet=True)
    assert [p.name for p in offline_runs(run_dir)] == [first.name, first.name]
    assert sorted(history(offline_runs(run_dir)[1])["train/loss"]) == [3, 4]


def test_off_unless_enabled_and_only_rank_0_logs(spec_file: Path) -> None:
    run_dir = run(spec_file, "wandb={project: elsewhere, mode: offline}")
    assert load_spec(run_dir / "resolved.yaml").sections["wandb"].enabled is False  # type: ignore[attr-defined]
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb-run-id").exists()
    hooks = get_registry().pm.hook
    other = RunContext(run_dir=run_dir, spec=load_spec(spec_file, [ON]), rank=1, world_size=2)
    hooks.mdm_run_start(run=other)
    hooks.mdm_step_end(run=other, step=1, metrics={"loss": 1.0, "lr": 1e-3, "tok_per_s": 1.0})
    hooks.mdm_run_end(run=other, metrics={})
    assert not (run_dir / "wandb").exists() and not (run_dir / "wandb-run-id").exists()


def test_a_bad_key_is_exit_2_naming_the_key_and_the_plugin(
    spec_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, ["wandb={enabled: true, projet: mdm}"])
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert "wandb.projet: unknown key; did you mean 'project'?" in msg
    assert "keys of wandb: enabled, project, entity, mode, name, tags, samples" in msg
    assert "(spec section 'wandb' from mdm-plugin-wandb 0.1.0)" in msg
    assert main(["train", str(spec_file), "wandb.mode=onlin"]) == 2
    err = capsys.readouterr().err
    assert "wandb.mode" in err and "'offline'" in err and "mdm-plugin-wandb 0.1.0" in err
    assert "Traceback" not in err


def test_a_failing_logger_is_reported_once_and_training_goes_on(
    spec_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mode: online`` without a W&B login: wandb.init raises (before any network access)."""
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")  # the spec's mode wins over WANDB_MODE=offline
    run_dir = run(spec_file, ON, "wandb.mode=online")
    assert (run_dir / "summary.json").is_file()
    assert [r["step"] for r in read_metrics(run_dir) if r["kind"] == "train"] == [1, 2, 3, 4]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "mdm-plugin-wandb" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: plug-in mdm-plugin-wandb 0.1.0: mdm_run_start raised")
    assert "wandb login" in warnings[0]
