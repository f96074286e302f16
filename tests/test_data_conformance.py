"""The built-in data sources pass the conformance kit, exactly as a plug-in's source would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mdm_core.data.markov import MarkovSource
from mdm_core.data.text import TextFileSource
from mdm_core.data.tokenizers import TokenizerSpec
from mdm_core.testing import check_data_source


def test_markov_source_conforms() -> None:
    check_data_source(lambda: MarkovSource(MarkovSource.Params(num_train=256, num_val=32, seq_len=32)))


def test_text_source_conforms(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"Line {i}: to be, or not to be — that is the question.\n" for i in range(200)))

    def make(spec: TokenizerSpec) -> Callable[[], TextFileSource]:
        return lambda: TextFileSource(TextFileSource.Params(path=str(path), seq_len=48, tokenizer=spec))

    specs = (
        TokenizerSpec(name="char"),
        TokenizerSpec(name="byte"),
        TokenizerSpec(name="bpe", vocab_size=300),
    )
    for spec in specs:
        check_data_source(make(spec))
