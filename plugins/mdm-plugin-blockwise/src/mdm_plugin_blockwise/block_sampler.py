"""The ``block`` sampler: block-diffusion generation, block by block with an exact KV cache."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.samplers import inference, initial_state
from mdm_core.interfaces import Backbone, SampleOutput, Sampler, SamplingContext
from mdm_core.interfaces import Params as BaseParams
from mdm_plugin_blockwise._decode import decode


class BlockSampler(Sampler):
    """Blocks of the record's L' left to right; inside a block ancestral or first-hitting updates.

    Honours ``bd3`` (L' from the process), ``ar`` (L' = 1) and ``full`` models (one block: MDLM,
    so the same sampler serves every arm of a ladder at equal NFE). A block sees the clean earlier
    blocks through a KV cache on the model's device and dtype (``cache: false`` recomputes the whole
    sequence at every call, the uncached reference: same tokens, same NFE, more compute). NFE counts
    backbone calls; a finished block's clean forward is fused into the next block's first call, so
    it adds none. ``steps`` is the ancestral grid per block; with ``first_hitting`` each call
    reveals one uniformly chosen masked position (NFE ≤ L' per block). ``top_p`` < 1 samples from
    the nucleus. Prompted positions are kept; generation conditions on prompts in earlier blocks
    and in the current block only (block-causal models cannot see later ones).
    """

    name = "block"
    structures: ClassVar[frozenset[str]] = frozenset({"bd3", "ar", "full"})

    class Params(BaseParams):
        steps: int = Field(default=128, ge=1, description="ancestral grid steps per block (t from 1 to eps)")
        eps: float = Field(
            default=1e-5, gt=0.0, lt=1.0, description="last grid time; leftovers get the argmax"
        )
        first_hitting: bool = Field(
            default=False, description="reveal exactly one uniformly chosen masked position per call"
        )
        top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus mass (1: no truncation)")
        cache: bool = Field(default=True, description="KV cache of finished blocks; false: recompute all")

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
        p = self.params
        z = initial_state(ctx.vocab, num_samples, length, ctx.device, prompt, prompt_mask)
        with inference(model):
            nfe = decode(
                model,
                ctx,
                z,
                generator,
                block_size=ctx.inference.block_size or length,
                cached=p.cache,
                first_hitting=p.first_hitting,
                steps=p.steps,
                eps=p.eps,
                top_p=p.top_p,
            )
        return SampleOutput(tokens=z, nfe=nfe)
