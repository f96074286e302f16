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
from importlib import metadata, resources
from pathlib import Path
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
        default_factory=dict, description="component names by kind, as specs write them"
    )
    spec_sections: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]] = Field(
        default_factory=list, description="top-level spec keys the plug-in declares (mdm_spec_sections)"
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

    @model_validator(mode="after")
    def _provides_something(self) -> CatalogEntry:
        if not self.components and not self.spec_sections:
            raise ValueError("components and spec_sections are both empty: list what the plug-in provides")
        return self

    def admits(self, version: str) -> bool:
        """Whether this plug-in declares support for that version of the core."""
        return Requirement(self.core).specifier.contains(version, prereleases=True)


def schema() -> dict[str, Any]:
    """The JSON Schema of a catalogue entry (what ``registry/schema.json`` holds)."""
    return CatalogEntry.model_json_schema()


def shipped_catalog_dir() -> Path:
    """The catalogue installed with the core (``registry/`` as the package ``mdm_core.registry``:
    the checkout's own folder in an editable install, a copy as of this release in a wheel)."""
    return Path(str(resources.files("mdm_core.registry")))


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


def available(catalog: list[CatalogEntry], registry: Registry) -> list[dict[str, Any]]:
    """``mdm plugins --available``: every catalogued plug-in with what it adds, whether (and at
    which version) it is installed, and whether it declares support for the running core."""
    rows = {row["distribution"]: row for row in compare_installed(catalog, registry)}
    current = core_version()
    return [
        {
            **rows[entry.distribution],
            "summary": entry.summary,
            "components": {kind: list(names) for kind, names in entry.components.items()},
            "sections": list(entry.spec_sections),
            "core": entry.core,
            "supports_this_core": entry.admits(current),
            "install": f"mdm install {entry.distribution.removeprefix('mdm-plugin-')}",
        }
        for entry in catalog
    ]


# --------------------------------------------------------------------------------------------
# The compatibility matrix
# --------------------------------------------------------------------------------------------

CHECK_OWN = "own tests"
CHECK_PAIR = "composed training run"


class MatrixResult(BaseModel):
    """One cell: a plug-in's own tests (one name) or a pair composed in a training run (two).

    A pair is "not applicable" when both plug-ins provide only the same kinds (one run cannot use
    both; plug-ins that share a slot but not all of them are composed through the others),
    and "refused" when ``mdm spec validate`` refuses the composed spec (exit 2: one side would
    ignore or misuse the other), so that a pair is "pass" only when it is meaningful and trains.
    Own tests run against the core at the plug-in's oldest supported version and at main
    (``core``: the version tested; one run when the two are the same).
    """

    model_config = ConfigDict(extra="forbid")

    plugins: list[str] = Field(min_length=1, max_length=2)
    check: Literal["own tests", "composed training run"]
    status: Literal["pass", "fail", "refused", "not applicable", "not yet generated"]
    seconds: float | None = None
    command: str = ""
    core: str = Field(default="", description="core version checked against, e.g. 'oldest = main (0.2.0)'")
    detail: str = Field(default="", description="why a pair was refused (the first line of the error)")


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
    "refused": "refused (exit 2)",
    "not applicable": "n/a",
    "not yet generated": "not yet generated",
}


def oldest_supported(core_range: str) -> str | None:
    """The oldest core version a range like ``mdm-diffusion>=0.2,<0.3`` admits: its inclusive
    lower bound (``>=``, ``==``, ``~=``); None when it has none (``>0.2``, ``<0.3`` alone)."""
    bounds = [
        Version(spec.version)
        for spec in Requirement(core_range).specifier
        if spec.operator in (">=", "==", "~=") and "*" not in spec.version
    ]
    return str(max(bounds)) if bounds else None


def write_matrix(
    results: list[MatrixResult],
    out_dir: Path,
    environment: dict[str, str] | None = None,
    plugin_versions: dict[str, str] | None = None,
) -> None:
    """Write ``matrix.json`` and ``matrix.md``: a grid (diagonal: own tests at main; off-diagonal:
    pairs) and one row per check. ``environment`` (core, torch, python versions) and the plug-in
    versions head both files, with the date; without them the matrix is marked as not yet
    generated."""
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") if environment else None
    payload = {
        "generated": generated,
        "environment": environment or {},
        "plugin_versions": plugin_versions or {},
        "results": [r.model_dump() for r in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.json").write_text(json.dumps(payload, indent=1) + "\n")

    names = list(dict.fromkeys(p for r in results for p in r.plugins))
    # The grid shows own tests at main (the last row of a plug-in's checks) and every pair.
    # A grid cell is "pass" only when every check behind it passed (own tests: oldest and main).
    cell: dict[tuple[str, ...], str] = {}
    for r in results:
        key = tuple(sorted(r.plugins))
        if cell.get(key, _MARK["pass"]) == _MARK["pass"]:
            cell[key] = _MARK[r.status]
    if generated:
        env = ", ".join(f"{k} {v}" for k, v in (environment or {}).items())
        origin = f"Written by `nox -s matrix` on {generated} ({env})."
        if plugin_versions:
            origin += " Plug-ins: " + ", ".join(f"{k} {v}" for k, v in plugin_versions.items()) + "."
    else:
        origin = "Not yet generated: run `nox -s matrix` to fill it in."
    lines = [
        "# Compatibility matrix",
        "",
        origin,
        "",
        "Diagonal: the plug-in's own tests against the core, at its oldest supported version and at",
        "main. Elsewhere: the two plug-ins composed in a short real training run of",
        "`specs/quickstart.yaml` with both components selected, after `mdm spec validate` accepted",
        "the pair; a pair it refuses (one side would ignore or misuse the other) reads",
        "`refused (exit 2)`, a pair filling nothing but the same slot `n/a` (two plug-ins sharing a",
        "slot are composed through a slot only one of them fills, e.g. PUMA's process + the block sampler).",
        "",
        "| | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for a in names:
        row = [cell.get(tuple(sorted({a, b})), "–") for b in names]
        lines.append(f"| **{a}** | " + " | ".join(row) + " |")
    lines += ["", "| plug-ins | check | result | seconds | core | detail |", "|---|---|---|---|---|---|"]
    for r in results:
        seconds = f"{r.seconds:.0f}" if r.seconds is not None else ""
        detail = r.detail.replace("|", "\\|")
        lines.append(
            f"| {' + '.join(r.plugins)} | {r.check} | {_MARK[r.status]} | {seconds} | {r.core} | {detail} |"
        )
    (out_dir / "matrix.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m mdm_core.registry_catalog schema DIR``: validate DIR's entries and rewrite its
    schema.json; ``... matrix RESULTS.json DIR``: write DIR's matrix files from ``nox -s matrix``
    results, with the versions of this environment (the one the checks ran in); ``... oldest
    RANGE``: print the oldest core version a plug-in's range admits (exit 2 when unbounded)."""
    parser = argparse.ArgumentParser(prog="python -m mdm_core.registry_catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema").add_argument("directory", type=Path)
    matrix = sub.add_parser("matrix")
    matrix.add_argument("results", type=Path)
    matrix.add_argument("directory", type=Path)
    sub.add_parser("oldest").add_argument("range")
    args = parser.parse_args(argv)
    try:
        if args.command == "oldest":
            oldest = oldest_supported(args.range)
            if oldest is None:
                raise MdmError(f"{args.range} has no lower bound; declare one, e.g. '{_EXAMPLE_RANGE}'", 2)
            print(oldest)
        elif args.command == "schema":
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
            names = dict.fromkeys(p for r in results for p in r.plugins)
            versions = {f"mdm-plugin-{n}": _installed_version(f"mdm-plugin-{n}") for n in names}
            write_matrix(results, args.directory, environment, versions)
            print(f"wrote {args.directory / 'matrix.md'} and matrix.json")
    except MdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
