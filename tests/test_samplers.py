"""Ancestral (cached) and confidence samplers on small real backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler, categorical
from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, Backbone, KVCache, SamplingContext, Vocab
from mdm_core.testing import TinyBackbone

VOCAB = Vocab(size=6, pad_id=4, mask_id=5)
CTX = SamplingContext(vocab=VOCAB, device=torch.device("cpu"))


class Recording(TinyBackbone):
    """The kit's tiny model, remembering every input it was called with."""

    def __init__(self, params: TinyBackbone.Params | None, vocab: Vocab, max_len: int) -> None:
        super().__init__(params, vocab, max_len)
        self.calls: list[Tensor] = []

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        self.calls.append(input_ids.clone())
        return super().forward(input_ids, time_cond, layout, position_ids, kv_cache)


class Table(Backbone):
    """Logits from a fixed [L, V] table whatever the input: known denoiser probabilities."""

    name = "table"

    def __init__(self, table: Tensor, vocab: Vocab) -> None:
        super().__init__(None, vocab, table.shape[0])
        self.table = nn.Parameter(table)
        self.calls: list[Tensor] = []

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        self.calls.append(input_ids.clone())
        return self.table.expand(input_ids.shape[0], *self.table.shape)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_categorical_resolves_float64_tails_and_skips_empty_columns() -> None:
    probs = torch.tensor([[1 - 1e-12, 1e-12, 0.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    near_one = torch.tensor([1 - 1e-13, 1 - 2**-53], dtype=torch.float64)
    assert categorical(probs, near_one).tolist() == [1, 1]
    assert categorical(probs, torch.tensor([0.5, 0.0], dtype=torch.float64)).tolist() == [0, 0]
    # In float32 the tail token would vanish: its cdf step is below fp32 resolution.
    assert float(probs.float().cumsum(-1)[0, 0]) == 1.0


def test_categorical_frequencies_match_probabilities() -> None:
    p = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0], dtype=torch.float64)
    n = 20000
    u = torch.rand(n, generator=generator(1), dtype=torch.float64)
    counts = torch.bincount(categorical(p.expand(n, 5), u), minlength=5).double()
    sigma = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() <= 5 * sigma + 1e-9).all())
    assert counts[4] == 0


@pytest.mark.parametrize("num", [1, 3])
def test_ancestral_nfe_is_bounded_by_distinct_states(num: int) -> None:
    length = 6
    model = Recording(None, VOCAB, length)
    out = AncestralSampler(AncestralSampler.Params(steps=1000)).generate(model, CTX, num, length, generator())
    assert not bool((out.tokens == VOCAB.mask_id).any())
    assert bool((out.tokens < VOCAB.num_regular).all())
    distinct = {tuple(call.flatten().tolist()) for call in model.calls}
    assert out.nfe == len(model.calls) == len(distinct)
    # Every call after the first follows a change of at least one of the num·length masks.
    assert 1 <= out.nfe <= num * length + 1


def test_ancestral_with_time_conditioning_never_caches() -> None:
    length = 4
    model = Recording(TinyBackbone.Params(uses_time=True), VOCAB, length)
    out = AncestralSampler(AncestralSampler.Params(steps=200)).generate(model, CTX, 2, length, generator())
    assert out.nfe == len(model.calls) > length + 1
    assert not bool((out.tokens == VOCAB.mask_id).any())


def test_ancestral_samples_follow_the_denoiser_distribution() -> None:
    p = torch.tensor([0.6, 0.25, 0.1, 0.05])
    logits = torch.cat([p.log(), torch.zeros(2)]).expand(8, VOCAB.size).clone()
    model = Table(logits, VOCAB)
    out = AncestralSampler(AncestralSampler.Params(steps=32)).generate(model, CTX, 250, 8, generator(2))
    n = out.tokens.numel()
    counts = torch.bincount(out.tokens.flatten(), minlength=VOCAB.num_regular).double()
    sigma = (n * p.double() * (1 - p.double())).sqrt()
    assert bool(((counts - n * p.double()).abs() <= 5 * sigma).all())


def test_ancestral_keeps_infilling_context_and_uses_the_process_alpha() -> None:
    length = 8
    prompt = torch.arange(length).remainder(VOCAB.num_regular).expand(3, length)
    prompt_mask = (torch.arange(length) % 2 == 0).expand(3, length)
    cosine = AbsorbingProcess(AbsorbingProcess.Params(schedule="cosine"))
    ctx = SamplingContext(vocab=VOCAB, device=torch.device("cpu"), alpha=cosine.alpha)
    model = TinyBackbone(None, VOCAB, length)
    out = AncestralSampler(AncestralSampler.Params(steps=20)).generate(
        model, ctx, 3, length, generator(), prompt, prompt_mask
    )
    assert torch.equal(out.tokens[prompt_mask], prompt[prompt_mask])
    assert bool((out.tokens < VOCAB.num_regular).all())


def test_prompt_errors_are_clear() -> None:
    model = TinyBackbone(None, VOCAB, 4)
    sampler = AncestralSampler()
    with pytest.raises(MdmError, match="together"):
        sampler.generate(model, CTX, 1, 4, generator(), prompt=torch.zeros((1, 4), dtype=torch.long))
    with pytest.raises(MdmError, match="regular ids"):
        sampler.generate(
            model,
            CTX,
            1,
            4,
            generator(),
            torch.full((1, 4), VOCAB.mask_id),
            torch.ones((1, 4), dtype=torch.bool),
        )


def reveal_order(model: Table, tokens: Tensor) -> list[int]:
    """Positions of sequence 0 in the order they were revealed (one per call)."""
    states = [*model.calls, tokens]
    order = []
    for before, after in zip(states[:-1], states[1:], strict=True):
        newly = (before[0] == VOCAB.mask_id) & (after[0] != VOCAB.mask_id)
        order.extend(torch.nonzero(newly).flatten().tolist())
    return order


def confidence_table() -> Tensor:
    """Three positions: max-prob order is 2, 0, 1 while margin order is 2, 1, 0."""
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.4, 0.2, 0.2, 0.2], [0.9, 0.1, 0.0, 0.0]])
    return torch.cat([probs.clamp(min=1e-30).log(), torch.zeros(3, 2)], dim=1)


@pytest.mark.parametrize(("confidence", "expected"), [("max_prob", [2, 0, 1]), ("margin", [2, 1, 0])])
def test_confidence_sampler_reveals_most_confident_first(confidence: str, expected: list[int]) -> None:
    model = Table(confidence_table(), VOCAB)
    params = ConfidenceSampler.Params(steps=3, confidence=confidence)
    out = ConfidenceSampler(params).generate(model, CTX, 2, 3, generator())
    assert out.nfe == 3
    assert reveal_order(model, out.tokens) == expected
    assert out.tokens[0].tolist() == [0, 0, 0]


def test_confidence_sampler_quota_is_ceil_remaining_over_steps_left() -> None:
    model = Table(torch.randn((5, VOCAB.size), generator=generator(3)), VOCAB)
    out = ConfidenceSampler(ConfidenceSampler.Params(steps=2)).generate(model, CTX, 1, 5, generator())
    assert out.nfe == 2
    masked_per_call = [int((call == VOCAB.mask_id).sum()) for call in model.calls]
    assert masked_per_call == [5, 5 - math.ceil(5 / 2)]


def test_confidence_sampler_low_temperature_matches_argmax_and_is_seeded() -> None:
    model = TinyBackbone(None, VOCAB, 7)
    argmax = ConfidenceSampler(ConfidenceSampler.Params(steps=4)).generate(model, CTX, 3, 7, generator())
    cold = ConfidenceSampler(ConfidenceSampler.Params(steps=4, temperature=1e-4))
    assert torch.equal(cold.generate(model, CTX, 3, 7, generator(5)).tokens, argmax.tokens)
    warm = ConfidenceSampler(ConfidenceSampler.Params(steps=4, temperature=2.0))
    first, second = (
        warm.generate(model, CTX, 3, 7, generator(5)),
        warm.generate(model, CTX, 3, 7, generator(5)),
    )
    assert torch.equal(first.tokens, second.tokens)
    assert bool((first.tokens < VOCAB.num_regular).all())
