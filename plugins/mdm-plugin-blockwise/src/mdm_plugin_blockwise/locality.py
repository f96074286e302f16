"""Blockwise-locality MDMs (Wang et al. 2026; METHODS §4.2): the Block, Scatter and Jigsaw processes.

A row is prompt + response; blocks of ``block_size`` B positions tile the response from its first
position, ``blk(i) = (i − p) // B`` and ``off(i) = (i − p) mod B`` with p the row's prompt length.
The prompt is always visible and never in the loss; a prompt query sees the prompt only, so no
response token reaches a prompt position's state and, through it, a response query that the
rule keeps it from (the allowed relation stays transitive, which is what makes a deep stack of
layers leak nothing). Padding is hidden through ``key_padding``. Times are one per response
(``time_input = "sequence"``); ``block_size`` is metadata only, since blocks start after the
prompt and no per-block time is ever drawn.

- **Block** — k visible to q iff k in the prompt or ``blk(k) ≤ blk(q)``; absorbing masking.
- **Scatter** — k visible iff k in the prompt or ``off(k) ≤ off(q)``; absorbing masking.
- **Jigsaw** — whole blocks are masked; k visible iff k in the prompt, or k in an unmasked block,
  or q and k in the same masked block with ``k ≤ q``. Inside a masked block the model predicts
  left to right (teacher forcing): the input at offset o > 0 is the block's clean token at offset
  o − 1 and the input at offset 0 is MASK, so query q, which sees the block's inputs up to q,
  conditions on exactly the block's tokens before q — the state the sampler decodes from.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Batch,
    ForwardProcess,
    InferenceRecord,
    TimeSampler,
    TrainingExample,
    log_linear_alpha,
)
from mdm_core.interfaces import Params as BaseParams

Structure = Literal["block", "scatter", "jigsaw"]


# --------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class LocalityLayout(AttentionLayout):
    """Common frame of the three layouts: per-row prompt lengths and the response rule.

    ``prompt_len`` ``[B]`` holds each row's prompt length; a prompt query sees the prompt only,
    a response query sees the prompt plus what :meth:`response_rule` allows on response-relative
    indices (both ≥ 0).
    """

    name: ClassVar[str] = "locality"
    per_example: ClassVar[bool] = True

    prompt_len: Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.long))
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1:
            raise MdmError(f"{self.name} layout: block_size must be ≥ 1, got {self.size}")
        if self.prompt_len.dim() != 1 or self.prompt_len.numel() == 0:
            raise MdmError(f"{self.name} layout: prompt_len must be a non-empty [B] tensor")

    @property
    def block_size(self) -> int | None:
        return self.size

    def batch_size(self) -> int | None:
        return int(self.prompt_len.shape[0])

    def rule_key(self) -> Hashable | None:
        return None

    def allowed(self, q_idx: Tensor, kv_idx: Tensor, batch: Tensor | None = None) -> Tensor:
        rows = self._rows(batch, q_idx.device)
        prompt = self.prompt_len.to(q_idx.device)[rows]
        q_rel, k_rel = q_idx - prompt, kv_idx - prompt
        k_prompt = k_rel < 0
        response = (q_rel >= 0) & ~k_prompt & self.response_rule(q_rel, k_rel, rows)
        return k_prompt | response

    def response_rule(self, q_rel: Tensor, k_rel: Tensor, rows: Tensor) -> Tensor:
        """May response index ``q_rel`` see response index ``k_rel`` (relative to the prompt's end)?"""
        raise NotImplementedError

    def _rows(self, batch: Tensor | None, device: torch.device) -> Tensor:
        if batch is not None:
            return batch
        if self.prompt_len.shape[0] != 1:
            raise MdmError(f"{self.name} layout holds {self.prompt_len.shape[0]} rows: pass the batch index")
        return torch.zeros((), dtype=torch.long, device=device)


@dataclass(eq=False)
class BlockLayout(LocalityLayout):
    """Block: bidirectional inside a response block, causal across blocks."""

    name: ClassVar[str] = "locality_block"

    def response_rule(self, q_rel: Tensor, k_rel: Tensor, rows: Tensor) -> Tensor:
        return k_rel // self.size <= q_rel // self.size


@dataclass(eq=False)
class ScatterLayout(LocalityLayout):
    """Scatter: causal over the in-block offset, across every block at once."""

    name: ClassVar[str] = "locality_scatter"

    def response_rule(self, q_rel: Tensor, k_rel: Tensor, rows: Tensor) -> Tensor:
        return k_rel % self.size <= q_rel % self.size


@dataclass(eq=False)
class JigsawLayout(LocalityLayout):
    """Jigsaw: unmasked blocks are context to all; a masked block sees itself causally, no other.

    ``masked`` ``[B, n_blocks]`` marks each row's masked response blocks; blocks past its last
    column count as unmasked (they hold only padding, hidden by ``key_padding``).
    """

    name: ClassVar[str] = "locality_jigsaw"

    masked: Tensor = field(default_factory=lambda: torch.zeros(1, 1, dtype=torch.bool))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.masked.dim() != 2 or self.masked.shape[0] != self.prompt_len.shape[0]:
            raise MdmError(
                f"jigsaw layout: masked must be a bool [B, n_blocks] with B = {self.prompt_len.shape[0]} "
                f"rows, got shape {tuple(self.masked.shape)}"
            )

    def response_rule(self, q_rel: Tensor, k_rel: Tensor, rows: Tensor) -> Tensor:
        masked = self.masked.to(q_rel.device)
        columns = masked.shape[1]
        q_blk, k_blk = q_rel // self.size, k_rel // self.size
        k_masked = masked[rows, k_blk.clamp(0, columns - 1)] & (k_blk < columns)
        q_masked = masked[rows, q_blk.clamp(0, columns - 1)] & (q_blk < columns)
        return ~k_masked | (q_masked & (q_blk == k_blk) & (k_rel <= q_rel))


LAYOUTS: dict[str, type[LocalityLayout]] = {
    "block": BlockLayout,
    "scatter": ScatterLayout,
    "jigsaw": JigsawLayout,
}


def prompt_lengths(prompt_mask: Tensor) -> Tensor:
    """Each row's prompt length: the run of prompt positions at its start ``[B]``.

    Fixed positions after the first free one (infilling) belong to the response: they are
    already-known response tokens, not context that may skip the block rule.
    """
    prefix = torch.cumprod(prompt_mask.to(torch.long), dim=1)
    return prefix.sum(dim=1)


def response_offsets(prompt_len: Tensor, length: int) -> Tensor:
    """Response-relative index ``i − p`` of every position ``[B, L]`` (negative in the prompt)."""
    positions = torch.arange(length, device=prompt_len.device)
    return positions[None, :] - prompt_len[:, None]


def block_columns(length: int, size: int) -> int:
    """Columns of a ``[B, n_blocks]`` block table covering any response of a length-L row."""
    return max(1, math.ceil(length / size))


def jigsaw_inputs(tokens: Tensor, in_masked: Tensor, prompt_len: Tensor, size: int, mask_id: int) -> Tensor:
    """The model input of a Jigsaw state: inside masked blocks, tokens shifted right by one.

    ``in_masked`` ``[B, L]`` marks positions of masked blocks. There the input at offset o > 0 is
    the token at o − 1 (the block's left context, MASK where not yet known) and MASK at offset 0;
    everywhere else the token itself. Training and sampling both build inputs here, so the model
    sees at inference exactly the states it was trained on.
    """
    offsets = response_offsets(prompt_len.to(tokens.device), tokens.shape[1])
    start = offsets % size == 0
    shifted = torch.cat([torch.full_like(tokens[:, :1], mask_id), tokens[:, :-1]], dim=1)
    inside = torch.where(start, torch.full_like(tokens, mask_id), shifted)
    return torch.where(in_masked, inside, tokens)


def masked_positions(masked: Tensor, prompt_len: Tensor, length: int, size: int) -> Tensor:
    """``[B, L]``: True at response positions whose block is marked in ``masked`` ``[B, n_blocks]``."""
    offsets = response_offsets(prompt_len.to(masked.device), length)
    blk = (offsets // size).clamp(0, masked.shape[1] - 1)
    return (offsets >= 0) & (offsets // size < masked.shape[1]) & masked.gather(1, blk)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class _LocalityAbsorbing(AbsorbingProcess):
    """Absorbing masking of the response (one t per response) under a locality layout."""

    structure_name: ClassVar[Structure]

    class Params(AbsorbingProcess.Params):
        block_size: int = Field(default=4, ge=1, description="B: response positions per block")

    params: Params

    @classmethod
    def structure(cls, params: BaseParams) -> str:
        del params
        return cls.structure_name

    @classmethod
    def layouts(cls, params: BaseParams) -> frozenset[str]:
        del params
        return frozenset({LAYOUTS[cls.structure_name].name})

    def inference(self) -> InferenceRecord:
        """Generation record: this structure, its block size, the schedule's α_t and its inverse."""
        size = self.params.block_size
        layout_cls = LAYOUTS[self.structure_name]
        return InferenceRecord(
            structure=self.structure_name,
            alpha=self.schedule.alpha,
            time_of_alpha=self.schedule.t_of_alpha,
            block_size=size,
            layout=lambda length: layout_cls(size=size),
        )

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        example = super().prepare(batch, time_sampler, generator, progress)
        layout = LAYOUTS[self.structure_name](
            prompt_len=prompt_lengths(batch.prompt_mask),
            size=self.params.block_size,
            key_padding=batch.attention_mask,
        )
        return replace(example, layout=layout)


class BlockProcess(_LocalityAbsorbing):
    """Block: absorbing masking of the response; bidirectional inside blocks, causal across them.

    Decoded block by block by the ``locality`` sampler. ``block_size`` = response length is MDLM
    with an always-visible prompt; ``block_size`` = 1 is an any-order model under a causal mask.
    """

    name = "block"
    structure_name: ClassVar[Structure] = "block"


class ScatterProcess(_LocalityAbsorbing):
    """Scatter: absorbing masking of the response; causal over in-block offsets, all blocks at once.

    Decoded offset layer by layer (offset 0 of every block, then 1, …) by the ``locality`` sampler.
    """

    name = "scatter"
    structure_name: ClassVar[Structure] = "scatter"


class JigsawProcess(ForwardProcess):
    """Jigsaw: mask k = clamp(⌈n·t⌉, 1, n) whole response blocks of n; left to right inside each.

    Weights (ELBO-style, not a per-masked-token mean): a model that decodes blocks in a uniformly
    random order, each left to right, has ``−log p(x) = E_σ Σ_j −log p(x^{σ_j} | x^{σ_<j})``.
    With k uniform on 1..n (t uniform) and the k masked blocks a uniform random subset, each
    masked block is in turn the next block of such an order, so
    ``(n/k) · Σ_{masked blocks} −log p(x^b | unmasked blocks)`` is an unbiased estimate of that
    sum; the loss weights every masked token by ``n/k`` (times the time sampler's
    ``loss_weight``) and divides by the response tokens, a per-token NLL in nats like MDLM's,
    so validation numbers compare across arms. A per-masked-token mean would weight rows with
    few masked blocks up and change the objective away from the likelihood.
    """

    name = "jigsaw"

    class Params(BaseParams):
        block_size: int = Field(default=4, ge=1, description="B: response positions per block")

    params: Params

    @classmethod
    def structure(cls, params: BaseParams) -> str:
        del params
        return "jigsaw"

    @classmethod
    def layouts(cls, params: BaseParams) -> frozenset[str]:
        del params
        return frozenset({"locality_jigsaw"})

    def inference(self) -> InferenceRecord:
        """Generation record: Jigsaw structure, block size, t = masked share of the blocks."""
        size = self.params.block_size

        def layout(length: int) -> JigsawLayout:
            columns = block_columns(length, size)
            return JigsawLayout(size=size, masked=torch.ones(1, columns, dtype=torch.bool))

        return InferenceRecord(
            structure="jigsaw",
            alpha=log_linear_alpha,
            time_of_alpha=log_linear_alpha,
            block_size=size,
            layout=layout,
        )

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        ids = batch.input_ids
        device = ids.device
        size, length = ids.shape
        block = self.params.block_size
        t_gen = time_sampler.sample((size,), generator, progress)
        scores = torch.rand(
            (size, block_columns(length, block)), generator=generator, device=generator.device
        )
        t = t_gen.to(device)
        prompt_len = prompt_lengths(batch.prompt_mask)
        response = batch.attention_mask & ~batch.prompt_mask
        n_blocks = torch.div(response.sum(dim=1) + block - 1, block, rounding_mode="floor")
        k = torch.ceil(n_blocks * t.double()).long().clamp(min=1)
        k = torch.minimum(k, n_blocks)
        columns = torch.arange(scores.shape[1], device=device)
        scores = scores.to(device).masked_fill(columns[None, :] >= n_blocks[:, None], math.inf)
        rank = scores.argsort(dim=1).argsort(dim=1)
        masked = rank < k[:, None]
        loss_mask = masked_positions(masked, prompt_len, length, block) & response
        inputs = jigsaw_inputs(ids, loss_mask, prompt_len, block, self.vocab.mask_id)
        scale = n_blocks.double() / k.clamp(min=1).double()
        scale = scale.float() * time_sampler.loss_weight(t_gen, progress).to(device)
        weights = scale[:, None].expand(size, length).contiguous()
        return TrainingExample(
            input_ids=inputs,
            targets=ids,
            loss_mask=loss_mask,
            weights=weights,
            normaliser=response.sum().clamp(min=1).to(torch.float32),
            t=t,
            layout=JigsawLayout(
                prompt_len=prompt_len, size=block, masked=masked, key_padding=batch.attention_mask
            ),
        )
