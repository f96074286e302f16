"""Every hook is documented (docstring and docs/hooks.md, with its arguments) and reaches a real
plug-in object, through the plug-in manager, with the arguments it documents."""

from __future__ import annotations

import argparse
import inspect
import json
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from mdm_core import ComponentRef, hookimpl, hookspecs
from mdm_core.cli import main
from mdm_core.hookspecs import SpecSection
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec
from mdm_core.trainer import RunContext, train

HOOKS = {
    name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("mdm_")
}
PROBE = ComponentRef("time_sampler", "hook_probe", "mdm_core.builtin.time_samplers:UniformTimeSampler")
DOCS = (Path(__file__).resolve().parent.parent / "docs" / "hooks.md").read_text()


def test_every_hookspec_is_documented_with_its_arguments() -> None:
    assert set(HOOKS) == {
        "mdm_components", "mdm_spec_sections", "mdm_run_start", "mdm_step_end", "mdm_eval_end",
        "mdm_run_end", "mdm_cli_commands", "mdm_status",
    }  # fmt: skip
    for name, spec in HOOKS.items():
        assert (spec.__doc__ or "").strip(), f"{name} has no docstring"
        documented = re.search(rf"`{name}\(([^)]*)\)", DOCS)
        assert documented, f"{name} missing from docs/hooks.md"
        args = [a.strip() for a in documented.group(1).split(",") if a.strip()]
        assert args == list(inspect.signature(spec).parameters), f"docs/hooks.md: arguments of {name}"
        assert re.search(rf"^### `{name}\(", DOCS, re.M), f"docs/hooks.md: {name} has no worked example"


def test_every_hook_argument_and_result_is_typed() -> None:
    """The annotations (written under TYPE_CHECKING, as pytest does) resolve to real types."""
    names = {"RunContext": RunContext, "argparse": argparse}
    for name, spec in HOOKS.items():
        hints = typing.get_type_hints(spec, localns=names)
        assert set(hints) == {*inspect.signature(spec).parameters, "return"}, name
    assert typing.get_type_hints(hookspecs.mdm_run_start, localns=names)["run"] is RunContext
    assert typing.get_type_hints(hookspecs.mdm_components, localns=names)["return"] == list[ComponentRef]


class ProbeSection(BaseModel):
    greeting: str = "hello"


class Everything:
    """A real plug-in object implementing every hook and recording what it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def mdm_components(self) -> list[ComponentRef]:
        return [PROBE]

    @hookimpl
    def mdm_spec_sections(self) -> list[SpecSection]:
        return [SpecSection("hook_probe", f"{__name__}:ProbeSection")]

    @hookimpl
    def mdm_run_start(self, run: RunContext) -> None:
        section = run.spec.sections.get("hook_probe")
        self.calls.append(("start", (run.rank, run.run_dir.is_dir(), getattr(section, "greeting", None))))

    @hookimpl
    def mdm_step_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("step", step))

    @hookimpl
    def mdm_eval_end(self, run: RunContext, step: int, metrics: dict[str, float]) -> None:
        self.calls.append(("eval", (step, "val/nll" in metrics)))

    @hookimpl
    def mdm_run_end(self, run: RunContext, metrics: dict[str, float]) -> None:
        self.calls.append(("end", (run.run_dir / "summary.json").is_file() and "val/nll" in metrics))

    @hookimpl
    def mdm_cli_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("hook-probe", help="say hello")
        parser.add_argument("--who", default="world")
        parser.set_defaults(func=self.hello)

    def hello(self, args: argparse.Namespace) -> int:
        self.calls.append(("cli", args.who))
        return 0

    @hookimpl
    def mdm_status(self) -> dict[str, str]:
        return {"hook_probe": "probe is alive"}


@pytest.fixture
def probe() -> Iterator[Everything]:
    """The probe registered with the process-wide plug-in manager (validated by pluggy against
    the specs' argument names), and removed afterwards."""
    plugin = Everything()
    pm = get_registry().pm
    pm.register(plugin, name="hook-probe")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


def test_registration_and_cli_hooks(probe: Everything, capsys: pytest.CaptureFixture[str]) -> None:
    registry = get_registry()
    assert registry.entries[("time_sampler", "hook_probe")].ref == PROBE
    assert registry.provider("time_sampler", "hook_probe").name == "hook-probe"
    assert registry.sections["hook_probe"].section.target.endswith(":ProbeSection")
    assert main(["hook-probe", "--who", "mdm"]) == 0
    assert probe.calls == [("cli", "mdm")]
    assert main(["plugins", "--json", "--status"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"]["hook_probe"] == "probe is alive"
    assert "mdm_status" in report["hooks"]["hook-probe"]


def test_plugin_commands_are_listed_by_help(probe: Everything, capsys: pytest.CaptureFixture[str]) -> None:
    """``mdm --help`` and bare ``mdm`` list plug-in sub-commands beside the built-in ones."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    assert re.search(r"^\s+hook-probe\s+say hello$", listed, re.M), listed
    assert re.search(r"^\s+train\s", listed, re.M)
    assert main([]) == 0
    assert "hook-probe" in capsys.readouterr().out
    assert probe.calls == []


class Clashing:
    @hookimpl
    def mdm_cli_commands(self, subparsers: argparse._SubParsersAction) -> None:
        subparsers.add_parser("hook-probe")  # the probe's name, taken


def test_a_broken_cli_hook_is_named_not_fatal(
    probe: Everything, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    clash = Clashing()
    get_registry().pm.register(clash, name="clash")
    try:
        assert main(["hook-probe"]) == 0 and probe.calls == [("cli", "world")]
        assert "warning: plug-in clash: mdm_cli_commands raised" in capsys.readouterr().err
        monkeypatch.setenv("MDM_STRICT_PLUGINS", "1")
        assert main(["hook-probe"]) == 3
        assert "error: plug-in clash: mdm_cli_commands raised" in capsys.readouterr().err
    finally:
        get_registry().pm.unregister(clash)


def test_lifecycle_hooks_arrive_in_order(probe: Everything, tiny_spec: Path) -> None:
    """An evaluation at step s is reported before step s's own step hook; the run's plug-in
    section reaches the hooks through ``run.spec.sections``."""
    overrides = ["trainer.max_steps=4", "evaluators.0.every=2", "trainer.num_samples=0", "hook_probe={}"]
    train(load_spec(tiny_spec, overrides), quiet=True)
    assert probe.calls == [
        ("start", (0, True, "hello")),
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
