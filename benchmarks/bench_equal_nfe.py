"""B1 (blockwise): sample quality at equal NFE — trained runs decoded at several budgets.

Every arm is decoded by the block sampler with cached ancestral updates (AR is L' = 1, MDLM one
block of L), at NFE budgets of L/4, L and 4L network calls: a run with L/L' blocks gets
``steps = budget·L'/L`` per block (at least 1). AR needs exactly L calls (first-hitting), so it
appears at the L budget only. The recorded NFE (``samples``/``gen_ppl`` report it) is the number
to pair arms by: cached updates skip calls where nothing changes. Judges: the Markov corpus's
exact chain (``sample_quality``: true NLL, impossible transitions), or on text a reference run's
likelihood (``gen_ppl``, e.g. the AR arm of the same ladder). Runs are read, never retrained
(``mdm eval --set`` does the same for one run and budget).

    python benchmarks/bench_equal_nfe.py runs/ladder-markov/*-s[012]
    python benchmarks/bench_equal_nfe.py runs/ladder-shakespeare/*-s? --judge runs/ladder-shakespeare/ar-s0
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mdm_core.assembly import load_run
from mdm_core.errors import MdmError
from mdm_core.evaluation import eval_context, evaluate


def arm_of(loaded: Any) -> str:
    """The arm a run belongs to: its forward process and block size (seeds pooled)."""
    fp = loaded.spec.components["forward_process"]
    size = getattr(fp.params, "block_size", None)
    return fp.name if size is None else f"{fp.name} L'={size}"


def budgets(block: int, factors: list[float]) -> list[tuple[float, str]]:
    """(budget factor, sampler override) for the block sampler at each NFE budget: L/L' blocks of
    ``factor·L'`` steps each make ``factor·L`` calls at most."""
    if block == 1:  # autoregressive: one call per token, whatever the budget
        return [(1.0, "sampler={name: block, first_hitting: true}")]
    return [
        (factor, f"sampler={{name: block, steps: {max(1, round(factor * block))}}}") for factor in factors
    ]


def measure(run: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of one run: its metrics at each budget."""
    if args.judge:
        judge = f"{{name: gen_ppl, every: 0, judge: {args.judge}, num_samples: {args.num_samples}}}"
    else:
        judge = f"{{name: sample_quality, every: 0, num_samples: {args.num_samples}}}"
    probe = load_run(run, "cpu")
    length = probe.parts.shape.seq_len
    block = probe.parts.forward_process.inference().block_size or length
    rows = []
    for factor, sampler in budgets(block, args.factors):
        loaded = load_run(run, "cpu", overrides=[sampler, f"evaluators=[{judge}]"])
        parts = loaded.parts
        ctx = eval_context(parts, parts.model, loaded.spec.run.trainer, loaded.device)
        metrics = evaluate(parts.evaluators, ctx, final=True)
        row = {"run": str(run), "arm": arm_of(loaded), "length": length, "budget": factor, "sampler": sampler}
        rows.append({**row, **metrics})
        print(f"{run}: budget {factor}·L {metrics}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, Any]], length: int) -> list[str]:
    """Markdown: arm × budget, mean ± std over seeds of every judged metric."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["arm"], row["budget"])].append(row)
    keys = sorted({k for row in rows for k in row if k.startswith("val/")})
    lines = [
        "| arm | NFE budget | seeds | " + " | ".join(k.removeprefix("val/") for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for (arm, factor), group in sorted(groups.items()):
        cells = []
        for key in keys:
            values = [row[key] for row in group if key in row]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4g} ± {spread:.2g}" if values else "—")
        lines.append(
            f"| {arm} | {factor:g}·L = {factor * length:g} | {len(group)} | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("runs", type=Path, nargs="+", help="trained run directories (seeds of each arm)")
    p.add_argument(
        "--judge", help="a reference run whose likelihood judges samples (default: the exact chain)"
    )
    p.add_argument("--factors", type=float, nargs="+", default=[0.25, 1.0, 4.0], help="NFE budgets / L")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for run in args.runs for row in measure(run, args)]
    length = rows[0]["length"]
    result = {
        "benchmark": "B1 blockwise sample quality at equal NFE",
        "judge": args.judge or "the data source's exact judge",
        "length": length,
        "rows": rows,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    print("\n".join(table(rows, length)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    try:
        main()
    except MdmError as exc:
        sys.exit(f"error: {exc}")
