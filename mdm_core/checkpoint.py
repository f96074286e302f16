"""Atomic, verified checkpoints: tensors in safetensors, everything else in JSON; never pickle.

``ckpt/`` holds committed folders ``step-NNNNNNNN/`` and a pointer file ``latest`` naming one of
them. A checkpoint is written into ``.tmp-step-NNNNNNNN/`` (every rank's forward-process state,
then rank 0's weights and state, then ``meta.json`` with the size and sha256 of every other file
and a digest of itself), flushed to disk, renamed to ``step-NNNNNNNN/``, and only then is
``latest`` replaced atomically. ``latest`` alone says what is committed, so a kill at any moment
leaves it naming a complete checkpoint; a staging folder, or a folder renamed but not yet named
by ``latest``, is never resumed from, counted for pruning or offered. Loading verifies every
file: a damaged checkpoint is an error (exit 3) naming the file and the newest valid checkpoint,
never a silent resume with different numbers.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as dump_tensors

from mdm_core.errors import MdmError, SpecError

FORMAT = 2
POINTER = "latest"
META = "meta.json"
_STEP_DIR = re.compile(r"step-(\d{8,})")


class DamagedCheckpoint(MdmError):
    """A checkpoint file that is missing, truncated or changed since it was written: exit 3."""

    exit_code = 3


@dataclass(frozen=True)
class ResumePoint:
    """The verified checkpoint a resume starts from; ``note`` says why when it is not the one
    ``latest`` names (then ``latest`` should be pointed at it before training goes on)."""

    path: Path
    step: int
    note: str | None = None


# -- file primitives ------------------------------------------------------------------------


def _write_bytes(path: Path, data: bytes) -> str:
    """Write a new file durably (flushed to disk) with the umask's mode; return its sha256."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:  # name the file (a failed write() names none)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pointer(ckpt_dir: Path, name: str) -> None:
    tmp = ckpt_dir / (POINTER + ".tmp")
    _write_bytes(tmp, name.encode())
    os.replace(tmp, ckpt_dir / POINTER)
    _fsync_dir(ckpt_dir)


def _meta_digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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


# -- writing --------------------------------------------------------------------------------


def step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step-{step:08d}"


def staging_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f".tmp-step-{step:08d}"


def rank_files(name: str, rank: int) -> tuple[str, str]:
    """The files holding rank ``rank``'s (> 0) part of group ``name``: tensors and JSON."""
    return f"{name}.rank-{rank:05d}.safetensors", f"{name}.rank-{rank:05d}.json"


@contextlib.contextmanager
def _storage_errors(ckpt_dir: Path, step: int) -> Iterator[None]:
    """Turn a failed write (full disk, read-only folder) into exit 3 naming the path and the
    free space; the staging folder is removed so it holds no space, the committed checkpoints
    are untouched."""
    try:
        yield
    except OSError as exc:
        shutil.rmtree(staging_dir(ckpt_dir, step), ignore_errors=True)
        where = exc.filename or ckpt_dir
        try:
            usage = shutil.disk_usage(ckpt_dir if ckpt_dir.exists() else ckpt_dir.parent)
            space = f"{usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB"
        except OSError:
            space = "free space unknown"
        committed = latest_checkpoint(ckpt_dir)
        kept = (
            f"the previous checkpoint {committed} is intact"
            if committed
            else "no checkpoint is committed yet"
        )
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
        raise MdmError(
            f"could not write the checkpoint of step {step} to {where}: {reason} ({space}); {kept}. "
            f"Free some space (or make {ckpt_dir} writable) and resume with: "
            f"mdm train --resume {ckpt_dir.parent}",
            exit_code=3,
        ) from exc


def begin(ckpt_dir: Path, step: int) -> None:
    """Rank 0: an empty staging folder for ``step`` (a leftover of a killed save is cleared)."""
    with _storage_errors(ckpt_dir, step):
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tmp = staging_dir(ckpt_dir, step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()


def write_rank_state(ckpt_dir: Path, step: int, name: str, rank: int, state: dict[str, Any]) -> None:
    """Rank ``rank`` (> 0): its own part of group ``name`` into the staging folder of ``step``."""
    tensors, plain = flatten(state)
    tensor_file, json_file = rank_files(name, rank)
    with _storage_errors(ckpt_dir, step):
        tmp = staging_dir(ckpt_dir, step)
        _write_bytes(tmp / tensor_file, dump_tensors(tensors))
        _write_bytes(tmp / json_file, json.dumps(plain).encode())


def commit(
    ckpt_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    groups: dict[str, dict[str, Any]],
    keep: int,
    world_size: int = 1,
) -> Path:
    """Rank 0, after :func:`begin` and every rank's :func:`write_rank_state`: write ``weights``
    (name → flat state dict) and ``groups`` (name → nested state whose keys contain no dots),
    seal the folder with ``meta.json``, rename it into place, point ``latest`` at it and keep the
    newest ``keep`` committed checkpoints."""
    final, tmp = step_dir(ckpt_dir, step), staging_dir(ckpt_dir, step)
    if latest_checkpoint(ckpt_dir) == final:  # this very step is committed already (same state)
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    with _storage_errors(ckpt_dir, step):
        meta: dict[str, Any] = {
            "format": FORMAT,
            "step": step,
            "world_size": world_size,
            "weights": sorted(weights),
            "groups": {},
        }
        digests: dict[str, str] = {}
        for name, flat in weights.items():
            copies = {k: v.detach().cpu().contiguous().clone() for k, v in flat.items()}  # no shared storage
            digests[f"{name}.safetensors"] = _write_bytes(tmp / f"{name}.safetensors", dump_tensors(copies))
        for name, state in groups.items():
            tensors, plain = flatten(state)
            digests[f"{name}.safetensors"] = _write_bytes(tmp / f"{name}.safetensors", dump_tensors(tensors))
            meta["groups"][name] = plain
        meta["files"] = {  # the other ranks' files are hashed from disk
            p.name: {"bytes": p.stat().st_size, "sha256": digests.get(p.name) or _sha256(p)}
            for p in sorted(tmp.iterdir())
        }
        meta["digest"] = _meta_digest(meta)
        _write_bytes(tmp / META, json.dumps(meta, indent=1).encode())
        _fsync_dir(tmp)
        if final.exists():  # a leftover never named by ``latest`` (a kill before the pointer moved)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_pointer(ckpt_dir, final.name)
    _prune(ckpt_dir, step, keep)
    return final


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    weights: dict[str, dict[str, torch.Tensor]],
    groups: dict[str, dict[str, Any]],
    keep: int,
) -> Path:
    """A single process's checkpoint: :func:`begin` then :func:`commit`."""
    begin(ckpt_dir, step)
    return commit(ckpt_dir, step, weights, groups, keep)


def discard(ckpt_dir: Path, step: int) -> None:
    """Remove the staging folder of a save that failed on some rank."""
    shutil.rmtree(staging_dir(ckpt_dir, step), ignore_errors=True)


def point_latest(ckpt_dir: Path, path: Path) -> None:
    """Make ``latest`` name ``path`` (after resuming from a checkpoint it did not name, so that
    the folders after it are leftovers again and are overwritten, never kept)."""
    step = _step_of(path.name)
    assert step is not None and path.parent == ckpt_dir
    with _storage_errors(ckpt_dir, step):
        _write_pointer(ckpt_dir, path.name)


def _prune(ckpt_dir: Path, step: int, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints up to ``step`` (the one ``latest`` names); folders of
    later steps are leftovers of a killed timeline and are not counted; staging leftovers go."""
    committed = sorted(s for s in _step_dirs(ckpt_dir) if s <= step)
    for old in committed[: -max(keep, 1)]:
        shutil.rmtree(step_dir(ckpt_dir, old), ignore_errors=True)
    for leftover in ckpt_dir.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def first_non_finite(state: dict[str, Any], prefix: str = "") -> str | None:
    """The dotted name of the first floating tensor in ``state`` holding NaN/Inf, else None (one
    device sync per device the state lives on)."""
    floats = [(name, t) for name, t in _tensors(state, prefix) if t.is_floating_point() and t.numel()]
    finite: dict[str, bool] = {}
    for device in {t.device for _, t in floats}:
        on_device = [(name, t) for name, t in floats if t.device == device]
        flags = torch.stack([torch.isfinite(t).all() for _, t in on_device]).tolist()
        finite.update(zip([name for name, _ in on_device], flags, strict=True))
    return next((name for name, _ in floats if not finite[name]), None)


def _tensors(state: dict[str, Any], prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{key}", value
        elif isinstance(value, dict):
            yield from _tensors(value, f"{prefix}{key}.")


# -- reading and verifying ------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _step_of(name: str) -> int | None:
    match = _STEP_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def _step_dirs(ckpt_dir: Path) -> list[int]:
    """Steps of the ``step-*`` folders (complete or leftover; staging folders excluded)."""
    if not ckpt_dir.is_dir():
        return []
    steps = (_step_of(p.name) for p in ckpt_dir.iterdir() if p.is_dir())
    return sorted(s for s in steps if s is not None)


def read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of checkpoint ``path``, checked against its own digest and folder name."""
    file = path / META
    try:
        meta = json.loads(file.read_bytes())
    except FileNotFoundError as exc:
        raise DamagedCheckpoint(f"{file} is missing") from exc
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{file} is unreadable ({exc})") from exc
    if not isinstance(meta, dict) or not {"step", "weights", "groups"} <= meta.keys():
        raise DamagedCheckpoint(f"{file} lacks the keys step, weights and groups")
    if "digest" in meta and meta["digest"] != _meta_digest(meta):
        raise DamagedCheckpoint(f"{file} changed after it was written (its digest does not match)")
    if meta["step"] != _step_of(path.name):
        raise DamagedCheckpoint(f"{file} is for step {meta['step']} but its folder is {path.name}")
    return meta


def _read_verified(path: Path, name: str, meta: dict[str, Any]) -> bytes:
    """A checkpoint file's bytes, checked against the size and sha256 in ``meta`` (checkpoints of
    mdm 0.2.0 and before carry no checksums: their files are read as they are)."""
    file = path / name
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DamagedCheckpoint(f"{file} is missing or unreadable ({exc.strerror or exc})") from exc
    expected = meta.get("files", {}).get(name) if "files" in meta else {"bytes": len(data)}
    if expected is None:
        raise DamagedCheckpoint(f"{file} is not listed in {path / META}")
    if len(data) != expected["bytes"]:
        raise DamagedCheckpoint(
            f"{file} is truncated or extended: {len(data)} bytes, written {expected['bytes']}"
        )
    if "sha256" in expected and hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise DamagedCheckpoint(f"{file} changed after it was written (sha256 mismatch)")
    return data


def _read_tensors(path: Path, name: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    data = _read_verified(path, name, meta)
    try:
        return load_tensors(data)
    except Exception as exc:  # safetensors raises its own error type on a malformed file
        raise DamagedCheckpoint(f"{path / name} is not a safetensors file ({exc})") from exc


def verify(path: Path, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Check every file of checkpoint ``path`` (but those in ``skip``, read and checked by the
    caller); its meta when all are intact, else :class:`DamagedCheckpoint` naming the first
    damaged file."""
    meta = read_meta(path)
    names = meta.get("files") or [f"{n}.safetensors" for n in [*meta["weights"], *meta["groups"]]]
    for name in names:
        if name not in skip:
            _read_verified(path, name, meta)
    return meta


def load_checkpoint(path: Path) -> tuple[int, dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Read a checkpoint folder back into ``(step, weights, groups)``, verifying every file;
    groups hold rank 0's state (other ranks read theirs with :func:`rank_state`)."""
    meta = read_meta(path)
    try:
        weights = {name: _read_tensors(path, f"{name}.safetensors", meta) for name in meta["weights"]}
        groups = {
            name: unflatten(_read_tensors(path, f"{name}.safetensors", meta), plain)
            for name, plain in meta["groups"].items()
        }
    except (TypeError, AttributeError) as exc:
        raise DamagedCheckpoint(f"{path / META} has a malformed entry ({exc})") from exc
    verify(path, skip=frozenset(f"{name}.safetensors" for name in [*weights, *groups]))
    return int(meta["step"]), weights, groups


def rank_state(path: Path, name: str, rank: int, world_size: int) -> dict[str, Any]:
    """Rank ``rank``'s part of group ``name``; the checkpoint must come from ``world_size`` ranks
    (a per-rank state cannot be split or merged over a different number of processes). Its files
    are verified; the rest of the checkpoint is :func:`load_checkpoint`'s to check."""
    meta = read_meta(path)
    saved = int(meta.get("world_size", 1))
    if saved != world_size:
        raise SpecError(
            f"{path} holds the {name} state of {saved} process(es) but this run has {world_size}: "
            f"resume it with {saved} process(es)"
            + (
                f" (torchrun --nproc_per_node {saved} -m mdm_core.cli train --resume ...)"
                if saved > 1
                else ""
            )
        )
    if rank == 0:
        return unflatten(_read_tensors(path, f"{name}.safetensors", meta), meta["groups"].get(name, {}))
    tensor_file, json_file = rank_files(name, rank)
    try:
        plain = json.loads(_read_verified(path, json_file, meta))
    except ValueError as exc:
        raise DamagedCheckpoint(f"{path / json_file} is unreadable ({exc})") from exc
    return unflatten(_read_tensors(path, tensor_file, meta), plain)


def check_fits(file: Path, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Exit 2 unless ``saved`` has exactly the keys and shapes of ``expected`` (the spec's model):
    a checkpoint of another architecture is refused before anything is loaded."""
    missing = sorted(expected.keys() - saved.keys())
    extra = sorted(saved.keys() - expected.keys())
    shapes = [
        f"{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(expected[k].shape)} for the spec"
        for k in sorted(expected.keys() & saved.keys())
        if saved[k].shape != expected[k].shape
    ]
    problems = (
        ([f"missing {', '.join(missing[:5])}" + (" …" if len(missing) > 5 else "")] if missing else [])
        + ([f"unexpected {', '.join(extra[:5])}" + (" …" if len(extra) > 5 else "")] if extra else [])
        + shapes[:5]
    )
    if problems:
        raise SpecError(
            f"{file} does not fit the spec's model ({'; '.join(problems)}): the checkpoint was "
            "written for another architecture; resume with the run's own resolved.yaml"
        )


def check_optimizer_fits(file: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Exit 2 unless the saved optimiser state has one entry per parameter group of the right
    size and moment tensors of each parameter's shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = saved.get("param_groups", [])
    if [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise SpecError(f"{file}: the optimiser state's parameter groups do not match the spec's model")
    for index, entry in saved.get("state", {}).items():
        if not isinstance(index, int) or not 0 <= index < len(params):
            raise SpecError(f"{file}: optimiser state for parameter {index}, which the model does not have")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != params[index].shape:
                raise SpecError(
                    f"{file}: optimiser state {index}.{key} is {tuple(value.shape)}, the parameter "
                    f"is {tuple(params[index].shape)}: the checkpoint was written for another model"
                )


# -- choosing the checkpoint to resume from -------------------------------------------------


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The folder ``latest`` names, when it is a complete checkpoint inside ``ckpt_dir``
    (not verified: see :func:`resume_point`)."""
    try:
        name = (ckpt_dir / POINTER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if _step_of(name) is None:
        return None
    path = ckpt_dir / name
    return path if (path / META).is_file() else None


def newest_valid(ckpt_dir: Path, below: int | None = None, finite: bool = False) -> Path | None:
    """The newest checkpoint whose files all verify and, with ``finite``, whose weights and
    optimiser state hold no NaN/Inf: of a step below ``below`` if given, else up to the one
    ``latest`` names (later folders are leftovers of a killed save, never offered)."""
    committed = latest_checkpoint(ckpt_dir)
    if below is None and committed is not None:
        below = int(committed.name.removeprefix("step-")) + 1
    for step in reversed(_step_dirs(ckpt_dir)):
        if below is not None and step >= below:
            continue
        path = step_dir(ckpt_dir, step)
        try:
            verify(path)
            if finite:
                _, weights, groups = load_checkpoint(path)
                if first_non_finite({**weights, "optimizer": groups.get("optimizer", {})}):
                    continue
        except DamagedCheckpoint:
            continue
        return path
    return None


def _offer(ckpt_dir: Path, below: int | None) -> str:
    """What to do about a damaged checkpoint, without losing anything."""
    run = ckpt_dir.parent
    valid = newest_valid(ckpt_dir, below)
    if valid is None:
        return (
            f"No valid checkpoint remains in {ckpt_dir}; the run cannot be resumed. Nothing was "
            f"deleted: start it anew in a new directory with: mdm train {run / 'resolved.yaml'}"
        )
    step = _step_of(valid.name)
    return (
        f"The newest valid checkpoint is {valid} (step {step}); resume from it with: "
        f"mdm train --resume {run} --from-step {step}"
    )


def resume_point(ckpt_dir: Path, from_step: int | None = None) -> ResumePoint | None:
    """The verified checkpoint to resume from; None when no checkpoint was ever written.

    ``from_step`` picks one explicitly. Otherwise ``latest`` is followed; when it is missing or
    names no folder, the newest valid checkpoint is taken and ``note`` says so. A ``latest`` that
    points outside ``ckpt_dir``, or names a damaged checkpoint, is refused (exit 3) with the
    newest valid checkpoint and the command that resumes from it; nothing is ever deleted.
    """
    run = ckpt_dir.parent
    if from_step is not None:
        path = step_dir(ckpt_dir, from_step)
        if not (path / META).is_file():
            valid = [s for s in _step_dirs(ckpt_dir) if (step_dir(ckpt_dir, s) / META).is_file()]
            raise SpecError(
                f"--from-step {from_step}: {run} has no checkpoint of step {from_step}; "
                f"its checkpoints are of steps {', '.join(map(str, valid)) or '(none)'}"
            )
        try:
            verify(path)
        except DamagedCheckpoint as exc:
            raise DamagedCheckpoint(f"--from-step {from_step}: {exc}. {_offer(ckpt_dir, from_step)}") from exc
        return ResumePoint(path, from_step, f"resuming from {path} (--from-step {from_step})")
    pointer = ckpt_dir / POINTER
    problem = _pointer_problem(ckpt_dir)
    if problem is None:
        name = pointer.read_text().strip()
        path, step = ckpt_dir / name, _step_of(name)
        assert step is not None
        try:
            verify(path)
        except DamagedCheckpoint as exc:
            raise DamagedCheckpoint(
                f"the newest checkpoint of {run} is damaged: {exc}. {_offer(ckpt_dir, step)}"
            ) from exc
        return ResumePoint(path, step)
    if problem.startswith("outside:"):
        raise DamagedCheckpoint(
            f"{pointer} points outside the run ({problem.removeprefix('outside:')}); refusing to "
            f"follow it. {_offer(ckpt_dir, None)}"
        )
    if not _step_dirs(ckpt_dir):
        return None
    path_or_none = newest_valid(ckpt_dir)
    if path_or_none is None:
        raise DamagedCheckpoint(f"{pointer} {problem}. {_offer(ckpt_dir, None)}")
    step = _step_of(path_or_none.name)
    assert step is not None
    return ResumePoint(
        path_or_none, step, f"{pointer} {problem}; resuming from the newest valid checkpoint {path_or_none}"
    )


def _pointer_problem(ckpt_dir: Path) -> str | None:
    """Why ``latest`` cannot be followed (``outside:...`` when it leaves ``ckpt_dir``), else None."""
    pointer = ckpt_dir / POINTER
    if pointer.is_symlink():
        return f"outside:{pointer} is a symbolic link to {os.readlink(pointer)}"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return "is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return f"is unreadable ({exc})"
    if not name:
        return "is empty"
    if _step_of(name) is None:
        if "/" in name or name in (".", ".."):
            return f"outside:it names {name!r}"
        return f"names {name!r}, which is not a checkpoint"
    if (ckpt_dir / name).resolve().parent != ckpt_dir.resolve():
        return f"outside:{ckpt_dir / name} is a link to {(ckpt_dir / name).resolve()}"
    if not (ckpt_dir / name).is_dir():
        return f"names {name}, which does not exist"
    return None


# -- RNG ------------------------------------------------------------------------------------


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
