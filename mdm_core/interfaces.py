"""The seven component kinds and the records that flow between them.

Every component is a class with a registered ``name``, a pydantic ``Params`` model
(``extra="forbid"``) and a docstring whose first line is its one-line summary. The trainer
only ever talks to these interfaces, so a plug-in that honours them composes with every other.

Data flow of one training step::

    Batch --ForwardProcess.prepare(batch, TimeSampler)--> TrainingExample
    TrainingExample --Backbone--> logits --Loss--> LossOutput
    (after the optimiser step) ForwardProcess.feedback(example, detached logits)
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

KINDS: tuple[str, ...] = (
    "time_sampler",
    "forward_process",
    "loss",
    "backbone",
    "sampler",
    "evaluator",
    "data",
)


class Params(BaseModel):
    """Base of every component's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


_BaseParams = Params


class Component:
    """What every component shares: a registered name, its parameters, and a one-line doc."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Params: ClassVar[type[_BaseParams]] = _BaseParams

    def __init__(self, params: _BaseParams | None = None) -> None:
        self.params = params if params is not None else type(self).Params()


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
class AttentionLayout:
    """Which keys each query may see; built by a ForwardProcess, honoured by every Backbone.

    kind:
      - ``full``: bidirectional over the non-pad keys;
      - ``block_causal``: bidirectional inside blocks of ``block_size``, causal across blocks;
      - ``mask``: an arbitrary boolean ``mask`` ``[B or 1, Lq, Lk]``, True = may attend.
    ``key_padding`` ``[B, Lk]`` (True = real token) applies on top of every kind.
    ``prompt_len`` records the prompt/response split for components that care (per sequence).
    """

    kind: Literal["full", "block_causal", "mask"] = "full"
    block_size: int | None = None
    mask: Tensor | None = None
    key_padding: Tensor | None = None
    prompt_len: Tensor | None = None

    def dense(self, length: int, device: torch.device | None = None) -> Tensor | None:
        """The layout as a boolean ``[B or 1, L, L]`` mask, or None when every key is visible."""
        allowed: Tensor | None
        if self.kind == "full":
            allowed = None
        elif self.kind == "block_causal":
            if not self.block_size:
                raise ValueError("block_causal layout needs block_size")
            block = torch.arange(length, device=device) // self.block_size
            allowed = (block[None, :] <= block[:, None])[None]
        else:
            if self.mask is None:
                raise ValueError("mask layout needs a mask tensor")
            allowed = self.mask
        if self.key_padding is not None and not bool(self.key_padding.all()):
            keys = self.key_padding[:, None, :]
            allowed = keys if allowed is None else allowed & keys
            # A fully padded query row would attend to nothing; let it see itself (its output is
            # never used) so that softmax stays finite.
            eye = torch.eye(length, dtype=torch.bool, device=allowed.device)[None]
            allowed = allowed | eye
        return allowed


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
    layout: AttentionLayout = field(default_factory=AttentionLayout)
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
    """Draws diffusion times t ∈ (0, 1] for a batch."""

    kind = "time_sampler"

    @abc.abstractmethod
    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        """Stratified draws of ``shape`` in (0, 1]; ``progress`` ∈ [0, 1] is the training fraction."""

    def loss_weight(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """Multiplier on the ELBO weight w(t); 1 unless the sampler corrects for its density."""
        return torch.ones_like(t)

    def log_density(self, t: Tensor, progress: float = 0.0) -> Tensor:
        """log p(t) of the sampling law (uniform: 0)."""
        return torch.zeros_like(t)


class ForwardProcess(Component, abc.ABC):
    """Turns clean batches into training examples; may keep state across steps (PUMA).

    A stateful process receives the step's detached logits through ``feedback`` after the
    optimiser step and persists whatever it needs through ``state_dict``/``load_state_dict``
    (tensors and JSON-able values only: checkpoints are never pickled).
    """

    kind = "forward_process"
    #: True when the process keeps its own pool of sequences and wants a fresh batch only to
    #: refill slots; the trainer still passes every batch.
    stateful: ClassVar[bool] = False

    def setup(self, vocab: Vocab, seq_len: int, batch_size: int, max_steps: int, seed: int) -> None:
        """Called once before training with the run's shapes; ``seed`` is already per-rank."""
        self.vocab = vocab
        self.seq_len = seq_len

    @abc.abstractmethod
    def prepare(
        self, batch: Batch, time_sampler: TimeSampler, generator: torch.Generator, progress: float = 0.0
    ) -> TrainingExample:
        """Noise ``batch``; draw times from ``time_sampler`` with ``generator``."""

    def feedback(self, example: TrainingExample, logits: Tensor) -> None:
        """Receive the step's detached logits after the optimiser step (default: nothing)."""

    def alpha(self, t: Tensor) -> Tensor:
        """α_t, the probability that a token is still clean at time t (used by samplers)."""
        return 1.0 - t

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

    def describe(self) -> str:
        """A line for ``mdm plugins`` (e.g. which implementation path is active)."""
        return ""


class Backbone(Component, nn.Module, abc.ABC):
    """``nn.Module`` from noisy ids (+ optional time conditioning, layout, KV cache) to logits."""

    kind = "backbone"
    #: Whether ``forward`` uses ``time_cond``; when False, samplers may cache denoiser outputs.
    uses_time: bool = False

    def __init__(self, params: Params | None, vocab: Vocab, max_len: int) -> None:
        nn.Module.__init__(self)
        Component.__init__(self, params)
        self.vocab = vocab
        self.max_len = max_len

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
    """What a sampler needs besides the model."""

    vocab: Vocab
    device: torch.device
    #: α_t of the forward process (probability a token is still clean); None means log-linear.
    alpha: Callable[[Tensor], Tensor] | None = None


class Sampler(Component, abc.ABC):
    """Generates sequences (unconditional, prompted, infilling) and reports NFE."""

    kind = "sampler"

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
    data_source: DataSource | None = None


class Evaluator(Component, abc.ABC):
    """Metrics over a dataset or over samples, aggregated with torchmetrics (DDP-safe)."""

    kind = "evaluator"

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

    def evaluators(self) -> list[dict[str, Any]]:
        """Evaluator specs this data source suggests (e.g. task accuracy); default none."""
        return []


KIND_BASES: dict[str, type[Component]] = {
    "time_sampler": TimeSampler,
    "forward_process": ForwardProcess,
    "loss": Loss,
    "backbone": Backbone,
    "sampler": Sampler,
    "evaluator": Evaluator,
    "data": DataSource,
}
