"""The uniform time sampler: stratified over the batch with one independent uniform per stratum."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.interfaces import stratified_uniforms
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


def test_draw_i_stays_in_stratum_i_with_its_own_uniform() -> None:
    t = draw((4, 5), seed=3).flatten().double()
    eps = 1e-3
    u = (t - eps) / (1 - eps)
    offsets = u * 20 - torch.arange(20)
    assert bool(((offsets > -1e-4) & (offsets < 1 + 1e-4)).all()), "draw i lies in stratum i"
    # the offsets are the generator's first 20 float64 uniforms, one per stratum (not one shared)
    expected = torch.rand(20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(offsets, expected, atol=1e-4)
    assert float(offsets.std()) > 0.1


@settings(max_examples=40, deadline=None)
@given(u=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), eps=st.sampled_from([1e-5, 1e-3, 0.1]))
def test_quantile_is_the_inverse_cdf_of_uniform_eps_one(u: list[float], eps: float) -> None:
    sampler = UniformTimeSampler(UniformTimeSampler.Params(eps=eps))
    levels = torch.tensor(u, dtype=torch.float64)
    q = sampler.quantile(levels)
    assert torch.equal(q, eps + (1 - eps) * levels)
    assert float(sampler.quantile(torch.tensor([0.0], dtype=torch.float64))) == eps
    assert float(sampler.quantile(torch.tensor([1.0], dtype=torch.float64))) == 1.0
    assert sampler.is_uniform()


def test_sample_is_the_quantile_of_the_stratified_uniforms() -> None:
    sampler = UniformTimeSampler()
    u = stratified_uniforms((3, 4), torch.Generator().manual_seed(9))
    expected = sampler.quantile(u).float()
    assert torch.equal(sampler.sample((3, 4), torch.Generator().manual_seed(9)), expected)


def test_independent_strata_do_not_raise_the_variance_of_the_batch_mean() -> None:
    """One uniform per stratum (METHODS §1) against the old shared offset and plain iid draws: the
    variance of a batch mean of a smooth integrand is no worse than the lattice's."""
    n, reps = 16, 4000
    g = torch.Generator().manual_seed(0)
    index = torch.arange(n, dtype=torch.float64)

    def batch_means(u: torch.Tensor) -> torch.Tensor:
        return (torch.sin(3 * u) + u**2).mean(dim=1)

    strata = batch_means((torch.rand((reps, n), generator=g, dtype=torch.float64) + index) / n)
    shared = batch_means((torch.rand((reps, 1), generator=g, dtype=torch.float64) + index) / n)
    iid = batch_means(torch.rand((reps, n), generator=g, dtype=torch.float64))
    assert float(strata.var()) < 0.05 * float(iid.var())
    assert float(strata.var()) <= float(shared.var())


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
