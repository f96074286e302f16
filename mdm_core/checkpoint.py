"""Atomic checkpoints: tensors in safetensors, everything else in JSON; never pickle.

A checkpoint is a folder ``ckpt/step-00001000/`` written under a temporary name and renamed
into place, then ``ckpt/latest`` is replaced atomically. A crash at any moment leaves the
previous checkpoint intact and ``latest`` pointing at a complete folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mdm_core.errors import MdmError


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def flatten(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested state into ``{dotted: tensor}`` and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for key, value in state.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[dotted] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, dict):
            sub_t, sub_p = flatten(value, dotted + ".")
            tensors.update(sub_t)
            plain[str(key)] = sub_p
        else:
            json.dumps(value)  # fail loudly on state that cannot be checkpointed safely
            plain[str(key)] = value
    return tensors, plain


def unflatten(tensors: dict[str, torch.Tensor], plain: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of ``flatten``."""
    out: dict[str, Any] = {}
    for key, value in plain.items():
        out[key] = unflatten(tensors, value, f"{prefix}{key}.") if isinstance(value, dict) else value
    for dotted, tensor in tensors.items():
        if not dotted.startswith(prefix):
            continue
        parts = dotted[len(prefix) :].split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = tensor
    return _restore_int_keys(out)


def _restore_int_keys(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    return {
        (int(k) if isinstance(k, str) and k.isdigit() else k): _restore_int_keys(v) for k, v in node.items()
    }


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    groups: dict[str, dict[str, Any]],
    keep: int,
) -> Path:
    """Write ``weights`` (name → flat state dict) and ``groups`` (name → nested state whose keys
    contain no dots) for ``step`` atomically; keep the newest ``keep`` checkpoints."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta: dict[str, Any] = {"step": step, "weights": sorted(weights), "groups": {}}
    for name, flat in weights.items():
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in flat.items()},
            str(tmp / f"{name}.safetensors"),
        )
    for name, state in groups.items():
        tensors, plain = flatten(state)
        save_file(tensors, str(tmp / f"{name}.safetensors"))
        meta["groups"][name] = plain
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_atomic(ckpt_dir / "latest", final.name)
    for old in sorted(ckpt_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def rng_state() -> dict[str, Any]:
    """The global RNG states a step may draw from: torch's CPU one and, where CUDA is available,
    every CUDA device's (dropout on a GPU draws from it)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = {str(i): s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. A CUDA state is restored where CUDA is available and ignored
    on a CPU-only machine (a run moved off its GPU cannot continue its CUDA stream anyway)."""
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        ordered = [cuda[k] for k in sorted(cuda, key=int)]
        torch.cuda.set_rng_state_all(ordered[: torch.cuda.device_count()])


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def load_checkpoint(path: Path) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Read a checkpoint folder back into ``(step, weights, groups)``."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        weights = {name: load_file(str(path / f"{name}.safetensors")) for name in meta["weights"]}
        groups = {
            name: unflatten(load_file(str(path / f"{name}.safetensors")), plain)
            for name, plain in meta["groups"].items()
        }
    except (OSError, ValueError, KeyError) as exc:
        raise MdmError(
            f"checkpoint {path} is unreadable ({exc}); delete it to fall back to an older one"
        ) from exc
    return int(meta["step"]), weights, groups
