"""Sweeps expand grids into isolated runs; compare turns run directories into arms and speed-ups."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mdm_core.compare import compare_runs, cross
from mdm_core.errors import MdmError, SpecError
from mdm_core.sweep import grid_points, parse_grid, point_dir_name, point_label, run_sweep

STEPS = list(range(0, 1001, 100))


def write_run(
    path: Path,
    sampler: dict[str, Any],
    seed: int,
    slope: float,
    offset: float = 0.0,
    sec_per_step: float = 0.1,
) -> Path:
    """A run directory as the trainer writes it, with val/nll = 3 − slope·step + offset."""
    path.mkdir(parents=True)
    config = {
        "name": f"run-{seed}",
        "out_dir": str(path.parent),
        "data": {"name": "markov", "seq_len": 16},
        "time_sampler": sampler,
        "evaluators": [{"name": "nll", "every": 100}],
        "trainer": {"max_steps": 1000, "seed": seed},
    }
    (path / "resolved.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for step in STEPS:
        lines.append(
            {
                "kind": "train",
                "step": step,
                "elapsed": step * sec_per_step,
                "tokens": step * 64,
                "loss": 3.0,
                "lr": 1e-3,
                "tok_per_s": 1.0,
            }
        )
        nll = 3.0 - slope * step + offset
        lines.append(
            {
                "kind": "eval",
                "step": step,
                "elapsed": step * sec_per_step,
                "val/nll": nll,
                "val/bpt": nll / 0.6931,
                "val/ppl": 2.718**nll,
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    (path / "summary.json").write_text(
        json.dumps(
            {
                "final": {"val/nll": lines[-1]["val/nll"]},
                "steps": 1000,
                "elapsed": 1000 * sec_per_step,
                "run": path.name,
            }
        )
    )
    return path


UNIFORM = {"name": "uniform", "eps": 0.001}
LOGIT = {"name": "bell", "family": "logit_normal", "s": 1.0}
BETA = {"name": "bell", "family": "beta", "a": 2.0}
OFFSETS = {0: -0.01, 1: 0.0, 2: 0.01}


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, list[Path]]:
    """Baseline reaches 2.0 at step 1000, logit-normal bell at 500 (slower steps), beta never."""
    made: dict[str, list[Path]] = {"uniform": [], "logit": [], "beta": []}
    for seed, offset in OFFSETS.items():
        made["uniform"].append(write_run(tmp_path / f"u{seed}", UNIFORM, seed, 0.001, offset))
        made["logit"].append(write_run(tmp_path / f"l{seed}", LOGIT, seed, 0.002, offset, sec_per_step=0.12))
    for seed in (0, 2):
        made["beta"].append(write_run(tmp_path / f"b{seed}", BETA, seed, 0.0005, OFFSETS[seed]))
    return made


# -- sweep ----------------------------------------------------------------------------------------


def test_parse_grid_splits_axes_from_fixed_overrides() -> None:
    grid, fixed = parse_grid(
        ["time_sampler.name=uniform,bell", "seed=0,1,2", "trainer.max_steps=100", "backbone.sizes=[1,2]"]
    )
    assert grid == {"time_sampler.name": ["uniform", "bell"], "trainer.seed": ["0", "1", "2"]}
    assert fixed == ["trainer.max_steps=100", "backbone.sizes=[1,2]"]
    assert parse_grid(["seed=3"]) == ({}, ["trainer.seed=3"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["time_sampler.name"], "is not key=value"),
        (["seed=1,,2"], "empty value"),
        (["seed=1,2", "trainer.seed=3"], "given twice"),
        (["seed=1,1"], "repeats a value"),
    ],
)
def test_parse_grid_refuses_bad_assignments(args: list[str], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_grid(args)


def test_grid_points_are_the_cartesian_product_with_safe_names() -> None:
    points = grid_points({"time_sampler.name": ["uniform", "bell"], "trainer.seed": ["0", "1"]})
    assert points == [
        ["time_sampler.name=uniform", "trainer.seed=0"],
        ["time_sampler.name=uniform", "trainer.seed=1"],
        ["time_sampler.name=bell", "trainer.seed=0"],
        ["time_sampler.name=bell", "trainer.seed=1"],
    ]
    assert point_label(points[3]) == "time_sampler.name=bell,trainer.seed=1"
    assert point_dir_name(points[3]) == "time_sampler.name-bell_trainer.seed-1"
    assert grid_points({}) == [[]]
    odd = point_dir_name(["data.path=../data/my file.txt"])
    assert "/" not in odd and " " not in odd and not odd.startswith(".")
    long_a, long_b = (point_dir_name([f"data.path={'x' * 300}{c}"]) for c in "ab")
    assert len(long_a) <= 120 and long_a != long_b


FAKE_TRAINER = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
run_dir = Path(args[args.index("--run-dir") + 1])
over = dict(a.split("=", 1) for a in args if "=" in a)
if over["time_sampler.name"] == "bell" and over["trainer.seed"] == "1":
    print("diverged"); sys.exit(3)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "args.json").write_text(json.dumps(args))
seed = int(over["trainer.seed"])
(run_dir / "resolved.yaml").write_text(
    "time_sampler: {name: %s}\\ntrainer: {seed: %d, max_steps: %s}\\n"
    % (over["time_sampler.name"], seed, over["trainer.max_steps"]))
slope = 0.002 if over["time_sampler.name"] == "bell" else 0.001
lines = [{"kind": "eval", "step": s, "elapsed": s / 10, "val/nll": 3 - slope * s + 0.01 * seed}
         for s in range(0, 1001, 100)]
(run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\\n" for m in lines))
"""


def test_sweep_runs_every_point_records_failures_and_feeds_compare(tmp_path: Path) -> None:
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    out = tmp_path / "sweep"
    grid, fixed = parse_grid(["time_sampler.name=uniform,bell", "seed=0,1", "trainer.max_steps=1000"])
    finished: list[str] = []
    result = run_sweep(
        "spec.yaml",
        grid,
        fixed,
        out,
        parallel=2,
        extra_args=["--quiet"],
        launcher=[sys.executable, str(trainer)],
        on_done=lambda p: finished.append(p.label),
    )
    assert sorted(finished) == sorted(p.label for p in result.points) and len(finished) == 4
    codes = {p.label: p.exit_code for p in result.points}
    assert codes == {
        "time_sampler.name=uniform,trainer.seed=0": 0,
        "time_sampler.name=uniform,trainer.seed=1": 0,
        "time_sampler.name=bell,trainer.seed=0": 0,
        "time_sampler.name=bell,trainer.seed=1": 3,
    }
    assert [p.label for p in result.failed] == ["time_sampler.name=bell,trainer.seed=1"]
    first = result.points[0]
    assert json.loads((first.run_dir / "args.json").read_text()) == [
        "spec.yaml",
        "trainer.max_steps=1000",
        "time_sampler.name=uniform",
        "trainer.seed=0",
        "--run-dir",
        str(out / "time_sampler.name-uniform_trainer.seed-0"),
        "--quiet",
    ]
    assert "diverged" in result.points[3].log.read_text()
    record = json.loads((out / "sweep.json").read_text())
    assert record["spec"] == "spec.yaml" and record["grid"] == grid
    assert [p["exit_code"] for p in record["points"]] == [0, 0, 0, 3]
    assert record["points"][2]["run_dir"] == "time_sampler.name-bell_trainer.seed-0"

    comparison = compare_runs([out], baseline="time_sampler.name=uniform", target=2.1)
    bell = comparison.arms[1]
    assert bell.label == "time_sampler.name=bell" and len(bell.runs) == 1
    assert bell.speedup == pytest.approx(2.0, rel=0.03)
    assert any("time_sampler.name=bell,trainer.seed=1 has no run" in n for n in comparison.notes)

    with pytest.raises(MdmError, match="already holds a sweep"):
        run_sweep("spec.yaml", grid, fixed, out, launcher=[sys.executable, str(trainer)])
    with pytest.raises(MdmError, match="--parallel"):
        run_sweep("spec.yaml", grid, fixed, tmp_path / "other", parallel=0)


# -- compare --------------------------------------------------------------------------------------


def test_cross_interpolates_between_evaluations() -> None:
    hit = cross([0, 100, 200], [0.0, 10.0, 30.0], [3.0, 2.5, 1.5], 2.0)
    assert (hit.step, hit.seconds) == (pytest.approx(150.0), pytest.approx(20.0))
    first = cross([50, 100], [5.0, 10.0], [1.0, 0.5], 2.0)
    assert (first.step, first.seconds) == (50.0, 5.0)
    never = cross([0, 100], [0.0, 10.0], [3.0, 2.5], 2.0)
    assert never.step is None and never.seconds is None


def test_compare_groups_seeds_into_arms_and_measures_the_speedup(
    runs: dict[str, list[Path]], tmp_path: Path
) -> None:
    order = [
        runs["uniform"][0],
        runs["logit"][2],
        runs["beta"][0],
        runs["uniform"][2],
        runs["logit"][0],
        runs["uniform"][1],
        runs["beta"][1],
        runs["logit"][1],
    ]
    out = tmp_path / "cmp"
    comparison = compare_runs(order, baseline=None, target=None, out_dir=out)
    uniform, logit, beta = comparison.arms
    assert uniform is comparison.baseline
    assert uniform.label == "time_sampler.name=uniform"
    # every key an arm of a shared component sets is named (the beta arm leaves s unset)
    assert logit.label == "time_sampler.name=bell,time_sampler.family=logit_normal,time_sampler.s=1.0"
    assert beta.label == "time_sampler.name=bell,time_sampler.family=beta,time_sampler.a=2.0"
    assert sorted(r.seed for r in uniform.runs) == [0, 1, 2] and len(beta.runs) == 2
    # Default target: the baseline's final mean NLL, reached by its mean curve at its last step.
    assert comparison.target == pytest.approx(2.0)
    assert uniform.crossing.step == pytest.approx(1000.0)
    assert uniform.speedup == pytest.approx(1.0)
    assert logit.crossing.step == pytest.approx(500.0)
    assert logit.speedup == pytest.approx(2.0)
    assert logit.crossing.seconds == pytest.approx(60.0) and uniform.crossing.seconds == pytest.approx(100.0)
    assert logit.time_speedup == pytest.approx(100.0 / 60.0)
    assert [c.step for c in logit.per_seed] == [pytest.approx(s) for s in (505.0, 495.0, 500.0)]
    assert logit.seed_spread("step") == pytest.approx(5.0)
    assert beta.crossing.step is None and beta.speedup is None and beta.reached == 0

    text = comparison.table_text()
    assert "steps to 2.000" in text
    beta_row = next(line for line in text.splitlines() if line.startswith(beta.label))
    assert "not reached" in beta_row and "—" in beta_row
    logit_row = next(line for line in text.splitlines() if "logit_normal" in line)
    assert "500 ± 5" in logit_row and "2.00×" in logit_row and "1m00s" in logit_row

    record = json.loads((out / "compare.json").read_text())
    assert record["baseline"] == "time_sampler.name=uniform"
    assert record["arms"][2]["steps_to_target"]["mean_curve"] is None
    assert record["arms"][1]["seeds"] == [2, 0, 1]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explicit_target_and_baseline_selection(runs: dict[str, list[Path]]) -> None:
    every = [p for paths in runs.values() for p in paths]
    comparison = compare_runs(every, baseline="time_sampler.family=beta", target=2.505)
    uniform, logit, beta = comparison.arms
    assert comparison.baseline is beta and comparison.target_source == "--target"
    # Beta's mean curve reaches 2.505 at step 990; only its lower seed gets there (at 970).
    assert beta.crossing.step == pytest.approx(990.0) and beta.reached == 1
    assert [c.step for c in beta.per_seed] == [pytest.approx(970.0), None]
    assert uniform.speedup == pytest.approx(2.0) and logit.speedup == pytest.approx(4.0)
    assert "990 (1/2 seeds)" in comparison.table_text()

    by_dir = compare_runs(every, baseline=str(runs["logit"][1]))
    assert "family=logit_normal" in by_dir.baseline.label and by_dir.target == pytest.approx(1.0)


def test_an_unreached_baseline_gives_no_speedup(runs: dict[str, list[Path]]) -> None:
    comparison = compare_runs([*runs["beta"], *runs["logit"]], target=1.5)
    assert all(arm.speedup is None for arm in comparison.arms)
    assert comparison.arms[1].crossing.step == pytest.approx(750.0)
    assert any("baseline never reaches" in n for n in comparison.notes)


@pytest.mark.parametrize(
    ("baseline", "fragment"),
    [
        ("time_sampler.name=bell", "matches 2 arms"),
        ("time_sampler.name=sde", "matches no arm"),
        ("nonsense", "neither a run directory nor key=value"),
    ],
)
def test_bad_baseline_is_a_clear_error(runs: dict[str, list[Path]], baseline: str, fragment: str) -> None:
    with pytest.raises(MdmError, match=fragment):
        compare_runs([p for paths in runs.values() for p in paths], baseline=baseline)


def test_a_folder_of_runs_and_bad_paths(runs: dict[str, list[Path]], tmp_path: Path) -> None:
    comparison = compare_runs([tmp_path])
    assert sorted(len(a.runs) for a in comparison.arms) == [2, 3, 3]
    with pytest.raises(MdmError, match="not a run directory"):
        compare_runs([tmp_path / "missing"])


def write_accuracy_run(
    path: Path, forward: str, seed: int, per_step: float, sec_per_step: float = 0.1
) -> Path:
    """A run whose val/puzzle_acc rises linearly: acc = per_step · step + seed offset (capped at 1)."""
    path.mkdir(parents=True)
    config = {"name": "acc", "forward_process": {"name": forward}, "trainer": {"seed": seed}}
    (path / "resolved.yaml").write_text(yaml.safe_dump(config))
    lines = [
        {
            "kind": "eval",
            "step": s,
            "elapsed": s * sec_per_step,
            "val/nll": 2.0,
            "val/puzzle_acc": min(1.0, max(0.0, per_step * s + OFFSETS[seed])),
        }
        for s in STEPS
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_cross_follows_the_direction_of_the_metric() -> None:
    rising = [0.1, 0.3, 0.7]
    up = cross([0, 100, 200], [0.0, 10.0, 30.0], rising, 0.5, higher=True)
    assert (up.step, up.seconds) == (pytest.approx(150.0), pytest.approx(20.0))
    assert cross([0, 100, 200], [0.0, 10.0, 30.0], rising, 0.5).step == 0.0
    assert cross([0, 100], [0.0, 10.0], [0.1, 0.3], 0.5, higher=True).step is None


def test_compare_an_accuracy_where_higher_is_better(tmp_path: Path) -> None:
    """Baseline reaches its final 0.5 at step 1000; puma at 625 (between evaluations) with twice the
    seconds per step; slow never does."""
    seeds = (0, 2)
    runs = [write_accuracy_run(tmp_path / f"base{s}", "absorbing", s, 0.0005) for s in seeds]
    runs += [write_accuracy_run(tmp_path / f"puma{s}", "puma", s, 0.0008, sec_per_step=0.2) for s in seeds]
    runs += [write_accuracy_run(tmp_path / f"slow{s}", "slow", s, 0.0001) for s in seeds]
    out = tmp_path / "cmp"
    comparison = compare_runs(
        runs, baseline="forward_process.name=absorbing", metric="val/puzzle_acc", out_dir=out
    )
    assert comparison.higher_is_better and comparison.metric == "val/puzzle_acc"
    base, puma, slow = comparison.arms
    assert base is comparison.baseline and puma.label == "forward_process.name=puma"
    assert comparison.target == pytest.approx(0.5)
    assert base.crossing.step == pytest.approx(1000.0)
    assert puma.crossing.step == pytest.approx(625.0) and puma.crossing.seconds == pytest.approx(125.0)
    assert [c.step for c in puma.per_seed] == [pytest.approx(637.5), pytest.approx(612.5)]
    assert puma.speedup == pytest.approx(1.6) and puma.time_speedup == pytest.approx(0.8)
    assert slow.crossing.step is None and slow.speedup is None and slow.reached == 0

    table = comparison.table_text()
    assert "final val/puzzle_acc" in table and "target val/puzzle_acc ≥ 0.500" in table
    slow_row = next(line for line in table.splitlines() if line.startswith(slow.label))
    assert "not reached" in slow_row and "—" in slow_row
    puma_row = next(line for line in table.splitlines() if line.startswith(puma.label))
    assert "625 ± 18" in puma_row and "1.60×" in puma_row and "2m05s" in puma_row

    record = json.loads((out / "compare.json").read_text())
    assert record["metric"] == "val/puzzle_acc" and record["higher_is_better"] is True
    assert record["arms"][2]["steps_to_target"]["mean_curve"] is None

    # An explicit target and direction override the defaults: "lower is better" is met at step 0.
    lower = compare_runs(runs, metric="val/puzzle_acc", target=0.2, higher_is_better=False)
    assert not lower.higher_is_better and lower.target_source == "--target"
    assert all(arm.crossing.step == 0.0 for arm in lower.arms)


def test_an_exact_match_rate_is_higher_is_better_by_default(tmp_path: Path) -> None:
    """val/path_exact (star graphs) is an accuracy too: without a flag, reaching the baseline's
    final rate means rising to it, not being below it at the first evaluation."""
    runs = [write_accuracy_run(tmp_path / f"base{s}", "absorbing", s, 0.0005) for s in (0, 2)]
    for run in runs:
        text = (run / "metrics.jsonl").read_text().replace("val/puzzle_acc", "val/path_exact")
        (run / "metrics.jsonl").write_text(text)
    comparison = compare_runs(runs, metric="val/path_exact")
    assert comparison.higher_is_better and comparison.baseline.crossing.step == pytest.approx(1000.0)


def test_an_unrecorded_metric_names_the_recorded_ones(runs: dict[str, list[Path]]) -> None:
    with pytest.raises(MdmError, match=r"has recorded val/puzzle_acc; they record val/bpt, val/nll, val/ppl"):
        compare_runs(runs["uniform"], metric="val/puzzle_acc")
