"""A stopped rank under data parallelism (issue #11 §4): the others exit with a clear message
after ``trainer.dist_timeout_s`` instead of waiting torch's default half hour.

Two ranks on CPU/gloo are set up the way torchrun sets them up (RANK, WORLD_SIZE, MASTER_ADDR…),
as processes forked from this one (no second start of torch: the test stays fast) that run the
real ``mdm train``; a plug-in's ``mdm_step_end`` stops rank 1 with SIGSTOP after step 2 (a frozen
node, a debugger, a swapped-out process: it neither answers nor exits). Rank 0 must end with exit
5 naming the timeout key within the timeout plus a margin.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mdm_core.cli import main
from mdm_core.distributed import CollectiveTimeout
from mdm_core.plugins import reset_registry
from mdm_core.spec import load_spec
from mdm_core.trainer import Trainer  # noqa: F401  (imported before the fork, not in each rank)

TIMEOUT_S = 3
MARGIN_S = 8  # process teardown on a loaded 2-core machine

STOPPER = """
import os
import signal
from pathlib import Path

from mdm_core import hookimpl


@hookimpl
def mdm_step_end(run, step):
    if run.rank == 1 and step == 2:
        Path(os.environ["STOP_MARKER"]).write_text("stopped")
        os.kill(os.getpid(), signal.SIGSTOP)
"""


def rank_main(rank: int, env: dict[str, str], site: str, argv: list[str], log: str) -> None:
    """One rank: torchrun's environment, the plug-in's folder importable, then ``mdm``."""
    os.environ.update({**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
    sys.path.insert(0, site)
    sys.stderr = open(log, "w")  # noqa: SIM115  (this process ends with os._exit below)
    reset_registry()
    code = main(argv)
    sys.stderr.flush()
    os._exit(code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX fork and signals")
def test_a_stopped_rank_ends_the_others_after_the_timeout(
    write_dist: Callable[..., None], tiny_spec: Path, tmp_path: Path
) -> None:
    site, marker = tmp_path / "site", tmp_path / "stopped"
    write_dist(site, "mdm-test-stopper", "mdm_test_stopper", STOPPER)
    env = {
        "STOP_MARKER": str(marker),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    argv = ["train", str(tiny_spec), "--quiet", "--run-dir", str(tmp_path / "run")]
    argv += [f"trainer.dist_timeout_s={TIMEOUT_S}", "trainer.device=cpu"]
    logs = [tmp_path / f"rank{r}.log" for r in (0, 1)]
    load_spec(tiny_spec)  # imports the trainer's and components' modules once, before the fork
    fork = multiprocessing.get_context("fork")
    ranks = [fork.Process(target=rank_main, args=(r, env, str(site), argv, str(logs[r]))) for r in (0, 1)]
    for process in ranks:
        process.start()
    try:
        ranks[0].join(timeout=120)
        ended = time.time()
        err = logs[0].read_text()
        assert marker.is_file(), err[-3000:]  # rank 1 really stopped
        assert ranks[1].is_alive()  # and is still there, stopped, neither answering nor exiting
        assert ranks[0].exitcode == CollectiveTimeout.exit_code == 5, err[-3000:]
        assert ended - marker.stat().st_mtime < TIMEOUT_S + MARGIN_S
        assert "another rank stopped answering" in err and "trainer.dist_timeout_s = 3 s" in err, err
        assert "Traceback" not in err
    finally:
        for process in ranks:
            if process.is_alive():
                process.kill()  # SIGKILL ends a stopped process too
            process.join()
