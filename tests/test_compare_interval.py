"""``mdm compare``'s bootstrap intervals over seeds, its markdown table and the nll_by_t heat map,
on run directories written by hand (metrics.jsonl as the trainer writes it)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mdm_core.cli import main
from mdm_core.compare import bucket_maps, compare_runs, cross, cross_many

STEPS = list(range(0, 1001, 100))
BUCKETS = ["0.001-0.500", "0.500-1.000"]


def write_run(
    path: Path,
    sampler: str,
    seed: int,
    slope: float,
    offset: float,
    sec_per_step: float = 0.1,
    by_t: bool = False,
) -> Path:
    """val/nll = 3 − slope·step + offset; with ``by_t``, two nll_by_t buckets around it."""
    path.mkdir(parents=True)
    config = {"name": path.name, "time_sampler": {"name": sampler}, "trainer": {"seed": seed}}
    (path / "resolved.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for step in STEPS:
        nll = 3.0 - slope * step + offset
        record: dict[str, Any] = {
            "kind": "eval",
            "step": step,
            "elapsed": step * sec_per_step,
            "val/nll": nll,
        }
        if by_t:
            record |= {f"val/nll_by_t/{BUCKETS[0]}": nll - 0.5, f"val/nll_by_t/{BUCKETS[1]}": nll + 0.5}
            record["val/nll_by_t/all"] = nll
            record |= {"val/nll_by_context/9+": nll + 1, "val/nll_by_context/1": nll - 1}
            record["val/nll_by_context/share/1"] = 0.25
        lines.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return path


#: Per-seed offsets of the curves: the seeds' crossings spread around the arm's mean crossing.
OFFSETS = [-0.03, -0.01, 0.0, 0.015, 0.025]


@pytest.fixture
def five_seeds(tmp_path: Path) -> list[Path]:
    """Uniform reaches its final mean at 1000; bell twice as fast per step, 1.2× the time per step."""
    runs = [write_run(tmp_path / f"u{s}", "uniform", s, 0.001, o, by_t=True) for s, o in enumerate(OFFSETS)]
    runs += [
        write_run(tmp_path / f"b{s}", "bell", s, 0.002, o, sec_per_step=0.12, by_t=True)
        for s, o in enumerate(OFFSETS)
    ]
    return runs


def test_cross_many_agrees_with_cross() -> None:
    rng = np.random.default_rng(0)
    steps = [0, 100, 250, 400]
    values = np.cumsum(-rng.random((200, 4)), axis=1) + 3.0
    seconds = np.cumsum(rng.random((200, 4)), axis=1)
    target = 3.0 - 2.0 * rng.random(200)
    for higher in (False, True):
        got_steps, got_seconds = cross_many(steps, seconds, values, target, higher)
        for i in range(200):
            one = cross(steps, seconds[i], values[i], target[i], higher)
            want = (math.inf, math.inf) if one.step is None else (one.step, one.seconds)
            assert (got_steps[i], got_seconds[i]) == pytest.approx(want)


def test_intervals_contain_the_point_estimates_and_are_deterministic(five_seeds: list[Path]) -> None:
    comparison = compare_runs(five_seeds, baseline="time_sampler.name=uniform")
    uniform, bell = comparison.arms
    assert bell.speedup == pytest.approx(2.0)
    for arm in (uniform, bell):
        point = {
            "steps": arm.crossing.step,
            "seconds": arm.crossing.seconds,
            "speedup": arm.speedup,
            "time_speedup": arm.time_speedup,
        }
        for name, value in point.items():
            assert value is not None
            interval = arm.intervals[name]
            assert interval.lo <= value <= interval.hi, (arm.label, name, interval, value)
            if arm is bell:
                assert interval.lo < interval.hi, (name, interval)
    # The default target is each resampled baseline's own final value, reached at its last step;
    # against itself the baseline is exactly 1 in every resample.
    assert (uniform.intervals["steps"].lo, uniform.intervals["steps"].hi) == (1000.0, 1000.0)
    assert (uniform.intervals["speedup"].lo, uniform.intervals["speedup"].hi) == (1.0, 1.0)
    # Seed-mean crossings of resampled seeds stay within the seeds' own crossings.
    per_seed = [c.step for c in bell.per_seed if c.step is not None]
    assert len(per_seed) == len(OFFSETS)
    assert min(per_seed) <= bell.intervals["steps"].lo <= bell.intervals["steps"].hi <= max(per_seed)

    again = compare_runs(five_seeds, baseline="time_sampler.name=uniform")
    assert [a.intervals for a in again.arms] == [a.intervals for a in comparison.arms]
    other = compare_runs(five_seeds, baseline="time_sampler.name=uniform", bootstrap_seed=1)
    assert other.arms[1].intervals != bell.intervals
    wider = compare_runs(five_seeds, baseline="time_sampler.name=uniform", ci=0.99)
    assert wider.arms[1].intervals["speedup"].lo <= bell.intervals["speedup"].lo
    assert wider.arms[1].intervals["speedup"].hi >= bell.intervals["speedup"].hi

    row = next(
        line for line in comparison.table_text().splitlines() if line.startswith("time_sampler.name=bell")
    )
    lo, hi = bell.intervals["speedup"].lo, bell.intervals["speedup"].hi
    assert f"2.00× [{lo:.2f}×–{hi:.2f}×]" in row
    assert "90% percentile bootstrap over seeds (2000 resamples, seed 0" in comparison.table_text()


def test_one_seed_gives_the_point_and_says_so(tmp_path: Path) -> None:
    runs = [
        write_run(tmp_path / "u", "uniform", 0, 0.001, 0.0),
        write_run(tmp_path / "b", "bell", 0, 0.002, 0.0),
    ]
    comparison = compare_runs(runs)
    for arm in comparison.arms:
        for name, value in (("steps", arm.crossing.step), ("speedup", arm.speedup)):
            assert (arm.intervals[name].lo, arm.intervals[name].hi) == (pytest.approx(value),) * 2
    row = next(
        line for line in comparison.table_text().splitlines() if line.startswith("time_sampler.name=bell")
    )
    assert "500 (1 seed)" in row and "2.00× (1 seed)" in row and "[" not in row


def test_an_arm_that_rarely_reaches_the_target_has_an_open_interval(tmp_path: Path) -> None:
    """Two of five slow seeds reach the target: resamples without them never do (∞, speed-up 0)."""
    runs = [write_run(tmp_path / f"u{s}", "uniform", s, 0.001, o) for s, o in enumerate(OFFSETS)]
    runs += [write_run(tmp_path / f"s{s}", "slow", s, 0.00095, o - 0.03) for s, o in enumerate(OFFSETS)]
    out = tmp_path / "cmp"
    comparison = compare_runs(runs, baseline="time_sampler.name=uniform", target=2.0, out_dir=out)
    slow = comparison.arms[1]
    assert slow.intervals["steps"].hi == math.inf and slow.intervals["speedup"].lo == 0.0
    row = next(
        line for line in comparison.table_text().splitlines() if line.startswith("time_sampler.name=slow")
    )
    assert "–∞]" in row
    record = json.loads((out / "compare.json").read_text())
    assert record["arms"][1]["intervals"]["steps"]["hi"] is None
    assert record["bootstrap"] == {"ci": 0.9, "resamples": 2000, "seed": 0}
    assert "target fixed" in comparison.table_text()


def test_markdown_table_is_well_formed_with_its_command(
    five_seeds: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    args = [
        *map(str, five_seeds),
        "--baseline",
        "time_sampler.name=uniform",
        "--out",
        str(out),
        "--ci",
        "0.8",
    ]
    assert main(["compare", *args, "--markdown"]) == 0
    text = capsys.readouterr().out
    fence, command, close = text.splitlines()[:3]
    assert fence == "```" and close == "```"
    assert command.startswith("mdm compare ") and command.endswith("--markdown")
    assert "--ci 0.8" in command and "--baseline time_sampler.name=uniform" in command
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # header, separator, two arms
    cells = [line.count("|") for line in table]
    assert len(set(cells)) == 1 and table[1] == "|" + "---|" * (cells[0] - 1)
    assert "80% CI" in table[0] and "(baseline)" in table[2]
    assert "- [lo–hi]: 80% percentile bootstrap" in text
    assert (out / "compare.png").is_file() and (out / "nll_by_t.png").is_file()
    assert "nll_by_t.png" in text

    assert main(["compare", *args, "--ci", "1.5"]) == 2
    assert "--ci 1.5 must lie strictly between 0 and 1" in capsys.readouterr().err
    assert main(["compare", *args, "--resamples", "10"]) == 2


def test_nll_by_t_heat_map_is_the_seed_mean_per_bucket(five_seeds: list[Path], tmp_path: Path) -> None:
    comparison = compare_runs(five_seeds, out_dir=tmp_path / "cmp")
    maps = bucket_maps(comparison)
    steps, names, grid = maps["time_sampler.name=bell"]
    assert steps == STEPS and names == BUCKETS and grid.shape == (2, len(STEPS))
    mean_offset = float(np.mean(OFFSETS))
    assert grid[0, 5] == pytest.approx(3.0 - 0.002 * 500 + mean_offset - 0.5)
    assert (tmp_path / "cmp" / "nll_by_t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps, names, grid = bucket_maps(comparison, "val/nll_by_context/")["time_sampler.name=bell"]
    assert names == ["1", "9+"] and grid[1, 0] - grid[0, 0] == pytest.approx(2.0)  # no share/ rows
    assert (tmp_path / "cmp" / "nll_by_context.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = [write_run(tmp_path / "plain", "uniform", 0, 0.001, 0.0)]
    compare_runs(plain, out_dir=tmp_path / "plain-cmp")
    assert not (tmp_path / "plain-cmp" / "nll_by_t.png").exists()


def test_an_arm_is_labelled_by_every_differing_key_it_sets(tmp_path: Path) -> None:
    """Arms told apart by keys another arm leaves unset still name their own settings: the
    annealed bell is not labelled as if it were a plain logit-normal."""
    from mdm_core.compare import Run, group_arms

    def run(name: str, time_sampler: dict[str, Any]) -> Run:
        config = {"time_sampler." + k: v for k, v in time_sampler.items()}
        return Run(path=tmp_path / name, config=config, steps=[1], elapsed=[1.0], values=[1.0])

    arms = group_arms(
        [
            run("a", {"name": "bell", "mu": 0, "s": 1}),
            run("b", {"name": "bell", "anneal": 0.2}),
            run("c", {"name": "uniform"}),
        ]
    )
    labels = [arm.label for arm in arms]
    assert labels[1] == "time_sampler.name=bell,time_sampler.anneal=0.2"
    assert labels[0] == "time_sampler.name=bell,time_sampler.mu=0,time_sampler.s=1"
    assert labels[2] == "time_sampler.name=uniform"
