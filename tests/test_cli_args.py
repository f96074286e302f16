"""Command-line shapes a researcher types: overrides after options, specs run from any folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mdm_core.cli import main
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_may_follow_options(tiny_spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec", "show", str(tiny_spec), "trainer.max_steps=3"]) == 0
    before = capsys.readouterr().out
    assert main(["spec", "validate", str(tiny_spec), "trainer.max_stepz=3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    # An override after an option still counts as an override, not an unknown argument.
    assert main(["train", str(tiny_spec), "--quiet", "trainer.max_steps=2", "trainer.max_stepz=1"]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err
    assert "max_steps: 3" in before


def test_sweep_assignments_may_follow_options(
    tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The grid after --parallel is still the grid: its misspelt key is checked before any run.
    argv = ["sweep", str(tiny_spec), "seed=0", "--parallel", "2", "trainer.max_stepz=1,2"]
    assert main([*argv, "--out", str(tmp_path / "sweep")]) == 2
    assert "trainer.max_stepz" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_an_unknown_option_is_still_refused(tiny_spec: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tiny_spec), "--quiet", "--no-such-flag"])
    assert exit_info.value.code == 2


def test_a_shipped_spec_with_a_relative_base_loads_from_another_folder(tmp_path: Path) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        spec = load_spec(ROOT / "specs" / "puma-markov.yaml")
    finally:
        os.chdir(here)
    assert spec.components["forward_process"].name == "puma"
    assert spec.run.name == "puma-markov"
