"""``mdm sweep`` checks every point before starting any, reports each point as it ends (a failed
one with its last output lines), exits non-zero when any failed and only then omits the
``mdm compare`` hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdm_core.cli import main
from mdm_core.errors import SpecError
from mdm_core.sweep import check_points, parse_grid


def test_a_bad_value_in_the_grid_starts_nothing_and_names_every_bad_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    # The quick-start samples t uniformly: a 'family' key is not one of its parameters.
    code = main(
        ["sweep", "quickstart", "time_sampler.family=beta,logit_normal", "seed=0,1", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "4 of 4 points are invalid; nothing was started" in err
    for family in ("beta", "logit_normal"):
        for seed in (0, 1):
            line = f"time_sampler.family={family},trainer.seed={seed}: "
            assert (
                line in err
                and "time_sampler.family: unknown parameter of 'uniform'"
                in err.split(line)[1].splitlines()[0]
            )
    assert not out.exists()


def test_only_the_bad_points_are_listed_and_runnability_is_checked_too() -> None:
    grid, fixed = parse_grid(["trainer.threads=1,100000", "trainer.max_steps=3"])
    with pytest.raises(SpecError) as caught:
        check_points("quickstart", grid, fixed)
    first, *lines = [line for line in str(caught.value).splitlines() if not line.startswith("    ")]
    assert first == "sweep: 1 of 2 points are invalid; nothing was started:"
    assert len(lines) == 1 and lines[0].startswith("  trainer.threads=100000: ")
    assert "trainer.threads: 100000 threads" in lines[0]
    grid, fixed = parse_grid(["time_sampler={name: uniform},{name: bell, family: beta}"])
    assert check_points("bell-markov", grid, fixed) == 2


def test_failed_points_are_shown_inline_and_the_sweep_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Points valid as specs whose runs fail (their corpus is gone): each failure is reported with
    the run's own last lines as it ends (the success path is tests/test_readme_commands.py's)."""
    missing = [tmp_path / "moved-away.txt", tmp_path / "deleted.txt"]
    spec = tmp_path / "text.yaml"
    spec.write_text("base: quickstart\nname: text\ndata: {name: text, path: nowhere.txt, seq_len: 16}\n")
    out = tmp_path / "sweep"
    code = main(
        ["sweep", str(spec), f"data.path={missing[0]},{missing[1]}", "--parallel", "2", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert code == 1, printed
    assert printed.startswith(f"sweep: 2 points, 2 at a time, into {out}")
    for path in missing:
        failed = printed.split(f"data.path={path}: FAILED (exit 2) after ")[1].splitlines()
        assert f"; last lines of {out / 'logs'}/" in failed[0] and failed[0].endswith(".log:")
        assert any(line.startswith("    error: ") and path.name in line for line in failed[1:6])
    assert printed.count("] data.path=") == 2 and "[2/2]" in printed
    assert f"sweep: 2 of 2 runs FAILED in {out}" in printed
    assert "next: mdm compare" not in printed
    record = json.loads((out / "sweep.json").read_text())
    assert [p["exit_code"] for p in record["points"]] == [2, 2]
