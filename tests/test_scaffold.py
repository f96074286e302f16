"""``mdm new-plugin``: every kind it offers is a distribution that installs and passes its own tests.

All kinds are scaffolded and pip-installed into one temporary site folder, then the generated tests
run together in one fresh pytest process with that folder on PYTHONPATH — as an author would run
them after ``pip install -e .``. One copy has a deliberately broken law, to show that the generated
tests can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from mdm_core.cli import main
from mdm_core.errors import MdmError
from mdm_core.kinds import KINDS
from mdm_core.plugins import core_version
from mdm_core.scaffold import CORE_REQUIREMENT, SUPPORTED_KINDS, new_plugin

BROKEN = "broken-t"


def pip_install(sources: list[Path], site: Path) -> None:
    """``pip install --no-deps --target site`` offline when this environment can build wheels."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    setuptools = Version(metadata.version("setuptools"))
    if setuptools >= Version("70.1"):  # builds wheels itself: no isolated build env to download
        command.append("--no-build-isolation")
    out = subprocess.run([*command, *map(str, sources)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def junit_outcomes(report: Path) -> dict[str, str]:
    """``module::test`` → "passed", "skipped: …" or "failure: <message>", from a JUnit XML report."""
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        problems = [case.find(tag) for tag in ("failure", "error", "skipped")]
        problem = next((p for p in problems if p is not None), None)
        outcome = "passed" if problem is None else problem.tag + ": " + problem.get("message", "")
        module = (case.get("classname") or "").rpartition(".")[2]
        outcomes[f"{module}::{case.get('name')}"] = outcome
    return outcomes


def plugin_name(kind: str) -> str:
    return "my-" + kind.replace("_", "-")


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder with one scaffold per kind plus a broken time sampler, the site they are installed in)."""
    root = tmp_path_factory.mktemp("scaffold")
    sources = [new_plugin(plugin_name(kind), kind, root) for kind in SUPPORTED_KINDS]
    broken = new_plugin(BROKEN, "time_sampler", root)
    component = broken / "src" / "mdm_plugin_broken_t" / "component.py"
    text = component.read_text()
    assert "return eps + (1.0 - eps) * u" in text
    component.write_text(text.replace("return eps + (1.0 - eps) * u", "return eps + 2.0 * u"))
    site = root / "site"
    pip_install([*sources, broken], site)
    return root, site


def test_every_kind_can_be_scaffolded() -> None:
    assert SUPPORTED_KINDS == KINDS


def test_every_scaffolded_kind_passes_its_own_tests(scaffolded: tuple[Path, Path]) -> None:
    root, site = scaffolded
    report = root / "report.xml"
    tests = [str(root / f"mdm-plugin-{plugin_name(kind)}" / "tests") for kind in SUPPORTED_KINDS]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
         f"--junitxml={report}", *tests, str(root / f"mdm-plugin-{BROKEN}" / "tests")],
        capture_output=True, text=True, timeout=600, cwd=root,
        env={**os.environ, "PYTHONPATH": str(site), "MDM_STRICT_PLUGINS": "1"},
    )  # fmt: skip
    outcomes = junit_outcomes(report)
    broken = outcomes.pop("test_broken_t::test_conformance", "")
    assert len(outcomes) == 2 * len(SUPPORTED_KINDS) + 1, (outcomes, out.stdout[-3000:])
    assert set(outcomes.values()) == {"passed"}, out.stdout[-5000:]
    assert "t must lie in (0, 1]" in broken, out.stdout[-3000:]


def test_scaffolds_register_without_importing_their_components(scaffolded: tuple[Path, Path]) -> None:
    """``mdm plugins`` lists every scaffold by kind, and imports neither torch nor component code."""
    _, site = scaffolded
    code = (
        "import json, sys\nfrom mdm_core.cli import main\nmain(['plugins', '--json'])\n"
        "print(json.dumps([m for m in sys.modules if m == 'torch' or m.endswith('.component')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(site)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    listing, _, heavy = out.stdout.rpartition("\n[")
    assert json.loads("[" + heavy) == []
    plugins = {p["distribution"]: p for p in json.loads(listing)["plugins"]}
    for kind in SUPPORTED_KINDS:
        entry = plugins[f"mdm-plugin-{plugin_name(kind)}"]
        assert entry["error"] is None and entry["version"] == "0.1.0"
        assert entry["components"] == {kind: [plugin_name(kind).replace("-", "_")]}


def test_the_distribution_declares_core_range_classifier_and_entry_point(
    scaffolded: tuple[Path, Path],
) -> None:
    root, site = scaffolded
    project = tomllib.loads((root / "mdm-plugin-my-loss" / "pyproject.toml").read_text())["project"]
    assert project["name"] == "mdm-plugin-my-loss"
    assert project["dependencies"] == [CORE_REQUIREMENT] == ["mdm-diffusion>=0.2,<0.3"]
    assert project["classifiers"] == ["Framework :: MDM"]
    assert project["entry-points"]["mdm"] == {"my_loss": "mdm_plugin_my_loss"}
    installed = next(d for d in metadata.distributions(path=[str(site)]) if d.name == "mdm-plugin-my-loss")
    required = [Requirement(r) for r in installed.requires or [] if "extra ==" not in r]
    assert [(r.name, r.specifier) for r in required] == [("mdm-diffusion", SpecifierSet(">=0.2,<0.3"))]
    assert core_version() in required[0].specifier
    assert "Framework :: MDM" in installed.metadata.get_all("Classifier", [])
    assert [(ep.group, ep.name, ep.value) for ep in installed.entry_points] == [
        ("mdm", "my_loss", "mdm_plugin_my_loss")
    ]


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("Bad_Name", "loss", "cannot name a plug-in"),
        ("9lives", "loss", "cannot name a plug-in"),
        ("double--dash", "loss", "cannot name a plug-in"),
        ("class", "loss", "cannot name a plug-in"),
        ("ok", "optimizer", "unknown --kind 'optimizer'"),
        ("uniform", "time_sampler", "already registered by mdm-diffusion"),
    ],
)
def test_bad_requests_are_refused_clearly(name: str, kind: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(MdmError, match=message) as info:
        new_plugin(name, kind, tmp_path)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_never_overwritten(tmp_path: Path) -> None:
    first = new_plugin("mdm-plugin-twice", "loss", tmp_path)  # the prefix is optional
    assert first == tmp_path / "mdm-plugin-twice"
    readme = (first / "README.md").read_text()
    (first / "README.md").write_text("mine")
    with pytest.raises(MdmError, match="already exists"):
        new_plugin("twice", "loss", tmp_path)
    assert (first / "README.md").read_text() == "mine" != readme


def test_the_cli_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "cosine-t", "--kind", "time_sampler", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "mdm-plugin-cosine-t" / "tests" / "test_cosine_t.py").is_file()
    assert "mdm-plugin-cosine-t" in capsys.readouterr().out
    assert main(["new-plugin", "cosine-t", "--kind", "loss", "--dest", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new-plugin", "my-eval", "--kind", "evaluators", "--dest", str(tmp_path)]) == 0
    readme = (tmp_path / "mdm-plugin-my-eval" / "README.md").read_text()
    assert "evaluators: [{name: my_eval}]" in readme  # the kind's spec section, from the kinds table
