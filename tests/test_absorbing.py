"""Schedules and the absorbing forward process (METHODS §1)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.schedules import Cosine, LogLinear, make_schedule
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.interfaces import Batch, FullLayout, RunShape, SamplingContext, Vocab
from mdm_core.testing import FixedTimeSampler

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)
unit_times = st.floats(1e-4, 1.0, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(t=unit_times, eps=st.sampled_from([0.0, 1e-3, 0.05]))
def test_loglinear_weight_is_exactly_one_over_t(t: float, eps: float) -> None:
    times = torch.tensor([t], dtype=torch.float64)
    schedule = LogLinear(eps)
    assert torch.equal(schedule.weight(times), 1.0 / times)
    assert torch.allclose(schedule.alpha(times), 1 - (1 - eps) * times)


@settings(max_examples=50, deadline=None)
@given(t=st.floats(1e-3, 1.0), name=st.sampled_from(["loglinear", "cosine"]))
def test_weight_is_minus_alpha_prime_over_one_minus_alpha(t: float, name: str) -> None:
    schedule = make_schedule(name, 1e-3)
    times = torch.tensor([t], dtype=torch.float64, requires_grad=True)
    alpha = schedule.alpha(times)
    (derivative,) = torch.autograd.grad(alpha.sum(), times)
    with torch.no_grad():
        expected = -derivative / (1 - alpha)
        assert torch.allclose(schedule.weight(times), expected, rtol=1e-7)
        assert torch.allclose(schedule.mask_prob(times), 1 - alpha, rtol=1e-9, atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    t=st.floats(0.0, 1.0),
    name=st.sampled_from(["loglinear", "cosine"]),
    eps=st.sampled_from([0.0, 1e-3, 0.2]),
)
def test_t_of_alpha_inverts_alpha(t: float, name: str, eps: float) -> None:
    schedule = make_schedule(name, eps)
    times = torch.tensor([t], dtype=torch.float64, requires_grad=True)
    alpha = schedule.alpha(times)
    (slope,) = torch.autograd.grad(alpha.sum(), times)
    times, alpha = times.detach(), alpha.detach()
    # α is known to an ulp of 1, so t(α) can only be as exact as ulp / |α'(t)| (cosine is flat at 0)
    conditioning = float(4 * torch.finfo(torch.float64).eps / slope.abs().clamp(min=1e-300))
    assert torch.allclose(schedule.t_of_alpha(alpha), times, rtol=1e-9, atol=1e-12 + conditioning)
    # and the other way round, on α ∈ [ε, 1]
    level = torch.tensor([eps + (1 - eps) * t], dtype=torch.float64)
    assert torch.allclose(schedule.alpha(schedule.t_of_alpha(level)), level, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["loglinear", "cosine"])
def test_t_of_alpha_is_accurate_at_small_t_and_clamps_outside(name: str) -> None:
    schedule = make_schedule(name, 1e-3)
    tiny = torch.tensor([1e-7], dtype=torch.float64)
    assert torch.allclose(schedule.t_of_alpha(schedule.alpha(tiny)), tiny, rtol=1e-6)
    ends = schedule.t_of_alpha(torch.tensor([1.5, 1.0, 1e-3, 0.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([0.0, 0.0, 1.0, 1.0])


def test_schedules_end_points_and_dtype() -> None:
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for schedule in (LogLinear(1e-3), Cosine(1e-3)):
        alpha = schedule.alpha(ends)
        assert alpha.dtype == torch.float64
        assert torch.allclose(alpha, torch.tensor([1.0, 1e-3], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 1e-3)


def process(schedule: str = "loglinear", length: int = 32, size: int = 4) -> AbsorbingProcess:
    shape = RunShape(vocab=VOCAB, seq_len=length, batch_size=size, max_steps=10)
    return AbsorbingProcess(AbsorbingProcess.Params(schedule=schedule), shape)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
@pytest.mark.parametrize("t", [0.1, 0.5, 0.95])
def test_mask_rate_matches_one_minus_alpha(schedule: str, t: float) -> None:
    ids = torch.randint(0, VOCAB.num_regular, (128, 64), generator=torch.Generator().manual_seed(0))
    batch = Batch.from_ids(ids, VOCAB)
    p = process(schedule, 64, 128)
    example = p.prepare(batch, FixedTimeSampler(t), torch.Generator().manual_seed(1))
    expected = float(p.schedule.mask_prob(torch.tensor(t)))
    rate = float(example.loss_mask.float().mean())
    sigma = math.sqrt(expected * (1 - expected) / ids.numel())
    assert abs(rate - expected) < 5 * sigma + 1e-9
    assert torch.allclose(example.weights, p.schedule.weight(torch.tensor(t)).expand(128, 64))


def test_prompt_and_padding_never_masked_and_counted_out() -> None:
    ids = torch.randint(0, VOCAB.num_regular, (3, 10), generator=torch.Generator().manual_seed(0))
    ids[0, 7:] = VOCAB.pad_id
    prompt_len = torch.tensor([2, 0, 9])
    batch = Batch.from_ids(ids, VOCAB, prompt_len)
    example = process(length=10, size=3).prepare(
        batch, FixedTimeSampler(1.0), torch.Generator().manual_seed(0)
    )
    eligible = batch.attention_mask & ~batch.prompt_mask
    assert not bool((example.loss_mask & ~eligible).any())
    assert torch.equal(example.input_ids[~eligible], ids[~eligible])
    assert float(example.normaliser) == float(eligible.sum()) == 5 + 10 + 1
    layout = example.layout
    assert isinstance(layout, FullLayout)
    assert layout.key_padding is not None and torch.equal(layout.key_padding, batch.attention_mask)
    assert torch.equal(example.targets, ids)


class DoubledWeight(UniformTimeSampler):
    """A uniform sampler that asks for twice the ELBO weight (a density correction stand-in)."""

    name = "doubled"

    def loss_weight(self, t: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        return torch.full_like(t, 2.0)


def test_time_sampler_loss_weight_multiplies_the_elbo_weight() -> None:
    batch = Batch.from_ids(torch.zeros((4, 8), dtype=torch.long), VOCAB)
    p = process(length=8)
    plain = p.prepare(batch, UniformTimeSampler(), torch.Generator().manual_seed(5))
    doubled = p.prepare(batch, DoubledWeight(), torch.Generator().manual_seed(5))
    assert torch.equal(plain.loss_mask, doubled.loss_mask)
    assert torch.allclose(doubled.weights, 2 * plain.weights)
    assert torch.allclose(plain.weights, (1 / plain.t)[:, None].expand(4, 8))


def test_built_with_its_run_shape() -> None:
    p = process(length=6, size=2)
    assert p.vocab == VOCAB and p.seq_len == 6 and p.shape is not None and p.shape.batch_size == 2
    with pytest.raises(TypeError):
        AbsorbingProcess()  # type: ignore[call-arg]


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_inference_record_is_the_schedule_and_its_inverse(schedule: str) -> None:
    p = process(schedule)
    record = p.inference()
    t = torch.tensor([0.25, 0.5, 0.9], dtype=torch.float64)
    assert record.structure == "full" == AbsorbingProcess.structure(p.params)
    assert torch.equal(record.alpha(t), p.schedule.alpha(t))
    assert torch.allclose(record.time_of_alpha(record.alpha(t)), t)
    # the t at which a fraction of the tokens is masked: 1 − α_t = fraction
    fraction = torch.tensor([0.1, 0.5], dtype=torch.float64)
    assert torch.allclose(1 - p.schedule.alpha(record.time_for_masked_fraction(fraction)), fraction)
    assert isinstance(record.layout(7), FullLayout) and record.block_size is None
    assert SamplingContext.of(p, "cpu").alpha(t).equal(p.schedule.alpha(t))


def test_alpha_is_the_schedule() -> None:
    t = torch.tensor([0.25, 0.5])
    assert torch.allclose(process("cosine").alpha(t), Cosine(1e-3).alpha(t))
