"""Built-in data: tokenizers, the Markov quick-start corpus, text sources and batching.

Data-source classes are imported by the registry only when a spec names them; the names below
are re-exported for the trainer, evaluators and task sources that build on them.
"""

from mdm_core.data.loader import BatchStream, iterate_eval, rows_dataset, rows_tensor
from mdm_core.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    SymbolTokenizer,
    TokenizerSpec,
    build_tokenizer,
    tokenizer_from_json,
)

__all__ = [
    "BPETokenizer",
    "BatchStream",
    "ByteTokenizer",
    "CharTokenizer",
    "SymbolTokenizer",
    "TokenizerSpec",
    "build_tokenizer",
    "iterate_eval",
    "rows_dataset",
    "rows_tensor",
    "tokenizer_from_json",
]
