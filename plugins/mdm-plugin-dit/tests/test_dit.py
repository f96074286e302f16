"""Behaviour of the DiT backbone: shapes, presets, conditioning, layouts, positions, KV cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mdm_plugin_dit.model import DiT, DiTParams
from pydantic import ValidationError

from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, KVCache, Vocab

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)
FAST = settings(max_examples=8, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matmuls run far faster on one thread than on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides: object) -> DiT:
    return DiT(DiT.Params.model_validate({"size": "tiny", **overrides}), VOCAB, 32).eval()


def randomised(model: DiT, seed: int = 0) -> DiT:
    """Give every weight (adaLN-zero ones included) a random value so information can flow."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15, generator=gen)
    return model


def ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB.num_regular, (batch, length), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


# -- registration and parameters ---------------------------------------------------------------


def test_registered_under_its_name() -> None:
    from mdm_core.plugins import get_registry

    assert get_registry().load("backbone", "dit") is DiT


def test_conformance_kit() -> None:
    from mdm_core.testing import check_backbone

    check_backbone(lambda vocab, max_len: DiT(DiT.Params(size="tiny"), vocab, max_len))
    check_backbone(lambda vocab, max_len: randomised(DiT(DiT.Params(size="tiny"), vocab, max_len)))


def test_presets_fill_shapes_and_explicit_keys_win() -> None:
    assert (DiTParams(size="tiny").dim, DiTParams(size="tiny").layers, DiTParams(size="tiny").heads) == (
        64,
        2,
        2,
    )
    small = DiTParams(size="small", layers=6)
    assert (small.dim, small.layers, small.heads) == (768, 6, 12)
    assert DiTParams().dim == 256 and DiTParams().layers == 6
    # A dumped preset validates back to the same parameters (resolved specs round-trip).
    assert DiTParams.model_validate(small.model_dump()) == small


@pytest.mark.parametrize(
    "bad",
    [{"dim": 100, "heads": 8}, {"dim": 96, "heads": 32}, {"size": "huge"}, {"depth": 3}, {"dropout": 1.0}],
)
def test_bad_params_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DiTParams.model_validate(bad)


def test_small_preset_matches_mdlm_small_size() -> None:
    with torch.device("meta"):
        model = DiT(DiTParams(size="small"), Vocab(size=30524, pad_id=30522, mask_id=30523), 128)
    assert model.head is not None
    total = sum(p.numel() for p in model.parameters())
    body = total - model.embed.weight.numel() - model.head.weight.numel()
    # 12 × (12·768² attention+MLP + 128→6·768 adaLN) ≈ 92.3M without the vocabulary-sized layers.
    assert 85e6 <= body <= 95e6, body


# -- shapes, dtypes, gradients ----------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_shapes_and_gradients(tie: bool) -> None:
    model = randomised(tiny(tie_embeddings=tie)).train()
    logits = model(ids(3, 10, 0))
    assert logits.shape == (3, 10, VOCAB.size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bf16_autocast_runs_and_stays_close() -> None:
    model = randomised(tiny())
    x = ids(2, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x)
    assert low.shape == (2, 8, VOCAB.size) and low.is_floating_point() and torch.isfinite(low).all()
    assert torch.allclose(low.float(), model(x), atol=0.15)


def test_starts_with_zero_logits_and_uniform_prediction() -> None:
    logits = tiny()(ids(2, 8, 2))
    assert torch.equal(logits, torch.zeros_like(logits))


# -- time conditioning ------------------------------------------------------------------------


def test_adaln_zero_init_makes_output_independent_of_t() -> None:
    model = tiny(time_conditioning=True)
    assert model.head is not None
    torch.nn.init.normal_(model.head.weight, std=1.0)  # non-zero logits, modulation still zero
    x = ids(2, 8, 3)
    a, b = model(x, torch.tensor([0.05, 0.1])), model(x, torch.tensor([0.9, 0.7]))
    assert a.abs().sum() > 0 and torch.equal(a, b)


def test_without_time_conditioning_t_is_ignored() -> None:
    model = randomised(tiny())
    x = ids(2, 8, 4)
    assert model.uses_time is False
    assert torch.equal(model(x), model(x, torch.tensor([0.1, 0.9])))
    assert torch.equal(model(x, torch.rand(2, 4)), model(x, torch.tensor([0.5, 0.5])))


def test_with_time_conditioning_t_matters_and_is_required() -> None:
    model = randomised(tiny(time_conditioning=True))
    x = ids(2, 8, 5)
    assert model.uses_time is True
    assert not close(model(x, torch.tensor([0.1, 0.1])), model(x, torch.tensor([0.9, 0.9])))
    with pytest.raises(MdmError, match="time_cond"):
        model(x)
    with pytest.raises(MdmError, match="time_cond"):
        model(x, torch.rand(2, 2, 2))


def test_per_block_t_equal_columns_equals_one_t() -> None:
    model = randomised(tiny(time_conditioning=True))
    x = ids(2, 8, 6)
    t = torch.tensor([0.3, 0.8])
    assert close(model(x, t[:, None].expand(2, 4)), model(x, t))


def test_per_block_t_reaches_only_its_block() -> None:
    """With blocks that cannot see each other, block k's logits are those of block k alone at t_k."""
    model = randomised(tiny(time_conditioning=True))
    x, t = ids(2, 12, 7), torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.2, 0.4]])
    block = torch.arange(12) // 4
    layout = AttentionLayout(kind="mask", mask=(block[:, None] == block[None, :])[None])
    full = model(x, t, layout)
    for k in range(3):
        part = slice(4 * k, 4 * k + 4)
        alone = model(x[:, part], t[:, k], position_ids=torch.arange(12)[part])
        assert close(full[:, part], alone)


def test_per_block_t_follows_positions_for_z_concat_x() -> None:
    """Halves sharing positions 0..L-1 get the same block's t: equal halves give equal logits."""
    model = randomised(tiny(time_conditioning=True))
    x, t = ids(2, 8, 8), torch.tensor([[0.1, 0.9], [0.6, 0.3]])
    half = torch.arange(16) // 8
    layout = AttentionLayout(kind="mask", mask=(half[:, None] == half[None, :])[None])
    out = model(torch.cat([x, x], 1), t, layout, position_ids=torch.arange(8).repeat(2))
    assert close(out[:, :8], out[:, 8:])
    assert not close(out[:, :4], model(x, t[:, 1])[:, :4])  # block 0 really saw t[:, 0]


# -- positions --------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000))
def test_positions_come_only_from_position_ids(seed: int) -> None:
    """Permuting tokens together with their positions permutes the logits (no hidden index)."""
    model = randomised(tiny(), seed)
    gen = torch.Generator().manual_seed(seed)
    x = ids(2, 10, seed)
    positions = torch.randint(0, 20, (2, 10), generator=gen)
    perm = torch.randperm(10, generator=gen)
    assert close(
        model(x, position_ids=positions)[:, perm], model(x[:, perm], position_ids=positions[:, perm])
    )


def test_position_ids_shapes_and_effect() -> None:
    model = randomised(tiny())
    x = ids(2, 8, 9)
    default = model(x)
    assert close(default, model(x, position_ids=torch.arange(8)))
    assert close(default, model(x, position_ids=torch.arange(8).expand(2, 8)))
    assert not close(default, model(x, position_ids=torch.arange(8) * 3))
    with pytest.raises(MdmError, match="position_ids"):
        model(x, position_ids=torch.arange(7))


# -- layouts ----------------------------------------------------------------------------------


def influence(model: DiT, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
    """``[L, L]``: True where changing the token at key j changes some logit at query i."""
    base = model(x, **kwargs)
    length = x.shape[1]
    out = torch.zeros(length, length, dtype=torch.bool)
    for j in range(length):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % VOCAB.num_regular
        out[:, j] = (model(y, **kwargs) - base).abs().amax(dim=(0, 2)) > 1e-6
    return out


def reachable(allowed: torch.Tensor, layers: int) -> torch.Tensor:
    """Keys that can reach each query through ``layers`` attention hops (residual keeps self)."""
    step = allowed | torch.eye(allowed.shape[0], dtype=torch.bool)
    reach = torch.eye(allowed.shape[0], dtype=torch.bool)
    for _ in range(layers):
        reach = (reach.int() @ step.int()) > 0
    return reach


@FAST
@given(block=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_block_causal_later_blocks_never_reach_earlier_ones(block: int, seed: int) -> None:
    model = randomised(tiny(), seed)
    flow = influence(model, ids(1, 10, seed), layout=AttentionLayout(kind="block_causal", block_size=block))
    blocks = torch.arange(10) // block
    assert not flow[blocks[:, None] < blocks[None, :]].any()
    assert flow[blocks[:, None] == blocks[None, :]].all()  # inside a block everything flows


@FAST
@given(seed=st.integers(0, 10_000))
def test_arbitrary_mask_is_respected(seed: int) -> None:
    model = randomised(tiny(), seed)
    gen = torch.Generator().manual_seed(seed)
    allowed = (torch.rand(8, 8, generator=gen) < 0.3) | torch.eye(8, dtype=torch.bool)
    flow = influence(model, ids(1, 8, seed), layout=AttentionLayout(kind="mask", mask=allowed[None]))
    assert not (flow & ~reachable(allowed, model.params.layers)).any()
    assert flow[allowed].all()


@FAST
@given(seed=st.integers(0, 10_000), real=st.integers(1, 9))
def test_key_padding_hides_padded_tokens(seed: int, real: int) -> None:
    model = randomised(tiny(), seed)
    padding = (torch.arange(9) < real)[None]
    flow = influence(model, ids(1, 9, seed), layout=AttentionLayout(key_padding=padding))
    assert not flow[:real, real:].any()
    assert flow[:real, :real].all()


def test_wrong_mask_shape_is_a_clear_error() -> None:
    model = tiny()
    with pytest.raises(MdmError, match="mask"):
        model(ids(1, 8, 0), layout=AttentionLayout(kind="mask", mask=torch.ones(1, 8, 6, dtype=torch.bool)))


# -- KV cache ---------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 2, 4]))
def test_kv_cache_block_by_block_equals_block_causal_pass(seed: int, block: int) -> None:
    model = randomised(tiny(), seed)
    x = ids(2, 12, seed)
    full = model(x, layout=AttentionLayout(kind="block_causal", block_size=block))
    cache = KVCache()
    cache.append = True
    for start in range(0, 12, block):
        part = model(x[:, start : start + block], kv_cache=cache)
        assert close(part, full[:, start : start + block])
        assert cache.length == start + block


def test_kv_cache_with_square_layout_uses_the_last_rows() -> None:
    """A block-causal layout over cache + new tokens applies to the new tokens' rows."""
    model = randomised(tiny())
    x = ids(2, 12, 13)
    layout = AttentionLayout(kind="block_causal", block_size=3)
    cache = KVCache()
    cache.append = True
    model(x[:, :6], layout=layout, kv_cache=cache)
    cache.append = False
    assert close(model(x[:, 6:], layout=layout, kv_cache=cache), model(x, layout=layout)[:, 6:])


def test_kv_cache_without_append_leaves_cache_alone() -> None:
    model = randomised(tiny())
    x = ids(2, 8, 10)
    cache = KVCache()
    cache.append = True
    model(x[:, :4], layout=AttentionLayout(kind="block_causal", block_size=2), kv_cache=cache)
    cache.append = False
    first = model(x[:, 4:], kv_cache=cache)
    assert cache.length == 4 and close(first, model(x[:, 4:], kv_cache=cache))


def test_kv_cache_of_clean_prefix_equals_z_concat_x_pass() -> None:
    """Block diffusion: a noisy block's logits from one z ⊕ x pass equal those from a clean cache."""
    model = randomised(tiny())
    size, n = 3, 4
    length = size * n
    x = ids(2, length, 11)
    z = torch.where(torch.rand(2, length, generator=torch.Generator().manual_seed(1)) < 0.5, VOCAB.mask_id, x)
    block = torch.arange(length) // size
    noisy_sees_noisy = block[:, None] == block[None, :]
    noisy_sees_clean = block[:, None] > block[None, :]
    clean_sees_clean = block[:, None] >= block[None, :]
    mask = torch.cat(
        [
            torch.cat([noisy_sees_noisy, noisy_sees_clean], 1),
            torch.cat([torch.zeros_like(clean_sees_clean), clean_sees_clean], 1),
        ]
    )
    positions = torch.arange(length).repeat(2)
    full = model(
        torch.cat([z, x], 1), layout=AttentionLayout(kind="mask", mask=mask[None]), position_ids=positions
    )
    for b in range(n):
        cache = KVCache()
        cache.append = True
        if b:
            model(
                x[:, : b * size], layout=AttentionLayout(kind="block_causal", block_size=size), kv_cache=cache
            )
        cache.append = False
        part = slice(b * size, (b + 1) * size)
        rows = AttentionLayout(kind="mask", mask=torch.ones(1, size, b * size + size, dtype=torch.bool))
        assert close(model(z[:, part], layout=rows, kv_cache=cache), full[:, part])
        assert close(model(z[:, part], kv_cache=cache), full[:, part])


def test_kv_cache_with_key_padding_rows() -> None:
    model = randomised(tiny())
    x = ids(1, 8, 12)
    cache = KVCache()
    cache.append = True
    model(x[:, :4], kv_cache=cache)
    cache.append = False
    keep = torch.tensor([[True, False, True, True, True, True, True, True]])
    rows = AttentionLayout(kind="mask", mask=torch.ones(1, 4, 8, dtype=torch.bool), key_padding=keep)
    cached = model(x[:, 4:], layout=rows, kv_cache=cache)
    # Reference: one pass where the prefix sees only itself (as when it was cached) and the new
    # queries do not see key 1.
    square = torch.ones(8, 8, dtype=torch.bool)
    square[:4, 4:] = False
    square[4:, 1] = False
    reference = model(x, layout=AttentionLayout(kind="mask", mask=square[None]))
    assert close(cached, reference[:, 4:])
    assert not close(cached, model(x[:, 4:], kv_cache=cache))
