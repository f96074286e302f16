"""Fuzzed specs and overrides never crash the CLI (issue 11 §6).

Mutations of the quick-start's resolved tree (wrong types, deletions, huge, negative, NaN and
infinite numbers, random text, nested junk, other components' names) and override text that is
often not YAML: ``mdm spec validate`` exits 0 or 2 with no traceback, and a tiny spec that
validates also trains for one step or fails with a clear error. ``MDM_FUZZ_EXAMPLES=600`` runs the
long campaign (the suite's default is small; see RESULTS.md for the campaign's figures).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdm_core.cli import main
from mdm_core.errors import MdmError
from mdm_core.kinds import KIND_TABLE
from mdm_core.plugins import get_registry
from mdm_core.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("MDM_FUZZ_EXAMPLES", "40"))
#: Exit codes a malformed spec may give: valid, or a spec error.
SPEC_CODES = {0, 2}
#: Training one step may also end in divergence (exit 4) on absurd but finite settings.
TRAIN_CODES = {0, 2, 4}


def _loadable_names() -> list[str]:
    """Component names whose classes import (a plug-in being written may not yet)."""
    registry, names = get_registry(), set()
    for kind in KIND_TABLE:
        for name in registry.names(kind.name):
            with contextlib.suppress(MdmError):
                registry.load(kind.name, name)
                names.add(name)
    return sorted(names)


BASE = load_spec(ROOT / "specs" / "quickstart.yaml").resolved
NAMES = _loadable_names()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of the tree: mapping keys and list indices."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


PATHS = _paths(BASE)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 0.5]),
    st.text(max_size=12),
    st.sampled_from(NAMES + ["../../x", "/abs", "cuda", "jsonl", "", "${oc.env:NOPE}"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
DELETE = object()


def _mutate(tree: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    node: Any = tree
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tree


def _copy(tree: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(tree))


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


mutation = st.tuples(st.sampled_from(PATHS), st.one_of(st.just(DELETE), junk))
override_text = st.one_of(
    junk.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()),
    st.text(alphabet=st.sampled_from("[]{}:,'\"=$ \t\\#&*!|>-.0123456789abcnaif"), max_size=12),
)
override = st.tuples(st.sampled_from(PATHS).map(_dotted), override_text).map("=".join)


def _run(argv: list[str]) -> tuple[int, str]:
    """The CLI in-process; any exception escaping ``main`` fails the test with its input."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _write(folder: Path, tree: dict[str, Any]) -> Path:
    path = folder / "fuzz.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    return path


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(mutation, min_size=1, max_size=3), overrides=st.lists(override, max_size=2))
def test_validate_exits_0_or_2_without_a_traceback(
    mutations: list[tuple[tuple[Any, ...], Any]], overrides: list[str]
) -> None:
    tree = _copy(BASE)
    for path, value in mutations:
        try:
            tree = _mutate(tree, path, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    with tempfile.TemporaryDirectory() as folder:
        spec = _write(Path(folder), tree)
        code, err = _run(["spec", "validate", str(spec), *overrides])
    assert code in SPEC_CODES, (code, err)
    assert "Traceback" not in err and (code == 0 or err.startswith("error: ")), err


#: The tiny variant a training step is tried on: fast enough for a handful of examples.
TINY = {
    "data": {"name": "markov", "vocab_size": 8, "branching": 2, "seq_len": 8, "num_train": 64, "num_val": 16},
    "backbone": {"name": "dit", "dim": 16, "layers": 1, "heads": 2},
    "evaluators": [{"name": "nll", "every": 1, "draws": 1}],
    "sampler": {"name": "ancestral", "steps": 4},
    "trainer": {"max_steps": 1, "batch_size": 4, "eval_batch_size": 8, "num_samples": 1, "threads": 1},
}


def _leaf(path: tuple[Any, ...]) -> Any:
    node: Any = BASE
    for key in path:
        node = node[key]
    return node


def _same_kind_names(section: str) -> list[str]:
    kind = next((k.name for k in KIND_TABLE if k.section == section), None)
    registry = get_registry()
    return [n for n in NAMES if kind and n in registry.names(kind)]


#: Numeric leaves get small numbers of any sign (NaN and inf included); component names get the
#: loadable names of the same kind, so that most mutated specs still validate and really train.
NUMBER_PATHS = [p for p in PATHS if isinstance(_leaf(p), int | float) and not isinstance(_leaf(p), bool)]
NAME_PATHS = [p for p in PATHS if p[-1] == "name" and len(p) == 2 and _same_kind_names(str(p[0]))]
small_number = st.one_of(
    st.integers(min_value=-2, max_value=12),
    st.sampled_from([float("nan"), float("inf"), 0.0, 1e30, -1.5, 0.5, 0.999]),
)
small_mutation = st.one_of(
    st.tuples(st.sampled_from(NUMBER_PATHS), small_number),
    st.sampled_from(NAME_PATHS).flatmap(
        lambda p: st.tuples(st.just(p), st.sampled_from(_same_kind_names(str(p[0]))))
    ),
)


@pytest.mark.filterwarnings("ignore:loss mdlm_triton:RuntimeWarning")  # CPU fallback notice
@settings(max_examples=max(4, EXAMPLES // 8), deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations=st.lists(small_mutation, min_size=1, max_size=2))
def test_a_spec_that_validates_trains_one_step_or_fails_clearly(
    mutations: list[tuple[tuple[Any, ...], Any]],
) -> None:
    tree = _copy(BASE)
    for key, value in TINY.items():
        tree[key] = {**tree[key], **value} if isinstance(value, dict) else value
    for path, value in mutations:
        if path[0] in TINY and len(path) > 1 and path[1] in ("num_train", "num_val", "seq_len", "dim"):
            continue  # keep the run tiny: sizes are the validate test's business
        with contextlib.suppress(KeyError, IndexError, TypeError):
            tree = _mutate(tree, path, value)
    with tempfile.TemporaryDirectory() as folder:
        tree["out_dir"] = str(Path(folder) / "runs")
        tree["trainer"] = (
            {**(tree.get("trainer") or {}), "max_steps": 1}
            if isinstance(tree.get("trainer"), dict)
            else tree.get("trainer")
        )
        spec = _write(Path(folder), tree)
        code, err = _run(["spec", "validate", str(spec)])
        assert code in SPEC_CODES and "Traceback" not in err, err
        if code == 0:
            code, err = _run(["train", str(spec), "--quiet"])
            assert code in TRAIN_CODES and "Traceback" not in err, err
