"""Every built-in numerical component passes the conformance kit, and the kit catches breakage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import datasets
import pytest
import torch
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.evaluators import NLLEvaluator, SampleEvaluator
from mdm_core.builtin.losses import MDLMLoss
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    Batch,
    DatasetBundle,
    DataSource,
    InferenceRecord,
    KVCache,
    LossOutput,
    RunShape,
    SampleOutput,
    SamplingContext,
    TimeSampler,
    Tokenizer,
    TrainingExample,
    Vocab,
)
from mdm_core.plugins import get_registry
from mdm_core.testing import (
    TinyBackbone,
    check_backbone,
    check_data_source,
    check_forward_process,
    check_loss,
    check_sampler,
    check_time_sampler,
)


@pytest.mark.parametrize(
    ("kind", "name", "cls"),
    [
        ("time_sampler", "uniform", UniformTimeSampler),
        ("forward_process", "absorbing", AbsorbingProcess),
        ("loss", "mdlm", MDLMLoss),
        ("sampler", "ancestral", AncestralSampler),
        ("sampler", "confidence", ConfidenceSampler),
        ("evaluator", "nll", NLLEvaluator),
        ("evaluator", "samples", SampleEvaluator),
    ],
)
def test_registered_under_its_name_with_a_summary(kind: str, name: str, cls: type) -> None:
    assert get_registry().load(kind, name) is cls
    assert cls.name == name
    assert cls.__doc__ and cls.__doc__.strip().splitlines()[0]


# -- the built-ins pass ----------------------------------------------------------------------


def test_uniform_time_sampler_conforms() -> None:
    check_time_sampler(UniformTimeSampler)


@pytest.mark.parametrize("schedule", ["loglinear", "cosine"])
def test_absorbing_process_conforms(schedule: str) -> None:
    check_forward_process(lambda shape: AbsorbingProcess(AbsorbingProcess.Params(schedule=schedule), shape))


def test_mdlm_loss_conforms() -> None:
    check_loss(MDLMLoss)


@pytest.mark.parametrize("uses_time", [False, True])
def test_kit_backbone_conforms(uses_time: bool) -> None:
    check_backbone(lambda shape: TinyBackbone(TinyBackbone.Params(uses_time=uses_time), shape))


@pytest.mark.parametrize(
    "make",
    [
        AncestralSampler,
        lambda: AncestralSampler(AncestralSampler.Params(steps=2)),
        ConfidenceSampler,
        lambda: ConfidenceSampler(ConfidenceSampler.Params(steps=3, confidence="margin", temperature=0.8)),
    ],
)
def test_samplers_conform(make: Callable[[], Any]) -> None:
    check_sampler(make)


class Digits(Tokenizer):
    """Digits 0-9 as ids 0-9, written without separators."""

    @property
    def num_regular(self) -> int:
        return 10

    def encode(self, text: str) -> list[int]:
        return [int(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(str(i) for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "digits"}


class CountingSource(DataSource):
    """Rows counting upward from a seeded start, right-padded, with a one-token prompt."""

    name = "counting"
    seq_len = 8

    def load(self, seed: int) -> DatasetBundle:
        g = torch.Generator().manual_seed(seed)
        splits = {}
        for split in ("train", "validation"):
            start = torch.randint(0, 10, (6, 1), generator=g)
            ids = (start + torch.arange(self.seq_len)) % 10
            ids[:, 6:] = 10
            splits[split] = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "prompt_len": [1] * 6})
        return DatasetBundle(splits=splits, tokenizer=Digits(), seq_len=8)


def test_kit_data_source_check_accepts_a_valid_source() -> None:
    check_data_source(CountingSource)


# -- the kit catches broken implementations --------------------------------------------------


class ZeroTimes(TimeSampler):
    name = "zero"

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return torch.zeros_like(u)


class GlobalRNGTimes(UniformTimeSampler):
    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        return 1.0 - torch.rand(shape)


class FalselyStratified(UniformTimeSampler):
    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        return 1.0 - torch.rand(shape, generator=generator)


class Decreasing(UniformTimeSampler):
    """Stratified through its quantile, but the quantile runs backwards."""

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return super().quantile(1.0 - u, progress)


class FalselyUniform(TimeSampler):
    """Claims the uniform law but draws t²."""

    name = "squared"

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return 1e-3 + (1 - 1e-3) * u**2

    def is_uniform(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("make", "law"),
    [
        (ZeroTimes, r"\(0, 1\]"),
        (GlobalRNGTimes, "same seed"),
        (FalselyStratified, "stratified_uniforms"),
        (Decreasing, "monotone"),
        (FalselyUniform, "is_uniform"),
    ],
)
def test_time_sampler_check_catches(make: Callable[[], TimeSampler], law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_time_sampler(make, max_examples=10)


class MasksPrompts(AbsorbingProcess):
    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        unprompted = Batch(batch.input_ids, batch.attention_mask, torch.zeros_like(batch.prompt_mask))
        return super().prepare(unprompted, time_sampler, generator, progress)


class LossOnEverything(AbsorbingProcess):
    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        example = super().prepare(batch, time_sampler, generator, progress)
        example.loss_mask = batch.attention_mask.clone()
        return example


class AlwaysMasked(AbsorbingProcess):
    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        return super().prepare(batch, _One(time_sampler), generator, progress)


class _One(TimeSampler):
    """Every t = 1, with the loss weight of the sampler it replaces."""

    name = "one"

    def __init__(self, replaced: TimeSampler) -> None:
        super().__init__()
        self.replaced = replaced

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return torch.ones_like(u)

    def loss_weight(self, t: Tensor, progress: float = 0.0) -> Tensor:
        return self.replaced.loss_weight(t, progress)


class ForgetfulCounter(AbsorbingProcess):
    """Masks more on every call but does not checkpoint its counter."""

    def __init__(self, params: AbsorbingProcess.Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.calls = 0

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        self.calls += 1
        shifted = Batch(batch.input_ids, batch.attention_mask, batch.prompt_mask)
        example = super().prepare(shifted, time_sampler, generator, progress)
        return example.with_weights(example.weights * self.calls)


class ForgetsTheLossWeight(AbsorbingProcess):
    """Uses the sampler's law but not its loss_weight (what issue #8 §2 asks the kit to catch)."""

    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        return super().prepare(batch, UniformTimeSampler(), generator, progress)


class WrongStructure(AbsorbingProcess):
    """Says ``blocks`` to the spec check but its record says ``full``."""

    @classmethod
    def structure(cls, params: Any) -> str:
        return "blocks"

    def inference(self) -> InferenceRecord:
        return replace(super().inference(), structure="full")


class WrongInverse(AbsorbingProcess):
    def inference(self) -> InferenceRecord:
        return replace(super().inference(), time_of_alpha=lambda alpha: alpha)


@pytest.mark.parametrize(
    ("make", "law"),
    [
        (MasksPrompts, "prompt positions"),
        (LossOnEverything, "loss_mask marks a position whose input is not MASK"),
        (AlwaysMasked, "t = 1e-6"),
        (ForgetfulCounter, "load_state_dict"),
        (ForgetsTheLossWeight, "loss_weight 2"),
        (WrongStructure, "structure"),
        (WrongInverse, "time_of_alpha"),
    ],
)
def test_forward_process_check_catches(make: type[AbsorbingProcess], law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_forward_process(lambda shape: make(None, shape), max_examples=15)


class UnweightedLoss(MDLMLoss):
    def __call__(self, logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
        return super().__call__(logits, example.with_weights(torch.ones_like(example.weights)), vocab)


class LeakyLoss(MDLMLoss):
    """Adds a term on every position's logits: depends on unmasked positions."""

    def __call__(self, logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
        out = super().__call__(logits, example, vocab)
        extra = 1e-3 * logits.float().logsumexp(-1).mean()
        return LossOutput(out.loss + extra, out.weighted_nll_sum, out.num_tokens)


@pytest.mark.parametrize(("make", "law"), [(UnweightedLoss, "reference"), (LeakyLoss, "reference")])
def test_loss_check_catches(make: Callable[[], MDLMLoss], law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_loss(make, max_examples=15)


class IgnoresLayout(TinyBackbone):
    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        return super().forward(input_ids, time_cond, None, position_ids, kv_cache)


def test_backbone_check_catches_information_leaks() -> None:
    with pytest.raises(AssertionError, match="cannot see"):
        check_backbone(lambda shape: IgnoresLayout(None, shape), max_examples=10)


class LeavesMasks(AncestralSampler):
    def generate(
        self,
        model: Backbone,
        ctx: SamplingContext,
        num_samples: int,
        length: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> SampleOutput:
        return SampleOutput(torch.full((num_samples, length), ctx.vocab.mask_id), nfe=0)


class StaysInEval(AncestralSampler):
    def generate(
        self,
        model: Backbone,
        ctx: SamplingContext,
        num_samples: int,
        length: int,
        generator: torch.Generator,
        prompt: Tensor | None = None,
        prompt_mask: Tensor | None = None,
    ) -> SampleOutput:
        out = super().generate(model, ctx, num_samples, length, generator, prompt, prompt_mask)
        model.eval()
        return out


@pytest.mark.parametrize(("make", "law"), [(LeavesMasks, "regular id"), (StaysInEval, "train/eval")])
def test_sampler_check_catches(make: Callable[[], AncestralSampler], law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_sampler(make, max_examples=10)


class WrongLength(CountingSource):
    def load(self, seed: int) -> DatasetBundle:
        bundle = super().load(seed)
        bundle.seq_len = 9
        return bundle


class Unseeded(CountingSource):
    def load(self, seed: int) -> DatasetBundle:
        return super().load(int(torch.randint(0, 2**30, ())))


@pytest.mark.parametrize(("make", "law"), [(WrongLength, "seq_len"), (Unseeded, "same seed")])
def test_data_source_check_catches(make: Callable[[], DataSource], law: str) -> None:
    with pytest.raises(AssertionError, match=law):
        check_data_source(make)
