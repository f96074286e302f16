"""Spec loading: composition, overrides, interpolation, two-phase validation, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdm_core.errors import SpecError
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_spec_validates() -> None:
    spec = load_spec(ROOT / "specs" / "quickstart.yaml")
    assert spec.components["backbone"].name == "dit"
    assert spec.components["data"].params.vocab_size >= 32
    assert spec.run.trainer.max_steps > 0


def test_base_composition_and_interpolation(tmp_path: Path, tiny_spec: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(
        f"base: {tiny_spec}\nname: child\ntrainer: {{lr: 1e-2, warmup: '${{trainer.log_every}}'}}\n"
    )
    spec = load_spec(child)
    assert spec.run.name == "child"
    assert spec.run.trainer.lr == pytest.approx(1e-2)
    assert spec.run.trainer.warmup == spec.run.trainer.log_every == 2
    assert spec.run.trainer.max_steps == 8  # inherited


def test_overrides_apply_last(tiny_spec: Path) -> None:
    spec = load_spec(tiny_spec, ["trainer.max_steps=3", "backbone.dim=16"])
    assert spec.run.trainer.max_steps == 3
    assert spec.components["backbone"].params.dim == 16
    assert "trainer.max_steps: 3" in spec.to_yaml().replace("\n  max_steps: 3", "trainer.max_steps: 3")


def test_misspelled_trainer_key_names_key_and_suggestion(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["trainer.max_stepz=3"])
    msg = str(info.value)
    assert "trainer.max_stepz" in msg and "did you mean 'max_steps'" in msg and "(override)" in msg
    assert info.value.exit_code == 2


def test_misspelled_component_name_suggests(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["time_sampler.name=unifrom"])
    msg = str(info.value)
    assert "no time sampler called 'unifrom'" in msg and "did you mean 'uniform'" in msg
    assert "uniform (mdm-core" in msg and "installed:" in msg


def test_unknown_component_parameter_lists_parameters(tiny_spec: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(tiny_spec, ["forward_process.schedul=cosine"])
    msg = str(info.value)
    assert "forward_process.schedul: unknown parameter of 'absorbing'" in msg
    assert "did you mean 'schedule'" in msg and "mdm-core" in msg


def test_error_names_the_file_that_set_the_key(tmp_path: Path, tiny_spec: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {tiny_spec}\ntrainer: {{batch_size: many}}\n")
    with pytest.raises(SpecError) as info:
        load_spec(child)
    msg = str(info.value)
    assert str(child) in msg and "trainer.batch_size" in msg and "'many'" in msg


def test_bad_value_and_bad_yaml_and_missing_file(tmp_path: Path, tiny_spec: Path) -> None:
    with pytest.raises(SpecError, match="forward_process.schedule"):
        load_spec(tiny_spec, ["forward_process.schedule=square"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    with pytest.raises(SpecError, match="not a valid YAML spec"):
        load_spec(bad)
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not key=value"):
        load_spec(tiny_spec, ["trainer.max_steps"])


def test_requires_checks_installed_versions(tmp_path: Path, tiny_spec: Path) -> None:
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"base: {tiny_spec}\nrequires: ['mdm-core>=0.1']\n")
    load_spec(ok)
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"base: {tiny_spec}\nrequires: ['mdm-plugin-nonexistent>=1']\n")
    with pytest.raises(SpecError, match="not installed"):
        load_spec(missing)
    too_new = tmp_path / "new.yaml"
    too_new.write_text(f"base: {tiny_spec}\nrequires: ['mdm-core>=99']\n")
    with pytest.raises(SpecError, match="is installed"):
        load_spec(too_new)


def test_circular_base_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"base: {b}\n")
    b.write_text(f"base: {a}\n")
    with pytest.raises(SpecError, match="circular"):
        load_spec(a)
