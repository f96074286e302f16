"""Run directories: everything needed to reproduce, inspect, resume or compare a run.

``runs/<name>-<YYYYmmdd-HHMMSS>[-N]/`` holds spec.yaml (as written), resolved.yaml, overrides.json,
plugins.lock, env.json, tokenizer.json, metrics.jsonl, summary.json, curves.png and ckpt/.
Runs never overwrite each other.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from mdm_core.errors import MdmError
from mdm_core.plugins import Registry, core_version
from mdm_core.spec import ResolvedSpec


def new_run_dir(out_dir: str | Path, name: str) -> Path:
    """A fresh directory that no other run uses (created exclusively, so races cannot collide)."""
    base = Path(out_dir)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise MdmError(f"could not create a new run directory under {base}")


def write_run_files(run_dir: Path, spec: ResolvedSpec, registry: Registry, env: dict[str, Any]) -> None:
    (run_dir / "spec.yaml").write_text(spec.raw_text)
    (run_dir / "resolved.yaml").write_text(spec.to_yaml())
    (run_dir / "overrides.json").write_text(
        json.dumps({"source": spec.source, "overrides": spec.overrides}, indent=1)
    )
    (run_dir / "plugins.lock").write_text(plugin_lock(spec, registry))
    (run_dir / "env.json").write_text(json.dumps(env, indent=1))


def plugin_lock(spec: ResolvedSpec, registry: Registry) -> str:
    """``distribution==version`` for every loaded plug-in, then ``kind name -> distribution``."""
    lines = [f"{p.distribution}=={p.version}" for p in registry.plugins if not p.error]
    lines.append("")
    for comp in [*spec.components.values(), *spec.evaluators]:
        lines.append(f"{comp.kind} {comp.name} -> {registry.provider(comp.kind, comp.name).distribution}")
    return "\n".join(lines) + "\n"


def environment(device: str, world_size: int) -> dict[str, Any]:
    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "mdm_core": core_version(),
        "device": device,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "world_size": world_size,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we restart from."""
    kept = [m for m in read_metrics(run_dir) if m["step"] <= last_step]
    tmp = run_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
    tmp.replace(run_dir / "metrics.jsonl")
