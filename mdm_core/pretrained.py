"""Exported models (``mdm export``): the folder layout, and rebuilding a model from one.

An exported folder is what leaves mdm, in the Hugging Face layout: ``config.json`` names every
component a model needs to generate (backbone, forward process, sampler, evaluators) with the
distribution and version that provided it and its full parameters; ``model.safetensors`` holds the
weights; ``mdm_tokenizer.json`` the run's tokenizer (plus ``tokenizer.json`` in the ``tokenizers``
library's own format when the run's tokenizer is one, so other tools read it); ``mdm_spec.yaml``
the resolved spec; ``README.md`` the model card; ``data/validation.parquet`` (optional) the run's
validation split, so ``mdm eval`` reproduces the card's numbers.

:func:`load_pretrained` rebuilds the model from ``config.json`` alone: no data source is built or
read, and a local folder never touches the network. A Hub id is downloaded with
``huggingface_hub`` first (online users only).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from mdm_core.errors import MdmError, PluginError, SpecError
from mdm_core.interfaces import (
    Backbone,
    EvalContext,
    Evaluator,
    ForwardProcess,
    RunShape,
    SampleOutput,
    Sampler,
    SamplingContext,
    Tokenizer,
    Vocab,
)
from mdm_core.plugins import get_registry, normalise
from mdm_core.spec import Component

#: The version of the exported layout; a folder of a newer one is refused, not misread.
FORMAT = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MDM_TOKENIZER = "mdm_tokenizer.json"
HF_TOKENIZER = "tokenizer.json"
SPEC = "mdm_spec.yaml"
CARD = "README.md"
VALIDATION = "data/validation.parquet"
#: The components ``config.json`` names, in the order a run builds them.
MODEL_KINDS = ("backbone", "forward_process", "sampler")

#: ``owner/name`` as the Hugging Face Hub spells a repository id.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Downloader = Callable[[str], str]


@dataclass
class Pretrained:
    """A model rebuilt for generation (and, with data, evaluation); the backbone is in eval mode.

    ``components`` are the validated choices of backbone, forward process and sampler (so a
    sampler can be swapped and checked against the process, as in a spec); ``config`` is the
    folder's ``config.json`` (empty for a run directory opened by :func:`open_model`).
    """

    path: Path
    config: dict[str, Any]
    shape: RunShape
    model: Backbone
    forward_process: ForwardProcess
    sampler: Sampler
    tokenizer: Tokenizer
    components: dict[str, Component]
    device: torch.device
    step: int

    def sampling_context(self) -> SamplingContext:
        return SamplingContext.of(self.forward_process, self.device)

    def generate(
        self,
        num: int = 1,
        seed: int = 0,
        length: int | None = None,
        prompt: str | None = None,
        sampler: Sampler | None = None,
    ) -> SampleOutput:
        """``num`` sequences of ``length`` (default: the training length), each starting with the
        text ``prompt`` if given; the same seed gives the same samples (``mdm sample`` calls this)."""
        length = length or self.shape.seq_len
        fixed = fixed_mask = None
        if prompt:
            ids = self.tokenizer.encode(prompt)[:length]
            fixed = torch.full((num, length), self.shape.vocab.mask_id, dtype=torch.long)
            fixed[:, : len(ids)] = torch.tensor(ids)
            fixed_mask = torch.zeros_like(fixed, dtype=torch.bool)
            fixed_mask[:, : len(ids)] = True
            fixed, fixed_mask = fixed.to(self.device), fixed_mask.to(self.device)
        generator = torch.Generator().manual_seed(seed)
        return (sampler or self.sampler).generate(
            self.model, self.sampling_context(), num, length, generator, prompt=fixed, prompt_mask=fixed_mask
        )

    def decode(self, out: SampleOutput) -> list[str]:
        """The generated sequences as text."""
        return [self.tokenizer.decode(row.tolist()) for row in out.tokens.cpu()]

    def evaluation(self, data: Path | None = None) -> tuple[list[Evaluator], EvalContext]:
        """The run's evaluators and their context, on the text file ``data`` (tokenized and cut
        into rows of ``seq_len``) or else on the validation split exported with the model."""
        evaluators = [
            _component(self.path, "evaluator", entry, f"evaluators[{i}]").build(self.shape)
            for i, entry in enumerate(self.config.get("evaluators", []))
        ]
        ctx = EvalContext(
            model=self.model,
            vocab=self.shape.vocab,
            dataset=self._eval_rows(data),
            forward_process=self.forward_process,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            device=self.device,
            batch_size=int(self.config["eval"]["batch_size"]),
            seed=int(self.config["eval"]["seed"]),
            data_source=None,  # the run's data is not part of a model
        )
        return evaluators, ctx

    def _eval_rows(self, data: Path | None) -> Any:
        import datasets
        import numpy as np
        import pyarrow.parquet as pq

        from mdm_core.data.loader import rows_dataset

        if data is None:
            saved = self.path / VALIDATION
            if not saved.is_file():
                raise MdmError(
                    f"{self.path} was exported without its validation split ({VALIDATION}); "
                    "pass --data FILE, a text file to evaluate on",
                    exit_code=2,
                )
            return datasets.Dataset(pq.read_table(saved))
        if not data.is_file():
            raise MdmError(f"--data: no such file: {data}", exit_code=2)
        ids = self.tokenizer.encode(data.read_text(encoding="utf-8"))
        rows = len(ids) // self.shape.seq_len
        if rows == 0:
            raise MdmError(
                f"--data: {data} has {len(ids)} tokens, fewer than one row of seq_len "
                f"{self.shape.seq_len}; give more text",
                exit_code=2,
            )
        return rows_dataset(np.asarray(ids[: rows * self.shape.seq_len]).reshape(rows, self.shape.seq_len))


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a training run's directory (rather than an exported model or a Hub id)."""
    return (Path(path) / "resolved.yaml").is_file()


def load_pretrained(
    source: str | Path, device: str | torch.device | None = None, download: Downloader | None = None
) -> Pretrained:
    """Rebuild backbone (with its weights), tokenizer, forward process and sampler from an exported
    folder, or from a Hugging Face Hub id (``owner/name``) when no such local folder exists.

    ``download(repo_id) -> local folder`` defaults to ``huggingface_hub.snapshot_download``.
    """
    folder = _local_folder(source, download)
    config = read_config(folder)
    components = {kind: _component(folder, kind, config[kind], kind) for kind in MODEL_KINDS}
    tokenizer = _tokenizer(folder)
    shape = RunShape(
        vocab=Vocab(**config["vocab"]), seq_len=int(config["seq_len"]), **config["run_shape"], rank=0
    )
    if tokenizer.vocab != shape.vocab:
        raise MdmError(
            f"{folder / MDM_TOKENIZER} gives {tokenizer.vocab} but {folder / CONFIG} says {shape.vocab}; "
            "the folder was altered: export the run again",
            exit_code=2,
        )
    torch.manual_seed(shape.seed)  # as training built it (weights are loaded next)
    model: Backbone = components["backbone"].build(shape)
    _load_weights(model, folder / WEIGHTS)
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(where).eval()
    process: ForwardProcess = components["forward_process"].build(shape)
    _check_inference(folder, config, process)
    return Pretrained(
        path=folder,
        config=config,
        shape=shape,
        model=model,
        forward_process=process,
        sampler=components["sampler"].build(shape),
        tokenizer=tokenizer,
        components=components,
        device=where,
        step=int(config.get("step", 0)),
    )


def _local_folder(source: str | Path, download: Downloader | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise MdmError(
                f"{path} is neither a run directory (no resolved.yaml) nor an exported model "
                f"(no {CONFIG}); export a run with: mdm export RUN_DIR {path}",
                exit_code=2,
            )
        return path
    if path.exists():
        raise MdmError(f"{path} is a file; name an exported model's folder", exit_code=2)
    if not HUB_ID.match(str(source)):
        raise MdmError(f"{source}: no such folder (and not a Hub id like owner/name)", exit_code=2)
    return Path(_download(str(source), download))


def _download(repo_id: str, download: Downloader | None) -> str:
    """The Hub repository ``repo_id`` as a local folder; a clear error offline or without the library."""
    if download is None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise MdmError(
                f"{repo_id} is not a local folder; to load it from the Hugging Face Hub install "
                "huggingface_hub (pip install huggingface_hub), or pass an exported folder",
                exit_code=2,
            ) from None

        def download(repo: str) -> str:
            return str(snapshot_download(repo_id=repo))

    try:
        return download(repo_id)
    except Exception as exc:  # the Hub's errors (offline, unknown repo, auth) all mean the same here
        raise MdmError(
            f"{repo_id}: no such local folder, and downloading it as a model id from the Hugging "
            f"Face Hub failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "check the path or id, connect to the network (hf auth login for a private model), "
            "or pass a local exported folder",
            exit_code=2,
        ) from None


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json``, checked for the keys and the format this core reads."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MdmError(f"{path} is unreadable ({exc}); export the run again", exit_code=2) from None
    if not isinstance(config, dict):
        raise MdmError(f"{path} is not an exported mdm model's config (not a JSON object)", exit_code=2)
    fmt = config.get("mdm_format")
    if not isinstance(fmt, int):
        raise MdmError(
            f"{path} is not an mdm model's config (no mdm_format); it was not written by mdm export",
            exit_code=2,
        )
    if fmt > FORMAT:
        raise MdmError(
            f"{path} has export format {fmt}, newer than this mdm reads ({FORMAT}); it was written by "
            f"mdm-diffusion {config.get('core_version', '?')}: upgrade mdm-diffusion",
            exit_code=2,
        )
    missing = [k for k in (*MODEL_KINDS, "vocab", "seq_len", "run_shape", "eval") if k not in config]
    if missing:
        raise MdmError(f"{path} lacks {', '.join(missing)}; export the run again", exit_code=2)
    return config


def _component(folder: Path, kind: str, entry: dict[str, Any], key: str) -> Component:
    """The component ``entry`` of ``config.json`` names, from the distribution that exported it.

    A missing distribution (or one that no longer provides the name) is exit 3, naming it and its
    version; another installed version is a warning (the weights are checked against the model).
    """
    where = f"{folder / CONFIG}: {key}"
    name = str(entry.get("name", "")).rpartition(":")[2]
    dist, version = str(entry.get("distribution", "?")), str(entry.get("version", "?"))
    registry = get_registry()
    try:
        cls = registry.load(kind, f"{dist}:{name}", where=f"{key}.name")
    except SpecError:
        raise PluginError(
            f"{where}: {kind} '{name}' comes from {dist} {version}, which is not installed here (or "
            f"no longer provides it); install it (pip install '{dist}=={version}') and load again"
        ) from None
    except PluginError as exc:
        raise PluginError(f"{where}: {exc}") from None
    installed = next(
        e.plugin
        for e in registry.providers(kind, name)
        if normalise(e.plugin.distribution) == normalise(dist)
    )
    if installed.version != version:
        print(
            f"warning: {where}: exported with {dist} {version}, {installed.version} is installed",
            file=sys.stderr,
        )
    try:
        params = cls.Params.model_validate(entry.get("params", {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        dotted = ".".join(str(p) for p in err["loc"])
        raise PluginError(
            f"{where}.params.{dotted}: {err['msg']}: {installed.label} does not accept the exported "
            f"parameters of {kind} '{name}' (exported with {dist} {version}); install that version"
        ) from None
    return Component(kind, name, cls, params, key)


def _check_inference(folder: Path, config: dict[str, Any], process: ForwardProcess) -> None:
    """The rebuilt process must generate as the exported one did (a plug-in upgrade that changed
    the structure or blocks would make every sample wrong without an error)."""
    saved = config["forward_process"].get("inference")
    if saved is None:
        return
    record = process.inference()
    now = {"structure": record.structure, "block_size": record.block_size, "time_input": record.time_input}
    changed = [f"{k}: {saved.get(k)!r} exported, {v!r} here" for k, v in now.items() if saved.get(k) != v]
    if changed:
        entry = config["forward_process"]
        raise PluginError(
            f"{folder / CONFIG}: forward process '{entry['name']}' rebuilds a different inference record "
            f"({'; '.join(changed)}); install {entry['distribution']}=={entry['version']}"
        )


def _tokenizer(folder: Path) -> Tokenizer:
    from mdm_core.data.tokenizers import tokenizer_from_json

    path = folder / MDM_TOKENIZER
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MdmError(f"{path} is unreadable ({exc}); export the run again", exit_code=2) from None
    return tokenizer_from_json(saved)


def _load_weights(model: Backbone, path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mdm_core.checkpoint import check_fits

    try:
        state = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise MdmError(f"{path} is unreadable ({exc}); export the run again", exit_code=3) from None
    check_fits(path, state, model.state_dict())
    model.load_state_dict(state)


def open_model(source: str | Path, device: str | torch.device | None = None) -> Pretrained:
    """What ``mdm sample`` generates from: a run directory's last checkpoint (EMA weights if any),
    an exported folder or a Hub id, all as one :class:`Pretrained`."""
    if not is_run_dir(source):
        return load_pretrained(source, device)
    from mdm_core.assembly import load_run

    loaded = load_run(source, device)
    parts = loaded.parts
    return Pretrained(
        path=loaded.run_dir,
        config={},
        shape=parts.shape,
        model=parts.model,
        forward_process=parts.forward_process,
        sampler=parts.sampler,
        tokenizer=parts.bundle.tokenizer,
        components={kind: loaded.spec.components[kind] for kind in MODEL_KINDS},
        device=loaded.device,
        step=loaded.step,
    )
