"""Block-by-block decoding with an exact KV cache (shared by the ``block`` and ``ar`` samplers).

Blocks of L' positions are decoded left to right; inside a block either MDLM's cached ancestral
update (METHODS §1) or first-hitting (one uniformly chosen masked position per call). Every call
uses the record's generation layout (block-causal for BD3 and AR): a block sees the clean blocks
before it and itself, never a later block, so the keys and values of a finished block never change
and caching them is exact. With the cache, a finished block's clean forward rides on the next
block's first denoiser call: its tokens are prepended to that call's input and appended to the
cache, and the noisy block's own keys are trimmed off again. Without it (``cache: false``), every
call runs the whole sequence (the uncached reference). Both paths draw the same random numbers in
the same order, so they give the same tokens. All draws are float64 inverse-CDF categoricals from
the caller's generator (METHODS §1: fp32 noise lowers sample entropy).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor

from mdm_core.builtin.samplers import categorical, denoiser_probs, uniforms
from mdm_core.interfaces import Backbone, KVCache, SamplingContext

#: The time fed to a time-conditioned backbone for finished (clean) blocks: AR trains every block at
#: t = 1, and a BD3 clean block is seen with its own uniformly drawn t, so any t is in distribution.
CLEAN_TIME = 1.0


def nucleus(probs: Tensor, top_p: float) -> Tensor:
    """Zero all but the smallest set of likeliest tokens holding ``top_p`` of each row's mass."""
    if top_p >= 1.0:
        return probs
    ordered, order = probs.sort(dim=-1, descending=True)
    before = ordered.cumsum(-1) - ordered
    keep = before < top_p * ordered.sum(-1, keepdim=True)
    return probs * torch.zeros_like(keep).scatter(-1, order, keep)


def trim(cache: KVCache, length: int) -> None:
    """Keep the first ``length`` cached positions (the sequence axis is −2, as ``KVCache.length`` reads)."""
    cache.keys = [k[..., :length, :] for k in cache.keys]
    cache.values = [v[..., :length, :] for v in cache.values]


class BlockDecoder:
    """Denoiser calls for one block of the state ``z`` (``[N, L]``, updated in place by the caller)."""

    def __init__(self, model: Backbone, ctx: SamplingContext, z: Tensor, block_size: int, cached: bool):
        self.model, self.ctx, self.z = model, ctx, z
        length = z.shape[1]
        self.block_size = block_size
        self.blocks = math.ceil(length / block_size)
        self.layout = ctx.inference.layout(length)
        self.cache = KVCache() if cached and self.blocks > 1 else None
        self.nfe = 0

    def probs(self, start: int, end: int, t: Tensor) -> Tensor:
        """p_θ (float64, SUBS) for positions ``start..end−1`` given the state; ``t`` ``[N]`` is the
        block's schedule time (used only by time-conditioned backbones)."""
        return denoiser_probs(self.logits(start, end, t), self.ctx.vocab)

    def logits(self, start: int, end: int, t: Tensor) -> Tensor:
        """The backbone's logits for positions ``start..end−1`` (one call, counted in ``nfe``)."""
        time = self._time(start, t)
        z, cache = self.z, self.cache
        if cache is None:
            logits = self.model(z, time_cond=time, layout=self.layout)[:, start:end]
        else:
            past = cache.length
            cache.append = past < start
            positions = torch.arange(past, end, device=z.device)
            out = self.model(
                z[:, past:end], time_cond=time, layout=self.layout, position_ids=positions, kv_cache=cache
            )
            logits = out[:, start - past :]
            if cache.append:
                trim(cache, start)
        self.nfe += 1
        return logits

    def _time(self, start: int, t: Tensor) -> Tensor | None:
        record = self.ctx.inference
        if not self.model.uses_time or record.time_input == "none":
            return None
        t = t.to(device=self.z.device, dtype=torch.float32)
        if record.time_input == "sequence":
            return t
        time = t[:, None].repeat(1, self.blocks)
        time[:, : start // self.block_size] = CLEAN_TIME
        return time


def decode(
    model: Backbone,
    ctx: SamplingContext,
    z: Tensor,
    generator: torch.Generator,
    *,
    block_size: int,
    cached: bool,
    first_hitting: bool,
    steps: int = 1,
    eps: float = 1e-5,
    top_p: float = 1.0,
) -> int:
    """Decode every MASK of ``z`` in place, block by block; returns the number of backbone calls."""
    decoder = BlockDecoder(model, ctx, z, block_size, cached)
    length = z.shape[1]
    for start in range(0, length, block_size):
        end = min(start + block_size, length)
        if first_hitting:
            _first_hitting(decoder, start, end, generator, top_p)
        else:
            _ancestral(decoder, start, end, generator, steps, eps, top_p)
    return decoder.nfe


def _first_hitting(
    decoder: BlockDecoder, start: int, end: int, generator: torch.Generator, top_p: float
) -> None:
    """Each call reveals exactly one uniformly chosen masked position per row (NFE ≤ block length)."""
    z, ctx = decoder.z, decoder.ctx
    mask_id, device = ctx.vocab.mask_id, z.device
    width = end - start
    while True:
        masked = z[:, start:end] == mask_id
        active = masked.any(dim=1)
        if not active.any():
            return
        fraction = masked.sum(dim=1).double() / width
        probs = decoder.probs(start, end, ctx.inference.time_for_masked_fraction(fraction))
        scores = uniforms(masked.shape, generator, device).masked_fill(~masked, -1.0)
        position = scores.argmax(dim=1)
        rows = torch.nonzero(active).squeeze(1)
        chosen = nucleus(probs[rows, position[rows]], top_p)
        tokens = categorical(chosen, uniforms((rows.numel(),), generator, device))
        z[rows, start + position[rows]] = tokens


def _ancestral(
    decoder: BlockDecoder,
    start: int,
    end: int,
    generator: torch.Generator,
    steps: int,
    eps: float,
    top_p: float,
) -> None:
    """MDLM's cached ancestral update on a t grid from 1 to ``eps`` (METHODS §1), then argmax fill.

    Without time conditioning the denoiser depends only on the state, so its output is reused
    until a token is revealed (NFE ≤ number of distinct states of the block).
    """
    z, ctx = decoder.z, decoder.ctx
    mask_id, device, alpha = ctx.vocab.mask_id, z.device, ctx.inference.alpha
    size = z.shape[0]
    refresh = decoder.model.uses_time and ctx.inference.time_input != "none"
    probs: Tensor | None = None
    grid = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64).tolist()
    for t, s in pairwise(grid):
        masked = z[:, start:end] == mask_id
        if not masked.any():
            return
        if probs is None or refresh:
            probs = decoder.probs(start, end, torch.full((size,), t, dtype=torch.float64))
        a_t, a_s = alpha(torch.tensor([t, s], dtype=torch.float64)).tolist()
        reveal = masked & (uniforms(masked.shape, generator, device) < (a_s - a_t) / (1.0 - a_t))
        if reveal.any():
            draws = categorical(
                nucleus(probs[reveal], top_p), uniforms((int(reveal.sum()),), generator, device)
            )
            z[:, start:end] = z[:, start:end].masked_scatter(reveal, draws)
            probs = None
    masked = z[:, start:end] == mask_id
    if masked.any():
        if probs is None or refresh:
            probs = decoder.probs(start, end, torch.full((size,), eps, dtype=torch.float64))
        z[:, start:end] = torch.where(masked, probs.argmax(dim=-1), z[:, start:end])
