"""B4: the cached ancestral sampler against the uncached one (and the confidence sampler).

With a backbone that takes no time conditioning the denoiser depends on the state alone, so the
cached ancestral sampler calls it only when some token was revealed: its NFE equals the number of
distinct states the trajectory passes through, at most L + 1 per sequence (at most N·L + 1 for a
batch of N, since any sequence changing changes the batch's state), however fine the t grid. The
uncached sampler (``cache: false``) calls it at every one of the T grid steps. Both draw the same
uniforms from the same generator and see the same probabilities, so they must return identical
tokens; this script checks that and stops if it fails.

Distinct states are counted independently of the sampler: a forward hook records every input the
uncached run gives the model. Wall times are medians over interleaved repeats. The confidence
sampler (L steps, one token per sequence per step) is there for reference. The block sampler's
exact KV cache against recomputation is measured by ``bench_block_sampler.py``.

    python benchmarks/bench_sampling.py --run runs/quickstart-...    # a trained run
    python benchmarks/bench_sampling.py                              # a fresh quick-start DiT
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mdm_core.assembly import assemble, load_run
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler
from mdm_core.errors import MdmError
from mdm_core.interfaces import Backbone, SampleOutput, Sampler, SamplingContext
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "specs" / "quickstart.yaml"
QUICK_OVERRIDES = [
    "data.num_train=64",
    "data.num_val=16",
    "data.seq_len=8",
    "backbone={name: dit, dim: 32, layers: 1, heads: 2}",
]
NOT_MEASURED = "block sampler, exact KV cache against recomputation: see benchmarks/bench_block_sampler.py"


def load_model(args: argparse.Namespace) -> tuple[Backbone, SamplingContext, int, str]:
    """(model, sampling context, sequence length, a line saying which model it is)."""
    if args.run:
        loaded = load_run(args.run)
        spec, parts, device = loaded.spec, loaded.parts, loaded.device
        where = f"trained run {args.run} ({spec.run.name}, backbone {spec.components['backbone'].name})"
    else:
        spec = load_spec(args.spec, args.overrides)
        parts = assemble(spec)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        parts.model.to(device)
        where = f"freshly initialised backbone of {args.spec.name} (untrained)"
    ctx = SamplingContext.of(parts.forward_process, device)
    return parts.model, ctx, parts.shape.seq_len, where


def distinct_inputs(model: nn.Module, run: Any) -> int:
    """Run ``run()`` and count the distinct inputs the model was called with."""
    seen: set[bytes] = set()

    def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        seen.add(inputs[0].detach().cpu().numpy().tobytes())

    handle = model.register_forward_pre_hook(record)
    try:
        run()
    finally:
        handle.remove()
    return len(seen)


def timed(
    sampler: Sampler, model: Backbone, ctx: SamplingContext, n: int, length: int, seed: int
) -> tuple[SampleOutput, float]:
    generator = _gen(seed)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    start = time.perf_counter()
    out = sampler.generate(model, ctx, n, length, generator)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    return out, time.perf_counter() - start


def measure(
    model: Backbone, ctx: SamplingContext, length: int, n: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Rows for one batch size: cached and uncached ancestral, confidence; asserts the laws."""
    samplers: dict[str, Sampler] = {
        "ancestral, cached": AncestralSampler(AncestralSampler.Params(steps=args.steps)),
        "ancestral, uncached": AncestralSampler(AncestralSampler.Params(steps=args.steps, cache=False)),
        f"confidence ({length} steps)": ConfidenceSampler(ConfidenceSampler.Params(steps=length)),
    }
    uncached = samplers["ancestral, uncached"]
    states = distinct_inputs(model, lambda: uncached.generate(model, ctx, n, length, _gen(args.seed)))
    outputs: dict[str, SampleOutput] = {}
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    for r in range(args.repeats):
        names = list(samplers) if r % 2 == 0 else list(reversed(samplers))
        for name in names:
            outputs[name], dt = timed(samplers[name], model, ctx, n, length, args.seed)
            seconds[name].append(dt)
    cached, plain = outputs["ancestral, cached"], outputs["ancestral, uncached"]
    identical = torch.equal(cached.tokens, plain.tokens)
    if not identical:
        raise MdmError("cached and uncached ancestral samples differ for the same generator")
    bound = min(args.steps + 1, n * length + 1)
    # With time conditioning every grid step needs a call, whether or not the state changed.
    if not model.uses_time and not cached.nfe <= states <= bound:
        raise MdmError(f"law broken: NFE {cached.nfe} ≤ distinct states {states} ≤ {bound} does not hold")
    reference = statistics.median(seconds["ancestral, uncached"])
    rows = []
    for name, out in outputs.items():
        wall = statistics.median(seconds[name])
        rows.append(
            {
                "num_samples": n,
                "sampler": name,
                "nfe": out.nfe,
                "distinct_states": states if name.startswith("ancestral") else None,
                "state_bound": bound if name.startswith("ancestral") else None,
                "wall_s": wall,
                "speedup_vs_uncached": reference / wall,
                "same_tokens_as_uncached": identical if name.startswith("ancestral") else None,
            }
        )
    return rows


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--run", type=Path, help="a trained run directory (default: a fresh quick-start DiT)")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="spec of the fresh model (without --run)")
    p.add_argument("--override", dest="overrides", action="append", default=[], help="spec key=value")
    p.add_argument("--steps", type=int, default=1000, help="T, the ancestral grid steps")
    p.add_argument("--num-samples", type=int, nargs="+", default=[1, 8], help="batch sizes N")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per sampler")
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
    rows = [row for n in args.num_samples for row in measure(model, ctx, length, n, args)]
    result: dict[str, Any] = {
        "benchmark": "B4 sampling",
        "model": where,
        "uses_time": bool(model.uses_time),
        "length": length,
        "steps": args.steps,
        "device": str(ctx.device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "rows": rows,
        "not_measured": [NOT_MEASURED],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def report(r: dict[str, Any]) -> None:
    print(
        f"B4 on {r['device']} ({r['threads']} threads): {r['model']}; L = {r['length']}, T = {r['steps']}, "
        f"time conditioning {'on' if r['uses_time'] else 'off'}, median of {r['repeats']}"
    )
    print("| N | sampler | NFE | distinct states (bound) | wall s | speed-up vs uncached | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        states = (
            "—" if row["distinct_states"] is None else f"{row['distinct_states']} (≤ {row['state_bound']})"
        )
        same = {None: "—", True: "yes", False: "NO"}[row["same_tokens_as_uncached"]]
        print(
            f"| {row['num_samples']} | {row['sampler']} | {row['nfe']} | {states} | {row['wall_s']:.3f} | "
            f"{row['speedup_vs_uncached']:.1f}× | {same} |"
        )
    for line in r["not_measured"]:
        print(line)


if __name__ == "__main__":
    try:
        main()
    except MdmError as exc:
        sys.exit(f"error: {exc}")
