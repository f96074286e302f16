"""The bell sampler draws from the law it claims, stratified, and its weights undo its density."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mdm_plugin_bell.sampler import BellTimeSampler
from pydantic import ValidationError
from scipy import integrate, stats

from mdm_core.interfaces import stratified_uniforms
from mdm_core.plugins import get_registry
from mdm_core.testing import check_time_sampler

EPS = 1e-3
N = 4096


def make(**kw: Any) -> BellTimeSampler:
    return BellTimeSampler(BellTimeSampler.Params(**kw))


def draw(sampler: BellTimeSampler, n: int = N, seed: int = 0, progress: float = 0.0) -> np.ndarray:
    t = sampler.sample((n,), torch.Generator().manual_seed(seed), progress)
    assert t.dtype == torch.float32 and t.shape == (n,)
    return t.double().numpy()


def truncated(dist: Any, lo: float = EPS, hi: float = 1.0) -> Any:
    """CDF of a frozen scipy distribution conditioned on [lo, hi] (independent of the plug-in)."""
    c_lo, c_hi = dist.cdf(lo), dist.cdf(hi)
    return lambda t: np.clip((dist.cdf(t) - c_lo) / (c_hi - c_lo), 0.0, 1.0)


def uniform_cdf(t: np.ndarray) -> np.ndarray:
    return np.clip((t - EPS) / (1 - EPS), 0.0, 1.0)


def logit_normal_cdf(mu: float, s: float) -> Any:
    base = truncated(stats.norm(mu, s), float(np.log(EPS / (1 - EPS))), np.inf)
    return lambda t: base(np.log(t) - np.log1p(-t))


CASES: list[tuple[dict[str, Any], Any]] = [
    ({"family": "beta", "a": 2.0, "b": 2.0}, truncated(stats.beta(2.0, 2.0))),
    ({"family": "beta", "a": 0.7, "b": 3.0}, truncated(stats.beta(0.7, 3.0))),
    ({"family": "logit_normal"}, logit_normal_cdf(0.0, 1.0)),
    ({"family": "logit_normal", "mu": 0.5, "s": 1.5}, logit_normal_cdf(0.5, 1.5)),
    ({"family": "truncated_normal"}, truncated(stats.norm(0.5, 0.2))),
    ({"family": "truncated_normal", "mu": 0.1, "sigma": 0.3}, truncated(stats.norm(0.1, 0.3))),
]


@pytest.mark.parametrize(("params", "cdf"), CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_draws_follow_the_analytic_law(params: dict[str, Any], cdf: Any) -> None:
    assert stats.kstest(draw(make(**params)), cdf).pvalue > 0.01


@pytest.mark.parametrize("rho", [0.25, 0.8])
def test_mixture_draws_follow_the_mixture_law(rho: float) -> None:
    beta = truncated(stats.beta(3.0, 3.0))
    t = draw(make(family="beta", a=3.0, b=3.0, rho=rho))
    assert stats.kstest(t, lambda x: (1 - rho) * beta(x) + rho * uniform_cdf(x)).pvalue > 0.01
    # Against the pure bell the mixture is detectably different.
    assert stats.kstest(t, beta).pvalue < 1e-3


@pytest.mark.parametrize(("params", "cdf"), [*CASES[::2], ({"rho": 0.3}, None)])
def test_draws_are_stratified_one_per_stratum_of_the_cdf(params: dict[str, Any], cdf: Any) -> None:
    sampler = make(**params)
    n = 257
    t = draw(sampler, n=n, seed=3)
    u = np.sort(sampler.law().cdf(t))
    i = np.arange(n)
    # float32 rounding of t moves F(t) by far less than this slack.
    assert np.all((u >= i / n - 1e-5) & (u <= (i + 1) / n + 1e-5))
    if cdf is not None:
        assert np.allclose(np.sort(cdf(t)), u, atol=1e-5)


def test_draws_are_the_quantiles_of_one_uniform_per_stratum() -> None:
    sampler = make(family="beta", a=2.0, b=5.0, rho=0.3)
    u = stratified_uniforms((64,), torch.Generator().manual_seed(4))
    t = sampler.sample((64,), torch.Generator().manual_seed(4))
    assert torch.equal(t, sampler.quantile(u).float())
    # draw i lies in stratum i of the law's CDF (batch order is the loader's business)
    cdf = sampler.law().cdf(t.double().numpy())
    assert np.all(np.abs(cdf * 64 - np.arange(64) - 0.5) <= 0.5 + 1e-4)


def ppf_truncated(dist: Any, u: np.ndarray, lo: float = EPS, hi: float = 1.0) -> np.ndarray:
    """Inverse CDF of a frozen scipy distribution conditioned on [lo, hi] (independent of the plug-in)."""
    c_lo, c_hi = dist.cdf(lo), dist.cdf(hi)
    return np.asarray(dist.ppf(c_lo + u * (c_hi - c_lo)))


QUANTILE_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"family": "beta", "a": 2.0, "b": 2.0}, lambda u: ppf_truncated(stats.beta(2.0, 2.0), u)),
    ({"family": "beta", "a": 0.7, "b": 3.0}, lambda u: ppf_truncated(stats.beta(0.7, 3.0), u)),
    (
        {"family": "logit_normal", "mu": 0.5, "s": 1.5},
        lambda u: 1 / (1 + np.exp(-ppf_truncated(stats.norm(0.5, 1.5), u, np.log(EPS / (1 - EPS)), np.inf))),
    ),
    (
        {"family": "truncated_normal", "mu": 0.1, "sigma": 0.3},
        lambda u: ppf_truncated(stats.norm(0.1, 0.3), u),
    ),
]


@pytest.mark.parametrize(
    ("params", "ppf"), QUANTILE_CASES, ids=lambda v: str(v) if isinstance(v, dict) else ""
)
def test_quantile_is_the_exact_inverse_cdf_of_every_family(params: dict[str, Any], ppf: Any) -> None:
    sampler = make(**params)
    u = np.linspace(0.0, 1.0, 201)
    q = sampler.quantile(torch.from_numpy(u)).numpy()
    assert np.allclose(q, np.clip(ppf(u), EPS, 1.0), rtol=1e-9, atol=1e-12)
    assert q[0] == pytest.approx(EPS, abs=1e-12) and q[-1] == 1.0
    assert np.all(np.diff(q) >= 0)


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.9])
def test_mixture_quantile_inverts_the_mixture_cdf_to_machine_precision(rho: float) -> None:
    sampler = make(family="beta", a=3.0, b=1.5, rho=rho)
    law = sampler.law()
    u = np.concatenate([np.linspace(0.0, 1.0, 101), np.random.default_rng(0).random(300)])
    q = sampler.quantile(torch.from_numpy(u)).numpy()
    assert np.allclose(law.cdf(q), u, rtol=0.0, atol=1e-14)
    # the smallest t with F(t) ≥ u: one float below, the CDF is already under u (where F rises)
    below = np.nextafter(q, 0.0)
    rising = (q > EPS) & (law.pdf(q) > 0)
    assert np.all(law.cdf(below)[rising] <= u[rising] + 1e-15)
    order = np.argsort(u)
    assert np.all(np.diff(q[order]) >= 0)


def test_quantile_follows_the_anneal_to_the_uniform_law() -> None:
    sampler = make(family="logit_normal", rho=0.2, anneal=0.5)
    u = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    at_end = sampler.quantile(u, progress=1.0)
    assert torch.allclose(at_end, EPS + (1 - EPS) * u, atol=1e-12)
    assert not torch.allclose(sampler.quantile(u, progress=0.2), at_end, atol=1e-3)
    halfway = sampler.law(0.75)
    assert halfway.rho == pytest.approx(0.6)
    assert np.allclose(halfway.cdf(sampler.quantile(u, 0.75).numpy()), u.numpy(), atol=1e-14)
    assert not sampler.is_uniform() and make(rho=1.0).is_uniform()


@pytest.mark.parametrize(
    "params",
    [
        {"rho": 0.2, "weighting": "importance"},
        {"family": "beta", "a": 0.8, "b": 4.0, "rho": 0.1, "weighting": "importance"},
    ],
)
def test_importance_weights_average_to_one_and_undo_the_density(params: dict[str, Any]) -> None:
    sampler = make(**params)
    t = torch.from_numpy(draw(sampler, seed=7)).float()
    w = sampler.loss_weight(t).double()
    assert abs(w.mean().item() - 1.0) < 0.02
    assert w.max().item() <= 1 / params["rho"] + 1e-6
    expected = 1.0 / ((1 - EPS) * torch.exp(sampler.log_density(t).double()))
    assert torch.allclose(w, expected, rtol=1e-5)


def test_elbo_weighting_leaves_the_weight_alone() -> None:
    t = torch.linspace(EPS, 1.0, 50)
    assert torch.equal(make(family="beta").loss_weight(t), torch.ones(50))


def test_anneal_makes_the_law_uniform_at_the_end() -> None:
    sampler = make(family="beta", a=4.0, b=4.0, rho=0.1, anneal=0.2)
    assert sampler.rho_at(0.5) == pytest.approx(0.1)
    assert sampler.rho_at(0.9) == pytest.approx(0.55)
    assert stats.kstest(draw(sampler, progress=1.0), uniform_cdf).pvalue > 0.01
    assert stats.kstest(draw(sampler, progress=0.5), uniform_cdf).pvalue < 1e-6
    t = torch.linspace(0.01, 1.0, 20)
    uniform_log_density = torch.full((20,), -np.log1p(-EPS), dtype=torch.float32)
    assert torch.allclose(sampler.log_density(t, 1.0), uniform_log_density)


@pytest.mark.parametrize(
    "params",
    [
        {"family": "beta", "a": 2.5, "b": 1.5},
        {"family": "logit_normal", "s": 0.7, "rho": 0.3},
        {"family": "truncated_normal", "mu": 0.9, "sigma": 0.15},
    ],
)
def test_density_integrates_to_one_and_is_zero_outside(params: dict[str, Any]) -> None:
    sampler = make(**params)

    def density(x: float) -> float:
        return float(torch.exp(sampler.log_density(torch.tensor([x], dtype=torch.float64), 0.3)))

    total, _ = integrate.quad(density, EPS, 1.0, limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)
    outside = sampler.log_density(torch.tensor([0.0, EPS / 2, 1.5]))
    assert torch.all(outside == -torch.inf)


def test_same_seed_same_draw_and_different_seed_different_draw() -> None:
    sampler = make(rho=0.4)
    assert np.array_equal(draw(sampler, n=33, seed=5), draw(sampler, n=33, seed=5))
    assert not np.array_equal(draw(sampler, n=33, seed=5), draw(sampler, n=33, seed=6))


def test_draws_keep_the_requested_shape_and_range() -> None:
    t = make(family="truncated_normal", mu=0.0, sigma=0.05).sample((3, 5), torch.Generator().manual_seed(0))
    assert t.shape == (3, 5)
    assert bool(((t >= EPS) & (t <= 1.0)).all())


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"a": 0.0}, "greater than 0"),
        ({"rho": 1.5}, "less than or equal to 1"),
        ({"anneal": -0.1}, "greater than or equal to 0"),
        ({"family": "truncated_normal", "mu": 1.4}, "mu in [0, 1]"),
        ({"weighting": "importance"}, "needs rho > 0"),
        ({"mu": -40.0}, "of its probability on [eps, 1]"),
        ({"family": "gamma"}, "beta"),
        ({"familly": "beta"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_parameters_are_clear_errors(params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        BellTimeSampler.Params(**params)
    assert fragment in str(info.value)


def test_progress_outside_the_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="progress"):
        make().sample((4,), torch.Generator().manual_seed(0), progress=1.5)


def test_registered_under_its_name() -> None:
    assert get_registry().load("time_sampler", "bell") is BellTimeSampler


@pytest.mark.parametrize(
    "params",
    [
        {"family": "beta"},
        {"family": "logit_normal"},
        {"family": "truncated_normal"},
        {"family": "beta", "a": 3.0, "b": 3.0, "rho": 0.2, "anneal": 0.3, "weighting": "importance"},
    ],
)
def test_conformance_kit(params: dict[str, Any]) -> None:
    check_time_sampler(lambda: make(**params), max_examples=15)
