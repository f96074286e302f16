"""Fixed-length token rows as ``datasets.Dataset``, and deterministic, resumable batching.

Batches are a pure function of ``(seed, step)``: the data stream is an infinite sequence of
epochs, each a permutation of the rows seeded by ``(seed, epoch)``, and optimiser step ``s``
takes positions ``[s·G, (s+1)·G)`` of it. Resuming therefore needs only the step number, and
every rank computes its own share without communication.

The rows are materialised once as one ``int64`` tensor (through the numpy format, which reads
the Arrow buffer directly; the torch format of ``datasets`` builds a tensor per row and is far
slower). That is the simple, fast path for corpora that fit in memory, which the built-in
sources produce.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import Batch, Vocab


def rows_dataset(ids: np.ndarray, prompt_len: np.ndarray | None = None) -> datasets.Dataset:
    """A ``datasets.Dataset`` with a fixed-length ``input_ids`` column from an ``[N, L]`` array."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise MdmError(f"token rows must be a non-empty [N, L] array, got shape {ids.shape}")
    columns = {"input_ids": pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), ids.shape[1])}
    if prompt_len is not None:
        columns["prompt_len"] = pa.array(np.asarray(prompt_len, dtype=np.int64))
    return datasets.Dataset(pa.table(columns))


def rows_tensor(dataset: datasets.Dataset, column: str = "input_ids") -> Tensor:
    """One column of a dataset as a single ``int64`` tensor (``[N, L]`` or ``[N]``)."""
    data = dataset.with_format("numpy")[:][column]
    array = np.asarray(data)
    if array.dtype == object:
        raise MdmError(f"dataset column {column!r} has rows of different lengths; rows must be fixed-length")
    return torch.from_numpy(array.astype(np.int64, copy=False))


class BatchStream:
    """This rank's share of the global batch for any optimiser step, from ``(seed, step)`` alone."""

    def __init__(
        self,
        dataset: datasets.Dataset,
        vocab: Vocab,
        global_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if global_batch_size < 1:
            raise SpecError(f"batch size must be at least 1, got {global_batch_size}")
        if global_batch_size % world_size:
            raise SpecError(
                f"global batch size {global_batch_size} is not divisible by the {world_size} processes; "
                f"choose a multiple of {world_size}"
            )
        if not 0 <= rank < world_size:
            raise MdmError(f"rank {rank} is outside 0..{world_size - 1}")
        self.ids = rows_tensor(dataset)
        if len(self.ids) == 0:
            raise MdmError("cannot batch an empty dataset")
        columns = dataset.column_names
        self.prompt_len = rows_tensor(dataset, "prompt_len") if "prompt_len" in columns else None
        self.vocab = vocab
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.device = torch.device(device)
        self._perms: dict[int, Tensor] = {}

    @property
    def num_rows(self) -> int:
        return int(self.ids.shape[0])

    def permutation(self, epoch: int) -> Tensor:
        """The row order of ``epoch``, seeded by ``(seed, epoch)``."""
        perm = self._perms.get(epoch)
        if perm is None:
            mixed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
            gen = torch.Generator().manual_seed(mixed)
            perm = torch.randperm(self.num_rows, generator=gen)
            # A batch spans at most a few consecutive epochs; keep only recent ones.
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = perm
        return perm

    def indices(self, step: int, micro: int = 0, num_micro: int = 1) -> Tensor:
        """Dataset rows of this rank's micro-batch ``micro`` of ``num_micro`` at ``step``."""
        if step < 0:
            raise MdmError(f"step must be non-negative, got {step}")
        if num_micro < 1 or self.local_batch_size % num_micro:
            raise SpecError(
                f"per-process batch size {self.local_batch_size} is not divisible into "
                f"{num_micro} gradient-accumulation micro-batches"
            )
        if not 0 <= micro < num_micro:
            raise MdmError(f"micro-batch {micro} is outside 0..{num_micro - 1}")
        size = self.local_batch_size // num_micro
        start = step * self.global_batch_size + self.rank * self.local_batch_size + micro * size
        positions = torch.arange(start, start + size)
        epochs, offsets = positions // self.num_rows, positions % self.num_rows
        rows = torch.empty_like(positions)
        for epoch in torch.unique(epochs).tolist():
            sel = epochs == epoch
            rows[sel] = self.permutation(int(epoch))[offsets[sel]]
        return rows

    def batch(self, step: int, micro: int = 0, num_micro: int = 1) -> Batch:
        """The clean batch of optimiser step ``step`` (micro-batch ``micro`` of ``num_micro``)."""
        rows = self.indices(step, micro, num_micro)
        prompt_len = None if self.prompt_len is None else self.prompt_len[rows]
        return Batch.from_ids(self.ids[rows], self.vocab, prompt_len).to(self.device)


def iterate_eval(
    dataset: datasets.Dataset,
    vocab: Vocab,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Every row exactly once across ranks, in order: rank r reads the r-th contiguous shard.

    Shards differ in size by at most one row and nothing is padded or repeated, so sums reduced
    across ranks count each row once.
    """
    if batch_size < 1:
        raise MdmError(f"evaluation batch size must be at least 1, got {batch_size}")
    ids = rows_tensor(dataset)
    columns = dataset.column_names
    prompt = rows_tensor(dataset, "prompt_len") if "prompt_len" in columns else None
    n = len(ids)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        plen = None if prompt is None else prompt[start:end]
        yield Batch.from_ids(ids[start:end], vocab, plen).to(device)
