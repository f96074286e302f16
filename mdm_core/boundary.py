"""What components hand the core is checked at the boundary, and their faults carry their names.

A plug-in's bug must surface as one clear error naming the component, its kind and the
distribution that installed it (exit 3), never as a traceback from deep in the trainer nor as a
run that "succeeds" on garbage (a time sampler returning t = 0 trains on nothing, loss 0.0).

Two tools:

* :func:`attributed` wraps an entry point (the trainer's construction and ``fit``, evaluation):
  an exception from plug-in code is re-raised as a :class:`~mdm_core.errors.PluginError` naming
  the innermost plug-in component on the traceback; a collective timeout as
  :class:`~mdm_core.distributed.CollectiveTimeout`. Nothing runs unless something raised.
* :class:`Boundary` checks the time sampler's draws, the training example, the logits, the loss
  and the forward process's state on the process's first step and on log steps only, so the hot
  path never waits for the device in between (the checks sync the host, as a log step does).
"""

from __future__ import annotations

import functools
import json
import math
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import torch
from torch import Tensor

from mdm_core import distributed
from mdm_core.errors import MdmError, PluginError, TrainingDiverged
from mdm_core.interfaces import Batch, Component, LossOutput, RunShape, TimeSampler, TrainingExample
from mdm_core.kinds import KIND_LABELS
from mdm_core.plugins import BUILTIN_NAME, PluginInfo, get_registry

P = ParamSpec("P")
R = TypeVar("R")


# -- naming ------------------------------------------------------------------------------------


def provider(component: object) -> PluginInfo | None:
    """The plug-in that registered ``component``'s class (None: not a registered class)."""
    owners = get_registry().owners_of(type(component))
    return owners[0].plugin if owners else None


def describe(component: object) -> str:
    """``time sampler 'bell' (mdm-plugin-bell 0.2.0)``: how every boundary error names its culprit."""
    cls = type(component)
    kind = str(getattr(cls, "kind", "component"))
    owners = get_registry().owners_of(cls)
    names = " or ".join(dict.fromkeys(f"'{e.ref.name}'" for e in owners)) or f"'{getattr(cls, 'name', '?')}'"
    origin = owners[0].plugin.label if owners else f"{cls.__module__}.{cls.__qualname__}, not registered"
    return f"{KIND_LABELS.get(kind, kind)} {names} ({origin})"


def fault(component: object, problem: str) -> PluginError:
    """A plug-in fault: exit 3, naming the component, its kind and its distribution."""
    return PluginError(f"{describe(component)} {problem}")


# -- exceptions from plug-in code ------------------------------------------------------------


def _frames(exc: BaseException) -> list[FrameType]:
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def culprit(exc: BaseException) -> Component | None:
    """The innermost component from a plug-in (not the core's built-ins) on ``exc``'s traceback:
    the object whose method was running when the exception left plug-in code."""
    for frame in reversed(_frames(exc)):
        obj = frame.f_locals.get("self")
        if isinstance(obj, Component):
            owner = provider(obj)
            if owner is None or owner.name != BUILTIN_NAME:
                return obj
    return None


def _site(exc: BaseException, component: Component) -> str:
    """Where in the component's package the exception was raised (file:line in function)."""
    package = type(component).__module__.partition(".")[0]
    for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if str(frame.f_globals.get("__name__", "")).partition(".")[0] == package:
            return f"{frame.f_code.co_filename}:{line} in {frame.f_code.co_name}"
    return "?"


def translate(exc: Exception) -> MdmError | None:
    """The clear error for an exception that escaped a run, or None to let it propagate."""
    if isinstance(exc, MdmError | torch.OutOfMemoryError):
        return None
    timeout = distributed.collective_failure(exc)
    if timeout is not None:
        return timeout
    component = culprit(exc)
    if component is None:
        return None
    return fault(component, f"raised {type(exc).__name__}: {exc}\n       at {_site(exc, component)}")


def attributed(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn``; an exception from plug-in code leaves it as a ``PluginError`` naming the
    component (a try block costs nothing in CPython 3.11 until something raises)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            clear = translate(exc)
            if clear is None:
                raise
            raise clear from exc

    return wrapper


# -- checks of what components return -------------------------------------------------------


def _is_int(x: Tensor) -> bool:
    return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)


def check_times(sampler: TimeSampler, t: object, size: int) -> None:
    """A time sampler's draws: a float tensor of the asked shape, finite, in (0, 1]."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise fault(sampler, f"returned {type(t).__name__} from sample(); expected a float tensor of t")
    if tuple(t.shape) != (size,):
        raise fault(
            sampler, f"returned t of shape {tuple(t.shape)} from sample(({size},)); expected ({size},)"
        )
    bad = ~torch.isfinite(t) | (t <= 0) | (t > 1)
    if bool(bad.any()):
        value = float(t[bad][0])
        raise fault(
            sampler,
            f"returned t = {value} from sample(); times must be finite and in (0, 1] "
            "(t = 0 or less masks nothing: the run would train on no tokens)",
        )


def check_example(process: Component, batch: Batch, ex: object, vocab_size: int) -> None:
    """A forward process's TrainingExample: consistent shapes, bool loss mask, finite values."""
    if not isinstance(ex, TrainingExample):
        raise fault(process, f"returned {type(ex).__name__} from prepare(); expected a TrainingExample")
    fields = ("input_ids", "targets", "loss_mask", "weights", "normaliser", "t")
    for name in fields:
        if not isinstance(getattr(ex, name), Tensor):
            raise fault(process, f"returned a TrainingExample whose {name} is not a tensor")
    rows, (ids, targets) = batch.size, (ex.input_ids, ex.targets)

    def wrong(what: str) -> PluginError:
        shapes = ", ".join(f"{n} {tuple(getattr(ex, n).shape)} {getattr(ex, n).dtype}" for n in fields)
        return fault(process, f"returned a TrainingExample with {what} (batch of {rows} rows; {shapes})")

    if targets.dim() != 2 or not _is_int(targets) or targets.shape[0] != rows:
        raise wrong(f"targets that are not integer ids [{rows}, L]")
    if ids.dim() != 2 or not _is_int(ids) or ids.shape[0] != rows or ids.shape[1] < targets.shape[1]:
        raise wrong(f"input_ids that are not integer ids [{rows}, L' ≥ L]")
    if ex.loss_mask.dtype != torch.bool or ex.loss_mask.shape != targets.shape:
        raise wrong("a loss_mask that is not a bool tensor shaped like targets")
    if ex.t.shape[:1] != (rows,):
        raise wrong(f"t not shaped [{rows}] or [{rows}, n_blocks]")
    try:
        weights = torch.broadcast_to(ex.weights, targets.shape)
    except RuntimeError:
        raise wrong("weights that do not broadcast to targets") from None
    if ex.normaliser.numel() != 1:
        raise wrong("a normaliser that is not a scalar")
    for name, values, ok in (
        ("input_ids", ids, (ids >= 0) & (ids < vocab_size)),
        ("targets", targets, (targets >= 0) & (targets < vocab_size)),
        ("t", ex.t, torch.isfinite(ex.t) & (ex.t >= 0) & (ex.t <= 1)),
        ("weights on loss positions", weights[ex.loss_mask], torch.isfinite(weights[ex.loss_mask])),
        ("normaliser", ex.normaliser, torch.isfinite(ex.normaliser) & (ex.normaliser > 0)),
    ):
        if not bool(ok.all()):
            value = values[~ok][0].item()
            rule = "ids in [0, vocab size)" if _is_int(values) else "finite (t in [0, 1], normaliser > 0)"
            raise wrong(f"{name} = {value}; expected {rule}")


def check_logits(
    backbone: Component, logits: object, ex: TrainingExample, vocab_size: int, finite: bool
) -> None:
    """A backbone's logits for the target positions: float ``[B, L, V]``, finite when asked."""
    expected = (*ex.targets.shape, vocab_size)
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or tuple(logits.shape) != expected:
        got = (
            f"shape {tuple(logits.shape)} {logits.dtype}"
            if isinstance(logits, Tensor)
            else type(logits).__name__
        )
        raise fault(backbone, f"returned logits of {got} for the target positions; expected float {expected}")
    if finite and not bool(torch.isfinite(logits).all()):
        raise fault(backbone, "returned NaN/Inf logits on the run's first step, before any update")


def check_loss(loss: Component, out: object, finite: bool) -> None:
    """A loss's output: a LossOutput whose ``loss`` is a differentiable finite scalar."""
    if not isinstance(out, LossOutput):
        raise fault(loss, f"returned {type(out).__name__}; expected a LossOutput")
    value = out.loss
    if not isinstance(value, Tensor) or value.numel() != 1 or not value.is_floating_point():
        raise fault(loss, f"returned a loss that is not a float scalar tensor: {value!r:.200}")
    if not value.requires_grad:
        raise fault(loss, "returned a loss that does not require grad: nothing would be trained")
    if finite and not math.isfinite(number := float(value.detach())):
        raise fault(loss, f"returned loss {number} on the run's first step, from finite logits")


def check_checkpointable(component: Component, state: object, path: str = "state_dict()") -> None:
    """State a checkpoint can hold without pickling: nested dicts with dot-free string keys of
    tensors and JSON values (what :func:`mdm_core.checkpoint.flatten` writes)."""
    if isinstance(state, Tensor):
        return
    if isinstance(state, dict):
        for key, value in state.items():
            if not isinstance(key, str | int) or "." in str(key):
                raise fault(component, f"{path} has key {key!r}: keys must be strings (or ints) without dots")
            check_checkpointable(component, value, f"{path}[{key!r}]")
        return
    try:
        json.dumps(state)
    except (TypeError, ValueError) as exc:
        raise fault(
            component,
            f"{path} holds {type(state).__name__}, which a checkpoint cannot store ({exc}); "
            "keep tensors (at any dict level) and JSON values (lists, numbers, strings) only",
        ) from None


def check_metrics(evaluator: Component, metrics: object, step: int | None) -> dict[str, float]:
    """An evaluator's metrics as floats; a non-finite one stops the run (exit 4)."""
    if not isinstance(metrics, dict):
        raise fault(
            evaluator, f"returned {type(metrics).__name__} from evaluate(); expected a dict of floats"
        )
    out: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise fault(evaluator, f"returned metric {key!r} = {value!r:.100}, not a number") from None
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        when = f"at step {step}" if step is not None else "at the final evaluation"
        scores = ", ".join(f"val/{k} = {v}" for k, v in bad.items())
        raise TrainingDiverged(
            f"{describe(evaluator)} scored {scores} {when}: the model's predictions are NaN/Inf "
            "(diverged weights, or a backbone that outputs NaN in eval mode); no result is recorded"
        )
    return out


class Boundary:
    """One run's checks of its components' outputs, on the process's first step and log steps.

    The trainer calls :meth:`begin` before each optimiser step and :meth:`example`,
    :meth:`logits`, :meth:`loss` inside the first micro-step; off check steps each is one
    attribute test. Non-finite logits or loss are the component's fault only on the first step;
    later they are divergence, which the trainer's own checks report (exit 4).
    """

    def __init__(self, parts: Any, log_every: int, max_steps: int) -> None:
        self.parts = parts
        self.shape: RunShape = parts.shape
        self.log_every, self.max_steps = log_every, max_steps
        self.checking = False
        self.first = True

    def begin(self, step: int) -> None:
        """Before optimiser step ``step + 1``: check it if it is the first or a log step."""
        done = step + 1
        self.checking = self.first or done % self.log_every == 0 or done == self.max_steps
        if self.checking:
            sampler, size = self.parts.time_sampler, self.shape.batch_size
            probe = torch.Generator().manual_seed(self.shape.seed * 7919 + step)
            check_times(sampler, sampler.sample((size,), probe, step / self.max_steps), size)

    def example(self, batch: Batch, example: TrainingExample) -> None:
        if self.checking:
            check_example(self.parts.forward_process, batch, example, self.shape.vocab.size)

    def logits(self, example: TrainingExample, logits: Tensor) -> None:
        if self.checking:
            check_logits(self.parts.model, logits, example, self.shape.vocab.size, finite=self.first)

    def loss(self, out: LossOutput) -> None:
        if not self.checking:
            return
        check_loss(self.parts.loss, out, finite=self.first)
        if self.first:
            process = self.parts.forward_process
            check_checkpointable(process, process.state_dict())
        self.checking = self.first = False
