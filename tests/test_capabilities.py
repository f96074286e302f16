"""Backbone capabilities: a backbone declares the layouts it honours, the kit checks exactly
those, and a spec whose forward process needs another is refused (exit 2). The backbone is the
worked example of docs/backbones.md, run from the page itself."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import torch
from torch import Tensor

from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.cli import main
from mdm_core.composition import check_composition
from mdm_core.errors import PluginError, SpecError
from mdm_core.interfaces import Backbone, Params, RunShape, Vocab
from mdm_core.spec import Component
from mdm_core.testing import TinyBackbone, check_backbone

PAGE = Path(__file__).resolve().parent.parent / "docs" / "backbones.md"
MODULE = "bigru_page_model"


def page_module() -> types.ModuleType:
    """The page's ``mdm_plugin_bigru/model.py`` block, as a module."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    (source,) = [b for b in blocks if b.startswith("# mdm_plugin_bigru/model.py")]
    module = types.ModuleType(MODULE)
    sys.modules[MODULE] = module  # pydantic resolves the annotations through it
    exec(compile(source, f"{PAGE}:model.py", "exec"), module.__dict__)
    return module


BIGRU = page_module().BiGRU


def kit(cls: type[Backbone]) -> None:
    check_backbone(lambda shape: cls(cls.Params(dim=8), shape), max_examples=8, kv_cache=False)


def test_the_worked_backbone_passes_the_laws_of_what_it_claims() -> None:
    assert BIGRU.layouts == frozenset({"full", "block_causal"})
    kit(BIGRU)


def test_claiming_more_than_it_honours_fails_the_kit() -> None:
    class ClaimsAny(BIGRU):  # type: ignore[misc, valid-type]
        layouts: ClassVar[frozenset[str] | Literal["any"]] = "any"

    with pytest.raises(AssertionError, match="mask layout|repeated position ids"):
        kit(ClaimsAny)


def test_a_claimed_layout_that_is_ignored_fails_the_kit() -> None:
    class NoRestart(BIGRU):  # type: ignore[misc, valid-type]
        """Claims block_causal but runs every layout as full: later blocks leak backwards."""

        def forward(self, input_ids: Tensor, *args: Any, layout: Any = None, **kwargs: Any) -> Tensor:
            padding = None if layout is None else layout.key_padding
            return super().forward(input_ids, *args, layout=self.full(padding), **kwargs)

        @staticmethod
        def full(padding: Tensor | None) -> Any:
            from mdm_core.interfaces import FullLayout

            return FullLayout(key_padding=padding)

    with pytest.raises(AssertionError, match="block_causal layout"):
        kit(NoRestart)


def test_a_backbone_without_full_is_refused_by_the_kit() -> None:
    class OnlyCausal(TinyBackbone):
        layouts: ClassVar[frozenset[str] | Literal["any"]] = frozenset({"block_causal"})

    with pytest.raises(AssertionError, match="full layout"):
        check_backbone(lambda shape: OnlyCausal(None, shape), max_examples=2)


def test_the_worked_backbone_refuses_a_layout_it_does_not_honour() -> None:
    from mdm_core.interfaces import BD3Layout

    model = BIGRU(None, RunShape(Vocab(size=6, pad_id=4, mask_id=5), seq_len=4))
    with pytest.raises(Exception, match="bd3"):
        model(torch.zeros(1, 8, dtype=torch.long), layout=BD3Layout(seq_len=4, size=2))


class NeedsBD3(AbsorbingProcess):
    """A process whose models are trained under the BD3 layout (as the blockwise plug-in's)."""

    name = "needs_bd3"

    @classmethod
    def layouts(cls, params: Params) -> frozenset[str]:
        return frozenset({"bd3", "block_causal"})


def component(kind: str, cls: Any) -> Component:
    return Component(kind, cls.name, cls, cls.Params(), "test")


def test_composition_refuses_a_backbone_that_misses_a_layout_the_process_needs() -> None:
    check_composition({"forward_process": component("forward_process", AbsorbingProcess),
                       "backbone": component("backbone", BIGRU)}, "spec.yaml")  # fmt: skip
    check_composition({"forward_process": component("forward_process", NeedsBD3),
                       "backbone": component("backbone", TinyBackbone)}, "spec.yaml")  # fmt: skip
    with pytest.raises(SpecError, match=r"backbone 'bigru' does not honour .*\['bd3'\].*'needs_bd3'"):
        check_composition({"forward_process": component("forward_process", NeedsBD3),
                           "backbone": component("backbone", BIGRU)}, "spec.yaml")  # fmt: skip

    class Malformed(TinyBackbone):
        layouts = ["full"]  # type: ignore[assignment]

    with pytest.raises(PluginError, match="frozenset of layout names"):
        check_composition({"forward_process": component("forward_process", AbsorbingProcess),
                           "backbone": component("backbone", Malformed)}, "spec.yaml")  # fmt: skip


PLUGIN = """
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.hookspecs import ComponentRef, hookimpl


class NeedsBD3(AbsorbingProcess):
    name = "needs_bd3"

    @classmethod
    def layouts(cls, params):
        return frozenset({"bd3", "block_causal"})


@hookimpl
def mdm_components():
    return [
        ComponentRef("backbone", "bigru", "bigru_page_model:BiGRU", "bidirectional GRU"),
        ComponentRef("forward_process", "needs_bd3", "mdm_test_bigru:NeedsBD3", "needs bd3"),
    ]
"""


def test_a_spec_that_needs_an_unclaimed_layout_is_exit_2(
    install_plugin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    install_plugin("mdm-plugin-bigru", "mdm_test_bigru", PLUGIN)
    assert main(["spec", "validate", "quickstart", "backbone={name: bigru, dim: 8}"]) == 0
    code = main(
        ["spec", "validate", "quickstart", "backbone={name: bigru}", "forward_process.name=needs_bd3"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "backbone 'bigru' (mdm-plugin-bigru 0.0.1) does not honour the attention layout(s) ['bd3']" in err
