"""Third-party plug-ins as users meet them: separate distributions installed with pip.

One temporary site folder holds four distributions installed with ``pip install --target``: a time
sampler scaffolded by ``mdm new-plugin``, a plug-in whose registration module raises on import,
and two plug-ins registering the same name. ``mdm`` runs as a fresh process with that folder on
PYTHONPATH, so nothing touches the test's own environment and nothing in the core changes. Spec
validation, which needs torch, runs in-process with the folder on ``sys.path`` to stay fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from mdm_core.cli import main
from mdm_core.plugins import reset_registry
from mdm_core.scaffold import CORE_REQUIREMENT, new_plugin

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "specs" / "quickstart.yaml")
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
DUPLICATE = """\
from mdm_core import ComponentRef, hookimpl


@hookimpl
def mdm_components():
    return [ComponentRef("time_sampler", "dup", "mdm_core.builtin.time_samplers:UniformTimeSampler")]
"""


def pip_install(sources: list[Path], site: Path) -> None:
    """``pip install --no-deps --target site`` offline when this environment can build wheels."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
    if Version(metadata.version("setuptools")) >= Version("70.1"):  # builds wheels itself
        command.append("--no-build-isolation")
    out = subprocess.run([*command, *map(str, sources)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


def write_distribution(root: Path, dist: str, module: str, body: str) -> Path:
    """A minimal hand-written plug-in distribution, as docs/writing-a-plugin.md describes it."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(body)
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{dist}"\nversion = "0.0.1"\ndependencies = ["{CORE_REQUIREMENT}"]\n'
        f'classifiers = ["Framework :: MDM"]\n\n[project.entry-points.mdm]\n{module} = "{module}"\n\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n'
    )
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("third-party")
    sources = [
        new_plugin("cosine-t", "time_sampler", tmp),
        write_distribution(
            tmp / "broken",
            "mdm-plugin-broken",
            "mdm_plugin_broken",
            "raise ImportError(\"No module named 'scipy'\")\n",
        ),
        write_distribution(tmp / "dup-a", "mdm-plugin-dup-a", "dup_a", DUPLICATE),
        write_distribution(tmp / "dup-b", "mdm-plugin-dup-b", "dup_b", DUPLICATE),
    ]
    pip_install(sources, tmp / "site")
    return tmp / "site"


def mdm(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MDM_")}
    return subprocess.run(
        [sys.executable, "-m", "mdm_core.cli", *args], capture_output=True, text=True, cwd=ROOT,
        env={**environ, "PYTHONPATH": str(site), **env}, timeout=300,
    )  # fmt: skip


def listing(site: Path, **env: str) -> dict[str, dict[str, object]]:
    out = mdm(site, "plugins", "--json", **env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    return {"_conflicts": report["conflicts"], **{p["distribution"]: p for p in report["plugins"]}}


@pytest.fixture
def site_on_path(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The site's distributions visible to this process's registry, for in-process commands."""
    for name in ("MDM_STRICT_PLUGINS", "MDM_DISABLE_PLUGINS", "MDM_LOAD_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(site))
    reset_registry()
    yield
    reset_registry()


def test_a_pip_installed_time_sampler_is_used_by_name(site: Path, tmp_path: Path) -> None:
    """Scaffolded, pip-installed, named in a spec override: a real run uses it, untouched by the
    broken and conflicting plug-ins installed beside it (the run names none of theirs)."""
    plugins = listing(site)
    assert plugins["mdm-plugin-cosine-t"] == {
        "name": "cosine_t",
        "distribution": "mdm-plugin-cosine-t",
        "version": "0.1.0",
        "module": "mdm_plugin_cosine_t",
        "error": None,
        "components": {"time_sampler": ["cosine_t"]},
        "sections": [],
    }
    run = mdm(site, "train", QUICKSTART, "time_sampler.name=cosine_t", *TINY_RUN,
              "--run-dir", str(tmp_path / "run"), "--quiet")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lock = (tmp_path / "run" / "plugins.lock").read_text()
    assert "mdm-plugin-cosine-t==0.1.0" in lock
    assert "time_sampler cosine_t -> mdm-plugin-cosine-t" in lock


def test_a_broken_plugin_is_reported_not_fatal(site: Path) -> None:
    broken = listing(site)["mdm-plugin-broken"]
    assert broken["version"] == "0.0.1" and broken["components"] == {}
    assert broken["error"] == "ImportError: No module named 'scipy'"
    text = mdm(site, "plugins")
    assert text.returncode == 0
    line = next(row for row in text.stdout.splitlines() if row.startswith("mdm-plugin-broken"))
    assert "0.0.1" in line and "LOAD ERROR: ImportError: No module named 'scipy'" in line


def test_strict_mode_fails_clearly_and_disabling_hides_the_plugin(site: Path) -> None:
    strict = mdm(site, "plugins", MDM_STRICT_PLUGINS="1", MDM_DISABLE_PLUGINS="dup_b")
    assert strict.returncode == 3
    assert "error: plug-in mdm-plugin-broken 0.0.1 failed to load: ImportError" in strict.stderr
    assert "Traceback" not in strict.stderr
    hidden = listing(site, MDM_STRICT_PLUGINS="1", MDM_DISABLE_PLUGINS="mdm_plugin_broken,mdm-plugin-dup-b")
    assert "mdm-plugin-broken" not in hidden and "mdm-plugin-dup-b" not in hidden
    assert hidden["mdm-plugin-dup-a"]["error"] is None and hidden["_conflicts"] == []
    only = listing(site, MDM_LOAD_PLUGINS="cosine_t")
    assert set(only) == {"_conflicts", "mdm-diffusion", "mdm-plugin-cosine-t"}


def test_a_name_registered_twice_names_both_distributions(site: Path) -> None:
    assert listing(site)["_conflicts"] == [
        {"kind": "time_sampler", "name": "dup", "distributions": ["mdm-plugin-dup-a", "mdm-plugin-dup-b"]}
    ]
    strict = mdm(site, "plugins", MDM_STRICT_PLUGINS="1", MDM_DISABLE_PLUGINS="mdm-plugin-broken")
    assert strict.returncode == 3
    assert "time sampler 'dup' is registered by both mdm-plugin-dup-a 0.0.1 and mdm-plugin-dup-b 0.0.1" in (
        strict.stderr
    )


@pytest.mark.usefixtures("site_on_path")
def test_specs_fail_only_when_they_name_a_bad_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "validate", QUICKSTART, "time_sampler.name=cosine_t"]) == 0
    assert main(["spec", "validate", QUICKSTART, "time_sampler.name=dup"]) == 3
    assert "mdm-plugin-dup-a 0.0.1 and mdm-plugin-dup-b 0.0.1" in capsys.readouterr().err
    assert main(["spec", "validate", QUICKSTART, "time_sampler.name=scipy_t"]) == 2
    err = capsys.readouterr().err
    assert "no time sampler called 'scipy_t'" in err
    assert "plug-in mdm-plugin-broken 0.0.1 failed to load (ImportError: No module named 'scipy')" in err
