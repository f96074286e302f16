"""The plug-in registry (pluggy is its one source of truth) and the registry catalogue: valid
entries, a schema that cannot drift, truthful first-party data, the installed-versus-catalogued
comparison, and the matrix files."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from packaging.requirements import Requirement

from mdm_core import ComponentRef, hookimpl
from mdm_core.cli import main
from mdm_core.errors import MdmError, PluginError
from mdm_core.kinds import KIND_LABELS, KINDS
from mdm_core.plugins import Registry, core_version, get_registry
from mdm_core.registry_catalog import (
    CHECK_PAIR,
    CatalogEntry,
    Kind,
    MatrixResult,
    compare_installed,
    load_catalog,
    pending_matrix,
    schema,
    write_matrix,
)
from mdm_core.registry_catalog import main as registry_main
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = ROOT / "registry"
GOOD: dict[str, Any] = {
    "distribution": "mdm-plugin-cosine-t",
    "version": "0.1.0",
    "summary": "cosine-shaped time sampling",
    "components": {"time_sampler": ["cosine_t"]},
    "core": "mdm-diffusion>=0.2,<0.3",
    "source": "https://example.org/mdm-plugin-cosine-t",
    "status": "third-party",
}


UNIFORM = "mdm_core.builtin.time_samplers:UniformTimeSampler"


# -- the registry ------------------------------------------------------------------------------


class Late:
    """A plug-in object registered with pluggy after discovery, as a test or a notebook would."""

    def __init__(self, *refs: ComponentRef) -> None:
        self.refs = list(refs)

    @hookimpl
    def mdm_components(self) -> list[ComponentRef]:
        return self.refs


class Raising:
    @hookimpl
    def mdm_components(self) -> list[ComponentRef]:
        raise RuntimeError("boom")


@pytest.fixture
def registered() -> Iterator[list[object]]:
    """Objects appended here are unregistered from the process-wide manager afterwards."""
    objects: list[object] = []
    yield objects
    for obj in objects:
        get_registry().pm.unregister(obj)


def test_a_plugin_registered_with_pluggy_is_listed_and_loadable(
    registered: list[object], tiny_spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = get_registry()
    assert "late_uniform" not in registry.names("time_sampler")
    late = Late(ComponentRef("time_sampler", "late_uniform", UNIFORM, "registered in-process"))
    registry.pm.register(late, name="late")
    registered.append(late)
    assert "late_uniform" in registry.names("time_sampler")
    assert registry.load("time_sampler", "late_uniform").__name__ == "UniformTimeSampler"
    assert registry.provider("time_sampler", "late_uniform").name == "late"
    spec = load_spec(tiny_spec, ["time_sampler.name=late_uniform"])
    assert spec.components["time_sampler"].name == "late_uniform"
    assert main(["plugins", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert listed["late"]["components"] == {"time_sampler": ["late_uniform"]}
    registry.pm.unregister(late)
    registered.remove(late)
    assert "late_uniform" not in registry.names("time_sampler")


def test_a_hook_that_raises_is_that_plugins_load_error(
    registered: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    registry = get_registry()
    for name, obj in [
        ("raising", Raising()),
        ("wrong-kind", Late(ComponentRef("optimizer", "adam", UNIFORM))),
        ("not-a-ref", Late("bell")),  # type: ignore[arg-type]
    ]:
        registry.pm.register(obj, name=name)
        registered.append(obj)
    errors = {p.name: p.error for p in registry.plugins}
    assert errors["raising"] == "mdm_components raised RuntimeError: boom"
    assert errors["wrong-kind"] == f"mdm_components: unknown kind 'optimizer' (kinds: {', '.join(KINDS)})"
    assert errors["not-a-ref"] == "mdm_components returned 'bell', not a ComponentRef"
    assert errors["core"] is None and "uniform" in registry.names("time_sampler")
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "1")
    fresh = Raising()  # a change in the registered plug-ins re-indexes them, now strictly
    registry.pm.register(fresh, name="raising-again")
    registered.append(fresh)
    with pytest.raises(PluginError, match=r"\(in-process\) failed to load: mdm_components raised"):
        registry.names("time_sampler")


def test_load_checks_the_base_class_named_in_the_kinds_table(registered: list[object]) -> None:
    registry = get_registry()
    late = Late(ComponentRef("sampler", "not_a_sampler", UNIFORM))
    registry.pm.register(late, name="late")
    registered.append(late)
    with pytest.raises(PluginError, match=r"is not a subclass of mdm_core\.interfaces\.Sampler"):
        registry.load("sampler", "not_a_sampler")


@pytest.mark.parametrize("disable", ["bell", "mdm-plugin-bell"])
def test_disabled_plugins_are_blocked_in_pluggy(disable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """By entry-point or distribution name; a later registration under that name is refused too."""
    monkeypatch.setenv("MDM_DISABLE_PLUGINS", disable)
    registry = Registry().discover()
    assert registry.pm.is_blocked("bell")
    assert "mdm-plugin-bell" not in {p.distribution for p in registry.plugins}
    assert "bell" not in registry.names("time_sampler")
    assert registry.pm.register(Late(ComponentRef("time_sampler", "bell", UNIFORM)), name="bell") is None
    assert "bell" not in registry.names("time_sampler")
    monkeypatch.setenv("MDM_DISABLE_PLUGINS", "")
    monkeypatch.setenv("MDM_LOAD_PLUGINS", "dit")
    only = Registry().discover()
    assert {p.name for p in only.plugins} == {"core", "dit"} and only.pm.is_blocked("bell")


def test_no_hook_is_called_beside_pluggy() -> None:
    """Every hook call goes through ``pm.hook``: nothing in the core fetches a hook by name."""
    core = Path(__file__).resolve().parent.parent / "mdm_core"
    for path in core.rglob("*.py"):
        assert not re.search(r"getattr\([^)]*[\"']mdm_", path.read_text()), path


def test_labels_and_catalogue_kinds_are_the_kinds_table() -> None:
    assert get_args(Kind) == KINDS
    assert set(KIND_LABELS) == set(KINDS)


# -- the catalogue -----------------------------------------------------------------------------


def test_schema_file_is_generated_from_the_model() -> None:
    assert json.loads((REGISTRY / "schema.json").read_text()) == schema(), (
        "registry/schema.json is stale: python -m mdm_core.registry_catalog schema registry"
    )


def test_every_first_party_plugin_is_catalogued_truthfully() -> None:
    """Each plugins/<dist> has an entry whose components, version and core range are what the
    distribution itself declares and what the installed plug-in registers."""
    catalog = {e.distribution: e for e in load_catalog(REGISTRY)}
    first_party = {e.source for e in catalog.values() if e.status == "first-party"}
    assert first_party == {f"plugins/{p.name}" for p in (ROOT / "plugins").iterdir() if p.is_dir()}
    installed = {p.distribution: p for p in get_registry().plugins}
    for entry in catalog.values():
        if entry.status != "first-party":
            continue
        project = tomllib.loads((ROOT / entry.source / "pyproject.toml").read_text())["project"]
        assert (project["name"], project["version"]) == (entry.distribution, entry.version)
        core = next(Requirement(r) for r in project["dependencies"] if r.startswith("mdm-diffusion"))
        assert core.specifier == Requirement(entry.core).specifier, entry.distribution
        plugin = installed[entry.distribution]
        declared: dict[str, list[str]] = {}
        for ref in plugin.components:
            declared.setdefault(ref.kind, []).append(ref.name)
        assert dict(entry.components) == declared, entry.distribution
        assert entry.spec_sections == [s.name for s in plugin.sections], entry.distribution
        assert plugin.version == entry.version
        assert entry.admits(core_version()), f"{entry.distribution} does not admit core {core_version()}"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"distribution": "cosine-t"}, "distribution"),
        ({"version": "one"}, "version"),
        ({"components": {"optimizer": ["adam"]}}, "components"),
        ({"components": {"time_sampler": []}}, "components"),
        ({"components": {}}, "spec_sections"),
        ({"spec_sections": ["no-dashes"]}, "spec_sections"),
        ({"components": {"time_sampler": ["cosine-t"]}}, "components"),
        ({"core": "torch>=2"}, "core"),
        ({"core": "mdm-diffusion>=0.1,<<0.2"}, "core"),
        ({"status": "official"}, "status"),
        ({"homepage": "https://example.org"}, "homepage"),
    ],
)
def test_invalid_entries_name_the_file_and_field(change: dict[str, Any], field: str, tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    entry = {**GOOD, **change}
    body = "\n".join(f"{key} = {json.dumps(value)}" for key, value in entry.items() if key != "components")
    components = "\n".join(f"{kind} = {json.dumps(names)}" for kind, names in entry["components"].items())
    (tmp_path / "plugins" / "mdm-plugin-cosine-t.toml").write_text(f"{body}\n[components]\n{components}\n")
    with pytest.raises(MdmError, match="mdm-plugin-cosine-t.toml") as info:
        load_catalog(tmp_path)
    assert field in str(info.value)


def test_a_valid_third_party_entry_and_the_file_name_rule(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    text = "\n".join(f"{k} = {json.dumps(v)}" for k, v in GOOD.items() if k != "components")
    path = tmp_path / "plugins" / "mdm-plugin-cosine-t.toml"
    path.write_text(text + '\n[components]\ntime_sampler = ["cosine_t"]\n')
    assert load_catalog(tmp_path) == [CatalogEntry.model_validate(GOOD)]
    path.rename(tmp_path / "plugins" / "cosine.toml")
    with pytest.raises(MdmError, match="name the file mdm-plugin-cosine-t.toml"):
        load_catalog(tmp_path)
    (tmp_path / "plugins" / "cosine.toml").unlink()
    with pytest.raises(MdmError, match="no registry entries"):
        load_catalog(tmp_path)


def test_compare_installed_against_the_catalogue() -> None:
    catalog = load_catalog(REGISTRY)
    registry = get_registry()
    rows = {r["distribution"]: r for r in compare_installed(catalog, registry)}
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert rows["mdm-plugin-bell"] == {
        "distribution": "mdm-plugin-bell", "catalogued": "0.2.0", "installed": "0.2.0", "status": "ok"
    }  # fmt: skip
    bell = next(e for e in catalog if e.distribution == "mdm-plugin-bell")
    edited = [
        bell.model_copy(update={"version": "0.3.0"}),
        CatalogEntry.model_validate(GOOD),
    ]
    rows = {r["distribution"]: r for r in compare_installed(edited, registry)}
    assert rows["mdm-plugin-bell"]["status"] == "version differs"
    assert rows["mdm-plugin-cosine-t"] == {
        "distribution": "mdm-plugin-cosine-t",
        "catalogued": "0.1.0",
        "installed": "-",
        "status": "not installed",
    }
    assert rows["mdm-plugin-dit"]["status"] == "not catalogued"
    assert "mdm-diffusion" not in rows


def test_plugins_command_compares_with_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json", "--registry", str(REGISTRY)]) == 0
    rows = json.loads(capsys.readouterr().out)["registry"]
    assert {r["distribution"] for r in rows} == {e.distribution for e in load_catalog(REGISTRY)}
    assert main(["plugins", "--registry", str(REGISTRY)]) == 0
    assert "distribution=mdm-plugin-bell" in capsys.readouterr().out


def test_matrix_files(tmp_path: Path) -> None:
    cells = pending_matrix(["a", "b", "c"])
    assert [(c.plugins, c.check) for c in cells][3:] == [
        (["a", "b"], CHECK_PAIR), (["a", "c"], CHECK_PAIR), (["b", "c"], CHECK_PAIR)
    ]  # fmt: skip
    cells[0] = cells[0].model_copy(update={"status": "pass", "seconds": 12.3})
    cells[4] = cells[4].model_copy(update={"status": "fail", "seconds": 40.0})
    write_matrix(cells, tmp_path, environment={"mdm-diffusion": "0.1.0", "torch": "2.13.0"})
    md = (tmp_path / "matrix.md").read_text()
    assert "mdm-diffusion 0.1.0, torch 2.13.0" in md
    assert "| **a** | pass | not yet generated | **FAIL** |" in md
    assert "| **c** | **FAIL** | not yet generated | not yet generated |" in md
    assert "| a + c | composed training run | **FAIL** | 40 |" in md
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert [MatrixResult.model_validate(r) for r in data["results"]] == cells
    assert data["environment"]["torch"] == "2.13.0" and data["generated"]


def test_the_module_command_writes_schema_and_matrix(tmp_path: Path) -> None:
    """What ``nox -s matrix`` and maintainers run: ``python -m mdm_core.registry_catalog ...``."""
    (tmp_path / "plugins").mkdir()
    for entry in (REGISTRY / "plugins").glob("*.toml"):
        (tmp_path / "plugins" / entry.name).write_text(entry.read_text())
    assert registry_main(["schema", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "schema.json").read_text()) == schema()
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"plugins": ["x"], "check": "own tests", "status": "pass", "seconds": 1}]))
    assert registry_main(["matrix", str(results), str(tmp_path)]) == 0
    written = json.loads((tmp_path / "matrix.json").read_text())
    assert written["environment"]["mdm-diffusion"] == core_version() and written["environment"]["device"]
    assert "| **x** | pass |" in (tmp_path / "matrix.md").read_text()
    (tmp_path / "plugins" / "mdm-plugin-bell.toml").write_text('status = "official"\n')
    assert registry_main(["schema", str(tmp_path)]) == 2


def test_the_published_matrix_covers_every_first_party_plugin_and_pair() -> None:
    data = json.loads((REGISTRY / "matrix.json").read_text())
    results = [MatrixResult.model_validate(r) for r in data["results"]]
    first_party = {
        e.distribution.removeprefix("mdm-plugin-")
        for e in load_catalog(REGISTRY)
        if e.status == "first-party"
    }
    assert {r.plugins[0] for r in results if len(r.plugins) == 1} == first_party
    pairs = {frozenset(r.plugins) for r in results if len(r.plugins) == 2}
    assert pairs == {frozenset((a, b)) for a in first_party for b in first_party if a != b}
    assert "# Compatibility matrix" in (REGISTRY / "matrix.md").read_text()
