"""Conformance laws of a Backbone (see ``mdm_core.testing``)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field
from torch import Tensor, nn

from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    BD3Layout,
    BlockCausalLayout,
    FullLayout,
    KVCache,
    MaskLayout,
    RunShape,
)
from mdm_core.interfaces import (
    Params as BaseParams,
)
from mdm_core.layouts import attention_mask, block_index
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.strategies import vocabs

RTOL, ATOL = 1e-4, 1e-5


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=RTOL, atol=ATOL)


def _reach(allowed: Tensor) -> Tensor:
    """Transitive, reflexive closure of "query i attends to key j": what any depth can see."""
    length = allowed.shape[-1]
    reach = allowed | torch.eye(length, dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(length)))):
        reach = reach | ((reach.float() @ reach.float()) > 0)
    return reach


def _unaffected(layout: AttentionLayout, size: int, length: int, changed: Tensor) -> Tensor:
    """``[B, L]``: positions that cannot reach any ``changed`` position under ``layout``."""
    allowed = layout.dense(length, length)
    if allowed is None:
        reach = torch.ones(size, length, length, dtype=torch.bool)
    else:
        reach = _reach(allowed.expand(size, length, length))
    return ~(reach & changed[:, None, :]).any(dim=-1)


def _forward(model: Backbone, law: str, input_ids: Tensor, **kwargs: object) -> Tensor:
    """Run the model; an exception is a failure of ``law`` (not an error of the kit)."""
    try:
        return model(input_ids, **kwargs)
    except Exception as exc:
        raise AssertionError(f"{law}: forward raised {type(exc).__name__}: {exc}") from exc


def _check_hidden(
    model: Backbone,
    ids: Tensor,
    time: Tensor | None,
    layout: AttentionLayout,
    changed: Tensor,
    law: str,
    position_ids: Tensor | None = None,
) -> None:
    """Replace the ids where ``changed`` [B, L]; positions that cannot reach them keep their logits."""
    size, length = ids.shape
    keep = _unaffected(layout, size, length, changed)
    replaced = torch.where(changed, (ids + 1) % model.vocab.num_regular, ids)
    before = _forward(model, law, ids, time_cond=time, layout=layout, position_ids=position_ids)
    after = _forward(model, law, replaced, time_cond=time, layout=layout, position_ids=position_ids)
    require(
        _close(before[keep], after[keep]), f"{law}: logits changed at a position that cannot see the change"
    )


def check_backbone(
    make: Callable[[RunShape], Backbone], *, max_examples: int = 10, kv_cache: bool = True
) -> None:
    """The laws every backbone honours; ``make(shape)`` builds one for a run of ``shape``.

    ``shape.seq_len`` is the sequence length L the backbone is built for (``max_len``); inputs
    are L tokens, or 2L for ``z ⊕ x`` with position ids ``0..L−1`` twice. Laws: logits
    ``[B, L, V]``, finite, deterministic in eval mode, ``layout=None`` is the full layout; no
    information flows that a core layout forbids (full with key padding, block-causal, BD3, an
    arbitrary per-example mask; transitively, so any depth passes); repeated position ids are
    accepted and respected (with ``z = x`` under BD3 both halves give equal logits, and the clean
    half equals a block-causal pass of ``x``); with ``uses_time``, per-block times ``[B, n_blocks]``
    with equal columns equal ``[B]`` times, and block k's time reaches only positions that can see
    block k; and, unless ``kv_cache=False`` (a backbone without a cache, which block samplers then
    cannot use), a KV cache is exact: block by block with ``append`` equals one block-causal pass,
    and a noisy block over the cached clean prefix equals the noisy half of the BD3 pass.

    The laws of a layout run only when the backbone claims it (``Backbone.layouts``; ``"any"``
    claims all): every backbone honours ``full`` (with key padding); ``block_causal`` and
    ``mask`` have their own laws; the ``z ⊕ x`` inputs, per-block times and the KV cache are laws
    of backbones claiming both ``bd3`` and ``block_causal``. Layout names the kit does not know
    (a plug-in's) are the plug-in's to check.
    """

    @law_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**31 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 20), label="vocab")
        size = data.draw(st.integers(1, 3), label="B")
        block = data.draw(st.integers(1, 3), label="block size")
        blocks = data.draw(st.integers(1, 3), label="blocks")
        length = block * blocks
        g = generator(seed)
        model = make(RunShape(vocab=vocab, seq_len=length, batch_size=size, seed=seed))
        model.eval()
        honours = type(model).honours
        require(honours("full"), "every backbone honours the full layout (layout=None means it)")
        x = torch.randint(0, vocab.num_regular, (size, length), generator=g)
        z = torch.where(torch.rand((size, length), generator=g) < 0.5, vocab.mask_id, x)
        time = torch.rand((size,), generator=g) if model.uses_time else None
        block_time = torch.rand((size, blocks), generator=g) if model.uses_time else None
        causal = BlockCausalLayout(size=block)
        bd3 = BD3Layout(seq_len=length, size=block)
        pairs = torch.arange(length).repeat(2)
        with torch.no_grad():
            logits = _forward(model, "forward", z, time_cond=time)
            require(
                logits.shape == (size, length, vocab.size), f"logits {tuple(logits.shape)} must be [B, L, V]"
            )
            require(
                logits.is_floating_point() and torch.isfinite(logits).all(), "logits must be finite floats"
            )
            again = model(z, time_cond=time)
            require(torch.equal(logits, again), "eval-mode forward must be deterministic")
            full = model(z, time_cond=time, layout=FullLayout())
            require(_close(logits, full), "layout=None must mean the full layout")

            # Layouts: no information flow that the layout forbids.
            changed = torch.zeros((size, length), dtype=torch.bool)
            changed[:, data.draw(st.integers(0, length - 1), label="changed position")] = True
            if honours("block_causal"):
                _check_hidden(model, z, time, causal, changed, "block_causal layout")
            if honours("mask"):
                rank = torch.stack([torch.randperm(length, generator=g) for _ in range(size)])
                order = rank[:, None, :] <= rank[:, :, None]
                mask = order & (torch.rand((size, length, length), generator=g) < 0.7)
                _check_hidden(model, z, time, MaskLayout(mask=mask), changed, "mask layout")
            real = torch.rand((size, length), generator=g) < 0.6
            real[:, 0] = True
            _check_hidden(model, z, time, FullLayout(key_padding=real), ~real, "key padding")
            if not (honours("bd3") and honours("block_causal")):
                return

            # Repeated position ids (z ⊕ x, longer than max_len): positions come from position_ids.
            law = "repeated position ids (z ⊕ x: 2L inputs, both halves at positions 0..L-1)"
            pair = _forward(model, law, torch.cat([x, x], 1), time_cond=time, layout=bd3, position_ids=pairs)
            require(pair.shape == (size, 2 * length, vocab.size), f"{law}: logits must be [B, 2L, V]")
            require(_close(pair[:, :length], pair[:, length:]), f"{law}: with z = x both halves must agree")
            require(
                _close(pair[:, length:], model(x, time_cond=time, layout=causal)),
                f"{law}: the clean half must equal a block-causal pass over x",
            )

            doubled = torch.zeros((size, 2 * length), dtype=torch.bool)
            doubled[:, data.draw(st.integers(0, 2 * length - 1), label="changed index of z ⊕ x")] = True
            law = "bd3 layout over z ⊕ x"
            _check_hidden(model, torch.cat([z, x], 1), time, bd3, doubled, law, pairs)

            if block_time is not None:
                k = data.draw(st.integers(0, blocks - 1), label="block whose time moves")
                _check_block_time(model, x, z, time, block_time, block, k)
            if kv_cache:
                _check_kv_cache(model, x, z, block_time if block_time is not None else time, block)

    laws()


def _check_block_time(
    model: Backbone, x: Tensor, z: Tensor, time: Tensor | None, block_time: Tensor, block: int, k: int
) -> None:
    """Per-block times ``[B, n_blocks]``: equal columns mean one t; t_k reaches only what sees block k."""
    assert time is not None
    size, length = x.shape
    blocks = block_time.shape[1]
    law = "per-block time [B, n_blocks]"
    causal = BlockCausalLayout(size=block)
    same = _forward(model, law, x, time_cond=time[:, None].expand(size, blocks), layout=causal)
    require(
        _close(same, model(x, time_cond=time, layout=causal)), f"{law}: equal columns must mean the [B] time"
    )
    pairs = torch.arange(length).repeat(2)
    moved = block_time.clone()
    moved[:, k] = 1.0 - moved[:, k] / 2
    bd3 = BD3Layout(seq_len=length, size=block)
    changed = (pairs // block == k)[None].expand(size, -1)
    keep = _unaffected(bd3, size, 2 * length, changed)
    inputs = torch.cat([z, x], 1)
    before = _forward(model, law, inputs, time_cond=block_time, layout=bd3, position_ids=pairs)
    after = _forward(model, law, inputs, time_cond=moved, layout=bd3, position_ids=pairs)
    require(
        _close(before[keep], after[keep]),
        f"{law}: block {k}'s time changed logits at positions that cannot see block {k} "
        "(a position's block is position // block_size)",
    )


def _check_kv_cache(model: Backbone, x: Tensor, z: Tensor, time: Tensor | None, block: int) -> None:
    """Block by block through a cache: clean blocks reproduce the block-causal pass, noisy blocks
    over the cached clean prefix reproduce the noisy half of the BD3 pass over ``z ⊕ x``."""
    length = x.shape[1]
    causal = BlockCausalLayout(size=block)
    law = "KV cache"
    full = _forward(model, law, x, time_cond=time, layout=causal)
    bd3 = BD3Layout(seq_len=length, size=block)
    pairs = torch.arange(length).repeat(2)
    noisy = _forward(model, law, torch.cat([z, x], 1), time_cond=time, layout=bd3, position_ids=pairs)
    cache = KVCache()
    for start in range(0, length, block):
        part, positions = slice(start, start + block), torch.arange(start, start + block)
        cache.append = False
        out = _forward(
            model, law, z[:, part], time_cond=time, layout=causal, position_ids=positions, kv_cache=cache
        )
        require(
            _close(out, noisy[:, part]),
            f"{law}: a noisy block over the cached clean prefix must equal the BD3 pass (block at {start})",
        )
        require(cache.length == start, f"{law}: append=False must leave the cache at {start} keys")
        cache.append = True
        out = _forward(
            model, law, x[:, part], time_cond=time, layout=causal, position_ids=positions, kv_cache=cache
        )
        require(
            _close(out, full[:, part]),
            f"{law}: prefix-then-block must equal one block-causal pass (block at {start})",
        )
        require(cache.length == start + block, f"{law}: append=True must grow the cache to {start + block}")


class TinyBackbone(Backbone):
    """A tiny deterministic model for kit checks: embeddings, one attention layer, a KV cache.

    Built as ``TinyBackbone(params, shape)``. It honours layouts only through
    :func:`~mdm_core.layouts.attention_mask` and per-block times only through
    :func:`~mdm_core.layouts.block_index` (as every backbone should), takes positions from
    ``position_ids`` (so ``z ⊕ x`` inputs longer than ``max_len`` work) and, with ``uses_time``,
    adds a learned embedding of each position's t; samplers can be checked on a real network
    without depending on any backbone plug-in.
    """

    name = "kit_tiny"

    class Params(BaseParams):
        dim: int = Field(default=16, ge=1)
        uses_time: bool = False
        seed: int = 0

    params: Params

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        dim = self.params.dim
        self.uses_time = self.params.uses_time
        self.embed = nn.Embedding(self.vocab.size, dim)
        self.position = nn.Embedding(self.max_len, dim)
        self.time = nn.Linear(1, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, self.vocab.size)
        g = generator(self.params.seed)
        for weight in self.parameters():
            nn.init.normal_(weight, std=0.7, generator=g)

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        size, length = input_ids.shape
        device = input_ids.device
        past = kv_cache.length if kv_cache is not None else 0
        positions = torch.arange(past, past + length, device=device) if position_ids is None else position_ids
        positions = positions.to(device=device, dtype=torch.long).expand(size, length)
        if int(positions.max()) >= self.max_len:
            raise MdmError(
                f"TinyBackbone has positions 0..{self.max_len - 1}; got position {int(positions.max())} "
                "(pass position_ids for inputs longer than max_len)"
            )
        h = self.embed(input_ids) + self.position(positions)
        if self.uses_time and time_cond is not None:
            h = h + self.time(self._time_per_position(time_cond, layout, positions)[..., None])
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        if kv_cache is not None:
            if kv_cache.keys:
                k, v = torch.cat([kv_cache.keys[0], k], 1), torch.cat([kv_cache.values[0], v], 1)
            if kv_cache.append:
                kv_cache.keys[:], kv_cache.values[:] = [k], [v]
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        allowed = attention_mask(layout, length, k.shape[1], device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return self.head(h + torch.softmax(scores, dim=-1) @ v)

    @staticmethod
    def _time_per_position(t: Tensor, layout: AttentionLayout | None, positions: Tensor) -> Tensor:
        """``[B, L]``: each position's t, from ``[B]`` or per block from ``[B, n_blocks]``."""
        t = t.float().to(positions.device)
        if t.dim() == 1:
            return t[:, None].expand(-1, positions.shape[1])
        return t.gather(1, block_index(layout, positions, t.shape[1]))
