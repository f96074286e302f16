"""Laws of the Block, Scatter and Jigsaw layouts and processes (METHODS §4.2)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from mdm_plugin_blockwise.locality import (
    BlockLayout,
    BlockProcess,
    JigsawLayout,
    JigsawProcess,
    LocalityLayout,
    ScatterLayout,
    ScatterProcess,
)
from mdm_plugin_dit.model import DiT

from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.errors import MdmError
from mdm_core.interfaces import Batch, RunShape, Vocab
from mdm_core.plugins import get_registry
from mdm_core.testing import FixedTimeSampler, batches, check_forward_process, vocabs
from mdm_core.testing.forward_process_checks import WeightedUniform
from mdm_core.testing.laws import law_settings

VOCAB = Vocab(size=12, pad_id=10, mask_id=11)


def reference(kind: str, q: int, k: int, prompt: int, size: int, masked: set[int]) -> bool:
    """METHODS §4.2 written out position by position (prompt queries see the prompt only)."""
    if k < prompt:
        return True
    if q < prompt:
        return False
    qb, kb = (q - prompt) // size, (k - prompt) // size
    qo, ko = (q - prompt) % size, (k - prompt) % size
    if kind == "block":
        return kb < qb or kb == qb
    if kind == "scatter":
        return ko <= qo
    if kb not in masked:
        return True
    return qb in masked and qb == kb and k <= q


@st.composite
def layout_cases(draw: st.DrawFn) -> tuple[str, LocalityLayout, list[int], list[set[int]], int]:
    kind = draw(st.sampled_from(["block", "scatter", "jigsaw"]))
    length = draw(st.integers(1, 14))
    size = draw(st.integers(1, 6))
    rows = draw(st.integers(1, 3))
    prompts = [draw(st.integers(0, length)) for _ in range(rows)]
    columns = math.ceil(length / size)
    sets = [set(draw(st.lists(st.integers(0, columns - 1), max_size=columns))) for _ in range(rows)]
    prompt_len = torch.tensor(prompts)
    layout: LocalityLayout
    if kind == "jigsaw":
        masked = torch.tensor([[c in s for c in range(columns)] for s in sets], dtype=torch.bool)
        layout = JigsawLayout(prompt_len=prompt_len, size=size, masked=masked)
    else:
        layout = (BlockLayout if kind == "block" else ScatterLayout)(prompt_len=prompt_len, size=size)
    return kind, layout, prompts, sets, length


@law_settings(60)
@given(case=layout_cases(), seed=st.integers(0, 2**16))
def test_layouts_equal_their_reference_predicate(
    case: tuple[str, LocalityLayout, list[int], list[set[int]], int], seed: int
) -> None:
    kind, layout, prompts, sets, length = case
    size = layout.size
    padding = torch.rand(len(prompts), length, generator=torch.Generator().manual_seed(seed)) < 0.8
    layout.key_padding = padding
    dense = layout.dense(length, length)
    assert dense is not None and dense.shape == (len(prompts), length, length)
    for b, (prompt, masked) in enumerate(zip(prompts, sets, strict=True)):
        for q in range(length):
            for k in range(length):
                rule = reference(kind, q, k, prompt, size, masked)
                got = layout.allowed(torch.tensor(q), torch.tensor(k), torch.tensor(b))
                assert bool(got) == rule, (kind, b, q, k)
                assert bool(dense[b, q, k]) == ((rule and bool(padding[b, k])) or q == k)


def random_dit(shape: RunShape) -> DiT:
    """A 2-layer DiT with every weight random (adaLN-zero would otherwise hide all flow)."""
    model = DiT(DiT.Params(dim=16, layers=2, heads=2, cond_dim=8), shape)
    g = torch.Generator().manual_seed(0)
    for weight in model.parameters():
        torch.nn.init.normal_(weight, std=0.5, generator=g)
    return model.eval()


@law_settings(12)
@given(case=layout_cases())
def test_dit_under_a_layout_carries_no_forbidden_information(
    case: tuple[str, LocalityLayout, list[int], list[set[int]], int],
) -> None:
    """Changing the id at key k moves the DiT's output at q ≠ k iff the layout lets q see k."""
    kind, layout, prompts, sets, length = case
    rows = len(prompts)
    model = random_dit(RunShape(vocab=VOCAB, seq_len=length, batch_size=rows))
    ids = torch.randint(0, VOCAB.num_regular, (rows, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids, layout=layout)
        for k in range(length):
            moved = ids.clone()
            moved[:, k] = (moved[:, k] + 1) % VOCAB.num_regular
            changed = (model(moved, layout=layout) - base).abs().amax(dim=-1) > 1e-5
            for b in range(rows):
                for q in range(length):
                    if q != k:
                        rule = reference(kind, q, k, prompts[b], layout.size, sets[b])
                        assert bool(changed[b, q]) == rule, (kind, b, q, k)


@pytest.mark.parametrize("cls", [BlockProcess, ScatterProcess])
def test_block_and_scatter_pass_the_forward_process_kit(cls: type[BlockProcess]) -> None:
    check_forward_process(lambda shape: cls(cls.Params(block_size=3), shape), max_examples=15)


def jigsaw(size: int, shape: RunShape) -> JigsawProcess:
    return JigsawProcess(JigsawProcess.Params(block_size=size), shape)


def test_jigsaw_passes_the_forward_process_kit_without_token_masking_laws() -> None:
    """Jigsaw masks whole blocks and teacher-forces inside them (inputs are clean tokens, not
    MASK), so the kit's absorbing-style laws are waived; everything else must hold."""
    check_forward_process(lambda shape: jigsaw(3, shape), max_examples=15, per_token=False)


@law_settings(40)
@given(
    data=st.data(),
    size=st.integers(1, 5),
    t=st.floats(1e-4, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_jigsaw_masks_whole_blocks_with_elbo_weights(
    data: st.DataObject, size: int, t: float, seed: int
) -> None:
    """k = clamp(⌈n·t⌉, 1, n) whole blocks; prompt and PAD untouched; teacher-forced inputs; n/k."""
    t = float(torch.tensor(t, dtype=torch.float32))  # what the time sampler hands the process
    vocab = data.draw(vocabs(2, 20))
    batch = data.draw(batches(vocab, max_len=20))
    rows, length = batch.input_ids.shape
    shape = RunShape(vocab=vocab, seq_len=length, batch_size=rows)
    example = jigsaw(size, shape).prepare(batch, FixedTimeSampler(t), torch.Generator().manual_seed(seed))
    again = jigsaw(size, shape).prepare(batch, FixedTimeSampler(t), torch.Generator().manual_seed(seed))
    assert torch.equal(example.input_ids, again.input_ids) and torch.equal(example.loss_mask, again.loss_mask)
    doubled = jigsaw(size, shape).prepare(batch, WeightedUniform(), torch.Generator().manual_seed(seed))
    plain = jigsaw(size, shape).prepare(batch, UniformTimeSampler(), torch.Generator().manual_seed(seed))
    assert torch.equal(doubled.loss_mask, plain.loss_mask)
    assert torch.allclose(doubled.weights, 2 * plain.weights)
    ids, z, loss = batch.input_ids, example.input_ids, example.loss_mask
    response = batch.attention_mask & ~batch.prompt_mask
    assert torch.equal(example.targets, ids)
    assert not (loss & ~response).any(), "prompt and PAD are never in the loss"
    assert example.normaliser == response.sum()
    for b in range(rows):
        prompt = int(batch.prompt_mask[b].sum())
        real = int(response[b].sum())
        n = math.ceil(real / size)
        blocks = [
            list(range(prompt + j * size, min(prompt + (j + 1) * size, prompt + real))) for j in range(n)
        ]
        hit = [j for j, pos in enumerate(blocks) if loss[b, pos].any()]
        assert all(loss[b, blocks[j]].all() for j in hit), "a masked block is masked whole"
        assert len(hit) == min(max(math.ceil(n * t), 1), n)
        assert float(example.weights[b, 0]) == pytest.approx(n / len(hit), rel=1e-6)
        for i in range(length):
            if not loss[b, i]:
                assert z[b, i] == ids[b, i], "outside masked blocks the input is the clean id"
            elif (i - prompt) % size == 0:
                assert z[b, i] == vocab.mask_id, "a masked block starts with MASK"
            else:
                assert z[b, i] == ids[b, i - 1], "inside a masked block the input is the previous token"


def test_jigsaw_prediction_never_sees_its_target_or_other_masked_blocks() -> None:
    """With the DiT: logits at a masked position ignore its own and later tokens of its block,
    and every token of the other masked blocks; they do see the earlier tokens of the block."""
    length, size = 14, 3
    shape = RunShape(vocab=VOCAB, seq_len=length, batch_size=4)
    model = random_dit(shape)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB.num_regular, (4, length), generator=g)
    batch = Batch.from_ids(ids, VOCAB, torch.tensor([0, 2, 5, 3]))
    process = jigsaw(size, shape)
    example = process.prepare(batch, FixedTimeSampler(0.5), torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(example.input_ids, layout=example.layout)
        saw_context = False
        for b, i in example.loss_mask.nonzero().tolist():
            start = i - (i - int(batch.prompt_mask[b].sum())) % size
            for j in range(length):
                moved_ids = ids.clone()
                moved_ids[b, j] = (moved_ids[b, j] + 1) % VOCAB.num_regular
                moved = process.prepare(
                    Batch.from_ids(moved_ids, VOCAB, batch.prompt_mask.sum(1)),
                    FixedTimeSampler(0.5),
                    torch.Generator().manual_seed(0),
                )
                delta = (model(moved.input_ids, layout=moved.layout) - base)[b, i].abs().max()
                hidden = bool(example.loss_mask[b, j]) and not (start <= j < i)
                if hidden:
                    assert delta == 0, (b, i, j)
                elif start <= j < i:
                    saw_context |= bool(delta > 1e-5)
    assert saw_context


def test_records_name_their_structure_and_invert_alpha() -> None:
    shape = RunShape(vocab=VOCAB, seq_len=16, batch_size=2)
    for process in (
        BlockProcess(BlockProcess.Params(block_size=4), shape),
        ScatterProcess(ScatterProcess.Params(block_size=4), shape),
        jigsaw(4, shape),
    ):
        record = process.inference()
        assert record.structure == type(process).structure(process.params) == process.name
        assert record.block_size == 4
        assert isinstance(record.layout(16), LocalityLayout)
        t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
        assert torch.allclose(record.time_of_alpha(record.alpha(t)), t, atol=1e-6)


def test_bad_layouts_are_refused_with_a_clear_error() -> None:
    with pytest.raises(MdmError, match="block_size must be ≥ 1"):
        BlockLayout(size=0)
    with pytest.raises(MdmError, match=r"masked must be a bool \[B, n_blocks\]"):
        JigsawLayout(prompt_len=torch.zeros(2, dtype=torch.long), masked=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(MdmError, match="pass the batch index"):
        BlockLayout(prompt_len=torch.zeros(2, dtype=torch.long)).allowed(torch.tensor(0), torch.tensor(1))


def test_the_plugin_registers_the_locality_components() -> None:
    registry = get_registry()
    for kind, name, cls_name in (
        ("forward_process", "block", "BlockProcess"),
        ("forward_process", "scatter", "ScatterProcess"),
        ("forward_process", "jigsaw", "JigsawProcess"),
        ("sampler", "locality", "LocalitySampler"),
    ):
        assert registry.load(kind, name).__name__ == cls_name


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_attention_block_masks_agree_with_the_dense_masks() -> None:
    """The layouts' FlexAttention block masks (eager on CPU) give the DiT the dense mask's output."""
    shape = RunShape(vocab=VOCAB, seq_len=16, batch_size=3)
    dense = random_dit(shape)
    flex = DiT(DiT.Params(dim=16, layers=2, heads=2, cond_dim=8, attention="flex"), shape).eval()
    flex.load_state_dict(dense.state_dict())
    ids = torch.randint(0, VOCAB.num_regular, (3, 16), generator=torch.Generator().manual_seed(2))
    prompt_len = torch.tensor([0, 3, 7])
    padding = torch.arange(16)[None] < torch.tensor([[16], [14], [12]])
    masked = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    for layout in (
        BlockLayout(prompt_len=prompt_len, size=3, key_padding=padding),
        ScatterLayout(prompt_len=prompt_len, size=3, key_padding=padding),
        JigsawLayout(prompt_len=prompt_len, size=3, masked=masked, key_padding=padding),
    ):
        with torch.no_grad():
            assert torch.allclose(dense(ids, layout=layout), flex(ids, layout=layout), atol=1e-4, rtol=1e-4)
