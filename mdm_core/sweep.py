"""Grids of runs: ``mdm sweep SPEC key=a,b seed=0,1,2`` trains every combination as an ordinary run.

Each point of the grid is a list of dotlist overrides and runs as its own ``mdm train`` process
(crash isolation, clean memory, the same code path as a single run) with ``--run-dir`` placing it
inside the sweep directory. ``sweep.json`` records the spec, the grid and, per point, its run
directory and exit code; it is rewritten as points finish, so an interrupted sweep still says what
ran. A failed point is recorded and never stops the others. ``mdm compare SWEEP_DIR`` reads it.
``mdm sweep`` first loads and checks every point's spec (:func:`check_points`), so that a grid
with one bad value starts nothing, rather than failing point after point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdm_core.errors import MdmError, SpecError

#: Grid keys that stand for a longer dotted key.
SHORTHANDS = {"seed": "trainer.seed"}
#: The command that trains one point; ``torchrun ... -m mdm_core.cli train`` works too.
DEFAULT_LAUNCHER: tuple[str, ...] = (sys.executable, "-m", "mdm_core.cli", "train")
_MAX_NAME = 120


def parse_grid(args: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Split ``key=a,b,c`` (a grid axis) from ``key=v`` (an override every point shares).

    Commas inside ``[...]`` or ``{...}`` do not split, so whole components can be grid values:
    ``time_sampler={name: uniform},{name: bell, family: beta}``.
    """
    grid: dict[str, list[str]] = {}
    fixed: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = SHORTHANDS.get(key.strip(), key.strip())
        if not sep or not key:
            raise SpecError(
                f"sweep: '{arg}' is not key=value or key=a,b,c; "
                "write e.g. time_sampler.name=uniform,bell seed=0,1,2"
            )
        if key in grid or any(f.partition("=")[0] == key for f in fixed):
            raise SpecError(f"sweep: '{key}' is given twice; list all its values once, e.g. {key}=a,b")
        values = [v.strip() for v in _split_top_level(value)]
        if len(values) == 1:
            fixed.append(f"{key}={value}")
            continue
        if any(not v for v in values):
            raise SpecError(f"sweep: '{arg}' has an empty value; write e.g. {key}=a,b,c")
        if len(set(values)) != len(values):
            raise SpecError(f"sweep: '{arg}' repeats a value")
        grid[key] = values
    return grid, fixed


def _split_top_level(value: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(value):
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def grid_points(grid: dict[str, list[str]]) -> list[list[str]]:
    """The cartesian product of the grid as override lists, first key varying slowest."""
    keys = list(grid)
    combos = itertools.product(*grid.values())
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)] for combo in combos]


def point_label(overrides: Sequence[str]) -> str:
    """``time_sampler.name=bell,trainer.seed=1``: how a point is shown."""
    return ",".join(overrides) or "(base spec)"


def point_dir_name(overrides: Sequence[str]) -> str:
    """``time_sampler.name-bell_trainer.seed-1``: a filesystem-safe directory name for a point."""
    text = "_".join(o.replace("=", "-", 1) for o in overrides) or "base"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip(".") or "point"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}-{digest}"
    return name


def check_points(spec_path: str | Path, grid: dict[str, list[str]], base_overrides: Sequence[str]) -> int:
    """Load and check (``load_spec`` + ``check_runnable``) the spec of every grid point; return how
    many there are. Any bad point: one :class:`SpecError` (exit 2) listing each with its error."""
    from mdm_core.spec import check_runnable, load_spec

    points = grid_points(grid)
    bad: list[str] = []
    for overrides in points:
        try:
            check_runnable(load_spec(spec_path, [*base_overrides, *overrides]))
        except MdmError as exc:
            message = str(exc).replace("\n", "\n    ")  # a point's lines stay under its label
            bad.append(f"  {point_label(overrides)}: {message}")
    if bad:
        raise SpecError(
            f"sweep: {len(bad)} of {len(points)} points are invalid; nothing was started:\n" + "\n".join(bad)
        )
    return len(points)


@dataclass
class PointResult:
    """One grid point: its overrides, where its run lives, and how it ended (None: not finished)."""

    label: str
    overrides: list[str]
    run_dir: Path
    log: Path
    exit_code: int | None = None
    seconds: float = 0.0

    def log_tail(self, lines: int = 5) -> list[str]:
        """The last non-empty lines of the point's output: what a failed point said last."""
        if not self.log.is_file():
            return []
        text = self.log.read_text(errors="replace").splitlines()
        return [line for line in text if line.strip()][-lines:]

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "label": self.label,
            "overrides": self.overrides,
            "run_dir": os.path.relpath(self.run_dir, root),
            "log": os.path.relpath(self.log, root),
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SweepResult:
    """The whole sweep as recorded in ``<out_dir>/sweep.json``."""

    spec: str
    grid: dict[str, list[str]]
    base_overrides: list[str]
    out_dir: Path
    points: list[PointResult] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %z"))

    @property
    def failed(self) -> list[PointResult]:
        return [p for p in self.points if p.exit_code != 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "grid": self.grid,
            "base_overrides": self.base_overrides,
            "created": self.created,
            "points": [p.to_json(self.out_dir) for p in self.points],
        }

    def write(self) -> Path:
        """Write sweep.json atomically (a reader never sees half a file)."""
        path = self.out_dir / "sweep.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path


def run_sweep(
    spec_path: str | Path,
    grid: dict[str, list[str]],
    base_overrides: Sequence[str],
    out_dir: Path,
    parallel: int = 1,
    extra_args: Sequence[str] = (),
    launcher: Sequence[str] = DEFAULT_LAUNCHER,
    on_done: Callable[[PointResult], None] | None = None,
) -> SweepResult:
    """Train every grid point, ``parallel`` at a time; return (and record) how each ended.

    Point i runs ``*launcher, spec, *base_overrides, *point_overrides, --run-dir DIR, *extra_args``
    with its output in ``<out_dir>/logs/<point>.log``. With ``parallel > 1`` and no
    ``OMP_NUM_THREADS`` set, each run gets an equal share of the CPU cores, so that concurrent runs
    do not oversubscribe them. ``on_done`` is called in the caller's thread as each point ends.
    """
    if parallel < 1:
        raise MdmError(f"sweep: --parallel must be at least 1, got {parallel}", exit_code=2)
    out_dir = Path(out_dir)
    if (out_dir / "sweep.json").exists():
        raise MdmError(f"sweep: {out_dir} already holds a sweep; choose another --out", exit_code=2)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    result = SweepResult(str(spec_path), dict(grid), list(base_overrides), out_dir)
    used: set[str] = set()
    for overrides in grid_points(grid):
        name = base = point_dir_name(overrides)
        for n in itertools.count(1):  # two points may sanitise to the same name
            if name not in used:
                break
            name = f"{base}-{n}"
        used.add(name)
        result.points.append(
            PointResult(point_label(overrides), overrides, out_dir / name, out_dir / "logs" / f"{name}.log")
        )
    result.write()

    env = dict(os.environ)
    if parallel > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))

    def run_point(point: PointResult) -> PointResult:
        command = [*launcher, str(spec_path), *base_overrides, *point.overrides]
        command += ["--run-dir", str(point.run_dir), *extra_args]
        start = time.perf_counter()
        with open(point.log, "w") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        point.exit_code = done.returncode
        point.seconds = time.perf_counter() - start
        return point

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in as_completed([pool.submit(run_point, p) for p in result.points]):
            point = future.result()
            result.write()
            if on_done is not None:
                on_done(point)
    return result
