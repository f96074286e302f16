"""``gen_ppl``: samples judged by another run's likelihood (the text analogue of the Markov
corpus's exact judge)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mdm_core.assembly import load_run
from mdm_core.builtin.evaluators import NLLEvaluator
from mdm_core.builtin.gen_ppl import GenPPLEvaluator, ModelJudge
from mdm_core.errors import MdmError
from mdm_core.evaluation import eval_context
from mdm_core.spec import load_spec
from mdm_core.trainer import train

SPEC = """
name: judged
out_dir: {out}
data: {{name: markov, vocab_size: {vocab}, branching: 2, seq_len: 16, num_train: 64, num_val: 16}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
sampler: {{name: ancestral, steps: 8}}
evaluators:
  - {{name: nll, every: 0, draws: 2}}
trainer: {{max_steps: 2, batch_size: 8, lr: 3e-3, warmup: 1, seed: {seed}, ckpt_every: 2, log_every: 1,
          eval_batch_size: 16, num_samples: 0}}
"""


def _run(tmp_path: Path, name: str, seed: int = 0, vocab: int = 8) -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC.format(out=tmp_path / "runs", seed=seed, vocab=vocab))
    train(load_spec(spec), run_dir=tmp_path / name, quiet=True)
    return tmp_path / name


def test_the_judge_scores_rows_as_its_own_nll_evaluator_does(tmp_path: Path) -> None:
    """Judging the judge's own validation rows is its validation NLL (same rows, masks, draws)."""
    judge_dir, model_dir = _run(tmp_path, "judge", seed=1), _run(tmp_path, "model")
    judge_run, model_run = load_run(judge_dir), load_run(model_dir)
    judge_ctx = eval_context(
        judge_run.parts, judge_run.parts.model, judge_run.spec.run.trainer, judge_run.device
    )
    model_ctx = eval_context(
        model_run.parts, model_run.parts.model, model_run.spec.run.trainer, model_run.device
    )
    expected = NLLEvaluator(NLLEvaluator.Params(draws=2)).evaluate(judge_ctx)["nll"]
    rows = torch.as_tensor(judge_ctx.dataset["input_ids"])
    judged = ModelJudge(str(judge_dir), 2, model_ctx)(rows)
    assert judged["nll"] == pytest.approx(expected, rel=1e-9)
    assert judged["ppl"] == pytest.approx(math.exp(expected))

    evaluator = GenPPLEvaluator(GenPPLEvaluator.Params(judge=str(judge_dir), judge_draws=2, num_samples=4))
    metrics = evaluator.evaluate(model_ctx)
    assert set(metrics) == {"gen_ppl/nll", "gen_ppl/ppl", "gen_ppl/entropy", "gen_ppl/nfe"}
    assert metrics["gen_ppl/ppl"] == pytest.approx(math.exp(metrics["gen_ppl/nll"]))
    assert 1 <= metrics["gen_ppl/nfe"] <= 8 and metrics["gen_ppl/entropy"] > 0


def test_a_judge_that_cannot_read_the_samples_is_exit_2(tmp_path: Path) -> None:
    model_dir = _run(tmp_path, "model")
    other = _run(tmp_path, "other-vocab", vocab=12)
    loaded = load_run(model_dir)
    ctx = eval_context(loaded.parts, loaded.parts.model, loaded.spec.run.trainer, loaded.device)
    with pytest.raises(MdmError, match="another tokenizer") as err:
        ModelJudge(str(other), 1, ctx)
    assert err.value.exit_code == 2
    with pytest.raises(MdmError, match="not a run directory") as err:
        ModelJudge(str(tmp_path / "nowhere"), 1, ctx)
    assert err.value.exit_code == 2
