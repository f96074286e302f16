"""The core's distribution name (issue 11 §7): ``mdm-core`` on PyPI is an unrelated project that
also installs ``mdm_core``, so the core is ``mdm-diffusion``, and ``mdm plugins`` names any other
distribution providing ``mdm_core`` (a fake one is installed into a temporary sys.path entry)."""

from __future__ import annotations

import contextlib
import io
import os
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import mdm_core
from mdm_core.cli import main
from mdm_core.plugins import CORE_DISTRIBUTION, core_shadowing
from mdm_core.scaffold import CORE_REQUIREMENT

ROOT = Path(__file__).resolve().parent.parent
OLD_NAME = "mdm-core"


def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())["project"]


def test_the_core_and_every_first_party_plugin_use_the_distribution_name() -> None:
    core = _pyproject(ROOT / "pyproject.toml")
    assert core["name"] == CORE_DISTRIBUTION == "mdm-diffusion"
    assert core["optional-dependencies"]["dev"][0] == f"{CORE_DISTRIBUTION}[test]"
    plugins = sorted((ROOT / "plugins").glob("*/pyproject.toml"))
    assert len(plugins) >= 5
    for path in plugins:
        names = {Requirement(r).name for r in _pyproject(path)["dependencies"]}
        assert CORE_DISTRIBUTION in names and OLD_NAME not in names, path
    assert Requirement(CORE_REQUIREMENT).name == CORE_DISTRIBUTION


def test_no_first_party_file_still_names_the_old_distribution() -> None:
    """Plug-in projects, registry entries, docs and the scaffold's templates."""
    files = [
        *(ROOT / "plugins").glob("*/pyproject.toml"),
        *(ROOT / "registry" / "plugins").glob("*.toml"),
        ROOT / "registry" / "README.md",
        *(ROOT / "docs").rglob("*.md"),
        *(ROOT / "mdm_core" / "templates").glob("*.tmpl"),
    ]
    assert len(files) > 10
    assert [str(f.relative_to(ROOT)) for f in files if OLD_NAME in f.read_text()] == []


def test_the_installed_core_is_ours_and_nothing_shadows_it() -> None:
    dist = metadata.distribution(CORE_DISTRIBUTION)
    assert dist.version == mdm_core.__version__
    assert CORE_DISTRIBUTION in metadata.packages_distributions()["mdm_core"]
    assert core_shadowing() == []


def _fake_dist(site: Path, name: str, record: list[str]) -> None:
    """A minimal installed distribution (dist-info) declaring a top-level ``mdm_core``."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "top_level.txt").write_text("mdm_core\n")
    (info / "RECORD").write_text("".join(f"{line},,\n" for line in record))


def _plugins(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["plugins", *argv])
    return code, out.getvalue()


def test_a_foreign_mdm_core_is_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dist(tmp_path, OLD_NAME, ["mdm_core/__init__.py", "mdm_core/converter.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    (line,) = core_shadowing()
    assert line.startswith(f"{OLD_NAME} 0.1.0 also installs a top-level mdm_core package")
    assert f"pip uninstall {OLD_NAME} && pip install --force-reinstall {CORE_DISTRIBUTION}" in line
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "1")
    code, text = _plugins()
    assert code == 3 and f"SHADOWED: {line}" in text
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    code, text = _plugins("--json")
    assert code == 0 and OLD_NAME in text


def test_an_imported_foreign_mdm_core_is_named_as_the_one_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The foreign distribution's files include the ``mdm_core/__init__.py`` imported now."""
    imported = Path(mdm_core.__file__ or "").resolve()
    _fake_dist(tmp_path, "docconv-core", [os.path.relpath(imported, tmp_path)])
    monkeypatch.syspath_prepend(str(tmp_path))
    (line,) = core_shadowing()
    assert line.startswith(f"mdm_core is imported from {imported}, which belongs to docconv-core 0.1.0")
