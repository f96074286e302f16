"""The plug-in catalogue in ``registry/``: one TOML file per known plug-in, and the matrix.

The pydantic model is the schema: ``registry/schema.json`` is generated from ``CatalogEntry``
(``python -m mdm_core.registry_catalog schema registry``) and a test keeps the two equal, so a malformed
entry fails CI naming the file and the field. The compatibility matrix (``matrix.json`` and
``matrix.md``) is written by ``nox -s matrix`` through ``write_matrix``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tomllib
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mdm_core.errors import MdmError
from mdm_core.kinds import KINDS
from mdm_core.plugins import CORE_DISTRIBUTION, Registry, core_version

#: The component kinds of ``mdm_core.kinds`` as a Literal, so the schema lists them as an enum.
Kind = Literal[KINDS]  # type: ignore[valid-type]
Status = Literal["first-party", "third-party", "experimental"]
_EXAMPLE_RANGE = f"{CORE_DISTRIBUTION}>=0.2,<0.3"
ComponentNames = Annotated[
    list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]], Field(min_length=1)
]


class CatalogEntry(BaseModel):
    """One known plug-in distribution (a file ``registry/plugins/<distribution>.toml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    distribution: str = Field(
        pattern=r"^mdm-plugin-[a-z0-9]+(-[a-z0-9]+)*$", description="PyPI name, mdm-plugin-<name>"
    )
    version: str = Field(description="latest released version (PEP 440)")
    summary: str = Field(min_length=1, description="one line: what the plug-in adds")
    components: dict[Kind, ComponentNames] = Field(
        min_length=1, description="component names by kind, as specs write them"
    )
    core: str = Field(
        pattern=rf"^{CORE_DISTRIBUTION}\s*[<>=!~]",
        description=f'supported core range, "{CORE_DISTRIBUTION}>=X,<Y"',
    )
    source: str = Field(min_length=1, description="path in the mdm repository, or the project URL")
    status: Status = Field(description="first-party (in this repository), third-party or experimental")

    @field_validator("version")
    @classmethod
    def _pep440(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"'{value}' is not a PEP 440 version (e.g. 0.1.0)") from None
        return value

    @field_validator("core")
    @classmethod
    def _core_range(cls, value: str) -> str:
        try:
            requirement = Requirement(value)
        except InvalidRequirement as exc:
            raise ValueError(f"'{value}' is not a requirement like '{_EXAMPLE_RANGE}': {exc}") from None
        if requirement.name != CORE_DISTRIBUTION or not requirement.specifier:
            raise ValueError(f"'{value}' must bound {CORE_DISTRIBUTION}, e.g. '{_EXAMPLE_RANGE}'")
        return value

    def admits(self, version: str) -> bool:
        """Whether this plug-in declares support for that version of the core."""
        return Requirement(self.core).specifier.contains(version, prereleases=True)


def schema() -> dict[str, Any]:
    """The JSON Schema of a catalogue entry (what ``registry/schema.json`` holds)."""
    return CatalogEntry.model_json_schema()


def load_catalog(directory: Path) -> list[CatalogEntry]:
    """Every ``plugins/*.toml`` under ``directory``, validated; errors name the file and field."""
    entries = []
    for path in sorted(Path(directory).glob("plugins/*.toml")):
        try:
            entry = CatalogEntry.model_validate(tomllib.loads(path.read_text()))
        except (ValidationError, tomllib.TOMLDecodeError) as exc:
            raise MdmError(f"registry entry {path} is invalid: {exc}", exit_code=2) from None
        if path.stem != entry.distribution:
            raise MdmError(
                f"registry entry {path} describes {entry.distribution}; name the file "
                f"{entry.distribution}.toml",
                exit_code=2,
            )
        entries.append(entry)
    if not entries:
        raise MdmError(f"{directory} holds no registry entries (plugins/*.toml)", exit_code=2)
    return entries


def compare_installed(catalog: list[CatalogEntry], registry: Registry) -> list[dict[str, str]]:
    """Installed against catalogued versions, one row per distribution (catalogued ones first).

    status: ``ok``, ``version differs``, ``not installed``, ``not catalogued`` or ``load error``.
    """
    installed = {p.distribution: p for p in registry.plugins if p.distribution != CORE_DISTRIBUTION}
    rows = []
    for entry in catalog:
        plugin = installed.pop(entry.distribution, None)
        if plugin is None:
            status = "not installed"
        elif plugin.error:
            status = "load error"
        else:
            status = "ok" if plugin.version == entry.version else "version differs"
        rows.append(
            {
                "distribution": entry.distribution,
                "catalogued": entry.version,
                "installed": plugin.version if plugin else "-",
                "status": status,
            }
        )
    for dist, plugin in sorted(installed.items()):
        rows.append(
            {"distribution": dist, "catalogued": "-", "installed": plugin.version, "status": "not catalogued"}
        )
    return rows


# --------------------------------------------------------------------------------------------
# The compatibility matrix
# --------------------------------------------------------------------------------------------

CHECK_OWN = "own tests"
CHECK_PAIR = "composed training run"


class MatrixResult(BaseModel):
    """One cell: a plug-in's own tests (one name) or a pair composed in a training run (two).

    A pair is "not applicable" when both plug-ins provide the same kinds (one run cannot use both).
    """

    model_config = ConfigDict(extra="forbid")

    plugins: list[str] = Field(min_length=1, max_length=2)
    check: Literal["own tests", "composed training run"]
    status: Literal["pass", "fail", "not applicable", "not yet generated"]
    seconds: float | None = None
    command: str = ""


def pending_matrix(plugins: list[str]) -> list[MatrixResult]:
    """Every cell of the matrix for ``plugins``, marked "not yet generated"."""
    cells = [MatrixResult(plugins=[p], check=CHECK_OWN, status="not yet generated") for p in plugins]
    cells += [
        MatrixResult(plugins=[a, b], check=CHECK_PAIR, status="not yet generated")
        for i, a in enumerate(plugins)
        for b in plugins[i + 1 :]
    ]
    return cells


_MARK = {
    "pass": "pass",
    "fail": "**FAIL**",
    "not applicable": "n/a",
    "not yet generated": "not yet generated",
}


def write_matrix(
    results: list[MatrixResult], out_dir: Path, environment: dict[str, str] | None = None
) -> None:
    """Write ``matrix.json`` and ``matrix.md``: a grid (diagonal: own tests; off-diagonal: pairs)
    and one row per check. ``environment`` (core, torch, python versions) heads both files;
    without it the matrix is marked as not yet generated."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") if environment else None
    payload = {
        "generated": generated,
        "environment": environment or {},
        "results": [r.model_dump() for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(payload, indent=1) + "\n")

    names = list(dict.fromkeys(p for r in results for p in r.plugins))
    cell = {tuple(sorted(r.plugins)): _MARK[r.status] for r in results}
    if generated:
        env = ", ".join(f"{k} {v}" for k, v in (environment or {}).items())
        origin = f"Written by `nox -s matrix` on {generated} ({env})."
    else:
        origin = "Not yet generated: run `nox -s matrix` to fill it in."
    lines = [
        "# Compatibility matrix",
        "",
        origin,
        "",
        "Diagonal: the plug-in's own tests against the core. Elsewhere: the two plug-ins composed in a",
        "short real training run of `specs/quickstart.yaml` with both components selected.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for a in names:
        row = [cell.get(tuple(sorted({a, b})), "–") for b in names]
        lines.append(f"| **{a}** | " + " | ".join(row) + " |")
    lines += ["", "| plug-ins | check | result | seconds |", "|---|---|---|---|"]
    for r in results:
        seconds = f"{r.seconds:.0f}" if r.seconds is not None else ""
        lines.append(f"| {' + '.join(r.plugins)} | {r.check} | {_MARK[r.status]} | {seconds} |")
    (out_dir / "matrix.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m mdm_core.registry_catalog schema DIR``: validate DIR's entries and rewrite its
    schema.json; ``... matrix RESULTS.json DIR``: write DIR's matrix files from ``nox -s matrix``
    results, with the versions of this environment (the one the checks ran in)."""
    parser = argparse.ArgumentParser(prog="python -m mdm_core.registry_catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema").add_argument("directory", type=Path)
    matrix = sub.add_parser("matrix")
    matrix.add_argument("results", type=Path)
    matrix.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "schema":
            entries = load_catalog(args.directory)
            text = json.dumps(schema(), indent=1, ensure_ascii=False) + "\n"
            (args.directory / "schema.json").write_text(text)
            print(f"{len(entries)} entries valid; wrote {args.directory / 'schema.json'}")
        else:
            results = [MatrixResult.model_validate(r) for r in json.loads(args.results.read_text())]
            import torch

            gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
            environment = {
                CORE_DISTRIBUTION: core_version(),
                "torch": metadata.version("torch"),
                "python": platform.python_version(),
                "device": f"cuda ({gpu})" if gpu else "cpu",
            }
            write_matrix(results, args.directory, environment)
            print(f"wrote {args.directory / 'matrix.md'} and matrix.json")
    except MdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
