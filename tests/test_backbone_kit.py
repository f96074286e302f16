"""check_backbone: the kit's tiny backbone passes every law, and each law catches a backbone
that breaks it (a law that cannot fail checks nothing)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, BD3Layout, KVCache, RunShape, Vocab
from mdm_core.testing import TinyBackbone, check_backbone

VOCAB = Vocab(size=8, pad_id=6, mask_id=7)


def kit(cls: type[TinyBackbone], uses_time: bool = False) -> None:
    check_backbone(lambda shape: cls(TinyBackbone.Params(uses_time=uses_time), shape), max_examples=10)


@pytest.mark.parametrize("uses_time", [False, True])
def test_tiny_backbone_passes_every_law(uses_time: bool) -> None:
    kit(TinyBackbone, uses_time)


def test_tiny_backbone_takes_long_inputs_only_with_position_ids() -> None:
    model = TinyBackbone(None, RunShape(VOCAB, seq_len=4))
    x = torch.randint(0, VOCAB.num_regular, (2, 8))
    out = model(x, layout=BD3Layout(seq_len=4, size=2), position_ids=torch.arange(4).repeat(2))
    assert out.shape == (2, 8, VOCAB.size)
    with pytest.raises(MdmError, match="position_ids"):
        model(x)


# -- broken backbones, one per law ------------------------------------------------------------


Inputs = tuple[Tensor, Tensor | None, AttentionLayout | None, Tensor | None, KVCache | None]


class Broken(TinyBackbone):
    """The kit's model with its inputs altered before it sees them."""

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        return super().forward(*self.alter((input_ids, time_cond, layout, position_ids, kv_cache)))

    def alter(self, inputs: Inputs) -> Inputs:
        return inputs


class IgnoresLayout(Broken):
    def alter(self, inputs: Inputs) -> Inputs:
        ids, time, _, positions, cache = inputs
        return ids, time, None, positions, cache


class IgnoresKeyPadding(Broken):
    def alter(self, inputs: Inputs) -> Inputs:
        ids, time, layout, positions, cache = inputs
        return ids, time, None if layout is None else replace(layout, key_padding=None), positions, cache


class IgnoresPositionIds(Broken):
    """Positions from the index (with a table long enough not to crash): z ⊕ x halves differ."""

    def __init__(self, params: TinyBackbone.Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.max_len = 4 * shape.seq_len
        self.position = nn.Embedding(self.max_len, self.params.dim)
        nn.init.normal_(self.position.weight, std=0.7)

    def alter(self, inputs: Inputs) -> Inputs:
        ids, time, layout, _, cache = inputs
        return ids, time, layout, None, cache


class RejectsLongInputs(Broken):
    def alter(self, inputs: Inputs) -> Inputs:
        if inputs[0].shape[1] > self.max_len:
            raise MdmError(f"built for length ≤ {self.max_len}")
        return inputs


class AveragesBlockTimes(Broken):
    """Mixes every block's t into every position (what the kit's model did before v2)."""

    def alter(self, inputs: Inputs) -> Inputs:
        ids, time, layout, positions, cache = inputs
        if time is not None and time.dim() == 2:
            time = time.mean(dim=1)
        return ids, time, layout, positions, cache


class CacheRestartsPositions(Broken):
    """Forgets that cached keys come first: new tokens are numbered from 0 again."""

    def alter(self, inputs: Inputs) -> Inputs:
        ids, time, layout, positions, cache = inputs
        if cache is not None:
            positions = torch.arange(ids.shape[1])
        return ids, time, layout, positions, cache


class CacheNeverStores(Broken):
    def alter(self, inputs: Inputs) -> Inputs:
        if inputs[4] is not None:
            inputs[4].append = False
        return inputs


class NoCache(Broken):
    def alter(self, inputs: Inputs) -> Inputs:
        if inputs[4] is not None:
            raise MdmError("no KV cache")
        return inputs


@pytest.mark.parametrize(
    ("broken", "uses_time", "law"),
    [
        (IgnoresLayout, False, "layout"),
        (IgnoresKeyPadding, False, "key padding"),
        (IgnoresPositionIds, False, "repeated position ids"),
        (RejectsLongInputs, False, "repeated position ids"),
        (AveragesBlockTimes, True, "per-block time"),
        (CacheRestartsPositions, False, "KV cache"),
        (CacheNeverStores, False, "KV cache"),
    ],
)
def test_each_law_catches_a_broken_backbone(broken: type[TinyBackbone], uses_time: bool, law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        kit(broken, uses_time)


def test_kv_cache_law_can_be_waived_for_a_backbone_without_cache() -> None:
    """A backbone without a cache passes with ``kv_cache=False`` (block samplers cannot use it)."""
    with pytest.raises(AssertionError, match="KV cache"):
        kit(NoCache)
    check_backbone(lambda shape: NoCache(None, shape), max_examples=5, kv_cache=False)
