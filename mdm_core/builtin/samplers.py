"""Built-in samplers: ancestral (with denoiser caching) and confidence-ordered unmasking.

Both read how the model was trained from ``ctx.inference`` (the forward process's record: α_t and
its inverse, the generation layout, the time input), and draw every random number from the
caller's generator on its own device, as float64 uniforms, turned into categorical draws by
inverting the float64 CDF: fp32 noise would cut off the tail of the distribution, lowering sample
entropy and flattering generative perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.confidence import Measure, confidence
from mdm_core.builtin.losses import subs_logits
from mdm_core.errors import MdmError
from mdm_core.interfaces import Backbone, SampleOutput, Sampler, SamplingContext, Vocab
from mdm_core.interfaces import Params as BaseParams


def categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draws: row r gets the first v with cdf[r, v] > u[r] · total (all float64).

    ``u`` ∈ [0, 1). The threshold is kept strictly below the row total, so the chosen column
    always has positive probability (columns with zero mass are never picked).
    """
    cdf = probs.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1]
    threshold = torch.minimum(u.to(torch.float64) * total, torch.nextafter(total, torch.zeros_like(total)))
    return (cdf <= threshold[:, None]).sum(dim=-1)


def denoiser_logits(model: Backbone, z: Tensor, ctx: SamplingContext, t: Tensor) -> Tensor:
    """The backbone's logits for state ``z`` under the record's generation layout and time input.

    ``t`` ``[N]`` is the schedule's time of each sequence; it reaches the model only when the
    model uses time and the record says it was trained with one (per block: ``[N, n_blocks]``).
    """
    record = ctx.inference
    time: Tensor | None = None
    if model.uses_time and record.time_input != "none":
        time = t.to(device=z.device, dtype=torch.float32)
        if record.time_input == "block":
            blocks = math.ceil(z.shape[1] / (record.block_size or z.shape[1]))
            time = time[:, None].expand(-1, blocks)
    return model(z, time_cond=time, layout=record.layout(z.shape[1]))


def denoiser_probs(logits: Tensor, vocab: Vocab) -> Tensor:
    """p_θ(x | z) in float64 with SUBS (MASK and PAD never predicted)."""
    return torch.softmax(subs_logits(logits, vocab).to(torch.float64), dim=-1)


def uniforms(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device, dtype=torch.float64).to(device)


def initial_state(
    vocab: Vocab,
    num_samples: int,
    length: int,
    device: torch.device,
    prompt: Tensor | None,
    prompt_mask: Tensor | None,
) -> Tensor:
    """All MASK, except prompt positions, which hold the prompt (prompted generation, infilling)."""
    z = torch.full((num_samples, length), vocab.mask_id, dtype=torch.long, device=device)
    if prompt is None and prompt_mask is None:
        return z
    if prompt is None or prompt_mask is None:
        raise MdmError("sampler: pass prompt and prompt_mask together (prompt_mask marks the fixed ids)")
    if prompt.shape != (num_samples, length) or prompt_mask.shape != (num_samples, length):
        raise MdmError(
            f"sampler: prompt {tuple(prompt.shape)} and prompt_mask {tuple(prompt_mask.shape)} must both be "
            f"[num_samples, length] = [{num_samples}, {length}]"
        )
    prompt, prompt_mask = prompt.to(device), prompt_mask.to(device=device, dtype=torch.bool)
    fixed = prompt[prompt_mask]
    if fixed.numel() and (int(fixed.min()) < 0 or int(fixed.max()) >= vocab.num_regular):
        raise MdmError(
            f"sampler: prompt ids must be regular ids in [0, {vocab.num_regular}) where prompt_mask is set"
        )
    return torch.where(prompt_mask, prompt.long(), z)


@contextmanager
def inference(model: Backbone) -> Iterator[None]:
    """Eval mode and no autograd for the duration, then the model's own mode back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class AncestralSampler(Sampler):
    """Ancestral sampling on a t grid from 1 to eps, reusing the denoiser while nothing changes.

    From t to s < t a masked position becomes v with probability p_θ(v)·(α_s − α_t)/(1 − α_t) and
    stays masked otherwise. Without time conditioning the denoiser depends only on the state, so
    it is called again only after some token was revealed: NFE ≤ number of distinct states.
    ``cache=False`` calls it at every grid step instead: the uncached reference for benchmarks.
    """

    name = "ancestral"
    structures: ClassVar[frozenset[str]] = frozenset({"full"})

    class Params(BaseParams):
        steps: int = Field(default=128, ge=1, description="grid steps from t = 1 to eps")
        eps: float = Field(
            default=1e-5, gt=0.0, lt=1.0, description="last grid time; leftovers get the argmax"
        )
        cache: bool = Field(
            default=True,
            description="reuse the denoiser while the state is unchanged; false calls it every step",
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
        vocab, device = ctx.vocab, ctx.device
        alpha = ctx.inference.alpha
        z = initial_state(vocab, num_samples, length, device, prompt, prompt_mask)
        grid = torch.linspace(1.0, self.params.eps, self.params.steps + 1, dtype=torch.float64)
        nfe = 0
        probs: Tensor | None = None
        refresh = model.uses_time or not self.params.cache
        with inference(model):
            for t, s in pairwise(grid.tolist()):
                masked = z == vocab.mask_id
                if not masked.any():
                    break
                if probs is None or refresh:
                    time = torch.full((num_samples,), t, device=device)
                    probs = denoiser_probs(denoiser_logits(model, z, ctx, time), vocab)
                    nfe += 1
                a_t, a_s = alpha(torch.tensor([t, s], dtype=torch.float64)).tolist()
                reveal_prob = (a_s - a_t) / (1.0 - a_t)
                reveal = masked & (uniforms(z.shape, generator, device) < reveal_prob)
                if reveal.any():
                    draws = uniforms((int(reveal.sum()),), generator, device)
                    z = z.masked_scatter(reveal, categorical(probs[reveal], draws))
                    probs = None
            masked = z == vocab.mask_id
            if masked.any():
                if probs is None or refresh:
                    time = torch.full((num_samples,), self.params.eps, device=device)
                    probs = denoiser_probs(denoiser_logits(model, z, ctx, time), vocab)
                    nfe += 1
                z = torch.where(masked, probs.argmax(dim=-1), z)
        return SampleOutput(tokens=z, nfe=nfe)


class ConfidenceSampler(Sampler):
    """Reveal, each step, the masked positions the model is most confident about (LLaDA / PUMA).

    With r masked positions and n steps left a sequence reveals ceil(r / n), so every sequence is
    complete after ``steps`` steps. Confidence is :func:`mdm_core.builtin.confidence.confidence`
    (max log-probability or the top-two probability margin p1 − p2, the definition PUMA trains
    with); the revealed token is the argmax (temperature 0) or a float64 tempered sample. A
    time-conditioned backbone gets the schedule's t at which the current masked fraction is
    expected (``ctx.inference.time_for_masked_fraction``), as in training.
    """

    name = "confidence"
    structures: ClassVar[frozenset[str]] = frozenset({"full"})

    class Params(BaseParams):
        steps: int = Field(default=64, ge=1, description="number of reveal rounds")
        confidence: Measure = Field(default="max_prob", description="max_v log p(v), or p1 − p2")
        temperature: float = Field(
            default=0.0, ge=0.0, description="0: argmax fill; > 0: sample at this temperature"
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
        vocab, device = ctx.vocab, ctx.device
        z = initial_state(vocab, num_samples, length, device, prompt, prompt_mask)
        free = (z == vocab.mask_id).sum(dim=1).clamp(min=1)
        nfe = 0
        with inference(model):
            for step in range(self.params.steps):
                masked = z == vocab.mask_id
                remaining = masked.sum(dim=1)
                if not remaining.any():
                    break
                time = ctx.inference.time_for_masked_fraction(remaining.double() / free.double())
                logits = denoiser_logits(model, z, ctx, time)
                nfe += 1
                probs = denoiser_probs(logits, vocab)
                candidates = self._fill(probs, generator, device)
                flat = logits.reshape(-1, logits.shape[-1])
                score = confidence(flat, vocab.num_regular, self.params.confidence).reshape(masked.shape)
                order = torch.argsort(
                    score.masked_fill(~masked, -math.inf), dim=1, descending=True, stable=True
                )
                rank = torch.empty_like(order).scatter_(
                    1, order, torch.arange(length, device=device).expand_as(order)
                )
                quota = torch.ceil(remaining / (self.params.steps - step)).long()
                reveal = masked & (rank < quota[:, None])
                z = torch.where(reveal, candidates, z)
        return SampleOutput(tokens=z, nfe=nfe)

    def _fill(self, probs: Tensor, generator: torch.Generator, device: torch.device) -> Tensor:
        if self.params.temperature == 0.0:
            return probs.argmax(dim=-1)
        # Temper in log space: p ** (1/T) would underflow to all zeros at small T.
        tempered = torch.softmax(probs.log() / self.params.temperature, dim=-1)
        flat = tempered.reshape(-1, tempered.shape[-1])
        draws = categorical(flat, uniforms((flat.shape[0],), generator, device))
        return draws.reshape(probs.shape[:-1])
