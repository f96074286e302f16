"""``mdm install`` / ``mdm uninstall`` run pip in mdm's own interpreter, expanding short names;
``mdm plugins --available`` lists the catalogue against what is installed. The real install runs
in a throwaway virtual environment, from a local folder, with no index (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mdm_core.cli import main
from mdm_core.errors import MdmError
from mdm_core.install import expand, pip_arguments, pip_command
from mdm_core.registry_catalog import load_catalog, shipped_catalog_dir
from mdm_core.scaffold import new_plugin

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("bell", "mdm-plugin-bell"),
        ("bell>=0.2", "mdm-plugin-bell>=0.2"),
        ("bell[extra]==0.2.0", "mdm-plugin-bell[extra]==0.2.0"),
        ("mdm-plugin-bell", "mdm-plugin-bell"),
        ("mdm_plugin_bell", "mdm_plugin_bell"),
        ("mdm-diffusion", "mdm-diffusion"),
        ("./plugins/mdm-plugin-bell", "./plugins/mdm-plugin-bell"),
        ("/abs/path", "/abs/path"),
        ("git+https://example.org/x.git", "git+https://example.org/x.git"),
        ("dist/mdm_plugin_x-0.1.0-py3-none-any.whl", "dist/mdm_plugin_x-0.1.0-py3-none-any.whl"),
    ],
)
def test_short_names_expand_and_everything_else_passes_through(given: str, expected: str) -> None:
    assert expand(given) == expected


def test_pip_options_and_their_values_pass_through_untouched() -> None:
    args = ["-e", "somewhere", "--upgrade", "bell", "--target", "site", "--no-deps", "--index-url=x", "dit"]
    assert pip_arguments(args) == [
        "-e", "somewhere", "--upgrade", "mdm-plugin-bell", "--target", "site", "--no-deps", "--index-url=x",
        "mdm-plugin-dit",
    ]  # fmt: skip
    assert pip_command("install", ["bell"])[:4] == [sys.executable, "-m", "pip", "install"]
    assert pip_command("uninstall", ["bell"])[-2:] == ["mdm-plugin-bell", "--yes"]
    assert pip_command("uninstall", ["-y", "bell"]).count("--yes") == 0
    with pytest.raises(MdmError):
        pip_command("download", ["bell"])


def test_no_name_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install"]) == 2
    assert main(["uninstall", "--yes"]) == 2
    assert "name at least one plug-in" in capsys.readouterr().err


def _venv(tmp_path: Path) -> Path:
    """A fresh environment that sees this one's packages (mdm, pip, setuptools) through a .pth
    file but installs into its own site-packages; its python."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    parent = sysconfig.get_paths()["purelib"]  # addsitedir: its .pth files (editable installs) too
    (Path(site) / "parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def test_install_and_uninstall_a_local_plugin_in_a_throwaway_environment(tmp_path: Path) -> None:
    source = new_plugin("tiny-install", "time_sampler", tmp_path)
    python = _venv(tmp_path)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def mdm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), "-m", "mdm_core.cli", *args], capture_output=True, text=True, env=env, cwd=tmp_path
        )

    done = mdm("install", "-e", str(source), "--no-deps", "--no-build-isolation", "-q")
    assert done.returncode == 0, done.stderr
    assert f"$ {python} -m pip install -e {source}" in done.stderr  # this interpreter's pip, as given
    listed = json.loads(mdm("plugins", "--json").stdout)
    ours = {p["distribution"]: p for p in listed["plugins"]}["mdm-plugin-tiny-install"]
    assert ours["components"] == {"time_sampler": ["tiny_install"]} and ours["error"] is None
    assert not list(Path(sysconfig.get_paths()["purelib"]).glob("*tiny_install*"))  # not in ours

    done = mdm("uninstall", "tiny-install")  # the short name, expanded; no prompt
    assert done.returncode == 0, done.stderr
    assert "mdm-plugin-tiny-install --yes" in done.stderr
    gone = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; m.version('mdm-plugin-tiny-install')"]
    )
    assert gone.returncode != 0


def _entry(folder: Path, name: str, version: str, core: str = "mdm-diffusion>=0.2,<0.3") -> None:
    (folder / "plugins").mkdir(parents=True, exist_ok=True)
    (folder / "plugins" / f"{name}.toml").write_text(
        f'distribution = "{name}"\nversion = "{version}"\nsummary = "s of {name}"\n'
        f'components = {{ time_sampler = ["x"] }}\ncore = "{core}"\nsource = "https://example.org"\n'
        'status = "third-party"\n'
    )


def test_available_lists_the_catalogue_against_what_is_installed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = {e.distribution for e in load_catalog(shipped_catalog_dir())}
    assert shipped == {e.distribution for e in load_catalog(ROOT / "registry")}
    assert main(["plugins", "--available", "--json"]) == 0
    rows = {r["distribution"]: r for r in json.loads(capsys.readouterr().out)["plugins"]}
    assert set(rows) == shipped and rows["mdm-plugin-bell"]["status"] == "ok"

    _entry(tmp_path, "mdm-plugin-bell", "9.9.9")
    _entry(tmp_path, "mdm-plugin-nowhere", "0.1.0", core="mdm-diffusion>=7")
    assert main(["plugins", "--available", "--registry", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    bell = out[out.index("mdm-plugin-bell") :].splitlines()
    assert "9.9.9" in bell[0] and "version differs" in bell[1]
    nowhere = out[out.index("mdm-plugin-nowhere") :].splitlines()
    assert "not installed" in nowhere[0]
    assert "mdm install nowhere" in nowhere[1] and "declares mdm-diffusion>=7, not this core" in nowhere[1]
