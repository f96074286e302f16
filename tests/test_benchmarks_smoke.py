"""The B2/B4/B5 benchmark scripts run end to end in quick mode, and the uncached ancestral sampler
that B4 compares against is the same sampler minus the cache.

No timings are asserted: only the structure of each script's result and the laws it checks.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import AncestralSampler
from mdm_core.interfaces import AttentionLayout, KVCache, RunShape, SampleOutput, SamplingContext, Vocab
from mdm_core.testing import TinyBackbone

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
VOCAB = Vocab(size=7, pad_id=5, mask_id=6)
SHAPE = RunShape(vocab=VOCAB, seq_len=16)
CTX = SamplingContext.of(AbsorbingProcess(None, SHAPE), "cpu")


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Counting(TinyBackbone):
    """The kit's tiny model, counting its calls."""

    def __init__(self, params: TinyBackbone.Params, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.calls = 0

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        self.calls += 1
        return super().forward(input_ids, time_cond, layout, position_ids, kv_cache)


def sample(
    model: Counting, cache: bool, steps: int, eps: float, n: int, length: int, seed: int
) -> SampleOutput:
    sampler = AncestralSampler(AncestralSampler.Params(steps=steps, eps=eps, cache=cache))
    model.calls = 0
    out = sampler.generate(model, CTX, n, length, torch.Generator().manual_seed(seed))
    assert out.nfe == model.calls
    return out


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    steps=st.integers(1, 40),
    n=st.integers(1, 3),
    length=st.integers(1, 8),
    uses_time=st.booleans(),
)
def test_uncached_ancestral_gives_the_cached_tokens(
    seed: int, steps: int, n: int, length: int, uses_time: bool
) -> None:
    model = Counting(TinyBackbone.Params(uses_time=uses_time, seed=seed % 7), SHAPE)
    cached = sample(model, True, steps, 1e-5, n, length, seed)
    uncached = sample(model, False, steps, 1e-5, n, length, seed)
    assert torch.equal(cached.tokens, uncached.tokens)
    assert uncached.nfe <= steps + 1
    if uses_time:
        assert cached.nfe == uncached.nfe  # nothing to reuse when the model depends on t
    else:
        assert cached.nfe <= min(uncached.nfe, n * length + 1)


def test_uncached_ancestral_calls_the_model_at_every_grid_step() -> None:
    # Ending the grid at t = 0.5 leaves about half the positions masked, so the final fill runs.
    model = Counting(TinyBackbone.Params(), SHAPE)
    out = sample(model, False, 25, 0.5, 4, 16, seed=3)
    assert out.nfe == 25 + 1
    assert sample(model, True, 25, 0.5, 4, 16, seed=3).nfe < out.nfe
    assert int((out.tokens == VOCAB.mask_id).sum()) == 0


def test_bench_overhead_quick() -> None:
    bench = script("bench_overhead")
    args = ["--quick", "--threads", "1", "--steps", "1", "--repeats", "2", "--warmup", "0"]
    result = bench.main([*args, "--memory-runs", "0"])
    assert set(result["tok_per_s"]) == {"mdm", "bare"} and all(v > 0 for v in result["tok_per_s"].values())
    assert result["tokens_per_step"] == 8 * 16 and result["repeats"] == 2
    assert isinstance(result["overhead_pct"], float) and len(result["ratio_quartiles"]) == 3
    assert result["peak_memory_mib"] == {"mdm": None, "bare": None}
    probe = bench.main(["--quick", "--threads", "1", "--memory-probe", "bare"])
    assert set(probe) == {"mib"} and probe["mib"] >= 0


def test_bench_sampling_quick() -> None:
    result = script("bench_sampling").main(
        ["--quick", "--threads", "1", "--steps", "40", "--num-samples", "1", "2", "--repeats", "1"]
    )
    assert result["length"] == 8 and result["steps"] == 40 and "fresh" in result["model"]
    rows = {(r["num_samples"], r["sampler"]): r for r in result["rows"]}
    assert len(rows) == 6
    for n in (1, 2):
        cached, uncached = rows[(n, "ancestral, cached")], rows[(n, "ancestral, uncached")]
        assert cached["same_tokens_as_uncached"] and uncached["same_tokens_as_uncached"]
        assert cached["nfe"] <= cached["distinct_states"] <= cached["state_bound"] <= n * 8 + 1
        assert cached["nfe"] <= uncached["nfe"] <= 41
        assert rows[(n, "confidence (8 steps)")]["nfe"] == 8
    assert any("bench_block_sampler.py" in line for line in result["not_measured"])


def test_bench_block_sampler_quick() -> None:
    result = script("bench_block_sampler").main(
        [
            "--quick",
            "--threads",
            "1",
            "--steps",
            "4",
            "--num-samples",
            "1",
            "3",
            "--repeats",
            "2",
            "--resamples",
            "50",
        ]
    )
    assert result["length"] == 16 and "L' = 4" in result["model"]
    for row, n in zip(result["rows"], (1, 3), strict=True):
        assert row["num_samples"] == n and row["same_tokens"]
        assert 4 <= row["nfe"] <= 4 * 4  # 4 blocks, at most `steps` calls each
        low, high = row["speedup_ci95"]
        assert low <= high and row["cached_tok_per_s"] == pytest.approx(n * 16 / row["cached_s"])


def test_bench_startup_quick() -> None:
    result = script("bench_startup").main(["--quick"])
    assert set(result["median_s"]) == {"python -c pass (floor)", "mdm --help", "mdm plugins"}
    assert result["imports"]["mdm plugins"]["forbidden_imported"] == []
    assert result["imports"]["mdm --help"]["forbidden_imported"] == []
    control = result["imports"]["mdm components backbone"]["forbidden_imported"]
    assert {"torch", "mdm_plugin_dit.model"} <= set(control)  # the check can see component imports
    assert result["control_detected"] and result["ok"]


def test_bench_equal_nfe_reads_trained_runs_at_each_budget(tmp_path: Path) -> None:
    """Two arms (BD3 L' = 4 and AR), each read at the budgets it has: L/4, L, 4L for BD3, L for AR."""
    from mdm_core.spec import load_spec
    from mdm_core.trainer import train

    tiny = [
        "data.num_train=64",
        "data.num_val=16",
        "data.seq_len=16",
        "backbone={name: dit, dim: 32, layers: 1, heads: 2}",
        "trainer.max_steps=2",
        "trainer.ckpt_every=2",
        "evaluators=[{name: nll, every: 0, draws: 1}]",
        f"out_dir={tmp_path}",
    ]
    runs = []
    for name, process in (("bd3", "{name: bd3, block_size: 4}"), ("ar", "{name: ar}")):
        spec = load_spec(
            BENCHMARKS.parent / "specs" / "blockwise-markov.yaml", [*tiny, f"forward_process={process}"]
        )
        train(spec, run_dir=tmp_path / name, quiet=True)
        runs.append(str(tmp_path / name))
    result = script("bench_equal_nfe").main([*runs, "--num-samples", "4", "--threads", "1"])
    budgets = {(row["arm"], row["budget"]): row for row in result["rows"]}
    assert set(budgets) == {("bd3 L'=4", 0.25), ("bd3 L'=4", 1.0), ("bd3 L'=4", 4.0), ("ar", 1.0)}
    assert budgets[("ar", 1.0)]["val/sample_quality/nfe"] == 16  # one call per token
    for factor in (0.25, 1.0, 4.0):
        assert budgets[("bd3 L'=4", factor)]["val/sample_quality/nfe"] <= factor * 16
        assert 0 <= budgets[("bd3 L'=4", factor)]["val/sample_quality/impossible_frac"] <= 1
