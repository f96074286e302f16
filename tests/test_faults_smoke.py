"""The fault campaign (``benchmarks/faults.py``, ``nox -s faults``) runs end to end in quick mode:
a real ``kill -9`` inside a checkpoint write of the real CLI, resumed and compared with an
uninterrupted run, and a few fuzzed specs; its report says what it counted. The campaign's
figures come from full runs (RESULTS.md), not from this test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "faults.py"


def test_quick_campaign_kills_resumes_and_reports(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("benchmarks_faults", SCRIPT)
    assert spec is not None and spec.loader is not None
    faults = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = faults  # dataclasses look their module up
    spec.loader.exec_module(faults)

    argv = ["--quick", "--classes", "kill,fuzz", "--kills", "1", "--fuzz", "12", "--out", str(tmp_path)]
    code = faults.main(argv)
    report = json.loads((tmp_path / "faults.json").read_text())
    assert code == 0, [t["failures"] for t in report["trials"]]
    kill, fuzz = report["summary"]["kill"], report["summary"]["fuzz"]
    assert kill["kills"] == 1 and kill["kills_inside_checkpoint_writes"] <= 1
    assert kill["bit_identical"] == "1/1" and kill["runs_lost"] == 0 and kill["tracebacks"] == 0
    assert fuzz["tracebacks"] == 0 and fuzz["silent_wrong_results"] == 0
    validated = sum(int(e.split(": ")[1]) for e in report["trials"][-1]["events"] if e.startswith("validate"))
    assert validated == 12
    assert "| kill | 1 | 1 kills" in (tmp_path / "faults.md").read_text()
    assert not (tmp_path / "work").exists(), "the runs are removed once counted"
