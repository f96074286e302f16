"""The autoregressive reference: exact NLL (= BD3 L' = 1 full mask, = the chain rule through the
generation path), the conformance kit, the cached left-to-right sampler and the spec checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from mdm_plugin_blockwise.ar import ARProcess, ARSampler
from mdm_plugin_blockwise.bd3 import BD3Process
from mdm_plugin_dit.model import DiT

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import SpecError
from mdm_core.interfaces import RunShape, SamplingContext, TrainingExample, Vocab
from mdm_core.spec import load_spec
from mdm_core.testing import OracleBackbone, OracleChain, check_forward_process, check_sampler
from mdm_core.testing.laws import generator, law_settings
from mdm_core.testing.sampler_checks import tv_tolerance
from mdm_core.testing.strategies import batches, vocabs


def dit(vocab: Vocab, length: int, seed: int = 0, time: bool = False) -> DiT:
    torch.manual_seed(seed)
    params = DiT.Params(dim=16, layers=2, heads=2, time_conditioning=time)
    model = DiT(params, RunShape(vocab=vocab, seq_len=length))
    with torch.no_grad():  # leave adaLN-zero's constant start: every layer shapes the logits
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def nll(model: DiT, example: TrainingExample, vocab: Vocab) -> torch.Tensor:
    logits = model(
        example.input_ids,
        layout=example.layout,
        position_ids=example.position_ids,
    )
    targets = example.targets
    return mdlm_reference(logits[:, : targets.shape[1]], example, vocab).loss


@law_settings(10)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_ar_nll_is_bd3_full_mask_and_the_chain_rule_of_generation(data: st.DataObject, seed: int) -> None:
    vocab = data.draw(vocabs(2, 10))
    batch = data.draw(batches(vocab, max_len=10))
    size, length = batch.input_ids.shape
    shape = RunShape(vocab=vocab, seq_len=length, batch_size=size)
    model = dit(vocab, length, seed)
    uniform = UniformTimeSampler()
    ar = ARProcess(None, shape).prepare(batch, uniform, generator(seed))
    full_mask = BD3Process(BD3Process.Params(block_size=1), shape).prepare(batch, uniform, generator(seed))
    with torch.no_grad():
        ours = nll(model, ar, vocab)
        assert torch.allclose(ours, nll(model, full_mask, vocab), rtol=0, atol=1e-5)
        # Generation's view: position i is a MASK query behind the clean prefix, under the causal
        # generation layout of the record, through the KV cache, one position per call.
        ctx = SamplingContext.of(ARProcess(None, shape), "cpu")
        layout = ctx.inference.layout(length)
        eligible = batch.attention_mask & ~batch.prompt_mask
        x, total = batch.input_ids, torch.zeros((), dtype=torch.float64)
        for i in range(length):
            ids = torch.cat([x[:, :i], torch.full((size, 1), vocab.mask_id)], 1)
            logits = model(ids, layout=layout)[:, i, : vocab.num_regular].double()
            logp = torch.log_softmax(logits, -1).gather(1, x[:, i : i + 1].clamp(max=vocab.num_regular - 1))
            total -= logp[eligible[:, i]].sum()
    assert torch.allclose(ours.double(), total / eligible.sum(), rtol=1e-5, atol=1e-5)


def test_kit_laws_hold() -> None:
    # AR masks every target whatever t (it draws no times): the kit's absorbing-style laws (MASK
    # inputs exactly on the loss mask, masking growing with t from ~0) do not apply, every other
    # law does (shapes, loss mask on non-pad non-prompt positions, weights, determinism, state,
    # loss_weight, the inference record).
    check_forward_process(lambda shape: ARProcess(None, shape), per_token=False)
    with pytest.raises(AssertionError, match="at t = 1e-6 almost nothing may be masked"):
        check_forward_process(lambda shape: ARProcess(None, shape))


def test_sampler_kit_and_cache_free_reference() -> None:
    check_sampler(lambda: ARSampler(), max_examples=8)
    check_sampler(lambda: ARSampler(ARSampler.Params(top_p=0.8, cache=False)), max_examples=4)


@law_settings(8)
@given(
    seed=st.integers(0, 2**31 - 1),
    length=st.integers(1, 9),
    prompted=st.booleans(),
    top_p=st.sampled_from([1.0, 0.7]),
)
def test_cached_sampling_equals_uncached(seed: int, length: int, prompted: bool, top_p: float) -> None:
    vocab = Vocab(size=9, pad_id=7, mask_id=8)
    shape = RunShape(vocab=vocab, seq_len=length, batch_size=3)
    model = dit(vocab, length, seed, time=bool(seed % 2))
    ctx = SamplingContext.of(ARProcess(None, shape), "cpu")
    g = generator(seed)
    prompt = torch.randint(0, 7, (3, length), generator=g) if prompted else None
    fixed = torch.rand((3, length), generator=g) < 0.3 if prompted else None
    outs = [
        ARSampler(ARSampler.Params(top_p=top_p, cache=cache)).generate(
            model, ctx, 3, length, generator(seed), prompt, fixed
        )
        for cache in (True, False)
    ]
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    free = length if fixed is None else int((~fixed).any(0).sum())
    assert outs[0].nfe == outs[1].nfe == free


def test_sampling_draws_the_exact_joint_from_the_exact_conditionals() -> None:
    chain = OracleChain.seeded(seed=0, num_states=3, length=4)
    vocab = Vocab(size=5, pad_id=3, mask_id=4)
    num = 8192
    shape = RunShape(vocab=vocab, seq_len=4, batch_size=num)
    model = OracleBackbone(None, shape, chain=chain)
    ctx = SamplingContext.of(ARProcess(None, shape), "cpu")
    out = ARSampler(ARSampler.Params(cache=False)).generate(model, ctx, num, 4, generator(0))
    assert out.nfe == 4
    law = chain.joint()
    counts = torch.bincount(chain.index(out.tokens), minlength=law.shape[0]).double() / num
    assert int(counts[law == 0].sum()) == 0
    assert 0.5 * float((counts - law).abs().sum()) <= tv_tolerance(law, num)


def test_spec_refuses_a_time_law_and_foreign_samplers(tmp_path: Path) -> None:
    head = (
        "data: {name: markov, vocab_size: 8, seq_len: 16}\nbackbone: {name: dit}\n"
        "forward_process: {name: ar}\n"
    )
    path = tmp_path / "ar.yaml"
    path.write_text(head + "sampler: {name: ar}\ntime_sampler: {name: bell, family: beta}\n")
    with pytest.raises(SpecError, match="cannot use the law"):
        load_spec(path)
    path.write_text(head + "sampler: {name: ancestral}\n")
    with pytest.raises(SpecError, match="'ar' structure"):
        load_spec(path)
    path.write_text(head.replace("{name: ar}", "{name: absorbing}") + "sampler: {name: ar}\n")
    with pytest.raises(SpecError, match="supports \\['ar'\\]"):
        load_spec(path)
    for sampler in ("{name: ar}", "{name: block, first_hitting: true}"):
        path.write_text(head + f"sampler: {sampler}\n")
        load_spec(path)
