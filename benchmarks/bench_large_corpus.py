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

``VmHWM`` counts the file-backed pages of the memory-mapped store too (clean page cache the
kernel can drop), so each phase also samples ``RssAnon`` (heap, stacks, anonymous maps),
``RssFile`` (file-backed, including the store) and ``RssShmem`` every 20 ms from a background
thread and reports the peak of each: a flat ``RssAnon`` is what "memory stays flat" means.

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
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 16 << 20
WORDS_PER_LINE = 20


SAMPLED = ("RssAnon", "RssFile", "RssShmem")


def status_mib(fields: tuple[str, ...]) -> dict[str, float]:
    """``/proc/self/status`` memory fields in MiB (Linux)."""
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0]) / 1024
    missing = set(fields) - set(found)
    if missing:
        raise SystemExit(f"/proc/self/status has no {sorted(missing)}: this benchmark needs Linux >= 4.5")
    return found


def store_rss_mib() -> float:
    """Resident MiB of this process's mappings of ``.arrow`` files (the store), from ``smaps``.

    Tells how much of ``RssFile`` is the mapped store rather than shared libraries.
    """
    total, in_store = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            in_store = head[-1].endswith(".arrow")
        elif in_store and head[:1] == ["Rss:"]:
            total += int(head[1])
    return total / 1024


class PeakSampler:
    """Peaks of ``RssAnon``/``RssFile``/``RssShmem``, sampled from a thread while a phase runs.

    The kernel keeps a high-water mark only for the total (``VmHWM``); the split between heap
    and mapped file pages has to be sampled, and 20 ms is far shorter than any phase. The
    store's own share (``StoreRss``, from ``smaps``, costlier to read) is sampled every 25th tick.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peaks = {**status_mib(SAMPLED), "StoreRss": store_rss_mib()}
        self.samples = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, store: bool = False) -> None:
        """One sample; ``store`` also reads ``smaps`` (call it while the store is still mapped)."""
        for name, value in status_mib(SAMPLED).items():
            self.peaks[name] = max(self.peaks[name], value)
        if store or self.samples % 25 == 0:
            self.peaks["StoreRss"] = max(self.peaks["StoreRss"], store_rss_mib())
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


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
    """One phase in this (fresh) process, memory sampled throughout; prints a JSON record."""
    record: dict[str, Any] = {"phase": args.phase}
    with PeakSampler() as sampler:
        phase_work(args, record, sampler)
    record["peak_mib"] = sampler.peaks
    record["samples"] = sampler.samples
    record["peak_rss_mib"] = status_mib(("VmHWM",))["VmHWM"]
    print(json.dumps(record))


def phase_work(args: argparse.Namespace, record: dict[str, Any], sampler: PeakSampler) -> None:
    """The phase's own work: build, reuse (+ resume check) or train; fills ``record``."""
    from mdm_core.data.loader import BatchStream
    from mdm_core.data.text import TextFileSource

    record["after_import_mib"] = status_mib(SAMPLED)  # the interpreter, torch and datasets
    spec = json.loads(args.phase_spec)
    params = {k: v for k, v in spec.items() if k != "name"}
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
        sampler.sample(store=True)


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
        "| corpus | tokens (train) | store MB | tokenise s | reuse load s | batches/s | resume exact "
        "| train steps/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        b, u, t = r["build"], r["reuse"], r["train"]
        print(
            f"| {r['corpus_mb']} MB | {b['info']['train_tokens']:,} | {r['store_mb']:.0f} "
            f"| {b['load_seconds']:.0f} | {u['load_seconds']:.2f} | {u['batches_per_s']:.0f} "
            f"| {u['resume_exact']} | {t['steps_per_s']:.2f} |"
        )
    print()
    print(
        "| corpus | phase | RssAnon after imports | peak RssAnon | peak RssFile | of which the store "
        "| peak RssShmem | VmHWM |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for name in ("build", "reuse", "train"):
            ph, peak = r[name], r[name]["peak_mib"]
            print(
                f"| {r['corpus_mb']} MB | {name} | {ph['after_import_mib']['RssAnon']:.0f} MiB "
                f"| {peak['RssAnon']:.0f} MiB | {peak['RssFile']:.0f} MiB | {peak['StoreRss']:.0f} MiB "
                f"| {peak['RssShmem']:.0f} MiB "
                f"| {ph['peak_rss_mib']:.0f} MiB |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
