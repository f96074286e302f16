"""Block diffusion: the laws of METHODS §4.1, the conformance kit, clipping, and the interval search
under the real trainer (exact resume with the search in progress)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from mdm_plugin_blockwise._clip import admits, count_bounds
from mdm_plugin_blockwise.bd3 import BD3Process, IntervalSearch
from mdm_plugin_blockwise.block_sampler import BlockSampler
from mdm_plugin_dit.model import DiT
from pydantic import ValidationError

from mdm_core import checkpoint, hookimpl
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.losses import mdlm_reference
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import SpecError
from mdm_core.interfaces import Batch, BD3Layout, BlockCausalLayout, RunShape, TrainingExample, Vocab
from mdm_core.plugins import get_registry
from mdm_core.runs import read_metrics
from mdm_core.spec import load_spec
from mdm_core.testing import check_forward_process
from mdm_core.testing.laws import generator, law_settings
from mdm_core.testing.strategies import batches, vocabs
from mdm_core.trainer import train


def dit(vocab: Vocab, length: int, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(DiT.Params(dim=16, layers=2, heads=2), RunShape(vocab=vocab, seq_len=length))
    with torch.no_grad():  # adaLN-zero starts as a constant map: give every layer a say
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def bd3(shape: RunShape, **params: object) -> BD3Process:
    return BD3Process(BD3Process.Params(**params), shape)


def largest_proper_divisor(n: int) -> int:
    return max([d for d in range(1, n) if n % d == 0] or [n])


def shape_for(batch: Batch, vocab: Vocab) -> RunShape:
    size, length = batch.input_ids.shape
    return RunShape(vocab=vocab, seq_len=length, batch_size=size)


def loss_of(model: DiT, example: TrainingExample, vocab: Vocab) -> torch.Tensor:
    logits = model(
        example.input_ids,
        layout=example.layout,
        position_ids=example.position_ids,
    )
    return mdlm_reference(logits[:, : example.targets.shape[1]], example, vocab).loss


@law_settings(12)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_one_block_is_mdlm_on_the_same_noise(data: st.DataObject, seed: int) -> None:
    vocab = data.draw(vocabs(2, 12))
    batch = data.draw(batches(vocab, max_len=12))
    shape = shape_for(batch, vocab)
    model = dit(vocab, shape.seq_len, seed)
    uniform = UniformTimeSampler()
    ours = bd3(shape, block_size=shape.seq_len).prepare(batch, uniform, generator(seed))
    theirs = AbsorbingProcess(None, shape).prepare(batch, uniform, generator(seed))
    assert torch.equal(ours.loss_mask, theirs.loss_mask)
    assert torch.equal(ours.input_ids[:, : shape.seq_len], theirs.input_ids)
    assert torch.equal(ours.weights, theirs.weights)
    with torch.no_grad():
        a, b = loss_of(model, ours, vocab), loss_of(model, theirs, vocab)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


@law_settings(10)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_clean_pair_with_one_block_is_a_full_attention_pass(data: st.DataObject, seed: int) -> None:
    vocab = data.draw(vocabs(2, 12))
    size, length = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12))
    x = torch.randint(0, vocab.num_regular, (size, length), generator=generator(seed))
    model = dit(vocab, length, seed)
    with torch.no_grad():
        pair = model(
            torch.cat([x, x], 1),
            layout=BD3Layout(seq_len=length, size=length),
            position_ids=torch.arange(length).repeat(2),
        )
        plain = model(x)
    assert torch.allclose(pair[:, :length], plain, rtol=0, atol=1e-5)


def test_full_mask_mode_is_the_exact_autoregressive_nll() -> None:
    vocab = Vocab(size=9, pad_id=7, mask_id=8)
    x = torch.randint(0, 7, (3, 8), generator=generator(0))
    batch = Batch.from_ids(x, vocab, torch.tensor([0, 2, 5]))
    shape = RunShape(vocab=vocab, seq_len=8, batch_size=3)
    example = bd3(shape, block_size=1).prepare(batch, UniformTimeSampler(), generator(1))
    eligible = batch.attention_mask & ~batch.prompt_mask
    assert torch.equal(example.loss_mask, eligible) and bool((example.weights == 1).all())
    assert bool((example.t == 1).all())
    model = dit(vocab, 8)
    with torch.no_grad():
        logits = model(example.input_ids, layout=example.layout, position_ids=example.position_ids)
        nll = mdlm_reference(logits[:, :8], example, vocab).loss
        # The chain rule, one position at a time: x_i from a MASK at i behind the clean x_{<i}.
        total = torch.zeros(())
        for i in range(8):
            rows = eligible[:, i]
            if not rows.any():
                continue
            ids = torch.cat([x[:, :i], torch.full((3, 1), vocab.mask_id)], 1)
            logits_i = model(ids, layout=BlockCausalLayout(size=1))[:, i, : vocab.num_regular]
            logp = torch.log_softmax(logits_i.float(), -1)
            total -= logp[rows, x[rows, i]].sum()
    assert torch.allclose(nll, total / eligible.sum(), rtol=0, atol=1e-5)


def test_kit_unclipped_and_clipped() -> None:
    check_forward_process(lambda shape: bd3(shape, block_size=largest_proper_divisor(shape.seq_len)))
    check_forward_process(
        lambda shape: bd3(shape, block_size=shape.seq_len, clip=(0.0, 0.9)), max_examples=10
    )


@law_settings(25)
@given(
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
    block=st.integers(1, 9),
    blocks=st.integers(1, 4),
    low=st.floats(0.0, 0.95),
    width=st.floats(0.05, 1.0),
)
def test_clipped_masks_keep_every_block_inside_the_interval(
    data: st.DataObject, seed: int, block: int, blocks: int, low: float, width: float
) -> None:
    high = min(1.0, low + width)
    if not admits(low, high, block) or (block == 1):
        with pytest.raises(ValidationError):
            BD3Process.Params(block_size=block, clip=(low, high))
        return
    vocab = Vocab(size=8, pad_id=6, mask_id=7)
    length = block * blocks
    batch = data.draw(batches(vocab, min_len=length, max_len=length))
    shape = shape_for(batch, vocab)
    process = bd3(shape, block_size=block, clip=(low, high))
    example = process.prepare(batch, UniformTimeSampler(), generator(seed))
    eligible = (batch.attention_mask & ~batch.prompt_mask).view(-1, blocks, block)
    masked = example.loss_mask.view(-1, blocks, block)
    count, n = masked.sum(-1), eligible.sum(-1)
    smallest, largest = count_bounds(low, high, n)
    feasible = smallest <= largest
    assert bool(((count >= smallest) & (count <= largest))[feasible].all())
    assert bool((example.t >= low).all() and (example.t <= high).all())


def test_clipped_counts_follow_the_truncated_binomial() -> None:
    # Rejection sampling of Bernoulli(p) masks until k/n ∈ [β, ω] gives a truncated-binomial count.
    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    block, rows = 8, 4000
    batch = Batch.from_ids(torch.zeros((rows, block), dtype=torch.long), vocab)
    process = bd3(RunShape(vocab=vocab, seq_len=block, batch_size=rows), block_size=block, clip=(0.25, 0.75))
    example = process.example(batch, _Fixed(0.3), generator(0), interval=(0.25, 0.75))
    p = float(process.schedule.mask_prob(example.t[0, 0]))
    k = torch.arange(block + 1, dtype=torch.float64)
    pmf = torch.distributions.Binomial(block, torch.tensor(p, dtype=torch.float64)).log_prob(k).exp()
    pmf = torch.where((k >= 2) & (k <= 6), pmf, 0.0)
    pmf /= pmf.sum()
    counts = torch.bincount(example.loss_mask.sum(-1), minlength=block + 1).double() / rows
    assert float((counts - pmf).abs().max()) < 0.03


class _Fixed(UniformTimeSampler):
    def __init__(self, u: float) -> None:
        super().__init__()
        self.u = u

    def quantile(self, u: torch.Tensor, progress: float = 0.0) -> torch.Tensor:
        return torch.full_like(u, self.u)


def test_bad_block_size_and_interval_are_spec_errors(tmp_path: Path) -> None:
    shape = RunShape(vocab=Vocab(size=6, pad_id=4, mask_id=5), seq_len=12)
    with pytest.raises(SpecError, match="forward_process.block_size: 5 does not divide") as info:
        bd3(shape, block_size=5)
    assert info.value.exit_code == 2
    path = tmp_path / "s.yaml"
    path.write_text(
        "data: {name: markov, vocab_size: 8, seq_len: 16}\nbackbone: {name: dit}\n"
        "forward_process: {name: bd3, block_size: 4, clip: [0.3, 0.45]}\nsampler: {name: block}\n"
    )
    with pytest.raises(SpecError, match="contains no multiple of 1/block_size") as spec_info:
        load_spec(path)
    assert spec_info.value.exit_code == 2
    path.write_text(
        "data: {name: markov, vocab_size: 8, seq_len: 16}\nbackbone: {name: dit}\n"
        "forward_process: {name: bd3, block_size: 4}\nsampler: {name: ancestral}\n"
    )
    with pytest.raises(SpecError, match="'bd3'"):
        load_spec(path)


def test_validation_is_the_unclipped_process() -> None:
    vocab = Vocab(size=8, pad_id=6, mask_id=7)
    shape = RunShape(vocab=vocab, seq_len=8, batch_size=4)
    batch = Batch.from_ids(torch.randint(0, 6, (4, 8), generator=generator(0)), vocab)
    clipped = bd3(shape, block_size=4, clip=(0.5, 1.0))
    clipped.set_interval((0.25, 0.75))
    plain = bd3(shape, block_size=4)
    a = clipped.likelihood_process().prepare(batch, UniformTimeSampler(), generator(3))
    b = plain.prepare(batch, UniformTimeSampler(), generator(3))
    assert torch.equal(a.loss_mask, b.loss_mask) and torch.equal(a.weights, b.weights)
    assert clipped.interval == (0.25, 0.75)


SPEC = """
name: bd3-resume
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
forward_process: {{name: bd3, block_size: 4, clip: [0.0, 0.5]}}
sampler: {{name: block, steps: 4}}
evaluators:
  - {{name: nll, every: 4, draws: 2}}
  - {{name: bd3_interval_search, every: 3, widths: [0.9], max_batches: 1}}
trainer: {{max_steps: 8, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: 3, log_every: 1,
          eval_batch_size: 16, num_samples: 0}}
"""


class _CrashAt:
    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def mdm_step_end(self, run: object, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            raise KeyboardInterrupt


def _records(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in m.items() if k not in ("elapsed", "tok_per_s")} for m in read_metrics(run_dir)]


def test_killed_run_resumes_exactly_with_the_interval_search(tmp_path: Path) -> None:
    spec_path = tmp_path / "bd3.yaml"
    spec_path.write_text(SPEC.format(out=tmp_path / "runs"))
    full = Path(train(load_spec(spec_path), quiet=True)["run_dir"])
    searched = [m for m in read_metrics(full) if "val/bd3_clip_low" in m]
    assert [m["step"] for m in searched] == [3, 6, 8]
    # The search moved the interval away from the spec's [0, 0.5] (not on its grid), and the
    # checkpoint of step 6 holds the interval chosen at step 6.
    _, _, groups = checkpoint.load_checkpoint(full / "ckpt" / "step-00000006")
    chosen = groups["forward_process"]["interval"]
    at_six = searched[1]
    expected = (
        None
        if at_six["val/bd3_clip_high"] == 1.0 and at_six["val/bd3_clip_low"] == 0.0
        else [
            at_six["val/bd3_clip_low"],
            at_six["val/bd3_clip_high"],
        ]
    )
    assert chosen == expected and chosen != [0.0, 0.5]
    pm = get_registry().pm
    crash = _CrashAt(step=7)
    pm.register(crash, name="crash-bd3")
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_spec(spec_path), run_dir=tmp_path / "killed", quiet=True)
    finally:
        pm.unregister(crash)
    killed = tmp_path / "killed"
    assert (killed / "ckpt" / "latest").read_text().strip() == "step-00000006"
    train(load_spec(killed / "resolved.yaml"), run_dir=killed, resume=True, quiet=True)
    assert _records(killed) == _records(full)
    final = json.loads((full / "summary.json").read_text())["final"]
    assert final == json.loads((killed / "summary.json").read_text())["final"]


def test_interval_search_refuses_other_processes() -> None:
    from mdm_core.interfaces import EvalContext

    vocab = Vocab(size=6, pad_id=4, mask_id=5)
    shape = RunShape(vocab=vocab, seq_len=4)
    ctx = EvalContext(
        model=dit(vocab, 4),
        vocab=vocab,
        dataset=[],
        forward_process=AbsorbingProcess(None, shape),
        sampler=BlockSampler(None, shape),
        tokenizer=None,  # type: ignore[arg-type]  # never read by the refusal
        device=torch.device("cpu"),
        batch_size=4,
        seed=0,
    )
    with pytest.raises(SpecError, match="bd3_interval_search tunes"):
        IntervalSearch(None, shape).evaluate(ctx)
    grid = IntervalSearch(None, shape).candidates(4)
    assert (
        grid[0] is None and (0.0, 0.5) in grid and (0.1, 1.0) in grid and len(grid) == 1 + 11 + 9 + 7 + 5 + 3
    )
