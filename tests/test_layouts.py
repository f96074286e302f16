"""Attention layouts: each materialiser equals its rule, written here independently with loops."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from mdm_core.errors import MdmError
from mdm_core.layouts import (
    AttentionLayout,
    BD3Layout,
    BlockCausalLayout,
    FullLayout,
    MaskLayout,
    attention_block_mask,
    attention_mask,
    block_index,
)

LAWS = settings(max_examples=40, deadline=None)
FLEX = settings(max_examples=8, deadline=None)

Rule = Callable[[int, int, int], bool]
"""Reference predicate ``(example, query index, key index) -> may attend``."""


def bd3_rule(n: int, size: int) -> Rule:
    """METHODS §4.1, read literally: i < n is noisy, blk(i) = (i mod n) // size."""

    def rule(b: int, q: int, k: int) -> bool:
        del b
        q_noisy, k_noisy = q < n, k < n
        q_blk, k_blk = (q % n) // size, (k % n) // size
        if q_noisy == k_noisy and q_blk == k_blk:
            return True
        if q_noisy and not k_noisy and k_blk < q_blk:
            return True
        return (not q_noisy) and (not k_noisy) and k_blk <= q_blk

    return rule


@st.composite
def cases(draw: st.DrawFn, max_len: int = 9) -> tuple[AttentionLayout, Rule, int, int, int, int]:
    """A core layout with its reference rule, and a window ``(B, q_len, kv_len, q_offset)``.

    Keys are ``0..kv_len−1`` and queries the last ``q_len`` of them or, without a cache, any
    contiguous run of indices; about half of the cases carry key padding.
    """
    kind = draw(st.sampled_from(["full", "block_causal", "bd3", "mask"]))
    size = draw(st.integers(1, 3))
    examples = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if kind == "bd3":
        n = size * draw(st.integers(1, 3))
        kv_len = 2 * n
    else:
        kv_len = draw(st.integers(1, max_len))
    q_len = draw(st.integers(1, kv_len))
    q_offset = draw(st.integers(0, kv_len - q_len))
    padding = None
    if draw(st.booleans()):
        padding = torch.rand(examples, kv_len, generator=g) < 0.7
    layout: AttentionLayout
    rule: Rule
    if kind == "full":
        layout, rule = FullLayout(key_padding=padding), lambda b, q, k: True
    elif kind == "block_causal":
        layout = BlockCausalLayout(size=size, key_padding=padding)
        rule = lambda b, q, k: k // size <= q // size  # noqa: E731
    elif kind == "bd3":
        layout, rule = (
            BD3Layout(seq_len=kv_len // 2, size=size, key_padding=padding),
            bd3_rule(kv_len // 2, size),
        )
    else:
        rows = torch.rand(draw(st.sampled_from([1, examples])), q_len, kv_len, generator=g) < 0.5
        mask = rows.tolist()
        layout = MaskLayout(mask=rows, q_offset=q_offset, key_padding=padding)
        rule = lambda b, q, k: mask[b % len(mask)][q - q_offset][k]  # noqa: E731
    return layout, rule, examples, q_len, kv_len, q_offset


def reference(
    rule: Rule, padding: Tensor | None, examples: int, q_len: int, kv_len: int, q_offset: int
) -> Tensor:
    """The dense mask by loops: the rule, key padding on top, and every query sees itself."""
    out = torch.zeros(examples, q_len, kv_len, dtype=torch.bool)
    for b in range(examples):
        for r in range(q_len):
            q = q_offset + r
            for k in range(kv_len):
                real = True if padding is None else bool(padding[b, k])
                out[b, r, k] = (rule(b, q, k) and real) or q == k
    return out


@LAWS
@given(case=cases())
def test_dense_equals_the_reference_rule(case: tuple[AttentionLayout, Rule, int, int, int, int]) -> None:
    layout, rule, examples, q_len, kv_len, q_offset = case
    dense = layout.dense(q_len, kv_len, q_offset)
    expected = reference(rule, layout.key_padding, examples, q_len, kv_len, q_offset)
    if dense is None:
        assert expected.all()
    else:
        assert dense.dtype == torch.bool and dense.shape[1:] == (q_len, kv_len)
        assert torch.equal(torch.broadcast_to(dense, expected.shape), expected)


@LAWS
@given(case=cases())
def test_attention_mask_takes_the_last_rows_over_a_cache(
    case: tuple[AttentionLayout, Rule, int, int, int, int],
) -> None:
    """With a KV cache the queries are the last ones: the helper's rows are those of the square mask."""
    layout, _, _, q_len, kv_len, _ = case
    if isinstance(layout, MaskLayout):  # a square mask, so that it covers every query
        square_mask = torch.rand(kv_len, kv_len, generator=torch.Generator().manual_seed(kv_len)) < 0.5
        layout = MaskLayout(mask=square_mask[None], key_padding=layout.key_padding)
    square = layout.dense(kv_len, kv_len)
    rows = attention_mask(layout, q_len, kv_len)
    assert (square is None) == (rows is None)
    if square is not None and rows is not None:
        assert torch.equal(rows, square[:, kv_len - q_len :])
    assert attention_mask(None, q_len, kv_len) is None


def _flex(q: Tensor, k: Tensor, v: Tensor, block_mask: Any) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # eager (unfused) flex attention is the reference here
        out: Tensor = flex_attention(q, k, v, block_mask=block_mask)
        return out


@FLEX
@given(case=cases(max_len=7), seed=st.integers(0, 2**16))
def test_flex_attention_with_block_mask_equals_sdpa_with_dense(
    case: tuple[AttentionLayout, Rule, int, int, int, int], seed: int
) -> None:
    layout, _, examples, q_len, kv_len, q_offset = case
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(examples, 2, q_len, 8, generator=g)
    k, v = torch.randn(2, examples, 2, kv_len, 8, generator=g)
    dense = layout.dense(q_len, kv_len, q_offset)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=None if dense is None else dense[:, None])
    flex = _flex(q, k, v, layout.block_mask(q_len, kv_len, q_offset))
    assert torch.allclose(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_block_masks_are_cached_per_shape_and_shared_by_equal_rules() -> None:
    layout = BD3Layout(seq_len=4, size=2)
    first = layout.block_mask(8, 8)
    assert layout.block_mask(8, 8) is first
    assert BD3Layout(seq_len=4, size=2).block_mask(8, 8) is first  # a fresh instance per batch is free
    assert BD3Layout(seq_len=4, size=1).block_mask(8, 8) is not first
    assert layout.block_mask(4, 8, q_offset=4) is not first
    assert BlockCausalLayout(size=2).block_mask(8, 8) is not BD3Layout(seq_len=4, size=2).block_mask(8, 8)
    padded = BlockCausalLayout(size=2, key_padding=torch.tensor([[True] * 7 + [False]]))
    assert padded.block_mask(8, 8) is padded.block_mask(8, 8)
    assert padded.block_mask(8, 8) is not BlockCausalLayout(size=2).block_mask(8, 8)
    assert attention_block_mask(FullLayout(), 3, 5) is None and attention_block_mask(None, 3, 5) is None
    assert attention_block_mask(BlockCausalLayout(size=2), 2, 8) is BlockCausalLayout(size=2).block_mask(
        2, 8, 6
    )


# -- laws relating the layouts --------------------------------------------------------------------


@LAWS
@given(length=st.integers(1, 12), size=st.integers(1, 12))
def test_block_causal_extremes(length: int, size: int) -> None:
    """Size 1 is causal; a block at least as long as the sequence is the full layout."""
    causal = BlockCausalLayout(size=1).dense(length, length)
    assert causal is not None and torch.equal(causal[0], torch.ones(length, length).tril().bool())
    one_block = BlockCausalLayout(size=max(size, length)).dense(length, length)
    assert one_block is not None and bool(one_block.all())


@LAWS
@given(blocks=st.integers(1, 4), size=st.integers(1, 3))
def test_bd3_halves(blocks: int, size: int) -> None:
    """Clean tokens never see noisy ones and are block-causal among themselves; noisy tokens see
    their own noisy block and earlier clean blocks; one block is MDLM (each half sees only itself)."""
    n = blocks * size
    dense = BD3Layout(seq_len=n, size=size).dense(2 * n, 2 * n)
    assert dense is not None
    mask = dense[0]
    block_causal = BlockCausalLayout(size=size).dense(n, n)
    assert block_causal is not None
    assert not mask[n:, :n].any()
    assert torch.equal(mask[n:, n:], block_causal[0])
    blk = torch.arange(n) // size
    assert torch.equal(mask[:n, :n], blk[:, None] == blk[None, :])
    assert torch.equal(mask[:n, n:], blk[None, :] < blk[:, None])
    if blocks == 1:
        assert torch.equal(mask, torch.block_diag(torch.ones(n, n), torch.ones(n, n)).bool())


@LAWS
@given(case=cases())
def test_mask_layout_round_trips_any_dense_mask(
    case: tuple[AttentionLayout, Rule, int, int, int, int],
) -> None:
    layout, _, _, q_len, kv_len, q_offset = case
    dense = layout.dense(q_len, kv_len, q_offset)
    if dense is None:
        return
    again = MaskLayout(mask=dense, q_offset=q_offset).dense(q_len, kv_len, q_offset)
    assert again is not None and torch.equal(again, dense)


def test_block_index_follows_positions_so_both_halves_share_a_block() -> None:
    layout = BD3Layout(seq_len=6, size=2)
    positions = torch.arange(6).repeat(2)[None]
    assert block_index(layout, positions, 3).tolist() == [[0, 0, 1, 1, 2, 2] * 2]
    assert block_index(BlockCausalLayout(size=4), torch.arange(10)[None], 3).tolist() == [
        [0] * 4 + [1] * 4 + [2] * 2
    ]
    assert block_index(None, positions, 1).eq(0).all()  # one block needs no structure
    with pytest.raises(MdmError, match="block size"):
        block_index(FullLayout(), positions, 3)


# -- errors -----------------------------------------------------------------------------------


def test_bad_layouts_and_windows_are_clear_errors() -> None:
    with pytest.raises(MdmError, match="block size"):
        BlockCausalLayout(size=0)
    with pytest.raises(MdmError, match="divide"):
        BD3Layout(seq_len=5, size=2)
    with pytest.raises(MdmError, match="z ⊕ x"):
        BD3Layout(seq_len=4, size=2).dense(9, 9)
    with pytest.raises(MdmError, match="boolean"):
        MaskLayout(mask=torch.ones(1, 3, 3))
    rows = MaskLayout(mask=torch.ones(1, 3, 8, dtype=torch.bool), q_offset=5)
    assert attention_mask(rows, 3, 8) is not None
    for q_len, kv_len in [(4, 8), (3, 9), (8, 8)]:
        with pytest.raises(MdmError, match="mask layout"):
            attention_mask(rows, q_len, kv_len)
    with pytest.raises(MdmError, match="key_padding"):
        FullLayout(key_padding=torch.ones(1, 5, dtype=torch.bool)).dense(4, 4)
    with pytest.raises(MdmError, match="queries over only"):
        attention_mask(FullLayout(), 5, 4)
