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
    KVCache,
    Vocab,
)
from mdm_core.interfaces import (
    Params as BaseParams,
)
from mdm_core.testing.laws import generator, law_settings, require
from mdm_core.testing.strategies import vocabs


def _reach(allowed: Tensor) -> Tensor:
    """Transitive, reflexive closure of "query i attends to key j": what any depth can see."""
    length = allowed.shape[-1]
    reach = allowed | torch.eye(length, dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(length)))):
        reach = reach | ((reach.float() @ reach.float()) > 0)
    return reach


def _check_hidden(
    model: Backbone, ids: Tensor, time: Tensor | None, layout: AttentionLayout, changed: Tensor, law: str
) -> None:
    """Replace the ids where ``changed`` [B, L]; positions that cannot reach them keep their logits."""
    size, length = ids.shape
    allowed = layout.dense(length)
    reach = (
        _reach(allowed.expand(size, length, length))
        if allowed is not None
        else torch.ones(size, length, length)
    )
    affected = (reach.bool() & changed[:, None, :]).any(dim=-1)
    num_regular = model.vocab.num_regular
    replaced = torch.where(changed, (ids + 1) % num_regular, ids)
    before = model(ids, time_cond=time, layout=layout)
    after = model(replaced, time_cond=time, layout=layout)
    require(
        torch.allclose(before[~affected], after[~affected], rtol=1e-4, atol=1e-5),
        f"{law}: logits changed at a position that cannot see the changed token",
    )


def check_backbone(make: Callable[[Vocab, int], Backbone], *, max_examples: int = 10) -> None:
    """Logits [B, L, V], finite, deterministic in eval mode, and no information flow that the
    layout forbids (block-causal, arbitrary masks through their transitive closure, key padding)."""

    @law_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**31 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 20), label="vocab")
        size, length = data.draw(st.integers(1, 3), label="B"), data.draw(st.integers(2, 12), label="L")
        g = generator(seed)
        model = make(vocab, length)
        model.eval()
        ids = torch.randint(0, vocab.num_regular, (size, length), generator=g)
        ids = torch.where(torch.rand((size, length), generator=g) < 0.3, vocab.mask_id, ids)
        time = torch.rand((size,), generator=g) if model.uses_time else None
        with torch.no_grad():
            logits = model(ids, time_cond=time)
            require(
                logits.shape == (size, length, vocab.size), f"logits {tuple(logits.shape)} must be [B, L, V]"
            )
            require(
                logits.is_floating_point() and torch.isfinite(logits).all(), "logits must be finite floats"
            )
            require(
                torch.equal(logits, model(ids, time_cond=time)), "eval-mode forward must be deterministic"
            )
            full = model(ids, time_cond=time, layout=AttentionLayout(kind="full"))
            require(
                torch.allclose(logits, full, rtol=1e-4, atol=1e-5), "layout=None must mean the full layout"
            )

            block = data.draw(st.integers(1, length), label="block_size")
            key = data.draw(st.integers(0, length - 1), label="changed position")
            changed = torch.zeros((size, length), dtype=torch.bool)
            changed[:, key] = True
            causal = AttentionLayout(kind="block_causal", block_size=block)
            _check_hidden(model, ids, time, causal, changed, "block_causal layout")

            rank = torch.stack([torch.randperm(length, generator=g) for _ in range(size)])
            order = rank[:, None, :] <= rank[:, :, None]
            keep = torch.rand((size, length, length), generator=g) < 0.7
            mask = (order & keep) | torch.eye(length, dtype=torch.bool)
            _check_hidden(model, ids, time, AttentionLayout(kind="mask", mask=mask), changed, "mask layout")

            real = torch.rand((size, length), generator=g) < 0.6
            real[:, 0] = True
            padded = AttentionLayout(kind="full", key_padding=real)
            _check_hidden(model, ids, time, padded, ~real, "key padding")

    laws()


class TinyBackbone(Backbone):
    """A tiny deterministic model for kit checks: embeddings, one bidirectional attention layer.

    It honours every ``AttentionLayout`` and, with ``uses_time``, adds a learned time embedding,
    so samplers can be checked on a real network without depending on any backbone plug-in.
    """

    name = "kit_tiny"

    class Params(BaseParams):
        dim: int = Field(default=16, ge=1)
        uses_time: bool = False
        seed: int = 0

    params: Params

    def __init__(self, params: Params | None, vocab: Vocab, max_len: int) -> None:
        super().__init__(params, vocab, max_len)
        dim = self.params.dim
        self.uses_time = self.params.uses_time
        self.embed = nn.Embedding(vocab.size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.time = nn.Linear(1, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab.size)
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
        if kv_cache is not None:
            raise MdmError("TinyBackbone has no KV cache; use it without kv_cache")
        size, length = input_ids.shape
        if length > self.max_len:
            raise MdmError(f"TinyBackbone was built for length ≤ {self.max_len}, got {length}")
        positions = torch.arange(length, device=input_ids.device) if position_ids is None else position_ids
        h = self.embed(input_ids) + self.position(positions)
        if self.uses_time and time_cond is not None:
            h = h + self.time(time_cond.float().reshape(size, -1).mean(dim=1, keepdim=True))[:, None, :]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        allowed = (layout or AttentionLayout()).dense(length, input_ids.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return self.head(h + torch.softmax(scores, dim=-1) @ v)
