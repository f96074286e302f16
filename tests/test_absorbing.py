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
from mdm_core.errors import MdmError
from mdm_core.interfaces import Batch, TimeSampler, Vocab
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


def test_schedules_end_points_and_dtype() -> None:
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for schedule in (LogLinear(1e-3), Cosine(1e-3)):
        alpha = schedule.alpha(ends)
        assert alpha.dtype == torch.float64
        assert torch.allclose(alpha, torch.tensor([1.0, 1e-3], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("linear", 1e-3)


def process(schedule: str = "loglinear", length: int = 32, size: int = 4) -> AbsorbingProcess:
    p = AbsorbingProcess(AbsorbingProcess.Params(schedule=schedule))
    p.setup(VOCAB, length, size, max_steps=10, seed=0)
    return p


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
    assert layout.key_padding is not None and torch.equal(layout.key_padding, batch.attention_mask)
    assert layout.prompt_len is not None and torch.equal(layout.prompt_len, prompt_len)
    assert torch.equal(example.targets, ids)


class DoubledWeight(TimeSampler):
    """A uniform sampler that asks for twice the ELBO weight (a density correction stand-in)."""

    name = "doubled"

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0
    ) -> torch.Tensor:
        return UniformTimeSampler().sample(shape, generator, progress)

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


def test_prepare_before_setup_is_a_clear_error() -> None:
    batch = Batch.from_ids(torch.zeros((1, 4), dtype=torch.long), VOCAB)
    with pytest.raises(MdmError, match="setup"):
        AbsorbingProcess().prepare(batch, UniformTimeSampler(), torch.Generator())


def test_alpha_is_the_schedule() -> None:
    t = torch.tensor([0.25, 0.5])
    assert torch.allclose(process("cosine").alpha(t), Cosine(1e-3).alpha(t))
