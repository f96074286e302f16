"""Every hook is documented and is called, with its documented arguments, by a real run."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

from mdm_core import hookimpl, hookspecs
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec
from mdm_core.trainer import RunContext, train

HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mdm_")]


def test_every_hookspec_is_documented() -> None:
    assert set(HOOKS) == {
        "mdm_components", "mdm_run_start", "mdm_step_end", "mdm_eval_end", "mdm_run_end",
        "mdm_cli_commands", "mdm_status",
    }  # fmt: skip
    docs = (Path(__file__).resolve().parent.parent / "docs" / "hooks.md").read_text()
    for name in HOOKS:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name
        assert f"`{name}(" in docs, f"{name} missing from docs/hooks.md"


class Recorder:
    """A real plug-in object recording the lifecycle hooks it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def mdm_run_start(self, run: RunContext) -> None:
        self.calls.append(("start", run.rank))

    @hookimpl
    def mdm_step_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("step", step))

    @hookimpl
    def mdm_eval_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("eval", (step, "val/nll" in metrics)))

    @hookimpl
    def mdm_run_end(self, run: RunContext, metrics: dict[str, float]) -> None:
        self.calls.append(("end", run.run_dir.is_dir()))


def test_lifecycle_hooks_arrive_in_order(tiny_spec: Path) -> None:
    """An evaluation at step s is reported before step s's own step hook."""
    recorder = Recorder()
    pm = get_registry().pm
    pm.register(recorder, name="recorder")
    try:
        train(load_spec(tiny_spec, ["trainer.max_steps=4", "evaluators.0.every=2"]), quiet=True)
    finally:
        pm.unregister(recorder)
    assert recorder.calls == [
        ("start", 0),
        ("step", 1),
        ("eval", (2, True)),
        ("step", 2),
        ("step", 3),
        ("eval", (4, True)),
        ("step", 4),
        ("end", True),
    ]


def test_listing_plugins_imports_no_torch_and_no_component_code() -> None:
    code = (
        "import sys\nfrom mdm_core.cli import main\nassert main(['plugins', '--json']) == 0\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.endswith('.model') or m.endswith('.sampler')]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
