"""Maintainer sessions: tests, each plug-in alone, the compatibility matrix, lint, docs, bench.

    nox -l                      # list sessions
    nox                         # tests, lint, docs
    nox -s "plugin(name='bell')"
    nox -s matrix               # rewrites registry/matrix.json and registry/matrix.md

torch is installed first and pinned (the CPU wheel on our machines), so no session pulls a
multi-GB CUDA build by accident. The first-party plug-ins are read from the registry catalogue
(``registry/plugins/*.toml`` with ``status = "first-party"``): adding one there adds it to the
``plugin`` sessions and to the matrix.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import nox
from packaging.version import Version  # a dependency of nox itself

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "docs"]


def _first_party() -> dict[str, dict[str, Any]]:
    """Short name (``bell``) → catalogue entry, for every first-party plug-in."""
    entries = [tomllib.loads(p.read_text()) for p in sorted((ROOT / "registry" / "plugins").glob("*.toml"))]
    return {
        e["distribution"].removeprefix("mdm-plugin-"): e for e in entries if e.get("status") == "first-party"
    }


def _kinds() -> ModuleType:
    """``mdm_core/kinds.py``, the one table of kinds, read without importing the package (nox
    itself runs outside the environments it builds, where pluggy and torch are absent)."""
    spec = importlib.util.spec_from_file_location("mdm_core_kinds", ROOT / "mdm_core" / "kinds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building classes
    spec.loader.exec_module(module)
    return module


PLUGINS = _first_party()
#: The quick-start backbone: plug-in tests that train something need it beside them.
BACKBONE = "dit"
#: Spec section → kind, for kinds chosen once per run (evaluators are lists; not swapped here).
SECTIONS: dict[str, str] = _kinds().SINGLE_SECTIONS
#: A few seconds of real training: enough to compose every part, checkpoint and evaluate once.
TINY_RUN = [
    "trainer.max_steps=5",
    "trainer.ckpt_every=5",
    "trainer.num_samples=1",
    "evaluators.0.every=5",
    "evaluators.0.draws=1",
    "data.num_train=256",
    "data.num_val=32",
    "backbone.dim=32",
    "backbone.layers=1",
    "backbone.heads=2",
    "--quiet",
]
#: Quick-mode arguments of each benchmark script (default: ``--quick``).
BENCH_QUICK = {
    "bench_fused_loss.py": [
        "--device",
        "cpu",
        "--rows",
        "256",
        "--vocab",
        "64",
        "--repeats",
        "3",
        "--warmup",
        "1",
    ],
}


def install(session: nox.Session, *plugins: str) -> None:
    """The pinned torch first, then the core (with test extras) and the named plug-ins, editable."""
    session.install(TORCH)
    editable = [arg for name in plugins for arg in ("-e", PLUGINS[name]["source"])]
    session.install("-e", ".[test]", *editable)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite against the core and every first-party plug-in."""
    install(session, *PLUGINS)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize("name", list(PLUGINS))
def plugin(session: nox.Session, name: str) -> None:
    """One plug-in's own tests against the core, with no other plug-in installed but the backbone."""
    install(session, *dict.fromkeys([BACKBONE, name]))
    session.run("python", "-m", "pytest", PLUGINS[name]["source"], *session.posargs)


def _uses(name: str, sections: Iterable[str] | None = None) -> list[str]:
    """Overrides that make the quick-start run use plug-in ``name``'s components (in ``sections``)."""
    components = PLUGINS[name]["components"]
    return [
        f"{section}.name={components[kind][0]}"
        for section, kind in SECTIONS.items()
        if kind in components and (sections is None or section in sections)
    ]


def _pair_uses(a: str, b: str) -> list[str] | None:
    """Overrides for one run that uses a component of both ``a`` and ``b``, or None if none can.

    A section both fill goes to the plug-in with nothing else to select (PUMA's forward process
    beside the blockwise sampler), else to ``a``; None when neither has a section of its own.
    """
    mine = {n: {s for s, kind in SECTIONS.items() if kind in PLUGINS[n]["components"]} for n in (a, b)}
    shared = mine[a] & mine[b]
    if shared and mine[a] == shared and mine[b] == shared:
        return None  # both fill only the same slot(s)
    takes_shared = b if mine[b] == shared else a
    other = a if takes_shared == b else b
    return [*_uses(takes_shared), *_uses(other, mine[other] - shared)]


#: Every check runs with plug-in load errors fatal.
STRICT = {"MDM_STRICT_PLUGINS": "1"}


def _timed(session: nox.Session, *args: str) -> tuple[str, float]:
    """Run a check; ("pass" | "fail", seconds)."""
    start = time.monotonic()
    try:
        session.run(*args, env=STRICT)
    except nox.command.CommandFailed:
        return "fail", time.monotonic() - start
    return "pass", time.monotonic() - start


def _output(session: nox.Session, *args: str) -> str:
    return str(session.run(*args, silent=True, env=STRICT)).strip()


def _refusal(session: nox.Session, command: list[str]) -> tuple[str, str] | None:
    """``mdm spec validate`` of a pair's spec: None when it accepts the pair, else ("refused",
    why) on exit 2 (one side would ignore or misuse the other) or ("fail", why) on any other."""
    done = subprocess.run(
        [str(Path(session.bin) / command[0]), *command[1:]],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **STRICT},
    )  # fmt: skip
    if done.returncode == 0:
        return None
    why = next((line for line in done.stderr.splitlines() if line.strip()), f"exit {done.returncode}")
    return ("refused" if done.returncode == 2 else "fail"), why.removeprefix("error: ")


def _core_at(session: nox.Session, version: str) -> Path:
    """The core's source at the newest commit whose pyproject.toml declares ``version``."""
    git = functools.partial(subprocess.run, cwd=ROOT, capture_output=True, check=True)
    for commit in git(["git", "log", "--format=%H", "--", "pyproject.toml"], text=True).stdout.split():
        project = tomllib.loads(git(["git", "show", f"{commit}:pyproject.toml"], text=True).stdout)["project"]
        if Version(project["version"]) == Version(version):
            dest = Path(session.create_tmp()) / f"core-{version}"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            archived = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True)
            tree: bytes = archived.stdout
            with tarfile.open(fileobj=io.BytesIO(tree)) as archive:
                archive.extractall(dest, filter="data")
            return dest
    session.error(f"no commit declares core version {version}, the oldest one a plug-in supports")


@nox.session
def matrix(session: nox.Session) -> None:
    """Every plug-in's tests against the core at its oldest supported version and at main, and
    every pair composed in a short training run when ``mdm spec validate`` accepts it, to registry/.

    The oldest version is the lower bound of the plug-in's catalogued core range; when it is main
    itself the row says so ("oldest = main") instead of running twice. A pair whose composed spec
    is refused (exit 2: one side would ignore or misuse the other) is recorded "refused", never
    "pass"; one filling the same slot "not applicable". Results go to registry/matrix.{json,md}.
    """
    install(session, *PLUGINS)
    main_version = _output(session, "python", "-c", "import mdm_core; print(mdm_core.__version__)")
    oldest = {
        name: _output(session, "python", "-m", "mdm_core.registry_catalog", "oldest", entry["core"])
        for name, entry in PLUGINS.items()
    }
    results: list[dict[str, Any]] = []

    def own_tests(name: str, core: str) -> None:
        command = ["python", "-m", "pytest", "-q", PLUGINS[name]["source"]]
        status, seconds = _timed(session, *command)
        results.append({"plugins": [name], "check": "own tests", "status": status, "core": core,
                        "seconds": seconds, "command": " ".join(command)})  # fmt: skip

    older = sorted({v for v in oldest.values() if Version(v) != Version(main_version)}, key=Version)
    for version in older:
        session.install(str(_core_at(session, version)))  # replaces the editable core for a while
        for name in [n for n, v in oldest.items() if v == version]:
            own_tests(name, f"oldest ({version})")
    if older:
        session.install("-e", ".[test]")
    for name in PLUGINS:
        same = Version(oldest[name]) == Version(main_version)
        own_tests(name, f"oldest = main ({main_version})" if same else f"main ({main_version})")

    runs = Path(session.create_tmp()) / "matrix-runs"
    for a, b in itertools.combinations(PLUGINS, 2):
        cell = {"plugins": [a, b], "check": "composed training run", "core": f"main ({main_version})"}
        unused = [f"mdm-plugin-{n}" for n in (a, b) if not _uses(n)]
        if unused:  # a run of the pair would not use it: a "pass" would say nothing
            why = f"{' and '.join(unused)} adds no component a spec selects by name"
            results.append({**cell, "status": "not applicable", "detail": why})
            continue
        pair = _pair_uses(a, b)
        if pair is None:
            results.append({**cell, "status": "not applicable", "detail": "both fill the same slot"})
            continue
        validate = ["mdm", "spec", "validate", "specs/quickstart.yaml", *pair]
        refused = _refusal(session, validate)
        if refused is not None:
            status, why = refused
            results.append({**cell, "status": status, "detail": why, "command": " ".join(validate)})
            continue
        run_dir = runs / f"{a}+{b}"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = ["mdm", "train", "specs/quickstart.yaml", *pair, *TINY_RUN,
                   "--run-dir", str(run_dir)]  # fmt: skip
        status, seconds = _timed(session, *command)
        results.append({**cell, "status": status, "seconds": seconds, "command": " ".join(command)})
    path = Path(session.create_tmp()) / "matrix-results.json"
    path.write_text(json.dumps(results, indent=1))
    session.run("python", "-m", "mdm_core.registry_catalog", "matrix", str(path), str(ROOT / "registry"))
    failed = [" + ".join(r["plugins"]) + f" ({r['check']})" for r in results if r["status"] == "fail"]
    if failed:
        session.error("failed: " + "; ".join(failed) + " — see registry/matrix.md")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy over the core and every first-party plug-in."""
    install(session, *PLUGINS)
    session.install("ruff", "mypy")
    session.run("ruff", "check", ".")
    session.run("mypy", "mdm_core", *(f"{e['source']}/src" for e in PLUGINS.values()))


def _markdown_pages() -> list[Path]:
    skip = {".git", ".nox", ".venv", ".ci-venv", "runs", "build", "node_modules"}
    return sorted(
        p
        for p in ROOT.rglob("*.md")
        if not skip & set(p.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in p.parts)
    )


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Every relative link in the repository's Markdown points at a file that exists."""
    pages = _markdown_pages()
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code are examples
        for target in re.findall(r"\]\(<?([^)#\s>]+)", text):
            if (
                "://" not in target
                and not target.startswith("mailto:")
                and not (page.parent / target).exists()
            ):
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    if broken:
        session.error("broken links:\n" + "\n".join(broken))
    session.log(f"{len(pages)} Markdown pages, every relative link resolves")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark script in quick mode: a smoke test (RESULTS.md figures need full runs)."""
    install(session, *PLUGINS)
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script.relative_to(ROOT)), *BENCH_QUICK.get(script.name, ["--quick"]))


@nox.session
def faults(session: nox.Session) -> None:
    """Issue #11's fault campaign (kills, signals, corruption, full disk, concurrent writers,
    fuzzed specs) against the real CLI, to benchmarks/results/faults; ~25 min on 2 cores."""
    install(session, *PLUGINS)
    args = ["--kills", "60", "--fuzz", "600", "--out", "benchmarks/results/faults"]
    session.run("python", "benchmarks/faults.py", *args, *session.posargs)
