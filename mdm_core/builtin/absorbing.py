"""The absorbing-state forward process of MDLM: each token independently becomes MASK."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from mdm_core.builtin.schedules import Schedule, make_schedule
from mdm_core.interfaces import (
    Batch,
    ForwardProcess,
    FullLayout,
    InferenceRecord,
    RunShape,
    TimeSampler,
    TrainingExample,
)
from mdm_core.interfaces import Params as BaseParams


class AbsorbingProcess(ForwardProcess):
    """Absorbing-state masking with a log-linear or cosine schedule (one t per sequence).

    All random numbers come from the caller's generator on its own device (the trainer passes a
    CPU generator), so a seed gives the same masks on every device. Prompt and PAD positions are
    never masked; the loss is normalised by the number of non-pad, non-prompt tokens so that the
    training loss is itself a per-token NELBO estimate.
    """

    name = "absorbing"

    class Params(BaseParams):
        schedule: Literal["loglinear", "cosine"] = Field(default="loglinear", description="α_t family")
        eps: float = Field(
            default=1e-3, ge=0.0, lt=1.0, description="α_1 = ε: a token survives t = 1 with prob ε"
        )

    params: Params

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.schedule: Schedule = make_schedule(self.params.schedule, self.params.eps)

    def alpha(self, t: Tensor) -> Tensor:
        return self.schedule.alpha(t)

    def inference(self) -> InferenceRecord:
        """Full-sequence generation with this schedule's α_t and its inverse (time input ``[B]``)."""
        return InferenceRecord(
            structure=type(self).structure(self.params),
            alpha=self.schedule.alpha,
            time_of_alpha=self.schedule.t_of_alpha,
        )

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        vocab = self.vocab
        ids = batch.input_ids
        device = ids.device
        size, length = ids.shape
        t_gen = time_sampler.sample((size,), generator, progress)
        u = torch.rand((size, length), generator=generator, device=generator.device)
        t = t_gen.to(device)
        eligible = batch.attention_mask & ~batch.prompt_mask
        masked = (u.to(device) < self.schedule.mask_prob(t)[:, None]) & eligible
        noisy = torch.where(masked, torch.full_like(ids, vocab.mask_id), ids)
        scale = self.schedule.weight(t) * time_sampler.loss_weight(t_gen, progress).to(device)
        weights = scale[:, None].expand(size, length).contiguous()
        normaliser = eligible.sum().clamp(min=1).to(torch.float32)
        return TrainingExample(
            input_ids=noisy,
            targets=ids,
            loss_mask=masked,
            weights=weights,
            normaliser=normaliser,
            t=t,
            layout=FullLayout(key_padding=batch.attention_mask),
        )
