"""A finished run is rebuilt from its directory alone: ``mdm eval`` and ``mdm sample`` never read
or tokenize the corpus again (the BPE tokenizer is not retrained, the data file may be gone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mdm_core.assembly import load_run
from mdm_core.cli import main
from mdm_core.data.markov import MarkovSource
from mdm_core.data.text import TextFileSource
from mdm_core.data.tokenizers import BPETokenizer
from mdm_core.errors import MdmError
from mdm_core.spec import load_spec
from mdm_core.trainer import train

DOCS = [f"Line {i}: the quick brown fox jumps over lazy dog number {i * 13}." for i in range(80)]

BPE_SPEC = """
name: bpe
out_dir: {out}
data: {{name: text, path: {path}, seq_len: 16, val_fraction: 0.2,
        tokenizer: {{name: bpe, vocab_size: 300}}}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
sampler: {{name: ancestral, steps: 8}}
evaluators:
  - {{name: nll, every: 0, draws: 2}}
trainer: {{max_steps: 3, batch_size: 8, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 3, log_every: 1,
          eval_batch_size: 16, num_samples: 0}}
"""


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def bpe_run(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS))
    spec = tmp_path / "bpe.yaml"
    spec.write_text(BPE_SPEC.format(out=tmp_path / "runs", path=corpus))
    summary = train(load_spec(spec), run_dir=tmp_path / "run", quiet=True)
    corpus.unlink()
    return tmp_path / "run", summary


def test_eval_and_sample_work_with_the_data_file_deleted(
    bpe_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, summary = bpe_run

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the BPE tokenizer was retrained")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    code, out, err = _cli(capsys, "eval", str(run_dir), "--json")
    assert code == 0, err
    assert json.loads(out)["val/nll"] == pytest.approx(summary["final"]["val/nll"], rel=1e-6)
    code, out, err = _cli(capsys, "sample", str(run_dir), "--num", "2", "--prompt", "Line 3")
    assert code == 0, err
    assert out.count("--- sample") == 2 and "NFE" in out
    assert out.split("--- sample 0\n")[1].startswith("Line 3")
    loaded = load_run(run_dir)
    assert isinstance(loaded.parts.data, TextFileSource) and loaded.step == 3
    assert isinstance(loaded.parts.bundle.tokenizer, BPETokenizer)


def test_sample_steps_are_validated_by_the_samplers_params(
    bpe_run: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = bpe_run
    code, _, err = _cli(capsys, "sample", str(run_dir), "--steps", "-1")
    assert code == 2 and "--steps" in err and "greater than or equal to 1" in err
    assert "Traceback" not in err and "ValidationError" not in err
    code, out, err = _cli(
        capsys, "sample", str(run_dir), "--num", "1", "--sampler", "confidence", "--steps", "4"
    )
    assert code == 0, err
    assert "(NFE 4, sampler confidence)" in out


def test_load_run_never_loads_the_data_source(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loads: list[int] = []
    original = MarkovSource.load

    def load_once(self: MarkovSource, seed: int) -> Any:
        if loads:
            raise AssertionError("the data source was loaded a second time")
        loads.append(seed)
        return original(self, seed)

    monkeypatch.setattr(MarkovSource, "load", load_once)
    overrides = ["evaluators=[{name: nll, every: 0, draws: 2}, {name: samples, num_samples: 2}]"]
    summary = train(load_spec(tiny_spec, overrides), run_dir=tmp_path / "run", quiet=True)
    assert loads == [0]
    loaded = load_run(tmp_path / "run")
    assert isinstance(loaded.parts.data, MarkovSource)  # built (its chain judges samples), not loaded
    assert loaded.parts.shape.batch_size == 8 and set(loaded.parts.bundle.splits) == {"validation"}
    code, out, err = _cli(capsys, "eval", str(tmp_path / "run"), "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["val/nll"] == pytest.approx(summary["final"]["val/nll"], rel=1e-6)
    assert metrics["val/samples/true_nll"] == pytest.approx(summary["final"]["val/samples/true_nll"])
    assert loads == [0]


def test_a_directory_without_saved_data_is_refused_clearly(tiny_spec: Path, tmp_path: Path) -> None:
    train(load_spec(tiny_spec, ["trainer.num_samples=0"]), run_dir=tmp_path / "run", quiet=True)
    (tmp_path / "run" / "data" / "validation.parquet").unlink()
    with pytest.raises(MdmError, match="no saved validation data"):
        load_run(tmp_path / "run")


MARKOV_SPEC = """
name: markov-eval
out_dir: {out}
data: {{name: markov, vocab_size: 8, branching: 2, seq_len: 16, num_train: 64, num_val: 16}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
sampler: {{name: ancestral, steps: 16}}
evaluators:
  - {{name: nll, every: 0, draws: 1}}
trainer: {{max_steps: 2, batch_size: 8, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 2, log_every: 1,
          eval_batch_size: 16, num_samples: 0}}
"""


def test_eval_set_decodes_a_trained_run_with_another_sampler_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mdm eval --set`` judges one trained model at several sampler budgets (the equal-NFE
    tables) without retraining; keys that would change what was trained are exit 2."""
    spec = tmp_path / "markov.yaml"
    spec.write_text(MARKOV_SPEC.format(out=tmp_path / "runs"))
    train(load_spec(spec), run_dir=tmp_path / "run", quiet=True)
    samples = "evaluators=[{name: samples, every: 0, num_samples: 4}]"
    nfe = {}
    for steps in (2, 16):
        code, out, err = _cli(
            capsys,
            "eval",
            str(tmp_path / "run"),
            "--json",
            "--set",
            samples,
            "--set",
            f"sampler.steps={steps}",
        )
        assert code == 0, err
        metrics = json.loads(out)
        assert "val/nll" not in metrics and 0 <= metrics["val/samples/impossible_frac"] <= 1
        nfe[steps] = metrics["val/samples/nfe"]
    assert 1 <= nfe[2] <= 2 < nfe[16] <= 16
    code, _, err = _cli(capsys, "eval", str(tmp_path / "run"), "--set", "trainer.lr=1")
    assert code == 2 and "--set 'trainer.lr=1'" in err and "retrain" in err
    code, _, err = _cli(capsys, "eval", str(tmp_path / "run"), "--set", "sampler.name=locality")
    assert code == 2 and "cannot generate" in err
