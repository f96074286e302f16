"""Every command in README.md's code blocks runs in the suite, in a cheap form, so a README whose
commands break fails here.

The command text is read from the README; this test only makes it cheap and keeps it out of the
checkout, through the documented mapping below:

- ``PLACEHOLDERS``: the README's example run and sweep directories → this test's;
- ``TINY`` is added to every command that trains (``mdm train``; ``mdm sweep``, after its spec): a
  tiny model, corpus and step budget; ``--run-dir``/``--out``/``--dest`` put what a command writes in a
  temporary folder; ``RESUME`` is appended to ``mdm train --resume`` (a resume may only change
  run-control keys);
- ``SUBSTITUTIONS``: exact text replaced inside a command (the sweep runs one seed, not three:
  its other axis is kept, and every point of the README's grid is still validated);
- checked without running (parse-only): ``python3 -m venv`` and ``. .venv/bin/activate`` (the
  module exists, the activated folder is the one created), ``pip install`` (every ``-e`` path is
  a distribution of this checkout, the extras exist, the torch pin equals noxfile.py's),
  ``python -m pytest`` (this is it), ``torchrun`` (its own parser accepts the options and the
  ``mdm`` command it launches parses and validates) and ``mdm install``/``mdm uninstall`` (the pip
  command they would run names catalogued plug-ins; running it would need the network).

Where the README shows a command's output (lines after ``$ command`` in a console block), each
shown line must appear, in order, in what the command prints.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from mdm_core.cli import build_parser, main
from mdm_core.install import pip_command
from mdm_core.registry_catalog import load_catalog, shipped_catalog_dir
from mdm_core.spec import check_runnable, load_spec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TINY = [
    "trainer.max_steps=2",
    "trainer.ckpt_every=2",
    "trainer.num_samples=0",
    "trainer.threads=1",
    "evaluators.0.every=2",
    "evaluators.0.draws=1",
    "data.num_train=128",
    "data.num_val=16",
    "backbone.dim=16",
    "backbone.layers=1",
    "backbone.heads=2",
]
RESUME = ["trainer.max_steps=3", "--quiet"]
SUBSTITUTIONS = {"seed=0,1,2": "seed=0"}


@dataclass
class Command:
    """One README command: its words, the block it is in and the output the README shows."""

    words: list[str]
    line: str
    shown: list[str] = field(default_factory=list)


def readme_commands() -> list[Command]:
    """Commands of the ```bash and ```console blocks, in order; ``a && b`` gives two."""
    commands: list[Command] = []
    for lang, body in re.findall(r"```(bash|console)\n(.*?)```", README.read_text(), flags=re.S):
        for raw in body.splitlines():
            if lang == "console" and not raw.startswith("$ "):
                if raw.strip() and commands:
                    commands[-1].shown.append(raw.strip())
                continue
            text = raw.removeprefix("$ ").strip()
            if not text:
                continue
            words = shlex.split(text, comments=True)
            while "&&" in words:
                cut = words.index("&&")
                commands.append(Command(words[:cut], text))
                words = words[cut + 1 :]
            commands.append(Command(words, text))
    return commands


def test_the_readme_has_the_commands_this_test_knows_how_to_run() -> None:
    programs = {c.words[0] for c in readme_commands()}
    assert programs <= {"python3", "python", ".", "pip", "mdm", "torchrun"}, programs
    assert sum(c.words[0] == "mdm" for c in readme_commands()) >= 10


def test_every_readme_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository root
    placeholders: dict[str, str] = {}
    venvs: list[str] = []
    trained = 0
    for command in readme_commands():
        words = [SUBSTITUTIONS.get(w, w) for w in command.words]
        program, args = words[0], words[1:]
        if program in ("python", "python3") and args[:2] == ["-m", "venv"]:
            assert importlib.util.find_spec("venv") is not None
            venvs.append(args[2])
        elif program == ".":
            assert venvs and args == [f"{venvs[-1]}/bin/activate"], command.line
        elif program == "pip":
            check_pip_install(args)
        elif program == "python" and args[:2] == ["-m", "pytest"]:
            assert importlib.util.find_spec("pytest") is not None and all(Path(a).exists() for a in args[2:])
        elif program == "torchrun":
            check_torchrun(args)
        elif program == "mdm" and args[0] in ("install", "uninstall"):
            check_pip_plugins(args[0], args[1:])
        else:
            assert program == "mdm", command.line
            args = cheap(args, tmp_path, placeholders, trained)
            trained += args[0] == "train" and "--resume" not in args
            code = main(args)
            captured = capsys.readouterr()
            printed = (captured.out + captured.err).splitlines()
            if command.shown:
                assert_shown(command, printed)
            else:
                assert code == 0, f"{command.line}\n" + "\n".join(printed[-20:])
    assert trained >= 2 and set(placeholders) == {"run", "sweep"}


def cheap(args: list[str], tmp: Path, placeholders: dict[str, str], trained: int) -> list[str]:
    """The README's ``mdm`` arguments, made cheap and kept inside ``tmp`` (see the module doc)."""
    run, sweep = tmp / "run", tmp / "sweep"
    mapped = []
    for arg in args:
        if re.fullmatch(r"runs/quickstart-\d{8}-\d{6}", arg):
            placeholders["run"] = arg
            arg = str(run)
        elif re.fullmatch(r"runs/sweep-\d{8}-\d{4,6}", arg):
            placeholders["sweep"] = arg
            arg = str(sweep)
        mapped.append(arg)
    if mapped[0] == "train" and "--resume" in mapped:
        return [*mapped, *RESUME]
    if mapped[0] == "train":
        # The first run trained is the one the README's later commands use; others go beside it.
        target = tmp / f"train-{trained}" if run.exists() else run
        return [*mapped, *TINY, "--quiet", "--run-dir", str(target)]
    if mapped[0] == "sweep":
        return [*mapped[:2], *TINY, *mapped[2:], "--out", str(sweep)]  # assignments before options
    if mapped[0] == "new-plugin":
        return [*mapped, "--dest", str(tmp)]
    return mapped


def assert_shown(command: Command, printed: list[str]) -> None:
    """Each line the README shows appears, in order, in what the command printed."""
    rest = iter(printed)
    for line in command.shown:
        assert any(got.strip() == line for got in rest), (
            f"{command.line}: README shows {line!r}; got {printed}"
        )


def check_pip_install(args: list[str]) -> None:
    """Parse-only: what ``pip install`` would install is in this checkout, extras and pin included."""
    assert args[0] == "install"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    noxfile = (ROOT / "noxfile.py").read_text()
    it = iter(args[1:])
    for arg in it:
        if arg == "-e":
            target = next(it)
            path, _, extras = target.partition("[")
            assert (ROOT / path / "pyproject.toml").is_file(), f"pip install -e {target}: not a distribution"
            for extra in filter(None, extras.rstrip("]").split(",")):
                assert extra in project["optional-dependencies"], f"-e {target}: no extra {extra}"
        else:
            requirement = Requirement(arg)
            assert requirement.name == "torch" and f'TORCH = "{arg}"' in noxfile, arg


def check_pip_plugins(action: str, args: list[str]) -> None:
    """Parse-only: ``mdm install NAME`` would run pip on catalogued distributions."""
    command = pip_command(action, args)
    assert command[:4] == [sys.executable, "-m", "pip", action]
    names = [word for word in command[4:] if not word.startswith("-")]
    catalogued = {entry.distribution for entry in load_catalog(shipped_catalog_dir())}
    assert names and set(names) <= catalogued, names


def check_torchrun(args: list[str]) -> None:
    """Parse-only: torchrun's parser takes the options; the command it launches validates."""
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(args)
    assert parsed.module and parsed.training_script == "mdm_core.cli", args
    launched = build_parser().parse_args(parsed.training_script_args)
    assert launched.command == "train"
    check_runnable(load_spec(launched.spec, launched.overrides))
