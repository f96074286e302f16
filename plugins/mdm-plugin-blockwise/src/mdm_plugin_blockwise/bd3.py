"""Block diffusion (BD3-LM; Arriola et al. 2025, arXiv 2503.09573; METHODS §4.1).

The sequence is cut into blocks of L' tokens and ``log p(x) = Σ_b log p(x^b | x^{<b})``, each block
a masked diffusion with its own time. Training runs ONE pass over ``z ⊕ x`` (2L tokens, both halves
at positions 0..L−1) under the core :class:`~mdm_core.layouts.BD3Layout`: a noisy block sees itself
and the clean earlier blocks, exactly what it will see at generation time, where earlier blocks are
clean and cached. The loss reads the first L logits (the noisy half).

Also here: :class:`IntervalSearch`, the evaluator that picks the clipped mask-rate interval [β, ω]
of least per-block loss variance and hands it to the training process (checkpointed state).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field, model_validator
from torch import Tensor

from mdm_core.builtin.evaluators import batch_generator, rank_and_world
from mdm_core.builtin.losses import subs_logits
from mdm_core.builtin.samplers import inference
from mdm_core.builtin.schedules import LogLinear
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import (
    Batch,
    BD3Layout,
    BlockCausalLayout,
    EvalContext,
    Evaluator,
    EvaluatorParams,
    ForwardProcess,
    InferenceRecord,
    RunShape,
    TimeSampler,
    TrainingExample,
    Vocab,
)
from mdm_core.interfaces import Params as BaseParams
from mdm_plugin_blockwise._clip import admits, clipped_mask

Interval = tuple[float, float]


def pair_example(
    batch: Batch, mask_id: int, block_size: int, masked: Tensor, t: Tensor, weights: Tensor
) -> TrainingExample:
    """The ``z ⊕ x`` example of a block-diffusion step, given its mask, per-block times and weights.

    ``masked`` ``[B, L]`` must lie inside the non-pad non-prompt positions; ``weights`` is ``[B, L]``.
    Both halves take positions 0..L−1 and share the key padding of ``batch``.
    """
    ids = batch.input_ids
    length = ids.shape[1]
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    eligible = batch.attention_mask & ~batch.prompt_mask
    return TrainingExample(
        input_ids=torch.cat([noisy, ids], dim=1),
        targets=ids,
        loss_mask=masked,
        weights=weights,
        normaliser=eligible.sum().clamp(min=1).to(torch.float32),
        t=t,
        layout=BD3Layout(seq_len=length, size=block_size, key_padding=batch.attention_mask.repeat(1, 2)),
        position_ids=torch.arange(length, device=ids.device).repeat(2),
    )


def full_mask_example(
    batch: Batch, mask_id: int, time_sampler: TimeSampler, progress: float = 0.0
) -> TrainingExample:
    """L' = 1 with every target masked, t = 1 and weight 1 (× the sampler's ``loss_weight``):
    the exact autoregressive NLL through one MASK query per position."""
    ids = batch.input_ids
    t = torch.ones(ids.shape, device=ids.device)
    weights = time_sampler.loss_weight(t.cpu(), progress).to(ids.device)
    return pair_example(batch, mask_id, 1, batch.attention_mask & ~batch.prompt_mask, t, weights)


class BD3Process(ForwardProcess):
    """Block diffusion over ``z ⊕ x``: one t per (sequence, block), log-linear masking, weight 1/t.

    Times are ``time_sampler.sample((B, n_blocks))``: stratified over the local batch × blocks (under
    DDP each rank stratifies its own micro-batch) and drawn from the spec's law, so bell composes;
    weights are ``w(t) = 1/t`` of each position's block times the sampler's ``loss_weight``, the
    normaliser the non-pad non-prompt tokens. ``clip: [β, ω]`` trains on t ∈ [β, ω] with block masks
    whose realised fraction is in [β, ω] (the current interval is state: :class:`IntervalSearch`
    moves it, checkpoints keep it); validation (``likelihood_process()``) is always the unclipped
    per-block NELBO. ``full_mask`` (the default for L' = 1) masks every token with weight 1: the
    exact autoregressive NLL. With L' = L this is MDLM, draw for draw.
    """

    name = "bd3"

    class Params(BaseParams):
        block_size: int = Field(default=4, ge=1, description="L': tokens per block; must divide seq_len")
        eps: float = Field(
            default=1e-3, ge=0.0, lt=1.0, description="log-linear schedule: masked w.p. (1 − eps) t"
        )
        clip: tuple[float, float] | None = Field(
            default=None,
            description="[β, ω]: training mask rates and realised block fractions (null: unclipped)",
        )
        full_mask: bool | None = Field(
            default=None,
            description="mask every token, weight 1 (exact AR NLL); needs block_size 1; default: on iff 1",
        )

        @model_validator(mode="after")
        def _consistent(self) -> BD3Process.Params:
            if self.full_mask and self.block_size != 1:
                raise ValueError(
                    f"full_mask: true needs block_size: 1 (got {self.block_size}); with larger blocks "
                    "a fully masked block factorises over its tokens and is not the block's likelihood"
                )
            if self.clip is not None:
                low, high = self.clip
                if not 0.0 <= low < high <= 1.0:
                    raise ValueError(f"clip: [β, ω] needs 0 ≤ β < ω ≤ 1, got {list(self.clip)}")
                if self.full_mask or (self.block_size == 1 and self.full_mask is None):
                    raise ValueError("clip: full-mask mode (block_size 1) draws no rates; drop clip")
                if not admits(low, high, self.block_size):
                    raise ValueError(
                        f"clip: [{low}, {high}] contains no multiple of 1/block_size = 1/{self.block_size}, "
                        "so no block mask can have a masked fraction inside it; widen the interval"
                    )
            return self

    params: Params

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        size = self.params.block_size
        if shape.seq_len % size:
            divisors = [d for d in range(1, shape.seq_len + 1) if shape.seq_len % d == 0]
            raise SpecError(
                f"forward_process.block_size: {size} does not divide the sequence length {shape.seq_len} "
                f"(data seq_len); choose one of {divisors}"
            )
        self.schedule = LogLinear(self.params.eps)
        self.full_mask = self.params.full_mask if self.params.full_mask is not None else size == 1
        self.interval: Interval | None = self.params.clip

    @classmethod
    def structure(cls, params: BaseParams) -> str:
        return "bd3"

    @classmethod
    def layouts(cls, params: BaseParams) -> frozenset[str]:
        """Trained under the BD3 layout over z ⊕ x, generated block-causally."""
        del params
        return frozenset({"bd3", "block_causal"})

    @property
    def block_size(self) -> int:
        return self.params.block_size

    def alpha(self, t: Tensor) -> Tensor:
        return self.schedule.alpha(t)

    def inference(self) -> InferenceRecord:
        """Block by block under the block-causal layout, a per-block time input."""
        size = self.block_size
        return InferenceRecord(
            structure="bd3",
            alpha=self.schedule.alpha,
            time_of_alpha=self.schedule.t_of_alpha,
            block_size=size,
            layout=lambda length: BlockCausalLayout(size=size),
            time_input="block",
        )

    def likelihood_process(self) -> ForwardProcess:
        """The unclipped per-block NELBO (full-mask mode is already exact)."""
        if self.interval is None and self.params.clip is None:
            return self
        return type(self)(self.params.model_copy(update={"clip": None}), self.require_shape())

    def set_interval(self, interval: Interval | None) -> None:
        """Train on clipped rates [β, ω] from now on (None: unclipped)."""
        if interval is not None:
            low, high = float(interval[0]), float(interval[1])
            if self.full_mask or not (0.0 <= low < high <= 1.0 and admits(low, high, self.block_size)):
                raise MdmError(
                    f"bd3: interval [{low}, {high}] is unusable with block_size {self.block_size}"
                    f"{' in full-mask mode' if self.full_mask else ''}"
                )
            interval = (low, high)
        self.interval = interval

    def state_dict(self) -> dict[str, Any]:
        return {"interval": None if self.interval is None else list(self.interval)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "interval" in state:
            value = state["interval"]
            self.set_interval(None if value is None else (float(value[0]), float(value[1])))

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        return self.example(batch, time_sampler, generator, progress, self.interval)

    def example(
        self,
        batch: Batch,
        time_sampler: TimeSampler,
        generator: torch.Generator,
        progress: float = 0.0,
        interval: Interval | None = None,
    ) -> TrainingExample:
        """The training example with mask rates clipped to ``interval`` (None: unclipped)."""
        ids = batch.input_ids
        size, length = ids.shape
        block = self.block_size
        if length % block:
            raise MdmError(f"bd3: batch length {length} is not a multiple of block_size {block}")
        blocks, device = length // block, ids.device
        eligible = batch.attention_mask & ~batch.prompt_mask
        if self.full_mask:
            if not time_sampler.is_uniform():
                raise SpecError(
                    f"forward_process.full_mask: full-mask mode draws no times, so the law of time "
                    f"sampler '{time_sampler.name}' would be ignored; use time_sampler: {{name: uniform}}"
                )
            return full_mask_example(batch, self.vocab.mask_id, time_sampler, progress)
        drawn = time_sampler.sample((size, blocks), generator, progress)
        if interval is None:
            t = drawn.to(device)
            u = torch.rand((size, length), generator=generator, device=generator.device).to(device)
            per_position = self.schedule.mask_prob(t).repeat_interleave(block, dim=1)
            masked = (u < per_position) & eligible
        else:
            low, high = interval
            t = (low + (high - low) * drawn).to(device)
            masked = clipped_mask(
                eligible.view(size, blocks, block), self.schedule.mask_prob(t), low, high, generator
            ).view(size, length)
        scale = self.schedule.weight(t) * time_sampler.loss_weight(drawn, progress).to(device)
        weights = scale.repeat_interleave(block, dim=1)
        return pair_example(batch, self.vocab.mask_id, block, masked, t, weights)


def block_losses(
    logits: Tensor, example: TrainingExample, vocab: Vocab, eligible: Tensor, block_size: int
) -> Tensor:
    """``[B, n_blocks]`` float64: each block's weighted NLL per eligible token (NaN where none is)."""
    mask = example.loss_mask
    rows = subs_logits(logits[:, : mask.shape[1]], vocab)
    nll = torch.logsumexp(rows, -1) - rows.gather(-1, example.targets[..., None]).squeeze(-1)
    weighted = torch.where(mask, torch.broadcast_to(example.weights, mask.shape) * nll, 0.0)
    size = mask.shape[0]
    sums = weighted.reshape(size, -1, block_size).sum(-1).double()
    counts = eligible.reshape(size, -1, block_size).sum(-1).double()
    return sums / counts


class IntervalSearch(Evaluator):
    """BD3: choose the clipped rate interval [β, ω] whose per-block loss varies least; train on it.

    Candidates: unclipped, and every [β, β + w] with w in ``widths`` and β on a grid of step
    ``offset_step`` (those admitting a multiple of 1/L'). Each is scored on the first
    ``max_batches`` validation batches with fixed seeded noise by the variance of the per-block
    loss (a block's weighted NLL per token) pooled over all blocks, its sums reduced across DDP
    ranks, so every rank picks the same interval. (The reference sums per-batch variances; the
    pooled variance does not depend on the batch size.) The winner becomes the training process's
    interval (unclipped wins ties), part of its checkpointed state. The reported likelihood is
    unaffected: validation always scores the unclipped process. Metrics: the chosen bounds, its
    variance and the unclipped variance.
    """

    name = "bd3_interval_search"

    class Params(EvaluatorParams):
        every: int = Field(
            default=500, ge=0, description="search every N optimiser steps; 0: only at the end"
        )
        widths: tuple[float, ...] = Field(
            default=(0.5, 0.6, 0.7, 0.8, 0.9), min_length=1, description="interval widths ω − β"
        )
        offset_step: float = Field(default=0.05, gt=0.0, le=0.5, description="grid step of β")
        max_batches: int = Field(default=4, ge=1, description="validation batches scored per interval")

        @model_validator(mode="after")
        def _widths(self) -> IntervalSearch.Params:
            if any(not 0.0 < w <= 1.0 for w in self.widths):
                raise ValueError(f"widths: every width must be in (0, 1], got {list(self.widths)}")
            return self

    params: Params

    def candidates(self, block_size: int) -> list[Interval | None]:
        """Unclipped first, then the admissible grid intervals in order of width and offset."""
        found: list[Interval | None] = [None]
        for width in self.params.widths:
            steps = math.floor((1.0 - width) / self.params.offset_step + 1e-9)
            for k in range(steps + 1):
                low = round(k * self.params.offset_step, 10)
                interval = (low, min(round(low + width, 10), 1.0))
                if admits(*interval, block_size) and interval not in found:
                    found.append(interval)
        return found

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        process = ctx.forward_process
        if not isinstance(process, BD3Process) or process.full_mask:
            what = f"'{process.name}'" if not isinstance(process, BD3Process) else "bd3 in full-mask mode"
            raise SpecError(
                f"evaluators: bd3_interval_search tunes the clipped mask rates of forward_process bd3 "
                f"(block_size > 1), but this run trains {what}; remove the evaluator"
            )
        block = process.block_size
        candidates = self.candidates(block)
        stats = self._scores(ctx, process, candidates)
        count = stats[:, 2].clamp(min=1)
        mean = stats[:, 0] / count
        variance = (stats[:, 1] / count - mean**2).clamp(min=0)
        best = int(torch.argmin(variance))
        process.set_interval(candidates[best])
        low, high = candidates[best] or (0.0, 1.0)
        return {
            "bd3_clip_low": low,
            "bd3_clip_high": high,
            "bd3_clip_var": float(variance[best]),
            "bd3_unclipped_var": float(variance[0]),
        }

    def _scores(self, ctx: EvalContext, process: BD3Process, candidates: list[Interval | None]) -> Tensor:
        """``[candidates, 3]`` float64: Σ loss, Σ loss², number of scored blocks (all ranks)."""
        block, vocab = process.block_size, ctx.vocab
        per_batch = max(1, ctx.batch_size)
        num_batches = min(math.ceil(len(ctx.dataset) / per_batch), self.params.max_batches)
        stats = torch.zeros((len(candidates), 3), dtype=torch.float64, device=ctx.device)
        uniform = UniformTimeSampler()
        rank, world = rank_and_world()
        with inference(ctx.model):
            for index in range(rank, num_batches, world):
                rows = ctx.dataset[index * per_batch : (index + 1) * per_batch]
                ids = torch.as_tensor(rows["input_ids"], dtype=torch.long).to(ctx.device)
                prompt_len = torch.as_tensor(rows["prompt_len"]) if "prompt_len" in rows else None
                batch = Batch.from_ids(ids, vocab, prompt_len)
                eligible = batch.attention_mask & ~batch.prompt_mask
                for c, interval in enumerate(candidates):
                    gen = batch_generator(ctx.seed, index)
                    example = process.example(batch, uniform, gen, interval=interval)
                    logits = ctx.model(
                        example.input_ids,
                        time_cond=example.t if ctx.model.uses_time else None,
                        layout=example.layout,
                        position_ids=example.position_ids,
                    )
                    losses = block_losses(logits, example, vocab, eligible, block)
                    losses = losses[~losses.isnan()]
                    stats[c, 0] += losses.sum()
                    stats[c, 1] += (losses**2).sum()
                    stats[c, 2] += losses.numel()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        return stats
