"""Pairs of components that cannot work together are refused with exit 2, naming both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import Field
from torch import Tensor

from mdm_core import ComponentRef, hookimpl
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import AncestralSampler, ConfidenceSampler
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_core.composition import check_composition
from mdm_core.errors import SpecError
from mdm_core.interfaces import Params, TimeSampler
from mdm_core.plugins import get_registry
from mdm_core.spec import Component, load_spec

HERE = "tests.test_composition"


class BlockProcess(AbsorbingProcess):
    """An absorbing process that says its models generate block by block."""

    name = "block_absorbing"

    @classmethod
    def structure(cls, params: Any) -> str:
        return "blocks"


class LawBlindProcess(AbsorbingProcess):
    """A process that draws no times from a time sampler (it must refuse any non-uniform law)."""

    name = "law_blind"
    uses_time_sampler = False


class BlockSampler(AncestralSampler):
    """A sampler that honours both structures."""

    name = "block_ancestral"
    structures = frozenset({"full", "blocks"})


class SquaredTimes(TimeSampler):
    """t = eps + (1 − eps)u²: a non-uniform law."""

    name = "squared"

    class Params(Params):
        eps: float = Field(default=1e-3, gt=0, lt=1)

    def quantile(self, u: Tensor, progress: float = 0.0) -> Tensor:
        return self.params.eps + (1 - self.params.eps) * u**2  # type: ignore[attr-defined]


def choice(kind: str, cls: type[Any], params: Any = None) -> Component:
    return Component(kind, cls.name, cls, params if params is not None else cls.Params(), kind)


def parts(
    process: type[Any], sampler: type[Any], times: type[Any] = UniformTimeSampler
) -> dict[str, Component]:
    return {
        "forward_process": choice("forward_process", process),
        "sampler": choice("sampler", sampler),
        "time_sampler": choice("time_sampler", times),
    }


@pytest.mark.parametrize("sampler", [AncestralSampler, ConfidenceSampler, BlockSampler])
def test_full_processes_compose_with_every_full_sampler(sampler: type[Any]) -> None:
    check_composition(parts(AbsorbingProcess, sampler), "spec.yaml")


def test_a_sampler_without_the_process_structure_is_refused_naming_both() -> None:
    with pytest.raises(SpecError) as info:
        check_composition(parts(BlockProcess, ConfidenceSampler), "run.yaml")
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith("run.yaml: ")
    assert "sampler 'confidence' (mdm-diffusion " in message, "the built-in sampler names its distribution"
    assert "forward process 'block_absorbing'" in message and "'blocks'" in message
    check_composition(parts(BlockProcess, BlockSampler), "run.yaml")


def test_a_process_blind_to_the_law_refuses_a_non_uniform_time_sampler() -> None:
    check_composition(parts(LawBlindProcess, AncestralSampler, UniformTimeSampler), "run.yaml")
    with pytest.raises(SpecError) as info:
        check_composition(parts(LawBlindProcess, AncestralSampler, SquaredTimes), "run.yaml")
    message = str(info.value)
    assert "forward process 'law_blind'" in message and "time sampler 'squared'" in message
    assert "uniform" in message
    # a process that uses the law takes any law
    check_composition(parts(AbsorbingProcess, AncestralSampler, SquaredTimes), "run.yaml")


def test_missing_kinds_are_not_checked() -> None:
    check_composition({"sampler": choice("sampler", AncestralSampler)}, "run.yaml")
    check_composition({"forward_process": choice("forward_process", BlockProcess)}, "run.yaml")


# -- through the spec loader (``mdm spec validate`` and ``mdm train``) --------------------------


class CompositionPlugin:
    """Registers this module's components with the process-wide pluggy manager."""

    @hookimpl
    def mdm_components(self) -> list[ComponentRef]:
        return [
            ComponentRef("forward_process", "block_absorbing", f"{HERE}:BlockProcess", "blocks"),
            ComponentRef("forward_process", "law_blind", f"{HERE}:LawBlindProcess", "no law"),
            ComponentRef("time_sampler", "squared", f"{HERE}:SquaredTimes", "u squared"),
        ]


@pytest.fixture
def registered() -> Iterator[None]:
    plugin = CompositionPlugin()
    get_registry().pm.register(plugin, name="composition-test")
    try:
        yield
    finally:
        get_registry().pm.unregister(plugin)


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "name: composed\n"
        "data: {name: markov, vocab_size: 8, seq_len: 8, num_train: 16, num_val: 8}\n"
        "backbone: {name: dit, dim: 16, layers: 1, heads: 2}\n"
    )
    return path


@pytest.mark.usefixtures("registered")
def test_load_spec_refuses_a_sampler_that_ignores_the_structure(spec_file: Path) -> None:
    with pytest.raises(SpecError, match=r"sampler 'ancestral'.*forward process 'block_absorbing'") as info:
        load_spec(spec_file, ["forward_process.name=block_absorbing"])
    assert str(info.value).startswith(str(spec_file))
    assert info.value.exit_code == 2


@pytest.mark.usefixtures("registered")
def test_load_spec_refuses_a_law_the_process_would_drop(spec_file: Path) -> None:
    with pytest.raises(SpecError, match=r"forward process 'law_blind'.*time sampler 'squared'"):
        load_spec(spec_file, ["forward_process.name=law_blind", "time_sampler.name=squared"])
    assert load_spec(spec_file, ["forward_process.name=law_blind"]).components["forward_process"].cls is (
        LawBlindProcess
    )
    assert load_spec(spec_file, ["time_sampler.name=squared"]).components["time_sampler"].cls is SquaredTimes


def test_squared_law_is_not_uniform() -> None:
    """The refusal above rests on is_uniform(): the stand-in law really is not uniform."""
    sampler = SquaredTimes()
    assert not sampler.is_uniform() and UniformTimeSampler().is_uniform()
    u = torch.tensor([0.5], dtype=torch.float64)
    assert float(sampler.quantile(u)) < float(UniformTimeSampler().quantile(u))
