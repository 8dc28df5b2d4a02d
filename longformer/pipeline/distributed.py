"""Several processes with torchrun: DistributedDataParallel over NCCL (GPUs) or gloo (CPU).

A stage with `train.nproc > 1` re-launches itself under torch's elastic launcher (single node); started by
`torchrun` directly (e.g. on several nodes) it just joins the process group torchrun set up.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: its functions take `group=group.WORLD` as a default
# argument, so a first import after init_process_group (DistributedDataParallel imports it) would keep the default
# group alive for good. Gloo's worker threads would then outlive `close()`, and one still releasing a finished
# collective's tensors when Python shuts down aborts the process ("terminate called without an active exception").
import torch.distributed.nn.functional  # noqa: F401

from longformer.errors import WorkerDiedError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        """This process's place in a torchrun job (a single process when not under torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # before the process group: NCCL binds to the current device
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), world, local_rank)

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, metrics and plots."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """This process's GPU, or the CPU."""
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def gather(self, value: object) -> list[object]:
        """Every process's `value`, in rank order, on every process."""
        if self.world == 1:
            return [value]
        values: list[object] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: float) -> float:
        return sum(self.gather(value)) / self.world

    def close(self) -> None:
        """Leave the process group and free it now, joining gloo's worker threads while Python is fully alive.
        Drop what holds the group first (a DistributedDataParallel wrapper does)."""
        if self.world > 1 and dist.is_initialized():
            gc.collect()  # wrappers caught in reference cycles would otherwise hold the group until shutdown
            dist.destroy_process_group()


def is_main_process() -> bool:
    """True outside torchrun and in its rank-0 process (readable before and after the process group)."""
    return int(os.environ.get("RANK", "0")) == 0


def quiet_launcher_logs() -> None:
    """Silence torch elastic's own log lines (what went wrong is said once, as an `error:` line): the loggers made
    so far, and through LOGLEVEL those it makes later."""
    os.environ["LOGLEVEL"] = "CRITICAL"
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


PEER_FAILED = 3  # exit status of a process whose collective failed because another process of the job died


def peer_failed(error: BaseException) -> bool:
    """True for the error a collective raises when another process of the job is gone (gloo: connection reset)."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and (
        isinstance(error, dist.DistError) or isinstance(error, RuntimeError) and "/gloo/" in str(error))


def relaunch_under_torchrun(nproc: int, module: str) -> bool:
    """Run `python -m module <same args>` as `nproc` torchrun processes on this node; True if it did.

    Each process prints its own errors; a process that died without a word (a signal) is reported here, as a
    WorkerDiedError, once the launcher has stopped the others.
    """
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    quiet_launcher_logs()

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()), max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", module, *sys.argv[1:])
    except ChildFailedError as error:
        failures = sorted(error.failures.items())
        stopped = [(rank, f.exitcode) for rank, f in failures if f.exitcode > 0 and f.exitcode != PEER_FAILED]
        if stopped and stopped[0][0] == 0:  # process 0 stopped on an error and has said why
            raise SystemExit(stopped[0][1]) from None
        if stopped:  # only process 0 prints user errors
            raise WorkerDiedError(f"process {stopped[0][0]} of {nproc} stopped with exit status {stopped[0][1]}; "
                                  "run with train.nproc=1 to see why") from None
        rank, failure = next(((r, f) for r, f in failures if f.exitcode not in (-signal.SIGTERM, PEER_FAILED)),
                             failures[0])
        raise WorkerDiedError(f"process {rank} of {nproc} died ({failure.signal_name()}), and the others were "
                              "stopped. Re-run the stage: training resumes from its last resumable state") from None
    return True
