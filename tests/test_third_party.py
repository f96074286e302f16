"""Third-party plug-ins as users meet them: separate distributions installed with pip.

Each distribution is installed with ``pip install --target`` into a temporary site folder and used
from fresh ``mdm`` processes with that folder on PYTHONPATH, so nothing touches the test's own
environment and nothing in the core changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdm_core.errors import MdmError
from mdm_core.scaffold import SUPPORTED_KINDS, new_plugin

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = [
    "trainer.max_steps=3",
    "trainer.ckpt_every=3",
    "trainer.num_samples=0",
    "evaluators.0.every=3",
    "evaluators.0.draws=1",
    "data.num_train=64",
    "data.num_val=16",
    "backbone.dim=16",
    "backbone.layers=1",
    "backbone.heads=2",
]


def pip_install(source: Path, site: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
         str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def mdm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(site), "MDM_STRICT_PLUGINS": "0", **env}
    return subprocess.run(
        [sys.executable, "-m", "mdm_core.cli", *args], capture_output=True, text=True, env=environ,
        cwd=ROOT, timeout=300,
    )  # fmt: skip


def write_distribution(root: Path, dist: str, module: str, body: str) -> Path:
    """A minimal hand-written plug-in distribution, as docs/writing-a-plugin.md describes."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(body)
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{dist}"\nversion = "0.0.1"\ndependencies = ["mdm-core>=0.1,<0.2"]\n'
        f'[project.entry-points.mdm]\n{module} = "{module}"\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n'
    )
    return root


@pytest.fixture(scope="module")
def scaffolded_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("third-party")
    source = new_plugin("cosine-t", "time_sampler", tmp)
    site = tmp / "site"
    pip_install(source, site)
    return site


def test_a_pip_installed_time_sampler_is_used_by_name(scaffolded_site: Path, tmp_path: Path) -> None:
    listing = mdm(scaffolded_site, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    plugins = {p["distribution"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["mdm-plugin-cosine-t"]["version"] == "0.1.0"
    assert plugins["mdm-plugin-cosine-t"]["components"] == {"time_sampler": ["cosine_t"]}
    run = mdm(scaffolded_site, "train", "specs/quickstart.yaml", "time_sampler.name=cosine_t", *TINY_RUN,
              "--run-dir", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lock = (tmp_path / "run" / "plugins.lock").read_text()
    assert "time_sampler cosine_t -> mdm-plugin-cosine-t" in lock


def test_a_broken_plugin_is_reported_and_harms_no_other_run(tmp_path: Path) -> None:
    source = write_distribution(
        tmp_path / "src",
        "mdm-plugin-broken",
        "mdm_plugin_broken",
        "raise ImportError(\"No module named 'scipy'\")\n",
    )
    site = tmp_path / "site"
    pip_install(source, site)
    listing = mdm(site, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    broken = next(
        p for p in json.loads(listing.stdout)["plugins"] if p["distribution"] == "mdm-plugin-broken"
    )
    assert broken["version"] == "0.0.1" and "No module named 'scipy'" in broken["error"]
    text = mdm(site, "plugins")
    assert "LOAD ERROR" in text.stdout and "mdm-plugin-broken" in text.stdout
    assert mdm(site, "spec", "validate", "specs/quickstart.yaml").returncode == 0
    strict = mdm(site, "plugins", MDM_STRICT_PLUGINS="1")
    assert strict.returncode == 3 and "mdm-plugin-broken 0.0.1 failed to load" in strict.stderr
    assert "Traceback" not in strict.stderr
    hidden = mdm(site, "plugins", "--json", MDM_STRICT_PLUGINS="1", MDM_DISABLE_PLUGINS="mdm_plugin_broken")
    assert hidden.returncode == 0
    assert "mdm-plugin-broken" not in hidden.stdout


def test_a_name_registered_twice_names_both_distributions(tmp_path: Path) -> None:
    body = (
        "from mdm_core import ComponentRef, hookimpl\n\n@hookimpl\ndef mdm_components():\n"
        "    target = 'mdm_core.builtin.time_samplers:UniformTimeSampler'\n"
        "    return [ComponentRef('time_sampler', 'dup', target)]\n"
    )
    site = tmp_path / "site"
    for letter in "ab":
        pip_install(
            write_distribution(tmp_path / letter, f"mdm-plugin-dup-{letter}", f"dup_{letter}", body), site
        )
    listing = json.loads(mdm(site, "plugins", "--json").stdout)
    assert listing["conflicts"] == [
        {"kind": "time_sampler", "name": "dup", "distributions": ["mdm-plugin-dup-a", "mdm-plugin-dup-b"]}
    ]
    out = mdm(site, "spec", "validate", "specs/quickstart.yaml", "time_sampler.name=dup")
    assert out.returncode == 3
    assert "mdm-plugin-dup-a 0.0.1 and mdm-plugin-dup-b 0.0.1" in out.stderr


@pytest.mark.parametrize("kind", SUPPORTED_KINDS)
def test_scaffolded_plugins_pass_their_own_tests(kind: str, tmp_path: Path) -> None:
    source = new_plugin(f"my-{kind.replace('_', '-')}", kind, tmp_path)
    site = tmp_path / "site"
    pip_install(source, site)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "1 passed" in out.stdout


def test_scaffold_refuses_bad_names_kinds_and_existing_folders(tmp_path: Path) -> None:
    for name, kind in (("Bad_Name", "loss"), ("ok", "backbone")):
        with pytest.raises(MdmError) as info:
            new_plugin(name, kind, tmp_path)
        assert info.value.exit_code == 2
    new_plugin("twice", "loss", tmp_path)
    with pytest.raises(MdmError, match="already exists"):
        new_plugin("twice", "loss", tmp_path)
