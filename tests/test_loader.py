"""BatchStream: batches are a pure function of (seed, step), shard across ranks, cover epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.data.loader import BatchStream, iterate_eval, rows_dataset
from mdm_core.errors import SpecError
from mdm_core.interfaces import Vocab

VOCAB = Vocab(size=1002, pad_id=1000, mask_id=1001)


def numbered(n: int, length: int = 4, prompt: bool = False):
    """Row i holds the ids i, i, ...: a batch's ids reveal which rows it took."""
    ids = np.repeat(np.arange(n)[:, None], length, axis=1)
    return rows_dataset(ids, prompt_len=np.arange(n) % length if prompt else None)


def rows_of(batch) -> list[int]:
    return batch.input_ids[:, 0].tolist()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), g=st.integers(1, 12), seed=st.integers(0, 2**32), step=st.integers(0, 50))
def test_batch_is_a_pure_function_of_seed_and_step(n: int, g: int, seed: int, step: int) -> None:
    data = numbered(n)
    a, b = BatchStream(data, VOCAB, g, seed), BatchStream(data, VOCAB, g, seed)
    for s in range(step + 1):  # a walks from the start, b jumps straight to `step` (a resume)
        first = a.batch(s)
    assert torch.equal(first.input_ids, b.batch(step).input_ids)
    assert first.input_ids.shape == (g, 4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), per_rank=st.integers(1, 6), world=st.integers(1, 4), step=st.integers(0, 20))
def test_rank_shards_and_micro_batches_concatenate_to_the_global_batch(
    n: int, per_rank: int, world: int, step: int
) -> None:
    data, g = numbered(n), per_rank * world
    whole = rows_of(BatchStream(data, VOCAB, g, seed=3).batch(step))
    shards = []
    for rank in range(world):
        stream = BatchStream(data, VOCAB, g, seed=3, rank=rank, world_size=world)
        shards += rows_of(stream.batch(step))
        micro = [rows_of(stream.batch(step, micro=i, num_micro=per_rank)) for i in range(per_rank)]
        assert sum(micro, []) == rows_of(stream.batch(step))
    assert shards == whole


@given(n=st.integers(1, 30), g=st.integers(1, 7), seed=st.integers(0, 1000))
@settings(max_examples=25, deadline=None)
def test_each_epoch_visits_every_row_once(n: int, g: int, seed: int) -> None:
    stream = BatchStream(numbered(n), VOCAB, g, seed)
    epochs = 3
    seen = sum((rows_of(stream.batch(s)) for s in range(-(-epochs * n // g))), [])
    for e in range(epochs):
        assert sorted(seen[e * n : (e + 1) * n]) == list(range(n))


def test_epochs_and_seeds_reshuffle() -> None:
    stream = BatchStream(numbered(50), VOCAB, 50, seed=1)
    assert rows_of(stream.batch(0)) != rows_of(stream.batch(1))
    assert rows_of(stream.batch(0)) != rows_of(BatchStream(numbered(50), VOCAB, 50, seed=2).batch(0))


def test_prompt_len_and_masks_follow_the_rows() -> None:
    data = rows_dataset(np.array([[1, 2, 3, 1000], [4, 5, 6, 7]]), prompt_len=np.array([2, 1]))
    batch = BatchStream(data, VOCAB, 2, seed=0).batch(0)
    for row, ids in enumerate(batch.input_ids.tolist()):
        plen = 2 if ids[0] == 1 else 1
        assert batch.prompt_mask[row].tolist() == [i < plen for i in range(4)]
        assert batch.attention_mask[row].tolist() == [i != 1000 for i in ids]


def test_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(SpecError, match="not divisible by the 3 processes"):
        BatchStream(numbered(10), VOCAB, 8, seed=0, rank=0, world_size=3)
    stream = BatchStream(numbered(10), VOCAB, 8, seed=0, rank=1, world_size=2)
    with pytest.raises(SpecError, match="micro-batches"):
        stream.batch(0, micro=0, num_micro=3)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_iteration_covers_each_row_once_across_ranks(world: int) -> None:
    data = numbered(11, prompt=True)
    seen = []
    for rank in range(world):
        for batch in iterate_eval(data, VOCAB, batch_size=2, rank=rank, world_size=world):
            assert batch.size <= 2
            seen += rows_of(batch)
            assert batch.prompt_mask.sum(1).tolist() == [r % 4 for r in rows_of(batch)]
    assert seen == list(range(11))
