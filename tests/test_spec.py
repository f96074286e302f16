"""Spec loading: composition, overrides, interpolation, two-phase validation, plug-in sections,
clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import BaseModel, ConfigDict, Field

from mdm_core.errors import PluginError, SpecError
from mdm_core.hookspecs import SpecSection, hookimpl
from mdm_core.kinds import KIND_TABLE, SINGLE_SECTIONS
from mdm_core.plugins import CORE_SECTIONS, SECTION, get_registry
from mdm_core.spec import LIST_SECTIONS, RunSpec, load_spec

if TYPE_CHECKING:
    from mdm_core.trainer import RunContext

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_spec_validates() -> None:
    spec = load_spec(ROOT / "specs" / "quickstart.yaml")
    assert spec.components["backbone"].name == "dit"
    assert spec.components["data"].params.vocab_size >= 32
    assert spec.run.trainer.max_steps > 0


def test_base_composition_and_interpolation(tmp_path: Path, tiny_spec: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(
        f"base: {tiny_spec}\nname: child\ntrainer: {{lr: 1e-2, warmup: '${{trainer.log_every}}'}}\n"
    )
    spec = load_spec(child)
    assert spec.run.name == "child"
    assert spec.run.trainer.lr == pytest.approx(1e-2)
    assert spec.run.trainer.warmup == spec.run.trainer.log_every == 2
    assert spec.run.trainer.max_steps == 8  # inherited


def test_overrides_apply_last(tiny_spec: Path) -> None:
    spec = load_spec(tiny_spec, ["trainer.max_steps=3", "backbone.dim=16"])
    assert spec.run.trainer.max_steps == 3
    assert spec.components["backbone"].params.dim == 16
    assert "trainer.max_steps: 3" in spec.to_yaml().replace("\n  max_steps: 3", "trainer.max_steps: 3")


def test_misspelled_trainer_key_names_key_and_suggestion(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["trainer.max_stepz=3"])
    msg = str(info.value)
    assert "trainer.max_stepz" in msg and "did you mean 'max_steps'" in msg and "(override)" in msg
    assert info.value.exit_code == 2


def test_misspelled_component_name_suggests(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["time_sampler.name=unifrom"])
    msg = str(info.value)
    assert "no time sampler called 'unifrom'" in msg and "did you mean 'uniform'" in msg
    assert "uniform (mdm-diffusion" in msg and "installed:" in msg


def test_unknown_component_parameter_lists_parameters(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["forward_process.schedul=cosine"])
    msg = str(info.value)
    assert "forward_process.schedul: unknown parameter of 'absorbing'" in msg
    assert "did you mean 'schedule'" in msg and "mdm-diffusion" in msg


def test_error_names_the_file_that_set_the_key(tmp_path: Path, tiny_spec: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {tiny_spec}\ntrainer: {{batch_size: many}}\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    msg = str(info.value)
    assert str(child) in msg and "trainer.batch_size" in msg and "'many'" in msg


def test_bad_value_and_bad_yaml_and_missing_file(tmp_path: Path, tiny_spec: Path) -> None:
    with pytest.raises(SpecError, match="forward_process.schedule"):
        load_spec(tiny_spec, ["forward_process.schedule=square"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    with pytest.raises(SpecError, match="not a valid YAML spec"):
        load_spec(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not key=value"):
        load_spec(tiny_spec, ["trainer.max_steps"])


def test_requires_checks_installed_versions(tmp_path: Path, tiny_spec: Path) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"base: {tiny_spec}\nrequires: ['mdm-diffusion>=0.1']\n")
    load_spec(ok)
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"base: {tiny_spec}\nrequires: ['mdm-plugin-nonexistent>=1']\n")
    with pytest.raises(SpecError, match="not installed"):
        load_spec(missing)
    too_new = tmp_path / "new.yaml"
    too_new.write_text(f"base: {tiny_spec}\nrequires: ['mdm-diffusion>=99']\n")
    with pytest.raises(SpecError, match="is installed"):
        load_spec(too_new)


def test_circular_base_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(SpecError, match="circular"):
        load_spec(a)


# -- derived from the one table of kinds -------------------------------------------------------


def test_run_spec_sections_are_the_kinds_sections() -> None:
    """The run schema's component fields, the spec loader's tables and the sections the core
    reserves against plug-ins all come from ``mdm_core.kinds``."""
    sections = {k.section for k in KIND_TABLE}
    component_fields = {
        name for name, info in RunSpec.model_fields.items() if "ComponentChoice" in str(info.annotation)
    }
    assert component_fields == sections
    assert {k.section: k.name for k in KIND_TABLE} == {**SINGLE_SECTIONS, **LIST_SECTIONS}
    assert set(RunSpec.model_fields) | {"base"} == CORE_SECTIONS


# -- plug-in spec sections (``mdm_spec_sections``) ---------------------------------------------


class FileLoggerParams(BaseModel):
    """The ``file_logger`` section: where the test logger writes its final metrics."""

    model_config = ConfigDict(extra="forbid")
    path: str
    indent: int = Field(0, ge=0)


class FileLogger:
    """A tiny logger plug-in configured from YAML: writes the final metrics to the configured file."""

    @hookimpl
    def mdm_spec_sections(self) -> list[SpecSection]:
        return [
            SpecSection("file_logger", f"{__name__}:FileLoggerParams", "final metrics as JSON"),
            SpecSection("ghost", "mdm_no_such_module:Params", "never imported unless a spec uses it"),
        ]

    @hookimpl
    def mdm_run_end(self, run: RunContext, metrics: dict[str, float]) -> None:
        config = run.spec.sections.get("file_logger")
        if isinstance(config, FileLoggerParams):
            Path(config.path).write_text(json.dumps(metrics, indent=config.indent or None))


@pytest.fixture
def file_logger() -> Iterator[FileLogger]:
    plugin = FileLogger()
    get_registry().pm.register(plugin, name="file-logger")
    try:
        yield plugin
    finally:
        get_registry().pm.unregister(plugin)


@pytest.mark.usefixtures("file_logger")
def test_a_plugin_section_is_validated_and_exposed(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "final.json"
    spec = load_spec(tiny_spec, [f"file_logger={{path: {out}, indent: 2}}"])
    assert spec.sections == {"file_logger": FileLoggerParams(path=str(out), indent=2)}
    assert "file_logger" in spec.to_yaml()
    # The logger reads its config from the spec it is handed, through pluggy's real dispatch.
    from mdm_core.trainer import RunContext

    run = RunContext(run_dir=tmp_path, spec=spec, rank=0, world_size=1)
    get_registry().pm.hook.mdm_run_end(run=run, metrics={"val/nll": 1.5})
    assert json.loads(out.read_text()) == {"val/nll": 1.5}
    assert load_spec(tiny_spec).sections == {}  # a section the spec does not write is absent


@pytest.mark.usefixtures("file_logger")
def test_plugin_section_errors_name_key_file_and_plugin(tiny_spec: Path, tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {tiny_spec}\nfile_logger: {{path: x.json, indnet: 2}}\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    msg = str(info.value)
    assert f"{child}: file_logger.indnet: unknown key; did you mean 'indent'?" in msg
    assert "keys of file_logger: path, indent" in msg
    assert "(spec section 'file_logger' from file-logger (in-process))" in msg
    assert info.value.exit_code == 2
    with pytest.raises(SpecError, match=r"\(override\): file_logger.indent: .*greater than or equal to 0"):
        load_spec(child, ["file_logger={path: x.json, indent: -1}"])
    with pytest.raises(SpecError, match="file_logger.path: required but missing"):
        load_spec(tiny_spec, ["file_logger={indent: 1}"])


@pytest.mark.usefixtures("file_logger")
def test_undeclared_top_level_keys_are_still_refused(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["file_loger={path: x.json}"])
    msg = str(info.value)
    assert "file_loger: unknown key; did you mean 'file_logger'?" in msg
    assert "file_logger" in msg.splitlines()[-1] and info.value.exit_code == 2


@pytest.mark.usefixtures("file_logger")
def test_a_section_model_is_imported_only_when_a_spec_uses_it(tiny_spec: Path) -> None:
    load_spec(tiny_spec)  # "ghost" is declared by a module that does not exist
    with pytest.raises(PluginError, match=r"spec section 'ghost' from file-logger .*mdm_no_such_module"):
        load_spec(tiny_spec, ["ghost={a: 1}"])


class Twin:
    @hookimpl
    def mdm_spec_sections(self) -> list[SpecSection]:
        return [
            SpecSection("file_logger", f"{__name__}:FileLoggerParams"),
            SpecSection("trainer", f"{__name__}:FileLoggerParams"),
        ]


@pytest.mark.usefixtures("file_logger")
def test_two_plugins_declaring_one_section_are_named(
    tiny_spec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    twin = Twin()
    pm = get_registry().pm
    pm.register(twin, name="twin")
    try:
        with pytest.raises(PluginError) as info:
            load_spec(tiny_spec, ["file_logger={path: x.json}"])
        both = "file-logger (in-process) and twin (in-process)"
        assert f"spec section 'file_logger' is registered by both {both}" in str(info.value)
        conflicts = get_registry().conflicts
        assert [p.name for p in conflicts[(SECTION, "trainer")]] == ["core", "twin"]
        assert load_spec(tiny_spec).run.trainer.max_steps == 8  # the core's own section is unaffected
        monkeypatch.setenv("MDM_STRICT_PLUGINS", "1")
        pm.unregister(twin)
        twin = Twin()
        pm.register(twin, name="twin")  # re-indexed: strict mode refuses the registry outright
        with pytest.raises(PluginError, match="registered by both"):
            get_registry().sections  # noqa: B018
    finally:
        pm.unregister(twin)
