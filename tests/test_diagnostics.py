"""The diagnostic evaluators against exact oracles: every t bucket's NELBO and every context bucket's
NLL of the kit's oracle chain are computable by enumeration, and the exact judge of samples is known."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.diagnostics import (
    CONTEXT_NAMES,
    BucketStratified,
    NLLByContextEvaluator,
    NLLByTEvaluator,
    SampleQualityEvaluator,
    context_bucket,
    context_distance,
)
from mdm_core.builtin.evaluators import EVAL_EPS, NLLEvaluator
from mdm_core.builtin.gen_ppl import GenPPLEvaluator
from mdm_core.data.markov import MarkovSource
from mdm_core.errors import MdmError, PluginError, SpecError
from mdm_core.interfaces import RunShape, Vocab
from mdm_core.testing import OracleBackbone, OracleChain, check_evaluator
from mdm_core.testing.evaluator_checks import eval_context, oracle_chain

#: Two-sided false-alarm probability of the t-tests against the exact values.
DELTA = 1e-6
SEEDS = 12
PROCESS_EPS = AbsorbingProcess.Params().eps


def chain_judge(chain: OracleChain) -> Callable[[torch.Tensor], dict[str, float]]:
    """The exact judge of an oracle chain's samples, as the Markov source's ``sample_quality``."""

    def judge(tokens: torch.Tensor) -> dict[str, float]:
        seqs = tokens.long()
        steps = chain.transition[seqs[:, :-1], seqs[:, 1:]]
        logp = torch.cat([chain.initial[seqs[:, :1]], steps], dim=1).log()
        possible = torch.isfinite(logp)
        return {
            "true_nll": float(-logp[possible].mean()),
            "impossible_frac": float(1 - possible.double().mean()),
        }

    return judge


@pytest.fixture(scope="module")
def oracle() -> tuple[OracleChain, OracleBackbone, torch.Tensor]:
    chain = oracle_chain()
    vocab = Vocab(size=chain.num_states + 2, pad_id=chain.num_states, mask_id=chain.num_states + 1)
    model = OracleBackbone(None, RunShape(vocab=vocab, seq_len=chain.length), chain=chain)
    ids = chain.sample(192, torch.Generator().manual_seed(7))
    return chain, model, ids


def all_masks(length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([False, True], repeat=length)))


def gauss(lo: float, hi: float, nodes: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [lo, hi]: exact for the polynomials integrated here."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def neighbour_conditional(chain: OracleChain, x: torch.Tensor, hidden: torch.Tensor, i: int) -> float:
    """p(x_i | visible) from the nearest visible neighbours only (the Markov property), by
    transition-matrix powers: an independent computation of what the oracle enumerates."""
    p = chain.transition
    left = max((j for j in range(i) if not hidden[j]), default=None)
    right = min((j for j in range(i + 1, chain.length) if not hidden[j]), default=None)
    if left is None:
        law = chain.initial @ torch.linalg.matrix_power(p, i)
    else:
        law = torch.linalg.matrix_power(p, i - left)[x[left]]
    if right is not None:
        law = law * torch.linalg.matrix_power(p, right - i)[:, x[right]]
    return float(law[x[i]] / law.sum())


def t_test(reports: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|mean − truth| and the allowance t_{R−1}(δ)·s/√R (+ float rounding), per column."""
    runs = reports.shape[0]
    allowed = stats.t.isf(DELTA / 2, runs - 1) * reports.std(axis=0, ddof=1) / math.sqrt(runs) + 1e-6
    return np.abs(reports.mean(axis=0) - truth), allowed


# -- nll_by_t ---------------------------------------------------------------------------------------


def exact_by_t(chain: OracleChain, ids: torch.Tensor, edges: list[float]) -> np.ndarray:
    """Each bucket's mean NELBO density: (1/width)∫ w(t)·E_M[Σ_masked −log p(x_i | visible)]/L dt,
    with the mask law of the log-linear process (mask prob (1 − ε)t, weight 1/t)."""
    masks = all_masks(chain.length)
    rows = ids.repeat_interleave(masks.shape[0], dim=0)
    hidden = masks.repeat(ids.shape[0], 1)
    cond = chain.conditionals(rows, hidden).gather(-1, rows[..., None]).squeeze(-1)
    loss = -(cond.log() * hidden).sum(dim=1).reshape(ids.shape[0], -1).mean(dim=0) / chain.length
    sizes = masks.sum(dim=1).numpy()
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        t, w = gauss(lo, hi)
        m = (1 - PROCESS_EPS) * t[:, None]
        law = m**sizes * (1 - m) ** (chain.length - sizes)  # [nodes, masks]
        density = (law * loss.numpy()).sum(axis=1) / t
        out.append(float((w * density).sum()) / (hi - lo))
    return np.array(out)


def test_bucket_times_put_the_same_draws_in_every_bucket() -> None:
    times = BucketStratified(buckets=5, per_bucket=3)
    t = times.sample((4 * 15, 2), torch.Generator().manual_seed(0)).double()
    edges = torch.tensor(times.edges(), dtype=torch.float64)
    bucket = torch.bucketize(t, edges[1:-1], right=True)
    expected = (torch.arange(60) % 15 // 3)[:, None].expand(60, 2)
    assert torch.equal(bucket, expected)
    assert times.edges()[0] == EVAL_EPS and times.edges()[-1] == 1.0
    with pytest.raises(MdmError, match="multiple of 15"):
        times.sample((16,), torch.Generator())


def test_nll_by_t_matches_every_exact_bucket_and_the_nll_evaluator(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    evaluator = NLLByTEvaluator(NLLByTEvaluator.Params(buckets=5, draws_per_bucket=2))
    names = [f"nll_by_t/{n}" for n in evaluator.bucket_names()]
    assert names[0] == "nll_by_t/0.001-0.201" and names[-1] == "nll_by_t/0.800-1.000"
    truth = exact_by_t(chain, ids, BucketStratified(5, 2).edges())
    by_t, nll, mean_of_buckets = [], [], []
    for seed in range(SEEDS):
        ctx = eval_context(model, chain, ids, seed)
        metrics = evaluator.evaluate(ctx)
        assert set(metrics) == {*names, "nll_by_t/all"}
        by_t.append([metrics[n] for n in names])
        mean_of_buckets.append(metrics["nll_by_t/all"])
        nll.append(NLLEvaluator(NLLEvaluator.Params(draws=8)).evaluate(ctx)["nll"])
    reports = np.array(by_t)
    gap, allowed = t_test(reports, truth)
    assert (gap <= allowed).all(), f"buckets off the exact values: {reports.mean(0)} vs {truth}"
    # Equal widths: the NELBO is the plain mean of the bucket densities, reported as nll_by_t/all.
    assert np.allclose(reports.mean(axis=1), mean_of_buckets, rtol=1e-12)
    # ... and it estimates what the nll evaluator reports (the exact −log p(x) up to the cut-offs).
    a, b = np.array(mean_of_buckets), np.array(nll)
    spread = math.sqrt(a.var(ddof=1) / SEEDS + b.var(ddof=1) / SEEDS)
    assert abs(a.mean() - b.mean()) <= stats.t.isf(DELTA / 2, SEEDS - 1) * spread + 1e-6
    exact = float(-chain.log_prob(ids).mean()) / chain.length
    assert abs(truth.mean() - exact) < 2e-3  # the truth itself: the uniform-t NELBO of the oracle
    # The buckets tell noise levels apart: the oracle's density rises with t on this chain.
    assert truth[-1] > truth[0]


def test_one_bucket_is_the_whole_nelbo_and_an_empty_set_is_an_error(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    one = NLLByTEvaluator(NLLByTEvaluator.Params(buckets=1)).evaluate(eval_context(model, chain, ids, 3))
    assert list(one) == ["nll_by_t/0.001-1.000", "nll_by_t/all"]
    assert one["nll_by_t/all"] == one["nll_by_t/0.001-1.000"]
    empty = eval_context(model, chain, ids[:0], 0)
    with pytest.raises(MdmError, match="no non-pad"):
        NLLByTEvaluator().evaluate(empty)


# -- nll_by_context ---------------------------------------------------------------------------------


def test_context_distance_and_buckets() -> None:
    visible = torch.tensor([[True] + [False] * 11, [False] * 12, [False] * 5 + [True] + [False] * 6])
    distance = context_distance(visible)
    assert distance[0].tolist() == list(map(float, range(12)))
    assert torch.isinf(distance[1]).all()
    assert distance[2].tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    buckets = context_bucket(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 9.0, 40.0, math.inf]))
    assert [CONTEXT_NAMES[b] for b in buckets] == ["1", "2", "3-4", "3-4", "5-8", "5-8", "9+", "9+", "9+"]


def test_the_oracle_conditional_depends_only_on_the_nearest_visible_neighbours(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, _, ids = oracle
    masks = all_masks(chain.length)
    for x in ids[:16]:
        cond = chain.conditionals(x.expand(len(masks), -1), masks)
        for m, hidden in enumerate(masks):
            for i in torch.nonzero(hidden).flatten().tolist():
                assert math.isclose(
                    cond[m, i, x[i]].item(), neighbour_conditional(chain, x, hidden, i), rel_tol=1e-9
                )


def exact_by_context(chain: OracleChain, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per context bucket: E[Σ −log p] / E[count] and the share of masked tokens, under U(ε_eval, 1)."""
    masks = all_masks(chain.length)
    t, w = gauss(EVAL_EPS, 1.0)
    m = (1 - PROCESS_EPS) * t
    buckets = len(CONTEXT_NAMES)
    nll, count = np.zeros(buckets), np.zeros(buckets)
    for hidden in masks:
        k = int(hidden.sum())
        chance = float((w * m**k * (1 - m) ** (chain.length - k)).sum()) / (1 - EVAL_EPS)
        visible = [j for j in range(chain.length) if not hidden[j]]
        for i in torch.nonzero(hidden).flatten().tolist():
            distance = min((abs(i - j) for j in visible), default=math.inf)
            b = next((k for k, edge in enumerate((1, 2, 4, 8)) if distance <= edge), 4)
            for x in ids:
                nll[b] += chance * -math.log(neighbour_conditional(chain, x, hidden, i))
                count[b] += chance
    with np.errstate(invalid="ignore"):
        return nll / count, count / count.sum()


def test_nll_by_context_matches_exact_enumeration(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    ids = ids[:48]
    mean, share = exact_by_context(chain, ids)
    present = [i for i, s in enumerate(share) if s > 0]
    assert [CONTEXT_NAMES[i] for i in present] == ["1", "2", "3-4", "9+"]  # L = 4: never 5–8 away
    reports, shares = [], []
    for seed in range(SEEDS):
        metrics = NLLByContextEvaluator(NLLByContextEvaluator.Params(draws=16)).evaluate(
            eval_context(model, chain, ids, seed)
        )
        assert "nll_by_context/5-8" not in metrics and metrics["nll_by_context/share/5-8"] == 0.0
        assert math.isclose(sum(metrics[f"nll_by_context/share/{n}"] for n in CONTEXT_NAMES), 1.0)
        reports.append([metrics[f"nll_by_context/{CONTEXT_NAMES[i]}"] for i in present])
        shares.append([metrics[f"nll_by_context/share/{CONTEXT_NAMES[i]}"] for i in present])
    for got, truth in ((np.array(reports), mean[present]), (np.array(shares), share[present])):
        gap, allowed = t_test(got, truth)
        assert (gap <= allowed).all(), f"context buckets off the exact values: {got.mean(0)} vs {truth}"
    # Locality: a token next to a visible one is easier to predict than one with nothing visible.
    assert mean[0] < mean[-1]


# -- sample_quality ---------------------------------------------------------------------------------


def test_sample_quality_scores_the_exact_denoiser_as_possible_and_noise_as_not(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    params = SampleQualityEvaluator.Params(
        num_samples=64, sampler="confidence", sampler_params={"steps": chain.length}
    )
    evaluator = SampleQualityEvaluator(params, judge=chain_judge(chain))
    exact = evaluator.evaluate(eval_context(model, chain, ids, 0))
    # One greedy reveal per step from the exact conditionals never makes an impossible transition.
    assert set(exact) == {
        f"sample_quality/confidence/{k}" for k in ("nfe", "entropy", "true_nll", "impossible_frac")
    }
    assert exact["sample_quality/confidence/impossible_frac"] == 0.0
    assert exact["sample_quality/confidence/nfe"] == float(chain.length)
    # Revealing every token at once from the same exact marginals ignores their dependence.
    params = SampleQualityEvaluator.Params(num_samples=256, sampler="ancestral", sampler_params={"steps": 1})
    parallel = SampleQualityEvaluator(params, judge=chain_judge(chain)).evaluate(
        eval_context(model, chain, ids, 0)
    )
    assert parallel["sample_quality/ancestral/nfe"] == 1.0
    assert parallel["sample_quality/ancestral/impossible_frac"] > 0.02


def test_sample_quality_uses_the_markov_source_judge(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    source = MarkovSource(MarkovSource.Params(vocab_size=3, branching=2, seq_len=4))
    ctx = eval_context(model, chain, ids, 0)
    ctx.data_source = source
    metrics = SampleQualityEvaluator(SampleQualityEvaluator.Params(num_samples=16)).evaluate(ctx)
    assert set(metrics) == {f"sample_quality/{k}" for k in ("nfe", "entropy", "true_nll", "impossible_frac")}


def test_sample_quality_refuses_data_without_a_judge_and_bad_samplers(
    oracle: tuple[OracleChain, OracleBackbone, torch.Tensor],
) -> None:
    chain, model, ids = oracle
    with pytest.raises(MdmError, match="no exact judge of samples") as caught:
        SampleQualityEvaluator().evaluate(eval_context(model, chain, ids, 0))
    assert caught.value.exit_code == 2
    with pytest.raises(SpecError, match=r"sampler_params\.steps: .*for sampler 'confidence'"):
        SampleQualityEvaluator(
            SampleQualityEvaluator.Params(sampler="confidence", sampler_params={"steps": 0})
        )
    with pytest.raises(SpecError, match="given without"):
        SampleQualityEvaluator(SampleQualityEvaluator.Params(sampler_params={"steps": 3}))
    # A judge with nothing to score (every transition impossible: NaN) must not stop the run.
    blind = SampleQualityEvaluator(judge=lambda tokens: {"true_nll": math.nan, "impossible_frac": 1.0})
    metrics = blind.evaluate(eval_context(model, chain, ids, 0))
    assert "sample_quality/true_nll" not in metrics and metrics["sample_quality/impossible_frac"] == 1.0
    with pytest.raises((SpecError, PluginError), match="nonexistent"):
        SampleQualityEvaluator(SampleQualityEvaluator.Params(sampler="nonexistent"))


# -- conformance ------------------------------------------------------------------------------------


def test_the_diagnostics_pass_the_evaluator_kit() -> None:
    check_evaluator(lambda: NLLByTEvaluator(NLLByTEvaluator.Params(buckets=4)), max_examples=2)
    check_evaluator(lambda: NLLByContextEvaluator(NLLByContextEvaluator.Params(draws=4)), max_examples=2)
    judge = chain_judge(oracle_chain())
    check_evaluator(
        lambda: SampleQualityEvaluator(SampleQualityEvaluator.Params(num_samples=8), judge=judge),
        max_examples=2,
    )
    params = GenPPLEvaluator.Params(judge="(the chain, injected)", num_samples=8)
    check_evaluator(lambda: GenPPLEvaluator(params, judge=judge), max_examples=2)
