"""The ``mdlm_triton`` loss: the MDLM contract computed by fused Triton kernels.

Same inputs, outputs and numbers as the built-in ``mdlm`` loss (``mdlm_reference``); only the
implementation differs. Where the kernels cannot run (no GPU and ``TRITON_INTERPRET`` unset, or
no Triton), ``backend: auto`` uses the PyTorch reference and says so once per process.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.errors import MdmError
from mdm_core.interfaces import Loss, LossOutput, Params, TrainingExample, Vocab
from mdm_plugin_triton_loss import backend

_fallback_announced = False


def _announce_fallback(reason: str) -> None:
    """Warn the first time this process falls back to PyTorch, never again."""
    global _fallback_announced
    if _fallback_announced:
        return
    _fallback_announced = True
    warnings.warn(
        f"loss mdlm_triton: {reason}; using the PyTorch reference (same results, no fused kernels). "
        "Set TRITON_INTERPRET=1 to run the Triton kernels on the CPU, or backend: torch to silence this.",
        RuntimeWarning,
        stacklevel=3,
    )


def _why_not_triton(logits: Tensor) -> str | None:
    """None when the kernels can run on ``logits``; otherwise the reason they cannot."""
    if not backend.triton_installed():
        return "triton is not installed"
    if backend.interpreter_requested() or logits.is_cuda:
        return None
    return f"logits are on {logits.device.type}, no GPU kernels run there and TRITON_INTERPRET is unset"


def _check_shapes(logits: Tensor, example: TrainingExample, vocab: Vocab) -> None:
    if logits.dim() != 3 or logits.shape[:2] != example.targets.shape or logits.shape[-1] != vocab.size:
        raise MdmError(
            f"loss mdlm_triton got logits of shape {tuple(logits.shape)} for targets "
            f"{tuple(example.targets.shape)} and vocabulary size {vocab.size}; "
            f"expected [B, L, {vocab.size}] for the target positions"
        )
    if example.loss_mask.dtype != torch.bool:
        raise MdmError(f"loss mdlm_triton needs a bool loss_mask, got {example.loss_mask.dtype}")


def _check_targets(example: TrainingExample, vocab_size: int) -> None:
    """Out-of-range ids would make the kernels read outside the row: refuse them clearly."""
    targets = example.targets[example.loss_mask]
    if targets.numel():
        low, high = (int(v) for v in torch.aminmax(targets))
        if low < 0 or high >= vocab_size:
            raise MdmError(
                f"loss mdlm_triton: targets at loss positions must be ids in [0, {vocab_size}), "
                f"got values in [{low}, {high}]"
            )


class FusedMDLMLoss(Loss):
    """MDLM SUBS continuous-time NELBO with fused Triton forward and backward kernels."""

    name = "mdlm_triton"

    class Params(Params):
        backend: Literal["auto", "triton", "torch"] = Field(
            default="auto",
            description="auto: Triton where it can run, else PyTorch; triton: required; torch: never",
        )
        block_v: int | None = Field(
            default=None,
            description="columns per kernel chunk (power of two); default min(next_pow2(V), 4096)",
        )

        @field_validator("block_v")
        @classmethod
        def _power_of_two(cls, value: int | None) -> int | None:
            if value is not None and (value < 16 or value > 65536 or value & (value - 1)):
                raise ValueError(f"block_v must be a power of two in [16, 65536], got {value}")
            return value

    params: Params

    def __call__(self, logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
        if self.params.backend == "torch":
            return mdlm_reference(logits, example, vocab)
        _check_shapes(logits, example, vocab)
        reason = _why_not_triton(logits)
        if reason is not None:
            if self.params.backend == "triton":
                raise MdmError(
                    f"loss mdlm_triton: backend: triton cannot run here ({reason}); use a CUDA GPU, "
                    "set TRITON_INTERPRET=1, or choose backend: auto to fall back to PyTorch"
                )
            _announce_fallback(reason)
            return mdlm_reference(logits, example, vocab)
        _check_targets(example, vocab.size)

        from mdm_plugin_triton_loss.kernels import fused_subs_nll

        weights = torch.broadcast_to(example.weights, example.loss_mask.shape)
        weighted = fused_subs_nll(
            logits,
            example.targets,
            example.loss_mask,
            weights,
            vocab.mask_id,
            vocab.pad_id,
            self.params.block_v,
        )
        normaliser = example.normaliser.float()
        return LossOutput(loss=weighted / normaliser, weighted_nll_sum=weighted, num_tokens=normaliser)
