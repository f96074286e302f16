"""Shared machinery of the task evaluators: decode each validation prompt with the run's sampler
and sum per-example scores into DDP-safe float64 totals.

Under DDP rank r decodes the r-th contiguous shard of the evaluated rows; the totals are
torchmetrics ``SumMetric`` states, so ``compute`` reduces them across ranks and every row counts
exactly once. The sampler's noise for a batch is seeded by the run seed and the batch's first
row, so an evaluation is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torchmetrics import SumMetric

from mdm_core.builtin.evaluators import batch_generator, float64_sum, rank_and_world
from mdm_core.data.loader import iterate_eval
from mdm_core.errors import MdmError
from mdm_core.interfaces import Batch, EvalContext


def decode_responses(ctx: EvalContext, max_rows: int) -> Iterator[tuple[Batch, Tensor]]:
    """``(batch, generated ids)`` for this rank's share of the first ``max_rows`` rows.

    The sampler keeps every prompt position fixed and generates the rest of the sequence.
    """
    dataset = ctx.dataset.select(range(min(max_rows, len(ctx.dataset))))
    if "prompt_len" not in dataset.column_names:
        raise MdmError("task evaluators need a dataset with a prompt_len column (as the task sources give)")
    rank, world = rank_and_world()
    first = rank * len(dataset) // world
    sampling = ctx.sampling_context()
    batches = iterate_eval(dataset, ctx.vocab, ctx.batch_size, rank, world, ctx.device)
    for k, batch in enumerate(batches):
        size, length = batch.input_ids.shape
        generator = batch_generator(ctx.seed, first + k * ctx.batch_size)
        prompt, prompt_mask = batch.input_ids, batch.prompt_mask
        out = ctx.sampler.generate(ctx.model, sampling, size, length, generator, prompt, prompt_mask)
        yield batch, out.tokens.to(batch.input_ids.device)


class Totals:
    """Named float64 sums, reduced across DDP ranks when computed."""

    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.sums: dict[str, SumMetric] = {name: float64_sum(device) for name in names}

    def add(self, **values: Tensor) -> None:
        for name, value in values.items():
            self.sums[name].update(value.sum().to(torch.float64))

    def compute(self) -> dict[str, float]:
        return {name: float(metric.compute()) for name, metric in self.sums.items()}
