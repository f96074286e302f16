"""The autoregressive reference: a MASK query per position over ``z ⊕ x`` (BD3 with L' = 1).

Token i is predicted from the tokens before it by a MASK query at position i that sees the clean
tokens ``x_{<i}`` (and itself). This is block diffusion's L' = 1 full-mask mode, so AR and BD3
feed the model the same inputs and their NLLs are comparable to the last digit, in the same
nats/token (non-pad non-prompt tokens) as every other arm, with no BOS token: the first token is
predicted from the MASK query alone. The clean half is exactly the causal layout
``BlockCausalLayout(size=1)``, the layout of generation, where the clean prefix lives in a KV
cache and one MASK query is appended per token. Training costs 2L tokens per sequence, like BD3.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.samplers import inference, initial_state
from mdm_core.interfaces import (
    Backbone,
    Batch,
    BlockCausalLayout,
    ForwardProcess,
    InferenceRecord,
    SampleOutput,
    Sampler,
    SamplingContext,
    TimeSampler,
    TrainingExample,
)
from mdm_core.interfaces import Params as BaseParams
from mdm_plugin_blockwise._decode import decode
from mdm_plugin_blockwise.bd3 import full_mask_example


def causal(length: int) -> BlockCausalLayout:
    """The generation layout of an AR model: each position sees itself and the ones before it."""
    del length
    return BlockCausalLayout(size=1)


class ARProcess(ForwardProcess):
    """Next-token cross-entropy through MASK queries: the exact AR NLL (weights 1, per token).

    Draws no diffusion times (``uses_time_sampler = False``: a non-uniform time sampler is refused
    by the spec check); every position's t is 1 (all queries are MASK). A time sampler's
    ``loss_weight`` at t = 1 still multiplies the weights (1 for ``uniform``).
    """

    name = "ar"
    uses_time_sampler: ClassVar[bool] = False

    class Params(BaseParams):
        pass

    @classmethod
    def structure(cls, params: BaseParams) -> str:
        return "ar"

    @classmethod
    def layouts(cls, params: BaseParams) -> frozenset[str]:
        """Trained as BD3 with blocks of one (MASK queries over z ⊕ x), generated causally."""
        del params
        return frozenset({"bd3", "block_causal"})

    def inference(self) -> InferenceRecord:
        """Left to right under the causal layout; per-position (block) time input, t = 1."""
        return InferenceRecord(structure="ar", block_size=1, layout=causal, time_input="block")

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        del generator
        return full_mask_example(batch, self.vocab.mask_id, time_sampler, progress)


class ARSampler(Sampler):
    """Left to right, one backbone call per generated token, with an exact KV cache.

    Each call appends the previous token's keys/values to the cache and queries MASK at the next
    position (prompted positions need no call of their own). Always causal, whatever the record's
    layout. Tokens are float64 inverse-CDF draws, from the nucleus of mass ``top_p`` when < 1;
    ``cache: false`` reruns the whole sequence each call (same tokens, the uncached reference). An
    interior prompt conditions only the positions after it: AR cannot look ahead.
    """

    name = "ar"
    structures: ClassVar[frozenset[str]] = frozenset({"ar"})

    class Params(BaseParams):
        top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus mass (1: no truncation)")
        cache: bool = Field(default=True, description="KV cache of the prefix; false: recompute all")

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
        record = dataclasses.replace(ctx.inference, block_size=1, layout=causal)
        causal_ctx = dataclasses.replace(ctx, inference=record)
        z = initial_state(ctx.vocab, num_samples, length, ctx.device, prompt, prompt_mask)
        with inference(model):
            nfe = decode(
                model,
                causal_ctx,
                z,
                generator,
                block_size=1,
                cached=self.params.cache,
                first_hitting=True,
                top_p=self.params.top_p,
            )
        return SampleOutput(tokens=z, nfe=nfe)
