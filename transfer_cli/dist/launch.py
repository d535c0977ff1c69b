"""`transfer pretrain CONFIG --nproc N`: the same command in N processes on this machine, started
by torch's elastic launcher, which is what `torchrun --standalone --nproc_per_node N` runs (a
rendezvous on a free local port, so several runs can share a machine)."""

from __future__ import annotations

import logging
import os
import sys
import uuid


def launch(nproc: int, args: list[str]) -> int:
    """Run `python -m transfer_cli ARGS` in `nproc` processes; return the exit code of the first rank
    that failed (0 when all succeeded). The workers print their own errors."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's default is 1 thread per process; on a CPU-only machine the cores are better shared out
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers say what went wrong
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "transfer_cli", *args)
    except ChildFailedError as exc:
        # the first failure is the cause: once a rank fails the launcher stops the others (SIGTERM),
        # and their exit codes (143, or a broken collective's 1) would hide its code
        code = exc.get_first_failure()[1].exitcode
        return 128 - code if code < 0 else code  # killed by signal N: -N, as a shell reports it: 128 + N
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0
