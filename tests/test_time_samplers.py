"""The uniform time sampler: stratified over the batch with one shared offset."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.plugins import get_registry


def draw(shape: tuple[int, ...], seed: int, eps: float = 1e-3) -> torch.Tensor:
    sampler = UniformTimeSampler(UniformTimeSampler.Params(eps=eps))
    return sampler.sample(shape, torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple),
    seed=st.integers(0, 2**32 - 1),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_exactly_one_draw_per_stratum(shape: tuple[int, ...], seed: int, eps: float) -> None:
    t = draw(shape, seed, eps)
    n = t.numel()
    assert t.shape == shape and t.dtype == torch.float32
    assert bool(((t >= eps) & (t < 1.0)).all())
    u = (t.flatten().double() - eps) / (1.0 - eps)
    bins = torch.floor(u * n).clamp(0, n - 1).long()
    assert torch.equal(bins.sort().values, torch.arange(n))


def test_draw_i_stays_in_stratum_i_and_offset_is_shared() -> None:
    t = draw((4, 5), seed=3).flatten().double()
    eps = 1e-3
    u = (t - eps) / (1 - eps)
    offsets = u * 20 - torch.arange(20)
    assert torch.allclose(offsets, offsets[0].expand(20), atol=1e-4)


def test_same_seed_same_draw_other_seed_other_draw() -> None:
    assert torch.equal(draw((8,), 7), draw((8,), 7))
    assert not torch.equal(draw((8,), 7), draw((8,), 8))


def test_mean_over_seeds_is_the_uniform_mean() -> None:
    means = torch.stack([draw((1,), seed) for seed in range(4000)]).mean()
    assert math.isclose(float(means), (1 + 1e-3) / 2, abs_tol=0.02)


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValidationError):
        UniformTimeSampler.Params(eps=0.0)
    with pytest.raises(ValidationError):
        UniformTimeSampler.Params(epsilon=0.1)  # type: ignore[call-arg]


def test_registered_as_uniform() -> None:
    assert get_registry().load("time_sampler", "uniform") is UniformTimeSampler
