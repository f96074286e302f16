"""Triton kernels of the fused SUBS negative log-likelihood and its autograd wrapper.

Forward: one program per *masked* row streams the row's logits in ``BLOCK_V`` chunks, keeping
an online max and sum of exponentials (MASK and PAD columns skipped), and writes the row's
log-sum-exp and its weighted NLL. Backward: one program per row writes
``g · w · (softmax − onehot)`` in the logits' dtype for masked rows and zeros elsewhere, from the
saved log-sum-exp, so no ``[B, L, V]`` fp32 softmax is ever held.

Importing this module imports Triton; whether kernels run compiled or in the CPU interpreter is
decided by ``TRITON_INTERPRET`` at that moment (Triton reads it when the kernels are decorated).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Largest chunk of a row one program holds at a time; any V is covered by looping.
MAX_BLOCK_V = 4096


@triton.jit
def _subs_nll_forward(
    logits_ptr,
    rows_ptr,
    targets_ptr,
    weights_ptr,
    lse_ptr,
    wnll_ptr,
    seq_len,
    stride_b,
    stride_l,
    vocab_size,
    mask_id,
    pad_id,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    row = tl.load(rows_ptr + pid)  # int64 index into the flattened [B*L] positions
    base = logits_ptr + (row // seq_len) * stride_b + (row % seq_len) * stride_l
    target = tl.load(targets_ptr + row)
    cols = tl.arange(0, BLOCK_V)
    run_max = tl.full((), float("-inf"), tl.float32)
    run_sum = tl.zeros((), tl.float32)
    for start in range(0, vocab_size, BLOCK_V):
        c = start + cols
        ok = (c < vocab_size) & (c != mask_id) & (c != pad_id)
        x = tl.load(base + c, mask=ok, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        # A chunk holding only banned columns leaves the max at −inf; shift by 0 then.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
        run_max = new_max
    lse = run_max + tl.log(run_sum)
    banned = (target == mask_id) | (target == pad_id)
    target_logit = tl.load(base + target).to(tl.float32)
    target_logit = tl.where(banned, float("-inf"), target_logit)
    weight = tl.load(weights_ptr + row)
    tl.store(lse_ptr + row, lse)
    tl.store(wnll_ptr + pid, weight * (lse - target_logit))


@triton.jit
def _subs_nll_backward(
    logits_ptr,
    grad_ptr,
    loss_mask_ptr,
    targets_ptr,
    weights_ptr,
    lse_ptr,
    grad_out_ptr,
    seq_len,
    stride_b,
    stride_l,
    vocab_size,
    mask_id,
    pad_id,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + (row // seq_len) * stride_b + (row % seq_len) * stride_l
    out = grad_ptr + row * vocab_size
    cols = tl.arange(0, BLOCK_V)
    if tl.load(loss_mask_ptr + row) != 0:
        target = tl.load(targets_ptr + row)
        lse = tl.load(lse_ptr + row)
        coef = tl.load(grad_out_ptr) * tl.load(weights_ptr + row)
        for start in range(0, vocab_size, BLOCK_V):
            c = start + cols
            inside = c < vocab_size
            ok = inside & (c != mask_id) & (c != pad_id)
            x = tl.load(base + c, mask=ok, other=float("-inf")).to(tl.float32)
            g = coef * (tl.exp(x - lse) - tl.where(c == target, 1.0, 0.0))
            g = tl.where(ok, g, 0.0)
            tl.store(out + c, g.to(grad_ptr.dtype.element_ty), mask=inside)
    else:
        for start in range(0, vocab_size, BLOCK_V):
            c = start + cols
            tl.store(out + c, tl.zeros((BLOCK_V,), grad_ptr.dtype.element_ty), mask=c < vocab_size)


def block_size(vocab_size: int) -> int:
    """The default chunk: the whole row when it is small, else ``MAX_BLOCK_V``."""
    return min(triton.next_power_of_2(vocab_size), MAX_BLOCK_V)


def _num_warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 2048 else 16


class FusedSubsNLL(torch.autograd.Function):
    """``Σ_{loss_mask} w · (−log p_SUBS(target))`` with gradients for the logits only.

    Weights and targets are constants of the loss (as in every MDLM objective), so they get none.
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        loss_mask: Tensor,
        weights: Tensor,
        mask_id: int,
        pad_id: int,
        block_v: int,
    ) -> Tensor:
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        batch, seq_len, vocab_size = logits.shape
        flat_mask = loss_mask.reshape(-1)
        rows = flat_mask.nonzero().squeeze(1)
        targets = targets.reshape(-1).to(torch.int64).contiguous()
        weights = weights.reshape(-1).to(torch.float32).contiguous()
        lse = torch.empty(batch * seq_len, dtype=torch.float32, device=logits.device)
        wnll = torch.zeros(rows.numel(), dtype=torch.float32, device=logits.device)
        if rows.numel():
            _subs_nll_forward[(rows.numel(),)](
                logits,
                rows,
                targets,
                weights,
                lse,
                wnll,
                seq_len,
                logits.stride(0),
                logits.stride(1),
                vocab_size,
                mask_id,
                pad_id,
                BLOCK_V=block_v,
                num_warps=_num_warps(block_v),
            )
        ctx.save_for_backward(logits, flat_mask.to(torch.uint8), targets, weights, lse)
        ctx.ids = (mask_id, pad_id, block_v)
        return wnll.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        logits, flat_mask, targets, weights, lse = ctx.saved_tensors
        mask_id, pad_id, block_v = ctx.ids
        batch, seq_len, vocab_size = logits.shape
        grad = torch.empty((batch, seq_len, vocab_size), dtype=logits.dtype, device=logits.device)
        if grad.numel():
            _subs_nll_backward[(batch * seq_len,)](
                logits,
                grad,
                flat_mask,
                targets,
                weights,
                lse,
                grad_out.reshape(1).to(torch.float32).contiguous(),
                seq_len,
                logits.stride(0),
                logits.stride(1),
                vocab_size,
                mask_id,
                pad_id,
                BLOCK_V=block_v,
                num_warps=_num_warps(block_v),
            )
        return grad, None, None, None, None, None, None


def fused_subs_nll(
    logits: Tensor,
    targets: Tensor,
    loss_mask: Tensor,
    weights: Tensor,
    mask_id: int,
    pad_id: int,
    block_v: int | None = None,
) -> Tensor:
    """Weighted NLL sum over the loss-mask positions of ``[B, L, V]`` logits (fp32 scalar)."""
    block = block_v if block_v is not None else block_size(logits.shape[-1])
    out: Tensor = FusedSubsNLL.apply(logits, targets, loss_mask, weights, mask_id, pad_id, block)
    return out
