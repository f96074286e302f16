"""B4 (blockwise): the block sampler with its exact KV cache against recomputing every block.

With the cache, each finished block costs one clean forward that appends its keys/values, and
every call inside the next block attends to the cached prefix plus that block alone; without it,
every call runs the whole prefix again. Both draw the same uniforms from the same generator, so
they must return identical tokens and NFE: the script checks that and stops if it fails. Wall
times are interleaved repeats; the speed-up is the ratio of medians with a bootstrap interval
over the repeats (percentile, seeded). Tokens/s counts generated tokens (samples × L).

    python benchmarks/bench_block_sampler.py --run runs/blockwise-markov-s0/<bd3 run>
    python benchmarks/bench_block_sampler.py --quick                  # a fresh tiny BD3 DiT
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mdm_core.assembly import assemble, load_run
from mdm_core.errors import MdmError
from mdm_core.interfaces import Backbone, SamplingContext
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "specs" / "blockwise-markov.yaml"
QUICK_OVERRIDES = [
    "data.num_train=64",
    "data.num_val=16",
    "data.seq_len=16",
    "forward_process={name: bd3, block_size: 4}",
    "backbone={name: dit, dim: 32, layers: 1, heads: 2}",
]


def load_model(args: argparse.Namespace) -> tuple[Backbone, SamplingContext, int, str]:
    """(model, sampling context, sequence length, a line saying which model it is)."""
    if args.run:
        loaded = load_run(args.run)
        spec, parts = loaded.spec, loaded.parts
        where = f"trained run {args.run} ({spec.run.name}, step {loaded.step})"
    else:
        spec = load_spec(args.spec, args.overrides)
        parts = assemble(spec)
        where = f"freshly initialised backbone of {args.spec.name} (untrained)"
    ctx = SamplingContext.of(parts.forward_process, next(parts.model.parameters()).device)
    block = ctx.inference.block_size
    fp = spec.components["forward_process"].name
    return parts.model, ctx, parts.shape.seq_len, f"{where}, forward process {fp}, L' = {block}"


def ratio_interval(num: list[float], den: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile bootstrap interval of median(num) / median(den), resampling each side."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(num, k=len(num))) / statistics.median(rng.choices(den, k=len(den)))
        for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[min(resamples - 1, int(0.975 * resamples))]


def measure(
    model: Backbone, ctx: SamplingContext, length: int, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One batch size: cached and uncached block sampling, interleaved; asserts identical output."""
    cls = get_registry().load("sampler", "block", where="bench_block_sampler")
    common = {"steps": args.steps, "first_hitting": args.first_hitting}
    samplers = {cache: cls(cls.Params(**common, cache=cache)) for cache in (True, False)}
    seconds: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for r in range(args.repeats):
        for cache in (True, False) if r % 2 == 0 else (False, True):
            generator = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            outputs[cache] = samplers[cache].generate(model, ctx, n, length, generator)
            seconds[cache].append(time.perf_counter() - start)
    if (
        not torch.equal(outputs[True].tokens, outputs[False].tokens)
        or outputs[True].nfe != outputs[False].nfe
    ):
        raise MdmError("block sampler: cached and uncached samples differ for the same generator")
    cached, plain = statistics.median(seconds[True]), statistics.median(seconds[False])
    low, high = ratio_interval(seconds[False], seconds[True], args.resamples, args.seed)
    return {
        "num_samples": n,
        "nfe": outputs[True].nfe,
        "cached_s": cached,
        "uncached_s": plain,
        "cached_tok_per_s": n * length / cached,
        "uncached_tok_per_s": n * length / plain,
        "speedup": plain / cached,
        "speedup_ci95": [low, high],
        "same_tokens": True,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--run", type=Path, help="a trained bd3/ar run directory (default: a fresh model)")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="spec of the fresh model (without --run)")
    p.add_argument("--override", dest="overrides", action="append", default=[], help="spec key=value")
    p.add_argument("--steps", type=int, default=16, help="ancestral grid steps per block")
    p.add_argument("--first-hitting", action="store_true", help="one position per call instead")
    p.add_argument("--num-samples", type=int, nargs="+", default=[1, 16], help="batch sizes N")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per side")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny model and corpus (smoke test)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.overrides = [*QUICK_OVERRIDES, *args.overrides]
    if args.steps < 1 or args.repeats < 1 or min(args.num_samples) < 1:
        p.error("--steps, --repeats and --num-samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, ctx, length, where = load_model(args)
    result: dict[str, Any] = {
        "benchmark": "B4 block sampler",
        "model": where,
        "length": length,
        "steps": args.steps,
        "first_hitting": args.first_hitting,
        "device": str(ctx.device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rows": [measure(model, ctx, length, n, args) for n in args.num_samples],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def report(r: dict[str, Any]) -> None:
    mode = "first-hitting" if r["first_hitting"] else f"{r['steps']} ancestral steps per block"
    head = f"B4 block sampler on {r['device']} ({r['threads']} threads): {r['model']}"
    print(f"{head}; L = {r['length']}, {mode}, median of {r['repeats']}")
    print("| N | NFE | cached s (tok/s) | uncached s (tok/s) | speed-up [95% CI] | same tokens |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        low, high = row["speedup_ci95"]
        cached = f"{row['cached_s']:.3f} ({row['cached_tok_per_s']:.0f})"
        uncached = f"{row['uncached_s']:.3f} ({row['uncached_tok_per_s']:.0f})"
        ratio = f"{row['speedup']:.2f}× [{low:.2f}, {high:.2f}]"
        print(f"| {row['num_samples']} | {row['nfe']} | {cached} | {uncached} | {ratio} | yes |")


if __name__ == "__main__":
    try:
        main()
    except MdmError as exc:
        sys.exit(f"error: {exc}")
