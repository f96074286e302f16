"""The compatibility matrix means something: a pair ``mdm spec validate`` refuses is recorded
"refused (exit 2)" (never "pass"), own tests name the core version they ran against (oldest
supported and main), and the files carry versions and the date. Checked on a fake results file
(the real matrix is ``nox -s matrix``, minutes long)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from mdm_core.cli import main
from mdm_core.registry_catalog import main as registry_main
from mdm_core.registry_catalog import oldest_supported

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("core_range", "oldest"),
    [
        ("mdm-diffusion>=0.2,<0.3", "0.2"),
        ("mdm-diffusion~=0.2.1", "0.2.1"),
        ("mdm-diffusion>=0.1,>=0.2", "0.2"),
        ("mdm-diffusion==0.3.0", "0.3.0"),
        ("mdm-diffusion>0.2", None),
        ("mdm-diffusion<0.3", None),
    ],
)
def test_the_oldest_supported_core_is_the_inclusive_lower_bound(core_range: str, oldest: str | None) -> None:
    assert oldest_supported(core_range) == oldest


def test_an_unbounded_range_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert registry_main(["oldest", "mdm-diffusion>=0.2,<0.3"]) == 0
    assert capsys.readouterr().out.strip() == "0.2"
    assert registry_main(["oldest", "mdm-diffusion<0.3"]) == 2
    assert "has no lower bound" in capsys.readouterr().err


OWN = {"check": "own tests"}
FAKE = [
    {**OWN, "plugins": ["old"], "status": "fail", "core": "oldest (0.1.0)", "seconds": 3},
    {**OWN, "plugins": ["old"], "status": "pass", "core": "main (0.2.0)", "seconds": 4},
    {**OWN, "plugins": ["new"], "status": "pass", "core": "oldest = main (0.2.0)", "seconds": 5},
    {
        "plugins": ["old", "new"],
        "check": "composed training run",
        "status": "refused",
        "core": "main (0.2.0)",
        "detail": "spec.yaml: sampler 'x' cannot generate | from models trained by 'y'",
        "command": "mdm spec validate",
    },
]


def test_matrix_files_from_a_fake_results_file(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(FAKE))
    assert registry_main(["matrix", str(results), str(tmp_path)]) == 0
    data = json.loads((tmp_path / "matrix.json").read_text())
    assert data["generated"] and data["environment"]["mdm-diffusion"]
    assert data["plugin_versions"] == {"mdm-plugin-old": "not installed", "mdm-plugin-new": "not installed"}
    assert [r["status"] for r in data["results"]] == ["fail", "pass", "pass", "refused"]
    md = (tmp_path / "matrix.md").read_text()
    # The grid: a cell passes only if every check behind it passed (old failed at its oldest core).
    assert "| **old** | **FAIL** | refused (exit 2) |" in md
    assert "| **new** | refused (exit 2) | pass |" in md
    assert "| old | own tests | **FAIL** | 3 | oldest (0.1.0) |" in md
    assert "| new | own tests | pass | 5 | oldest = main (0.2.0) |" in md
    refused = next(line for line in md.splitlines() if line.startswith("| old + new |"))
    assert "refused (exit 2)" in refused and "cannot generate \\| from models" in refused
    assert "pass" not in refused


def noxfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mdm_noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_matrix_records_what_spec_validate_says_of_a_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``nox -s matrix`` runs ``mdm spec validate`` on a pair's composed spec before training it:
    exit 2 is "refused" with the error's first line, another failure "fail", 0 goes on to train.
    The refusal itself is the composition check's (here a block-trained process with a sampler
    that ignores blocks); the session's reading of exit codes is checked on a stand-in ``mdm``."""
    validate = ["spec", "validate", "specs/quickstart.yaml", "forward_process.name=bd3"]
    assert main(validate) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: specs/quickstart.yaml: sampler 'ancestral'") and "'bd3'" in error

    nox = noxfile()
    session = SimpleNamespace(bin=str(tmp_path))
    stand_in = tmp_path / "mdm"
    for code, expected in ((0, None), (2, ("refused", "spec.yaml: why")), (3, ("fail", "spec.yaml: why"))):
        body = f"import sys\nprint('error: spec.yaml: why\\nmore', file=sys.stderr)\nsys.exit({code})\n"
        stand_in.write_text(f"#!{sys.executable}\n{body}")
        stand_in.chmod(0o755)
        assert nox._refusal(session, ["mdm", *validate]) == expected


def test_plug_ins_sharing_a_slot_compose_through_the_slots_they_do_not_share() -> None:
    """PUMA and blockwise both provide forward processes; the matrix still composes them through
    the one slot only blockwise fills (its block sampler decoding a PUMA-trained model), and the
    composition check accepts it. Two plug-ins that fill only the same slot are "n/a"."""
    nox = noxfile()
    pair = nox._pair_uses("blockwise", "puma")
    assert pair == ["forward_process.name=puma", "sampler.name=block"]
    assert main(["spec", "validate", "specs/quickstart.yaml", *pair]) == 0
    saved = dict(nox.PLUGINS)
    try:
        nox.PLUGINS["other-puma"] = {"components": {"forward_process": ["other"]}}
        assert nox._pair_uses("puma", "other-puma") is None
    finally:
        nox.PLUGINS.clear()
        nox.PLUGINS.update(saved)


def test_the_published_matrix_runs_every_pair_that_can_be_composed() -> None:
    """registry/matrix.json is regenerated whenever the matrix's rules change: no pair that
    ``nox -s matrix`` would compose into one run is left "n/a"."""
    nox = noxfile()
    results = json.loads((ROOT / "registry" / "matrix.json").read_text())["results"]
    for result in results:
        if len(result["plugins"]) != 2 or result["plugins"][0] not in nox.PLUGINS:
            continue
        a, b = result["plugins"]
        if nox._uses(a) and nox._uses(b) and nox._pair_uses(a, b) is not None:
            assert result["status"] != "not applicable", f"{a} + {b}: regenerate with nox -s matrix"
