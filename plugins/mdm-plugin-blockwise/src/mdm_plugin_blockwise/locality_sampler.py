"""The ``locality`` sampler: decodes Block, Scatter and Jigsaw models in the order each was trained for.

- **Block**: block by block; inside the current block, confidence-ordered unmasking in
  ``steps_per_block`` rounds (default B: one position per round).
- **Scatter**: offset layer by layer: one call fills offset 0 of every block, the next offset 1, …
  (B calls).
- **Jigsaw**: repeatedly pick the masked block of lowest predictive entropy and decode it left to
  right. A block's entropy is the sum over its positions of the entropy of each position's
  predictive law along the block's greedy left-to-right decode (the model predicts a masked
  block left to right, so only that decode gives each position its trained context); masked
  blocks never see each other, so one call advances the decodes of all of them, and a choice
  costs B calls. At temperature 0 the chosen block keeps its greedy decode; above 0 it is then
  sampled left to right (B more calls), so the order depends only on what is visible, never on
  the values still to be drawn.

The prompt is the leading run of ``prompt_mask`` (the layouts' always-visible context); fixed
positions after it (infilling) are response tokens that are already known. Fills are the argmax
(temperature 0, for tasks) or float64 tempered samples; NFE counts backbone calls.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.confidence import Measure, confidence
from mdm_core.builtin.samplers import categorical, denoiser_probs, inference, initial_state, uniforms
from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, Backbone, SampleOutput, Sampler, SamplingContext
from mdm_core.interfaces import Params as BaseParams
from mdm_plugin_blockwise.locality import (
    BlockLayout,
    JigsawLayout,
    ScatterLayout,
    block_columns,
    jigsaw_inputs,
    masked_positions,
    prompt_lengths,
    response_offsets,
)


class LocalitySampler(Sampler):
    """Block by block (Block), offset layer by layer (Scatter), lowest-entropy block first (Jigsaw)."""

    name = "locality"
    structures: ClassVar[frozenset[str]] = frozenset({"block", "scatter", "jigsaw"})

    class Params(BaseParams):
        temperature: float = Field(
            default=0.0, ge=0.0, description="0: argmax fill (tasks); > 0: float64 sample at this temperature"
        )
        steps_per_block: int | None = Field(
            default=None,
            ge=1,
            description="Block: reveal rounds per block (default: block size, one per round)",
        )
        confidence: Measure = Field(
            default="max_prob", description="Block: order inside a block, max_v log p(v) or p1 − p2"
        )

    params: Params

    def generate(
        self,
        model: Backbone,
        ctx: SamplingContext,
        num_samples: int,
        length: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> SampleOutput:
        record = ctx.inference
        if record.structure not in self.structures or record.block_size is None:
            raise MdmError(
                f"sampler 'locality' (mdm-plugin-blockwise) decodes models trained by the block, scatter "
                f"or jigsaw process; this model was trained for the '{record.structure}' structure — use "
                "the sampler its process documents (e.g. ancestral or confidence for absorbing)"
            )
        z = initial_state(ctx.vocab, num_samples, length, ctx.device, prompt, prompt_mask)
        if prompt_mask is None:
            prompt_len = torch.zeros(num_samples, dtype=torch.long, device=ctx.device)
        else:
            prompt_len = prompt_lengths(prompt_mask.to(device=ctx.device, dtype=torch.bool))
        run = _Decoding(self.params, model, ctx, generator, z, prompt_len, record.block_size)
        with inference(model):
            if record.structure == "block":
                run.block()
            elif record.structure == "scatter":
                run.scatter()
            else:
                run.jigsaw()
        return SampleOutput(tokens=run.z, nfe=run.nfe)


class _Decoding:
    """One generation: the state, its geometry and the backbone calls made so far."""

    def __init__(
        self,
        params: LocalitySampler.Params,
        model: Backbone,
        ctx: SamplingContext,
        generator: torch.Generator,
        z: Tensor,
        prompt_len: Tensor,
        size: int,
    ) -> None:
        self.params, self.model, self.ctx, self.generator = params, model, ctx, generator
        self.z, self.prompt_len, self.size = z, prompt_len, size
        self.mask_id = ctx.vocab.mask_id
        self.offsets = response_offsets(prompt_len, z.shape[1])
        self.response = self.offsets >= 0
        self.nfe = 0

    def logits(self, inputs: Tensor, layout: AttentionLayout, masked: Tensor) -> Tensor:
        """One backbone call; a time-conditioned model gets the t of the masked share ``masked`` ``[N]``."""
        record = self.ctx.inference
        time = None
        if self.model.uses_time and record.time_input != "none":
            time = record.time_for_masked_fraction(masked.double()).to(
                device=inputs.device, dtype=torch.float32
            )
        self.nfe += 1
        return self.model(inputs, time_cond=time, layout=layout)

    def masked_share(self) -> Tensor:
        still = ((self.z == self.mask_id) & self.response).sum(dim=1)
        return still.double() / self.response.sum(dim=1).clamp(min=1).double()

    def fill(self, probs: Tensor) -> Tensor:
        """Argmax at temperature 0, else a float64 tempered draw per position."""
        temperature = self.params.temperature
        if temperature == 0.0:
            return probs.argmax(dim=-1)
        tempered = torch.softmax(probs.log() / temperature, dim=-1).reshape(-1, probs.shape[-1])
        draws = categorical(tempered, uniforms((tempered.shape[0],), self.generator, self.z.device))
        return draws.reshape(probs.shape[:-1])

    def block(self) -> None:
        """Block by block; inside a block reveal the most confident positions, quota per round."""
        layout = BlockLayout(prompt_len=self.prompt_len, size=self.size)
        rounds = self.params.steps_per_block or self.size
        vocab = self.ctx.vocab
        positions = torch.arange(self.z.shape[1], device=self.z.device)
        for j in range(block_columns(self.z.shape[1], self.size)):
            in_block = self.response & (self.offsets // self.size == j)
            for r in range(rounds):
                todo = in_block & (self.z == self.mask_id)
                if not todo.any():
                    break
                logits = self.logits(self.z, layout, self.masked_share())
                candidates = self.fill(denoiser_probs(logits, vocab))
                flat = logits.reshape(-1, logits.shape[-1])
                score = confidence(flat, vocab.num_regular, self.params.confidence).reshape(todo.shape)
                order = torch.argsort(
                    score.masked_fill(~todo, -math.inf), dim=1, descending=True, stable=True
                )
                rank = torch.empty_like(order).scatter_(1, order, positions.expand_as(order))
                quota = torch.ceil(todo.sum(dim=1) / (rounds - r)).long()
                reveal = todo & (rank < quota[:, None])
                self.z = torch.where(reveal, candidates, self.z)

    def scatter(self) -> None:
        """One call per in-block offset: offset o of every block is filled at once."""
        layout = ScatterLayout(prompt_len=self.prompt_len, size=self.size)
        for o in range(self.size):
            todo = self.response & (self.offsets % self.size == o) & (self.z == self.mask_id)
            if not todo.any():
                continue
            logits = self.logits(self.z, layout, self.masked_share())
            self.z = torch.where(todo, self.fill(denoiser_probs(logits, self.ctx.vocab)), self.z)

    def jigsaw(self) -> None:
        """Pick the pending block of least summed entropy, decode it left to right; repeat."""
        size, length = self.size, self.z.shape[1]
        columns = block_columns(length, size)
        blk = (self.offsets // size).clamp(0, columns - 1)
        n_blocks = torch.div(self.response.sum(dim=1) + size - 1, size, rounding_mode="floor")
        open_ = (self.z == self.mask_id) & self.response
        pending = torch.zeros(self.z.shape[0], columns, dtype=torch.bool, device=self.z.device)
        pending = pending.scatter_reduce(1, blk, open_, reduce="amax")
        while pending.any():
            share = pending.sum(dim=1).double() / n_blocks.clamp(min=1).double()
            layout = JigsawLayout(prompt_len=self.prompt_len, size=size, masked=pending)
            in_masked = masked_positions(pending, self.prompt_len, length, size)
            rollout, entropy = self._greedy_rollout(layout, in_masked, blk, share)
            active = pending.any(dim=1)
            choice = entropy.masked_fill(~pending, math.inf).argmin(dim=1)
            chosen = in_masked & (blk == choice[:, None]) & active[:, None]
            if self.params.temperature == 0.0:
                self.z = torch.where(chosen, rollout, self.z)
            else:
                self._sample_left_to_right(layout, in_masked, chosen, share)
            pending[active, choice[active]] = False

    def _greedy_rollout(
        self, layout: JigsawLayout, in_masked: Tensor, blk: Tensor, share: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Greedy left-to-right decode of every pending block at once, and each block's summed entropy."""
        rollout = self.z.clone()
        entropy = torch.zeros(layout.masked.shape, dtype=torch.float64, device=self.z.device)
        for o in range(self.size):
            todo = in_masked & (self.offsets % self.size == o) & (rollout == self.mask_id)
            if not todo.any():
                continue
            inputs = jigsaw_inputs(rollout, in_masked, self.prompt_len, self.size, self.mask_id)
            probs = denoiser_probs(self.logits(inputs, layout, share), self.ctx.vocab)
            h = -(probs * probs.clamp(min=torch.finfo(torch.float64).tiny).log()).sum(dim=-1)
            entropy.scatter_add_(1, blk, torch.where(todo, h, torch.zeros_like(h)))
            rollout = torch.where(todo, probs.argmax(dim=-1), rollout)
        return rollout, entropy

    def _sample_left_to_right(
        self, layout: JigsawLayout, in_masked: Tensor, chosen: Tensor, share: Tensor
    ) -> None:
        """Sample the chosen block of each row left to right at the sampler's temperature."""
        for o in range(self.size):
            todo = chosen & (self.offsets % self.size == o) & (self.z == self.mask_id)
            if not todo.any():
                continue
            inputs = jigsaw_inputs(self.z, in_masked, self.prompt_len, self.size, self.mask_id)
            probs = denoiser_probs(self.logits(inputs, layout, share), self.ctx.vocab)
            self.z = torch.where(todo, self.fill(probs), self.z)
