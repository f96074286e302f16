"""Fixed-length token rows as ``datasets.Dataset``, and deterministic, resumable batching.

Batches are a pure function of ``(seed, step)``: the data stream is an infinite sequence of
epochs, each a permutation of the rows seeded by ``(seed, epoch)``, and optimiser step ``s``
takes positions ``[s·G, (s+1)·G)`` of it. Resuming therefore needs only the step number, and
every rank computes its own share without communication.

Rows are never materialised as a whole: :class:`TokenRows` views the dataset's Arrow buffers
through numpy without copying (for a memory-mapped shard store, the file's pages) and gathers
only the rows of a batch, widened to ``int64`` then. A rank therefore touches only the rows it
trains on, whatever the corpus size.
"""

from __future__ import annotations

from collections.abc import Iterator

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
    """One column of a dataset as a single ``int64`` tensor (``[N, L]`` or ``[N]``); small data only."""
    return TokenRows(dataset, column).take(np.arange(len(dataset)))


class TokenRows:
    """Zero-copy row access to one column of a dataset (``[N, L]`` fixed-length lists or ``[N]``).

    The column's Arrow chunks are viewed as numpy arrays in place; ``take`` gathers rows from
    them. A dataset with an indices mapping (after ``select``/``shuffle``) is flattened first.
    """

    def __init__(self, dataset: datasets.Dataset, column: str = "input_ids") -> None:
        table = dataset.with_format("arrow")[:]  # a zero-copy slice unless an indices mapping exists
        if column not in table.column_names:
            raise MdmError(f"dataset has no column {column!r}; its columns are {table.column_names}")
        chunks = [c for c in table.column(column).chunks if len(c)]
        self.width: int | None = None
        self._parts: list[np.ndarray] = []
        for chunk in chunks:
            if pa.types.is_fixed_size_list(chunk.type):
                self.width = chunk.type.list_size
                self._parts.append(chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.width))
            elif pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
                lengths = set(pc.list_value_length(chunk).to_numpy().tolist())
                if len(lengths) > 1:
                    raise MdmError(
                        f"dataset column {column!r} has rows of different lengths; rows must be fixed-length"
                    )
                self.width = lengths.pop()
                self._parts.append(chunk.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.width))
            else:
                self._parts.append(chunk.to_numpy(zero_copy_only=False))
        self._starts = np.cumsum([0] + [len(p) for p in self._parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def take(self, rows: np.ndarray | Tensor) -> Tensor:
        """The given rows, in order, as one ``int64`` tensor."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self._parts:
            return torch.zeros((0, self.width or 0), dtype=torch.int64)
        if len(self._parts) == 1:
            return torch.from_numpy(self._parts[0][rows].astype(np.int64))
        which = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), *self._parts[0].shape[1:]), dtype=np.int64)
        for part in np.unique(which).tolist():
            sel = which == part
            out[sel] = self._parts[part][rows[sel] - self._starts[part]]
        return torch.from_numpy(out)


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
        self.ids = TokenRows(dataset)
        if len(self.ids) == 0:
            raise MdmError("cannot batch an empty dataset")
        columns = dataset.column_names
        self.prompt_len = TokenRows(dataset, "prompt_len") if "prompt_len" in columns else None
        self.vocab = vocab
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.device = torch.device(device)
        self._perms: dict[int, Tensor] = {}

    @property
    def num_rows(self) -> int:
        return len(self.ids)

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
        prompt_len = None if self.prompt_len is None else self.prompt_len.take(rows)
        return Batch.from_ids(self.ids.take(rows), self.vocab, prompt_len).to(self.device)


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
    ids = TokenRows(dataset)
    columns = dataset.column_names
    prompt = TokenRows(dataset, "prompt_len") if "prompt_len" in columns else None
    n = len(ids)
    lo, hi = rank * n // world_size, (rank + 1) * n // world_size
    for start in range(lo, hi, batch_size):
        rows = np.arange(start, min(start + batch_size, hi))
        plen = None if prompt is None else prompt.take(rows)
        yield Batch.from_ids(ids.take(rows), vocab, plen).to(device)
