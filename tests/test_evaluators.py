"""The validation NELBO (fixed masks, known optimum) and the sample statistics evaluator."""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
from torch import Tensor, nn

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.evaluators import NLLEvaluator, PerSequenceStratified, SampleEvaluator, unigram_entropy
from mdm_core.builtin.samplers import AncestralSampler
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    DatasetBundle,
    DataSource,
    EvalContext,
    KVCache,
    RunShape,
    Tokenizer,
)
from mdm_core.testing import TinyBackbone

SYMBOLS = "abcd"


class Letters(Tokenizer):
    """One id per letter of ``SYMBOLS``."""

    @property
    def num_regular(self) -> int:
        return len(SYMBOLS)

    def encode(self, text: str) -> list[int]:
        return [SYMBOLS.index(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(SYMBOLS[i] if i < len(SYMBOLS) else "_" for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"symbols": SYMBOLS}


VOCAB = Letters().vocab


class UniformGuess(Backbone):
    """The optimal denoiser of i.i.d. uniform tokens: the same logit for every regular id."""

    name = "uniform_guess"

    def __init__(self, params: None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.bias = nn.Parameter(torch.zeros(self.vocab.size))

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        return self.bias.expand(*input_ids.shape, self.vocab.size)


class IIDSource(DataSource):
    """I.i.d. uniform letters: the true NLL of any sequence is log(4) per token."""

    name = "iid"

    def load(self, seed: int) -> DatasetBundle:
        ids = torch.randint(0, VOCAB.num_regular, (8, 12), generator=torch.Generator().manual_seed(seed))
        split = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
        return DatasetBundle(splits={"train": split, "validation": split}, tokenizer=Letters(), seq_len=12)

    def sample_quality(self, tokens: Tensor) -> dict[str, float]:
        return {"true_nll": math.log(VOCAB.num_regular), "impossible_frac": 0.0}


def shape(length: int, seed: int = 0) -> RunShape:
    return RunShape(vocab=VOCAB, seq_len=length, batch_size=32, seed=seed)


def context(rows: Tensor, model: Backbone, prompt_len: Tensor | None = None, seed: int = 0) -> EvalContext:
    columns: dict[str, list[Any]] = {"input_ids": rows.tolist()}
    if prompt_len is not None:
        columns["prompt_len"] = prompt_len.tolist()
    run = shape(rows.shape[1], seed)
    return EvalContext(
        model=model,
        vocab=VOCAB,
        dataset=datasets.Dataset.from_dict(columns),
        forward_process=AbsorbingProcess(None, run),
        sampler=AncestralSampler(AncestralSampler.Params(steps=16), run),
        tokenizer=Letters(),
        device=torch.device("cpu"),
        batch_size=32,
        seed=seed,
    )


def uniform_rows(size: int, length: int) -> Tensor:
    return torch.randint(0, VOCAB.num_regular, (size, length), generator=torch.Generator().manual_seed(0))


def test_nll_of_the_optimal_uniform_denoiser_is_log_n() -> None:
    rows = uniform_rows(256, 32)
    metrics = NLLEvaluator(NLLEvaluator.Params(draws=8)).evaluate(
        context(rows, UniformGuess(None, shape(32)))
    )
    assert math.isclose(metrics["nll"], math.log(4), rel_tol=0.04)
    assert math.isclose(metrics["bpt"], metrics["nll"] / math.log(2))
    assert math.isclose(metrics["ppl"], math.exp(metrics["nll"]))


def test_prompt_and_padding_are_not_counted() -> None:
    rows = uniform_rows(256, 32)
    rows[:, 28:] = VOCAB.pad_id
    prompt_len = torch.full((256,), 12)
    ctx = context(rows, UniformGuess(None, shape(32)), prompt_len)
    assert math.isclose(NLLEvaluator().evaluate(ctx)["nll"], math.log(4), rel_tol=0.05)


def test_masks_are_fixed_across_evaluations_and_follow_the_seed() -> None:
    rows = uniform_rows(24, 10)
    model = TinyBackbone(None, shape(10))
    model.train()
    evaluator = NLLEvaluator(NLLEvaluator.Params(draws=4))
    first, second = evaluator.evaluate(context(rows, model)), evaluator.evaluate(context(rows, model))
    assert first == second
    assert model.training
    assert evaluator.evaluate(context(rows, model, seed=1)) != first


def test_max_batches_scores_only_the_first_batches() -> None:
    rows = uniform_rows(40, 10)
    model = TinyBackbone(None, shape(10))
    capped = NLLEvaluator(NLLEvaluator.Params(draws=4, max_batches=1)).evaluate(context(rows, model))
    # batch_size 32 with 4 draws: 8 sequences per batch.
    alone = NLLEvaluator(NLLEvaluator.Params(draws=4)).evaluate(context(rows[:8], model))
    assert capped == alone


def test_per_sequence_times_are_stratified_over_each_sequences_copies() -> None:
    sampler = PerSequenceStratified(draws=5, eps=0.0)
    t = sampler.sample((15, 2), torch.Generator().manual_seed(0)).reshape(3, 5, 2).double()
    strata = torch.floor(t * 5).long()
    assert torch.equal(strata, torch.arange(5)[None, :, None].expand(3, 5, 2))


def test_sample_evaluator_reports_nfe_entropy_and_true_nll() -> None:
    source = IIDSource()
    bundle = source.load(0)
    ctx = context(torch.tensor(bundle.splits["validation"]["input_ids"]), TinyBackbone(None, shape(12)))
    ctx.data_source = source
    evaluator = SampleEvaluator(SampleEvaluator.Params(num_samples=3))
    metrics = evaluator.evaluate(ctx)
    assert set(metrics) == {"samples/nfe", "samples/entropy", "samples/true_nll", "samples/impossible_frac"}
    assert 1 <= metrics["samples/nfe"] <= 16
    assert 0 <= metrics["samples/entropy"] <= math.log(4) + 1e-12
    assert metrics["samples/true_nll"] == math.log(4) and metrics["samples/impossible_frac"] == 0.0
    # One sequence of length 3 (params override the data's length) holds at most 3 distinct
    # tokens, and the cached ancestral sampler needs at most length + 1 model calls.
    ctx.data_source = None
    shorter = SampleEvaluator(SampleEvaluator.Params(num_samples=1, length=3)).evaluate(ctx)
    assert set(shorter) == {"samples/nfe", "samples/entropy"}
    assert shorter["samples/entropy"] <= math.log(3) + 1e-12 and 1 <= shorter["samples/nfe"] <= 4


def test_unigram_entropy() -> None:
    assert math.isclose(unigram_entropy(torch.tensor([[0, 1, 2, 3]]), 6), math.log(4))
    assert unigram_entropy(torch.tensor([[2, 2, 2]]), 6) == 0.0
