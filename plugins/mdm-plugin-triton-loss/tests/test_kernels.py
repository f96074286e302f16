"""The fused kernels equal the PyTorch reference (values and gradients) for any input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mdm_plugin_triton_loss.loss import FusedMDLMLoss

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.interfaces import LossOutput, TrainingExample, Vocab

#: Gradient tolerance (rtol, atol): both sides round the same fp32 value once into the logits' dtype.
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1.6e-2, 1e-5)}


def _run(
    loss: Callable[[torch.Tensor, TrainingExample, Vocab], LossOutput],
    logits: torch.Tensor,
    example: TrainingExample,
    vocab: Vocab,
) -> tuple[LossOutput, torch.Tensor]:
    leaf = logits.detach().clone().requires_grad_()
    out = loss(leaf, example, vocab)
    (out.loss * 3.0).backward()  # a non-unit upstream gradient reaches the kernel
    assert leaf.grad is not None
    return out, leaf.grad


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, TrainingExample, Vocab, int]:
    """Small shapes the interpreter runs quickly; V often spans several chunks unevenly."""
    block = draw(st.sampled_from([16, 32, 64, 128]))
    chunks = draw(st.integers(1, 3))
    vocab_size = draw(st.integers(max(3, (chunks - 1) * block + 1), min(chunks * block, 300)))
    batch, length = draw(st.integers(1, 4)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    vocab = Vocab(size=vocab_size, pad_id=vocab_size - 2, mask_id=vocab_size - 1)

    # Non-contiguous logits: rows of a wider tensor (row and batch strides ≠ V, L·V), or transposed.
    layout = draw(st.sampled_from(["contiguous", "sliced", "transposed"]))
    if layout == "sliced":
        logits = (torch.randn(batch, length + 2, vocab_size + 5, generator=gen) * scale)[:, 1:-1, 2:-3]
    elif layout == "transposed":
        logits = (torch.randn(length, batch, vocab_size, generator=gen) * scale).transpose(0, 1)
    else:
        logits = torch.randn(batch, length, vocab_size, generator=gen) * scale
    logits = logits.to(dtype)

    mode = draw(st.sampled_from(["random", "random", "none", "all"]))
    if mode == "random":
        loss_mask = torch.rand(batch, length, generator=gen) < draw(st.floats(0.1, 0.9))
    else:
        loss_mask = torch.full((batch, length), mode == "all")
    targets = torch.randint(0, vocab.num_regular, (batch, length), generator=gen)
    if draw(st.booleans()):
        weights = 1.0 / (torch.rand(batch, 1, generator=gen) + 1e-3)  # w(t) per sequence, broadcast
    else:
        weights = torch.rand(batch, length, generator=gen) * 4.0  # per token (blockwise t)
    normaliser = torch.tensor(float(draw(st.integers(1, batch * length))))
    example = TrainingExample(
        input_ids=targets,
        targets=targets,
        loss_mask=loss_mask,
        weights=weights,
        normaliser=normaliser,
        t=torch.rand(batch, generator=gen),
    )
    return logits, example, vocab, block


@settings(max_examples=40, deadline=None)
@given(problem=problems(), default_block=st.booleans())
def test_values_and_gradients_equal_the_reference(
    problem: tuple[torch.Tensor, TrainingExample, Vocab, int], default_block: bool, device: torch.device
) -> None:
    logits, example, vocab, block = problem
    logits = logits.to(device)
    example = TrainingExample(
        **{
            k: getattr(example, k).to(device)
            for k in ("input_ids", "targets", "loss_mask", "weights", "normaliser", "t")
        }
    )
    fused = FusedMDLMLoss(FusedMDLMLoss.Params(backend="triton", block_v=None if default_block else block))
    got, got_grad = _run(fused, logits, example, vocab)
    want, want_grad = _run(mdlm_reference, logits, example, vocab)
    rtol, atol = GRAD_TOLERANCE[logits.dtype]
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.weighted_nll_sum, want.weighted_nll_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.num_tokens, want.num_tokens)
    assert got_grad.dtype == logits.dtype and got_grad.shape == logits.shape
    torch.testing.assert_close(got_grad, want_grad, rtol=rtol, atol=atol)


def test_gradient_is_exactly_zero_off_the_loss_mask_and_on_banned_columns(device: torch.device) -> None:
    vocab = Vocab(size=70, pad_id=68, mask_id=69)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 70, generator=gen).to(device)
    loss_mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool, device=device)
    targets = torch.randint(0, 68, (2, 6), generator=gen).to(device)
    example = TrainingExample(
        input_ids=targets,
        targets=targets,
        loss_mask=loss_mask,
        weights=torch.ones(2, 6, device=device),
        normaliser=torch.tensor(12.0, device=device),
        t=torch.ones(2, device=device),
    )
    _, grad = _run(FusedMDLMLoss(FusedMDLMLoss.Params(backend="triton", block_v=32)), logits, example, vocab)
    assert torch.count_nonzero(grad[~loss_mask]) == 0
    assert torch.count_nonzero(grad[..., [vocab.pad_id, vocab.mask_id]]) == 0
    # Each masked row's gradient sums to zero (softmax minus one-hot), up to rounding.
    torch.testing.assert_close(grad[loss_mask].sum(-1), torch.zeros(4, device=device), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nothing_masked_gives_zero_loss_and_zero_gradient(dtype: torch.dtype, device: torch.device) -> None:
    vocab = Vocab(size=40, pad_id=38, mask_id=39)
    logits = torch.randn(3, 4, 40, device=device).to(dtype)
    targets = torch.zeros(3, 4, dtype=torch.long, device=device)
    example = TrainingExample(
        input_ids=targets,
        targets=targets,
        loss_mask=torch.zeros(3, 4, dtype=torch.bool, device=device),
        weights=torch.ones(3, 4, device=device),
        normaliser=torch.tensor(12.0, device=device),
        t=torch.ones(3, device=device),
    )
    out, grad = _run(FusedMDLMLoss(FusedMDLMLoss.Params(backend="triton")), logits, example, vocab)
    assert out.loss.item() == 0.0 and out.weighted_nll_sum.item() == 0.0
    assert grad.dtype == dtype and torch.count_nonzero(grad) == 0


def test_kernels_compile_for_an_h100_without_one(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TRITON_INTERPRET": "0",
        "TRITON_CACHE_DIR": str(tmp_path),
        "TRITON_DEFAULT_FP_FUSION": "1",
    }
    script = Path(__file__).with_name("compile_for_gpu.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled for sm_90" in done.stdout
