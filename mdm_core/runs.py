"""Run directories: everything needed to reproduce, inspect, resume or compare a run.

``runs/<name>-<YYYYmmdd-HHMMSS>[-N]/`` holds spec.yaml (as written), resolved.yaml, overrides.json,
plugins.lock, env.json, tokenizer.json, metrics.jsonl, history.jsonl, summary.json, curves.png and
ckpt/. Runs never overwrite each other: a run holds its directory's lock (:mod:`mdm_core.runlock`)
while it writes, and ``--run-dir`` refuses a directory that already holds a run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mdm_core.errors import MdmError, SpecError
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


# -- one run per directory ---------------------------------------------------------------------

#: Files whose presence means a directory already holds a run (``--run-dir`` then needs ``--resume``).
RUN_MARKERS = ("resolved.yaml", "metrics.jsonl", "ckpt")

#: Keys that say how a run is driven, not what it computes: ``--resume`` may change them (and
#: records the change). Every other key (data, tokenizer, sequence length, batch size, the
#: architecture, any component or its parameters, the optimiser, the seed) is refused on resume.
RUN_CONTROL_KEYS = frozenset(
    {
        "description",
        "trainer.max_steps",
        "trainer.log_every",
        "trainer.ckpt_every",
        "trainer.keep_checkpoints",
        "trainer.eval_batch_size",
        "trainer.num_samples",
        "trainer.threads",
        "trainer.device",
        "trainer.precision",
        "trainer.compile",
    }
)
_EVAL_CADENCE = re.compile(r"evaluators\.\d+\.every")


def resume_command(run_dir: Path, world_size: int = 1) -> str:
    """The exact command that continues ``run_dir``."""
    command = f"mdm train --resume {shlex.quote(str(run_dir))}"
    if world_size > 1:
        command = (
            f"torchrun --nproc_per_node {world_size} -m mdm_core.cli train --resume "
            f"{shlex.quote(str(run_dir))} (with this run's torchrun options)"
        )
    return command


def holds_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def make_run_dir(path: Path) -> bool:
    """Create ``path`` (and its parents) if needed; whether it existed already."""
    if path.exists() and not path.is_dir():
        raise SpecError(f"--run-dir: {path} is a file, not a folder")
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MdmError(f"--run-dir: cannot create {path}: {exc.strerror or exc}", exit_code=3) from None
    return existed


def refuse_existing_run(run_dir: Path) -> None:
    """``--run-dir`` naming a directory that already holds a run: exit 2, saying how to resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SpecError(f"--run-dir: {run_dir} is a file, not a folder")
    if holds_run(run_dir):
        raise SpecError(
            f"--run-dir: {run_dir} already holds a run; continue it with: {resume_command(run_dir)} "
            "(or choose another --run-dir)"
        )


def check_resumable(run_dir: Path) -> None:
    if not (run_dir / "resolved.yaml").is_file():
        raise SpecError(f"--resume: {run_dir} is not a run directory (no resolved.yaml)")


_MISSING = object()


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"trainer.lr": 0.001, "evaluators.0.every": 4, ...}``: every leaf by its dotted key."""
    items: Iterable[tuple[Any, Any]]
    if isinstance(node, dict) and node:
        items = node.items()
    elif isinstance(node, list) and node:
        items = enumerate(node)
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resume_changes(run_dir: Path, spec: ResolvedSpec) -> dict[str, tuple[Any, Any]]:
    """What ``spec`` changes in the run's ``resolved.yaml``: ``{key: (old, new)}``, run-control
    keys and plug-in spec sections (loggers) only. Any other change raises ``SpecError`` (exit 2)
    naming the key, before anything heavy is loaded, since it would make the checkpoint describe a
    different run."""
    from mdm_core.spec import load_spec

    old = _flat(load_spec(run_dir / "resolved.yaml").resolved)
    new = _flat(spec.resolved)
    changes = {
        key: (old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key, _MISSING) != new.get(key, _MISSING)
    }
    for key, (before, after) in changes.items():
        if key.split(".")[0] in spec.sections:
            continue  # a plug-in's own section (a logger's): hooks observe the run, never its numbers
        if key not in RUN_CONTROL_KEYS and not _EVAL_CADENCE.fullmatch(key):
            raise SpecError(
                f"--resume: {key} would change what the run computes ({before!r} -> {after!r}); "
                "a resumed run may only change run-control keys "
                f"({', '.join(sorted(RUN_CONTROL_KEYS))}, evaluators.N.every). "
                f"Start a new run instead: mdm train {run_dir / 'resolved.yaml'} {key}={after}"
            )
    return changes


def record_resume(run_dir: Path, spec: ResolvedSpec, changes: dict[str, tuple[Any, Any]], step: int) -> None:
    """Write the resumed spec back (``resolved.yaml``, ``overrides.json``) and log the resume from
    ``step`` in ``history.jsonl``, so that the run directory says what actually ran."""
    if changes:
        _write_atomic(run_dir / "resolved.yaml", spec.to_yaml())
        path = run_dir / "overrides.json"
        record = json.loads(path.read_text()) if path.is_file() else {"source": spec.source, "overrides": []}
        record["overrides"] = [*record.get("overrides", []), *spec.overrides]
        _write_atomic(path, json.dumps(record, indent=1))
    append_history(
        run_dir,
        "resume",
        step=step,
        overrides=spec.overrides,
        changed={key: [before, after] for key, (before, after) in changes.items()},
    )


def append_history(run_dir: Path, event: str, **fields: Any) -> None:
    """One line of ``history.jsonl``: each start, resume and interruption of the run, with when,
    where and by which command."""
    record = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "event": event,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": shlex.join(sys.argv),
        **fields,
    }
    with open(run_dir / "history.jsonl", "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def entries(path: Path) -> frozenset[str] | None:
    """What a directory holds now (``None`` if it does not exist): taken before a run starts, so
    that a run failing before its first step removes only what it created."""
    return frozenset(os.listdir(path)) if path.is_dir() else None


def remove_created(path: Path, before: frozenset[str] | None) -> None:
    """Undo a run that never trained: delete the directory if it was new, else only the entries
    that were not there in ``before``."""
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in set(os.listdir(path)) - before:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A torn last line (the run was killed, or the disk filled,
    mid-write) is skipped with a warning; any other unreadable line is an error naming it."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_bytes().decode(errors="replace")  # a line cut mid-character still reads
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip(" \t\x00")]
    records: list[dict[str, Any]] = []
    for n, line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        elif n == lines[-1][0]:
            print(
                f"warning: {path}:{n}: skipping a torn last line ({len(line)} characters, cut off "
                "when the run was killed or the disk was full)",
                file=sys.stderr,
            )
        else:
            raise MdmError(
                f"{path}:{n} is not a metrics record ({line[:80]!r}); repair or delete that line",
                exit_code=3,
            )
    return records


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we restart from (and a torn
    last line); a full disk is a clear error and leaves the file as it was."""
    kept = [m for m in read_metrics(run_dir) if m["step"] <= last_step]
    tmp = run_dir / "metrics.jsonl.tmp"
    try:
        tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
        tmp.replace(run_dir / "metrics.jsonl")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(run_dir).free / 2**20
        raise MdmError(
            f"could not rewrite {run_dir / 'metrics.jsonl'} to resume: {exc.strerror or exc} "
            f"({free:.1f} MiB free); free some space and resume again",
            exit_code=3,
        ) from exc
