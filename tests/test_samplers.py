"""Ancestral (cached) and confidence samplers on small real backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from mdm_core.builtin import confidence as confidence_module
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.confidence import confidence, margin, max_log_prob
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler, categorical
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    BlockCausalLayout,
    InferenceRecord,
    KVCache,
    RunShape,
    SamplingContext,
    Vocab,
)
from mdm_core.testing import TinyBackbone

VOCAB = Vocab(size=6, pad_id=4, mask_id=5)
CTX = SamplingContext(vocab=VOCAB, device=torch.device("cpu"))


def shape(length: int, vocab: Vocab = VOCAB) -> RunShape:
    return RunShape(vocab=vocab, seq_len=length)


def tiny(length: int, uses_time: bool = False) -> TinyBackbone:
    return TinyBackbone(TinyBackbone.Params(uses_time=uses_time), shape(length))


class Recording(TinyBackbone):
    """The kit's tiny model, remembering every input (and time, layout) it was called with."""

    def __init__(self, params: TinyBackbone.Params | None, run_shape: RunShape) -> None:
        super().__init__(params, run_shape)
        self.calls: list[Tensor] = []
        self.times: list[Tensor | None] = []
        self.layouts: list[AttentionLayout | None] = []

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        self.calls.append(input_ids.clone())
        self.times.append(None if time_cond is None else time_cond.clone())
        self.layouts.append(layout)
        return super().forward(input_ids, time_cond, layout, position_ids, kv_cache)


class Table(Backbone):
    """Logits from a fixed [L, V] table whatever the input: known denoiser probabilities."""

    name = "table"

    def __init__(self, table: Tensor, vocab: Vocab) -> None:
        super().__init__(None, shape(table.shape[0], vocab))
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
    model = Recording(None, shape(length))
    out = AncestralSampler(AncestralSampler.Params(steps=1000)).generate(model, CTX, num, length, generator())
    assert not bool((out.tokens == VOCAB.mask_id).any())
    assert bool((out.tokens < VOCAB.num_regular).all())
    distinct = {tuple(call.flatten().tolist()) for call in model.calls}
    assert out.nfe == len(model.calls) == len(distinct)
    # Every call after the first follows a change of at least one of the num·length masks.
    assert 1 <= out.nfe <= num * length + 1


def test_ancestral_with_time_conditioning_never_caches() -> None:
    length = 4
    model = Recording(TinyBackbone.Params(uses_time=True), shape(length))
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
    cosine = AbsorbingProcess(AbsorbingProcess.Params(schedule="cosine"), shape(length))
    ctx = SamplingContext.of(cosine, "cpu")
    model = tiny(length)
    out = AncestralSampler(AncestralSampler.Params(steps=20)).generate(
        model, ctx, 3, length, generator(), prompt, prompt_mask
    )
    assert torch.equal(out.tokens[prompt_mask], prompt[prompt_mask])
    assert bool((out.tokens < VOCAB.num_regular).all())


def test_prompt_errors_are_clear() -> None:
    model = tiny(4)
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
    model = tiny(7)
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


def test_ancestral_passes_the_grid_time_and_the_records_layout() -> None:
    length = 6
    cosine = AbsorbingProcess(AbsorbingProcess.Params(schedule="cosine"), shape(length))
    record = cosine.inference()
    blocked = InferenceRecord(
        alpha=record.alpha, time_of_alpha=record.time_of_alpha, layout=lambda n: BlockCausalLayout(size=n)
    )
    ctx = SamplingContext(vocab=VOCAB, device=torch.device("cpu"), inference=blocked)
    model = Recording(TinyBackbone.Params(uses_time=True), shape(length))
    AncestralSampler(AncestralSampler.Params(steps=4)).generate(model, ctx, 2, length, generator())
    assert all(isinstance(layout, BlockCausalLayout) and layout.size == length for layout in model.layouts)
    first = model.times[0]
    assert first is not None and torch.allclose(first, torch.ones(2))


def test_confidence_sampler_passes_the_schedules_time_of_the_masked_fraction() -> None:
    """The masked fraction r/L is not a time: a cosine-trained model must get t with 1 − α_t = r/L."""
    length, steps = 8, 4
    cosine = AbsorbingProcess(AbsorbingProcess.Params(schedule="cosine"), shape(length))
    model = Recording(TinyBackbone.Params(uses_time=True), shape(length))
    ConfidenceSampler(ConfidenceSampler.Params(steps=steps)).generate(
        model, SamplingContext.of(cosine, "cpu"), 2, length, generator()
    )
    for call, time in zip(model.calls, model.times, strict=True):
        fraction = (call == VOCAB.mask_id).sum(dim=1).double() / length
        assert time is not None
        expected = cosine.schedule.t_of_alpha(1.0 - fraction)
        assert torch.allclose(time.double(), expected, atol=1e-6)
        # 1 − α_t = fraction (up to α_1 = ε: everything masked is t = 1)
        masked_at_t = 1.0 - cosine.schedule.alpha(time.double())
        assert torch.allclose(masked_at_t, fraction.clamp(max=1 - 1e-3), atol=1e-5)
    assert model.times[1] is not None and bool((model.times[1] < 1).all()), "later calls are not t = 1"
    # a time-blind model is never handed a time
    blind = Recording(None, shape(length))
    ConfidenceSampler().generate(blind, SamplingContext.of(cosine, "cpu"), 1, length, generator())
    assert all(time is None for time in blind.times)


def test_samplers_declare_the_full_structure() -> None:
    assert AncestralSampler.structures == ConfidenceSampler.structures == frozenset({"full"})


# -- the one definition of confidence -----------------------------------------------------------


def reference(logits: Tensor, num_regular: int, measure: str) -> Tensor:
    log_p = torch.log_softmax(logits[:, :num_regular].double(), dim=-1)
    if measure == "max_prob":
        return log_p.amax(dim=-1)
    top = log_p.exp().topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_confidence_matches_float64_softmax_in_small_chunks(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    vocab = Vocab(size=12, pad_id=10, mask_id=11)
    monkeypatch.setattr(confidence_module, "CHUNK_ELEMENTS", 37)  # many small chunks
    rows = (5.0 * torch.randn((53, vocab.size), generator=generator(0))).to(dtype)
    rows[:, vocab.mask_id] = 100.0  # MASK and PAD logits must be ignored
    rows[:, vocab.pad_id] = 90.0
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for measure in ("max_prob", "margin"):
        expected = reference(rows.float(), vocab.num_regular, measure).float()
        assert torch.allclose(confidence(rows, vocab.num_regular, measure), expected, atol=tol)
    assert max_log_prob(rows[:0], vocab.num_regular).shape == (0,)
    assert margin(rows[:, :1], 1).tolist() == [0.0] * 53


def test_margin_is_the_probability_gap_not_the_logit_gap() -> None:
    # row 0: logit gap 1 but many rivals (small p1 − p2); row 1: logit gap 0.5, two live ids
    rows = torch.full((2, 8), -40.0)
    rows[0] = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    rows[1, :2] = torch.tensor([0.5, 0.0])
    gap = margin(rows, 8)
    assert gap[1] > gap[0]
    assert torch.allclose(gap.double(), reference(rows, 8, "margin"), atol=1e-7)
    # and it keeps its digits when the two probabilities are nearly equal
    far = torch.tensor([[0.0, -1e-3, 30.0]])
    assert torch.allclose(
        margin(far[:, [0, 1]], 2).double(), reference(far[:, [0, 1]], 2, "margin"), rtol=1e-5
    )
