"""How sure the model is about a masked position, from its logits alone.

PUMA reveals the positions the model is most confident about. Confidence must come from the
prediction only, never from the probability of the gold token: scoring by the gold token would
change which positions stay masked depending on the answer and bias the learned conditional.

Only the regular ids count (SUBS: the model never predicts PAD or MASK, which come after them).
``max_v log p(v)`` is computed as ``max logit − logsumexp`` row by row in fp32 chunks, so no
full fp32 log-softmax of ``[rows, V]`` is ever materialised.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: fp32 elements per chunk of rows (16 MiB): bounds the temporary of the logsumexp.
CHUNK_ELEMENTS = 1 << 22


def max_log_prob(rows: Tensor, num_regular: int) -> Tensor:
    """``max_v log p(v)`` over the regular ids for each row of logits ``[M, V]`` (fp32 ``[M]``)."""
    regular = rows[:, :num_regular]
    step = max(1, CHUNK_ELEMENTS // max(1, num_regular))
    parts = [
        chunk.amax(dim=-1).float() - torch.logsumexp(chunk.float(), dim=-1) for chunk in regular.split(step)
    ]
    return torch.cat(parts) if parts else rows.new_zeros((0,), dtype=torch.float32)


def margin(rows: Tensor, num_regular: int) -> Tensor:
    """Top-1 minus top-2 logit over the regular ids (fp32 ``[M]``); 0 with a single regular id."""
    if num_regular < 2:
        return rows.new_zeros(rows.shape[:1], dtype=torch.float32)
    top = rows[:, :num_regular].topk(2, dim=-1).values.float()
    return top[:, 0] - top[:, 1]
