"""Conformance checks: the laws every implementation of a component kind must satisfy.

Each ``check_*`` runs hypothesis internally (derandomised, no example database, so a result is
reproducible in CI) and raises ``AssertionError`` naming the violated law. Plug-ins call these
from their own tests exactly as a third party would.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import Field
from torch import Tensor, nn

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.builtin.schedules import Cosine
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    Batch,
    DataSource,
    ForwardProcess,
    KVCache,
    Loss,
    Sampler,
    SamplingContext,
    TimeSampler,
    TrainingExample,
    Vocab,
)
from mdm_core.interfaces import (
    Params as BaseParams,
)
from mdm_core.testing.strategies import batches, training_examples, vocabs


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        # The explain phase replays hundreds of variants of a failure; the law's message suffices.
        phases=[phase for phase in Phase if phase is not Phase.explain],
    )


def _require(condition: bool | Tensor, law: str) -> None:
    """Raise AssertionError naming the law (plain ``assert`` vanishes under ``python -O``)."""
    if not bool(condition):
        raise AssertionError(law)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# TimeSampler
# --------------------------------------------------------------------------------------------


def check_time_sampler(make: Callable[[], TimeSampler], *, max_examples: int = 30) -> None:
    """Draws in (0, 1] of the asked shape, finite; same seed ⇒ same draw; finite weights/density.

    A sampler with ``stratified_uniform = True`` must also put exactly one draw in each of the n
    strata ``eps + (1 − eps)[i/n, (i+1)/n)`` (``eps`` read from its params, 0 if absent).
    """

    @_settings(max_examples)
    @given(
        shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
        seed=st.integers(0, 2**32 - 1),
        progress=st.floats(0.0, 1.0),
    )
    def laws(shape: tuple[int, ...], seed: int, progress: float) -> None:
        sampler = make()
        t = sampler.sample(shape, _generator(seed), progress)
        _require(isinstance(t, Tensor) and t.is_floating_point(), "sample() must return a float tensor")
        _require(tuple(t.shape) == shape, f"sample({shape}) returned shape {tuple(t.shape)}")
        _require(torch.isfinite(t).all(), "sample() returned a non-finite t")
        _require(((t > 0) & (t <= 1)).all(), f"t must lie in (0, 1]; got min {t.min()}, max {t.max()}")
        again = make().sample(shape, _generator(seed), progress)
        _require(torch.equal(t, again), "same seed must give the same draw")
        weight = sampler.loss_weight(t, progress)
        _require(weight.shape == t.shape, "loss_weight(t) must have t's shape")
        _require(torch.isfinite(weight).all() and (weight >= 0).all(), "loss_weight must be finite and ≥ 0")
        density = sampler.log_density(t, progress)
        _require(density.shape == t.shape, "log_density(t) must have t's shape")
        _require(torch.isfinite(density).all(), "log_density must be finite at the sampler's own draws")
        grid = torch.linspace(0.01, 0.99, 99)
        on_grid = sampler.log_density(grid, progress)
        _require(
            not on_grid.isnan().any() and not (on_grid == math.inf).any(),
            "log_density on (0, 1) must be a number or −inf (never NaN or +inf)",
        )
        if getattr(sampler, "stratified_uniform", False):
            eps = float(getattr(sampler.params, "eps", 0.0))
            n = t.numel()
            u = ((t.flatten().double() - eps) / (1.0 - eps)).sort().values
            index = torch.arange(n, dtype=torch.float64)
            slack = 1e-6
            _require(
                ((u >= index / n - slack) & (u <= (index + 1) / n + slack)).all(),
                f"stratified_uniform sampler must put exactly one of {n} draws in each stratum",
            )

    laws()


# --------------------------------------------------------------------------------------------
# ForwardProcess
# --------------------------------------------------------------------------------------------


class FixedTimeSampler(TimeSampler):
    """Every draw equals ``value``: probes a forward process at a chosen noise level."""

    name = "fixed"

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, progress: float = 0.0) -> Tensor:
        return torch.full(shape, self.value)


def _set_up(make: Callable[[], ForwardProcess], vocab: Vocab, batch: Batch) -> ForwardProcess:
    process = make()
    size, length = batch.input_ids.shape
    process.setup(vocab, length, size, max_steps=100, seed=0)
    return process


def _tensors(example: TrainingExample) -> dict[str, Tensor | None]:
    layout = example.layout
    return {
        "input_ids": example.input_ids,
        "targets": example.targets,
        "loss_mask": example.loss_mask,
        "weights": example.weights,
        "normaliser": example.normaliser,
        "t": example.t,
        "position_ids": example.position_ids,
        "layout.mask": layout.mask,
        "layout.key_padding": layout.key_padding,
        "layout.prompt_len": layout.prompt_len,
    }


def _same_example(a: TrainingExample, b: TrainingExample, law: str) -> None:
    _require(a.layout.kind == b.layout.kind and a.layout.block_size == b.layout.block_size, f"{law}: layout")
    for key, x in _tensors(a).items():
        y = _tensors(b)[key]
        same = (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        _require(same, f"{law}: field {key} differs")


def _check_example(example: TrainingExample, batch: Batch, vocab: Vocab, stateful: bool) -> None:
    size, length = batch.input_ids.shape
    ids = example.input_ids
    _require(not ids.is_floating_point() and ids.dim() == 2, "input_ids must be an integer [B, L'] tensor")
    _require(ids.shape[0] == size and ids.shape[1] >= length, f"input_ids shape {tuple(ids.shape)} vs batch")
    _require(((ids >= 0) & (ids < vocab.size)).all(), "input_ids must be ids of the vocabulary")
    _require(example.targets.shape == (size, length), "targets must be [B, L]")
    mask = example.loss_mask
    _require(mask.dtype == torch.bool and mask.shape == (size, length), "loss_mask must be a bool [B, L]")
    weights = example.weights
    _require(
        torch.broadcast_shapes(weights.shape, (size, length)) == (size, length),
        f"weights of shape {tuple(weights.shape)} must broadcast to [B, L]",
    )
    _require(torch.isfinite(weights).all() and (weights >= 0).all(), "weights must be finite and ≥ 0")
    norm = example.normaliser
    _require(norm.numel() == 1 and torch.isfinite(norm).all() and (norm > 0).all(), "normaliser must be > 0")
    _require(example.t.shape[0] == size and torch.isfinite(example.t).all(), "t must be finite with B rows")
    z = ids[:, :length]
    masked = z == vocab.mask_id
    _require(not (mask & ~masked).any(), "loss_mask marks a position whose input is not MASK")
    goal = example.targets[mask]
    _require(((goal >= 0) & (goal < vocab.num_regular)).all(), "targets on the loss mask must be regular ids")
    _require(
        torch.equal(z[~masked], example.targets[~masked]), "unmasked inputs must equal the clean targets"
    )
    if not stateful:
        _require(torch.equal(example.targets, batch.input_ids), "targets must equal the clean batch ids")
        eligible = batch.attention_mask & ~batch.prompt_mask
        _require(not (masked & ~batch.prompt_mask & ~eligible).any(), "PAD positions must never be masked")
        _require(not (masked & batch.prompt_mask).any(), "prompt positions must never be masked")
        _require(
            torch.equal(mask, masked), "loss_mask must mark exactly the masked non-pad non-prompt positions"
        )
    layout = example.layout
    if layout.key_padding is not None:
        _require(layout.key_padding.shape == ids.shape, "layout.key_padding must be [B, L'] like input_ids")
    dense = layout.dense(ids.shape[1], ids.device)
    if dense is not None:
        _require(
            dense.dtype == torch.bool
            and dense.shape[0] in (1, size)
            and dense.shape[1:] == (ids.shape[1],) * 2,
            "the layout must expand to a bool [B or 1, L', L'] mask",
        )


def _check_state(value: Any, where: str = "state") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _require(isinstance(key, str), f"{where}: keys must be strings")
            _check_state(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_state(item, f"{where}[{i}]")
    else:
        _require(
            isinstance(value, Tensor | int | float | str | bool) or value is None,
            f"{where}: state_dict may hold tensors and JSON values only, got {type(value).__name__}",
        )


def _copy_state(value: Any) -> Any:
    """What a checkpoint round trip gives back: fresh tensors, fresh containers."""
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_state(v) for v in value]
    return value.clone() if isinstance(value, Tensor) else value


def check_forward_process(make: Callable[[], ForwardProcess], *, max_examples: int = 30) -> None:
    """Shapes, loss mask = masked non-pad non-prompt positions, finite weights, determinism,
    ``state_dict`` round trip, and (unless ``stateful``) masking that grows with t from ~0."""
    uniform = UniformTimeSampler()

    @_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 30), label="vocab")
        batch = data.draw(batches(vocab), label="batch")
        process = _set_up(make, vocab, batch)
        example = process.prepare(batch, uniform, _generator(seed))
        _check_example(example, batch, vocab, process.stateful)
        again = _set_up(make, vocab, batch).prepare(batch, uniform, _generator(seed))
        _same_example(example, again, "same seed must give the same example")
        logits = torch.randn((*example.targets.shape, vocab.size), generator=_generator(seed))
        process.feedback(example, logits)
        state = process.state_dict()
        _check_state(state)
        restored = _set_up(make, vocab, batch)
        restored.load_state_dict(_copy_state(state))
        _same_example(
            process.prepare(batch, uniform, _generator(seed + 1)),
            restored.prepare(batch, uniform, _generator(seed + 1)),
            "load_state_dict(state_dict()) must reproduce the next example",
        )

    laws()
    if not make().stateful:
        _check_masking_grows(make)


def _check_masking_grows(make: Callable[[], ForwardProcess]) -> None:
    vocab = Vocab(size=12, pad_id=10, mask_id=11)
    ids = torch.randint(0, vocab.num_regular, (64, 32), generator=_generator(0))
    batch = Batch.from_ids(ids, vocab)
    fractions = []
    for t in (1e-6, 0.3, 0.9):
        example = _set_up(make, vocab, batch).prepare(batch, FixedTimeSampler(t), _generator(1))
        fractions.append(float((example.input_ids[:, : ids.shape[1]] == vocab.mask_id).float().mean()))
    _require(
        fractions[0] <= 0.02, f"at t = 1e-6 almost nothing may be masked; masked fraction {fractions[0]:.3f}"
    )
    _require(
        fractions[0] < fractions[1] < fractions[2],
        f"masking must grow with t; masked fractions at t = 1e-6, 0.3, 0.9: {fractions}",
    )


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def check_loss(
    make: Callable[[], Loss], *, max_examples: int = 30, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    """Finite, ≥ 0, zero on an empty loss mask, blind to unmasked logits and to the MASK/PAD
    logits, and equal to the MDLM reference (values and gradients; fp32 and bf16 logits)."""

    @_settings(max_examples)
    @given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
    def laws(data: st.DataObject, dtype: torch.dtype) -> None:
        vocab = data.draw(vocabs(2, 40), label="vocab")
        base, example = data.draw(training_examples(vocab), label="example")
        loss = make()
        logits = base.to(dtype).requires_grad_()
        out = loss(logits, example, vocab)
        value = out.loss.detach()
        _require(value.dim() == 0 and torch.isfinite(value), "loss must be a finite scalar")
        _require(value >= -atol, f"loss must be ≥ 0, got {float(value)}")
        reference_logits = base.to(dtype).requires_grad_()
        ref = mdlm_reference(reference_logits, example, vocab)
        grad_rtol, grad_atol = (rtol, atol) if dtype == torch.float32 else (max(rtol, 1e-2), max(atol, 1e-3))
        _require(_close(value, ref.loss, rtol, atol), f"loss {value.item()} != reference {ref.loss.item()}")
        _require(
            _close(out.weighted_nll_sum, ref.weighted_nll_sum, rtol, atol),
            "weighted_nll_sum differs from the reference",
        )
        _require(_close(out.num_tokens, ref.num_tokens, rtol, atol), "num_tokens must equal the normaliser")
        if not example.loss_mask.any():
            _require(value == 0, f"loss must be exactly 0 on an empty loss mask, got {float(value)}")
        (ref_grad,) = torch.autograd.grad(ref.loss, reference_logits)
        grad = torch.autograd.grad(out.loss, logits, allow_unused=True)[0] if out.loss.requires_grad else None
        grad = torch.zeros_like(logits) if grad is None else grad
        _require(
            _close(grad, ref_grad, grad_rtol, grad_atol), "gradient w.r.t. logits differs from the reference"
        )
        noise = 10.0 * torch.randn(base.shape, generator=_generator(1))
        hidden = torch.where(example.loss_mask[..., None], base, base + noise)
        banned = base.clone()
        banned[..., [vocab.mask_id, vocab.pad_id]] += noise[..., :2]
        with torch.no_grad():
            for changed, law in ((hidden, "unmasked positions"), (banned, "the MASK and PAD logits")):
                other = loss(changed.to(dtype), example, vocab).loss
                _require(_close(other, value, rtol, atol), f"loss must not depend on {law}")

    laws()


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------


def _reach(allowed: Tensor) -> Tensor:
    """Transitive, reflexive closure of "query i attends to key j": what any depth can see."""
    length = allowed.shape[-1]
    reach = allowed | torch.eye(length, dtype=torch.bool)
    for _ in range(max(1, math.ceil(math.log2(length)))):
        reach = reach | ((reach.float() @ reach.float()) > 0)
    return reach


def _check_hidden(
    model: Backbone, ids: Tensor, time: Tensor | None, layout: AttentionLayout, changed: Tensor, law: str
) -> None:
    """Replace the ids where ``changed`` [B, L]; positions that cannot reach them keep their logits."""
    size, length = ids.shape
    allowed = layout.dense(length)
    reach = (
        _reach(allowed.expand(size, length, length))
        if allowed is not None
        else torch.ones(size, length, length)
    )
    affected = (reach.bool() & changed[:, None, :]).any(dim=-1)
    num_regular = model.vocab.num_regular
    replaced = torch.where(changed, (ids + 1) % num_regular, ids)
    before = model(ids, time_cond=time, layout=layout)
    after = model(replaced, time_cond=time, layout=layout)
    _require(
        torch.allclose(before[~affected], after[~affected], rtol=1e-4, atol=1e-5),
        f"{law}: logits changed at a position that cannot see the changed token",
    )


def check_backbone(make: Callable[[Vocab, int], Backbone], *, max_examples: int = 10) -> None:
    """Logits [B, L, V], finite, deterministic in eval mode, and no information flow that the
    layout forbids (block-causal, arbitrary masks through their transitive closure, key padding)."""

    @_settings(max_examples)
    @given(data=st.data(), seed=st.integers(0, 2**31 - 1))
    def laws(data: st.DataObject, seed: int) -> None:
        vocab = data.draw(vocabs(2, 20), label="vocab")
        size, length = data.draw(st.integers(1, 3), label="B"), data.draw(st.integers(2, 12), label="L")
        g = _generator(seed)
        model = make(vocab, length)
        model.eval()
        ids = torch.randint(0, vocab.num_regular, (size, length), generator=g)
        ids = torch.where(torch.rand((size, length), generator=g) < 0.3, vocab.mask_id, ids)
        time = torch.rand((size,), generator=g) if model.uses_time else None
        with torch.no_grad():
            logits = model(ids, time_cond=time)
            _require(
                logits.shape == (size, length, vocab.size), f"logits {tuple(logits.shape)} must be [B, L, V]"
            )
            _require(
                logits.is_floating_point() and torch.isfinite(logits).all(), "logits must be finite floats"
            )
            _require(
                torch.equal(logits, model(ids, time_cond=time)), "eval-mode forward must be deterministic"
            )
            full = model(ids, time_cond=time, layout=AttentionLayout(kind="full"))
            _require(
                torch.allclose(logits, full, rtol=1e-4, atol=1e-5), "layout=None must mean the full layout"
            )

            block = data.draw(st.integers(1, length), label="block_size")
            key = data.draw(st.integers(0, length - 1), label="changed position")
            changed = torch.zeros((size, length), dtype=torch.bool)
            changed[:, key] = True
            causal = AttentionLayout(kind="block_causal", block_size=block)
            _check_hidden(model, ids, time, causal, changed, "block_causal layout")

            rank = torch.stack([torch.randperm(length, generator=g) for _ in range(size)])
            order = rank[:, None, :] <= rank[:, :, None]
            keep = torch.rand((size, length, length), generator=g) < 0.7
            mask = (order & keep) | torch.eye(length, dtype=torch.bool)
            _check_hidden(model, ids, time, AttentionLayout(kind="mask", mask=mask), changed, "mask layout")

            real = torch.rand((size, length), generator=g) < 0.6
            real[:, 0] = True
            padded = AttentionLayout(kind="full", key_padding=real)
            _check_hidden(model, ids, time, padded, ~real, "key padding")

    laws()


class TinyBackbone(Backbone):
    """A tiny deterministic model for kit checks: embeddings, one bidirectional attention layer.

    It honours every ``AttentionLayout`` and, with ``uses_time``, adds a learned time embedding,
    so samplers can be checked on a real network without depending on any backbone plug-in.
    """

    name = "kit_tiny"

    class Params(BaseParams):
        dim: int = Field(default=16, ge=1)
        uses_time: bool = False
        seed: int = 0

    params: Params

    def __init__(self, params: Params | None, vocab: Vocab, max_len: int) -> None:
        super().__init__(params, vocab, max_len)
        dim = self.params.dim
        self.uses_time = self.params.uses_time
        self.embed = nn.Embedding(vocab.size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.time = nn.Linear(1, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Linear(dim, vocab.size)
        g = _generator(self.params.seed)
        for weight in self.parameters():
            nn.init.normal_(weight, std=0.7, generator=g)

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        if kv_cache is not None:
            raise MdmError("TinyBackbone has no KV cache; use it without kv_cache")
        size, length = input_ids.shape
        if length > self.max_len:
            raise MdmError(f"TinyBackbone was built for length ≤ {self.max_len}, got {length}")
        positions = torch.arange(length, device=input_ids.device) if position_ids is None else position_ids
        h = self.embed(input_ids) + self.position(positions)
        if self.uses_time and time_cond is not None:
            h = h + self.time(time_cond.float().reshape(size, -1).mean(dim=1, keepdim=True))[:, None, :]
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        allowed = (layout or AttentionLayout()).dense(length, input_ids.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        return self.head(h + torch.softmax(scores, dim=-1) @ v)


# --------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------


def check_sampler(make: Callable[[], Sampler], *, max_examples: int = 10) -> None:
    """On a tiny real backbone: [N, L] regular ids (no MASK/PAD), prompt kept, integer NFE ≥ 0,
    same seed ⇒ same samples, and the model's train/eval mode left as it was."""

    @_settings(max_examples)
    @given(
        data=st.data(),
        seed=st.integers(0, 2**31 - 1),
        uses_time=st.booleans(),
        prompted=st.booleans(),
        cosine=st.booleans(),
        training=st.booleans(),
    )
    def laws(
        data: st.DataObject, seed: int, uses_time: bool, prompted: bool, cosine: bool, training: bool
    ) -> None:
        vocab = data.draw(vocabs(2, 12), label="vocab")
        num, length = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 10), label="L")
        model = TinyBackbone(TinyBackbone.Params(uses_time=uses_time, seed=seed), vocab, length)
        model.train(training)
        alpha = Cosine(1e-3).alpha if cosine else None
        ctx = SamplingContext(vocab=vocab, device=torch.device("cpu"), alpha=alpha)
        g = _generator(seed)
        prompt = torch.randint(0, vocab.num_regular, (num, length), generator=g) if prompted else None
        prompt_mask = torch.rand((num, length), generator=g) < 0.4 if prompted else None
        sampler = make()
        out = sampler.generate(model, ctx, num, length, _generator(seed), prompt, prompt_mask)
        tokens = out.tokens
        _require(tokens.shape == (num, length), f"tokens {tuple(tokens.shape)} must be [num_samples, length]")
        _require(not tokens.is_floating_point(), "tokens must be integer ids")
        _require(
            ((tokens >= 0) & (tokens < vocab.num_regular)).all(),
            "every generated id must be a regular id (no MASK or PAD left)",
        )
        if prompt is not None and prompt_mask is not None:
            _require(torch.equal(tokens[prompt_mask], prompt[prompt_mask]), "prompt positions must be kept")
        _require(isinstance(out.nfe, int) and out.nfe >= 0, f"nfe must be an int ≥ 0, got {out.nfe!r}")
        _require(model.training == training, "the sampler must leave the model's train/eval mode as it was")
        again = make().generate(model, ctx, num, length, _generator(seed), prompt, prompt_mask)
        _require(torch.equal(tokens, again.tokens), "same seed must give the same samples")

    laws()


# --------------------------------------------------------------------------------------------
# DataSource
# --------------------------------------------------------------------------------------------


def check_data_source(make: Callable[[], DataSource]) -> None:
    """train/validation splits of fixed-length ids within the vocabulary, prompt_len < seq_len,
    a JSON tokenizer description, decode∘encode stable on the data's text, same seed ⇒ same data."""
    bundle = make().load(seed=0)
    tokenizer, seq_len = bundle.tokenizer, bundle.seq_len
    vocab = tokenizer.vocab
    for split in ("train", "validation"):
        _require(split in bundle.splits, f"load() must provide a '{split}' split")
        dataset = bundle.splits[split]
        _require(len(dataset) > 0, f"split '{split}' is empty")
        _require("input_ids" in dataset.column_names, f"split '{split}' needs an input_ids column")
        ids = torch.as_tensor(dataset[: min(len(dataset), 256)]["input_ids"])
        _require(
            ids.dim() == 2 and ids.shape[1] == seq_len, f"'{split}' rows must have seq_len = {seq_len} ids"
        )
        _require(
            (((ids >= 0) & (ids < vocab.num_regular)) | (ids == vocab.pad_id)).all(),
            f"'{split}' ids must be regular ids or PAD (never MASK)",
        )
        if "prompt_len" in dataset.column_names:
            prompt_len = torch.as_tensor(dataset[: ids.shape[0]]["prompt_len"])
            _require(
                ((prompt_len >= 0) & (prompt_len < seq_len)).all(), "prompt_len must lie in [0, seq_len)"
            )
    json.dumps(tokenizer.to_json())
    row = [i for i in bundle.splits["train"][0]["input_ids"] if i != vocab.pad_id]
    text = tokenizer.decode(row)
    again = tokenizer.decode(tokenizer.encode(text))
    _require(
        " ".join(again.split()) == " ".join(text.split()),
        f"decode(encode(text)) must give the text back: {text[:60]!r} became {again[:60]!r}",
    )
    other = make().load(seed=0)
    for split in ("train", "validation"):
        first, second = bundle.splits[split], other.splits[split]
        rows = min(len(first), 256)
        _require(
            len(first) == len(second) and first[:rows]["input_ids"] == second[:rows]["input_ids"],
            f"same seed must give the same '{split}' data",
        )
