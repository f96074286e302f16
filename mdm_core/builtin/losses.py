"""The MDLM loss: SUBS-parameterised, continuous-time NELBO (the PyTorch reference)."""

from __future__ import annotations

import torch
from torch import Tensor

from mdm_core.errors import MdmError
from mdm_core.interfaces import Loss, LossOutput, TrainingExample, Vocab


def subs_logits(logits: Tensor, vocab: Vocab) -> Tensor:
    """Logits in fp32 with MASK and PAD at −inf: the model never predicts either."""
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    banned[[vocab.mask_id, vocab.pad_id]] = True
    return logits.float().masked_fill(banned, float("-inf"))


def mdlm_reference(logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
    """Σ_{loss_mask} weights · (−log p_SUBS(target)) / normaliser.

    Only the loss-mask rows are upcast and normalised, so unmasked positions contribute exactly
    zero (SUBS copies them) and no full ``[B, L, V]`` fp32 tensor is built.
    """
    if logits.shape[:2] != example.targets.shape or logits.shape[-1] != vocab.size:
        raise MdmError(
            f"loss got logits of shape {tuple(logits.shape)} for targets {tuple(example.targets.shape)} "
            f"and vocabulary size {vocab.size}; expected [B, L, {vocab.size}] for the target positions"
        )
    mask = example.loss_mask
    rows = subs_logits(logits[mask], vocab)
    targets = example.targets[mask]
    nll = torch.logsumexp(rows, dim=-1) - rows.gather(-1, targets[:, None]).squeeze(-1)
    weights = torch.broadcast_to(example.weights, mask.shape)[mask].float()
    weighted = (weights * nll).sum()
    normaliser = example.normaliser.float()
    return LossOutput(loss=weighted / normaliser, weighted_nll_sum=weighted, num_tokens=normaliser)


class MDLMLoss(Loss):
    """MDLM SUBS continuous-time NELBO in plain PyTorch (the reference every fused loss matches)."""

    name = "mdlm"

    def __call__(self, logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
        return mdlm_reference(logits, example, vocab)
