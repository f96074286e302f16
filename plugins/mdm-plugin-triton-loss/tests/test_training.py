"""A training spec that names ``mdlm_triton`` runs end to end and matches ``mdlm``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.trainer import train

SPEC = """
name: {loss}
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 16}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
loss: {{name: {loss}}}
sampler: {{name: ancestral, steps: 4}}
evaluators:
  - {{name: nll, every: 2, draws: 2}}
trainer: {{max_steps: 4, batch_size: 2, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 4, log_every: 1,
          eval_batch_size: 16, num_samples: 1}}
"""


def _run(tmp_path: Path, loss: str) -> list[dict[str, float]]:
    path = tmp_path / f"{loss}.yaml"
    path.write_text(SPEC.format(loss=loss, out=tmp_path / "runs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback notice on a GPU-less run
        summary = train(load_spec(path), quiet=True)
    return list(read_metrics(Path(summary["run_dir"])))


def test_swapping_the_loss_changes_no_metric(tmp_path: Path) -> None:
    reference, fused = _run(tmp_path, "mdlm"), _run(tmp_path, "mdlm_triton")
    assert [m["kind"] for m in fused] == [m["kind"] for m in reference]
    assert any(m["kind"] == "eval" for m in fused)
    for ref, got in zip(reference, fused, strict=True):
        for key in ("loss", "val/nll", "val/bpt", "val/ppl"):
            if key in ref:
                assert got[key] == pytest.approx(ref[key], rel=1e-4), (ref["step"], key)
