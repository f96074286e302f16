"""Sudoku puzzles with a unique solution: backtracking fill, uniqueness-preserving blanking, and
validity-preserving symmetries.

Grids are 81 cells in row-major order, digits 1..9, 0 for a blank. The solution counter is a
bitmask backtracking search that always branches on the most constrained cell and stops as soon
as it has found ``limit`` solutions; uniqueness needs only ``limit = 2``.

Blanking is the costly part (one search per accepted blank), so large training sets are made of
*variants*: every symmetry of the Sudoku rules (digit relabelling, row permutations inside a
band, band permutations, the same for columns and stacks, transposition) maps a puzzle with a
unique solution to another puzzle with a unique solution and the same number of blanks.
"""

from __future__ import annotations

import random

import numpy as np

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_POP = [bin(m).count("1") for m in range(512)]
_DIGITS = [[d for d in range(9) if m >> d & 1] for m in range(512)]
_PEERS = [
    [j for j in range(81) if j != i and (_ROW[i] == _ROW[j] or _COL[i] == _COL[j] or _BOX[i] == _BOX[j])]
    for i in range(81)
]
_ALL = 511


def max_blanks(difficulty: float) -> int:
    """The blank budget ``⌊25 + 33·difficulty⌋`` (25 at difficulty 0, 58 at difficulty 1)."""
    return int(25 + 33 * difficulty)


def count_solutions(cells: list[int], limit: int = 2) -> int:
    """Number of solutions of ``cells`` (0 = blank), counting stops at ``limit``."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    empty: list[int] = []
    for i, v in enumerate(cells):
        if v:
            bit = 1 << (v - 1)
            if (rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & bit:
                return 0
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
        else:
            empty.append(i)
    found = 0

    def search(n: int) -> bool:
        """Fill the first ``n`` entries of ``empty``; True once ``limit`` solutions were found."""
        nonlocal found
        if n == 0:
            found += 1
            return found >= limit
        best, best_count, best_free = 0, 10, 0
        for k in range(n):
            i = empty[k]
            free = ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & _ALL
            c = _POP[free]
            if c < best_count:
                best, best_count, best_free = k, c, free
                if c <= 1:
                    break
        if best_count == 0:
            return False
        # Move the chosen cell out of the active prefix; the order of ``empty`` is irrelevant.
        cell = empty[best]
        empty[best], empty[n - 1] = empty[n - 1], cell
        r, c_, b = _ROW[cell], _COL[cell], _BOX[cell]
        for d in _DIGITS[best_free]:
            bit = 1 << d
            rows[r] |= bit
            cols[c_] |= bit
            boxes[b] |= bit
            done = search(n - 1)
            rows[r] ^= bit
            cols[c_] ^= bit
            boxes[b] ^= bit
            if done:
                return True
        return False

    search(len(empty))
    return found


def random_solution(rng: random.Random) -> list[int]:
    """A complete valid grid by randomised backtracking (cells in order, digits shuffled)."""
    cells = [0] * 81
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9

    def fill(i: int) -> bool:
        if i == 81:
            return True
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        digits = list(_DIGITS[~(rows[r] | cols[c] | boxes[b]) & _ALL])
        rng.shuffle(digits)
        for d in digits:
            bit = 1 << d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            cells[i] = d + 1
            if fill(i + 1):
                return True
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
        cells[i] = 0
        return False

    fill(0)
    return cells


def make_puzzle(rng: random.Random, blanks: int) -> tuple[list[int], list[int]]:
    """``(clues, solution)``: cells are blanked in random order while the solution stays unique.

    A cell whose peers already rule out every other digit is blanked without a search: any
    solution of the new puzzle must put the old digit back, so it still has one solution.
    """
    solution = random_solution(rng)
    clues = list(solution)
    order = list(range(81))
    rng.shuffle(order)
    done = 0
    for i in order:
        if done >= blanks:
            break
        digit = clues[i]
        clues[i] = 0
        seen = 0
        for j in _PEERS[i]:
            if clues[j]:
                seen |= 1 << (clues[j] - 1)
        if _POP[~seen & _ALL] == 1 or count_solutions(clues, 2) == 1:
            done += 1
        else:
            clues[i] = digit
    return clues, solution


def generate(num: int, difficulty: float, seeds: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """``num`` independent puzzles ``(clues, solutions)`` as ``[num, 81]`` int64 arrays.

    Puzzle i depends only on the i-th child of ``seeds``, so a longer run extends a shorter one.
    """
    blanks = max_blanks(difficulty)
    clues = np.zeros((num, 81), dtype=np.int64)
    solutions = np.zeros((num, 81), dtype=np.int64)
    for i, child in enumerate(seeds.spawn(num)):
        rng = random.Random(int(child.generate_state(1, np.uint64)[0]))
        clues[i], solutions[i] = make_puzzle(rng, blanks)
    return clues, solutions


def random_symmetries(num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``num`` random rule symmetries as (cell map ``[num, 81]``, digit map ``[num, 10]``).

    Cell k of the transformed grid is cell ``cell_map[k]`` of the original; digit d becomes
    ``digit_map[d]`` (0, the blank, stays 0).
    """

    def lines() -> np.ndarray:
        # A permutation of the 9 rows (or columns): permute the bands, then rows within each.
        bands = np.argsort(rng.random((num, 3)), axis=1)
        within = np.argsort(rng.random((num, 3, 3)), axis=2)
        return (bands[:, :, None] * 3 + within).reshape(num, 9)

    rows, cols = lines(), lines()
    cell_map = rows[:, :, None] * 9 + cols[:, None, :]
    transpose = rng.random(num) < 0.5
    cell_map[transpose] = cell_map[transpose].transpose(0, 2, 1)
    digit_map = np.zeros((num, 10), dtype=np.int64)
    digit_map[:, 1:] = np.argsort(rng.random((num, 9)), axis=1) + 1
    return cell_map.reshape(num, 81), digit_map


def apply_symmetries(grids: np.ndarray, cell_map: np.ndarray, digit_map: np.ndarray) -> np.ndarray:
    """Transform each row of ``grids`` ``[num, 81]`` by its own symmetry."""
    moved = np.take_along_axis(grids, cell_map, axis=1)
    return np.take_along_axis(digit_map, moved, axis=1)
