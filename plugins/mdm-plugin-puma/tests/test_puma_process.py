"""PUMA's laws: the conformance kit, then the pool's own invariants over real training steps."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mdm_plugin_bell.sampler import BellTimeSampler
from mdm_plugin_puma.process import PumaProcess, normalised_quantile
from pydantic import ValidationError
from torch import Tensor, nn

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.losses import MDLMLoss
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.checkpoint import load_checkpoint, save_checkpoint
from mdm_core.composition import check_composition
from mdm_core.errors import MdmError, SpecError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    Batch,
    KVCache,
    RunShape,
    TimeSampler,
    TrainingExample,
    Vocab,
)
from mdm_core.plugins import get_registry
from mdm_core.spec import Component
from mdm_core.testing import check_forward_process

torch.set_num_threads(1)

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)
UNIFORM = UniformTimeSampler()
LAW_SETTINGS = settings(max_examples=12, deadline=None, database=None, derandomize=True)


def shape_of(size: int, length: int, seed: int = 0, grad_accum: int = 1) -> RunShape:
    return RunShape(
        vocab=VOCAB, seq_len=length, batch_size=size, grad_accum=grad_accum, max_steps=1000, seed=seed
    )


def puma(stream: Stream | None = None, seed: int = 0, **kwargs: object) -> PumaProcess:
    """A PUMA process for ``stream``'s batches (pool seed ``shape.rank_seed`` = 1000·seed)."""
    size, length = (stream.size, stream.length) if stream is not None else (4, 10)
    return PumaProcess(PumaProcess.Params(**kwargs), shape_of(size, length, seed))


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
    process = puma()
    assert process.stateful and process.wants_feedback and process.uses_time_sampler
    likelihood = process.likelihood_process()
    assert isinstance(likelihood, AbsorbingProcess) and likelihood.params.schedule == "loglinear"
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    assert torch.equal(process.alpha(t), likelihood.alpha(t))
    record = process.inference()
    assert record.structure == "full" and torch.equal(record.alpha(t), likelihood.alpha(t))
    assert torch.allclose(record.time_of_alpha(record.alpha(t)), t)


def test_example_t_is_the_schedule_time_of_the_masked_fraction() -> None:
    stream = Stream(6, 12, 0)
    process = puma(stream, stages=4)
    example = process.prepare(stream.next(), UNIFORM, torch.Generator())
    fraction = example.loss_mask.sum(dim=1).double() / response(process).sum(dim=1).clamp(min=1).double()
    masked_at_t = 1.0 - process.inference().alpha(example.t.double())
    # α_1 = ε: a fully masked response is reached at t = 1 (its expected masked fraction 1 − ε)
    assert torch.allclose(masked_at_t, fraction.clamp(max=1 - 1e-3), atol=1e-6)
    assert bool((example.t <= 1).all())


@pytest.mark.parametrize(
    "params",
    [{}, {"stages": 3, "mode": "collapse", "tau": 0.5, "confidence": "margin"}, {"stages": 1}],
)
def test_conformance_kit(params: dict[str, object]) -> None:
    check_forward_process(lambda shape: PumaProcess(PumaProcess.Params(**params), shape), max_examples=15)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="strictly increasing"):
        PumaProcess.Params(k_schedule=[(4, 100), (8, 100)])
    with pytest.raises(ValidationError, match="at least 1"):
        PumaProcess.Params(k_schedule=[(0, 10)])
    with pytest.raises(ValidationError, match="stages"):
        PumaProcess.Params(stages=0)
    with pytest.raises(ValidationError, match="extra"):
        PumaProcess.Params(stage=4)  # type: ignore[call-arg]


def test_gradient_accumulation_is_refused_naming_the_setting() -> None:
    with pytest.raises(SpecError, match=r"trainer\.grad_accum: 1 \(got 4\)"):
        PumaProcess(None, shape_of(8, 10, grad_accum=4))
    assert PumaProcess(None, shape_of(8, 10, grad_accum=1)).size == 8


def test_pool_is_sized_and_seeded_by_the_run_shape() -> None:
    def first_stages(seed: int) -> list[int]:
        process = PumaProcess(None, shape_of(8, 10, seed=seed))
        process.prepare(Stream(8, 10, 0).next(), UNIFORM, torch.Generator())
        return process.stage.tolist()

    assert PumaProcess(None, shape_of(5, 7)).x0.shape == (5, 7)
    assert first_stages(1) == first_stages(1) != first_stages(2)


def test_composes_with_any_time_sampler() -> None:
    process = Component("forward_process", "puma", PumaProcess, PumaProcess.Params(), "forward_process")
    bell = Component("time_sampler", "bell", BellTimeSampler, BellTimeSampler.Params(), "time_sampler")
    check_composition({"forward_process": process, "time_sampler": bell}, "spec.yaml")


def test_clear_errors_on_misuse() -> None:
    stream = Stream(4, 10, 0)
    process = puma(stream)
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
    process = puma(stream, seed, stages=stages, confidence=kind)
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
    log_p = torch.log_softmax(logits[..., : VOCAB.num_regular].double(), dim=-1)
    if kind == "max_prob":
        return log_p.amax(dim=-1)
    top = log_p.exp().topk(2, dim=-1).values
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
    process = puma(stream, seed, stages=stages, confidence=kind)
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
    first = puma(stream, seed, stages=4, mode=mode, tau=0.3)
    second = puma(stream, seed, stages=4, mode=mode, tau=0.3)
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
    process = puma(stream, 0, stages=stages, mode="collapse", tau=0.9)
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
    process = puma(stream, 0, stages=2, k_schedule=[(4, 3)])
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
# The confidence is the sampler's, and PUMA with the uniform law is v1 PUMA bit for bit
# --------------------------------------------------------------------------------------------


#: sha256 of v1 PUMA's pool trajectory (mdm 0.1, git e6f51c7, recorded with its ``setup`` API):
#: every step's example ids/targets/loss mask/weights and stage/target/refill, then the final pool.
V1_DIGESTS = {
    "standard": "1e731471c71fb7b882385261a8765b7f7aaf5b68df6d038456862a661ed7991d",
    "collapse": "a32e7869d6e3a7eec3328d36621d6e0e269b9fb43c66b6755000628c4665602a",
    "k_schedule": "52b30f39f7266412a50ab6cbdcb9353f593c832bcd4d6fccad0bf632e721bd20",
}
V1_CONFIGS: dict[str, dict[str, object]] = {
    "standard": {"stages": 4},
    "collapse": {"stages": 3, "mode": "collapse", "tau": 0.5},
    "k_schedule": {"stages": 2, "k_schedule": [(3, 4)]},
}


def golden_batches(size: int, length: int, seed: int) -> Iterator[Batch]:
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, VOCAB.num_regular, (size, length), generator=g)
        pads = torch.randint(0, 3, (size,), generator=g)
        ids[torch.arange(length)[None, :] >= (length - pads)[:, None]] = VOCAB.pad_id
        prompt_len = torch.randint(0, 4, (size,), generator=g)
        yield Batch.from_ids(ids, VOCAB, prompt_len)


def trajectory_digest(process: PumaProcess, law: TimeSampler, size: int = 6, length: int = 12) -> str:
    stream = golden_batches(size, length, 7)
    logits_g = torch.Generator().manual_seed(8)
    h = hashlib.sha256()
    for _ in range(10):
        ex = process.prepare(next(stream), law, torch.Generator().manual_seed(0))
        pool = (process.stage, process.target, process.refill)
        for x in (ex.input_ids, ex.targets, ex.loss_mask, ex.weights.float(), *pool):
            h.update(x.contiguous().numpy().tobytes())
        process.feedback(ex, 3.0 * torch.randn((size, length, VOCAB.size), generator=logits_g))
    for x in (process.z, process.stage, process.target, process.refill, process.x0):
        h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("config", sorted(V1_CONFIGS))
def test_uniform_law_reproduces_v1_puma_exactly(config: str) -> None:
    process = PumaProcess(PumaProcess.Params(**V1_CONFIGS[config]), shape_of(6, 12, seed=3))
    assert trajectory_digest(process, UNIFORM) == V1_DIGESTS[config]


def bell(**kwargs: object) -> BellTimeSampler:
    return BellTimeSampler(BellTimeSampler.Params(**kwargs))


@pytest.mark.parametrize(
    "law",
    [
        bell(family="logit_normal"),
        bell(family="beta", a=3.0, b=2.0, rho=0.3),
        bell(family="truncated_normal"),
    ],
    ids=["logit_normal", "beta_mix", "truncated_normal"],
)
def test_stage_boundaries_are_the_laws_quantiles(law: BellTimeSampler) -> None:
    k = 5
    process = PumaProcess(PumaProcess.Params(stages=k), shape_of(4, 10))
    stages = torch.arange(k)
    start = process.visible_fraction(stages, torch.zeros(k, dtype=torch.float64), law)
    end = process.visible_fraction(stages, torch.ones(k, dtype=torch.float64), law)
    levels = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    q = law.quantile(levels).double()
    masked = (q - q[0]) / (q[-1] - q[0])  # the law normalised to its support
    # stage j starts at visible fraction 1 − q̃(1 − j/K) and ends where stage j + 1 starts
    assert torch.allclose(start, 1.0 - masked.flip(0)[:-1], atol=1e-12)
    assert torch.allclose(end, 1.0 - masked.flip(0)[1:], atol=1e-12)
    assert start[0] == 0.0 and end[-1] == 1.0
    # within a stage ρ follows the law: monotone in u, between the stage's ends
    u = torch.linspace(0.0, 1.0, 33, dtype=torch.float64)
    inside = process.visible_fraction(torch.full((33,), 2), u, law)
    assert bool((inside[1:] >= inside[:-1]).all()) and inside[0] == start[2] and inside[-1] == end[2]


def test_a_bell_spends_equal_steps_on_finer_middle_stages() -> None:
    k = 8
    process = PumaProcess(PumaProcess.Params(stages=k), shape_of(4, 10))
    stages = torch.arange(k)
    law = bell(family="logit_normal")
    ends = process.visible_fraction(stages, torch.ones(k, dtype=torch.float64), law)
    starts = process.visible_fraction(stages, torch.zeros(k, dtype=torch.float64), law)
    width = ends - starts
    assert float(width.sum()) == pytest.approx(1.0)
    assert bool((width[k // 2 - 1 : k // 2 + 1] < 1.0 / k).all()), "middle stages are narrower than 1/K"
    assert bool((width[[0, -1]] > 1.0 / k).all()), "outer stages are wider than 1/K"
    # and the uniform law is the identity: stage j covers [j/K, (j+1)/K) exactly
    assert torch.equal(
        process.visible_fraction(stages, torch.zeros(k, dtype=torch.float64), UNIFORM), stages / k
    )


def test_bell_law_moves_the_pool_and_importance_weights_reach_the_loss() -> None:
    law = bell(family="logit_normal", s=0.5, rho=0.2, weighting="importance")
    stream = Stream(64, 40, 0, prompt=0, pad=0)
    plain, with_bell = puma(stream, stages=4), puma(stream, stages=4)
    batch = stream.next()
    a = plain.prepare(batch, UNIFORM, torch.Generator())
    b = with_bell.prepare(batch, law, torch.Generator())
    fraction = b.loss_mask.sum(dim=1).double() / 40
    # a narrow bell keeps every stage nearer the middle than the uniform law's stages
    spread = lambda ex: float((ex.loss_mask.sum(dim=1).double() / 40 - 0.5).abs().mean())  # noqa: E731
    assert spread(b) < spread(a)
    t_law = law.quantile(torch.tensor([0.0], dtype=torch.float64)).item() + fraction * (1 - law.params.eps)
    expected = law.loss_weight(t_law).float() / b.loss_mask.sum(dim=1).clamp(min=1).float()
    assert torch.allclose(b.weights[:, 0], expected, rtol=1e-6)
    assert torch.allclose(
        normalised_quantile(UNIFORM, torch.tensor([0.0, 0.5, 1.0]), 0.0).float(),
        torch.tensor([0.0, 0.5, 1.0]),
    )


# --------------------------------------------------------------------------------------------
# A real training loop: one forward pass per step, the loss contract, exact resume
# --------------------------------------------------------------------------------------------


class CountingModel(Backbone):
    """Embedding + linear head that counts its forward calls."""

    name = "counting"

    def __init__(self, vocab: Vocab, max_len: int) -> None:
        super().__init__(None, RunShape(vocab=vocab, seq_len=max_len))
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
    process = puma(stream, 0, stages=3, mode="collapse")
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
    process = puma(stream, 5, stages=3, k_schedule=[(2, 6)])
    train(process, model, stream, steps=4)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, 4, {"model": weights}, {"forward_process": process.state_dict()}, keep=1)
    stream_state = stream.g.get_state()

    continued = train(process, model, stream, steps=5)

    _, saved, groups = load_checkpoint(tmp_path / "step-00000004")
    resumed_model = CountingModel(VOCAB, 12)
    resumed_model.load_state_dict(saved["model"])
    resumed = puma(Stream(6, 12, 1), 123, stages=3, k_schedule=[(2, 6)])
    resumed.load_state_dict(groups["forward_process"])
    stream.g.set_state(stream_state)
    again = train(resumed, resumed_model, stream, steps=5)
    assert same_examples(continued, again)
    with pytest.raises(MdmError, match="resume"):
        puma(Stream(5, 12, 0)).load_state_dict(groups["forward_process"])
