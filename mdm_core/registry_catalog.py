"""The plug-in catalogue in ``registry/``: one TOML file per known plug-in, and the matrix.

The pydantic model is the schema (``registry/schema.json`` is generated from it and a test keeps
the two equal), so a malformed entry fails CI with the field that is wrong.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mdm_core.errors import MdmError
from mdm_core.plugins import Registry


class CatalogEntry(BaseModel):
    """One known plug-in distribution."""

    model_config = ConfigDict(extra="forbid")

    distribution: str
    version: str
    summary: str
    components: dict[str, list[str]]
    core: str
    source: str
    status: Literal["first-party", "third-party", "experimental"]


def load_catalog(directory: Path) -> list[CatalogEntry]:
    entries = []
    for path in sorted(Path(directory).glob("plugins/*.toml")):
        try:
            entries.append(CatalogEntry.model_validate(tomllib.loads(path.read_text())))
        except (ValidationError, tomllib.TOMLDecodeError) as exc:
            raise MdmError(f"registry entry {path} is invalid: {exc}", exit_code=2) from None
    if not entries:
        raise MdmError(f"{directory} holds no registry entries (plugins/*.toml)", exit_code=2)
    return entries


def compare_installed(catalog: list[CatalogEntry], registry: Registry) -> list[dict[str, str]]:
    """Installed versions against the catalogue, one row per distribution."""
    installed = {p.distribution: p.version for p in registry.plugins if p.distribution != "mdm-core"}
    rows = []
    for entry in catalog:
        have = installed.pop(entry.distribution, None)
        status = "not installed" if have is None else ("ok" if have == entry.version else "version differs")
        rows.append({"distribution": entry.distribution, "catalogued": entry.version,
                     "installed": have or "-", "status": status})  # fmt: skip
    for dist, version in sorted(installed.items()):
        rows.append(
            {"distribution": dist, "catalogued": "-", "installed": version, "status": "not catalogued"}
        )
    return rows


def write_matrix(results: list[dict[str, Any]], out_dir: Path) -> None:
    """Write matrix.json and matrix.md from ``nox -s matrix`` results."""
    (out_dir / "matrix.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = ["# Compatibility matrix", "", "Written by `nox -s matrix`.", "",
             "| plug-ins | check | result |", "|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(f"| {' + '.join(r['plugins'])} | {r['check']} | {'pass' if r['ok'] else 'FAIL'} |")
    (out_dir / "matrix.md").write_text("\n".join(lines) + "\n")
