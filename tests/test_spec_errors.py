"""Every malformed spec is exit 2 with a message naming where, which key, the bad value and the fix
(issue 11 §6): one case per class a fuzz of 445 specs found crashing or training on garbage."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from mdm_core.cli import main
from mdm_core.errors import SpecError
from mdm_core.plugins import get_registry

QUICKSTART = str(Path(__file__).resolve().parent.parent / "specs" / "quickstart.yaml")


def validate(*argv: str) -> tuple[int, str]:
    """``mdm spec validate`` in-process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["spec", "validate", *argv])
    return code, err.getvalue()


OVERRIDE_CASES = [
    # an override that is not YAML: where in the value, and how to quote it
    ("trainer.lr=[", ["(override) 'trainer.lr=['", "not valid YAML", "end of the value", "quote"]),
    ("description={a: 1]", ["not valid YAML", "column 6 of the value"]),
    # sections of the wrong type
    ("trainer=[1, 2]", ["trainer is a mapping of keys to values, not a list", "trainer.<key>=<value>"]),
    ("evaluators={name: nll}", ["evaluators: should be a list"]),
    ("data=5", ["data: should be a component: a mapping with a name"]),
    ("trainer=3", ["trainer: should be a mapping of keys to values"]),
    ("data.name=[1]", ["data.name", "valid string"]),
    # non-finite and absurd floats, in the trainer and in any component's parameters
    ("trainer.lr=inf", ["trainer.lr: should be a finite number"]),
    ("trainer.weight_decay=.inf", ["trainer.weight_decay: should be a finite number"]),
    ("trainer.grad_clip=nan", ["trainer.grad_clip: should be a finite number"]),
    ("trainer.ema=nan", ["trainer.ema"]),
    ("trainer.min_lr_ratio=nan", ["trainer.min_lr_ratio"]),
    ("trainer.lr=1e400", ["trainer.lr: should be a finite number"]),
    ("trainer.betas=[1.5, 0.9]", ["trainer.betas[0]", "less than 1"]),
    ("trainer.betas=[0.9, -0.1]", ["trainer.betas[1]", "greater than or equal to 0"]),
    ("backbone.rope_base=inf", ["backbone.rope_base: should be a finite number", "backbone 'dit'"]),
    # seeds outside the generators' range
    ("trainer.seed=-1", ["trainer.seed", "greater than or equal to 0"]),
    ("trainer.seed=18446744073709551616", ["trainer.seed", "less than 4294967296"]),
    # a run name that would escape out_dir
    ("name=../../x", ["name: a run name is one folder name", "out_dir"]),
    ("name=/etc/x", ["name: a run name is one folder name"]),
    ("name=..", ["name: a run name is one folder name"]),
    # unknown keys inside lists name the list item and come from the override
    ("evaluators=[{name: nll}, {name: nll, drawz: 3}]", ["(override): evaluators[1].drawz", "'draws'"]),
    ("=3", ["the key is empty"]),
    # too large to run: named before any data is read, with the estimate
    ("trainer.threads=100000", ["trainer.threads: 100000 threads on", "CPU cores"]),
    ("trainer.batch_size=100000000000", ["trainer.batch_size: this run needs at least", "GiB", "memory"]),
    ("trainer.eval_batch_size=10000000000", ["trainer.eval_batch_size: this run needs at least"]),
    ("data.seq_len=1000000000", ["needs at least", "data.seq_len"]),
    ("data.num_train=1000000000000", ["data.num_train: this run needs at least", "the corpus"]),
    ("trainer.num_samples=100000000000", ["trainer.num_samples: this run needs at least"]),
    ("sampler.steps=1000000000000", ["sampler.steps: 1000000000000 steps", "forward passes"]),
]


@pytest.mark.parametrize(("override", "expected"), OVERRIDE_CASES, ids=[c[0][:40] for c in OVERRIDE_CASES])
def test_a_bad_override_is_exit_2_naming_key_and_fix(override: str, expected: list[str]) -> None:
    code, err = validate(QUICKSTART, override)
    assert code == 2, err
    assert err.startswith(f"error: {QUICKSTART} (override)") and "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_that_is_not_there_is_refused_before_loading_data() -> None:
    code, err = validate(QUICKSTART, "trainer.device=cuda")
    assert code == 2 and "trainer.device: cuda, but this machine has no usable CUDA device" in err


def test_sizes_that_fit_still_validate() -> None:
    code, err = validate(QUICKSTART, "trainer.threads=2", "trainer.seed=4294967295", "sampler.steps=1000")
    assert code == 0, err


FILE_CASES = [
    ("name: x\ndata: {name: markov\nbackbone: {name: dit}\n", ["not a valid YAML spec: line 3, column 9"]),
    ("name: x\n\tdata: 1\n", ["line 2, column 1", "tab character"]),
    ("", ["the spec is empty"]),
    ("# only a comment\n", ["the spec is empty"]),
    ("- a\n- b\n", ["a spec must be a mapping"]),
    ("base: {folder}\n", ["base: {folder} is a folder"]),
    (
        "base: {quickstart}\ntrainer: [1, 2]\n",
        ["trainer: cannot be merged onto the one in", "a mapping stays a mapping"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), FILE_CASES)
def test_a_bad_spec_file_is_exit_2_with_line_and_column(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(text.replace("{folder}", str(tmp_path)).replace("{quickstart}", QUICKSTART))
    code, err = validate(str(spec))
    assert code == 2 and "Traceback" not in err
    for item in expected:
        assert item.replace("{folder}", str(tmp_path)) in err, err


def test_a_folder_as_the_spec_is_named(tmp_path: Path) -> None:
    code, err = validate(str(tmp_path))
    assert code == 2 and f"{tmp_path} is a folder" in err


def _text_source(path: Path, fmt: str) -> object:
    cls = get_registry().load("data", "text")
    return cls(cls.Params(path=str(path), format=fmt))


@pytest.mark.parametrize(
    ("name", "content", "fmt", "found"),
    [
        ("plain.txt", "hello world\n" * 50, "jsonl", "text"),
        ("plain.txt", "hello world\n" * 50, "parquet", "text"),
        ("fake.parquet", "hello world\n" * 50, "auto", "text"),
        ("docs.jsonl", '{"text": "a"}\n' * 50, "text", "jsonl"),
    ],
)
def test_a_data_format_the_file_is_not_is_exit_2(
    tmp_path: Path, name: str, content: str, fmt: str, found: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(SpecError, match="data.format") as info:
        _text_source(path, fmt).read_text()  # type: ignore[attr-defined]
    assert info.value.exit_code == 2
    assert f"{path} looks like {found}, not " in str(info.value) and f"data.format={found}" in str(info.value)


def test_a_matching_format_reads_the_text(tmp_path: Path) -> None:
    """Text that merely starts with a brace, in a .txt file, is still text."""
    path = tmp_path / "code.txt"
    path.write_text("{ int x; }\nmore text\n")
    assert _text_source(path, "text").read_text().startswith("{ int x; }")  # type: ignore[attr-defined]
