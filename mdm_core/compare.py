"""``mdm compare``: group runs into arms, measure steps and time to a target metric, and the speed-up.

Runs are grouped into *arms* by their resolved spec minus the seed and the run's name and paths; an
arm is labelled by the fewest spec keys that tell the arms apart (``time_sampler.name=bell``), plus
every other key it sets for a component another arm also uses (``...,time_sampler.anneal=0.2``).
The numbers follow BENCHMARKS.md B1, for any eval metric (``val/nll`` by default; for tasks
``val/puzzle_acc`` and the like, where higher is better):

* the *target* is ``--target`` or, by default, the baseline arm's final value of the metric (the
  last point of its seed-mean curve);
* an arm's *steps to target* is where its seed-mean curve (the mean over seeds at each evaluation
  step they share) first reaches the target (falls to it, or rises to it when higher is better),
  interpolating linearly between the two evaluations around the crossing; *time to target* uses
  the same fraction on the elapsed-seconds axis. The ± is the spread of the same quantity over the
  individual seeds;
* *speed-up* = baseline steps to target / arm steps to target.

An arm that never reaches the target shows "not reached", never an extrapolated number.

Intervals (``ci``, 90% by default) are percentile bootstraps over seeds: each of ``resamples``
(≥ 2000) resamples draws an arm's seeds with replacement (the baseline's and each arm's
independently, from a generator seeded by ``bootstrap_seed`` and the arm's position), rebuilds the
seed-mean curves, re-derives a default target from the resampled baseline (an explicit target
stays fixed) and recomputes steps and time to target and both speed-ups. A resample whose curve
never reaches the target counts as infinitely slow (speed-up 0); one whose baseline never does
has no speed-up and is left out of that interval. With one seed an interval is the point itself,
and the table says "1 seed" instead of showing it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

from mdm_core.errors import MdmError
from mdm_core.runs import read_metrics

#: Spec keys that never distinguish arms: the seed (it makes the spread) and naming/paths.
IGNORED_KEYS = frozenset({"trainer.seed", "name", "description", "out_dir", "requires"})
DEFAULT_METRIC = "val/nll"
#: Fewest bootstrap resamples allowed: percentile tails of a 90% interval need a few hundred beyond it.
MIN_RESAMPLES = 2000
#: Prefix of the ``nll_by_t`` evaluator's bucket metrics (``all`` is their mean, not a bucket).
NLL_BY_T = "val/nll_by_t/"
#: Metric names containing one of these are better when higher (accuracies, exact-match rates).
HIGHER_IS_BETTER = ("acc", "exact")
#: Bucketed diagnostics drawn as heat maps (bucket × step): metric prefix → (file stem, axis label).
BUCKET_METRICS = {NLL_BY_T: ("nll_by_t", "t"), "val/nll_by_context/": ("nll_by_context", "distance")}


@dataclass
class Run:
    """One run directory: its flattened resolved spec and its validation curve."""

    path: Path
    config: dict[str, Any]
    steps: list[int]
    elapsed: list[float]
    values: list[float]

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    @property
    def arm_key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, json.dumps(v)) for k, v in self.config.items() if not _ignored(k)))


@dataclass
class Crossing:
    """Where a curve first reaches the target (None: it never does)."""

    step: float | None
    seconds: float | None


@dataclass(frozen=True)
class Interval:
    """A percentile-bootstrap interval; ``lo``/``hi`` may be inf (not reached in that tail) and
    ``defined`` is the share of resamples where the quantity exists (a speed-up needs the baseline
    to reach the target)."""

    lo: float
    hi: float
    defined: float = 1.0

    def to_json(self) -> dict[str, Any]:
        finite = [v if np.isfinite(v) else None for v in (self.lo, self.hi)]
        return {"lo": finite[0], "hi": finite[1], "defined": self.defined}


@dataclass
class Arm:
    """Runs that differ only by seed, with their seed-mean curve and the figures derived from it."""

    label: str
    keys: dict[str, Any]
    runs: list[Run]
    steps: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    crossing: Crossing = field(default_factory=lambda: Crossing(None, None))
    per_seed: list[Crossing] = field(default_factory=list)
    speedup: float | None = None
    time_speedup: float | None = None
    #: Bootstrap intervals (lo, hi) over seeds, filled by :func:`bootstrap`; inf = not reached.
    intervals: dict[str, Interval] = field(default_factory=dict)

    @property
    def finals(self) -> list[float]:
        return [r.values[-1] for r in self.runs]

    @property
    def reached(self) -> int:
        return sum(c.step is not None for c in self.per_seed)

    def seed_spread(self, attr: str) -> float | None:
        """Std over seeds of steps/seconds to target, when every seed reached it."""
        values = [getattr(c, attr) for c in self.per_seed]
        if len(values) < 2 or any(v is None for v in values):
            return None
        return statistics.stdev(values)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "keys": self.keys,
            "runs": [str(r.path) for r in self.runs],
            "seeds": [r.seed for r in self.runs],
            "final": {
                "mean": statistics.fmean(self.finals),
                "std": _std(self.finals),
                "per_seed": self.finals,
            },
            "steps_to_target": {
                "mean_curve": self.crossing.step,
                "per_seed": [c.step for c in self.per_seed],
                "std": self.seed_spread("step"),
                "reached": f"{self.reached}/{len(self.runs)}",
            },
            "seconds_to_target": {
                "mean_curve": self.crossing.seconds,
                "per_seed": [c.seconds for c in self.per_seed],
                "std": self.seed_spread("seconds"),
            },
            "speedup": self.speedup,
            "time_speedup": self.time_speedup,
            "intervals": {name: interval.to_json() for name, interval in self.intervals.items()},
            "curve": {
                "step": self.steps,
                "elapsed": self.elapsed,
                "mean": self.mean,
                "min": self.low,
                "max": self.high,
            },
        }


@dataclass
class Comparison:
    """The arms, the baseline and the target, as a table, a JSON record and a plot."""

    arms: list[Arm]
    baseline: Arm
    target: float
    target_source: str
    notes: list[str] = field(default_factory=list)
    metric: str = DEFAULT_METRIC
    higher_is_better: bool = False

    ci: float = 0.9
    resamples: int = MIN_RESAMPLES
    bootstrap_seed: int = 0

    def header(self) -> list[str]:
        target, level = f"{self.target:.3f}", f"{self.ci:.0%} CI"
        return [
            "arm",
            "seeds",
            f"final {self.metric}",
            f"steps to {target} [{level}]",
            f"time to {target} [{level}]",
            f"speed-up [{level}]",
            f"time speed-up [{level}]",
        ]

    def rows(self) -> list[list[str]]:
        """One row of cells per arm: point ± spread over seeds, then the bootstrap interval."""
        rows = []
        for arm in self.arms:
            finals = arm.finals
            paired = len(arm.runs) > 1 and len(self.baseline.runs) > 1
            rows.append(
                [
                    arm.label + (" (baseline)" if arm is self.baseline else ""),
                    str(len(arm.runs)),
                    f"{statistics.fmean(finals):.3f} ± {_std(finals):.3f}",
                    _with_interval(_reach_text(arm, "step", _steps), arm, "steps", _steps, len(arm.runs) > 1),
                    _with_interval(
                        _reach_text(arm, "seconds", format_seconds),
                        arm,
                        "seconds",
                        format_seconds,
                        len(arm.runs) > 1,
                    ),
                    _with_interval(_times(arm.speedup), arm, "speedup", _times, paired),
                    _with_interval(_times(arm.time_speedup), arm, "time_speedup", _times, paired),
                ]
            )
        return rows

    def footer(self) -> list[str]:
        target = f"{self.target:.3f}"
        again = "re-derived from each resampled baseline" if self.target_source != "--target" else "fixed"
        lines = [
            f"target {self.metric} {'≥' if self.higher_is_better else '≤'} {target}: {self.target_source}; "
            "steps and time: first crossing of the seed-mean curve (linear between evaluations), "
            "± over seeds",
            f"[lo–hi]: {self.ci:.0%} percentile bootstrap over seeds ({self.resamples} resamples, seed "
            f"{self.bootstrap_seed}, target {again}; ∞ = not reached in that tail); "
            "'1 seed': no interval (it would be the point itself)",
        ]
        return lines + [f"note: {n}" for n in self.notes]

    def table_text(self) -> str:
        rows = [self.header(), *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        return "\n".join(lines + self.footer())

    def markdown(self, command: str) -> str:
        """The table as GitHub markdown for RESULTS.md, under the command that reproduces it."""

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        header = self.header()
        body = [line(header), "|" + "---|" * len(header), *(line(r) for r in self.rows())]
        notes = "\n".join(f"- {n}" for n in self.footer())
        return f"```\n{command}\n```\n\n" + "\n".join(body) + f"\n\n{notes}\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "target_source": self.target_source,
            "baseline": self.baseline.label,
            "bootstrap": {"ci": self.ci, "resamples": self.resamples, "seed": self.bootstrap_seed},
            "arms": [arm.to_json() for arm in self.arms],
            "notes": self.notes,
        }


# -- loading -------------------------------------------------------------------------------------


def load_runs(paths: Sequence[Path], metric: str = DEFAULT_METRIC) -> tuple[list[Run], list[str]]:
    """Run directories, sweep directories (their points) or folders of runs → runs with a curve of
    ``metric``."""
    if not paths:
        raise MdmError("compare: name at least one run or sweep directory", exit_code=2)
    runs: list[Run] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        for run_dir in _run_dirs(path, notes):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            run = _load_run(run_dir, metric)
            if run is None:
                notes.append(f"{run_dir}: no {metric} recorded yet; left out")
            else:
                runs.append(run)
    if not runs:
        recorded = sorted(
            {k for d in seen for m in read_metrics(d) if m.get("kind") == "eval" for k in m}
            - {"kind", "step", "elapsed"}
        )
        if recorded:
            raise MdmError(
                f"compare: none of the runs has recorded {metric}; they record {', '.join(recorded)} "
                "(choose one with --metric)",
                exit_code=2,
            )
        raise MdmError(f"compare: none of the runs has recorded {metric} yet", exit_code=1)
    return runs, notes


def _run_dirs(path: Path, notes: list[str]) -> list[Path]:
    if (path / "sweep.json").is_file():
        sweep = json.loads((path / "sweep.json").read_text())
        found = []
        for point in sweep.get("points", []):
            run_dir = path / point["run_dir"]
            if (run_dir / "resolved.yaml").is_file():
                found.append(run_dir)
            else:
                notes.append(f"sweep point {point['label']} has no run (exit code {point.get('exit_code')})")
        return found
    if (path / "resolved.yaml").is_file():
        return [path]
    if path.is_dir():
        children = sorted(p for p in path.iterdir() if (p / "resolved.yaml").is_file())
        if children:
            return children
    raise MdmError(
        f"compare: {path} is not a run directory (no resolved.yaml), a sweep directory (no sweep.json) "
        "or a folder of runs",
        exit_code=2,
    )


def _load_run(run_dir: Path, metric: str) -> Run | None:
    try:
        metrics = read_metrics(run_dir)
    except json.JSONDecodeError as exc:
        raise MdmError(f"compare: {run_dir}/metrics.jsonl is not JSON lines: {exc}") from exc
    evals = sorted((m for m in metrics if m.get("kind") == "eval" and metric in m), key=lambda m: m["step"])
    if not evals:
        return None
    resolved = OmegaConf.to_container(OmegaConf.load(run_dir / "resolved.yaml"), resolve=True)
    return Run(
        path=run_dir,
        config=_flatten(resolved),
        steps=[int(m["step"]) for m in evals],
        elapsed=[float(m["elapsed"]) for m in evals],
        values=[float(m[metric]) for m in evals],
    )


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.split(".")[0] in IGNORED_KEYS


# -- grouping ------------------------------------------------------------------------------------


def group_arms(runs: Sequence[Run]) -> list[Arm]:
    """Arms in the order their first run was given, labelled by the keys that tell them apart."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.arm_key, []).append(run)
    configs = [{k: v for k, v in members[0].config.items() if not _ignored(k)} for members in groups.values()]
    chosen = _distinguishing_keys(configs)
    arms = []
    for config, members in zip(configs, groups.values(), strict=True):
        extra = [
            k for k in _differing_keys(configs) if k not in chosen and _shared_component(k, config, configs)
        ]
        keys = {k: config[k] for k in [*chosen, *extra] if k in config}
        label = ",".join(f"{k}={_text(v)}" for k, v in keys.items()) or "(defaults)"
        arms.append(Arm(label, keys, members))
    return arms


def _distinguishing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Greedy: add keys (component names first, then keys most arms set) while they split the arms further."""
    if len(configs) < 2:
        return []
    differing = set(_differing_keys(configs))
    present = {k: sum(k in c for c in configs) for k in differing}
    order = sorted(differing, key=lambda k: (not k.endswith(".name"), -present[k], k.count("."), k))
    chosen: list[str] = []
    classes = 1
    for key in order:
        trial = [*chosen, key]
        count = len({_signature(c, trial) for c in configs})
        if count > classes:
            chosen, classes = trial, count
        if classes == len(configs):
            break
    return chosen


def _shared_component(key: str, config: dict[str, Any], configs: list[dict[str, Any]]) -> bool:
    """Whether this arm sets ``key`` of a component another arm also uses (same ``.name``): then
    the key tells those arms apart and belongs in the label, even where the greedy choice found
    another key enough (an annealed bell beside bells with mu, s set would read as a plain bell)."""
    section = key.rpartition(".")[0]
    name = config.get(f"{section}.name")
    if key not in config or not section or name is None:
        return False
    return sum(c.get(f"{section}.name") == name for c in configs) > 1


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Keys whose value (or presence) is not the same in every config, in a stable order."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({_signature(c, [k]) for c in configs}) > 1] if len(configs) > 1 else []


def _signature(config: dict[str, Any], keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(json.dumps(config[k]) if k in config else "<unset>" for k in keys)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def select_baseline(arms: Sequence[Arm], baseline: str | None) -> Arm:
    """``None``: the arm of the first run given; a run directory; or ``key=value[,key=value]``."""
    if baseline is None:
        return arms[0]
    if Path(baseline).is_dir():
        target = Path(baseline).resolve()
        for arm in arms:
            if any(r.path.resolve() == target for r in arm.runs):
                return arm
        raise MdmError(f"--baseline {baseline}: that run is not among the runs compared", exit_code=2)
    if "=" not in baseline:
        raise MdmError(
            f"--baseline {baseline}: neither a run directory nor key=value (e.g. time_sampler.name=uniform)",
            exit_code=2,
        )
    wanted = [part.partition("=")[::2] for part in baseline.split(",")]
    matches = [a for a in arms if all(_matches(a.runs[0].config, k.strip(), v.strip()) for k, v in wanted)]
    if len(matches) != 1:
        found = "no arm" if not matches else f"{len(matches)} arms"
        listing = "\n       ".join(a.label for a in arms)
        raise MdmError(f"--baseline {baseline}: matches {found}; arms are:\n       {listing}", exit_code=2)
    return matches[0]


def _matches(config: dict[str, Any], key: str, text: str) -> bool:
    if key not in config:
        return False
    value = config[key]
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = text
    return bool(parsed == value or text == _text(value))


# -- curves and figures --------------------------------------------------------------------------


def cross(
    steps: Sequence[float],
    seconds: Sequence[float],
    values: Sequence[float],
    target: float,
    higher: bool = False,
) -> Crossing:
    """First point where ``values`` reach the target (≤, or ≥ when ``higher`` is better), linear
    between the evaluation before and the one at it."""
    for i, value in enumerate(values):
        if (value >= target) if higher else (value <= target):
            if i == 0:
                return Crossing(float(steps[0]), float(seconds[0]))
            frac = (values[i - 1] - target) / (values[i - 1] - value)
            return Crossing(
                steps[i - 1] + frac * (steps[i] - steps[i - 1]),
                seconds[i - 1] + frac * (seconds[i] - seconds[i - 1]),
            )
    return Crossing(None, None)


def _mean_curve(arm: Arm) -> None:
    shared = sorted(set.intersection(*(set(r.steps) for r in arm.runs)))
    if not shared:
        raise MdmError(
            f"compare: the runs of arm {arm.label} share no evaluation step; give them the same evaluator "
            "schedule (evaluators.*.every)"
        )
    columns = [[r.values[r.steps.index(s)] for r in arm.runs] for s in shared]
    arm.steps = shared
    arm.elapsed = [statistics.fmean(r.elapsed[r.steps.index(s)] for r in arm.runs) for s in shared]
    arm.mean = [statistics.fmean(c) for c in columns]
    arm.low = [min(c) for c in columns]
    arm.high = [max(c) for c in columns]


def cross_many(
    steps: Sequence[float], seconds: np.ndarray, values: np.ndarray, target: np.ndarray, higher: bool
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cross` for a batch of curves ``[N, S]`` (targets ``[N]``): steps and seconds, inf
    where a curve never reaches its target."""
    hit = values >= target[:, None] if higher else values <= target[:, None]
    first = hit.argmax(axis=1)
    reached = hit.any(axis=1)
    prev = np.maximum(first - 1, 0)
    rows = np.arange(values.shape[0])
    step_axis = np.asarray(steps, dtype=np.float64)
    before, at = values[rows, prev], values[rows, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(first > 0, (before - target) / (before - at), 0.0)
    step = step_axis[prev] + frac * (step_axis[first] - step_axis[prev])
    second = seconds[rows, prev] + frac * (seconds[rows, first] - seconds[rows, prev])
    return np.where(reached, step, np.inf), np.where(reached, second, np.inf)


def _resampled_crossings(
    arm: Arm, picks: np.ndarray, target: np.ndarray | None, higher: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps and seconds to target of the seed-mean curves of resampled seeds ``picks`` ``[N, R]``,
    and the targets used (``None``: each resample's own final mean value, the baseline's default)."""
    cols = [[r.steps.index(s) for s in arm.steps] for r in arm.runs]
    values = np.array([[r.values[i] for i in c] for r, c in zip(arm.runs, cols, strict=True)])
    elapsed = np.array([[r.elapsed[i] for i in c] for r, c in zip(arm.runs, cols, strict=True)])
    curves, seconds = values[picks].mean(axis=1), elapsed[picks].mean(axis=1)
    goal = curves[:, -1] if target is None else target
    step, second = cross_many(arm.steps, seconds, curves, goal, higher)
    return step, second, goal


def _interval(samples: np.ndarray, ci: float) -> Interval | None:
    """Percentile interval by order statistics (no interpolation, so inf tails stay inf)."""
    kept = samples[~np.isnan(samples)]
    if kept.size == 0:
        return None
    lo, hi = np.quantile(kept, [(1 - ci) / 2, (1 + ci) / 2], method="inverted_cdf")
    return Interval(float(lo), float(hi), kept.size / samples.size)


def bootstrap(comparison: Comparison, fixed_target: bool) -> None:
    """Fill every arm's ``intervals`` (steps, seconds, speedup, time_speedup); see the module doc."""
    n, ci, higher = comparison.resamples, comparison.ci, comparison.higher_is_better
    base = comparison.baseline
    index = comparison.arms.index(base)
    rng = np.random.default_rng([comparison.bootstrap_seed, index])
    base_picks = rng.integers(len(base.runs), size=(n, len(base.runs)))
    target = np.full(n, comparison.target) if fixed_target else None
    base_steps, base_seconds, goal = _resampled_crossings(base, base_picks, target, higher)
    for i, arm in enumerate(comparison.arms):
        if arm is base:
            steps, seconds = base_steps, base_seconds
        else:
            rng = np.random.default_rng([comparison.bootstrap_seed, i])
            picks = rng.integers(len(arm.runs), size=(n, len(arm.runs)))
            steps, seconds, _ = _resampled_crossings(arm, picks, goal, higher)
        found = {"steps": _interval(steps, ci), "seconds": _interval(seconds, ci)}
        with np.errstate(divide="ignore", invalid="ignore"):
            for name, num, den in (("speedup", base_steps, steps), ("time_speedup", base_seconds, seconds)):
                ratio = np.where(np.isinf(num), np.nan, np.where(np.isinf(den), 0.0, num / den))
                found[name] = _interval(ratio, ci)
        arm.intervals = {k: v for k, v in found.items() if v is not None}


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den <= 0 else num / den


def compare_runs(
    paths: Sequence[Path],
    baseline: str | None = None,
    target: float | None = None,
    out_dir: Path | None = None,
    metric: str = DEFAULT_METRIC,
    higher_is_better: bool | None = None,
    ci: float = 0.9,
    resamples: int = MIN_RESAMPLES,
    bootstrap_seed: int = 0,
) -> Comparison:
    """Compare runs as arms (see the module docstring); write compare.json and compare.png (and
    nll_by_t.png / nll_by_context.png when the runs logged those evaluators) to out_dir.

    ``metric`` is any eval metric in metrics.jsonl (``val/nll``, ``val/puzzle_acc`` ...);
    ``higher_is_better`` defaults to True for names containing "acc" or "exact"; ``ci``,
    ``resamples`` and ``bootstrap_seed`` set the bootstrap intervals over seeds.
    """
    if not 0.0 < ci < 1.0:
        raise MdmError(f"compare: --ci {ci} must lie strictly between 0 and 1 (e.g. 0.9)", exit_code=2)
    if resamples < MIN_RESAMPLES:
        raise MdmError(f"compare: --resamples {resamples}: use at least {MIN_RESAMPLES}", exit_code=2)
    higher = (
        any(word in metric for word in HIGHER_IS_BETTER) if higher_is_better is None else higher_is_better
    )
    runs, notes = load_runs(paths, metric)
    arms = group_arms(runs)
    for arm in arms:
        _mean_curve(arm)
    base = select_baseline(arms, baseline)
    if target is None:
        target, source = base.mean[-1], f"final {metric} of the baseline ({base.label})"
    else:
        source = "--target"
    for arm in arms:
        arm.crossing = cross(arm.steps, arm.elapsed, arm.mean, target, higher)
        arm.per_seed = [cross(r.steps, r.elapsed, r.values, target, higher) for r in arm.runs]
    for arm in arms:
        arm.speedup = _ratio(base.crossing.step, arm.crossing.step)
        arm.time_speedup = _ratio(base.crossing.seconds, arm.crossing.seconds)
    if base.crossing.step is None:
        notes.append("the baseline never reaches the target, so no speed-up can be given")
    comparison = Comparison(arms, base, target, source, notes, metric, higher, ci, resamples, bootstrap_seed)
    bootstrap(comparison, fixed_target=source == "--target")
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "compare.json").write_text(json.dumps(comparison.to_json(), indent=1) + "\n")
        plot_comparison(comparison, out_dir / "compare.png")
        from mdm_core.plotting import plot_buckets

        for prefix, (name, axis) in BUCKET_METRICS.items():
            heat = bucket_maps(comparison, prefix)
            if heat:
                plot_buckets(heat, out_dir / f"{name}.png", baseline=base.label, axis=axis)
    return comparison


def bucket_maps(
    comparison: Comparison, prefix: str = NLL_BY_T
) -> dict[str, tuple[list[int], list[str], np.ndarray]]:
    """Per arm that logged a bucketed diagnostic (``prefix``: ``nll_by_t`` or ``nll_by_context``):
    (steps, bucket names, seed-mean value ``[buckets, steps]``) over the evaluation steps all its
    seeds share; arms without it are left out."""
    maps = {}
    for arm in comparison.arms:
        per_run = [_bucket_curves(r.path, prefix) for r in arm.runs]
        if not all(per_run):
            continue
        names = sorted(set.intersection(*(set(c) for c in per_run)), key=_bucket_start)
        if not names:
            continue
        steps = sorted(set.intersection(*(set(c[n]) for c in per_run for n in names)))
        if not steps:
            continue
        grid = np.array([[[c[n][s] for s in steps] for n in names] for c in per_run])
        maps[arm.label] = (steps, names, grid.mean(axis=0))
    return maps


def _bucket_start(name: str) -> float:
    """Sort key of a bucket name: ``0.100-0.200`` (t), ``3-4`` or ``9+`` (distance)."""
    return float(name.split("-")[0].rstrip("+"))


def _bucket_curves(run_dir: Path, prefix: str) -> dict[str, dict[int, float]]:
    """bucket name → {step: value} from a run's ``<prefix><bucket>`` metrics (not ``all``, not the
    ``share/`` sub-metrics)."""
    curves: dict[str, dict[int, float]] = {}
    for m in read_metrics(run_dir):
        if m.get("kind") != "eval":
            continue
        for key, value in m.items():
            bucket = key[len(prefix) :]
            if key.startswith(prefix) and bucket != "all" and "/" not in bucket:
                curves.setdefault(bucket, {})[int(m["step"])] = float(value)
    return curves


def plot_comparison(comparison: Comparison, path: Path) -> Path:
    """Two panels (metric vs steps, vs wall-clock): seed-mean line, min–max band, target line."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    fig = Figure(figsize=(11, 4.2))
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    longest = max(max(arm.elapsed) for arm in comparison.arms)
    scale, unit = (60.0, "minutes") if longest > 180 else (1.0, "seconds")
    for i, arm in enumerate(comparison.arms):
        color = f"C{i % 10}"
        label = f"{arm.label} ({len(arm.runs)} seeds)"
        minutes = [e / scale for e in arm.elapsed]
        for ax, x in ((by_step, arm.steps), (by_time, minutes)):
            ax.plot(x, arm.mean, color=color, lw=1.6, label=label)
            if len(arm.runs) > 1:
                ax.fill_between(x, arm.low, arm.high, color=color, alpha=0.2, lw=0)
    for ax in (by_step, by_time):
        ax.axhline(comparison.target, color="k", ls="--", lw=1, label=f"target {comparison.target:.3f}")
        ax.grid(alpha=0.3)
    by_step.set_xlabel("step")
    by_time.set_xlabel(f"wall-clock ({unit})")
    nll = comparison.metric == DEFAULT_METRIC
    by_step.set_ylabel("val NLL, nats/token (uniform-t NELBO)" if nll else comparison.metric)
    by_step.set_title(f"{comparison.metric} vs steps (mean, min–max over seeds)")
    by_time.set_title(f"{comparison.metric} vs wall-clock")
    by_step.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# -- text ----------------------------------------------------------------------------------------


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _reach_text(arm: Arm, attr: str, fmt: Any) -> str:
    value = getattr(arm.crossing, attr)
    if value is None:
        return "not reached" + (f" ({arm.reached}/{len(arm.runs)} seeds did)" if arm.reached else "")
    spread = arm.seed_spread(attr)
    if spread is not None:
        return f"{fmt(value)} ± {fmt(spread)}"
    if len(arm.runs) > 1:
        return f"{fmt(value)} ({arm.reached}/{len(arm.runs)} seeds)"
    return fmt(value)


def _steps(value: float) -> str:
    return f"{value:.0f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _with_interval(text: str, arm: Arm, name: str, fmt: Any, several: bool) -> str:
    """``text [lo–hi]``; ``text (1 seed)`` where a single seed makes the interval the point."""
    interval = arm.intervals.get(name)
    if interval is None or text == "—":
        return text
    if not several:
        return f"{text} (1 seed)"
    ends = ["∞" if not np.isfinite(v) else fmt(v) for v in (interval.lo, interval.hi)]
    return f"{text} [{ends[0]}–{ends[1]}]"


def format_seconds(seconds: float) -> str:
    """``42s``, ``10m31s``, ``2h05m``."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
