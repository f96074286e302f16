"""The Markov quick-start corpus: exact stationary law and entropy floor, determinism, scoring."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.data.loader import rows_tensor
from mdm_core.data.markov import MarkovChain, MarkovSource
from mdm_core.errors import MdmError


@pytest.fixture(scope="module")
def default_bundle():
    source = MarkovSource()
    return source, source.load(seed=0)


chains = st.integers(2, 16).flatmap(
    lambda v: st.tuples(st.just(v), st.integers(2, v), st.floats(0.05, 5.0), st.integers(0, 2**31 - 1))
)


@settings(max_examples=40, deadline=None)
@given(chains)
def test_chain_is_stochastic_primitive_and_pi_stationary(args) -> None:
    v, b, alpha, seed = args
    chain = MarkovChain.random(v, b, alpha, seed)
    p = chain.dense()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert ((p > 0).sum(axis=1) == b).all()
    pi = chain.stationary
    assert (pi >= 0).all() and math.isclose(pi.sum(), 1.0, abs_tol=1e-12)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-10)
    # Irreducible and aperiodic ⇔ primitive: some power (Wielandt: (v−1)²+1) is all positive.
    reach = p > 0
    power = reach.copy()
    for _ in range((v - 1) ** 2):
        power = (power.astype(np.int64) @ reach.astype(np.int64)) > 0
    assert power.all()
    assert 0 < chain.entropy_rate <= chain.unigram_entropy <= math.log(v) + 1e-12


def test_defaults_have_strong_structure(default_bundle) -> None:
    _, bundle = default_bundle
    info = bundle.info
    assert info["entropy_rate_nats"] <= 0.5 * info["unigram_entropy_nats"]
    expected = (info["unigram_entropy_nats"] + 63 * info["entropy_rate_nats"]) / 64
    assert math.isclose(info["floor_nats_per_token"], expected, rel_tol=1e-12)
    assert info["floor_kind"] == "exact entropy of a length-L sequence / L"


def test_splits_are_fixed_length_rows_of_symbols(default_bundle) -> None:
    _, bundle = default_bundle
    train, val = bundle.splits["train"], bundle.splits["validation"]
    assert (len(train), len(val)) == (20000, 512)
    ids = rows_tensor(train)
    assert ids.shape == (20000, 64) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    assert bundle.seq_len == 64 and bundle.tokenizer.vocab.size == 34
    assert len(bundle.tokenizer.decode(ids[0].tolist())) == 64


def test_empirical_nll_matches_exact_floor(default_bundle) -> None:
    source, bundle = default_bundle
    ids = rows_tensor(bundle.splits["train"])
    per_seq = -source.chain.log_prob(ids.numpy()).mean(axis=1)
    stderr = per_seq.std() / math.sqrt(len(per_seq))
    nll = source.true_nll(ids)
    assert math.isclose(nll, per_seq.mean(), rel_tol=1e-12)
    assert abs(nll - bundle.info["floor_nats_per_token"]) < 5 * stderr


def test_corpus_depends_only_on_corpus_seed() -> None:
    p = MarkovSource.Params(num_train=64, num_val=16, seq_len=16)
    a = MarkovSource(p).load(seed=0)
    b = MarkovSource(p).load(seed=99)
    for split in ("train", "validation"):
        assert torch.equal(rows_tensor(a.splits[split]), rows_tensor(b.splits[split]))
    other = MarkovSource(p.model_copy(update={"seed": 7})).load(seed=0)
    assert not torch.equal(rows_tensor(a.splits["train"]), rows_tensor(other.splits["train"]))
    more = MarkovSource(p.model_copy(update={"num_train": 100})).load(seed=0)
    assert torch.equal(rows_tensor(a.splits["validation"]), rows_tensor(more.splits["validation"]))


def test_true_nll_scores_known_sequences_exactly() -> None:
    source = MarkovSource(MarkovSource.Params(vocab_size=5, branching=2, num_train=1, num_val=1))
    chain = source.chain
    p = chain.dense()
    a = int(np.argmax(chain.stationary))
    b = int(np.argmax(p[a]))
    expected = -(math.log(chain.stationary[a]) + math.log(p[a, b])) / 2
    assert math.isclose(source.true_nll(torch.tensor([a, b])), expected, rel_tol=1e-12)
    impossible = int(np.argmin(p[a]))
    assert p[a, impossible] == 0
    assert source.true_nll(torch.tensor([[a, impossible]])) == math.inf


def test_true_nll_rejects_ids_outside_the_chain() -> None:
    source = MarkovSource(MarkovSource.Params(vocab_size=8, num_train=1, num_val=1))
    with pytest.raises(MdmError, match=r"symbols 0\.\.7"):
        source.true_nll(torch.tensor([[0, 8]]))
    with pytest.raises(MdmError, match="symbols"):
        source.true_nll(torch.tensor([[-1, 0]]))


def test_bad_params_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError, match="branching"):
        MarkovSource.Params(vocab_size=3, branching=4)
    with pytest.raises(pydantic.ValidationError, match="vocab_size"):
        MarkovSource.Params(vocab_size=1)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        MarkovSource.Params(states=3)  # type: ignore[call-arg]


def test_sample_quality_splits_possible_and_impossible_transitions() -> None:
    source = MarkovSource(MarkovSource.Params(vocab_size=5, branching=2, num_train=1, num_val=1))
    chain = source.chain
    p = chain.dense()
    a = int(np.argmax(chain.stationary))
    b, impossible = int(np.argmax(p[a])), int(np.argmin(p[a]))
    assert p[a, impossible] == 0
    good = torch.tensor([[a, b]])
    assert source.sample_quality(good) == {
        "true_nll": pytest.approx(source.true_nll(good), rel=1e-12),
        "impossible_frac": 0.0,
    }
    mixed = source.sample_quality(torch.tensor([[a, b], [a, impossible]]))
    assert mixed["impossible_frac"] == pytest.approx(0.25)
    three = -(2 * math.log(chain.stationary[a]) + math.log(p[a, b])) / 3
    assert mixed["true_nll"] == pytest.approx(three, rel=1e-12)
