"""The shard store: memory-mapped, built once and reused, exact resume, shared by ranks, and a
build that dies leaves nothing half-written."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from mdm_core.data import packing
from mdm_core.data.loader import BatchStream, rows_tensor
from mdm_core.data.text import TextFileSource

WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def corpus(path: Path, lines: int = 4000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    text = "\n".join(" ".join(rng.choice(WORDS, 12)) for _ in range(lines))
    path.write_text(text)
    return path


def params(path: Path, cache: Path, **kw: object) -> TextFileSource.Params:
    kw.setdefault("seq_len", 32)
    return TextFileSource.Params(path=str(path), cache_dir=str(cache), **kw)


def test_splits_are_memory_mapped_narrow_ids(tmp_path: Path) -> None:
    bundle = TextFileSource(params(corpus(tmp_path / "c.txt"), tmp_path / "cache")).load(0)
    train = bundle.splits["train"]
    assert train.cache_files and Path(train.cache_files[0]["filename"]).parent == Path(bundle.info["store"])
    assert str(train.features["input_ids"].feature.dtype) == "uint16"
    assert rows_tensor(train).dtype == torch.int64


def test_second_load_reuses_the_store_and_a_changed_file_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cache = corpus(tmp_path / "c.txt"), tmp_path / "cache"
    first = TextFileSource(params(path, cache)).load(0)
    arrow = Path(first.info["store"]) / "train.arrow"
    stamp = arrow.stat().st_mtime_ns

    def no_tokenizing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the corpus was tokenized again")

    monkeypatch.setattr(packing.Packer, "add", no_tokenizing)
    second = TextFileSource(params(path, cache)).load(0)
    assert arrow.stat().st_mtime_ns == stamp and second.info["store"] == first.info["store"]
    assert torch.equal(rows_tensor(first.splits["train"]), rows_tensor(second.splits["train"]))
    monkeypatch.undo()
    corpus(path, seed=1)  # same name, new content: a new key
    third = TextFileSource(params(path, cache)).load(0)
    assert third.info["store"] != first.info["store"]
    other = TextFileSource(params(path, cache, seq_len=16)).load(0)  # a different spec: a new key
    assert other.info["store"] != third.info["store"]


def test_a_build_that_dies_leaves_no_store_and_the_next_one_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cache = corpus(tmp_path / "c.txt"), tmp_path / "cache"
    real_finish = packing.Packer.finish

    def crash(self: packing.Packer) -> int:
        real_finish(self)
        raise KeyboardInterrupt("killed mid-build")

    monkeypatch.setattr(packing.Packer, "finish", crash)
    with pytest.raises(KeyboardInterrupt):
        TextFileSource(params(path, cache)).load(0)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    bundle = TextFileSource(params(path, cache)).load(0)
    expected = TextFileSource(params(path, tmp_path / "fresh")).load(0)
    assert torch.equal(rows_tensor(bundle.splits["train"]), rows_tensor(expected.splits["train"]))


def test_resume_reads_the_same_batches_from_the_store(tmp_path: Path) -> None:
    bundle = TextFileSource(params(corpus(tmp_path / "c.txt"), tmp_path / "cache")).load(0)
    vocab = bundle.tokenizer.vocab
    whole = BatchStream(bundle.splits["train"], vocab, 8, seed=3)
    seen = [whole.batch(s).input_ids for s in range(40)]
    reopened = TextFileSource(params(tmp_path / "c.txt", tmp_path / "cache")).load(0)
    resumed = BatchStream(reopened.splits["train"], vocab, 8, seed=3)
    for s in range(25, 40):
        assert torch.equal(resumed.batch(s).input_ids, seen[s])
    # Ranks split each global batch: rank r's rows are the r-th half of the single-process batch.
    halves = [BatchStream(reopened.splits["train"], vocab, 8, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h.batch(7).input_ids for h in halves]), seen[7])


def _rank_load(args: tuple[str, str, int]) -> tuple[str, int]:
    path, cache, rank = args
    bundle = TextFileSource(TextFileSource.Params(path=path, seq_len=32, cache_dir=cache)).load(0)
    return bundle.info["store"], len(bundle.splits["train"])


def test_ranks_share_one_store_built_once(tmp_path: Path) -> None:
    path, cache = corpus(tmp_path / "c.txt", lines=8000), tmp_path / "cache"
    with mp.get_context("fork").Pool(2) as pool:
        results = pool.map(_rank_load, [(str(path), str(cache), r) for r in range(2)])
    assert results[0] == results[1]
    stores = [p for p in cache.iterdir() if p.is_dir()]
    assert len(stores) == 1 and not list(cache.glob("*.tmp-*"))
