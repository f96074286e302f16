"""Text sources: local text/jsonl/parquet through datasets, wrapped rows, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mdm_core.data.loader import rows_tensor
from mdm_core.data.text import HubSource, TextFileSource
from mdm_core.data.tokenizers import BPETokenizer, CharTokenizer, TokenizerSpec
from mdm_core.errors import SpecError

DOCS = [f"Document {i}: the cat sat on mat number {i * 7}.\nIt was a fine mat." for i in range(60)]
TEXT = "\n".join(DOCS)
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def stream(bundle, split: str) -> str:
    return "".join(bundle.tokenizer.decode(row) for row in rows_tensor(bundle.splits[split]).tolist())


def write(tmp_path: Path, fmt: str) -> Path:
    if fmt == "text":
        path = tmp_path / "corpus.txt"
        path.write_text(TEXT, encoding="utf-8")
    elif fmt == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"body": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    else:
        path = tmp_path / "corpus.parquet"
        pq.write_table(pa.table({"body": DOCS}), path)
    return path


@pytest.mark.parametrize("fmt", ["text", "jsonl", "parquet"])
def test_formats_give_the_same_wrapped_stream(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt)
    field = "text" if fmt == "text" else "body"
    source = TextFileSource(TextFileSource.Params(path=str(path), text_field=field, seq_len=32))
    bundle = source.load(seed=0)
    train, val = bundle.splits["train"], bundle.splits["validation"]
    assert rows_tensor(train).shape[1] == 32 and len(val) >= 1
    # Train is a prefix of the text, validation a prefix of the 5% tail; only row remainders drop.
    cut = len(TEXT) - round(0.05 * len(TEXT))
    assert TEXT[:cut].startswith(stream(bundle, "train"))
    assert cut - len(stream(bundle, "train")) < 32
    assert TEXT[cut:].startswith(stream(bundle, "validation"))
    assert isinstance(bundle.tokenizer, CharTokenizer)
    assert bundle.info["protocol"] == "wrapped"


def test_relative_path_max_chars_and_bpe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "text")
    monkeypatch.chdir(tmp_path)
    params = TextFileSource.Params(
        path="corpus.txt",
        seq_len=8,
        max_chars=2000,
        val_fraction=0.25,
        tokenizer=TokenizerSpec(name="bpe", vocab_size=300),
    )
    bundle = TextFileSource(params).load(seed=0)
    assert isinstance(bundle.tokenizer, BPETokenizer)
    assert TEXT[:1500].startswith(stream(bundle, "train"))
    assert TEXT[1500:2000].startswith(stream(bundle, "validation"))


def test_tokenizer_is_fitted_on_train_only(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("ab" * 100 + "z" * 50)  # "z" lives only in the validation tail
    bundle = TextFileSource(TextFileSource.Params(path=str(path), seq_len=10, val_fraction=0.2)).load(0)
    assert isinstance(bundle.tokenizer, CharTokenizer)
    assert "z" not in bundle.tokenizer.chars
    assert set(stream(bundle, "validation")) == {"\ufffd"}


def test_missing_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    source = TextFileSource(TextFileSource.Params(path=str(tmp_path / "nope.txt")))
    with pytest.raises(SpecError, match=r"data\.path.*nope\.txt"):
        source.load(0)


def test_bad_field_too_short_and_undecodable_are_clear(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl")
    with pytest.raises(SpecError, match=r"data\.text_field.*'body'"):
        TextFileSource(TextFileSource.Params(path=str(path))).load(0)
    short = tmp_path / "short.txt"
    short.write_text("tiny text")
    with pytest.raises(SpecError, match=r"seq_len=128"):
        TextFileSource(TextFileSource.Params(path=str(short))).load(0)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\xff\xfe\x00")
    with pytest.raises(SpecError, match="UTF-8"):
        TextFileSource(TextFileSource.Params(path=str(binary))).load(0)


def test_hub_source_reads_a_local_dataset_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"text": DOCS[:50]}), tmp_path / "data" / "train-00000.parquet")
    pq.write_table(pa.table({"text": DOCS[50:]}), tmp_path / "data" / "validation-00000.parquet")
    params = HubSource.Params(dataset=str(tmp_path), seq_len=16, max_rows=40)
    bundle = HubSource(params).load(seed=0)
    assert "\n".join(DOCS[:40]).startswith(stream(bundle, "train"))
    assert "\n".join(DOCS[50:]).startswith(stream(bundle, "validation"))
    with pytest.raises(SpecError, match=r"train\[95%:\]"):
        HubSource(params.model_copy(update={"validation_split": "test"})).load(0)


def test_hub_source_offline_error_points_to_local_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = HubSource(HubSource.Params(dataset="someone/not-cached-anywhere"))
    with pytest.raises(SpecError, match=r"network.*data\.name=text"):
        source.load(0)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared tinyshakespeare.txt not available")
def test_tinyshakespeare_char_corpus() -> None:
    bundle = TextFileSource(TextFileSource.Params(path=str(SHAKESPEARE), seq_len=256)).load(0)
    ids = rows_tensor(bundle.splits["train"])
    assert bundle.tokenizer.num_regular == 66  # 65 characters + U+FFFD
    assert ids.shape[1] == 256 and int(ids.max()) < 66
    assert not torch.any(rows_tensor(bundle.splits["validation"]) == bundle.tokenizer.encode("\ufffd")[0])
