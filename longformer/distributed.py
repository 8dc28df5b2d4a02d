"""Several processes with torchrun: DistributedDataParallel over NCCL (GPUs) or gloo (CPU).

A stage with `train.nproc > 1` re-launches itself under `torch.distributed.run` (single node); started by
`torchrun` directly (e.g. on several nodes) it just joins the process group torchrun set up.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
# Imported before any process group exists, on purpose: its functions take `group=group.WORLD` as a default
# argument, so a first import after init_process_group (DistributedDataParallel imports it) would keep the default
# group alive for good. Gloo's worker threads would then outlive `close()`, and one still releasing a finished
# collective's tensors when Python shuts down aborts the process ("terminate called without an active exception").
import torch.distributed.nn.functional  # noqa: F401


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
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, metrics and plots."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

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


def relaunch_under_torchrun(nproc: int, module: str) -> bool:
    """Run `python -m module <same args>` as `nproc` torchrun processes on this node; True if it did."""
    if nproc <= 1 or "LOCAL_RANK" in os.environ:
        return False
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", module, *sys.argv[1:]]
    result = subprocess.run(command)
    if result.returncode:
        raise SystemExit(result.returncode)
    return True
