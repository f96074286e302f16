"""``mdm export RUN DIR``: a finished run as a self-contained model folder (Hugging Face layout).

The folder (see :mod:`mdm_core.pretrained` for its files) is written into a temporary sibling and
renamed into place, so ``DIR`` is either the old folder or the complete new one, never half of
either. ``--push-to-hub`` uploads the finished folder with ``huggingface_hub`` (online users).
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mdm_core import runs
from mdm_core.assembly import DATA_DIR, VALIDATION_FILE, LoadedRun, load_run
from mdm_core.errors import MdmError, SpecError
from mdm_core.plugins import CORE_DISTRIBUTION, Registry, core_version, get_registry
from mdm_core.pretrained import (
    CARD,
    CONFIG,
    FORMAT,
    HF_TOKENIZER,
    HUB_ID,
    MDM_TOKENIZER,
    MODEL_KINDS,
    SPEC,
    VALIDATION,
    WEIGHTS,
    is_run_dir,
)
from mdm_core.spec import Component

#: ``upload(folder, repo_id) -> URL``: how a finished folder reaches the Hub (tests pass their own).
Uploader = Callable[[Path, str], str]


@dataclass
class Exported:
    """Where a run was exported, its step, and the Hub URL when it was pushed."""

    path: Path
    step: int
    url: str | None = None


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    force: bool = False,
    with_data: bool = True,
    push_to_hub: str | None = None,
    private: bool = False,
    upload: Uploader | None = None,
) -> Exported:
    """Write ``run_dir``'s last checkpoint (EMA weights if any) as a model folder ``out_dir``.

    ``out_dir`` must be new or empty unless ``force`` (never a run, never the run's own folder);
    ``with_data`` also exports the validation split, so ``mdm eval DIR`` needs no data.
    """
    run_dir, out = Path(run_dir), Path(out_dir)
    if out.name in ("", ".."):  # ``.`` or ``..``: the folder is renamed, so it needs a real name
        out = out.resolve()
    if not is_run_dir(run_dir):
        raise MdmError(f"export: {run_dir} is not a run directory (no resolved.yaml)", exit_code=2)
    if push_to_hub is not None and not HUB_ID.match(push_to_hub):
        raise SpecError(f"--push-to-hub: {push_to_hub!r} is not a Hub repository id; write owner/name")
    _check_target(run_dir, out, force)
    loaded = load_run(run_dir, device="cpu")
    registry = get_registry()
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_folder(tmp, loaded, registry, with_data, address=push_to_hub or str(out))
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = Exported(path=out, step=loaded.step)
    if push_to_hub is not None:
        push = upload or functools.partial(hub_upload, private=private)
        result.url = push(out, push_to_hub)
    return result


def _check_target(run_dir: Path, out: Path, force: bool) -> None:
    """Exit 2 for a destination that is a file, holds something (without ``force``), holds a run,
    or contains the run being exported (replacing it would delete the run)."""
    if out.exists() and not out.is_dir():
        raise SpecError(f"export: {out} is a file; name a new folder")
    resolved_run, resolved_out = run_dir.resolve(), out.resolve()
    if resolved_out == resolved_run or resolved_out in resolved_run.parents:
        raise SpecError(f"export: {out} contains the run {run_dir}; export into a folder outside it")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if runs.holds_run(out):
        raise SpecError(
            f"export: {out} holds a training run; --force never replaces a run; choose another DIR"
        )
    if not force:
        raise SpecError(
            f"export: {out} exists and is not empty; choose a new folder or pass --force to replace it"
        )


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; an old ``out`` is moved aside first, then removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_folder(folder: Path, loaded: LoadedRun, registry: Registry, with_data: bool, address: str) -> None:
    """Every file of the exported folder; ``address`` is how the card's examples name the model."""
    from safetensors.torch import save_file

    config = model_config(loaded, registry)
    saved_tokenizer = (loaded.run_dir / "tokenizer.json").read_text()
    (folder / MDM_TOKENIZER).write_text(saved_tokenizer)
    library_json = _library_tokenizer(json.loads(saved_tokenizer))
    if library_json is not None:
        (folder / HF_TOKENIZER).write_text(library_json)
        config["tokenizer"]["library_file"] = HF_TOKENIZER
    (folder / SPEC).write_text((loaded.run_dir / "resolved.yaml").read_text())
    state = {k: v.detach().cpu().contiguous().clone() for k, v in loaded.parts.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", "step": str(loaded.step)})
    shutil.copymode(folder / MDM_TOKENIZER, folder / WEIGHTS)  # safetensors writes it owner-only
    config["eval"]["validation"] = VALIDATION if with_data else None
    if with_data:
        (folder / VALIDATION).parent.mkdir()
        shutil.copyfile(loaded.run_dir / DATA_DIR / VALIDATION_FILE, folder / VALIDATION)
    (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
    (folder / CARD).write_text(model_card(loaded, config, address))  # last: it reads the run's metrics


def _library_tokenizer(saved: dict[str, Any]) -> str | None:
    """The ``tokenizers`` library's JSON when the run's tokenizer wraps one (BPE), else None."""
    inner = saved.get("tokenizer")
    if not isinstance(inner, str):
        return None
    try:
        parsed = json.loads(inner)
    except ValueError:
        return None
    return inner if isinstance(parsed, dict) and "model" in parsed else None


def _entry(component: Component, registry: Registry) -> dict[str, Any]:
    plugin = registry.provider(component.kind, component.name)
    return {
        "name": component.name.rpartition(":")[2],
        "distribution": plugin.distribution,
        "version": plugin.version,
        "params": component.params.model_dump(mode="json"),
    }


def model_config(loaded: LoadedRun, registry: Registry) -> dict[str, Any]:
    """``config.json``: every component a model needs to generate and evaluate, with the
    distribution and version that provided it, its full parameters, and the run's shape."""
    spec, parts = loaded.spec, loaded.parts
    shape = asdict(parts.shape)
    vocab, seq_len = shape.pop("vocab"), shape.pop("seq_len")
    shape.pop("rank")
    config: dict[str, Any] = {
        "mdm_format": FORMAT,
        "library_name": CORE_DISTRIBUTION,
        "core_version": core_version(),
        "name": spec.run.name,
        "step": loaded.step,
        "weights": "ema" if spec.run.trainer.ema > 0 else "model",
        "num_parameters": sum(p.numel() for p in parts.model.parameters()),
        "vocab": vocab,
        "seq_len": seq_len,
        "run_shape": shape,
        **{kind: _entry(spec.components[kind], registry) for kind in MODEL_KINDS},
        "evaluators": [_entry(e, registry) for e in spec.evaluators],
        "eval": {"batch_size": spec.run.trainer.eval_batch_size, "seed": spec.run.trainer.seed},
        "tokenizer": {"file": MDM_TOKENIZER, "type": parts.bundle.tokenizer.to_json().get("type")},
        "data": {"source": spec.resolved["data"], "info": parts.bundle.info},
    }
    record = parts.forward_process.inference()
    config["forward_process"]["inference"] = {
        "structure": record.structure,
        "block_size": record.block_size,
        "time_input": record.time_input,
    }
    return config


def training_command(run_dir: Path) -> str:
    """The command that trained the run, rebuilt from ``overrides.json`` (spec file and overrides,
    those of later resumes included)."""
    path = run_dir / "overrides.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    source = record.get("source") or str(run_dir / "spec.yaml")
    return shlex.join(["mdm", "train", source, *record.get("overrides", [])])


def _last_evaluation(run_dir: Path) -> dict[str, Any]:
    evals = [m for m in runs.read_metrics(run_dir) if m.get("kind") == "eval"]
    return evals[-1] if evals else {}


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def model_card(loaded: LoadedRun, config: dict[str, Any], address: str) -> str:
    """README.md in the Hugging Face model-card form: YAML front matter, then what the model is,
    how it was trained (data, steps, the exact command), its last evaluation and how to use it
    (``address``: the folder or Hub id the examples load)."""
    last = _last_evaluation(loaded.run_dir)
    metrics = {k: v for k, v in last.items() if k.startswith("val/")}
    summary_path = loaded.run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    components = [config[kind] for kind in MODEL_KINDS]
    needs = sorted({f"{c['distribution']}=={c['version']}" for c in [*components, *config["evaluators"]]})
    vocab = config["vocab"]
    weights = "EMA" if config["weights"] == "ema" else "raw"
    lines = [
        "---",
        f"library_name: {CORE_DISTRIBUTION}",
        "tags:",
        "- mdm",
        "- masked-diffusion",
        "- diffusion-language-model",
        *[f"- {c['name']}" for c in components],
        "---",
        "",
        f"# {config['name']}",
        "",
        f"A masked diffusion language model trained with mdm ({CORE_DISTRIBUTION} "
        f"{config['core_version']}), exported at step {config['step']} ({weights} weights, "
        f"{config['num_parameters']:,} parameters).",
        "",
        "## Model",
        "",
        "| part | component | parameters |",
        "|---|---|---|",
        *[
            f"| {kind} | {c['name']} ({c['distribution']} {c['version']}) | {_params_text(c['params'])} |"
            for kind, c in zip(MODEL_KINDS, components, strict=True)
        ],
        "",
        f"Vocabulary: {vocab['size']} ids ({vocab['size'] - 2} regular, PAD {vocab['pad_id']}, "
        f"MASK {vocab['mask_id']}); tokenizer `{config['tokenizer']['type']}`; sequence length "
        f"{config['seq_len']}.",
        "",
        "## Training",
        "",
        f"- data: `{config['data']['source'].get('name')}` "
        f"({_params_text({k: v for k, v in config['data']['source'].items() if k != 'name'})})",
        *[f"- {k}: {v}" for k, v in config["data"]["info"].items() if not isinstance(v, dict | list)],
        f"- steps: {summary.get('steps', config['step'])}, tokens: {summary.get('tokens', '?')}",
        "",
        "Trained with:",
        "",
        "```console",
        f"$ {training_command(loaded.run_dir)}",
        "```",
        "",
        f"The resolved spec is `{SPEC}`; `mdm train {SPEC}` trains the same run again.",
        "",
        "## Evaluation",
        "",
    ]
    if metrics:
        lines += [
            f"Last evaluation of the run, at step {last['step']}:",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    else:
        lines.append("The run recorded no evaluation.")
    lines += [
        "",
        "## Use",
        "",
        "```console",
        f"$ pip install {' '.join(shlex.quote(n) for n in needs)}",
        f"$ mdm sample {shlex.quote(address)} --num 4",
        f"$ mdm eval {shlex.quote(address)}" + ("" if config["eval"]["validation"] else " --data TEXT_FILE"),
        "```",
        "",
        "```python",
        "from mdm_core import load_pretrained",
        "",
        f"model = load_pretrained({address!r})",
        "print(model.decode(model.generate(num=2, seed=0)))",
        "```",
        "",
    ]
    return "\n".join(lines)


def hub_upload(folder: Path, repo_id: str, private: bool = False) -> str:
    """Create the model repository if needed and upload ``folder`` to it; its URL."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise MdmError(
            f"--push-to-hub needs huggingface_hub (pip install huggingface_hub); {folder} is "
            "complete, upload it yourself or install it and export again",
            exit_code=2,
        ) from None
    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, commit_message=f"mdm export {folder.name}"
        )
    except Exception as exc:  # offline, not logged in, no permission: the same advice
        raise MdmError(
            f"--push-to-hub {repo_id}: upload failed ({type(exc).__name__}: {exc}); {folder} is "
            "complete: log in (hf auth login, or HF_TOKEN) and connect, then run "
            f"hf upload {repo_id} {folder}",
        ) from None
    return str(url)
