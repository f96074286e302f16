"""Collect the steps of ``benchmarks/gpu_check.sh`` into ``summary.json`` and ``summary.md``.

    python benchmarks/gpu_check_report.py env OUT            # record the machine (env.json)
    python benchmarks/gpu_check_report.py step OUT NAME STATUS SECONDS [RUN_DIR] [NOTE]
    python benchmarks/gpu_check_report.py summary OUT "COMMAND"

``step`` appends one line to ``OUT/steps.jsonl`` (status: ok, failed (exit N), timed out, skipped);
for a training step it also reads the run's ``summary.json`` and ``metrics.jsonl`` (final
validation NLL, median tokens/s). ``summary`` joins the machine, the steps and the B3 table
(``OUT/b3.json``) into one JSON record and one markdown page that pastes into RESULTS.md.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """The machine: GPU, torch, CUDA, Triton, CPU — what every figure must be read against."""
    import torch

    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def training_figures(run_dir: Path) -> dict[str, Any]:
    """Final validation NLL, steps and median tokens/s of a finished run (what exists of them)."""
    figures: dict[str, Any] = {}
    summary = run_dir / "summary.json"
    if summary.is_file():
        record = json.loads(summary.read_text())
        final = record.get("final") or {}
        figures["final"] = {k: v for k, v in final.items() if "/" not in k.removeprefix("val/")}
        figures["steps"] = record.get("steps")
        figures["elapsed_s"] = record.get("elapsed")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        rates = [m["tok_per_s"] for m in lines if m.get("kind") == "train" and "tok_per_s" in m]
        if rates:
            figures["median_tok_per_s"] = statistics.median(rates)
    return figures


def add_step(out: Path, name: str, status: str, seconds: str, run_dir: str = "", note: str = "") -> None:
    record: dict[str, Any] = {"step": name, "status": status, "seconds": round(float(seconds), 1)}
    if note:
        record["note"] = note
    if run_dir and Path(run_dir).is_dir():
        record["run_dir"] = run_dir
        record |= training_figures(Path(run_dir))
    with (out / "steps.jsonl").open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items())
    return "—" if value is None else str(value)


def b3_table(out: Path) -> str:
    """The markdown table that ``bench_fused_loss.py`` printed (kept in its log), under its header
    lines (machine, which fused path ran: Triton on the GPU or a fallback)."""
    log = out / "logs" / "b3.log"
    if not log.is_file():
        return ""
    keep = [line for line in log.read_text().splitlines() if line.startswith(("|", "# "))]
    return "\n".join(line.removeprefix("# ") + "\n" if line.startswith("# ") else line for line in keep)


def summary(out: Path, command: str) -> int:
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines() if x.strip()]
    b3 = json.loads((out / "b3.json").read_text()) if (out / "b3.json").is_file() else None
    failed = [s["step"] for s in steps if s["status"] not in ("ok", "skipped")]
    record = {"command": command, "environment": env, "steps": steps, "b3": b3, "failed": failed}
    (out / "summary.json").write_text(json.dumps(record, indent=1) + "\n")

    machine = env.get("gpu") or f"{env.get('cpu', '?')}, no GPU"
    lines = [
        f"## GPU check — {machine}, {env.get('date', '?')}",
        "",
        f"```\n{command}\n```",
        "",
        f"torch {env.get('torch')}, CUDA {env.get('cuda', '—')}, Triton {env.get('triton') or '—'}",
        "",
        "| step | status | seconds | final | median tok/s | note |",
        "|---|---|---|---|---|---|",
    ]
    for s in steps:
        cells = [
            s["step"],
            s["status"],
            _cell(s["seconds"]),
            _cell(s.get("final")),
            _cell(s.get("median_tok_per_s")),
        ]
        lines.append("| " + " | ".join([*cells, s.get("note", "").replace("|", "\\|")]) + " |")
    table = b3_table(out)
    if table:
        lines += ["", "### B3: fused loss against eager and torch.compile", "", table]
    lines += ["", f"Failed steps: {', '.join(failed) if failed else 'none'}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    what, out = argv[0], Path(argv[1])
    if what == "env":
        (out / "env.json").write_text(json.dumps(environment(), indent=1) + "\n")
        return 0
    if what == "step":
        add_step(out, *argv[2:])
        return 0
    if what == "summary":
        return summary(out, argv[2])
    raise SystemExit(f"gpu_check_report: unknown action {what!r} (env, step or summary)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
