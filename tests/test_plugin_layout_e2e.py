"""Acceptance (contracts v2): a layout, a process and a sampler defined in a plug-in outside
``mdm_core`` train with the DiT unchanged, generate, and are refused with a sampler that
does not honour their structure.

The plug-in is written to a temporary folder (a package the core has never seen), put on
``sys.path`` and registered in-process with ``pm.register`` — the way pytest plug-ins register.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mdm_core.assembly import load_run
from mdm_core.errors import SpecError
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec
from mdm_core.trainer import train

PLUGIN = '''
"""A test-only plug-in: a strided layout, a process that trains with it, and its sampler."""

from dataclasses import dataclass, replace
from typing import ClassVar

from mdm_core import ComponentRef, hookimpl
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.samplers import AncestralSampler
from mdm_core.layouts import AttentionLayout


@dataclass(eq=False)
class StridedLayout(AttentionLayout):
    """A query sees the keys whose index has its own residue modulo ``stride``."""

    name: ClassVar[str] = "strided"
    stride: int = 2

    def allowed(self, q_idx, kv_idx, batch=None):
        return (q_idx % self.stride) == (kv_idx % self.stride)


class StridedProcess(AbsorbingProcess):
    """Absorbing masking, but every example attends only within its residue class."""

    name = "strided"

    @classmethod
    def structure(cls, params):
        return "strided"

    def prepare(self, batch, time_sampler, generator, progress=0.0):
        example = super().prepare(batch, time_sampler, generator, progress)
        return replace(example, layout=StridedLayout(key_padding=batch.attention_mask))

    def inference(self):
        return replace(super().inference(), structure="strided", layout=lambda length: StridedLayout())


class StridedSampler(AncestralSampler):
    """The ancestral sampler, declared for the strided structure."""

    name = "strided_ancestral"
    structures = frozenset({"strided"})


@hookimpl
def mdm_components():
    return [
        ComponentRef("forward_process", "strided", "mdm_test_strided:StridedProcess", "strided masking"),
        ComponentRef("sampler", "strided_ancestral", "mdm_test_strided:StridedSampler", "for strided"),
    ]
'''

SPEC = """
name: strided
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 256, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
forward_process: {{name: strided}}
sampler: {{name: {sampler}, steps: 16}}
evaluators:
  - {{name: nll, every: 3, draws: 2}}
trainer: {{max_steps: 6, batch_size: 8, lr: 3e-3, warmup: 1, seed: 0, ckpt_every: 3, log_every: 1,
          eval_batch_size: 16, num_samples: 2}}
"""


@pytest.fixture
def strided_plugin(tmp_path: Path) -> Iterator[None]:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "mdm_test_strided.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(folder))
    module = importlib.import_module("mdm_test_strided")
    registry = get_registry()
    registry.pm.register(module, name="mdm-test-strided")
    try:
        yield
    finally:
        registry.pm.unregister(module)
        sys.path.remove(str(folder))
        sys.modules.pop("mdm_test_strided", None)


def spec_path(tmp_path: Path, sampler: str) -> Path:
    path = tmp_path / f"{sampler}.yaml"
    path.write_text(SPEC.format(out=tmp_path / "runs", sampler=sampler))
    return path


@pytest.mark.usefixtures("strided_plugin")
def test_plugin_layout_trains_with_the_dit_and_is_honoured(tmp_path: Path) -> None:
    spec = load_spec(spec_path(tmp_path, "strided_ancestral"))
    summary = train(spec, run_dir=tmp_path / "run", quiet=True)
    assert summary["steps"] == 6
    nll = summary["final"]["val/nll"]
    assert torch.isfinite(torch.tensor(nll)) and nll > 0
    assert len(summary["samples"]) == 2

    # The DiT honoured the plug-in's layout: changing a token of the other residue class leaves
    # every logit of this class unchanged, while a token of the same class changes them.
    run = load_run(tmp_path / "run")
    model, process = run.parts.model, run.parts.forward_process
    layout = process.inference().layout(16)
    x = torch.randint(0, 12, (1, 16), generator=torch.Generator().manual_seed(0))
    base = model(x, layout=layout)
    other, same = x.clone(), x.clone()
    other[0, 1] = (x[0, 1] + 1) % 12
    same[0, 2] = (x[0, 2] + 1) % 12
    even = torch.arange(0, 16, 2)
    assert torch.equal(model(other, layout=layout)[:, even], base[:, even])
    assert not torch.allclose(model(same, layout=layout)[:, even], base[:, even])


@pytest.mark.usefixtures("strided_plugin")
def test_a_sampler_that_ignores_the_structure_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(spec_path(tmp_path, "ancestral"))
    message = str(err.value)
    assert err.value.exit_code == 2
    assert "strided" in message and "ancestral" in message
