"""The exact-oracle kit: the oracle itself, and the sampler and evaluator laws built on it.

Every oracle law has a negative test: a subtly wrong sampler or evaluator that it must reject.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.builtin.confidence import Measure
from mdm_core.builtin.evaluators import NLLEvaluator, SampleEvaluator
from mdm_core.builtin.losses import subs_logits
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.data.loader import rows_tensor
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    Backbone,
    Batch,
    EvalContext,
    Evaluator,
    EvaluatorParams,
    FullLayout,
    MaskLayout,
    RunShape,
    SampleOutput,
    Sampler,
    SamplingContext,
    Vocab,
)
from mdm_core.testing import (
    NEVER_LOGIT,
    OracleBackbone,
    OracleChain,
    check_evaluator,
    check_sampler,
)
from mdm_core.testing.evaluator_checks import cutoff_bias, oracle_chain
from mdm_core.testing.sampler_checks import check_oracle_law


def vocab_of(chain: OracleChain) -> Vocab:
    return Vocab(size=chain.num_states + 2, pad_id=chain.num_states, mask_id=chain.num_states + 1)


def oracle_of(chain: OracleChain) -> OracleBackbone:
    return OracleBackbone(None, RunShape(vocab=vocab_of(chain), seq_len=chain.length), chain=chain)


def brute_joint(chain: OracleChain) -> dict[tuple[int, ...], float]:
    """p(x) for every sequence by the chain rule, in plain Python floats."""
    init, trans = chain.initial.tolist(), chain.transition.tolist()
    out = {}
    for seq in itertools.product(range(chain.num_states), repeat=chain.length):
        p = init[seq[0]]
        for a, b in itertools.pairwise(seq):
            p *= trans[a][b]
        out[seq] = p
    return out


def brute_conditional(joint: dict[tuple[int, ...], float], visible: dict[int, int], i: int, v: int) -> float:
    """p(x_i = v | x_j = visible[j]) by summing the joint over the compatible sequences."""
    match = [p for seq, p in joint.items() if all(seq[j] == u for j, u in visible.items())]
    hit = [p for seq, p in joint.items() if seq[i] == v and all(seq[j] == u for j, u in visible.items())]
    return sum(hit) / sum(match)


chains = st.builds(
    OracleChain.seeded,
    seed=st.integers(0, 10_000),
    num_states=st.integers(2, 4),
    length=st.integers(3, 5),
)


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(chain=chains)
def test_chain_joint_and_log_prob_match_enumeration(chain: OracleChain) -> None:
    joint = brute_joint(chain)
    seqs = chain.sequences()
    expected = torch.tensor([joint[tuple(row)] for row in seqs.tolist()], dtype=torch.float64)
    assert torch.allclose(chain.joint(), expected, rtol=1e-12, atol=0)
    assert math.isclose(float(chain.joint().sum()), 1.0, rel_tol=1e-12)
    assert (chain.joint() == 0).any(), "a forbidden successor per state makes some sequences impossible"
    assert torch.equal(chain.index(seqs), torch.arange(seqs.shape[0]))
    draws = chain.sample(500, torch.Generator().manual_seed(0))
    assert torch.isfinite(chain.log_prob(draws)).all(), "exact draws are never impossible"


@settings(max_examples=12, deadline=None)
@given(chain=chains, data=st.data())
def test_oracle_conditionals_sum_to_one_and_match_brute_force(
    chain: OracleChain, data: st.DataObject
) -> None:
    model, vocab, joint = oracle_of(chain), vocab_of(chain), brute_joint(chain)
    seq = chain.sequences()[data.draw(st.sampled_from(list(torch.nonzero(chain.joint()).flatten().tolist())))]
    hidden = torch.tensor(data.draw(st.lists(st.booleans(), min_size=chain.length, max_size=chain.length)))
    pad = data.draw(st.booleans())
    ids = torch.where(hidden, vocab.pad_id if pad else vocab.mask_id, seq)[None]
    logits = model(ids)
    assert logits.shape == (1, chain.length, vocab.size) and torch.isfinite(logits).all()
    assert (logits[..., chain.num_states :] == NEVER_LOGIT).all(), "MASK and PAD are never predicted"
    probs = torch.softmax(subs_logits(logits, vocab).double(), dim=-1)[0]
    assert torch.allclose(probs.sum(dim=-1), torch.ones(chain.length, dtype=torch.float64))
    visible = {j: int(seq[j]) for j in range(chain.length) if not hidden[j]}
    for i, v in itertools.product(range(chain.length), range(chain.num_states)):
        assert math.isclose(float(probs[i, v]), brute_conditional(joint, visible, i, v), abs_tol=1e-6)


def test_oracle_conditions_only_on_what_the_layout_lets_a_query_see() -> None:
    chain = OracleChain.seeded(3, num_states=3, length=4)
    model, vocab = oracle_of(chain), vocab_of(chain)
    seq = chain.sample(1, torch.Generator().manual_seed(0))
    mask = torch.rand((1, 4, 4), generator=torch.Generator().manual_seed(1)) < 0.5
    mask |= torch.eye(4, dtype=torch.bool)
    logits = model(seq, layout=MaskLayout(mask=mask))
    for i in range(4):
        alone = torch.where(mask[0, i], seq[0], vocab.mask_id)[None]
        assert torch.equal(logits[0, i], model(alone)[0, i])
    padded = model(seq, layout=FullLayout(key_padding=torch.tensor([[True, False, True, True]])))
    hidden_one = seq.clone()
    hidden_one[0, 1] = vocab.mask_id
    assert torch.equal(padded[0, [0, 2, 3]], model(hidden_one)[0, [0, 2, 3]])


def test_oracle_rejects_a_chain_that_does_not_fit_the_shape() -> None:
    chain = OracleChain.seeded(0, num_states=3, length=4)
    with pytest.raises(MdmError, match="seq_len"):
        OracleBackbone(None, RunShape(vocab=vocab_of(chain), seq_len=5), chain=chain)


def nelbo_terms(chain: OracleChain, x: Tensor) -> tuple[Tensor, Tensor]:
    """h(M) = Σ_{i ∈ M} −log p(x_i | x outside M) and |M| for every mask pattern M (via the oracle)."""
    model, vocab = oracle_of(chain), vocab_of(chain)
    masks = torch.tensor(list(itertools.product([False, True], repeat=chain.length)))
    z = torch.where(masks, vocab.mask_id, x[None])
    logp = torch.log_softmax(subs_logits(model(z), vocab).double(), dim=-1)
    nll = -logp.gather(-1, x.expand_as(z)[..., None]).squeeze(-1)
    return (nll * masks).sum(dim=1), masks.sum(dim=1)


def test_exact_denoiser_nelbo_is_exactly_minus_log_p() -> None:
    """∫_0^1 g(m) dm = Σ_M h(M) / (|M| C(L, |M|)) = −log p(x) for every x: the law's premise."""
    chain = oracle_chain()
    for x in chain.sample(20, torch.Generator().manual_seed(0)):
        h, sizes = nelbo_terms(chain, x)
        k = sizes[1:].double()
        binom = torch.tensor([math.comb(chain.length, int(s)) for s in k], dtype=torch.float64)
        nelbo = float((h[1:] / (k * binom)).sum())
        assert math.isclose(nelbo, -float(chain.log_prob(x[None])), rel_tol=1e-6)


def test_cutoff_bias_bounds_the_exact_expected_estimate() -> None:
    """E over t ~ U(δ, 1) with α_1 = ε, integrated exactly, lies within the law's bias bound."""
    chain, floor, eps = oracle_chain(), 1e-3, 1e-3
    ids = chain.sample(32, torch.Generator().manual_seed(2))
    total_gap = 0.0
    for x in ids:
        h, sizes = nelbo_terms(chain, x)
        lo, hi = (1.0 - eps) * floor, 1.0 - eps

        def integral(a: float, b: float, h: Tensor = h, sizes: Tensor = sizes) -> float:
            out = 0.0
            for term, k in zip(h[1:].tolist(), sizes[1:].tolist(), strict=True):
                # ∫ m^{k−1} (1 − m)^{L−k} dm by expanding (1 − m)^{L−k}.
                r = chain.length - k
                for j in range(r + 1):
                    c = math.comb(r, j) * (-1) ** j
                    out += term * c * (b ** (k + j) - a ** (k + j)) / (k + j)
            return out

        expected = integral(lo, hi) / (1.0 - floor)
        total_gap += expected + float(chain.log_prob(x[None]))
    gap = abs(total_gap) / ids.numel()
    bound = cutoff_bias(chain, ids, -chain.log_prob(ids), floor, eps)
    assert 0 < gap <= bound, (gap, bound)


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------

#: Ancestral steps for the oracle law and its bias bound: a step reveals any given token with
#: probability 1/steps on the log-linear grid, so two of L tokens share a step with probability
#: ≤ C(L, 2)/steps; a token is left for the final argmax with probability ≤ 1e-5 (grid end).
ANCESTRAL_STEPS = 256
ANCESTRAL_BIAS = math.comb(4, 2) / ANCESTRAL_STEPS + 4 * 1e-5


def confidence(temperature: float, steps: int = 4, measure: Measure = "max_prob") -> ConfidenceSampler:
    return ConfidenceSampler(
        ConfidenceSampler.Params(steps=steps, temperature=temperature, confidence=measure)
    )


@pytest.mark.parametrize("measure", ["max_prob", "margin"])
def test_confidence_sampler_one_token_per_step_samples_the_joint(measure: Measure) -> None:
    check_sampler(lambda: confidence(1.0, steps=4, measure=measure), max_examples=4, exact=True)


def test_ancestral_sampler_with_many_steps_samples_the_joint() -> None:
    make = lambda: AncestralSampler(AncestralSampler.Params(steps=ANCESTRAL_STEPS))  # noqa: E731
    check_sampler(make, max_examples=4, exact=True, bias=ANCESTRAL_BIAS)


class UnigramSampler(Sampler):
    """Wrong: fills every masked position from the model's all-masked marginal, averaged over positions."""

    name = "unigram"

    def generate(
        self,
        model: Backbone,
        ctx: SamplingContext,
        num_samples: int,
        length: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> SampleOutput:
        vocab = ctx.vocab
        with torch.no_grad():
            z = torch.full((1, length), vocab.mask_id)
            unigram = torch.softmax(subs_logits(model(z), vocab).double(), dim=-1)[0].mean(dim=0)
        tokens = torch.multinomial(unigram, num_samples * length, replacement=True, generator=generator)
        tokens = tokens.reshape(num_samples, length)
        if prompt is not None and prompt_mask is not None:
            tokens = torch.where(prompt_mask, prompt, tokens)
        return SampleOutput(tokens=tokens, nfe=1)


class PastedPromptSampler(Sampler):
    """Wrong: samples without the prompt, then pastes it in (keeps it, but never conditions on it)."""

    name = "pasted_prompt"

    def generate(
        self,
        model: Backbone,
        ctx: SamplingContext,
        num_samples: int,
        length: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> SampleOutput:
        out = confidence(1.0, steps=length).generate(model, ctx, num_samples, length, generator)
        if prompt is not None and prompt_mask is not None:
            return SampleOutput(torch.where(prompt_mask, prompt, out.tokens), out.nfe)
        return out


WRONG_SAMPLERS = {
    "one ancestral step (all tokens independent)": lambda: AncestralSampler(AncestralSampler.Params(steps=1)),
    "ancestral with L steps, no bias allowed": lambda: AncestralSampler(AncestralSampler.Params(steps=4)),
    "argmax fill (temperature 0)": lambda: confidence(0.0),
    "tempered (temperature 0.5)": lambda: confidence(0.5),
    "two tokens per step": lambda: confidence(1.0, steps=2),
    "unigram instead of the model": UnigramSampler,
    "prompt pasted, not conditioned on": PastedPromptSampler,
}


@pytest.mark.parametrize("make", WRONG_SAMPLERS.values(), ids=WRONG_SAMPLERS.keys())
def test_oracle_law_rejects_a_sampler_that_does_not_sample_the_joint(make: type[Sampler]) -> None:
    with pytest.raises(AssertionError, match="oracle law"):
        check_oracle_law(make, samples=4096)


def test_oracle_law_rejects_a_finite_step_sampler_claiming_too_small_a_bias() -> None:
    make = lambda: AncestralSampler(AncestralSampler.Params(steps=4))  # noqa: E731
    with pytest.raises(AssertionError, match="total variation"):
        check_oracle_law(make, bias=1e-3, samples=4096)


# --------------------------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------------------------


class ScratchNLL(Evaluator):
    """A from-scratch uniform-t NELBO; its flags plant the two classic mistakes."""

    name = "scratch_nll"

    class Params(EvaluatorParams):
        weighted: bool = True  # False: forgets the 1/t weight
        per_masked_token: bool = False  # True: averages over masked tokens, not all tokens

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        ids = rows_tensor(ctx.dataset).repeat_interleave(8, dim=0)
        process = ctx.forward_process.likelihood_process()
        times = UniformTimeSampler(None, process.shape)
        example = process.prepare(
            Batch.from_ids(ids, ctx.vocab), times, torch.Generator().manual_seed(ctx.seed)
        )
        with torch.no_grad():
            logits = ctx.model(example.input_ids, layout=example.layout)
        logp = torch.log_softmax(subs_logits(logits, ctx.vocab).double(), dim=-1)
        nll = -logp.gather(-1, example.targets[..., None]).squeeze(-1) * example.loss_mask
        weights = example.weights if self.params.weighted else torch.ones_like(example.weights)
        count = example.loss_mask.sum() if self.params.per_masked_token else example.normaliser
        return {"nll": float((weights * nll).sum() / count)}


def test_builtin_evaluators_pass() -> None:
    check_evaluator(NLLEvaluator)
    check_evaluator(SampleEvaluator)


def test_a_correct_from_scratch_nelbo_passes() -> None:
    check_evaluator(ScratchNLL)


@pytest.mark.parametrize(
    "params",
    [ScratchNLL.Params(weighted=False), ScratchNLL.Params(per_masked_token=True)],
    ids=["forgets the 1/t weight", "averages over masked tokens"],
)
def test_oracle_law_rejects_a_wrong_nelbo(params: ScratchNLL.Params) -> None:
    with pytest.raises(AssertionError, match="oracle law"):
        check_evaluator(lambda: ScratchNLL(params))


class Leaky(Evaluator):
    """Breaks one general law, chosen by ``how``."""

    name = "leaky"

    class Params(EvaluatorParams):
        how: str = ""

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        how = self.params.how
        if how == "mode":
            ctx.model.eval()
        if how == "weights":
            with torch.no_grad():
                next(ctx.model.parameters()).add_(1.0)
        if how == "grad":
            ctx.model(rows_tensor(ctx.dataset)).sum().backward()
        value = float(torch.rand(())) if how == "global rng" else 1.0
        return {"x": math.nan if how == "nan" else value}


@pytest.mark.parametrize(
    ("how", "law"),
    [
        ("mode", "train/eval mode"),
        ("weights", "weights unchanged"),
        ("grad", "gradients"),
        ("global rng", "same metrics"),
        ("nan", "finite float"),
    ],
)
def test_general_evaluator_laws_can_fail(how: str, law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_evaluator(lambda: Leaky(Leaky.Params(how=how)))
