"""PUMA's laws: the conformance kit, then the pool's own invariants over real training steps."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mdm_plugin_puma import confidence as conf_module
from mdm_plugin_puma.confidence import margin, max_log_prob
from mdm_plugin_puma.process import PumaProcess
from pydantic import ValidationError
from torch import Tensor, nn

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.losses import MDLMLoss
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.checkpoint import load_checkpoint, save_checkpoint
from mdm_core.errors import MdmError
from mdm_core.interfaces import AttentionLayout, Backbone, Batch, KVCache, TrainingExample, Vocab
from mdm_core.plugins import get_registry
from mdm_core.testing import check_forward_process

torch.set_num_threads(1)

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)
UNIFORM = UniformTimeSampler()
LAW_SETTINGS = settings(max_examples=12, deadline=None, database=None, derandomize=True)


def puma(**kwargs: object) -> PumaProcess:
    return PumaProcess(PumaProcess.Params(**kwargs))


class Stream:
    """Fresh batches: random tokens, a per-row prompt and right padding, all from one seed."""

    def __init__(self, size: int, length: int, seed: int, prompt: int = 3, pad: int = 2) -> None:
        self.size, self.length = size, length
        self.prompt, self.pad = prompt, pad
        self.g = torch.Generator().manual_seed(seed)

    def next(self) -> Batch:
        ids = torch.randint(0, VOCAB.num_regular, (self.size, self.length), generator=self.g)
        pads = torch.randint(0, self.pad + 1, (self.size,), generator=self.g)
        ids[torch.arange(self.length)[None, :] >= (self.length - pads)[:, None]] = VOCAB.pad_id
        prompt_len = torch.randint(0, self.prompt + 1, (self.size,), generator=self.g)
        return Batch.from_ids(ids, VOCAB, prompt_len)


def set_up(process: PumaProcess, stream: Stream, seed: int = 0) -> PumaProcess:
    process.setup(VOCAB, stream.length, stream.size, max_steps=1000, seed=seed)
    return process


def random_logits(example: TrainingExample, g: torch.Generator) -> Tensor:
    return 3.0 * torch.randn((*example.targets.shape, VOCAB.size), generator=g)


def response(process: PumaProcess) -> Tensor:
    return (process.x0 != VOCAB.pad_id) & ~process.prompt


def visible_count(process: PumaProcess) -> Tensor:
    return (response(process) & (process.z != VOCAB.mask_id)).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Registration and the conformance kit
# --------------------------------------------------------------------------------------------


def test_registered_and_evaluated_with_the_uniform_nelbo() -> None:
    assert get_registry().load("forward_process", "puma") is PumaProcess
    process = PumaProcess()
    assert process.stateful
    likelihood = process.likelihood_process()
    assert isinstance(likelihood, AbsorbingProcess) and likelihood.params.schedule == "loglinear"
    t = torch.tensor([0.25, 0.5])
    assert torch.equal(process.alpha(t), likelihood.alpha(t))


@pytest.mark.parametrize(
    "params",
    [{}, {"stages": 3, "mode": "collapse", "tau": 0.5, "confidence": "margin"}, {"stages": 1}],
)
def test_conformance_kit(params: dict[str, object]) -> None:
    check_forward_process(lambda: puma(**params), max_examples=15)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        PumaProcess.Params(k_schedule=[(4, 100), (8, 100)])
    with pytest.raises(ValidationError, match="at least 1"):
        PumaProcess.Params(k_schedule=[(0, 10)])
    with pytest.raises(ValidationError, match="stages"):
        PumaProcess.Params(stages=0)
    with pytest.raises(ValidationError, match="extra"):
        PumaProcess.Params(stage=4)  # type: ignore[call-arg]


def test_clear_errors_on_misuse() -> None:
    stream = Stream(4, 10, 0)
    with pytest.raises(MdmError, match="setup"):
        PumaProcess().prepare(stream.next(), UNIFORM, torch.Generator())
    process = set_up(PumaProcess(), stream)
    with pytest.raises(MdmError, match="feedback"):
        process.feedback(process._example(), torch.zeros(4, 10, VOCAB.size))
    with pytest.raises(MdmError, match="full batch"):
        process.prepare(Stream(3, 10, 0).next(), UNIFORM, torch.Generator())


# --------------------------------------------------------------------------------------------
# Laws of the pool over many steps
# --------------------------------------------------------------------------------------------


@LAW_SETTINGS
@given(
    stages=st.integers(1, 5),
    size=st.integers(1, 9),
    length=st.integers(2, 14),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["max_prob", "margin"]),
)
def test_standard_mode_pool_laws(stages: int, size: int, length: int, seed: int, kind: str) -> None:
    stream = Stream(size, length, seed)
    process = set_up(puma(stages=stages, confidence=kind), stream, seed)
    g = torch.Generator().manual_seed(seed)
    times_seen = [0] * size
    joined_at_start = [True] * size
    last_x0 = process.x0.clone()
    last_visible = torch.zeros(size, dtype=torch.long)
    for step in range(3 * stages + 2):
        batch = stream.next()
        refilled = process.refill.clone()
        example = process.prepare(batch, UNIFORM, g)
        masked = example.input_ids == VOCAB.mask_id
        eligible = response(process)
        # the loss sees exactly the masked response positions; prompt and PAD are never masked
        assert torch.equal(example.loss_mask, masked) and not (masked & ~eligible).any()
        assert torch.equal(example.input_ids[~masked], process.x0[~masked])
        counts = torch.bincount(process.stage, minlength=stages)
        assert int(counts.max() - counts.min()) <= 1, f"unbalanced stages {counts.tolist()}"
        visible = visible_count(process)
        length_eff = eligible.sum(dim=1)
        # the visible count is the stage's draw u = min(round(ρ·L), max(L − 1, 1))
        assert torch.equal(visible, process.target)
        low = torch.round(process.stage.double() / stages * length_eff).long()
        high = torch.round((process.stage.double() + 1) / stages * length_eff).long()
        cap = (length_eff - 1).clamp(min=1)
        assert bool(((visible >= torch.minimum(low, cap)) & (visible <= torch.minimum(high, cap))).all())
        for slot in range(size):
            if bool(refilled[slot]):
                assert torch.equal(process.x0[slot], batch.input_ids[slot]), "slot i refills from row i"
                if step > 0:
                    if not joined_at_start[slot]:
                        assert times_seen[slot] == stages, "a sequence must be trained exactly K times"
                    joined_at_start[slot] = False
                    assert int(process.stage[slot]) == 0, "a new sequence starts at stage 0"
                times_seen[slot] = 1
            else:
                assert torch.equal(process.x0[slot], last_x0[slot])
                assert visible[slot] >= last_visible[slot], "visible count decreased within a sequence"
                times_seen[slot] += 1
            if not joined_at_start[slot]:
                assert int(process.stage[slot]) == times_seen[slot] - 1
        last_x0, last_visible = process.x0.clone(), visible
        process.feedback(example, random_logits(example, g))


def reference_confidence(logits: Tensor, kind: str) -> Tensor:
    regular = logits[..., : VOCAB.num_regular].double()
    if kind == "max_prob":
        return torch.log_softmax(regular, dim=-1).amax(dim=-1)
    top = regular.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


@LAW_SETTINGS
@given(
    stages=st.integers(2, 6),
    size=st.integers(1, 6),
    length=st.integers(2, 16),
    seed=st.integers(0, 2**31 - 1),
    kind=st.sampled_from(["max_prob", "margin"]),
)
def test_reveals_the_most_confident_masked_positions(
    stages: int, size: int, length: int, seed: int, kind: str
) -> None:
    stream = Stream(size, length, seed)
    process = set_up(puma(stages=stages, confidence=kind), stream, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(stages):
        example = process.prepare(stream.next(), UNIFORM, g)
        logits = random_logits(example, g)
        before = process.z == VOCAB.mask_id
        stage_before = process.stage.clone()
        process.feedback(example, logits)
        revealed = before & (process.z != VOCAB.mask_id)
        assert torch.equal(process.z[revealed], process.x0[revealed]), "reveals write the gold token"
        score = reference_confidence(logits, kind).masked_fill(~before, -math.inf)
        for b in range(size):
            if int(stage_before[b]) == stages - 1:
                assert not revealed[b].any() and bool(process.refill[b])
                continue
            picked = int(revealed[b].sum())
            assert picked == int(process.target[b]) - int((~before[b] & response(process)[b]).sum())
            top = set(score[b].topk(picked).indices.tolist()) if picked else set()
            assert set(revealed[b].nonzero().flatten().tolist()) == top


@LAW_SETTINGS
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["standard", "collapse"]))
def test_reveal_choice_ignores_the_gold_tokens(seed: int, mode: str) -> None:
    """Same masks and logits, different hidden answers: the same positions are revealed."""
    size, length = 6, 12
    stream = Stream(size, length, seed)
    g = torch.Generator().manual_seed(seed)
    first = set_up(puma(stages=4, mode=mode, tau=0.3), stream, seed)
    second = set_up(puma(stages=4, mode=mode, tau=0.3), stream, seed)
    for _ in range(6):
        batch = stream.next()
        other_ids = torch.where(
            (batch.input_ids != VOCAB.pad_id) & ~batch.prompt_mask,
            (batch.input_ids + 1 + torch.randint(0, 8, batch.input_ids.shape, generator=g))
            % VOCAB.num_regular,
            batch.input_ids,
        )
        other = Batch(other_ids, batch.attention_mask, batch.prompt_mask)
        a = first.prepare(batch, UNIFORM, g)
        b = second.prepare(other, UNIFORM, g)
        assert torch.equal(a.loss_mask, b.loss_mask)
        logits = random_logits(a, g)
        first.feedback(a, logits)
        second.feedback(b, logits)
        assert torch.equal(first.z == VOCAB.mask_id, second.z == VOCAB.mask_id)
        assert torch.equal(first.stage, second.stage)


def test_collapse_reveals_every_sure_position_and_rebuckets() -> None:
    size, length, stages = 8, 20, 4
    stream = Stream(size, length, 3, prompt=0, pad=0)
    process = set_up(puma(stages=stages, mode="collapse", tau=0.9), stream)
    example = process.prepare(stream.next(), UNIFORM, torch.Generator())
    masked = example.input_ids == VOCAB.mask_id
    # Sure (p ≈ 1) of some token at every masked position of even slots, unsure elsewhere.
    logits = torch.zeros((size, length, VOCAB.size))
    logits[0::2, :, 3] = 30.0
    stage_before = process.stage.clone()
    process.feedback(example, logits)
    still = process.z == VOCAB.mask_id
    for b in range(size):
        if int(stage_before[b]) == stages - 1:
            continue
        if b % 2 == 0:
            assert not still[b].any() and bool(process.refill[b]), "all sure positions revealed, slot done"
        else:
            visible = int((~still[b]).sum())
            assert visible == int(process.target[b]) and still[b].any()
            assert int(process.stage[b]) == max(int(stage_before[b]) + 1, visible * stages // length)
    assert masked.any()


def test_k_schedule_rebuilds_the_pool() -> None:
    stream = Stream(8, 10, 0)
    process = set_up(puma(stages=2, k_schedule=[(4, 3)]), stream)
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(5):
        batch = stream.next()
        example = process.prepare(batch, UNIFORM, g)
        seen.append(
            (process.num_stages, sorted(process.stage.tolist()), torch.equal(process.x0, batch.input_ids))
        )
        process.feedback(example, random_logits(example, g))
    assert [k for k, _, _ in seen] == [2, 2, 2, 4, 4]
    assert seen[0][1] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert seen[3][1] == [0, 0, 1, 1, 2, 2, 3, 3] and seen[3][2], "the switch refills every slot"
    assert not seen[1][2]


# --------------------------------------------------------------------------------------------
# Confidence without a full fp32 log-softmax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_confidence_matches_log_softmax(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conf_module, "CHUNK_ELEMENTS", 37)  # many small chunks
    rows = (5.0 * torch.randn((53, VOCAB.size), generator=torch.Generator().manual_seed(0))).to(dtype)
    rows[:, VOCAB.mask_id] = 100.0  # MASK and PAD logits must be ignored
    rows[:, VOCAB.pad_id] = 90.0
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    expected = reference_confidence(rows.float(), "max_prob").float()
    assert torch.allclose(max_log_prob(rows, VOCAB.num_regular), expected, atol=tol)
    expected_margin = reference_confidence(rows.float(), "margin").float()
    assert torch.allclose(margin(rows, VOCAB.num_regular), expected_margin, atol=tol)
    assert max_log_prob(rows[:0], VOCAB.num_regular).shape == (0,)


# --------------------------------------------------------------------------------------------
# A real training loop: one forward pass per step, the loss contract, exact resume
# --------------------------------------------------------------------------------------------


class CountingModel(Backbone):
    """Embedding + linear head that counts its forward calls."""

    name = "counting"

    def __init__(self, vocab: Vocab, max_len: int) -> None:
        super().__init__(None, vocab, max_len)
        self.embed = nn.Embedding(vocab.size, 16)
        self.position = nn.Embedding(max_len, 16)
        self.head = nn.Linear(16, vocab.size)
        self.calls = 0

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        self.calls += 1
        h = self.embed(input_ids) + self.position(torch.arange(input_ids.shape[1]))
        return self.head(h + h.mean(dim=1, keepdim=True))


def train(process: PumaProcess, model: CountingModel, stream: Stream, steps: int) -> list[TrainingExample]:
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_fn = MDLMLoss()
    examples = []
    for step in range(steps):
        example = process.prepare(stream.next(), UNIFORM, torch.Generator().manual_seed(step))
        logits = model(example.input_ids, layout=example.layout)
        out = loss_fn(logits, example, VOCAB)
        # the loss is the batch mean of each sequence's mean masked cross-entropy
        nll = torch.nn.functional.cross_entropy(
            logits[..., : VOCAB.num_regular].transpose(1, 2),
            example.targets.clamp(max=VOCAB.num_regular - 1),
            reduction="none",
        )
        per_seq = (nll * example.loss_mask).sum(dim=1) / example.loss_mask.sum(dim=1).clamp(min=1)
        assert torch.allclose(out.loss, per_seq.mean(), rtol=1e-5, atol=1e-6)
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        process.feedback(example, logits.detach())
        examples.append(example)
    return examples


def test_one_forward_pass_per_step() -> None:
    stream = Stream(6, 12, 0)
    process = set_up(puma(stages=3, mode="collapse"), stream)
    model = CountingModel(VOCAB, 12)
    train(process, model, stream, steps=10)
    assert model.calls == 10


def same_examples(a: list[TrainingExample], b: list[TrainingExample]) -> bool:
    fields = ("input_ids", "targets", "loss_mask", "weights", "normaliser", "t")
    return all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b, strict=True) for f in fields)


def test_checkpoint_round_trip_resumes_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CountingModel(VOCAB, 12)
    stream = Stream(6, 12, 1)
    process = set_up(puma(stages=3, k_schedule=[(2, 6)]), stream, seed=5)
    train(process, model, stream, steps=4)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, 4, {"model": weights}, {"forward_process": process.state_dict()}, keep=1)
    stream_state = stream.g.get_state()

    continued = train(process, model, stream, steps=5)

    _, saved, groups = load_checkpoint(tmp_path / "step-00000004")
    resumed_model = CountingModel(VOCAB, 12)
    resumed_model.load_state_dict(saved["model"])
    resumed = set_up(puma(stages=3, k_schedule=[(2, 6)]), Stream(6, 12, 1), seed=123)
    resumed.load_state_dict(groups["forward_process"])
    stream.g.set_state(stream_state)
    again = train(resumed, resumed_model, stream, steps=5)
    assert same_examples(continued, again)
    with pytest.raises(MdmError, match="resume"):
        set_up(PumaProcess(), Stream(5, 12, 0)).load_state_dict(groups["forward_process"])
