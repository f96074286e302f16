"""How sure a model is about a masked position, from its logits alone: the one definition.

The confidence sampler (which positions to reveal next) and PUMA (which positions a pool slot
reveals next) must rank positions the same way, or PUMA's training masks would not follow the
order in which the sampler unmasks. Both call :func:`confidence` here.

Only the regular ids count (SUBS: the model never predicts PAD or MASK, which come after them).
Confidence comes from the prediction only, never from the gold token's probability (that would
make the mask law depend on the answer). ``logsumexp`` runs row by row in fp32 chunks, so no full
fp32 log-softmax of ``[rows, V]`` is ever materialised.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

#: The measures: ``max_prob`` ranks by max_v log p(v); ``margin`` by p1 − p2 (top two probabilities).
Measure = Literal["max_prob", "margin"]

#: fp32 elements per chunk of rows (16 MiB): bounds the temporary of the logsumexp.
CHUNK_ELEMENTS = 1 << 22


def _top_and_norm(rows: Tensor, num_regular: int, top: int) -> tuple[Tensor, Tensor]:
    """The ``top`` largest regular logits ``[M, top]`` and the log-normaliser ``[M]`` (both fp32)."""
    regular = rows[:, :num_regular]
    step = max(1, CHUNK_ELEMENTS // max(1, num_regular))
    tops, norms = [], []
    for chunk in regular.split(step):
        tops.append(chunk.topk(top, dim=-1).values.float())
        norms.append(torch.logsumexp(chunk.float(), dim=-1))
    if not tops:
        return rows.new_zeros((0, top), dtype=torch.float32), rows.new_zeros((0,), dtype=torch.float32)
    return torch.cat(tops), torch.cat(norms)


def max_log_prob(rows: Tensor, num_regular: int) -> Tensor:
    """``max_v log p(v)`` over the regular ids of each row of logits ``[M, V]`` (fp32 ``[M]``)."""
    top, norm = _top_and_norm(rows, num_regular, 1)
    return top[:, 0] - norm


def margin(rows: Tensor, num_regular: int) -> Tensor:
    """``p1 − p2``, the gap between the two largest regular probabilities (fp32 ``[M]``).

    Computed as ``p1 · (1 − exp(l2 − l1))`` from the logits, which keeps its digits when both
    probabilities are tiny or nearly equal; 0 with a single regular id.
    """
    if num_regular < 2:
        return rows.new_zeros(rows.shape[:1], dtype=torch.float32)
    top, norm = _top_and_norm(rows, num_regular, 2)
    return torch.exp(top[:, 0] - norm) * -torch.expm1(top[:, 1] - top[:, 0])


def confidence(rows: Tensor, num_regular: int, measure: Measure) -> Tensor:
    """The named measure for each row of logits ``[M, V]``; higher means more confident."""
    return max_log_prob(rows, num_regular) if measure == "max_prob" else margin(rows, num_regular)
