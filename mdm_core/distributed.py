"""torch.distributed set-up for ``torchrun``: one process per device, gloo on CPU, NCCL on GPU.

Every collective waits at most ``trainer.dist_timeout_s`` for the other ranks: a rank that
stopped, hung or died makes the others fail with :class:`CollectiveTimeout` (exit 5) instead of
waiting for torch's default half hour. On gloo the waiting rank raises and the CLI prints the
message; on NCCL torch's watchdog ends the process after the same timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mdm_core.errors import MdmError

#: The spec key that sets the collective timeout (named in every timeout message).
TIMEOUT_KEY = "trainer.dist_timeout_s"
#: What gloo says when a collective timed out, or its peer went away.
_TIMEOUT_SIGNS = ("timed out", "application timeout", "connection reset by peer", "connection closed by peer")
#: The timeout this process joined its group with (the process group is process-wide too).
_timeout_s: float | None = None


class CollectiveTimeout(MdmError):
    """Another rank stopped answering within ``trainer.dist_timeout_s``: exit code 5."""

    exit_code = 5


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_choice: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group,
    whose collectives give up after ``timeout_s`` seconds."""
    global _timeout_s
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
        _timeout_s = timeout_s
    return DistEnv(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_across_ranks(value: float, env: DistEnv) -> float:
    """Average a Python float over ranks (for logging; metrics use torchmetrics)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def collective_failure(exc: BaseException) -> CollectiveTimeout | None:
    """The clear error for ``exc`` when it is a collective that timed out or lost its peer."""
    if _timeout_s is None or not dist.is_initialized() or not isinstance(exc, RuntimeError):
        return None
    text = str(exc)
    if not any(sign in text.lower() for sign in _TIMEOUT_SIGNS):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    return CollectiveTimeout(
        f"rank {rank} of {world}: another rank stopped answering (a collective waited more than "
        f"{TIMEOUT_KEY} = {_timeout_s:g} s, or its peer exited); see the other ranks' output for "
        f"why it stopped. If a step legitimately takes longer, raise {TIMEOUT_KEY}. "
        f"({text.splitlines()[0][-200:]})"
    )
