"""B5: ``mdm --help`` and ``mdm plugins`` start fast, because listing imports no torch and no component.

Each command runs as a fresh subprocess, interleaved with the others, and the median wall time is
reported next to two references: the bare interpreter (``python -c pass``, the floor) and
``python -c "import torch"`` (what the CLI would cost if it imported torch). Then each CLI command
runs once more in a fresh interpreter, and every module loaded by its end is checked against torch
and against the modules that hold the installed components (the ``package.module`` of every
``ComponentRef``), which only a run that names a component may import. A control command that does
import them (``mdm components backbone``) must be flagged, or the check is blind.

    python benchmarks/bench_startup.py --repeats 10 --json b5.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mdm_core.errors import MdmError
from mdm_core.plugins import get_registry

CLI_COMMANDS = {"mdm --help": ["--help"], "mdm plugins": ["plugins"]}
CONTROL = {"mdm components backbone": ["components", "backbone"]}
"""Imports the backbones to show their parameters: the import check must flag it, or it is blind."""


def mdm_executable() -> str:
    """The ``mdm`` script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "mdm"
    found = str(beside) if beside.is_file() else shutil.which("mdm")
    if found is None:
        raise MdmError(
            "no `mdm` executable found; install mdm-diffusion (pip install -e .) in this environment"
        )
    return found


def commands() -> dict[str, list[str]]:
    mdm = mdm_executable()
    return {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        **{label: [mdm, *args] for label, args in CLI_COMMANDS.items()},
        "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
    }


def run_once(command: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise MdmError(f"`{' '.join(command)}` exited with {out.returncode}:\n{out.stderr[-2000:]}")
    return elapsed


PROBE = """
import contextlib, io, json, sys
from mdm_core.cli import main
try:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main({args!r})
except SystemExit as exc:  # argparse exits after printing --help
    code = exc.code
print(json.dumps(sorted(sys.modules)))
sys.exit(code)
"""
"""Runs the CLI in-process and prints every module loaded by then. ``sys.modules`` rather than
``-X importtime``, which does not report modules loaded through ``importlib.import_module`` — the
way plug-ins and components are loaded — and so cannot see the imports this check is about."""


def imported_modules(cli_args: list[str]) -> list[str]:
    """Every module in ``sys.modules`` after ``mdm <cli_args>`` ran in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=cli_args)], capture_output=True, text=True, timeout=300
    )
    if out.returncode != 0:
        raise MdmError(f"mdm {' '.join(cli_args)} failed in the import probe:\n{out.stderr[-2000:]}")
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return modules


def component_modules() -> set[str]:
    """The modules that hold every installed component (found without importing them)."""
    return {entry.ref.target.partition(":")[0] for entry in get_registry().entries.values()}


def forbidden(modules: list[str], components: set[str]) -> list[str]:
    return sorted({m for m in modules if m == "torch" or m.startswith("torch.") or m in components})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per command (median)")
    p.add_argument("--quick", action="store_true", help="2 repeats, no torch reference (smoke test)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    timed = commands()
    if args.quick:
        timed = {k: v for k, v in timed.items() if "import torch" not in k}
    seconds: dict[str, list[float]] = {label: [] for label in timed}
    for r in range(repeats):
        for label in list(timed) if r % 2 == 0 else list(reversed(timed)):
            seconds[label].append(run_once(timed[label]))
    components = component_modules()
    imports: dict[str, dict[str, Any]] = {}
    for label, cli_args in {**CLI_COMMANDS, **CONTROL}.items():
        modules = imported_modules(cli_args)
        imports[label] = {"modules": len(modules), "forbidden_imported": forbidden(modules, components)}
    result: dict[str, Any] = {
        "benchmark": "B5 responsiveness",
        "repeats": repeats,
        "median_s": {label: statistics.median(times) for label, times in seconds.items()},
        "min_s": {label: min(times) for label, times in seconds.items()},
        "imports": imports,
        "component_modules_checked": sorted(components),
        "control_detected": all(imports[label]["forbidden_imported"] for label in CONTROL),
        "ok": all(not imports[label]["forbidden_imported"] for label in CLI_COMMANDS),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def report(r: dict[str, Any]) -> None:
    print(f"B5: median of {r['repeats']} fresh processes each")
    print("| command | median s | min s |")
    print("|---|---|---|")
    for label, median in r["median_s"].items():
        print(f"| `{label}` | {median:.3f} | {r['min_s'][label]:.3f} |")
    print(f"checked against torch and {len(r['component_modules_checked'])} component modules:")
    for label, v in r["imports"].items():
        bad = ", ".join(v["forbidden_imported"][:4]) or "none"
        more = len(v["forbidden_imported"]) - 4
        bad += f" and {more} more" if more > 0 else ""
        role = " (control, should be flagged)" if label in CONTROL else ""
        print(f"- `{label}`{role}: {v['modules']} modules loaded; flagged: {bad}")


if __name__ == "__main__":
    try:
        outcome = main()
    except MdmError as exc:
        sys.exit(f"error: {exc}")
    sys.exit(0 if outcome["ok"] and outcome["control_detected"] else 1)
