"""Built-in evaluators: the uniform-t validation NELBO and statistics of generated samples."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pydantic import Field
from torch import Tensor
from torchmetrics import SumMetric

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.builtin.samplers import inference
from mdm_core.errors import MdmError
from mdm_core.interfaces import Batch, EvalContext, Evaluator, EvaluatorParams, TimeSampler, TrainingExample

#: Smallest t of the evaluation draws, as in the uniform training sampler.
EVAL_EPS = 1e-3


class PerSequenceStratified(TimeSampler):
    """t for K consecutive copies of each sequence, stratified over the copies.

    Rows come as ``(B·K, ...)``; copy k of sequence b gets ``eps + (1 − eps)(U_b + k)/K``, so each
    sequence's K draws cover [0, 1) evenly whatever the batch size. Its law is U(eps, 1).
    """

    name = "per_sequence_stratified"

    def __init__(self, draws: int, eps: float = EVAL_EPS) -> None:
        super().__init__()
        self.draws = draws
        self.eps = eps

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return self.eps + (1.0 - self.eps) * u

    def is_uniform(self) -> bool:
        return True

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        if shape[0] % self.draws:
            raise MdmError(
                f"per-sequence stratification needs a multiple of {self.draws} rows, got {shape[0]}"
            )
        rows, rest = shape[0] // self.draws, tuple(shape[1:])
        offset = torch.rand(
            (rows, 1, *rest), generator=generator, device=generator.device, dtype=torch.float64
        )
        k = torch.arange(self.draws, device=generator.device, dtype=torch.float64).view(
            1, -1, *([1] * len(rest))
        )
        u = (offset + k) / self.draws
        return (self.eps + (1.0 - self.eps) * u).to(torch.float32).reshape(shape)


def batch_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator fixed by (run seed, batch index): the same masks at every evaluation."""
    state = np.random.SeedSequence([seed, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def float64_sum(device: torch.device) -> SumMetric:
    """A float64 sum that keeps NaN/Inf (torchmetrics drops NaN by default, which would score an
    all-NaN model as a perfect one); the caller reports a non-finite result."""
    metric = SumMetric(nan_strategy="disable")
    metric.set_dtype(torch.float64)
    metric.to(device)
    # An update on every rank, even one with no batches, keeps the DDP reduction collective.
    metric.update(torch.zeros((), dtype=torch.float64, device=device))
    return metric


def scored_batches(
    ctx: EvalContext, times: TimeSampler, draws: int, max_batches: int | None
) -> Iterator[tuple[TrainingExample, Tensor]]:
    """This rank's evaluation batches as (example, logits of the target positions), each sequence
    repeated ``draws`` times, with the ``nll`` evaluator's seeded masks; runs under ``inference``."""
    per_batch = max(1, ctx.batch_size // draws)
    num_batches = math.ceil(len(ctx.dataset) / per_batch)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    process = ctx.forward_process.likelihood_process()
    rank, world = rank_and_world()
    with inference(ctx.model):
        for index in range(rank, num_batches, world):
            rows = ctx.dataset[index * per_batch : (index + 1) * per_batch]
            ids = torch.as_tensor(rows["input_ids"], dtype=torch.long)
            prompt_len = torch.as_tensor(rows["prompt_len"]) if "prompt_len" in rows else None
            batch = Batch.from_ids(
                ids.repeat_interleave(draws, dim=0).to(ctx.device),
                ctx.vocab,
                None if prompt_len is None else prompt_len.repeat_interleave(draws),
            )
            example = process.prepare(batch, times, batch_generator(ctx.seed, index))
            logits = ctx.model(
                example.input_ids,
                time_cond=example.t if ctx.model.uses_time else None,
                layout=example.layout,
                position_ids=example.position_ids,
            )
            yield example, logits[:, : example.targets.shape[1]]


class NLLEvaluator(Evaluator):
    """Uniform-t NELBO with fixed seeded masks: nats/token, bits/token and perplexity.

    Whatever the training sampler or process, this evaluates the process's
    ``likelihood_process()`` with K per-sequence stratified uniform times and the MDLM reference
    loss, so runs with different training choices are comparable. Each forward pass holds about
    ``batch_size`` rows (``batch_size // draws`` sequences × ``draws`` copies). Sums are float64
    torchmetrics states, reduced across DDP ranks; rank r takes batches i with i % world == r.
    """

    name = "nll"

    class Params(EvaluatorParams):
        every: int = Field(
            default=250, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        draws: int = Field(default=8, ge=1, description="stratified t draws per sequence (K)")
        max_batches: int | None = Field(default=None, ge=1, description="evaluate only the first batches")

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        draws = self.params.draws
        times = PerSequenceStratified(draws)
        nll_sum, tokens = float64_sum(ctx.device), float64_sum(ctx.device)
        for example, logits in scored_batches(ctx, times, draws, self.params.max_batches):
            out = mdlm_reference(logits, example, ctx.vocab)
            nll_sum.update(out.weighted_nll_sum.to(torch.float64))
            tokens.update(out.num_tokens.to(torch.float64))
        total, count = float(nll_sum.compute()), float(tokens.compute())
        if count == 0:
            raise MdmError("nll evaluator: the validation set has no non-pad, non-prompt tokens to score")
        nll = total / count
        ppl = math.exp(nll) if nll < math.log(torch.finfo(torch.float64).max) else math.inf
        return {"nll": nll, "bpt": nll / math.log(2.0), "ppl": ppl}


class SampleEvaluator(Evaluator):
    """Generate with the run's sampler: mean NFE, unigram entropy, and the source's exact judgement.

    A data source that knows its true law (the Markov source) offers ``sample_quality(tokens)``;
    its metrics (``true_nll`` over possible transitions, ``impossible_frac``) are reported here.
    """

    name = "samples"

    class Params(EvaluatorParams):
        every: int = Field(
            default=1000, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        num_samples: int = Field(default=8, ge=1, description="sequences to generate")
        length: int | None = Field(
            default=None, ge=1, description="sequence length (default: the data's seq_len)"
        )

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        length = self.params.length or len(ctx.dataset[0]["input_ids"])
        generator = torch.Generator().manual_seed(ctx.seed)
        out = ctx.sampler.generate(
            ctx.model, ctx.sampling_context(), self.params.num_samples, length, generator
        )
        tokens = out.tokens.cpu()
        metrics = {"samples/nfe": float(out.nfe), "samples/entropy": unigram_entropy(tokens, ctx.vocab.size)}
        judge: Any = getattr(ctx.data_source, "sample_quality", None)
        if callable(judge):
            metrics.update({f"samples/{k}": float(v) for k, v in judge(tokens).items()})
        return metrics


def unigram_entropy(tokens: Tensor, size: int) -> float:
    """Entropy (nats) of the empirical token distribution: collapsed samples score low."""
    counts = torch.bincount(tokens.flatten(), minlength=size).to(torch.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())
