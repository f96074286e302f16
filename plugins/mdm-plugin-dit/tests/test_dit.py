"""Behaviour of the DiT backbone: shapes, presets, conditioning, layouts, positions, KV cache."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mdm_plugin_dit.model import DiT, DiTParams
from pydantic import ValidationError

from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    BD3Layout,
    BlockCausalLayout,
    FullLayout,
    KVCache,
    MaskLayout,
    RunShape,
    Vocab,
)

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)
SHAPE = RunShape(vocab=VOCAB, seq_len=32)
FAST = settings(max_examples=8, deadline=None)
#: Eager FlexAttention (the CPU reference) warns that it is unfused; that is the point here.
EAGER_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@dataclass(eq=False)
class BlockDiagonal(AttentionLayout):
    """A layout the core does not ship (as a plug-in would define it): blocks see only themselves."""

    name: ClassVar[str] = "test_block_diagonal"
    size: int = 1

    @property
    def block_size(self) -> int | None:
        return self.size

    def allowed(
        self, q_idx: torch.Tensor, kv_idx: torch.Tensor, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        return q_idx // self.size == kv_idx // self.size


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny matmuls run far faster on one thread than on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides: object) -> DiT:
    return DiT(DiT.Params.model_validate({"size": "tiny", **overrides}), SHAPE).eval()


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

    check_backbone(lambda shape: DiT(DiT.Params(size="tiny"), shape))
    check_backbone(lambda shape: randomised(DiT(DiT.Params(size="tiny"), shape)))
    check_backbone(lambda shape: randomised(DiT(DiT.Params(size="tiny", time_conditioning=True), shape)))


@EAGER_FLEX
def test_conformance_kit_with_flex_attention() -> None:
    from mdm_core.testing import check_backbone

    check_backbone(
        lambda shape: randomised(
            DiT(DiT.Params(size="tiny", attention="flex", time_conditioning=True), shape)
        ),
        max_examples=1,
    )


# -- unchanged output ------------------------------------------------------------------------

#: v1 DiT (commit e6f51c7) on the inputs of ``test_logits_unchanged_since_v1``: per case
#: Σ logits·cos(index), Σ |logits|, and logits[1, -1, :4].
V1_LOGITS = {
    "full": (1.4441718878103402, 351.67398454621434, [-1.296285, 2.893996, -2.46189, -1.158569]),
    "padded": (-3.751113813150839, 353.47757423110306, [-1.411826, 2.783696, -2.322622, -1.425273]),
    "blocks": (36.63311915437235, 322.2453027414158, [0.154306, -2.186611, 0.048298, -1.400274]),
}


@EAGER_FLEX
@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_logits_unchanged_since_v1(attention: str) -> None:
    """The full layout (with and without key padding) and block-causal per-block t give v1's logits."""
    model = randomised(tiny(time_conditioning=True, attention=attention))
    x = ids(2, 10, 0)
    padding = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    with torch.no_grad():
        cases = {
            "full": model(x, torch.tensor([0.3, 0.8])),
            "padded": model(x, torch.tensor([0.3, 0.8]), FullLayout(key_padding=padding)),
            "blocks": model(x, torch.tensor([[0.3, 0.6], [0.8, 0.1]]), BlockCausalLayout(size=5)),
        }
    weights = torch.arange(2 * 10 * VOCAB.size, dtype=torch.float64).cos().reshape(2, 10, VOCAB.size)
    tolerance = 1e-6 if attention == "sdpa" else 1e-5  # flex sums in another order
    for case, logits in cases.items():
        checksum, mass, values = V1_LOGITS[case]
        logits = logits.double()
        assert abs((logits * weights).sum().item() - checksum) <= tolerance * mass, case
        assert abs(logits.abs().sum().item() - mass) <= tolerance * mass, case
        assert torch.allclose(logits[1, -1, :4], torch.tensor(values, dtype=torch.float64), atol=2e-6), case


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
        model = DiT(DiTParams(size="small"), RunShape(Vocab(size=30524, pad_id=30522, mask_id=30523), 128))
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
    blocks = BlockCausalLayout(size=2)
    assert torch.equal(model(x, torch.rand(2, 4), blocks), model(x, torch.tensor([0.5, 0.5]), blocks))


def test_with_time_conditioning_t_matters_and_is_required() -> None:
    model = randomised(tiny(time_conditioning=True))
    x = ids(2, 8, 5)
    assert model.uses_time is True
    assert not close(model(x, torch.tensor([0.1, 0.1])), model(x, torch.tensor([0.9, 0.9])))
    with pytest.raises(MdmError, match="time_cond"):
        model(x)
    with pytest.raises(MdmError, match="time_cond"):
        model(x, torch.rand(2, 2, 2))
    with pytest.raises(MdmError, match="block size"):  # per-block t needs to know the blocks
        model(x, torch.rand(2, 2))


def test_per_block_t_equal_columns_equals_one_t() -> None:
    model = randomised(tiny(time_conditioning=True))
    x = ids(2, 8, 6)
    t = torch.tensor([0.3, 0.8])
    blocks = BlockCausalLayout(size=2)
    assert close(model(x, t[:, None].expand(2, 4), blocks), model(x, t, blocks))
    assert close(model(x, t[:, None]), model(x, t))  # one block needs no block layout


def test_per_block_t_reaches_only_its_block() -> None:
    """With blocks that cannot see each other, block k's logits are those of block k alone at t_k."""
    model = randomised(tiny(time_conditioning=True))
    x, t = ids(2, 12, 7), torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.2, 0.4]])
    full = model(x, t, BlockDiagonal(size=4))
    for k in range(3):
        part = slice(4 * k, 4 * k + 4)
        alone = model(x[:, part], t[:, k], position_ids=torch.arange(12)[part])
        assert close(full[:, part], alone)


def test_per_block_t_follows_positions_for_z_concat_x() -> None:
    """Halves sharing positions 0..L-1 get the same block's t: with z = x the BD3 layout shows the
    noisy block b the same tokens at the same positions as the clean block b, so equal logits."""
    model = randomised(tiny(time_conditioning=True))
    x, t = ids(2, 8, 8), torch.tensor([[0.1, 0.9], [0.6, 0.3]])
    layout = BD3Layout(seq_len=8, size=4)
    out = model(torch.cat([x, x], 1), t, layout, position_ids=torch.arange(8).repeat(2))
    assert close(out[:, :8], out[:, 8:])
    assert close(out[:, 8:], model(x, t, BlockCausalLayout(size=4)))  # the clean half is block-causal
    assert not close(out[:, :4], model(x, t[:, 1])[:, :4])  # block 0 really saw t[:, 0]


def test_a_layout_defined_outside_the_core_trains() -> None:
    """A plug-in's layout needs no DiT change: per-block t, forward and backward just work."""
    model = randomised(tiny(time_conditioning=True)).train()
    logits = model(ids(2, 8, 9), torch.tensor([[0.2, 0.7], [0.4, 0.9]]), BlockDiagonal(size=4))
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


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
    flow = influence(model, ids(1, 10, seed), layout=BlockCausalLayout(size=block))
    blocks = torch.arange(10) // block
    assert not flow[blocks[:, None] < blocks[None, :]].any()
    assert flow[blocks[:, None] == blocks[None, :]].all()  # inside a block everything flows


@FAST
@given(seed=st.integers(0, 10_000))
def test_arbitrary_mask_is_respected(seed: int) -> None:
    model = randomised(tiny(), seed)
    gen = torch.Generator().manual_seed(seed)
    allowed = (torch.rand(8, 8, generator=gen) < 0.3) | torch.eye(8, dtype=torch.bool)
    flow = influence(model, ids(1, 8, seed), layout=MaskLayout(mask=allowed[None]))
    assert not (flow & ~reachable(allowed, model.params.layers)).any()
    assert flow[allowed].all()


@FAST
@given(seed=st.integers(0, 10_000), real=st.integers(1, 9))
def test_key_padding_hides_padded_tokens(seed: int, real: int) -> None:
    model = randomised(tiny(), seed)
    padding = (torch.arange(9) < real)[None]
    flow = influence(model, ids(1, 9, seed), layout=FullLayout(key_padding=padding))
    assert not flow[:real, real:].any()
    assert flow[:real, :real].all()


@FAST
@given(seed=st.integers(0, 10_000), size=st.sampled_from([1, 2, 3]))
def test_bd3_layout_flows_exactly_as_reachable(seed: int, size: int) -> None:
    """Over z ⊕ x (positions repeated), information flows exactly along the BD3 rule's paths."""
    model = randomised(tiny(), seed)
    layout = BD3Layout(seq_len=6, size=size)
    flow = influence(model, ids(1, 12, seed), layout=layout, position_ids=torch.arange(6).repeat(2))
    allowed = layout.dense(12, 12)
    assert allowed is not None
    assert torch.equal(flow, reachable(allowed[0], model.params.layers))


def test_wrong_mask_shape_is_a_clear_error() -> None:
    model = tiny()
    with pytest.raises(MdmError, match="mask layout"):
        model(ids(1, 8, 0), layout=MaskLayout(mask=torch.ones(1, 8, 6, dtype=torch.bool)))


# -- KV cache ---------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 2, 4]))
def test_kv_cache_block_by_block_equals_block_causal_pass(seed: int, block: int) -> None:
    model = randomised(tiny(), seed)
    x = ids(2, 12, seed)
    full = model(x, layout=BlockCausalLayout(size=block))
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
    layout = BlockCausalLayout(size=3)
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
    model(x[:, :4], layout=BlockCausalLayout(size=2), kv_cache=cache)
    cache.append = False
    first = model(x[:, 4:], kv_cache=cache)
    assert cache.length == 4 and close(first, model(x[:, 4:], kv_cache=cache))


def test_kv_cache_of_clean_prefix_equals_z_concat_x_pass() -> None:
    """Block diffusion: a noisy block's logits from one z ⊕ x pass equal those from a clean cache,
    per-block t included (the cache is built with each clean block's own t, as in training)."""
    model = randomised(tiny(time_conditioning=True))
    size, n = 3, 4
    length = size * n
    x = ids(2, length, 11)
    z = torch.where(torch.rand(2, length, generator=torch.Generator().manual_seed(1)) < 0.5, VOCAB.mask_id, x)
    t = torch.rand(2, n, generator=torch.Generator().manual_seed(2))
    positions = torch.arange(length)
    full = model(
        torch.cat([z, x], 1), t, BD3Layout(seq_len=length, size=size), position_ids=positions.repeat(2)
    )
    for b in range(n):
        cache = KVCache()
        cache.append = True
        if b:
            model(x[:, : b * size], t, BlockCausalLayout(size=size), positions[: b * size], cache)
        cache.append = False
        part = slice(b * size, (b + 1) * size)
        rows = MaskLayout(mask=torch.ones(1, size, b * size + size, dtype=torch.bool), q_offset=b * size)
        # A mask layout has no blocks: the block's own t as [B] is the same conditioning.
        assert close(model(z[:, part], t[:, b], rows, positions[part], cache), full[:, part])
        assert close(
            model(z[:, part], t, BlockCausalLayout(size=size), positions[part], cache), full[:, part]
        )


def test_kv_cache_with_key_padding_rows() -> None:
    model = randomised(tiny())
    x = ids(1, 8, 12)
    cache = KVCache()
    cache.append = True
    model(x[:, :4], kv_cache=cache)
    cache.append = False
    keep = torch.tensor([[True, False, True, True, True, True, True, True]])
    rows = MaskLayout(mask=torch.ones(1, 4, 8, dtype=torch.bool), q_offset=4, key_padding=keep)
    cached = model(x[:, 4:], layout=rows, kv_cache=cache)
    # Reference: one pass where the prefix sees only itself (as when it was cached) and the new
    # queries do not see key 1.
    square = torch.ones(8, 8, dtype=torch.bool)
    square[:4, 4:] = False
    square[4:, 1] = False
    reference = model(x, layout=MaskLayout(mask=square[None]))
    assert close(cached, reference[:, 4:])
    assert not close(cached, model(x[:, 4:], kv_cache=cache))


# -- FlexAttention --------------------------------------------------------------------------------


@EAGER_FLEX
def test_flex_attention_equals_sdpa_for_every_core_layout() -> None:
    """Same weights, both attention paths: identical logits (to float error) for each layout,
    with z ⊕ x positions and per-block t, and block by block through a KV cache."""
    sdpa = randomised(tiny(time_conditioning=True))
    flex = tiny(time_conditioning=True, attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    x, t = ids(2, 8, 14), torch.tensor([[0.2, 0.5], [0.9, 0.4]])
    padding = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    square = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3)) < 0.4
    cases: list[tuple[torch.Tensor, AttentionLayout, torch.Tensor | None]] = [
        (x, FullLayout(), None),
        (x, FullLayout(key_padding=padding), None),
        (x, BlockCausalLayout(size=4), None),
        (x, BlockCausalLayout(size=4, key_padding=padding), None),
        (x, MaskLayout(mask=square), None),
        (torch.cat([x, x.flip(1)], 1), BD3Layout(seq_len=8, size=4), torch.arange(8).repeat(2)),
        (x, BlockDiagonal(size=4), None),
    ]
    with torch.no_grad():
        for inputs, layout, positions in cases:
            time = t if layout.block_size else t[:, 0]
            assert close(flex(inputs, time, layout, positions), sdpa(inputs, time, layout, positions)), (
                layout.name
            )
        caches = KVCache(), KVCache()
        for cache in caches:
            cache.append = True
        for start in (0, 4):
            part, layout = x[:, start : start + 4], BlockCausalLayout(size=4)
            assert close(flex(part, t, layout, kv_cache=caches[0]), sdpa(part, t, layout, kv_cache=caches[1]))


def test_flex_attention_refuses_to_train_on_cpu() -> None:
    model = tiny(attention="flex").train()
    with pytest.raises(MdmError, match="attention: sdpa"):
        model(ids(1, 4, 0), layout=BlockCausalLayout(size=2))
