"""B2: what the plug-in system costs per training step, against a bare hand-written PyTorch loop.

The ``mdm`` arm is ``Trainer.train_step()`` on parts built from a spec (the quick-start by default):
data stream, forward process, time sampler, loss component, clipping, AdamW, LR schedule,
forward-process feedback and EMA when the spec sets one. The bare arm is what one would write by
hand for the same job: the same backbone class and config (a separate instance with identical
initial weights), the same batch size, AdamW settings and clipping, with the masking and the MDLM
loss written inline in plain torch. Both arms run in one process, in interleaved blocks of
``--steps`` steps (the order alternates between repeats), so machine noise hits both alike; the
figure that matters is the median ratio of their times.

Peak memory of a step: on a GPU ``torch.cuda.max_memory_allocated`` above the memory held before
the step. On a CPU torch has no allocator statistics, so each arm runs a few steps in a fresh
subprocess and reports the growth of the process's peak RSS (Linux: the high-water mark is reset
through ``/proc/self/clear_refs`` just before the steps); that includes the optimiser state made on
the first step and whatever the C allocator keeps cached, for both arms alike.

    python benchmarks/bench_overhead.py --threads 1                 # quick-start, CPU
    python benchmarks/bench_overhead.py --device cuda --json b2.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mdm_core.data.loader import rows_tensor
from mdm_core.errors import MdmError
from mdm_core.spec import ResolvedSpec, load_spec
from mdm_core.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "specs" / "quickstart.yaml"
QUICK_OVERRIDES = [
    "data.num_train=256",
    "data.num_val=16",
    "data.seq_len=16",
    "backbone={name: dit, dim: 32, layers: 1, heads: 2}",
    "trainer.batch_size=8",
]
"""``--quick``: a model and corpus small enough for a smoke test (seconds, not minutes)."""


class BareLoop:
    """The hand-written loop: absorbing masking, log-linear schedule and MDLM loss, inline.

    Sequences come from a fixed permutation of the training rows; t is stratified uniform on
    [t_eps, 1] with one independent uniform per stratum (METHODS §1); a token is masked with
    probability (1 − mask_eps)·t; the loss is Σ_masked (1/t)·(−log softmax(logits with MASK
    and PAD at −inf))[target] over B·L tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        rows: Tensor,
        batch_size: int,
        mask_id: int,
        pad_id: int,
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
        autocast: Callable[[], AbstractContextManager[Any]],
        seed: int,
        t_eps: float,
        mask_eps: float,
    ) -> None:
        if bool((rows == pad_id).any()):
            raise MdmError("the bare loop assumes unpadded rows; pick a spec whose data has no PAD")
        self.model, self.rows, self.batch_size = model, rows, batch_size
        self.mask_id, self.pad_id = mask_id, pad_id
        self.optimizer, self.grad_clip, self.autocast = optimizer, grad_clip, autocast
        gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(rows), generator=gen)
        self.cursor = 0
        self.device = next(model.parameters()).device
        self.t_eps, self.mask_eps = t_eps, mask_eps

    def next_batch(self) -> Tensor:
        if self.cursor + self.batch_size > len(self.order):
            self.cursor = 0
        index = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.rows[index].to(self.device)

    def step(self) -> float:
        self.model.train()
        x = self.next_batch()
        b, length = x.shape
        offset = torch.rand(b, device=self.device)
        t = self.t_eps + (1 - self.t_eps) * (offset + torch.arange(b, device=self.device)) / b
        masked = torch.rand((b, length), device=self.device) < (1 - self.mask_eps) * t[:, None]
        noisy = x.masked_fill(masked, self.mask_id)
        with self.autocast():
            logits = self.model(noisy)
        rows = logits[masked].float()
        rows[:, [self.mask_id, self.pad_id]] = float("-inf")
        nll = torch.logsumexp(rows, dim=-1) - rows.gather(-1, x[masked][:, None]).squeeze(-1)
        weights = (1.0 / t)[:, None].expand(b, length)[masked]
        loss = (weights * nll).sum() / (b * length)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def check_reproducible(spec: ResolvedSpec) -> None:
    """The bare loop re-implements one recipe; any other would compare different work."""
    c = spec.components
    recipe = (c["forward_process"].name, c["time_sampler"].name, c["loss"].name)
    schedule = getattr(c["forward_process"].params, "schedule", None)
    accum = spec.run.trainer.grad_accum
    if recipe != ("absorbing", "uniform", "mdlm") or schedule != "loglinear" or accum != 1:
        raise MdmError(
            "the bare loop reproduces absorbing (loglinear) + uniform + mdlm with grad_accum 1; "
            f"the spec has {' + '.join(recipe)} (schedule {schedule}), grad_accum {accum}: "
            "override those keys or pick such a spec"
        )


def build(spec_path: Path, overrides: list[str], device: str, run_dir: Path) -> tuple[Trainer, BareLoop]:
    """The trainer from the spec and a bare loop over a twin of its model (same initial weights)."""
    spec = load_spec(spec_path, [*overrides, f"trainer.device={device}"])
    check_reproducible(spec)
    trainer = Trainer(spec, run_dir, quiet=True)
    cfg = trainer.cfg
    backbone = spec.components["backbone"]
    torch.manual_seed(cfg.seed)
    model = backbone.build(trainer.shape).to(trainer.env.device)
    reference = trainer.model.state_dict()
    if not all(torch.equal(v, reference[k]) for k, v in model.state_dict().items()):
        raise MdmError("the bare model's initial weights differ from the trainer's; the comparison is void")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    bf16 = isinstance(trainer.autocast, torch.autocast)

    def autocast() -> AbstractContextManager[Any]:
        """A fresh context per step, bf16 exactly when the trainer's is."""
        return torch.autocast(trainer.env.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    bare = BareLoop(
        model,
        rows_tensor(trainer.parts.bundle.splits["train"]).to(trainer.env.device),
        cfg.batch_size,
        trainer.shape.vocab.mask_id,
        trainer.shape.vocab.pad_id,
        optimizer,
        cfg.grad_clip,
        autocast,
        cfg.seed,
        t_eps=spec.components["time_sampler"].params.eps,
        mask_eps=spec.components["forward_process"].params.eps,
    )
    return trainer, bare


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], n: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return time.perf_counter() - start


def gpu_step_peak(step: Callable[[], object], device: torch.device) -> float:
    """MiB a step allocates above what was held before it."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise MdmError(f"/proc/self/status has no {field}; CPU peak memory needs Linux (use --memory-runs 0)")


@contextmanager
def rss_growth(result: dict[str, float]) -> Iterator[None]:
    """Peak RSS during the block minus RSS at its start (MiB), with the high-water mark reset."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    yield
    result["mib"] = (_status_kib("VmHWM") - before) / 1024


def memory_probe(args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh subprocess: the RSS growth over a few steps of one arm."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer, bare = build(args.spec, args.overrides, args.device, Path(tmp))
        step = trainer.train_step if args.memory_probe == "mdm" else bare.step
        result: dict[str, float] = {}
        with rss_growth(result):
            for _ in range(3):
                step()
    return result


def cpu_peak(args: argparse.Namespace, arm: str) -> float:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", arm, "--spec", str(args.spec)]
    command += ["--device", args.device, "--threads", str(args.threads or 0)]
    command += [f"--override={o}" for o in args.overrides]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise MdmError(f"memory probe for the {arm} arm failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["mib"])


def quartiles(values: list[float]) -> list[float]:
    if len(values) < 2:
        return [values[0]] * 3
    return statistics.quantiles(values, n=4, method="inclusive")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="run spec (default: the quick-start)")
    p.add_argument("--override", dest="overrides", action="append", default=[], help="spec key=value")
    p.add_argument("--steps", type=int, default=3, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=20, help="interleaved blocks per arm")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per arm first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--memory-runs", type=int, default=3, help="peak-memory measurements per arm, median (0: skip)"
    )
    p.add_argument("--quick", action="store_true", help="tiny model and corpus (smoke test)")
    p.add_argument("--json", type=Path, help="also write the result as JSON here")
    p.add_argument("--memory-probe", choices=["mdm", "bare"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.overrides = [*QUICK_OVERRIDES, *args.overrides]
    if args.threads:  # the spec may pin trainer.threads (the quick-start does): --threads wins
        args.overrides = [*args.overrides, f"trainer.threads={args.threads}"]
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or args.memory_runs < 0:
        p.error("--steps and --repeats must be at least 1, --warmup and --memory-runs at least 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        probe = memory_probe(args)
        print(json.dumps(probe))
        return probe
    with tempfile.TemporaryDirectory() as tmp:
        trainer, bare = build(args.spec, args.overrides, args.device, Path(tmp))
        device = trainer.env.device
        tokens_per_step = trainer.cfg.batch_size * trainer.shape.seq_len
        arms: dict[str, Callable[[], object]] = {"mdm": trainer.train_step, "bare": bare.step}
        for step in arms.values():
            for _ in range(args.warmup):
                step()
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        for r in range(args.repeats):
            for name in ("mdm", "bare") if r % 2 == 0 else ("bare", "mdm"):
                seconds[name].append(timed(arms[name], args.steps, device))
        memory: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.memory_runs):
            for name, step in arms.items():
                on_gpu = device.type == "cuda"
                memory[name].append(gpu_step_peak(step, device) if on_gpu else cpu_peak(args, name))
    ms = {name: 1000 * statistics.median(times) / args.steps for name, times in seconds.items()}
    ratios = [m / b for m, b in zip(seconds["mdm"], seconds["bare"], strict=True)]
    result: dict[str, Any] = {
        "benchmark": "B2 training throughput",
        "spec": str(args.spec),
        "overrides": args.overrides,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps_per_block": args.steps,
        "repeats": args.repeats,
        "tokens_per_step": tokens_per_step,
        "tok_per_s": {name: 1000 * tokens_per_step / v for name, v in ms.items()},
        "ms_per_step": ms,
        "extra_ms_per_step": ms["mdm"] - ms["bare"],
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "ratio_quartiles": quartiles(ratios),
        "peak_memory_mib": {name: statistics.median(v) if v else None for name, v in memory.items()},
        "peak_memory_runs_mib": memory,
        "memory_method": (
            "cuda max_memory_allocated above the step's start"
            if device.type == "cuda"
            else "peak RSS growth over 3 steps in a fresh process (Linux VmHWM reset)"
        ),
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
        f"B2 on {r['device']} ({r['threads']} threads), {r['tokens_per_step']} tokens/step, "
        f"{r['repeats']} interleaved blocks of {r['steps_per_block']} steps per arm"
    )
    print("| arm | tokens/s (median) | ms/step (median) | peak memory, MiB: median (runs) |")
    print("|---|---|---|---|")
    for name in ("bare", "mdm"):
        runs = r["peak_memory_runs_mib"][name]
        mem = f"{r['peak_memory_mib'][name]:.1f} ({', '.join(f'{m:.0f}' for m in runs)})" if runs else "—"
        print(f"| {name} | {r['tok_per_s'][name]:.0f} | {r['ms_per_step'][name]:.1f} | {mem} |")
    q1, _, q3 = r["ratio_quartiles"]
    print(
        f"overhead, median of per-block time ratios mdm/bare − 1: {r['overhead_pct']:+.2f}% "
        f"(quartiles of the ratio {q1:.3f}–{q3:.3f}); extra time per step {r['extra_ms_per_step']:+.2f} ms"
    )


if __name__ == "__main__":
    try:
        main()
    except MdmError as exc:
        sys.exit(f"error: {exc}")
