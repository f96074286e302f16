"""``mdm export`` → ``load_pretrained`` is exact: the same logits, samples and evaluation as the run,
with no data source read and no network; bad destinations and missing plug-ins are clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer as LibraryTokenizer

from mdm_core import checkpoint, load_pretrained
from mdm_core.assembly import best_weights, load_run
from mdm_core.cli import main
from mdm_core.errors import MdmError, PluginError, SpecError
from mdm_core.export import export_run
from mdm_core.pretrained import CARD, CONFIG, HF_TOKENIZER, MDM_TOKENIZER, SPEC, VALIDATION, WEIGHTS
from mdm_core.spec import load_spec
from mdm_core.trainer import train

TINY = """
name: tiny
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
sampler: {{name: ancestral, steps: 8}}
evaluators:
  - {{name: nll, every: 0, draws: 2}}
trainer: {{max_steps: 6, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: 6, log_every: 2,
          eval_batch_size: 16, num_samples: 0}}
"""

BPE = """
name: bpe
out_dir: {out}
data: {{name: text, path: {path}, seq_len: 16, val_fraction: 0.2, tokenizer: {{name: bpe, vocab_size: 300}}}}
backbone: {{name: dit, dim: 32, layers: 1, heads: 2}}
sampler: {{name: ancestral, steps: 4}}
evaluators:
  - {{name: nll, every: 0, draws: 1}}
trainer: {{max_steps: 3, batch_size: 8, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 3, log_every: 1,
          eval_batch_size: 16, num_samples: 0}}
"""

DOCS = [f"Line {i}: the quick brown fox jumps over lazy dog number {i * 13}." for i in range(60)]


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-step run with EMA weights (so the export must pick them), trained with an override."""
    folder = tmp_path_factory.mktemp("tiny")
    spec = folder / "tiny.yaml"
    spec.write_text(TINY.format(out=folder / "runs"))
    train(load_spec(spec, ["trainer.ema=0.9"]), run_dir=folder / "run", quiet=True)
    return folder / "run"


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "tiny-model"
    assert main(["export", str(run), str(out)]) == 0
    return out


def test_the_folder_is_complete_and_holds_the_ema_weights(run: Path, exported: Path) -> None:
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert names == {CONFIG, WEIGHTS, MDM_TOKENIZER, SPEC, CARD, VALIDATION}
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    config = json.loads((exported / CONFIG).read_text())
    assert config["backbone"]["name"] == "dit" and config["backbone"]["distribution"] == "mdm-plugin-dit"
    assert config["backbone"]["params"]["dim"] == 32 and config["vocab"] == {
        "size": 14,
        "pad_id": 12,
        "mask_id": 13,
    }
    assert config["forward_process"]["inference"]["structure"] == "full" and config["weights"] == "ema"
    assert (exported / MDM_TOKENIZER).read_bytes() == (run / "tokenizer.json").read_bytes()
    assert (exported / SPEC).read_text() == (run / "resolved.yaml").read_text()
    point = checkpoint.resume_point(run / "ckpt")
    assert point is not None
    _, weights, _ = checkpoint.load_checkpoint(point.path)
    saved = load_file(exported / WEIGHTS)
    ema = best_weights(weights)
    assert saved.keys() == ema.keys() and all(torch.equal(saved[k], ema[k]) for k in ema)
    assert any(not torch.equal(saved[k], weights["model"][k]) for k in saved)  # EMA, not the raw weights


def test_the_model_card_says_what_trained_it_and_how_well(run: Path, exported: Path) -> None:
    card = (exported / CARD).read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: mdm-diffusion" in front and "- masked-diffusion" in front
    assert f"mdm train {run.parent / 'tiny.yaml'} trainer.ema=0.9" in body
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["kind"] == "eval" and f"| val/nll | {final['val/nll']:.6g} |" in body
    assert "mdm-plugin-dit==0.2.0" in body and "at step 6" in body


def test_logits_samples_and_evaluation_are_identical(
    run: Path, exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = load_pretrained(exported, device="cpu")
    trained = load_run(run, device="cpu")
    ids = torch.randint(0, 14, (3, 16), generator=torch.Generator().manual_seed(1))
    t = torch.rand(3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.model(ids, t), trained.parts.model(ids, t))
    assert model.step == trained.step == 6 and model.shape == trained.parts.shape
    for flags in ([], ["--prompt", "ab"], ["--sampler", "confidence", "--steps", "4"]):
        code, from_run, err = _cli(capsys, "sample", str(run), "--num", "3", "--seed", "7", *flags)
        assert code == 0, err
        code, from_export, err = _cli(capsys, "sample", str(exported), "--num", "3", "--seed", "7", *flags)
        assert code == 0, err
        assert from_export == from_run
    code, run_eval, _ = _cli(capsys, "eval", str(run), "--json")
    code2, export_eval, err = _cli(capsys, "eval", str(exported), "--json")
    assert code == code2 == 0, err
    assert json.loads(export_eval) == json.loads(run_eval)


def test_a_bpe_model_round_trips_its_tokenizer_without_the_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(DOCS))
    spec = tmp_path / "bpe.yaml"
    spec.write_text(BPE.format(out=tmp_path / "runs", path=corpus))
    train(load_spec(spec), run_dir=tmp_path / "run", quiet=True)
    corpus.unlink()
    out = tmp_path / "model"
    export_run(tmp_path / "run", out, with_data=False)
    assert not (out / VALIDATION).exists()
    model = load_pretrained(out, device="cpu")
    original = load_run(tmp_path / "run", device="cpu").parts.bundle.tokenizer
    text = "Line 7: the quick brown fox — ünïcode too.\n"
    assert model.tokenizer.encode(text) == original.encode(text)
    assert model.tokenizer.decode(model.tokenizer.encode(text)) == text
    library = LibraryTokenizer.from_file(str(out / HF_TOKENIZER))  # other tools read it
    assert library.encode(text).ids == model.tokenizer.encode(text)
    code, _, err = _cli(capsys, "eval", str(out))
    assert code == 2 and "--data" in err
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(DOCS)))
    code, printed, err = _cli(capsys, "eval", str(out), "--data", str(other), "--json")
    assert code == 0, err
    assert 0 < json.loads(printed)["val/nll"] < 20


def test_an_occupied_destination_is_refused_unless_forced(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "export", str(run), str(out))
    assert code == 2 and "--force" in err and (out / "keep.txt").read_text() == "mine"
    assert _cli(capsys, "export", str(run), str(out), "--force")[0] == 0
    assert not (out / "keep.txt").exists() and (out / CONFIG).is_file()
    code, _, err = _cli(capsys, "export", str(run), str(run.parent), "--force")
    assert code == 2 and "contains the run" in err
    other_run = tmp_path / "other"
    shutil.copytree(run, other_run)
    code, _, err = _cli(capsys, "export", str(run), str(other_run), "--force")
    assert code == 2 and "holds a training run" in err and (other_run / "resolved.yaml").is_file()
    (tmp_path / "empty").mkdir()
    assert _cli(capsys, "export", str(run), str(tmp_path / "empty"))[0] == 0


def test_a_failed_export_leaves_the_old_folder_whole(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "run"
    shutil.copytree(run, damaged, ignore=shutil.ignore_patterns("*.lock"))
    lines = (damaged / "metrics.jsonl").read_text().splitlines()
    (damaged / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _cli(capsys, "export", str(damaged), str(out), "--force")  # fails writing the card
    assert code == 3 and "metrics.jsonl" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_missing_plugin_is_named_with_its_version(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(exported, folder)
    config = json.loads((folder / CONFIG).read_text())
    config["backbone"].update(name="hyena", distribution="mdm-plugin-hyena", version="0.3.1")
    (folder / CONFIG).write_text(json.dumps(config))
    code, _, err = _cli(capsys, "sample", str(folder))
    assert code == 3
    assert "mdm-plugin-hyena 0.3.1" in err and "pip install 'mdm-plugin-hyena==0.3.1'" in err
    config["backbone"].update(name="dit", distribution="mdm-plugin-dit", version="0.2.0")
    config["backbone"]["params"]["dim"] = "wide"
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(PluginError, match=r"backbone\.params\.dim"):
        load_pretrained(folder, device="cpu")


def test_push_to_hub_uploads_the_finished_folder(run: Path, tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    def upload(folder: Path, repo_id: str) -> str:
        seen["files"] = sorted(p.name for p in folder.iterdir())
        seen["step"] = load_pretrained(folder, device="cpu").step  # complete enough to load
        return f"https://hub.example/{repo_id}"

    result = export_run(run, tmp_path / "model", push_to_hub="me/tiny", upload=upload)
    assert result.url == "https://hub.example/me/tiny" and seen["step"] == 6
    assert seen["files"] == sorted([CARD, CONFIG, "data", MDM_TOKENIZER, SPEC, WEIGHTS])
    assert "load_pretrained('me/tiny')" in (tmp_path / "model" / CARD).read_text()
    with pytest.raises(SpecError, match="owner/name"):
        export_run(run, tmp_path / "model2", push_to_hub="not a repo", upload=upload)
    assert not (tmp_path / "model2").exists()


def test_hub_ids_download_and_fail_clearly_offline(exported: Path) -> None:
    model = load_pretrained("me/tiny", device="cpu", download=lambda repo: str(exported))
    assert model.path == exported

    def offline(repo: str) -> str:
        raise OSError("no network")

    with pytest.raises(MdmError, match="no such local folder.*connect to the network") as err:
        load_pretrained("me/tiny", download=offline)
    assert err.value.exit_code == 2
    with pytest.raises(MdmError, match="no such folder"):
        load_pretrained("./nowhere/at/all")
    with pytest.raises(MdmError, match="neither a run directory"):
        load_pretrained(exported / "data")


def test_import_mdm_core_stays_light() -> None:
    code = (
        "import sys, mdm_core; assert 'torch' not in sys.modules; assert callable(mdm_core.load_pretrained)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
