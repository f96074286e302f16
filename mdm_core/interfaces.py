"""The seven component kinds and the records that flow between them.

Every component is a class with a registered ``name``, a pydantic ``Params`` model
(``extra="forbid"``) and a docstring whose first line is its one-line summary. The trainer
only ever talks to these interfaces, so a plug-in that honours them composes with every other.

Every component but the data source is built once as ``cls(params, shape)`` with its run's
:class:`RunShape`. Data flow of one training step::

    Batch --ForwardProcess.prepare(batch, TimeSampler)--> TrainingExample
    TrainingExample --Backbone--> logits --Loss--> LossOutput
    (after the optimiser step, if the process asks) ForwardProcess.feedback(example, detached logits)

and of generation: ``ForwardProcess.inference()`` → :class:`InferenceRecord` →
:meth:`SamplingContext.of` → ``Sampler.generate``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mdm_core.errors import MdmError
from mdm_core.kinds import KINDS as KINDS
from mdm_core.layouts import AttentionLayout as AttentionLayout
from mdm_core.layouts import BD3Layout as BD3Layout
from mdm_core.layouts import BlockCausalLayout as BlockCausalLayout
from mdm_core.layouts import FullLayout as FullLayout
from mdm_core.layouts import MaskLayout as MaskLayout


class Params(BaseModel):
    """Base of every component's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_BaseParams = Params


class Component:
    """What every component shares: a registered name, its parameters, a one-line doc, and the
    shape of the run it was built for (None only for data sources, which define that shape)."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Params: ClassVar[type[_BaseParams]] = _BaseParams

    def __init__(self, params: _BaseParams | None = None, shape: RunShape | None = None) -> None:
        self.params = params if params is not None else type(self).Params()
        self.shape = shape

    def require_shape(self) -> RunShape:
        """The run shape, or a clear error when a test built the component without one."""
        if self.shape is None:
            raise MdmError(
                f"{self.kind} '{self.name}' needs its run's shape: build it as cls(params, RunShape(...))"
            )
        return self.shape


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """Token ids shared by every component: ``size`` counts all ids, PAD and MASK included."""

    size: int
    pad_id: int
    mask_id: int

    @property
    def num_regular(self) -> int:
        """Ids a model may ever predict (everything but PAD and MASK)."""
        return self.size - 2


@dataclass(frozen=True)
class RunShape:
    """The shape of the run a component is built for, passed once at construction.

    ``batch_size`` is this process's micro-batch (global batch / world size / grad_accum);
    ``seed`` is the run's seed (use :attr:`rank_seed` for per-rank state such as a pool).
    """

    vocab: Vocab
    seq_len: int
    batch_size: int = 1
    grad_accum: int = 1
    max_steps: int = 1
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def rank_seed(self) -> int:
        """A seed that differs between ranks (each rank owns its own stateful pieces)."""
        return self.seed * 1000 + self.rank


@dataclass
class Batch:
    """A clean batch from a DataSource.

    ``attention_mask`` is True on real tokens (False on PAD); ``prompt_mask`` is True on prompt
    positions, which are always visible and never in the loss.
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_mask: Tensor

    @classmethod
    def from_ids(cls, input_ids: Tensor, vocab: Vocab, prompt_len: Tensor | None = None) -> Batch:
        attention = input_ids != vocab.pad_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if prompt_len is None:
            prompt = torch.zeros_like(attention)
        else:
            prompt = positions[None, :] < prompt_len.to(input_ids.device)[:, None]
        return cls(input_ids=input_ids, attention_mask=attention, prompt_mask=prompt)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(x.to(device) for x in (self.input_ids, self.attention_mask, self.prompt_mask)))

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class TrainingExample:
    """What a ForwardProcess makes of a clean batch.

    The loss contract is ``Σ_{loss_mask} weights · (−log p(targets)) / normaliser``:
    MDLM sets ``weights = w(t)`` and ``normaliser`` = number of non-pad tokens; other processes
    (PUMA: per-sequence mean) choose their own weights and normaliser without changing the Loss.

    ``input_ids`` may be longer than ``targets`` (block diffusion feeds ``z ⊕ x``); logits for
    the loss are the first ``targets.shape[1]`` positions. ``t`` is ``[B]`` or ``[B, n_blocks]``.
    """

    input_ids: Tensor
    targets: Tensor
    loss_mask: Tensor
    weights: Tensor
    normaliser: Tensor
    t: Tensor
    layout: AttentionLayout = field(default_factory=FullLayout)
    position_ids: Tensor | None = None

    def with_weights(self, weights: Tensor) -> TrainingExample:
        return replace(self, weights=weights)


@dataclass
class LossOutput:
    """The scalar to back-propagate plus the pieces needed to report NLL per token."""

    loss: Tensor
    weighted_nll_sum: Tensor
    num_tokens: Tensor


@dataclass
class SampleOutput:
    """Generated ids (no MASK left) and the number of backbone calls it took."""

    tokens: Tensor
    nfe: int


# --------------------------------------------------------------------------------------------
# Component kinds
# --------------------------------------------------------------------------------------------


class TimeSampler(Component, abc.ABC):
    """Draws diffusion times t ∈ (0, 1] for a batch, through the inverse CDF of its law.

    ``quantile(u)`` is the law's inverse CDF; ``sample`` draws one uniform per stratum
    (``u_i = (U_i + i)/n`` over the flattened shape, METHODS §1) and maps it through ``quantile``,
    so every sampler is stratified and processes that need the law itself (PUMA's stages) can
    read it from ``quantile``.
    """

    kind = "time_sampler"

    @abc.abstractmethod
    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        """Inverse CDF of the law of t at training fraction ``progress``: u ∈ [0, 1] → t ∈ (0, 1]."""

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        """Stratified draws of ``shape`` in (0, 1]; ``progress`` ∈ [0, 1] is the training fraction."""
        return self.quantile(stratified_uniforms(shape, generator), progress).to(torch.float32)

    def is_uniform(self) -> bool:
        """True when the law is U(ε, 1) (processes that cannot use a law accept only this one)."""
        return False

    def loss_weight(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """Multiplier on the ELBO weight w(t); 1 unless the sampler corrects for its density."""
        return torch.ones_like(t)

    def log_density(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """log p(t) of the sampling law (uniform: 0)."""
        return torch.zeros_like(t)


def stratified_uniforms(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Float64 ``u_i = (U_i + i)/n`` over the flattened ``shape``: one independent uniform per stratum."""
    n = 1
    for dim in shape:
        n *= dim
    offsets = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    index = torch.arange(n, device=generator.device, dtype=torch.float64)
    return ((offsets + index) / max(n, 1)).reshape(shape)


def log_linear_alpha(t: Tensor) -> Tensor:
    """α_t = 1 − t: the log-linear schedule at ε = 0 (what a record without a schedule means)."""
    return 1.0 - t


@dataclass(frozen=True)
class InferenceRecord:
    """How a forward process's model was trained, for samplers and evaluators.

    structure: the generation structure a sampler must honour (``full``; plug-ins name theirs,
    e.g. ``blocks``); alpha / time_of_alpha: α_t of the schedule and its inverse (a sampler that
    knows how much is masked passes the schedule's t to time-conditioned backbones);
    block_size: the block length of block-structured models (None otherwise); layout: the
    generation layout for a sequence of a given length; time_input: which time input the backbone
    was trained with (``none``, ``sequence`` = ``[B]``, ``block`` = ``[B, n_blocks]``).
    """

    structure: str = "full"
    alpha: Callable[[Tensor], Tensor] = log_linear_alpha
    time_of_alpha: Callable[[Tensor], Tensor] = log_linear_alpha
    block_size: int | None = None
    layout: Callable[[int], AttentionLayout] = field(default=lambda length: FullLayout())
    time_input: Literal["none", "sequence", "block"] = "sequence"

    def time_for_masked_fraction(self, fraction: Tensor) -> Tensor:
        """The schedule's t at which ``fraction`` of the tokens is masked (α_t = 1 − fraction)."""
        return self.time_of_alpha(1.0 - fraction)


class ForwardProcess(Component, abc.ABC):
    """Turns clean batches into training examples; may keep state across steps (PUMA).

    Built as ``cls(params, shape)``. A process that sets ``wants_feedback`` receives each
    micro-step's detached logits through ``feedback`` after the optimiser step (in micro-step
    order); only then does the trainer keep logits past the backward pass. A stateful process
    persists what it needs through ``state_dict``/``load_state_dict`` (tensors and JSON-able
    values only: checkpoints are never pickled); each rank saves its own.
    """

    kind = "forward_process"
    #: True when the process keeps state across steps (saved per rank in checkpoints).
    stateful: ClassVar[bool] = False
    #: True when ``feedback`` must be called with the step's detached logits.
    wants_feedback: ClassVar[bool] = False
    #: False when the process cannot use a time sampler's law: it then refuses any non-uniform one.
    uses_time_sampler: ClassVar[bool] = True

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        super().__init__(params, shape)
        self.vocab = shape.vocab
        self.seq_len = shape.seq_len

    @classmethod
    def structure(cls, params: Params) -> str:
        """The generation structure of models trained with these params (``inference().structure``);
        a classmethod so that ``mdm spec validate`` can check the sampler without building anything."""
        del params
        return "full"

    @classmethod
    def layouts(cls, params: Params) -> frozenset[str]:
        """Names (``AttentionLayout.name``) of every layout that models trained with these params
        are run with: the training examples' and the inference record's. ``mdm spec validate``
        refuses a backbone that does not honour each (``Backbone.layouts``)."""
        del params
        return frozenset({"full"})

    @abc.abstractmethod
    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        """Noise ``batch``; draw times from ``time_sampler`` with ``generator``."""

    def feedback(self, example: TrainingExample, logits: Tensor) -> None:
        """Receive a micro-step's detached logits after the optimiser step (needs ``wants_feedback``)."""

    def alpha(self, t: Tensor) -> Tensor:
        """α_t, the probability that a token is still clean at time t."""
        return 1.0 - t

    def inference(self) -> InferenceRecord:
        """How this model generates: structure, α_t, blocks, layout and time input."""
        return InferenceRecord(
            structure=type(self).structure(self.params), alpha=self.alpha, time_of_alpha=log_linear_alpha
        )

    def likelihood_process(self) -> ForwardProcess:
        """The process whose uniform-t NELBO is this model family's validation likelihood."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class Loss(Component, abc.ABC):
    """Training loss from logits and a TrainingExample (contract in ``TrainingExample``)."""

    kind = "loss"

    @abc.abstractmethod
    def __call__(self, logits: Tensor, example: TrainingExample, vocab: Vocab) -> LossOutput:
        """``logits`` is ``[B, L, V]`` for the ``targets`` positions."""


#: ``Backbone.layouts`` of a backbone that honours every layout, the plug-ins' ones included.
ANY_LAYOUT: Literal["any"] = "any"


class Backbone(Component, nn.Module, abc.ABC):
    """``nn.Module`` from noisy ids (+ optional time conditioning, layout, KV cache) to logits."""

    kind = "backbone"
    #: Whether ``forward`` uses ``time_cond``; when False, samplers may cache denoiser outputs.
    uses_time: bool = False
    #: The layouts (``AttentionLayout.name``) ``forward`` honours: ``ANY_LAYOUT`` for a backbone
    #: that applies any layout's ``attention_mask``/``block_mask`` generically (attention models),
    #: else the names it implements, e.g. ``frozenset({"full", "block_causal"})`` for a recurrent
    #: one. The conformance kit checks exactly these; a spec that needs another is refused.
    layouts: ClassVar[frozenset[str] | Literal["any"]] = ANY_LAYOUT

    @classmethod
    def honours(cls, layout: str) -> bool:
        """Whether ``forward`` honours the layout named ``layout``."""
        return cls.layouts == ANY_LAYOUT or layout in cls.layouts

    def __init__(self, params: Params | None, shape: RunShape) -> None:
        nn.Module.__init__(self)
        Component.__init__(self, params, shape)
        self.vocab = shape.vocab
        self.max_len = shape.seq_len

    @abc.abstractmethod
    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        """Logits ``[B, L, V]`` (float). With ``kv_cache``, keys/values of cached positions are
        prepended and the new ones appended when ``kv_cache.append`` is True."""


class KVCache:
    """Per-layer keys and values of a clean prefix, for block-by-block generation."""

    def __init__(self) -> None:
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.append = False

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[-2]) if self.keys else 0


@dataclass
class SamplingContext:
    """What a sampler needs besides the model; built by :meth:`of` from the process's record."""

    vocab: Vocab
    device: torch.device
    inference: InferenceRecord = field(default_factory=InferenceRecord)

    @classmethod
    def of(cls, process: ForwardProcess, device: torch.device | str) -> SamplingContext:
        """The one place a sampling context is built: from the forward process the model was trained with."""
        return cls(vocab=process.vocab, device=torch.device(device), inference=process.inference())

    @property
    def alpha(self) -> Callable[[Tensor], Tensor]:
        return self.inference.alpha


class Sampler(Component, abc.ABC):
    """Generates sequences (unconditional, prompted, infilling) and reports NFE."""

    kind = "sampler"
    #: Generation structures (``InferenceRecord.structure``) this sampler honours; a spec pairing
    #: it with a process of another structure is refused (exit 2).
    structures: ClassVar[frozenset[str]] = frozenset({"full"})

    @abc.abstractmethod
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
        """``prompt`` ``[N, L]`` holds fixed ids where ``prompt_mask`` is True."""


@dataclass
class EvalContext:
    """Everything an evaluator may use; built by the trainer and by ``mdm eval``."""

    model: Backbone
    vocab: Vocab
    dataset: Any  # a datasets.Dataset with "input_ids" (and optionally "prompt_len")
    forward_process: ForwardProcess
    sampler: Sampler
    tokenizer: Tokenizer
    device: torch.device
    batch_size: int
    seed: int
    #: The run's data source, built from its params but never re-loaded (e.g. the Markov
    #: source's exact chain for judging samples); None where the run's data is not at hand.
    data_source: DataSource | None = None

    def sampling_context(self) -> SamplingContext:
        return SamplingContext.of(self.forward_process, self.device)


class EvaluatorParams(Params):
    """Parameters every evaluator has: how often the trainer runs it."""

    every: int = Field(default=0, ge=0, description="evaluate every N optimiser steps; 0: only at the end")


class Evaluator(Component, abc.ABC):
    """Metrics over a dataset or over samples, aggregated with torchmetrics (DDP-safe).

    Its ``Params`` derive from :class:`EvaluatorParams`, so ``every`` is part of the contract:
    the trainer runs it every ``every`` steps and always at the end.
    """

    kind = "evaluator"
    Params: ClassVar[type[_BaseParams]] = EvaluatorParams
    params: EvaluatorParams

    @abc.abstractmethod
    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Metric name → value; names are prefixed with the split by the caller."""


class Tokenizer(abc.ABC):
    """Text ↔ ids. Regular ids are ``0..n-1``; PAD and MASK come after them."""

    @property
    @abc.abstractmethod
    def num_regular(self) -> int: ...

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer from a run directory."""

    @property
    def vocab(self) -> Vocab:
        n = self.num_regular
        return Vocab(size=n + 2, pad_id=n, mask_id=n + 1)


@dataclass
class DatasetBundle:
    """Splits as ``datasets.Dataset`` of fixed-length ``input_ids`` (+ ``prompt_len``)."""

    splits: dict[str, Any]
    tokenizer: Tokenizer
    seq_len: int
    info: dict[str, Any] = field(default_factory=dict)


class DataSource(Component, abc.ABC):
    """A ``datasets.Dataset`` per split plus its tokenizer."""

    kind = "data"

    @abc.abstractmethod
    def load(self, seed: int) -> DatasetBundle:
        """Build (or read) the splits; ``train`` and ``validation`` must exist."""
