"""Text sources take what ``datasets`` takes: folders, globs, data_files, splits, streaming,
separators and the padded protocol; spec mistakes are exit-2 errors naming file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mdm_core.data.loader import rows_tensor
from mdm_core.data.packing import carve
from mdm_core.data.text import TextFileSource
from mdm_core.data.tokenizers import EosTokenizer, TokenizerSpec
from mdm_core.errors import SpecError

DOCS = [f"doc {i}: the cat sat on mat {i * 7}." for i in range(200)]


def load(tmp_path: Path, **kw: object):
    kw.setdefault("seq_len", 16)
    return TextFileSource(TextFileSource.Params(cache_dir=str(tmp_path / "cache"), **kw)).load(0)


def text_of(bundle, split: str) -> str:
    return "".join(bundle.tokenizer.decode(r) for r in rows_tensor(bundle.splits[split]).tolist())


def test_folder_splits_come_from_file_names(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text("\n".join(DOCS[:150]))
    (tmp_path / "d" / "validation.txt").write_text("\n".join(DOCS[150:]))
    bundle = load(tmp_path, path=str(tmp_path / "d"))
    assert "\n".join(DOCS[:150]).startswith(text_of(bundle, "train"))
    assert "\n".join(DOCS[150:]).startswith(text_of(bundle, "validation"))


def test_globs_lists_and_split_mappings_read_the_same_files(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"part-{i}.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS[i::4]))
    by_glob = load(tmp_path, path=str(tmp_path / "part-*.jsonl"), text_field="body")
    files = [str(tmp_path / f"part-{i}.jsonl") for i in range(4)]
    by_list = load(tmp_path, data_files=files, text_field="body")
    assert torch.equal(rows_tensor(by_glob.splits["train"]), rows_tensor(by_list.splits["train"]))
    split_files = {"train": "part-[0-2].jsonl", "validation": "part-3*"}
    mapped = load(tmp_path, path=str(tmp_path), data_files=split_files, text_field="body")
    assert "\n".join(DOCS[3::4]).startswith(text_of(mapped, "validation"))


def test_streaming_gives_the_same_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(DOCS))
    a = load(tmp_path, path=str(path))
    b = load(tmp_path, path=str(path), streaming=True)
    assert torch.equal(rows_tensor(a.splits["train"]), rows_tensor(b.splits["train"]))
    assert torch.equal(rows_tensor(a.splits["validation"]), rows_tensor(b.splits["validation"]))


def test_eos_separator_and_padded_protocol(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("\n".join(DOCS) + "\n\n")
    eos = load(tmp_path, path=str(path), doc_separator="eos", tokenizer=TokenizerSpec(name="byte"))
    tok = eos.tokenizer
    assert isinstance(tok, EosTokenizer) and tok.eos_id == 256 and tok.vocab.pad_id == 257
    assert text_of(eos, "train").startswith("<eos>".join(DOCS[:3]))
    padded = load(tmp_path, path=str(path), pack="padded", seq_len=24, tokenizer=TokenizerSpec(name="byte"))
    rows = rows_tensor(padded.splits["train"])
    pad, end = padded.tokenizer.vocab.pad_id, 256
    assert len(rows) + len(padded.splits["validation"]) == len(DOCS)  # empty lines are skipped
    for row, doc in zip(rows.tolist(), DOCS, strict=False):
        body = list(doc.encode())[:23]
        assert row[: len(body)] == body and row[len(body)] == end
        assert all(i == pad for i in row[len(body) + 1 :])
    with pytest.raises(ValueError, match="doc_separator applies to pack=wrapped"):  # exit 2 via the spec
        load(tmp_path, path=str(path), pack="padded", doc_separator="eos")


def test_spec_errors_name_the_key_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"data\.data_files\.train: no file matches .*nope-\*\.txt"):
        load(tmp_path, data_files={"train": str(tmp_path / "nope-*.txt")})
    (tmp_path / "a.txt").write_text("x" * 100)
    with pytest.raises(SpecError, match=r"data\.validation_split: no 'dev' split .*\['train'\]"):
        load(tmp_path, path=str(tmp_path / "a.txt"), validation_split="dev")
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "b.parquet")
    (tmp_path / "mix").mkdir()
    (tmp_path / "mix" / "x.txt").write_text("x")
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "mix" / "y.parquet")
    with pytest.raises(SpecError, match=r"data\.format: the train files mix formats"):
        load(tmp_path, path=str(tmp_path / "mix"))
    with pytest.raises(SpecError, match=r"data\.text_field: .*b\.parquet has no column 'text'.*body"):
        load(tmp_path, path=str(tmp_path / "b.parquet"))
    with pytest.raises(SpecError, match=r"data\.format: .*b\.parquet looks like parquet, not csv"):
        load(tmp_path, path=str(tmp_path / "b.parquet"), format="csv")


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(st.text("ab", max_size=6), min_size=1, max_size=10),
    sep=st.sampled_from(["\n", "--", ""]),
    cut_at=st.floats(0.01, 1.0),
)
def test_carving_splits_the_joined_text_at_the_cut(docs: list[str], sep: str, cut_at: float) -> None:
    text = sep.join(docs)
    if not text:
        return
    cut = max(1, round(cut_at * len(text)))
    got: dict[str, list[str]] = {"train": [], "validation": []}
    for split, part in carve([docs[:4], docs[4:]], sep, cut, None, whole_docs=False):
        got[split] += part
    train, val = sep.join(got["train"]), sep.join(got["validation"])
    assert text[:cut].startswith(train) and cut - len(train) <= len(sep)  # at most a separator lost
    assert val == text[cut:]
    whole: dict[str, list[str]] = {"train": [], "validation": []}
    for split, part in carve([docs], sep, cut, None, whole_docs=True):
        whole[split] += part
    assert whole["train"] + whole["validation"] == docs  # padded rows never split a document
