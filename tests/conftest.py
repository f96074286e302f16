"""Shared fixtures: small specs that train in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY_SPEC = """
name: tiny
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 512, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
sampler: {{name: ancestral, steps: 16}}
evaluators:
  - {{name: nll, every: 4, draws: 2}}
trainer: {{max_steps: 8, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: 4, log_every: 2,
          eval_batch_size: 16, num_samples: 1}}
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    """A complete spec that trains for 8 steps in about a second."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC.format(out=tmp_path / "runs"))
    return path
