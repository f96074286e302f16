"""The block sampler: an exact KV cache (same tokens as the uncached reference, same logits as one
block-layout pass), NFE bounds, exactness against an oracle, the kit, and structure checks."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from mdm_plugin_blockwise._decode import BlockDecoder
from mdm_plugin_blockwise.bd3 import BD3Process
from mdm_plugin_blockwise.block_sampler import BlockSampler
from mdm_plugin_dit.model import DiT

from mdm_core.interfaces import RunShape, SamplingContext, Vocab
from mdm_core.testing import OracleBackbone, OracleChain, check_sampler
from mdm_core.testing.laws import generator, law_settings
from mdm_core.testing.sampler_checks import tv_tolerance

VOCAB = Vocab(size=9, pad_id=7, mask_id=8)


def dit(length: int, seed: int, time: bool = False) -> DiT:
    torch.manual_seed(seed)
    params = DiT.Params(dim=16, layers=2, heads=2, time_conditioning=time)
    model = DiT(params, RunShape(vocab=VOCAB, seq_len=length))
    with torch.no_grad():  # leave adaLN-zero's constant start: every layer shapes the logits
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def bd3_context(length: int, block: int) -> SamplingContext:
    shape = RunShape(vocab=VOCAB, seq_len=length)
    return SamplingContext.of(BD3Process(BD3Process.Params(block_size=block), shape), "cpu")


@law_settings(12)
@given(
    seed=st.integers(0, 2**31 - 1),
    block=st.integers(1, 4),
    blocks=st.integers(1, 4),
    extra=st.integers(0, 3),
    first_hitting=st.booleans(),
    prompted=st.booleans(),
    time=st.booleans(),
    top_p=st.sampled_from([1.0, 0.8]),
)
def test_cached_sampling_equals_the_uncached_reference(
    seed: int,
    block: int,
    blocks: int,
    extra: int,
    first_hitting: bool,
    prompted: bool,
    time: bool,
    top_p: float,
) -> None:
    # ``extra`` generates past the trained length: a last, shorter block (semi-AR generation).
    trained = block * blocks
    length = trained + min(extra, block - 1)
    model = dit(length, seed, time)
    ctx = bd3_context(trained, block)
    g = generator(seed)
    prompt = torch.randint(0, VOCAB.num_regular, (2, length), generator=g) if prompted else None
    fixed = torch.rand((2, length), generator=g) < 0.3 if prompted else None
    outs = [
        BlockSampler(
            BlockSampler.Params(steps=3, first_hitting=first_hitting, top_p=top_p, cache=cache)
        ).generate(model, ctx, 2, length, generator(seed), prompt, fixed)
        for cache in (True, False)
    ]
    assert torch.equal(outs[0].tokens, outs[1].tokens) and outs[0].nfe == outs[1].nfe
    if fixed is not None and prompt is not None:
        assert torch.equal(outs[0].tokens[fixed], prompt[fixed])
    per_block = block if first_hitting else 3 if time else min(3, block) + 1
    assert outs[0].nfe <= math.ceil(length / block) * per_block


@law_settings(10)
@given(seed=st.integers(0, 2**31 - 1), block=st.integers(1, 4), blocks=st.integers(2, 4), time=st.booleans())
def test_prefix_then_block_through_the_cache_equals_one_block_layout_pass(
    seed: int, block: int, blocks: int, time: bool
) -> None:
    length = block * blocks
    model = dit(length, seed, time)
    ctx = bd3_context(length, block)
    x = torch.randint(0, VOCAB.num_regular, (2, length), generator=generator(seed))
    z = x.clone()
    cached = BlockDecoder(model, ctx, z, block, cached=True)
    full = BlockDecoder(model, ctx, z, block, cached=False)  # one block-layout pass over z
    t = torch.full((2,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, length, block):
            # The block is noisy (all MASK) while earlier blocks are clean, as during generation.
            z[:, start : start + block] = VOCAB.mask_id
            a = cached.logits(start, start + block, t)
            b = full.logits(start, start + block, t)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
            z[:, start : start + block] = x[:, start : start + block]
    assert cached.cache is not None and cached.cache.length == length - block


def test_kit_and_oracle_exactness_of_first_hitting() -> None:
    check_sampler(lambda: BlockSampler(BlockSampler.Params(steps=8)), max_examples=8)
    check_sampler(
        lambda: BlockSampler(BlockSampler.Params(first_hitting=True, cache=False)), max_examples=4, exact=True
    )


def test_block_structure_draws_the_exact_joint() -> None:
    # Block by block, one position per call from exact conditionals given the clean earlier
    # blocks and the revealed part of the current one: the chain rule, so the joint exactly.
    chain = OracleChain.seeded(seed=1, num_states=3, length=4)
    vocab = Vocab(size=5, pad_id=3, mask_id=4)
    num = 8192
    shape = RunShape(vocab=vocab, seq_len=4, batch_size=num)
    ctx = SamplingContext.of(BD3Process(BD3Process.Params(block_size=2), shape), "cpu")
    sampler = BlockSampler(BlockSampler.Params(first_hitting=True, cache=False))
    out = sampler.generate(OracleBackbone(None, shape, chain=chain), ctx, num, 4, generator(0))
    assert out.nfe == 4
    law = chain.joint()
    counts = torch.bincount(chain.index(out.tokens), minlength=law.shape[0]).double() / num
    assert int(counts[law == 0].sum()) == 0
    assert 0.5 * float((counts - law).abs().sum()) <= tv_tolerance(law, num)


def test_structures_and_nfe_of_one_step_per_block() -> None:
    assert BlockSampler.structures == frozenset({"bd3", "ar", "full"})
    model = dit(12, 0)
    out = BlockSampler(BlockSampler.Params(steps=1)).generate(model, bd3_context(12, 4), 3, 12, generator(0))
    assert out.nfe == 3 and bool((out.tokens < VOCAB.num_regular).all())
