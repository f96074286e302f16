"""Plug-ins fail alone, and by name (issue #11 §5, §4 non-finite validation).

Each test installs a small faulty plug-in distribution (a module and its ``.dist-info``, see
``install_plugin``) and runs the real ``mdm`` command in-process on the 8-step tiny spec. What
is shown: a component's fault (it raises, returns wrong shapes, bad times or logits, a NaN
loss, state a checkpoint cannot hold) is one error naming the component, its kind and its
distribution with exit 3, before a step is trained on garbage; a lifecycle hook that raises is
reported once and disabled while training goes on; a NaN validation metric is exit 4; a name
two plug-ins register is chosen as ``dist:name``; a third-party plug-in cannot change what the
core's tests see.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mdm_core import ComponentRef, hookimpl
from mdm_core.cli import main
from mdm_core.errors import PluginError, SpecError
from mdm_core.plugins import get_registry, reset_registry
from mdm_core.spec import load_spec

Installer = Callable[[str, str, str], None]
ROOT = Path(__file__).resolve().parent.parent
DIST, LABEL = "mdm-test-faulty", "mdm-test-faulty 0.0.1"

FAULTY = '''
"""A plug-in whose every component can be made to misbehave through its ``mode`` parameter."""

import math
from dataclasses import replace

import torch

from mdm_core import ComponentRef, hookimpl
from mdm_core.builtin.absorbing import AbsorbingProcess
from mdm_core.builtin.losses import MDLMLoss
from mdm_core.builtin.time_samplers import UniformTimeSampler
from mdm_plugin_dit.model import DiT

CALLS = []


class BadTimes(UniformTimeSampler):
    name = "bad_t"

    class Params(UniformTimeSampler.Params):
        mode: str = "nan"

    def sample(self, shape, generator, progress=0.0):
        t = super().sample(shape, generator, progress)
        if self.params.mode == "raise":
            raise ValueError("the law's table is empty")
        if self.params.mode == "shape":
            return t[:, None]
        return torch.full_like(t, {"nan": math.nan, "zero": 0.0, "negative": -0.5}[self.params.mode])


class FaultyDiT(DiT):
    name = "faulty_dit"

    class Params(DiT.Params):
        mode: str = "nan_eval"

    def __init__(self, params, shape):
        if params.mode == "init":
            raise RuntimeError("fused kernel not built")
        super().__init__(params, shape)

    def forward(self, input_ids, time_cond=None, layout=None, position_ids=None, kv_cache=None):
        out = super().forward(input_ids, time_cond, layout, position_ids, kv_cache)
        if self.params.mode == "vocab":
            return out[..., :-1]
        if self.params.mode == "nan_eval" and not self.training:
            return torch.full_like(out, math.nan)
        return out


class FaultyProcess(AbsorbingProcess):
    name = "faulty_process"

    class Params(AbsorbingProcess.Params):
        mode: str = "state"

    def prepare(self, batch, time_sampler, generator, progress=0.0):
        example = super().prepare(batch, time_sampler, generator, progress)
        if self.params.mode == "float_mask":
            return replace(example, loss_mask=example.loss_mask.float())
        return example

    def state_dict(self):
        return {"seen": {1, 2}} if self.params.mode == "state" else {}


class NaNLoss(MDLMLoss):
    name = "nan_loss"

    def __call__(self, logits, example, vocab):
        out = super().__call__(logits, example, vocab)
        return replace(out, loss=out.loss * math.nan)


@hookimpl
def mdm_components():
    return [
        ComponentRef("time_sampler", "bad_t", "mdm_test_faulty:BadTimes"),
        ComponentRef("backbone", "faulty_dit", "mdm_test_faulty:FaultyDiT"),
        ComponentRef("forward_process", "faulty_process", "mdm_test_faulty:FaultyProcess"),
        ComponentRef("loss", "nan_loss", "mdm_test_faulty:NaNLoss"),
    ]


@hookimpl
def mdm_step_end(run, step):
    if run.spec.run.name == "hooked":
        CALLS.append(("step_end", step))
        if step == 2:
            raise KeyError("logger run not found")


@hookimpl
def mdm_run_end(run):
    if run.spec.run.name == "hooked":
        CALLS.append(("run_end",))
'''


@pytest.fixture
def faulty(install_plugin: Installer) -> None:
    install_plugin(DIST, "mdm_test_faulty", FAULTY)


def train(spec: Path, run_dir: Path, *overrides: str) -> int:
    return main(["train", str(spec), *overrides, "--run-dir", str(run_dir), "--quiet"])


def steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


# -- components ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("faulty")
@pytest.mark.parametrize(
    ("overrides", "names", "says"),
    [
        (["time_sampler.name=bad_t", "time_sampler.mode=nan"], "time sampler 'bad_t'", "returned t = nan"),
        (["time_sampler.name=bad_t", "time_sampler.mode=zero"], "time sampler 'bad_t'", "returned t = 0.0"),
        (["time_sampler.name=bad_t", "time_sampler.mode=negative"], "time sampler 'bad_t'", "t = -0.5"),
        (["time_sampler.name=bad_t", "time_sampler.mode=shape"], "time sampler 'bad_t'", "of shape (8, 1)"),
        (
            ["time_sampler.name=bad_t", "time_sampler.mode=raise"],
            "time sampler 'bad_t'",
            "raised ValueError: the law's table is empty\n       at ",
        ),
        (
            ["backbone.name=faulty_dit", "backbone.mode=init"],
            "backbone 'faulty_dit'",
            "raised RuntimeError: fused kernel not built",
        ),
        (
            ["backbone.name=faulty_dit", "backbone.mode=vocab"],
            "backbone 'faulty_dit'",
            "returned logits of shape",
        ),
        (
            ["forward_process.name=faulty_process", "forward_process.mode=float_mask"],
            "forward process 'faulty_process'",
            "a loss_mask that is not a bool tensor",
        ),
        (
            ["forward_process.name=faulty_process", "forward_process.mode=state"],
            "forward process 'faulty_process'",
            "state_dict()['seen'] holds set, which a checkpoint cannot store",
        ),
        (["loss.name=nan_loss"], "loss 'nan_loss'", "returned loss nan on the run's first step"),
    ],
)
def test_a_faulty_component_is_named_with_its_distribution(
    overrides: list[str],
    names: str,
    says: str,
    tiny_spec: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 3 on the first step, naming component, kind and distribution; nothing trained on
    garbage, no checkpoint, no traceback (a NaN, 0 or negative t used to train on no token)."""
    run_dir = tmp_path / "run"
    assert train(tiny_spec, run_dir, *overrides) == 3
    err = capsys.readouterr().err
    assert f"error: {names} ({LABEL}) " in err and says in err, err
    assert "Traceback" not in err
    assert steps_logged(run_dir) == [] and not list(run_dir.glob("ckpt/step-*"))


@pytest.mark.usefixtures("faulty")
def test_a_nan_validation_metric_stops_the_run(
    tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backbone that is NaN in eval mode used to score val/nll 0.0 (ppl 1.0, exit 0): torchmetrics'
    SumMetric dropped the NaN. Now exit 4 names the evaluator and the step, and records no score."""
    run_dir = tmp_path / "run"
    assert train(tiny_spec, run_dir, "backbone.name=faulty_dit", "backbone.mode=nan_eval") == 4
    err = capsys.readouterr().err
    assert "evaluator 'nll' (mdm-" in err and "scored val/nll = nan" in err and "at step 4" in err, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if r["kind"] == "eval"] == []
    assert steps_logged(run_dir) == [2, 4]


# -- lifecycle hooks ------------------------------------------------------------------------------


def hook_calls() -> list[tuple[object, ...]]:
    return list(sys.modules["mdm_test_faulty"].CALLS)


@pytest.mark.usefixtures("faulty")
def test_a_raising_hook_is_reported_once_and_disabled(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    run_dir = tmp_path / "run"
    assert train(tiny_spec, run_dir, "name=hooked") == 0
    err = capsys.readouterr().err
    warning = (
        f"warning: plug-in {LABEL}: mdm_step_end raised KeyError: 'logger run not found'; "
        "its lifecycle hooks are disabled for the rest of this run"
    )
    assert err.count(warning) == 1, err
    assert hook_calls() == [("step_end", 1), ("step_end", 2)]  # never again, not even mdm_run_end
    assert steps_logged(run_dir) == [2, 4, 6, 8]


@pytest.mark.usefixtures("faulty")
def test_strict_mode_stops_the_run_at_a_raising_hook(
    tiny_spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert os.environ["MDM_STRICT_PLUGINS"] == "1"  # the root conftest's default
    run_dir = tmp_path / "run"
    assert train(tiny_spec, run_dir, "name=hooked") == 3
    err = capsys.readouterr().err
    assert f"error: plug-in {LABEL}: mdm_step_end raised KeyError" in err and "MDM_STRICT_PLUGINS=1" in err
    assert steps_logged(run_dir) == [2]


def test_a_raising_mdm_components_is_a_load_error_line(
    install_plugin: Installer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = (
        "from mdm_core import hookimpl\n\n\n@hookimpl\ndef mdm_components():\n    raise OSError('no GPU')\n"
    )
    install_plugin("mdm-test-raising", "mdm_test_raising", body)
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    assert main(["plugins"]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("mdm-test-raising"))
    assert "0.0.1" in line and "LOAD ERROR: mdm_components raised OSError: no GPU" in line
    assert main(["spec", "validate", str(ROOT / "specs" / "quickstart.yaml")]) == 0  # others unaffected
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "1")
    reset_registry()
    assert main(["plugins"]) == 3
    assert (
        "plug-in mdm-test-raising 0.0.1 failed to load: mdm_components raised OSError"
        in capsys.readouterr().err
    )


# -- name conflicts ----------------------------------------------------------------------------


class Twin:
    """An in-process plug-in registering time sampler ``twin`` as ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    @hookimpl
    def mdm_components(self) -> list[ComponentRef]:
        return [ComponentRef("time_sampler", "twin", self.target, f"twin from {self.target}")]


def test_dist_colon_name_picks_one_of_two_providers(
    tiny_spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MDM_STRICT_PLUGINS", "0")
    registry = get_registry()
    alpha = Twin("mdm_core.builtin.time_samplers:UniformTimeSampler")
    beta = Twin("mdm_plugin_bell.sampler:BellTimeSampler")
    registry.pm.register(alpha, name="alpha")
    registry.pm.register(beta, name="beta")
    try:
        with pytest.raises(
            PluginError, match=r"registered by both alpha \(in-process\) and beta .*\"alpha:twin\""
        ):
            load_spec(tiny_spec, ["time_sampler.name=twin"])
        chosen = load_spec(tiny_spec, ["time_sampler.name=beta:twin"]).components["time_sampler"]
        assert chosen.cls.__name__ == "BellTimeSampler" and chosen.name == "beta:twin"
        assert load_spec(tiny_spec, ["time_sampler.name=alpha:twin"]).components[
            "time_sampler"
        ].cls.__name__ == ("UniformTimeSampler")
        with pytest.raises(SpecError, match="gamma provides no time sampler 'twin'; providers: alpha:twin"):
            load_spec(tiny_spec, ["time_sampler.name=gamma:twin"])
        assert main(["components", "time_sampler", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["alpha:twin"]["doc"].startswith("Stratified uniform t")
        assert "error" not in rows["beta:twin"] and "uniform" in rows
        run_dir = tmp_path / "run"
        assert train(tiny_spec, run_dir, "time_sampler.name=beta:twin", "trainer.max_steps=2") == 0
        assert "time_sampler beta:twin -> beta" in (run_dir / "plugins.lock").read_text()
    finally:
        registry.pm.unregister(alpha)
        registry.pm.unregister(beta)


# -- third-party plug-ins beside the core's tests -----------------------------------------------

TUTORIAL = """
from mdm_core import ComponentRef, hookimpl


@hookimpl
def mdm_components():
    return [
        ComponentRef("time_sampler", "uniform", "mdm_core.builtin.time_samplers:UniformTimeSampler"),
        ComponentRef("backbone", "dit", "mdm_plugin_dit.model:DiT"),
    ]
"""


def test_a_third_party_plugin_cannot_change_the_core_tests(
    foreign_plugins: Callable[[], list[str]],
    write_dist: Callable[..., None],
    tiny_spec: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tutorial-like plug-in that registers the core's ``uniform`` and the DiT's ``dit`` is
    installed in the environment. The root conftest disables such third-party plug-ins: the core
    sees only its own, without conflict, and the tiny spec validates as before. Left enabled, the
    same environment fails strict (exit 3), as eight core tests did before."""
    assert set(foreign_plugins()) <= set(os.environ.get("MDM_DISABLE_PLUGINS", "").split(","))
    site = tmp_path / "site"
    write_dist(site, "mdm-plugin-tutorial", "mdm_plugin_tutorial", TUTORIAL)
    monkeypatch.syspath_prepend(str(site))
    assert "mdm-plugin-tutorial" in foreign_plugins()  # as the root conftest finds it at start-up
    monkeypatch.setenv("MDM_DISABLE_PLUGINS", ",".join(foreign_plugins()))
    reset_registry()
    try:
        registry = get_registry()
        assert registry.conflicts == {}
        assert "mdm-plugin-tutorial" not in {p.distribution for p in registry.plugins}
        assert load_spec(tiny_spec).components["backbone"].cls.__module__ == "mdm_plugin_dit.model"
        monkeypatch.delenv("MDM_DISABLE_PLUGINS")
        reset_registry()
        with pytest.raises(
            PluginError, match="'uniform' is registered by both mdm-.* and mdm-plugin-tutorial 0.0.1"
        ):
            get_registry()
    finally:
        reset_registry()
