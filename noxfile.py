"""Maintainer sessions: tests, each plug-in alone, the compatibility matrix, lint, docs, bench.

torch is installed first and pinned (the CPU wheel on our machines), so no session pulls a
multi-GB CUDA build by accident. ``nox -s matrix`` rewrites registry/matrix.json and matrix.md.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import nox

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
PLUGINS = {
    "dit": "plugins/mdm-plugin-dit",
    "bell": "plugins/mdm-plugin-bell",
    "puma": "plugins/mdm-plugin-puma",
    "triton-loss": "plugins/mdm-plugin-triton-loss",
}
#: The override that makes a quick-start run use each plug-in's component.
USES = {
    "dit": [],
    "bell": ["time_sampler.name=bell"],
    "puma": ["forward_process.name=puma"],
    "triton-loss": ["loss.name=mdlm_triton"],
}
TINY_RUN = [
    "trainer.max_steps=5",
    "trainer.ckpt_every=5",
    "trainer.num_samples=0",
    "evaluators.0.every=5",
    "evaluators.0.draws=1",
    "data.num_train=256",
    "data.num_val=32",
    "backbone.dim=32",
    "backbone.layers=1",
    "backbone.heads=2",
    "--quiet",
]
nox.options.sessions = ["tests", "lint", "docs"]


def install(session: nox.Session, *plugins: str) -> None:
    session.install(TORCH)
    session.install("-e", ".[test]", *(arg for name in plugins for arg in ("-e", PLUGINS[name])))


@nox.session
def tests(session: nox.Session) -> None:
    """The README's test command against core + every first-party plug-in."""
    install(session, *PLUGINS)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize("plugin", list(PLUGINS))
def plugin(session: nox.Session, plugin: str) -> None:
    """One plug-in's own tests against the core, with no other plug-in installed (DiT aside)."""
    install(session, *sorted({"dit", plugin}))
    session.run("python", "-m", "pytest", PLUGINS[plugin], *session.posargs)


@nox.session
def matrix(session: nox.Session) -> None:
    """Each plug-in's tests, then each pair composed in a short real training run."""
    install(session, *PLUGINS)
    results = []
    for name, path in PLUGINS.items():
        ok = _passes(session, "python", "-m", "pytest", "-q", path)
        results.append({"plugins": [name], "check": "own tests", "ok": ok})
    tmp = Path(session.create_tmp())
    for a, b in itertools.combinations(PLUGINS, 2):
        run_dir = tmp / f"{a}+{b}"
        args = [
            "mdm",
            "train",
            "specs/quickstart.yaml",
            *USES[a],
            *USES[b],
            *TINY_RUN,
            "--run-dir",
            str(run_dir),
        ]
        results.append({"plugins": [a, b], "check": "composed training run", "ok": _passes(session, *args)})
    from mdm_core.registry_catalog import write_matrix

    write_matrix(results, ROOT / "registry")
    if not all(r["ok"] for r in results):
        session.error("some combinations failed; see registry/matrix.md")


def _passes(session: nox.Session, *args: str) -> bool:
    try:
        session.run(*args, env={"MDM_STRICT_PLUGINS": "1"})
    except nox.command.CommandFailed:
        return False
    return True


@nox.session
def lint(session: nox.Session) -> None:
    install(session, *PLUGINS)
    session.install("ruff", "mypy")
    session.run("ruff", "check", ".")
    session.run("mypy", "mdm_core", *(f"{p}/src" for p in PLUGINS.values()))


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """Every relative link in README.md and docs/ points at a file that exists."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    if broken:
        session.error("broken links:\n" + "\n".join(broken))
    session.log(json.dumps({"checked_pages": 1 + len(list((ROOT / "docs").rglob("*.md")))}))


@nox.session
def bench(session: nox.Session) -> None:
    """Quick versions of the benchmark scripts (figures for RESULTS.md need the full runs)."""
    install(session, *PLUGINS)
    quick = ["--device", "cpu", "--rows", "256", "--vocab", "64", "--repeats", "3", "--warmup", "1"]
    session.run("python", "benchmarks/bench_fused_loss.py", *quick)
