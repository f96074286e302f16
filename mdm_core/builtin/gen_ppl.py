"""Generative perplexity: samples of any sampler scored by another trained run's likelihood.

On text there is no exact judge of samples, so the field judges them by a reference model
trained on the same data (the BD3 and MDLM papers use an autoregressive one): gen-PPL is
``exp`` of the judge's NLL of the samples in nats/token. A collapsed sampler (repeating one
likely token) scores a low gen-PPL, so the samples' unigram entropy is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.diagnostics import SampleQualityEvaluator
from mdm_core.builtin.evaluators import NLLEvaluator
from mdm_core.data.loader import rows_dataset
from mdm_core.errors import MdmError
from mdm_core.interfaces import EvalContext


class GenPPLEvaluator(SampleQualityEvaluator):
    """Generate with the run's (or a named) sampler and score the samples with ``judge``'s
    validation likelihood: an AR run's is the exact NLL (``judge_draws: 1``); a diffusion judge's
    is its uniform-t NELBO with ``judge_draws`` stratified draws. The judge must share the run's
    tokenizer (else exit 2). Metrics: ``gen_ppl/nll``, ``gen_ppl/ppl``, ``gen_ppl/entropy``,
    ``gen_ppl/nfe``."""

    name = "gen_ppl"

    class Params(SampleQualityEvaluator.Params):
        judge: str = Field(description="run directory (or exported model) whose likelihood judges samples")
        judge_draws: int = Field(default=1, ge=1, description="t draws of the judge's likelihood (AR: 1)")

    params: Params

    def _judge(self, ctx: EvalContext) -> Any:
        if self.judge is None:
            self.judge = ModelJudge(self.params.judge, self.params.judge_draws, ctx)
        return self.judge


class ModelJudge:
    """Scores token rows ``[N, L]`` with a trained run's likelihood evaluator."""

    def __init__(self, source: str, draws: int, ctx: EvalContext) -> None:
        from mdm_core.assembly import load_run  # the judge is a whole run: import lazily
        from mdm_core.evaluation import eval_context

        try:
            loaded = load_run(source, ctx.device)
        except MdmError as exc:  # load_run says what is wrong with the folder; name the spec key
            raise MdmError(
                f"evaluators.gen_ppl.judge: {exc}; train the judge first "
                "(e.g. mdm train SPEC 'forward_process={name: ar}' 'sampler={name: ar}')",
                exit_code=exc.exit_code,
            ) from None
        mine, theirs = ctx.tokenizer.to_json(), loaded.parts.bundle.tokenizer.to_json()
        if mine != theirs:
            raise MdmError(
                f"evaluators.gen_ppl.judge: {source} was trained with another tokenizer than this run; "
                "a judge must read the same token ids (train it on the same data spec)",
                exit_code=2,
            )
        self.source = source
        self.ctx = eval_context(loaded.parts, loaded.parts.model, loaded.spec.run.trainer, ctx.device)
        self.nll = NLLEvaluator(NLLEvaluator.Params(every=0, draws=draws))

    def __call__(self, tokens: Tensor) -> dict[str, float]:
        rows = rows_dataset(np.asarray(tokens.cpu()))
        scored = self.nll.evaluate(replace(self.ctx, dataset=rows))
        nll = scored["nll"]
        return {"nll": nll, "ppl": math.exp(nll) if nll < 700 else math.inf}
