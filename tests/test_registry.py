"""The registry catalogue: valid entries, a schema that cannot drift, and truthful first-party data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from mdm_core.cli import main
from mdm_core.errors import MdmError
from mdm_core.plugins import core_version, get_registry
from mdm_core.registry_catalog import CatalogEntry, compare_installed, load_catalog, write_matrix

REGISTRY = Path(__file__).resolve().parent.parent / "registry"


def test_schema_file_is_generated_from_the_model() -> None:
    assert json.loads((REGISTRY / "schema.json").read_text()) == CatalogEntry.model_json_schema()


def test_first_party_entries_match_the_installed_plugins() -> None:
    catalog = load_catalog(REGISTRY)
    installed = {p.distribution: p for p in get_registry().plugins}
    for entry in catalog:
        plugin = installed[entry.distribution]
        declared: dict[str, list[str]] = {}
        for ref in plugin.components:
            declared.setdefault(ref.kind, []).append(ref.name)
        assert entry.components == declared, entry.distribution
        assert entry.version == plugin.version
        assert core_version() in SpecifierSet(entry.core.removeprefix("mdm-core"))
        assert (REGISTRY.parent / entry.source / "pyproject.toml").is_file()
    assert all(row["status"] == "ok" for row in compare_installed(catalog, get_registry()))


def test_invalid_entry_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "bad.toml").write_text('distribution = "x"\nversion = 1\n')
    with pytest.raises(MdmError, match="bad.toml"):
        load_catalog(tmp_path)


def test_plugins_command_compares_with_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--registry", str(REGISTRY)]) == 0
    out = capsys.readouterr().out
    assert "distribution=mdm-plugin-bell" in out and "status=ok" in out


def test_matrix_writer(tmp_path: Path) -> None:
    write_matrix([{"plugins": ["bell", "puma"], "check": "composed training run", "ok": False}], tmp_path)
    assert "| bell + puma | composed training run | FAIL |" in (tmp_path / "matrix.md").read_text()
    assert json.loads((tmp_path / "matrix.json").read_text())[0]["ok"] is False
