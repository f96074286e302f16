"""The built-in reasoning tasks: Sudoku and star-graph data, and their accuracy evaluators."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import ConfidenceSampler
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    AttentionLayout,
    Backbone,
    DatasetBundle,
    EvalContext,
    KVCache,
    RunShape,
    Vocab,
)
from mdm_core.plugins import get_registry
from mdm_core.tasks import sudoku_gen
from mdm_core.tasks.cache import cache_dir
from mdm_core.tasks.star_graph import PathAccuracy, StarGraphSource, path_scores
from mdm_core.tasks.sudoku import SudokuAccuracy, SudokuSource, SudokuTokenizer, sudoku_scores
from mdm_core.testing import check_data_source

torch.set_num_threads(1)

SMALL_SUDOKU = SudokuSource.Params(num_train=60, num_val=12, variants=4)
SMALL_STAR = StarGraphSource.Params(num_train=300, num_val=40, degree=3, path_len=4, num_nodes=20)


@pytest.fixture(autouse=True)
def task_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test generates into its own cache directory, never the user's."""
    monkeypatch.setenv("MDM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --------------------------------------------------------------------------------------------
# An independent Sudoku checker: plain row-major backtracking over sets, no bitmasks, no heuristic
# --------------------------------------------------------------------------------------------


def naive_solutions(cells: list[int], limit: int = 2) -> int:
    grid = list(cells)

    def allowed(i: int) -> set[int]:
        r, c = divmod(i, 9)
        br, bc = r // 3 * 3, c // 3 * 3
        used = {grid[r * 9 + k] for k in range(9)} | {grid[k * 9 + c] for k in range(9)}
        used |= {grid[(br + a) * 9 + bc + b] for a in range(3) for b in range(3)}
        return set(range(1, 10)) - used

    def solve() -> int:
        if 0 not in grid:
            return 1
        i = grid.index(0)
        total = 0
        for d in sorted(allowed(i)):
            grid[i] = d
            total += solve()
            grid[i] = 0
            if total >= limit:
                break
        return total

    return min(solve(), limit)


def is_valid_grid(cells: list[int]) -> bool:
    rows = [cells[r * 9 : r * 9 + 9] for r in range(9)]
    cols = [cells[c::9] for c in range(9)]
    boxes = [[cells[(b // 3 * 3 + i // 3) * 9 + b % 3 * 3 + i % 3] for i in range(9)] for b in range(9)]
    return all(sorted(unit) == list(range(1, 10)) for unit in rows + cols + boxes)


def split_rows(bundle: DatasetBundle, split: str) -> np.ndarray:
    return np.asarray(bundle.splits[split]["input_ids"])


# --------------------------------------------------------------------------------------------
# Sudoku data
# --------------------------------------------------------------------------------------------


def test_sudoku_puzzles_have_one_solution_that_keeps_the_clues() -> None:
    bundle = SudokuSource(SMALL_SUDOKU).load(seed=0)
    assert bundle.seq_len == 162
    for split in ("train", "validation"):
        rows = split_rows(bundle, split)
        assert rows.shape[1] == 162
        assert set(bundle.splits[split]["prompt_len"]) == {81}
        for row in rows[:12].tolist():
            clues, solution = row[:81], row[81:]
            assert is_valid_grid(solution)
            assert all(c in (0, s) for c, s in zip(clues, solution, strict=True))
            assert naive_solutions(clues) == 1


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_sudoku_blank_count_follows_difficulty(difficulty: float) -> None:
    params = SudokuSource.Params(num_train=8, num_val=2, variants=2, difficulty=difficulty)
    rows = split_rows(SudokuSource(params).load(seed=0), "train")
    blanks = (rows[:, :81] == 0).sum(axis=1)
    budget = int(25 + 33 * difficulty)
    assert (blanks <= budget).all()
    if difficulty <= 0.5:  # always reachable: at most 41 blanks keep one solution easily
        assert (blanks == budget).all()
    else:
        assert blanks.mean() > 50


def test_sudoku_is_deterministic_by_seed_and_cached(task_cache: Path) -> None:
    first = SudokuSource(SMALL_SUDOKU).load(seed=0)
    assert len(list(cache_dir().glob("sudoku-*.npz"))) == 1
    cached = SudokuSource(SMALL_SUDOKU).load(seed=7)  # the training seed does not change the data
    other = SudokuSource(SMALL_SUDOKU.model_copy(update={"seed": 99})).load(seed=0)
    for split in ("train", "validation"):
        assert np.array_equal(split_rows(first, split), split_rows(cached, split))
        assert not np.array_equal(split_rows(first, split), split_rows(other, split))
    for path in cache_dir().glob("sudoku-*.npz"):
        path.unlink()
    regenerated = SudokuSource(SMALL_SUDOKU).load(seed=0)
    assert np.array_equal(split_rows(first, "train"), split_rows(regenerated, "train"))


def test_sudoku_train_and_validation_are_disjoint_and_distinct() -> None:
    bundle = SudokuSource(SMALL_SUDOKU).load(seed=0)
    train = {row.tobytes() for row in split_rows(bundle, "train")}
    val = {row.tobytes() for row in split_rows(bundle, "validation")}
    assert len(train) == SMALL_SUDOKU.num_train and len(val) == SMALL_SUDOKU.num_val
    assert not train & val


def test_sudoku_variants_share_a_base_puzzle_up_to_symmetry() -> None:
    rows = split_rows(SudokuSource(SMALL_SUDOKU).load(seed=0), "train")
    blanks = (rows[:, :81] == 0).sum(axis=1)
    # Consecutive groups of `variants` rows come from one base puzzle: same blank count, and the
    # multiset of digit frequencies among the clues is invariant under the symmetries.
    for group in range(0, len(rows), SMALL_SUDOKU.variants):
        block = rows[group : group + SMALL_SUDOKU.variants]
        assert len(set(blanks[group : group + SMALL_SUDOKU.variants])) == 1
        shapes = {tuple(sorted(Counter(r[:81][r[:81] > 0].tolist()).values())) for r in block}
        assert len(shapes) == 1


@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), blanks=st.integers(20, 60))
def test_solution_counter_agrees_with_the_naive_checker(seed: int, blanks: int) -> None:
    rng = random.Random(seed)
    cells = sudoku_gen.random_solution(rng)
    assert is_valid_grid(cells)
    for i in rng.sample(range(81), blanks):
        cells[i] = 0
    assert sudoku_gen.count_solutions(cells, 2) == naive_solutions(cells, 2)


@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1))
def test_symmetries_keep_validity_uniqueness_and_blanks(seed: int) -> None:
    clues, solutions = sudoku_gen.generate(1, 0.5, np.random.SeedSequence(seed))
    cell_map, digit_map = sudoku_gen.random_symmetries(1, np.random.default_rng(seed))
    new_clues = sudoku_gen.apply_symmetries(clues, cell_map, digit_map)[0].tolist()
    new_solution = sudoku_gen.apply_symmetries(solutions, cell_map, digit_map)[0].tolist()
    assert sorted(cell_map[0].tolist()) == list(range(81))
    assert is_valid_grid(new_solution)
    assert new_clues.count(0) == int((clues == 0).sum())
    assert all(c in (0, s) for c, s in zip(new_clues, new_solution, strict=True))
    assert naive_solutions(new_clues) == 1


def test_sudoku_tokenizer_round_trips_and_refuses_special_ids() -> None:
    tok = SudokuTokenizer()
    assert tok.vocab == Vocab(size=12, pad_id=10, mask_id=11)
    ids = [random.Random(0).randrange(10) for _ in range(162)]
    text = tok.decode(ids)
    assert len(text.splitlines()) == 19  # two grids of 9 rows and a blank line
    assert tok.encode(text) == ids
    assert tok.encode("12.4") == [1, 2, 0, 4]
    with pytest.raises(MdmError, match="PAD"):
        tok.decode([1, 10])


def test_sudoku_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="difficulty"):
        SudokuSource.Params(difficulty=1.5)
    with pytest.raises(ValidationError, match="variants"):
        SudokuSource.Params(variants=0)


def test_task_sources_conform() -> None:
    check_data_source(lambda: SudokuSource(SMALL_SUDOKU))
    check_data_source(lambda: StarGraphSource(SMALL_STAR))


def test_task_components_are_registered() -> None:
    registry = get_registry()
    assert registry.load("data", "sudoku") is SudokuSource
    assert registry.load("data", "star_graph") is StarGraphSource
    assert registry.load("evaluator", "sudoku_accuracy") is SudokuAccuracy
    assert registry.load("evaluator", "path_accuracy") is PathAccuracy
    # Evaluators are chosen by the spec alone: data sources no longer suggest them.
    assert not hasattr(SudokuSource, "evaluators") and not hasattr(StarGraphSource, "evaluators")


# --------------------------------------------------------------------------------------------
# Star graph data
# --------------------------------------------------------------------------------------------


def test_star_graph_structure() -> None:
    p = SMALL_STAR
    source = StarGraphSource(p)
    bundle = source.load(seed=0)
    n, arms, arm_len = p.num_nodes, p.degree, p.path_len - 1
    edge_sep, query, answer = n, n + 1, n + 2
    num_edges = arms * arm_len
    assert bundle.seq_len == 3 * num_edges + 4 + p.path_len
    first_edges = set()
    for row in split_rows(bundle, "train")[:50].tolist():
        edge_part, tail = row[: 3 * num_edges], row[3 * num_edges :]
        assert edge_part[2::3] == [edge_sep] * num_edges
        edges = list(zip(edge_part[0::3], edge_part[1::3], strict=True))
        first_edges.add(edges[0])
        assert tail[0] == query and tail[3] == answer
        src, goal, path = tail[1], tail[2], tail[4:]
        children: dict[int, list[int]] = {}
        for u, v in edges:
            children.setdefault(u, []).append(v)
        nodes = {x for e in edges for x in e}
        assert len(nodes) == 1 + num_edges and max(nodes) < n  # distinct labels, a tree
        assert len(children[src]) == arms
        assert all(len(children.get(v, [])) <= 1 for v in nodes - {src})
        # each arm from the source is a chain of path_len - 1 nodes ending in a leaf
        for head in children[src]:
            chain = [head]
            while chain[-1] in children:
                chain.append(children[chain[-1]][0])
            assert len(chain) == arm_len
        assert path[0] == src and path[-1] == goal and len(path) == p.path_len
        assert all((u, v) in set(edges) for u, v in zip(path, path[1:], strict=False))
        assert goal not in children
    assert len(first_edges) > 10  # the edge list is shuffled


def test_star_graph_is_deterministic_and_disjoint() -> None:
    a, b = StarGraphSource(SMALL_STAR).load(0), StarGraphSource(SMALL_STAR).load(3)
    for split in ("train", "validation"):
        assert np.array_equal(split_rows(a, split), split_rows(b, split))
    train = {r.tobytes() for r in split_rows(a, "train")}
    val = {r.tobytes() for r in split_rows(a, "validation")}
    assert len(train) == SMALL_STAR.num_train and len(val) == SMALL_STAR.num_val and not train & val
    text = a.tokenizer.decode(split_rows(a, "validation")[0].tolist())
    assert " / " in text and " = " in text


def test_star_graph_rejects_too_few_labels() -> None:
    with pytest.raises(ValidationError, match="num_nodes"):
        StarGraphSource.Params(num_nodes=10, degree=3, path_len=5)


def test_star_graph_reports_an_exhausted_graph_space() -> None:
    # Two labels, one arm of one node: only two distinct graphs exist.
    params = StarGraphSource.Params(num_nodes=2, degree=1, path_len=2, num_train=3, num_val=1)
    with pytest.raises(MdmError, match="distinct graphs"):
        StarGraphSource(params).load(0)


# --------------------------------------------------------------------------------------------
# Metrics on token tensors
# --------------------------------------------------------------------------------------------


def test_sudoku_scores_count_blanks_and_accept_alternative_solutions() -> None:
    rows = torch.as_tensor(split_rows(SudokuSource(SMALL_SUDOKU).load(0), "validation"))
    clues, solution = rows[:, :81], rows[:, 81:]
    perfect = sudoku_scores(clues, solution, solution)
    assert torch.equal(perfect["blank_correct"], perfect["blanks"]) and bool(perfect["solved"].all())

    # A wrong digit in one blank cell: one cell fewer, and no longer a valid grid.
    wrong = solution.clone()
    first_blank = (clues == 0).int().argmax(dim=1)
    rows_idx = torch.arange(len(rows))
    wrong[rows_idx, first_blank] = wrong[rows_idx, first_blank] % 9 + 1
    scores = sudoku_scores(clues, solution, wrong)
    assert torch.equal(scores["blank_correct"], perfect["blanks"] - 1) and not scores["solved"].any()

    # A valid grid that is not the reference: solved iff it keeps the clues.
    empty = torch.zeros_like(clues)
    relabelled = torch.where(solution == 1, 2, torch.where(solution == 2, 1, solution))
    other = sudoku_scores(empty, solution, relabelled)
    assert bool(other["solved"].all()) and bool((other["blank_correct"] < 81).all())
    assert not sudoku_scores(clues, solution, relabelled)["solved"].any()

    # Digit 0 (a blank) in the answer is never a solution.
    assert not sudoku_scores(clues, solution, torch.zeros_like(solution))["solved"].any()


def test_path_scores() -> None:
    targets = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    predicted = torch.tensor([[1, 2, 3, 4], [5, 0, 7, 0]])
    scores = path_scores(targets, predicted)
    assert scores["correct"].tolist() == [4, 2] and scores["nodes"].tolist() == [4, 4]
    assert scores["exact"].tolist() == [True, False]


# --------------------------------------------------------------------------------------------
# Evaluators end to end: the real confidence sampler on a model that looks the answer up
# --------------------------------------------------------------------------------------------


class AnswerLookup(Backbone):
    """Predicts each row's stored answer (found by its prompt), optionally with one cell changed.

    ``corrupt`` names a response offset whose digit is replaced by ``(answer % 9) + 1``.
    """

    name = "answer_lookup"

    def __init__(self, rows: Tensor, prompt_len: int, vocab: Vocab, corrupt: Tensor | None = None) -> None:
        super().__init__(None, RunShape(vocab=vocab, seq_len=rows.shape[1]))
        self.rows = rows
        self.prompt_len = prompt_len
        self.corrupt = corrupt

    def forward(
        self,
        input_ids: Tensor,
        time_cond: Tensor | None = None,
        layout: AttentionLayout | None = None,
        position_ids: Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> Tensor:
        p = self.prompt_len
        match = (input_ids[:, None, :p] == self.rows[None, :, :p]).all(dim=-1)
        answer = self.rows[match.int().argmax(dim=1)].clone()
        if self.corrupt is not None:
            index = torch.arange(len(answer))
            cells = p + self.corrupt[match.int().argmax(dim=1)]
            answer[index, cells] = answer[index, cells] % 9 + 1
        return 20.0 * torch.nn.functional.one_hot(answer, self.vocab.size).float()


def eval_context(bundle: DatasetBundle, model: Backbone) -> EvalContext:
    vocab = bundle.tokenizer.vocab
    shape = RunShape(vocab=vocab, seq_len=bundle.seq_len, batch_size=8)
    return EvalContext(
        model=model,
        vocab=vocab,
        dataset=bundle.splits["validation"],
        forward_process=AbsorbingProcess(None, shape),
        sampler=ConfidenceSampler(ConfidenceSampler.Params(steps=8), shape),
        tokenizer=bundle.tokenizer,
        device=torch.device("cpu"),
        batch_size=5,
        seed=0,
    )


def test_sudoku_accuracy_on_perfect_and_corrupted_models() -> None:
    bundle = SudokuSource(SMALL_SUDOKU).load(0)
    rows = torch.as_tensor(split_rows(bundle, "validation"))
    vocab = bundle.tokenizer.vocab
    perfect = SudokuAccuracy().evaluate(eval_context(bundle, AnswerLookup(rows, 81, vocab)))
    assert perfect == {"cell_acc": 1.0, "puzzle_acc": 1.0}

    first_blank = (rows[:, :81] == 0).int().argmax(dim=1)
    model = AnswerLookup(rows, 81, vocab, corrupt=first_blank)
    limited = SudokuAccuracy(SudokuAccuracy.Params(max_puzzles=7))
    metrics = limited.evaluate(eval_context(bundle, model))
    blanks = (rows[:7, :81] == 0).sum()
    assert metrics["puzzle_acc"] == 0.0
    assert metrics["cell_acc"] == pytest.approx(float((blanks - 7) / blanks))


def test_path_accuracy_on_perfect_and_corrupted_models() -> None:
    bundle = StarGraphSource(SMALL_STAR).load(0)
    rows = torch.as_tensor(split_rows(bundle, "validation"))
    vocab, prompt_len = bundle.tokenizer.vocab, int(bundle.splits["validation"][0]["prompt_len"])
    perfect = PathAccuracy().evaluate(eval_context(bundle, AnswerLookup(rows, prompt_len, vocab)))
    assert perfect == {"path_exact": 1.0, "path_token_acc": 1.0}

    # One wrong node per path: the second node of even rows, the source of odd rows.
    offsets = torch.zeros(len(rows), dtype=torch.long)
    offsets[::2] = 1
    bad = AnswerLookup(rows, prompt_len, vocab, corrupt=offsets)
    metrics = PathAccuracy().evaluate(eval_context(bundle, bad))
    assert metrics["path_exact"] == 0.0
    assert metrics["path_token_acc"] == pytest.approx(1 - 1 / SMALL_STAR.path_len)


def test_sudoku_accuracy_refuses_other_data() -> None:
    bundle = StarGraphSource(SMALL_STAR).load(0)
    rows = torch.as_tensor(split_rows(bundle, "validation"))
    ctx = eval_context(bundle, AnswerLookup(rows, 1, bundle.tokenizer.vocab))
    with pytest.raises(MdmError, match="sudoku"):
        SudokuAccuracy().evaluate(ctx)
