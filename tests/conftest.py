"""Shared fixtures: small specs that train in seconds on a CPU."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mdm_core.plugins import reset_registry

Installer = Callable[[str, str, str], None]

ROOT = Path(__file__).resolve().parent.parent

TINY_SPEC = """
name: tiny
out_dir: {out}
data: {{name: markov, vocab_size: 12, branching: 3, seq_len: 16, num_train: 512, num_val: 32}}
backbone: {{name: dit, dim: 32, layers: 2, heads: 2}}
sampler: {{name: ancestral, steps: 16}}
evaluators:
  - {{name: nll, every: 4, draws: 2}}
trainer: {{max_steps: 8, batch_size: 8, lr: 3e-3, warmup: 2, seed: 0, ckpt_every: 4, log_every: 2,
          eval_batch_size: 16, num_samples: 1}}
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    """A complete spec that trains for 8 steps in about a second."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC.format(out=tmp_path / "runs"))
    return path


def write_distribution(site: Path, dist: str, module: str, body: str, version: str = "0.0.1") -> None:
    """An installed plug-in distribution without pip: a module and its ``.dist-info`` (metadata and
    an ``mdm`` entry point), as ``pip install --target site`` would leave them."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(body)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[mdm]\n{module} = {module}\n")
    (info / "top_level.txt").write_text(f"{module}\n")


@pytest.fixture
def write_dist() -> Callable[..., None]:
    """:func:`write_distribution`, for tests that install plug-ins for a subprocess only."""
    return write_distribution


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installer]:
    """``install_plugin(dist, module, body)``: a plug-in installed for this test only, visible to
    this process's registry."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))

    def install(dist: str, module: str, body: str) -> None:
        write_distribution(site, dist, module, body)
        importlib.invalidate_caches()
        reset_registry()

    yield install
    for name in [m for m in sys.modules if m.startswith("mdm_test_")]:
        del sys.modules[name]
    reset_registry()
