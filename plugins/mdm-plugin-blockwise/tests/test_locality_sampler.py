"""Laws of the ``locality`` sampler: kit structure, exact oracle (Block), and each decoding order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from mdm_plugin_blockwise.locality import (
    BlockProcess,
    JigsawLayout,
    JigsawProcess,
    LocalityLayout,
    ScatterProcess,
)
from mdm_plugin_blockwise.locality_sampler import LocalitySampler
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    ForwardProcess,
    KVCache,
    RunShape,
    SamplingContext,
    Vocab,
)
from mdm_core.testing import check_sampler
from mdm_core.testing.sampler_checks import check_oracle_law


def locality_process(structure: str, size: int) -> Callable[[RunShape], ForwardProcess]:
    """``make(shape)`` of a locality process: the kit checks the sampler under its record."""

    def make(shape: RunShape) -> ForwardProcess:
        if structure == "jigsaw":
            return JigsawProcess(JigsawProcess.Params(block_size=size), shape)
        cls = BlockProcess if structure == "block" else ScatterProcess
        return cls(cls.Params(block_size=size), shape)

    return make


def locality_context(structure: str, vocab: Vocab, length: int, size: int) -> SamplingContext:
    return SamplingContext.of(locality_process(structure, size)(RunShape(vocab=vocab, seq_len=length)), "cpu")


@pytest.mark.parametrize("structure", ["block", "scatter", "jigsaw"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_structural_laws_of_the_kit(structure: str, temperature: float) -> None:
    params = LocalitySampler.Params(temperature=temperature)
    check_sampler(lambda: LocalitySampler(params), max_examples=6, process=locality_process(structure, 3))


def test_block_decoding_one_token_at_a_time_samples_the_exact_joint() -> None:
    """Under the Block layout a query sees every revealed token, so the oracle's conditionals
    are exact and one reveal per call at temperature 1 samples the chain's joint (bias 0).

    Blocks {0, 1, 2} and {3} of the kit's length-4 chain: its infilling case fixes position 2,
    inside the first block. (A token fixed in a later block is invisible to earlier blocks by
    construction, so Block cannot sample that conditional.)"""
    params = LocalitySampler.Params(temperature=1.0)
    check_oracle_law(lambda: LocalitySampler(params), samples=4096, process=locality_process("block", 3))


def test_models_of_other_structures_are_refused() -> None:
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    shape = RunShape(vocab=vocab, seq_len=4)
    ctx = SamplingContext.of(AbsorbingProcess(None, shape), "cpu")
    with pytest.raises(MdmError, match="'full' structure"):
        LocalitySampler().generate(Counting(None, shape), ctx, 1, 4, torch.Generator())


class Counting(Backbone):
    """Predicts, everywhere, the number of revealed response tokens (prompt length ``PROMPT``):
    the value a position receives tells when it was revealed."""

    name = "test_counting"

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        revealed = (input_ids[:, PROMPT:] != self.vocab.mask_id).sum(dim=1)
        logits = torch.zeros(*input_ids.shape, self.vocab.size)
        logits[torch.arange(input_ids.shape[0]), :, revealed] = 20.0
        return logits


PROMPT, RESPONSE, SIZE = 2, 11, 3
VOCAB = Vocab(size=40, pad_id=38, mask_id=39)


def decode(structure: str, model_cls: type[Backbone], **params: object) -> tuple[Tensor, int]:
    length = PROMPT + RESPONSE
    shape = RunShape(vocab=VOCAB, seq_len=length)
    prompt = torch.full((1, length), 37)
    prompt_mask = torch.arange(length)[None] < PROMPT
    ctx = locality_context(structure, VOCAB, length, SIZE)
    sampler = LocalitySampler(LocalitySampler.Params(**params))
    out = sampler.generate(model_cls(None, shape), ctx, 1, length, torch.Generator(), prompt, prompt_mask)
    assert torch.equal(out.tokens[0, :PROMPT], prompt[0, :PROMPT])
    return out.tokens[0, PROMPT:], out.nfe


def test_block_decodes_block_by_block() -> None:
    tokens, nfe = decode("block", Counting)
    # One reveal per call, blocks in order; ties of confidence go left to right.
    assert tokens.tolist() == list(range(RESPONSE))
    assert nfe == RESPONSE
    tokens, nfe = decode("block", Counting, steps_per_block=1)
    assert tokens.tolist() == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9]
    assert nfe == 4


def test_scatter_reveals_offset_layer_by_layer() -> None:
    tokens, nfe = decode("scatter", Counting)
    # Offset 0 of the 4 blocks first (nothing revealed yet), then offset 1 (4 revealed), then 2.
    assert tokens.tolist() == [0, 4, 8, 0, 4, 8, 0, 4, 8, 0, 4]
    assert nfe == SIZE


#: Entropy of each response block's predictions: the lowest must be decoded first.
SHARPNESS = {0: 1.0, 1: 9.0, 2: 4.0, 3: 6.0}


class Peaked(Backbone):
    """Jigsaw probe: at a response position of block b it predicts (number of unmasked blocks in
    the layout) with sharpness ``SHARPNESS[b]`` (higher: lower entropy), so a decoded block's
    value tells at which turn it was chosen."""

    name = "test_peaked"

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        assert isinstance(layout, JigsawLayout)
        turn = (~layout.masked[:, : len(SHARPNESS)]).sum(dim=1)  # later columns hold no response
        logits = torch.zeros(*input_ids.shape, self.vocab.size)
        logits[..., : self.vocab.num_regular] = -1.0
        for i in range(PROMPT, input_ids.shape[1]):
            logits[torch.arange(input_ids.shape[0]), i, turn] = SHARPNESS[(i - PROMPT) // SIZE]
        return logits


def test_jigsaw_decodes_the_lowest_entropy_block_first() -> None:
    tokens, nfe = decode("jigsaw", Peaked)
    turn_of_block = {b: int(tokens[b * SIZE]) for b in SHARPNESS}
    assert turn_of_block == {1: 0, 3: 1, 2: 2, 0: 3}
    assert all(len(set(tokens[b * SIZE : (b + 1) * SIZE].tolist())) == 1 for b in SHARPNESS)
    assert nfe == len(SHARPNESS) * SIZE


class LeftContext(Backbone):
    """Jigsaw probe: predicts (the input id at the position) + 1, i.e. previous token + 1 inside a
    masked block (MASK at its start counts as 0), so a left-to-right decode counts up."""

    name = "test_left_context"

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        assert isinstance(layout, LocalityLayout)
        previous = torch.where(input_ids == self.vocab.mask_id, -1, input_ids)
        logits = torch.zeros(*input_ids.shape, self.vocab.size)
        logits.scatter_(2, (previous + 1).clamp(0, self.vocab.num_regular - 1)[..., None], 20.0)
        return logits


@pytest.mark.parametrize("temperature", [0.0, 0.5])
def test_jigsaw_decodes_inside_a_block_left_to_right(temperature: float) -> None:
    tokens, _ = decode("jigsaw", LeftContext, temperature=temperature)
    assert tokens.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]
