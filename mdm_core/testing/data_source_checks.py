"""Conformance laws of a DataSource (see ``mdm_core.testing``)."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from mdm_core.interfaces import (
    DataSource,
)
from mdm_core.testing.laws import require


def check_data_source(make: Callable[[], DataSource]) -> None:
    """train/validation splits of fixed-length ids within the vocabulary, prompt_len < seq_len,
    a JSON tokenizer description, decode∘encode stable on the data's text, same seed ⇒ same data."""
    bundle = make().load(seed=0)
    tokenizer, seq_len = bundle.tokenizer, bundle.seq_len
    vocab = tokenizer.vocab
    for split in ("train", "validation"):
        require(split in bundle.splits, f"load() must provide a '{split}' split")
        dataset = bundle.splits[split]
        require(len(dataset) > 0, f"split '{split}' is empty")
        require("input_ids" in dataset.column_names, f"split '{split}' needs an input_ids column")
        ids = torch.as_tensor(dataset[: min(len(dataset), 256)]["input_ids"])
        require(
            ids.dim() == 2 and ids.shape[1] == seq_len, f"'{split}' rows must have seq_len = {seq_len} ids"
        )
        require(
            (((ids >= 0) & (ids < vocab.num_regular)) | (ids == vocab.pad_id)).all(),
            f"'{split}' ids must be regular ids or PAD (never MASK)",
        )
        if "prompt_len" in dataset.column_names:
            prompt_len = torch.as_tensor(dataset[: ids.shape[0]]["prompt_len"])
            require(((prompt_len >= 0) & (prompt_len < seq_len)).all(), "prompt_len must lie in [0, seq_len)")
    json.dumps(tokenizer.to_json())
    row = [i for i in bundle.splits["train"][0]["input_ids"] if i != vocab.pad_id]
    text = tokenizer.decode(row)
    again = tokenizer.decode(tokenizer.encode(text))
    require(
        " ".join(again.split()) == " ".join(text.split()),
        f"decode(encode(text)) must give the text back: {text[:60]!r} became {again[:60]!r}",
    )
    other = make().load(seed=0)
    for split in ("train", "validation"):
        first, second = bundle.splits[split], other.splits[split]
        rows = min(len(first), 256)
        require(
            len(first) == len(second) and first[:rows]["input_ids"] == second[:rows]["input_ids"],
            f"same seed must give the same '{split}' data",
        )
