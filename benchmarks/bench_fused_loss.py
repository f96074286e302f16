"""B3: the fused Triton MDLM loss against the eager PyTorch reference and its torch.compile.

Forward + backward of the loss over ``[B·L, V]`` logits with a fraction of rows masked. For each
shape and dtype it reports the median time over repeats (CUDA events on a GPU), the peak memory a
step allocates above its inputs (GPU only), the achieved bandwidth, and how far the fused result is
from the reference. Bandwidth counts the traffic any implementation must do: read the masked rows
of the logits once and write the full gradient once; compare it with the device's memory bandwidth.

Without a GPU the "fused" column is what ``mdlm_triton`` runs there: the PyTorch fallback, or the
Triton interpreter under ``TRITON_INTERPRET=1`` (a correctness run; its times mean nothing).

    python benchmarks/bench_fused_loss.py                      # GPU: the B3 shapes
    python benchmarks/bench_fused_loss.py --json out.json      # also write the rows as JSON
    python benchmarks/bench_fused_loss.py --device cpu         # CPU: small shapes, fallback path
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch
from mdm_plugin_triton_loss import backend
from mdm_plugin_triton_loss.loss import FusedMDLMLoss
from torch import Tensor

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.interfaces import LossOutput, TrainingExample, Vocab

LossFn = Callable[[Tensor, TrainingExample, Vocab], LossOutput]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GPU_SHAPES = {"vocab": [64, 8192, 32768, 50257], "rows": [4096, 32768]}
CPU_SHAPES = {"vocab": [64, 8192], "rows": [256, 2048]}


def make_problem(
    rows: int, vocab_size: int, dtype: torch.dtype, mask_frac: float, device: torch.device, seed: int = 0
) -> tuple[Tensor, TrainingExample, Vocab]:
    """Logits ``[1, rows, V]`` and an MDLM-like example: w = 1/t per token, normaliser = rows."""
    gen = torch.Generator(device=device).manual_seed(seed)
    vocab = Vocab(size=vocab_size, pad_id=vocab_size - 2, mask_id=vocab_size - 1)
    logits = torch.randn((1, rows, vocab_size), generator=gen, device=device).mul_(3.0).to(dtype)
    targets = torch.randint(0, vocab.num_regular, (1, rows), generator=gen, device=device)
    t = torch.rand((1, rows), generator=gen, device=device) * 0.999 + 1e-3
    example = TrainingExample(
        input_ids=targets,
        targets=targets,
        loss_mask=torch.rand((1, rows), generator=gen, device=device) < mask_frac,
        weights=1.0 / t,
        normaliser=torch.tensor(float(rows), device=device),
        t=t[:, 0],
    )
    return logits, example, vocab


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(fn: LossFn, logits: Tensor, example: TrainingExample, vocab: Vocab) -> tuple[Tensor, Tensor]:
    """One forward + backward; returns the loss and the gradient of the logits."""
    leaf = logits.detach().requires_grad_()
    out = fn(leaf, example, vocab)
    out.loss.backward()
    assert leaf.grad is not None
    return out.loss.detach(), leaf.grad


def timed_step(fn: LossFn, logits: Tensor, example: TrainingExample, vocab: Vocab) -> float:
    """Seconds of one forward + backward (CUDA events on a GPU)."""
    device = logits.device
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(fn, logits, example, vocab)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    step(fn, logits, example, vocab)
    return time.perf_counter() - begin


def peak_bytes(fn: LossFn, logits: Tensor, example: TrainingExample, vocab: Vocab) -> float | None:
    """Bytes a step allocates above its inputs at its peak (GPU only; None on CPU)."""
    device = logits.device
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step(fn, logits, example, vocab)
    _sync(device)
    return float(torch.cuda.max_memory_allocated(device) - base)


def _error(exc: Exception) -> dict[str, Any]:
    """An OOM or a compile failure is a result to report, not a reason to stop."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}


def measure(
    impls: dict[str, LossFn],
    logits: Tensor,
    example: TrainingExample,
    vocab: Vocab,
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, Any]]:
    """Median time and peak memory per implementation; repeats interleave the implementations
    so that load from other processes on a shared machine hits all of them alike."""
    results: dict[str, dict[str, Any]] = {}
    times: dict[str, list[float]] = {}
    for name, fn in impls.items():
        try:
            for _ in range(warmup):
                step(fn, logits, example, vocab)
            times[name] = []
        except Exception as exc:
            results[name] = _error(exc)
    for _ in range(repeats):
        for name in list(times):
            try:
                times[name].append(timed_step(impls[name], logits, example, vocab))
            except Exception as exc:
                results[name] = _error(exc)
                del times[name]
    for name, seconds in times.items():
        try:
            results[name] = {
                "seconds": statistics.median(seconds),
                "peak_bytes": peak_bytes(impls[name], logits, example, vocab),
            }
        except Exception as exc:
            results[name] = _error(exc)
    return results


def fused_path(device: torch.device) -> str:
    """What ``mdlm_triton`` (backend: auto) runs for logits on ``device``."""
    if not backend.triton_installed():
        return backend.TORCH_NO_TRITON
    if backend.interpreter_requested():
        return backend.TRITON_INTERPRETER
    return backend.TRITON_GPU if device.type == "cuda" else backend.TORCH_FALLBACK


def implementations(use_compile: bool) -> dict[str, LossFn]:
    fused = FusedMDLMLoss()
    impls: dict[str, LossFn] = {"eager": mdlm_reference, "fused": fused}
    if use_compile:
        impls["compile"] = torch.compile(mdlm_reference, dynamic=True)
    return impls


def run_case(
    rows: int,
    vocab_size: int,
    dtype_name: str,
    args: argparse.Namespace,
    device: torch.device,
    impls: dict[str, LossFn],
) -> dict[str, Any]:
    logits, example, vocab = make_problem(rows, vocab_size, DTYPES[dtype_name], args.mask_frac, device)
    masked = int(example.loss_mask.sum())
    itemsize = logits.element_size()
    useful_bytes = (masked + rows) * vocab_size * itemsize
    record: dict[str, Any] = {
        "rows": rows,
        "vocab": vocab_size,
        "dtype": dtype_name,
        "masked_rows": masked,
        "useful_bytes": useful_bytes,
    }
    ref_loss, ref_grad = step(mdlm_reference, logits, example, vocab)
    got_loss, got_grad = step(impls["fused"], logits, example, vocab)
    record["loss_rel_err"] = float((got_loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-30))
    scale = ref_grad.float().abs().max().clamp_min(1e-30)
    record["grad_rel_err"] = float((got_grad.float() - ref_grad.float()).abs().max() / scale)
    del ref_grad, got_grad
    for name, result in measure(impls, logits, example, vocab, args.warmup, args.repeats).items():
        if "seconds" in result:
            result["bytes_per_s"] = useful_bytes / result["seconds"]
        record[name] = result
    return record


def _cell(result: dict[str, Any], key: str) -> str:
    if "error" in result:
        return "—"
    value = result.get(key)
    if value is None:
        return "n/a"
    if key == "seconds":
        return f"{value * 1e3:.2f}"
    if key == "peak_bytes":
        return f"{value / 2**20:.0f}"
    return f"{value / 1e9:.1f}"


def table(records: list[dict[str, Any]], impls: list[str]) -> str:
    """A markdown table: per implementation ms, peak MiB, GB/s; then speed-up, memory ratio, and
    the fused result's error against the reference (gradient: max |Δ| over max |reference|)."""
    head = ["B·L", "V", "dtype"]
    for name in impls:
        head += [f"{name} ms", f"{name} MiB", f"{name} GB/s"]
    head += ["eager/fused time", "fused/eager mem", "loss rel err", "grad rel err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [str(r["rows"]), str(r["vocab"]), r["dtype"]]
        for name in impls:
            cells += [_cell(r[name], k) for k in ("seconds", "peak_bytes", "bytes_per_s")]
        eager, fused = r["eager"], r["fused"]
        ok = "error" not in eager and "error" not in fused
        cells.append(f"{eager['seconds'] / fused['seconds']:.2f}×" if ok else "—")
        mem = ok and eager.get("peak_bytes") and fused.get("peak_bytes") is not None
        cells.append(f"{fused['peak_bytes'] / eager['peak_bytes']:.2f}" if mem else "n/a")
        cells += [f"{r['loss_rel_err']:.1e}", f"{r['grad_rel_err']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [
        (r["rows"], r["vocab"], r["dtype"], n, r[n]["error"])
        for r in records
        for n in impls
        if "error" in r[n]
    ]
    lines += [f"\n{n} at B·L={rows}, V={v}, {d}: {e}" for rows, v, d, n, e in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--vocab", type=int, nargs="+", help="vocabulary sizes (default: B3's; small on CPU)")
    parser.add_argument("--rows", type=int, nargs="+", help="B·L values (default: B3's; small on CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--mask-frac", type=float, default=0.5, help="fraction of rows in the loss mask")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="also time torch.compile of the reference (auto: on a GPU only)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="write the machine, command and rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    want_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if want_cuda else "cpu")
    shapes = GPU_SHAPES if device.type == "cuda" else CPU_SHAPES
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    impls = implementations(use_compile)
    path = fused_path(device)
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else (
            f"{platform.processor() or platform.machine()}, torch threads: {torch.get_num_threads()}, no GPU"
        )
    )
    print(f"# B3 fused loss — {machine}; fused path: {path}; torch {torch.__version__}")
    if device.type != "cuda":
        print("# GPU figures not measured: no GPU here. Peak memory is GPU-only (n/a).")
    if backend.interpreter_requested():
        print("# TRITON_INTERPRET=1: the fused kernels run as Python; times are not meaningful.")

    records = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the one-time fallback notice; stated above
        for rows in args.rows or shapes["rows"]:
            for vocab_size in args.vocab or shapes["vocab"]:
                for dtype_name in args.dtypes:
                    records.append(run_case(rows, vocab_size, dtype_name, args, device, impls))
                    print(f"  done B·L={rows} V={vocab_size} {dtype_name}", flush=True)
    print(table(records, list(impls)))
    if args.json:
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine,
            "fused_path": path,
            "torch": torch.__version__,
            "args": vars(args),
            "rows": records,
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
