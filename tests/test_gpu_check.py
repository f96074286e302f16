"""benchmarks/gpu_check.sh works before a GPU exists: its --dry-run runs every step on CPU, and its
report records failures instead of hiding them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check_report  # noqa: E402  (a script folder, not a package)

needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None, reason="gpu_check.sh is a bash script; no bash here"
)


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@needs_bash
def test_dry_run_runs_every_step_on_cpu_and_writes_json_and_markdown(tmp_path: Path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("To be, or not to be, that is the question.\n" * 200)
    out = tmp_path / "check"
    done = run_script("--dry-run", "--out", str(out), "--shakespeare", str(text))
    assert done.returncode == 0, done.stdout + done.stderr

    steps = {s["step"]: s for s in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}
    assert list(steps) == ["triton_cubin", "triton_tests", "b3", "quickstart", "shakespeare"]
    for name in ("triton_cubin", "triton_tests"):
        assert steps[name]["status"] == "skipped" and "--dry-run" in steps[name]["note"]
    for name in ("b3", "quickstart", "shakespeare"):
        assert steps[name]["status"] == "ok", (name, (out / "logs" / f"{name}.log").read_text()[-2000:])
    for name in ("quickstart", "shakespeare"):
        assert steps[name]["steps"] == 4 and steps[name]["final"]["val/nll"] > 0
        assert steps[name]["median_tok_per_s"] > 0
    resolved = (out / "runs" / "shakespeare" / "resolved.yaml").read_text()
    assert str(text) in resolved and "bell" in resolved

    b3 = json.loads((out / "b3.json").read_text())
    assert b3["rows"][0]["vocab"] == 64 and "seconds" in b3["rows"][0]["eager"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["command"].endswith("--dry-run")
    assert summary["environment"]["cuda_available"] is False

    markdown = (out / "summary.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ") and "step" not in line]
    assert len([line for line in table if line.split("|")[1].strip() in steps]) == 5
    assert "### B3: fused loss against eager and torch.compile" in markdown
    assert "fused path:" in markdown and "Failed steps: none." in markdown


@needs_bash
def test_bad_arguments_are_refused_before_anything_runs(tmp_path: Path) -> None:
    assert run_script("--dry-run").returncode == 2
    unknown = run_script("--out", str(tmp_path / "x"), "--fast")
    assert unknown.returncode == 2 and "unknown argument '--fast'" in unknown.stderr
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.json").write_text("{}")
    refused = run_script("--dry-run", "--out", str(used))
    assert refused.returncode == 2 and "is not empty" in refused.stderr
    assert sorted(p.name for p in used.iterdir()) == ["old.json"]


def test_the_report_lists_a_failed_step_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    gpu_check_report.add_step(tmp_path, "b3", "ok", "3.25")
    gpu_check_report.add_step(tmp_path, "quickstart", "timed out after 90s", "90.0", "", "step 120/300")
    assert gpu_check_report.summary(tmp_path, "benchmarks/gpu_check.sh --out x") == 1
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["failed"] == ["quickstart"]
    assert "| quickstart | timed out after 90s | 90 | — | — | step 120/300 |" in capsys.readouterr().out
    assert "Failed steps: quickstart." in (tmp_path / "summary.md").read_text()
