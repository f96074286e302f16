"""Conformance laws of a TimeSampler (see ``mdm_core.testing``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.interfaces import TimeSampler, stratified_uniforms
from mdm_core.testing.laws import generator, law_settings, require


def check_time_sampler(make: Callable[[], TimeSampler], *, max_examples: int = 30) -> None:
    """Draws in (0, 1] of the asked shape, finite; same seed ⇒ same draw; finite weights/density;
    ``quantile`` monotone non-decreasing into (0, 1]; ``sample`` equals the quantile of the
    stratified uniforms (one independent uniform per stratum), so the draws are stratified in the
    law's own CDF; and a sampler that says ``is_uniform()`` has the quantile ``eps + (1 − eps)u``
    (``eps`` = its ``quantile(0)``).
    """

    @law_settings(max_examples)
    @given(
        shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
        seed=st.integers(0, 2**32 - 1),
        progress=st.floats(0.0, 1.0),
    )
    def laws(shape: tuple[int, ...], seed: int, progress: float) -> None:
        sampler = make()
        t = sampler.sample(shape, generator(seed), progress)
        require(isinstance(t, Tensor) and t.is_floating_point(), "sample() must return a float tensor")
        require(tuple(t.shape) == shape, f"sample({shape}) returned shape {tuple(t.shape)}")
        require(torch.isfinite(t).all(), "sample() returned a non-finite t")
        require(((t > 0) & (t <= 1)).all(), f"t must lie in (0, 1]; got min {t.min()}, max {t.max()}")
        again = make().sample(shape, generator(seed), progress)
        require(torch.equal(t, again), "same seed must give the same draw")
        weight = sampler.loss_weight(t, progress)
        require(weight.shape == t.shape, "loss_weight(t) must have t's shape")
        require(torch.isfinite(weight).all() and (weight >= 0).all(), "loss_weight must be finite and ≥ 0")
        density = sampler.log_density(t, progress)
        require(density.shape == t.shape, "log_density(t) must have t's shape")
        require(torch.isfinite(density).all(), "log_density must be finite at the sampler's own draws")
        grid = torch.linspace(0.01, 0.99, 99)
        on_grid = sampler.log_density(grid, progress)
        require(
            not on_grid.isnan().any() and not (on_grid == math.inf).any(),
            "log_density on (0, 1) must be a number or −inf (never NaN or +inf)",
        )
        _quantile_laws(sampler, shape, seed, progress, t)

    laws()


def _quantile_laws(
    sampler: TimeSampler, shape: tuple[int, ...], seed: int, progress: float, t: Tensor
) -> None:
    u = stratified_uniforms(shape, generator(seed))
    expected = sampler.quantile(u, progress)
    require(expected.shape == u.shape, "quantile(u) must have u's shape")
    require(
        torch.equal(t, expected.to(torch.float32)),
        "sample() must equal quantile(stratified_uniforms(shape, generator)) (one uniform per stratum)",
    )
    levels = torch.cat([torch.linspace(0.0, 1.0, 257, dtype=torch.float64), u.flatten()]).sort().values
    q = sampler.quantile(levels, progress)
    require(
        torch.isfinite(q).all() and ((q > 0) & (q <= 1)).all(), "quantile(u) must lie in (0, 1] on [0, 1]"
    )
    require(bool((q[1:] >= q[:-1]).all()), "quantile(u) must be monotone non-decreasing in u")
    if sampler.is_uniform():
        eps = float(q[0])
        line = eps + (1.0 - eps) * levels
        require(
            torch.allclose(q.double(), line, rtol=0.0, atol=1e-12),
            "is_uniform() sampler must have the quantile eps + (1 − eps)u",
        )
