"""Large corpora through the shard store: peak memory stays flat and resumed batches are exact.

For each size (default 100 MB and 1 GB of text) the script writes a generated corpus (random
words from a fixed 2,000-word vocabulary, 20 words a line, written in 16 MB chunks, plus a 50 kB
validation file), then runs three phases, each in a fresh process so its RSS high-water mark
(``VmHWM``) is its own:

1. ``build``: ``TextFileSource(streaming, byte tokenizer).load()`` tokenizes into a new store.
2. ``reuse``: the same load again (the store is mapped, nothing is tokenized) and ``--steps``
   batches drawn from a ``BatchStream`` (batches/s), hashed; a second stream started at step
   ``steps // 2`` (a resume) must give the same hashes.
3. ``train``: ``mdm train`` of a tiny DiT for ``--train-steps`` steps through the store.

The corpus and the store are deleted afterwards unless ``--keep``. Prints a Markdown table.

    .venv/bin/python benchmarks/bench_large_corpus.py --sizes-mb 100 1000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 16 << 20
WORDS_PER_LINE = 20


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def generate(path: Path, size: int, seed: int) -> None:
    """``size`` bytes of random lines of words from a fixed vocabulary, written in chunks."""
    rng = np.random.default_rng(seed)
    vocab_rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words = np.array(
        [bytes(vocab_rng.choice(letters, vocab_rng.integers(3, 10))) for _ in range(2000)], dtype=object
    )
    written = 0
    with path.open("wb") as f:
        while written < size:
            picks = words[rng.integers(0, len(words), size=CHUNK // 6)]
            lines = [b" ".join(picks[i : i + WORDS_PER_LINE]) for i in range(0, len(picks), WORDS_PER_LINE)]
            block = b"\n".join(lines)[: size - written] + b"\n"
            f.write(block)
            written += len(block)


def data_spec(corpus: Path, cache: Path, seq_len: int) -> dict[str, Any]:
    return {
        "name": "text",
        "data_files": {"train": str(corpus / "train.txt"), "validation": str(corpus / "validation.txt")},
        "tokenizer": {"name": "byte"},
        "streaming": True,
        "seq_len": seq_len,
        "cache_dir": str(cache),
    }


def phase(args: argparse.Namespace) -> None:
    """One phase in this (fresh) process; prints a JSON record."""

    from mdm_core.data.loader import BatchStream
    from mdm_core.data.text import TextFileSource

    spec = json.loads(args.phase_spec)
    params = {k: v for k, v in spec.items() if k != "name"}
    record: dict[str, Any] = {"phase": args.phase}
    start = time.perf_counter()
    if args.phase == "train":
        from mdm_core.spec import load_spec
        from mdm_core.trainer import train

        run = Path(spec["cache_dir"]).parent / "run"
        spec_path = run.parent / "train.yaml"
        spec_path.write_text(
            json.dumps(
                {
                    "name": "large",
                    "out_dir": str(run.parent / "runs"),
                    "data": spec,
                    "backbone": {"name": "dit", "dim": 64, "layers": 2, "heads": 2},
                    "evaluators": [{"name": "nll", "every": 0, "draws": 1}],
                    "trainer": {
                        "max_steps": args.train_steps,
                        "batch_size": args.batch,
                        "ckpt_every": args.train_steps,
                        "log_every": 10,
                        "eval_batch_size": args.batch,
                        "num_samples": 0,
                        "threads": 2,
                    },
                }
            )
        )
        train(load_spec(spec_path), run_dir=run, quiet=True)
        record["seconds"] = time.perf_counter() - start
        record["steps_per_s"] = args.train_steps / record["seconds"]
    else:
        bundle = TextFileSource(TextFileSource.Params(**params)).load(seed=0)
        record["load_seconds"] = time.perf_counter() - start
        record["train_rows"] = len(bundle.splits["train"])
        record["info"] = bundle.info
        if args.phase == "reuse":
            vocab = bundle.tokenizer.vocab
            stream = BatchStream(bundle.splits["train"], vocab, args.batch, seed=0)
            t0 = time.perf_counter()
            hashes = [
                hashlib.sha256(stream.batch(s).input_ids.numpy().tobytes()).hexdigest()
                for s in range(args.steps)
            ]
            record["batches_per_s"] = args.steps / (time.perf_counter() - t0)
            half = args.steps // 2
            resumed = BatchStream(bundle.splits["train"], vocab, args.batch, seed=0)
            again = [
                hashlib.sha256(resumed.batch(s).input_ids.numpy().tobytes()).hexdigest()
                for s in range(half, args.steps)
            ]
            record["resume_exact"] = again == hashes[half:]
            record["batch_dtype"] = str(stream.batch(0).input_ids.dtype)
    record["peak_rss_mib"] = status_mib("VmHWM")
    print(json.dumps(record))


def run_phase(name: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", name, "--phase-spec", json.dumps(spec)]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--train-steps", str(args.train_steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder in /tmp")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400, help="batches drawn in the reuse phase")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the corpora and stores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--phase", choices=["build", "reuse", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--phase-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args)
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mdm-large-"))
    rows = []
    try:
        for mb in args.sizes_mb:
            corpus = work / f"corpus-{mb}"
            corpus.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            generate(corpus / "train.txt", mb * 10**6, seed=mb)
            generate(corpus / "validation.txt", 50_000, seed=mb + 1)
            gen_s = time.perf_counter() - t0
            spec = data_spec(corpus, corpus / "cache", args.seq_len)
            build = run_phase("build", spec, args)
            reuse = run_phase("reuse", spec, args)
            trained = run_phase("train", spec, args)
            row = {
                "corpus_mb": mb,
                "generate_s": gen_s,
                "store_mb": sum(f.stat().st_size for f in (corpus / "cache").rglob("*.arrow")) / 1e6,
                "build": build,
                "reuse": reuse,
                "train": trained,
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            if not args.keep:
                shutil.rmtree(corpus)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}; {date.today()}")
    print(
        "| corpus | tokens (train) | tokenise s | peak RSS build | reuse load s | peak RSS reuse "
        "| batches/s | resume exact | train steps/s | peak RSS train |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, u, t = r["build"], r["reuse"], r["train"]
        print(
            f"| {r['corpus_mb']} MB | {b['info']['train_tokens']:,} | {b['load_seconds']:.0f} "
            f"| {b['peak_rss_mib']:.0f} MiB | {u['load_seconds']:.2f} | {u['peak_rss_mib']:.0f} MiB "
            f"| {u['batches_per_s']:.0f} | {u['resume_exact']} | {t['steps_per_s']:.1f} "
            f"| {t['peak_rss_mib']:.0f} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
