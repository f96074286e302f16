"""Diagnostic evaluators: where a model's NELBO sits in t and in context, and how good its samples are.

``nll_by_t`` and ``nll_by_context`` read the same fixed, seeded masks of the process's
``likelihood_process()`` as the ``nll`` evaluator (one generator per batch index and run seed),
sum in float64 torchmetrics states (reduced across DDP ranks; rank r takes batches i with
i % world == r) and so explain that one number rather than estimate a new one.
``sample_quality`` generates with any sampler and asks an exact judge (the Markov source's
``sample_quality``) what it thinks of the samples. How to read them: ``docs/diagnostics.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, ValidationError
from torch import Tensor
from torchmetrics import SumMetric

from mdm_core.builtin.evaluators import (
    EVAL_EPS,
    PerSequenceStratified,
    float64_sum,
    scored_batches,
    unigram_entropy,
)
from mdm_core.builtin.losses import subs_logits
from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import (
    EvalContext,
    Evaluator,
    EvaluatorParams,
    RunShape,
    Sampler,
    TimeSampler,
    TrainingExample,
)
from mdm_core.interfaces import Params as ComponentParams

#: What a judge of samples returns: metric name → value (``true_nll``, ``impossible_frac`` ...).
Judge = Callable[[Tensor], dict[str, float]]

#: Upper ends of the context-distance buckets 1, 2, 3–4, 5–8; the last bucket is everything > 8.
CONTEXT_EDGES = (1, 2, 4, 8)
CONTEXT_NAMES = ("1", "2", "3-4", "5-8", "9+")


class BucketStratified(TimeSampler):
    """t for K = buckets × per_bucket consecutive copies of each sequence, one stratum per copy.

    Copy k of a sequence draws ``u = (U + k)/K`` (U independent per copy, and per entry of a
    ``[rows, blocks]`` shape), so copies ``j·per_bucket … (j+1)·per_bucket − 1`` fall in bucket j
    of ``[eps, 1]`` split into equal widths: every bucket gets the same draws per sequence, and
    the law of t over all copies is U(eps, 1).
    """

    name = "bucket_stratified"

    def __init__(self, buckets: int, per_bucket: int, eps: float = EVAL_EPS) -> None:
        super().__init__()
        self.buckets = buckets
        self.per_bucket = per_bucket
        self.eps = eps

    @property
    def draws(self) -> int:
        return self.buckets * self.per_bucket

    def edges(self) -> list[float]:
        """Bucket edges in t: ``eps + (1 − eps)·j/buckets``, j = 0..buckets."""
        return [self.eps + (1.0 - self.eps) * j / self.buckets for j in range(self.buckets + 1)]

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return self.eps + (1.0 - self.eps) * u

    def is_uniform(self) -> bool:
        return True

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        if shape[0] % self.draws:
            raise MdmError(f"bucket stratification needs a multiple of {self.draws} rows, got {shape[0]}")
        offset = torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64)
        copy = torch.arange(shape[0], device=generator.device, dtype=torch.float64) % self.draws
        u = (offset + copy.view(-1, *([1] * (len(shape) - 1)))) / self.draws
        return self.quantile(u).to(torch.float32)


def masked_nll(logits: Tensor, example: TrainingExample, ctx: EvalContext) -> tuple[Tensor, Tensor, Tensor]:
    """(row index, −log p_SUBS(target), loss weight) of every loss-mask position, in float64."""
    mask = example.loss_mask
    rows = subs_logits(logits[mask], ctx.vocab)
    targets = example.targets[mask]
    nll = torch.logsumexp(rows, dim=-1) - rows.gather(-1, targets[:, None]).squeeze(-1)
    weights = torch.broadcast_to(example.weights, mask.shape)[mask]
    return mask.nonzero()[:, 0], nll.to(torch.float64), weights.to(torch.float64)


def _sums(count: int, device: torch.device) -> list[SumMetric]:
    return [float64_sum(device) for _ in range(count)]


class NLLByTEvaluator(Evaluator):
    """The uniform-t NELBO split into equal-width t buckets: at which noise levels a model has learned.

    ``[eps, 1]`` is cut into ``buckets`` equal widths and each sequence gets ``draws_per_bucket``
    stratified t draws in every bucket. ``nll_by_t/<lo>-<hi>`` is the bucket's mean NELBO density
    ``E[Σ_masked w(t)·(−log p) / tokens | t in bucket]`` in nats per token, so the NELBO is
    ``Σ_b density_b · width_b / (1 − eps)``: with equal widths, the plain mean over buckets;
    ``nll_by_t/all`` is that mean, an estimate of what the ``nll`` evaluator reports.
    """

    name = "nll_by_t"

    class Params(EvaluatorParams):
        every: int = Field(
            default=250, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        buckets: int = Field(default=10, ge=1, le=100, description="equal-width t buckets of [ε, 1]")
        draws_per_bucket: int = Field(
            default=1, ge=1, description="stratified t draws per sequence and bucket"
        )
        max_batches: int | None = Field(default=None, ge=1, description="evaluate only the first batches")

    params: Params

    def bucket_names(self) -> list[str]:
        edges = self._times().edges()
        return [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]

    def _times(self) -> BucketStratified:
        return BucketStratified(self.params.buckets, self.params.draws_per_bucket)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        times = self._times()
        sums, tokens = _sums(times.buckets, ctx.device), float64_sum(ctx.device)
        for example, logits in scored_batches(ctx, times, times.draws, self.params.max_batches):
            rows, nll, weights = masked_nll(logits, example, ctx)
            bucket = (rows % times.draws) // times.per_bucket
            per_bucket = torch.zeros(times.buckets, dtype=torch.float64, device=nll.device)
            per_bucket.index_add_(0, bucket, weights * nll)
            for j, metric in enumerate(sums):
                metric.update(per_bucket[j])
            tokens.update(example.normaliser.to(torch.float64))
        count = float(tokens.compute())
        if count == 0:
            raise MdmError("nll_by_t: the validation set has no non-pad, non-prompt tokens to score")
        # Each bucket holds 1/buckets of the copies, hence of the normaliser's tokens.
        density = [float(m.compute()) * times.buckets / count for m in sums]
        metrics = {f"nll_by_t/{n}": d for n, d in zip(self.bucket_names(), density, strict=True)}
        metrics["nll_by_t/all"] = math.fsum(density) / times.buckets
        return metrics


def context_distance(visible: Tensor) -> Tensor:
    """Distance from each position to the nearest visible one ``[N, L]`` (inf: none visible)."""
    length = visible.shape[1]
    pos = torch.arange(length, device=visible.device).expand_as(visible)
    left = torch.where(visible, pos, -1).cummax(dim=1).values
    right = torch.where(visible, pos, length).flip(1).cummin(dim=1).values.flip(1)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=visible.device)
    d_left = torch.where(left >= 0, (pos - left).to(torch.float64), inf)
    d_right = torch.where(right < length, (right - pos).to(torch.float64), inf)
    return torch.minimum(d_left, d_right)


def context_bucket(distance: Tensor) -> Tensor:
    """Bucket 0..4 (distance 1, 2, 3–4, 5–8, > 8 or nothing visible) of each distance."""
    edges = torch.tensor(CONTEXT_EDGES, dtype=torch.float64, device=distance.device)
    return torch.bucketize(distance, edges)


class NLLByContextEvaluator(Evaluator):
    """NLL of masked tokens grouped by the distance to the nearest visible token (the locality view).

    Under the uniform-t masks of the ``nll`` evaluator (``draws`` stratified t per sequence), every
    masked position is put in a bucket by its distance to the nearest visible (not MASK, not PAD)
    position of the noisy ids the model sees: 1, 2, 3–4, 5–8, 9+ (9+ also holds sequences with
    nothing visible). ``nll_by_context/<bucket>`` is the mean −log p per masked token in the bucket
    (unweighted nats, omitted when the bucket is empty) and ``nll_by_context/share/<bucket>`` the
    bucket's share of all masked tokens.
    """

    name = "nll_by_context"

    class Params(EvaluatorParams):
        every: int = Field(
            default=250, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        draws: int = Field(default=8, ge=1, description="stratified t draws per sequence (K)")
        max_batches: int | None = Field(default=None, ge=1, description="evaluate only the first batches")

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        draws = self.params.draws
        buckets = len(CONTEXT_NAMES)
        nll_sums, counts = _sums(buckets, ctx.device), _sums(buckets, ctx.device)
        times = PerSequenceStratified(draws)
        for example, logits in scored_batches(ctx, times, draws, self.params.max_batches):
            _, nll, _ = masked_nll(logits, example, ctx)
            noisy = example.input_ids[:, : example.targets.shape[1]]
            visible = (noisy != ctx.vocab.mask_id) & (noisy != ctx.vocab.pad_id)
            bucket = context_bucket(context_distance(visible)[example.loss_mask])
            total = torch.zeros(buckets, dtype=torch.float64, device=nll.device).index_add_(0, bucket, nll)
            count = torch.bincount(bucket, minlength=buckets).to(torch.float64)
            for j in range(buckets):
                nll_sums[j].update(total[j])
                counts[j].update(count[j])
        sizes = [float(c.compute()) for c in counts]
        masked = math.fsum(sizes)
        if masked == 0:
            raise MdmError("nll_by_context: no masked token to score (empty validation set or all prompt)")
        metrics: dict[str, float] = {}
        for name, size, nll_sum in zip(CONTEXT_NAMES, sizes, nll_sums, strict=True):
            if size > 0:
                metrics[f"nll_by_context/{name}"] = float(nll_sum.compute()) / size
            metrics[f"nll_by_context/share/{name}"] = size / masked
        return metrics


class SampleQualityEvaluator(Evaluator):
    """Generate with any sampler and score the samples with the data source's exact judge.

    The judge is the data source's ``sample_quality(tokens)`` (the Markov source: ``true_nll`` over
    the transitions the chain can make and ``impossible_frac``); a run whose data has none is
    refused (exit 2). The sampler is the run's, or ``sampler`` with ``sampler_params``, checked
    like ``mdm sample --sampler``. Metrics: ``sample_quality/<judge metric>``, ``sample_quality/nfe``
    and ``sample_quality/entropy`` (unigram entropy of the samples: a collapsed sampler scores a low
    ``true_nll`` and a low entropy), ``sample_quality/<sampler>/…`` when a sampler is named. A
    judge metric that is not finite (no possible transition at all) is left out, not NaN.
    """

    name = "sample_quality"

    class Params(EvaluatorParams):
        every: int = Field(
            default=1000, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        num_samples: int = Field(default=64, ge=1, description="sequences to generate")
        length: int | None = Field(default=None, ge=1, description="sequence length (default: the data's)")
        sampler: str | None = Field(default=None, description="sampler name (default: the run's sampler)")
        sampler_params: dict[str, Any] = Field(
            default_factory=dict, description="parameters of the named sampler (not of the run's)"
        )

    params: Params

    def __init__(
        self, params: Params | None = None, shape: RunShape | None = None, judge: Judge | None = None
    ) -> None:
        super().__init__(params, shape)
        self.judge = judge
        self._named = self._checked_sampler()
        self._sampler: Sampler | None = None

    def _checked_sampler(self) -> tuple[type[Sampler], ComponentParams] | None:
        """The named sampler's class with its params validated now, so a typo fails at assembly."""
        p = self.params
        if p.sampler is None:
            if p.sampler_params:
                raise SpecError(
                    f"evaluators.{self.name}.sampler_params: given without evaluators.{self.name}."
                    "sampler; name the sampler they belong to (the run's own sampler is set under sampler:)"
                )
            return None
        from mdm_core.plugins import get_registry

        cls: type[Sampler] = get_registry().load(
            "sampler", p.sampler, where=f"evaluators.{self.name}.sampler"
        )
        try:
            params = cls.Params.model_validate(p.sampler_params)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(part) for part in err["loc"]) or "sampler_params"
            raise SpecError(
                f"evaluators.{self.name}.sampler_params.{key}: {err['msg']} (got {err.get('input')!r}) "
                f"for sampler '{p.sampler}'"
            ) from None
        return cls, params

    def _sampler_for(self, ctx: EvalContext, length: int) -> Sampler:
        if self._named is None:
            return ctx.sampler
        cls, params = self._named
        structure = ctx.forward_process.inference().structure
        if structure not in cls.structures:
            raise SpecError(
                f"evaluators.{self.name}.sampler: sampler '{self.params.sampler}' cannot generate from "
                f"models trained by forward process '{ctx.forward_process.name}' (structure "
                f"'{structure}'; the sampler supports {sorted(cls.structures)})"
            )
        if self._sampler is None:
            shape = self.shape or RunShape(vocab=ctx.vocab, seq_len=length, seed=ctx.seed)
            self._sampler = cls(params, shape)
        return self._sampler

    def _judge(self, ctx: EvalContext) -> Judge:
        if self.judge is not None:
            return self.judge
        judge = getattr(ctx.data_source, "sample_quality", None)
        if not callable(judge):
            source = "no data source" if ctx.data_source is None else f"data source '{ctx.data_source.name}'"
            raise MdmError(
                f"evaluator sample_quality: {source} has no exact judge of samples (a "
                "sample_quality(tokens) method); use it with data: {name: markov}, or remove "
                "sample_quality from evaluators (the 'samples' evaluator works with any data)",
                exit_code=2,
            )
        return judge

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        judge = self._judge(ctx)
        length = self.params.length or len(ctx.dataset[0]["input_ids"])
        sampler = self._sampler_for(ctx, length)
        generator = torch.Generator().manual_seed(ctx.seed)
        out = sampler.generate(ctx.model, ctx.sampling_context(), self.params.num_samples, length, generator)
        prefix = f"{self.name}/" + (f"{self.params.sampler}/" if self.params.sampler else "")
        tokens = out.tokens.cpu()
        metrics = {
            f"{prefix}nfe": float(out.nfe),
            f"{prefix}entropy": unigram_entropy(tokens, ctx.vocab.size),
        }
        for key, value in judge(tokens).items():
            if math.isfinite(float(value)):
                metrics[prefix + key] = float(value)
        return metrics
