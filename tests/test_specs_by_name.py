"""Shipped specs are installed with the package and resolve by name from any directory; a file of
the same name wins; an unknown name is exit 2 listing the shipped ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from mdm_core.cli import main
from mdm_core.errors import SpecError
from mdm_core.shipped_specs import resolve_spec, shipped_dir, shipped_spec, shipped_specs
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
REPO_SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))


def test_every_spec_of_the_repository_is_shipped() -> None:
    assert sorted(shipped_specs()) == REPO_SPECS
    assert shipped_dir().resolve() == (ROOT / "specs").resolve()  # an editable install: the same files


@pytest.mark.parametrize("reference", ["quickstart", "quickstart.yaml", "specs/quickstart.yaml"])
def test_names_resolve_from_any_directory(
    reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert shipped_spec(reference) == shipped_specs()["quickstart"]
    assert main(["spec", "show", reference, "trainer.max_steps=7"]) == 0
    assert "max_steps: 7" in capsys.readouterr().out


def test_a_shipped_spec_with_a_base_validates_outside_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["spec", "validate", "bell-markov"]) == 0  # its base: specs/quickstart.yaml
    assert "is valid" in capsys.readouterr().out


@pytest.mark.parametrize("base", ["quickstart", "specs/quickstart.yaml"])
def test_base_names_a_shipped_spec_outside_the_repository(
    base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"base: {base}\nname: mine\ntrainer: {{max_steps: 3}}\n")
    spec = load_spec(mine)
    assert spec.run.name == "mine" and spec.run.trainer.max_steps == 3
    assert spec.components["backbone"].name == load_spec("quickstart").components["backbone"].name


def test_a_file_wins_over_a_shipped_spec_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "one"  # two sibling folders: base: also searches a spec's ancestors
    here.mkdir()
    monkeypatch.chdir(here)
    (here / "quickstart").write_text("base: specs/quickstart.yaml\nname: local-file\n")
    assert resolve_spec("quickstart") == Path("quickstart")
    assert load_spec("quickstart").run.name == "local-file"
    other = tmp_path / "other"
    (other / "specs").mkdir(parents=True)
    monkeypatch.chdir(other)
    (other / "specs" / "quickstart.yaml").write_text("base: quickstart\nname: local-base\n")
    child = other / "child.yaml"
    child.write_text("base: specs/quickstart.yaml\n")
    assert load_spec(child).run.name == "local-base"


def test_an_unknown_name_is_exit_2_listing_the_shipped_specs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="quickstart"):
        resolve_spec("quikstart")
    assert main(["train", "quikstart"]) == 2
    err = capsys.readouterr().err
    assert "file not found: quikstart" in err and all(name in err for name in REPO_SPECS)
    assert shipped_spec("/abs/quickstart.yaml") is None and shipped_spec("other/quickstart") is None


def test_pyproject_lists_every_package_of_mdm_core() -> None:
    """Packages are listed (not found) so that specs/ installs as mdm_core.specs: a new package
    of mdm_core/ must be added there, or a wheel would silently lack it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_namespace_packages(str(ROOT), include=["mdm_core*"]))
    found = {p for p in found if "__pycache__" not in p}
    assert set(tool["packages"]) == found | {"mdm_core.specs", "mdm_core.registry"}
    assert tool["package-dir"] == {"mdm_core.specs": "specs", "mdm_core.registry": "registry"}


def test_a_wheel_carries_the_specs_and_the_catalogue(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("mdm_core", "specs", "registry"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"mdm_core/specs/{name}.yaml" for name in REPO_SPECS} <= names
    catalogue = {
        f"mdm_core/registry/plugins/{p.name}" for p in (ROOT / "registry" / "plugins").glob("*.toml")
    }
    assert catalogue <= names  # mdm plugins --available works from a wheel
