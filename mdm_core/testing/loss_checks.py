"""Conformance laws of a Loss (see ``mdm_core.testing``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.interfaces import (
    Loss,
)
from mdm_core.testing.laws import close, generator, law_settings, require
from mdm_core.testing.strategies import training_examples, vocabs


def check_loss(
    make: Callable[[], Loss], *, max_examples: int = 30, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Finite, ≥ 0, zero on an empty loss mask, blind to unmasked logits and to the MASK/PAD
    logits, and equal to the MDLM reference (values and gradients; fp32 and bf16 logits)."""

    @law_settings(max_examples)
    @given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
    def laws(data: st.DataObject, dtype: torch.dtype) -> None:
        vocab = data.draw(vocabs(2, 40), label="vocab")
        base, example = data.draw(training_examples(vocab), label="example")
        loss = make()
        logits = base.to(dtype).requires_grad_()
        out = loss(logits, example, vocab)
        value = out.loss.detach()
        require(value.dim() == 0 and torch.isfinite(value), "loss must be a finite scalar")
        require(value >= -atol, f"loss must be ≥ 0, got {float(value)}")
        reference_logits = base.to(dtype).requires_grad_()
        ref = mdlm_reference(reference_logits, example, vocab)
        grad_rtol, grad_atol = (rtol, atol) if dtype == torch.float32 else (max(rtol, 1e-2), max(atol, 1e-3))
        require(close(value, ref.loss, rtol, atol), f"loss {value.item()} != reference {ref.loss.item()}")
        require(
            close(out.weighted_nll_sum, ref.weighted_nll_sum, rtol, atol),
            "weighted_nll_sum differs from the reference",
        )
        require(close(out.num_tokens, ref.num_tokens, rtol, atol), "num_tokens must equal the normaliser")
        if not example.loss_mask.any():
            require(value == 0, f"loss must be exactly 0 on an empty loss mask, got {float(value)}")
        (ref_grad,) = torch.autograd.grad(ref.loss, reference_logits)
        grad = torch.autograd.grad(out.loss, logits, allow_unused=True)[0] if out.loss.requires_grad else None
        grad = torch.zeros_like(logits) if grad is None else grad
        require(
            close(grad, ref_grad, grad_rtol, grad_atol), "gradient w.r.t. logits differs from the reference"
        )
        noise = 10.0 * torch.randn(base.shape, generator=generator(1))
        hidden = torch.where(example.loss_mask[..., None], base, base + noise)
        banned = base.clone()
        banned[..., [vocab.mask_id, vocab.pad_id]] += noise[..., :2]
        with torch.no_grad():
            for changed, law in ((hidden, "unmasked positions"), (banned, "the MASK and PAD logits")):
                other = loss(changed.to(dtype), example, vocab).loss
                require(close(other, value, rtol, atol), f"loss must not depend on {law}")

    laws()
