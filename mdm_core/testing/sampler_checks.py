"""Conformance laws of a Sampler (see ``mdm_core.testing``): structure, and the exact-oracle law.

The oracle law samples from :class:`~mdm_core.testing.oracle.OracleBackbone`, the exact
denoiser of a tiny Markov chain, and compares the empirical law of whole sequences with the
chain's joint. Which samplers reproduce the joint: revealing ONE token at a time from the exact
conditional marginals, in any order chosen from what is already visible (never from the values
still to be drawn), samples the joint exactly, by the chain rule. So the confidence sampler at
temperature 1 with ``steps ≥ L`` is exact. Ancestral sampling is exact only as steps → ∞: two
tokens revealed in the same step are drawn independently, so its law is within
``P(some step reveals two tokens) ≤ C(L, 2)·max_j π_j`` of the joint in total variation (π_j:
the probability that a token is revealed in step j; 1/steps on a uniform log-linear grid), plus
the probability that a token is left for the final argmax. Greedy filling (temperature 0) is not
a sampler of the joint at all. The caller configures ``make`` to sample the joint and passes
that bound as ``bias``.

Tolerance model (total variation, distribution-free): with N draws,
``E[TV(p̂, p)] ≤ ½ Σ_x sqrt(p(x)(1 − p(x))/N)`` (Jensen on each cell), and TV(p̂, p) moves by at
most 1/N when one draw changes, so by McDiarmid ``P(TV − E[TV] ≥ ε) ≤ exp(−2Nε²)``. The law
accepts ``TV(p̂, p) ≤ bias + ½ Σ sqrt(p(1 − p)/N) + sqrt(log(1/δ)/(2N))`` with δ = 1e-6 per
comparison. An exact sampler (``bias = 0``) must never draw a sequence of probability 0, whatever
N; with ``bias > 0`` such draws count towards the total variation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.interfaces import ForwardProcess, RunShape, Sampler, SamplingContext, Vocab
from mdm_core.testing.backbone_checks import TinyBackbone
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.oracle import OracleBackbone, OracleChain
from mdm_core.testing.strategies import vocabs

#: False-alarm probability of each oracle comparison (two per check: unprompted and infilling).
ORACLE_DELTA = 1e-6


def tv_tolerance(probs: torch.Tensor, num: int, bias: float = 0.0, delta: float = ORACLE_DELTA) -> float:
    """Largest total variation between ``num`` draws from ``probs`` and ``probs`` itself that
    a sampler whose law is within ``bias`` of ``probs`` exceeds with probability < ``delta``."""
    p = probs.to(torch.float64)
    expected = 0.5 * float(torch.sqrt(p * (1.0 - p) / num).sum())
    return bias + expected + math.sqrt(math.log(1.0 / delta) / (2.0 * num))


MakeProcess = Callable[[RunShape], ForwardProcess]


def _absorbing(schedule: str) -> MakeProcess:
    return lambda shape: AbsorbingProcess(AbsorbingProcess.Params(schedule=schedule), shape)


def check_sampler(
    make: Callable[[], Sampler],
    *,
    max_examples: int = 10,
    exact: bool = False,
    bias: float = 0.0,
    samples: int = 8192,
    process: MakeProcess | None = None,
    infilling: bool = True,
) -> None:
    """On a tiny real backbone: [N, L] regular ids (no MASK/PAD), prompt kept, integer NFE ≥ 0,
    same seed ⇒ same samples, and the model's train/eval mode left as it was.

    With ``exact=True`` (``make`` must then return a sampler configured to sample the joint, see
    the module doc) also the oracle law: ``samples`` draws from the exact denoiser of a 3-symbol,
    length-4 chain match the chain's joint, unprompted and with one interior position fixed
    (infilling), within the total-variation tolerance above; ``bias`` is the caller's bound on
    TV(sampler's law, joint) for its configuration.

    ``process(shape)`` builds the forward process whose inference record the sampler receives
    (default: the built-in absorbing process, log-linear or cosine), so samplers of other
    structures (block-causal, …) are checked under their own record; ``infilling=False`` skips the
    oracle's infilling case for samplers that cannot condition on a later token (left-to-right).
    """

    @law_settings(max_examples)
    @given(
        data=st.data(),
        seed=st.integers(0, 2**31 - 1),
        uses_time=st.booleans(),
        prompted=st.booleans(),
        cosine=st.booleans(),
        training=st.booleans(),
    )
    def laws(
        data: st.DataObject, seed: int, uses_time: bool, prompted: bool, cosine: bool, training: bool
    ) -> None:
        vocab = data.draw(vocabs(2, 12), label="vocab")
        num, length = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 10), label="L")
        shape = RunShape(vocab=vocab, seq_len=length, batch_size=num)
        model = TinyBackbone(TinyBackbone.Params(uses_time=uses_time, seed=seed), shape)
        model.train(training)
        make_process = process or _absorbing("cosine" if cosine else "loglinear")
        ctx = SamplingContext.of(make_process(shape), "cpu")
        g = generator(seed)
        prompt = torch.randint(0, vocab.num_regular, (num, length), generator=g) if prompted else None
        prompt_mask = torch.rand((num, length), generator=g) < 0.4 if prompted else None
        sampler = make()
        out = sampler.generate(model, ctx, num, length, generator(seed), prompt, prompt_mask)
        tokens = out.tokens
        require(tokens.shape == (num, length), f"tokens {tuple(tokens.shape)} must be [num_samples, length]")
        require(not tokens.is_floating_point(), "tokens must be integer ids")
        require(
            ((tokens >= 0) & (tokens < vocab.num_regular)).all(),
            "every generated id must be a regular id (no MASK or PAD left)",
        )
        if prompt is not None and prompt_mask is not None:
            require(torch.equal(tokens[prompt_mask], prompt[prompt_mask]), "prompt positions must be kept")
        require(isinstance(out.nfe, int) and out.nfe >= 0, f"nfe must be an int ≥ 0, got {out.nfe!r}")
        require(model.training == training, "the sampler must leave the model's train/eval mode as it was")
        again = make().generate(model, ctx, num, length, generator(seed), prompt, prompt_mask)
        require(torch.equal(tokens, again.tokens), "same seed must give the same samples")

    laws()
    if exact:
        check_oracle_law(make, bias=bias, samples=samples, process=process, infilling=infilling)


def check_oracle_law(
    make: Callable[[], Sampler],
    *,
    bias: float = 0.0,
    samples: int = 8192,
    process: MakeProcess | None = None,
    infilling: bool = True,
) -> None:
    """The sampler reproduces the exact joint of a tiny chain (and, with ``infilling``, its
    conditional given one fixed interior position) from the chain's exact denoiser; see the
    module doc. ``process`` as in :func:`check_sampler`."""
    chain = OracleChain.seeded(seed=0, num_states=3, length=4)
    vocab = Vocab(size=chain.num_states + 2, pad_id=chain.num_states, mask_id=chain.num_states + 1)
    shape = RunShape(vocab=vocab, seq_len=chain.length, batch_size=samples)
    model = OracleBackbone(None, shape, chain=chain)
    ctx = SamplingContext.of((process or _absorbing("loglinear"))(shape), "cpu")
    joint, seqs = chain.joint(), chain.sequences()

    out = make().generate(model, ctx, samples, chain.length, generator(0))
    _compare(chain, out.tokens, joint, bias, "unprompted")
    if not infilling:
        return

    # Infilling: fix the interior position's likeliest value; the law is p(x | x_j = v).
    j = chain.length // 2
    value = int(torch.stack([joint[seqs[:, j] == v].sum() for v in range(chain.num_states)]).argmax())
    conditional = joint * (seqs[:, j] == value)
    conditional = conditional / conditional.sum()
    prompt = torch.full((samples, chain.length), value, dtype=torch.long)
    prompt_mask = torch.zeros((samples, chain.length), dtype=torch.bool)
    prompt_mask[:, j] = True
    out = make().generate(model, ctx, samples, chain.length, generator(1), prompt, prompt_mask)
    _compare(chain, out.tokens, conditional, bias, f"with position {j} fixed to {value}")


def _compare(chain: OracleChain, tokens: torch.Tensor, law: torch.Tensor, bias: float, case: str) -> None:
    num = tokens.shape[0]
    require(
        tokens.shape == (num, chain.length) and ((tokens >= 0) & (tokens < chain.num_states)).all(),
        f"oracle law ({case}): samples must be [N, {chain.length}] regular ids",
    )
    counts = torch.bincount(chain.index(tokens.cpu()), minlength=law.shape[0]).to(torch.float64)
    impossible = int(counts[law == 0].sum())
    require(
        impossible == 0 or bias > 0,
        f"oracle law ({case}): {impossible} of {num} samples have probability 0 under the target law "
        "(the sampler does not condition on what it has revealed, or ignores the prompt)",
    )
    tv = 0.5 * float((counts / num - law).abs().sum())
    tolerance = tv_tolerance(law, num, bias)
    require(
        tv <= tolerance,
        f"oracle law ({case}): total variation {tv:.4f} between the samples and the exact law exceeds "
        f"{tolerance:.4f} (sampling error at δ={ORACLE_DELTA:g} + bias {bias:g}, N={num})",
    )
