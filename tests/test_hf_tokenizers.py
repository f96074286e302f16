"""Tokenizers of the ``tokenizers`` library: a local tokenizer.json or a hub id, saved whole in the
run so it reloads offline; PAD and MASK come after its whole vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mdm_core.data.loader import rows_tensor
from mdm_core.data.text import TextFileSource
from mdm_core.data.tokenizers import LibraryTokenizer, TokenizerSpec, build_tokenizer, tokenizer_from_json
from mdm_core.errors import SpecError

TEXT = "\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(300))


def make_tokenizer(path: Path, specials: list[str]) -> Path:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT.splitlines(keepends=True), trainer=trainer)
    tok.save(str(path))
    return path


def test_file_tokenizer_keeps_its_ids_and_appends_pad_and_mask(tmp_path: Path) -> None:
    path = make_tokenizer(tmp_path / "tokenizer.json", ["<pad>", "</s>"])
    tok = build_tokenizer(TokenizerSpec(name="file", path=str(path)), "", need_eos=True)
    assert isinstance(tok, LibraryTokenizer)
    library = Tokenizer.from_file(str(path))
    n = library.get_vocab_size(with_added_tokens=True)
    assert tok.num_regular == n and tok.vocab.pad_id == n and tok.vocab.mask_id == n + 1
    assert tok.eos_id == library.token_to_id("</s>")  # found among the known end-of-document tokens
    assert tok.encode("the lazy dog") == library.encode("the lazy dog", add_special_tokens=False).ids
    assert tok.decode(tok.encode("the lazy dog 7")) == "the lazy dog 7"
    again = tokenizer_from_json(json.loads(json.dumps(tok.to_json())))
    assert again.encode("fox 12") == tok.encode("fox 12") and again.vocab == tok.vocab


def test_a_run_trains_on_a_file_tokenizer_and_reloads_it_without_the_file(tmp_path: Path) -> None:
    path = make_tokenizer(tmp_path / "tokenizer.json", ["</s>"])
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    params = TextFileSource.Params(
        path=str(corpus),
        seq_len=16,
        pack="padded",
        tokenizer=TokenizerSpec(name="file", path=str(path)),
        cache_dir=str(tmp_path / "cache"),
    )
    bundle = TextFileSource(params).load(0)
    row = rows_tensor(bundle.splits["train"])[0].tolist()
    end = Tokenizer.from_file(str(path)).token_to_id("</s>")
    assert end in row and bundle.tokenizer.vocab.pad_id in row
    saved = json.dumps(bundle.tokenizer.to_json())
    path.unlink()
    reloaded = tokenizer_from_json(json.loads(saved))
    assert reloaded.decode(row[: row.index(end)]) == TEXT.splitlines()[0]


def test_missing_eos_bad_file_and_offline_hub_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_tokenizer(tmp_path / "tokenizer.json", [])
    with pytest.raises(SpecError, match=r"tokenizer\.eos: .*tokenizer\.json has none"):
        build_tokenizer(TokenizerSpec(name="file", path=str(path)), "", need_eos=True)
    with pytest.raises(SpecError, match=r"tokenizer\.eos: '<end>' is not a token"):
        build_tokenizer(TokenizerSpec(name="file", path=str(path), eos="<end>"), "")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SpecError, match=r"tokenizer\.path: .*bad\.json is not a tokenizers-library"):
        build_tokenizer(TokenizerSpec(name="file", path=str(bad)), "")
    with pytest.raises(ValueError, match="needs tokenizer.path"):
        TokenizerSpec(name="file")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpecError, match=r"tokenizer\.id: .*'someone/not-cached'.*tokenizer\.name=file"):
        build_tokenizer(TokenizerSpec(name="hf", id="someone/not-cached"), "")
    (tmp_path / "local").mkdir()
    make_tokenizer(tmp_path / "local" / "tokenizer.json", ["</s>"])
    local = build_tokenizer(TokenizerSpec(name="hf", id=str(tmp_path / "local")), "")
    assert isinstance(local, LibraryTokenizer) and local.eos_id is not None
