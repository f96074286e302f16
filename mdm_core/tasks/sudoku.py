"""Sudoku as a prompted generation task: 81 clue cells (the prompt) then the 81 solution cells.

Token ids are the digits themselves: 1..9 for a filled cell and 0 for a blank (which only ever
appears in the prompt), so the vocabulary is 10 regular ids plus PAD and MASK.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from mdm_core.data.loader import rows_dataset
from mdm_core.errors import MdmError
from mdm_core.interfaces import (
    DatasetBundle,
    DataSource,
    EvalContext,
    Evaluator,
    EvaluatorParams,
    Params,
    Tokenizer,
)
from mdm_core.tasks import sudoku_gen
from mdm_core.tasks.cache import cached_arrays
from mdm_core.tasks.decoding import Totals, decode_responses

CELLS = 81
SEQ_LEN = 2 * CELLS
#: Bump when generation changes, so cached puzzles of an older generator are not reused.
GENERATOR_VERSION = 1

#: Cell indices of the 27 units (rows, columns, boxes) that must each hold 1..9 once.
UNITS = torch.tensor(
    [[r * 9 + c for c in range(9)] for r in range(9)]
    + [[r * 9 + c for r in range(9)] for c in range(9)]
    + [[(b // 3 * 3 + i // 3) * 9 + b % 3 * 3 + i % 3 for i in range(9)] for b in range(9)]
)


class SudokuTokenizer(Tokenizer):
    """Digits 0..9 (0 = blank); text shows each 81-cell grid as 9 rows with ``.`` for blanks.

    ``encode`` reads digits and ``.`` and skips everything else (spaces, newlines), so it accepts
    what ``decode`` writes as well as a plain 81-character string.
    """

    @property
    def num_regular(self) -> int:
        return 10

    def encode(self, text: str) -> list[int]:
        return [0 if c == "." else int(c) for c in text if c == "." or c.isdigit()]

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 0 <= i < 10]
        if bad:
            raise MdmError(
                f"SudokuTokenizer cannot decode id {bad[0]}: cells are ids 0..9 "
                "(PAD = 10 and MASK = 11 are not cells; strip them before decoding)"
            )
        chars = ["." if i == 0 else str(i) for i in ids]
        rows = [
            " ".join("".join(chars[r + k : r + k + 3]) for k in range(0, 9, 3)).strip()
            for r in range(0, len(chars), 9)
        ]
        grids = ["\n".join(rows[g : g + 9]) for g in range(0, len(rows), 9)]
        return "\n\n".join(grids)

    def to_json(self) -> dict[str, Any]:
        return {"type": "sudoku"}


def sudoku_scores(clues: Tensor, solutions: Tensor, predicted: Tensor) -> dict[str, Tensor]:
    """Per-puzzle scores of ``predicted`` solution grids ``[N, 81]``.

    ``blank_correct``/``blanks``: blank cells of the clues where the prediction equals the
    reference solution; ``solved``: the prediction is a valid Sudoku (every row, column and box
    holds 1..9 once) that keeps every clue, so a valid alternative solution also counts.
    """
    blank = clues == 0
    units = predicted[:, UNITS.to(predicted.device)].sort(dim=-1).values
    digits = torch.arange(1, 10, device=predicted.device)
    valid = (units == digits).all(dim=-1).all(dim=-1)
    keeps_clues = (blank | (predicted == clues)).all(dim=-1)
    return {
        "blank_correct": (blank & (predicted == solutions)).sum(dim=-1),
        "blanks": blank.sum(dim=-1),
        "solved": valid & keeps_clues,
    }


class SudokuSource(DataSource):
    """Seeded Sudoku puzzles with unique solutions; prompt = the 81 clues, response = the solution.

    Generation: a random full grid by backtracking, then cells blanked in random order while
    the solution stays unique, up to ``⌊25 + 33·difficulty⌋`` blanks. Each generated training
    puzzle yields ``variants`` puzzles under random symmetries of the rules (digit relabelling,
    row/column permutations within bands/stacks, band/stack permutations, transposition), which
    keep the solution unique and the blank count. Validation puzzles come from their own base
    puzzles (never a variant of a training puzzle) and no validation row equals a training row.
    The data depends on the parameters only (not on the training seed) and is cached on disk.
    """

    name: ClassVar[str] = "sudoku"

    class Params(Params):
        num_train: int = Field(default=20000, ge=1, description="training puzzles")
        num_val: int = Field(default=256, ge=1, description="validation puzzles")
        difficulty: float = Field(
            default=0.5, ge=0.0, le=1.0, description="blank budget ⌊25 + 33·difficulty⌋ (0 → 25, 1 → 58)"
        )
        variants: int = Field(
            default=10, ge=1, description="training puzzles per generated puzzle (1 = no symmetry variants)"
        )
        seed: int = Field(default=1234, description="data seed (independent of the training seed)")

    params: Params

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self.tokenizer = SudokuTokenizer()

    def load(self, seed: int) -> DatasetBundle:
        """Read or generate both splits; ``seed`` (the training seed) is deliberately unused."""
        del seed
        p = self.params
        key = {"version": GENERATOR_VERSION, **p.model_dump()}
        arrays = cached_arrays("sudoku", key, self._generate)
        splits = {
            split: rows_dataset(rows, np.full(len(rows), CELLS))
            for split, rows in (("train", arrays["train"]), ("validation", arrays["validation"]))
        }
        blanks = (arrays["train"][:, :CELLS] == 0).sum(axis=1)
        info = {
            "task": "sudoku",
            "max_blanks": sudoku_gen.max_blanks(p.difficulty),
            "mean_blanks": float(blanks.mean()),
        }
        return DatasetBundle(splits=splits, tokenizer=self.tokenizer, seq_len=SEQ_LEN, info=info)

    def _generate(self) -> dict[str, np.ndarray]:
        p = self.params
        root = np.random.SeedSequence(p.seed)
        train_seeds, val_seeds, symmetry_seed = root.spawn(3)
        symmetries = np.random.default_rng(symmetry_seed)
        bases = math.ceil(p.num_train / p.variants)
        clues, solutions = sudoku_gen.generate(bases, p.difficulty, train_seeds)
        repeat = p.variants
        train = _variants(np.repeat(clues, repeat, axis=0), np.repeat(solutions, repeat, axis=0), symmetries)
        train = _first_unique(train, p.num_train, set())
        if len(train) < p.num_train:
            raise MdmError(
                f"sudoku: only {len(train)} distinct training puzzles for num_train={p.num_train}; "
                "lower variants (more distinct base puzzles) or num_train"
            )
        seen = {row.tobytes() for row in train}
        val = np.zeros((0, SEQ_LEN), dtype=np.int64)
        # Validation draws fresh base puzzles until it has num_val rows unseen in training.
        for batch_seeds in _seed_batches(val_seeds):
            clues, solutions = sudoku_gen.generate(p.num_val, p.difficulty, batch_seeds)
            fresh = _first_unique(_variants(clues, solutions, symmetries), p.num_val - len(val), seen)
            val = np.concatenate([val, fresh])
            if len(val) == p.num_val:
                break
        return {"train": train, "validation": val}


def _variants(clues: np.ndarray, solutions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each puzzle under its own random symmetry, as ``[N, 162]`` rows (clues ⊕ solution)."""
    cell_map, digit_map = sudoku_gen.random_symmetries(len(clues), rng)
    return np.concatenate(
        [
            sudoku_gen.apply_symmetries(clues, cell_map, digit_map),
            sudoku_gen.apply_symmetries(solutions, cell_map, digit_map),
        ],
        axis=1,
    )


def _first_unique(rows: np.ndarray, limit: int, seen: set[bytes]) -> np.ndarray:
    """Up to ``limit`` rows in order, skipping rows already in ``seen`` or repeated."""
    keep: list[int] = []
    local = set(seen)
    for i, row in enumerate(rows):
        if len(keep) == limit:
            break
        key = row.tobytes()
        if key not in local:
            local.add(key)
            keep.append(i)
    return rows[keep]


def _seed_batches(seeds: np.random.SeedSequence) -> Iterator[np.random.SeedSequence]:
    """An endless stream of independent seed sequences."""
    while True:
        yield seeds.spawn(1)[0]


class SudokuAccuracy(Evaluator):
    """Solve validation puzzles with the run's sampler: cell accuracy on blanks, puzzle accuracy.

    The sampler fills the 81 solution cells with the clues fixed as the prompt. ``cell_acc`` is
    the fraction of blank cells equal to the reference solution; ``puzzle_acc`` the fraction of
    puzzles whose generated grid is a valid Sudoku keeping every clue (a valid alternative
    solution counts as solved).
    """

    name: ClassVar[str] = "sudoku_accuracy"

    class Params(EvaluatorParams):
        every: int = Field(
            default=500, ge=0, description="evaluate every N optimiser steps; 0: only at the end"
        )
        max_puzzles: int = Field(default=256, ge=1, description="validation puzzles to solve")

    params: Params

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        if len(ctx.dataset[0]["input_ids"]) != SEQ_LEN:
            raise MdmError(
                f"sudoku_accuracy needs the sudoku data source (rows of {SEQ_LEN} ids: 81 clues + 81 cells)"
            )
        totals = Totals(("blank_correct", "blanks", "solved", "puzzles"), ctx.device)
        for batch, tokens in decode_responses(ctx, self.params.max_puzzles):
            ids = batch.input_ids
            scores = sudoku_scores(ids[:, :CELLS], ids[:, CELLS:], tokens[:, CELLS:])
            totals.add(**scores, puzzles=torch.ones_like(scores["blanks"]))
        sums = totals.compute()
        return {
            "cell_acc": sums["blank_correct"] / max(sums["blanks"], 1.0),
            "puzzle_acc": sums["solved"] / max(sums["puzzles"], 1.0),
        }
