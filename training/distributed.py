"""Running one trainer as several processes under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node=N -m training gpt ...`` starts N copies of the same command; each reads
its rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Run
without torchrun, the same code is a single process and nothing here does any communication.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training.common import pick_device

log = logging.getLogger("training")


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, shows progress and writes checkpoints."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DDP averages gradients across ranks during backward; a single process trains the model as is."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def micro_batches(self, n_rows: int, size: int | None) -> list[tuple[list[int], float]]:
        """This process's rows of an ``n_rows`` global batch (every ``world_size``-th, from its rank), in
        pieces of at most ``size`` rows (all at once when None), each with its weight in the loss.

        Every process must run the backward pass in which DDP averages gradients, so one left without
        rows (a batch smaller than the number of processes) runs row 0 with weight 0.
        """
        rows = list(range(self.rank, n_rows, self.world_size))
        if not rows:
            return [([0], 0.0)]
        size = size or len(rows)
        return [(rows[i:i + size], 1.0) for i in range(0, len(rows), size)]

    def accumulating(self, model: torch.nn.Module, last: bool) -> AbstractContextManager:
        """Gradient accumulation: DDP averages gradients in the backward pass of the ``last`` micro-batch
        only; those before just add to ``.grad``."""
        return model.no_sync() if self.enabled and not last else nullcontext()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (a single process gets its own values back)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled by torch.distributed; ranks trust each other)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._collective_device())
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def _collective_device(self) -> torch.device:
        # NCCL moves only CUDA tensors; gloo only CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup(device_name: str | None) -> Distributed:
    """Join the process group torchrun describes in the environment, or run as a single process.

    The backend follows the device: NCCL for CUDA (one GPU per process, by LOCAL_RANK), gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if world_size == 1:
        return Distributed(0, 1, 0, device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if rank != 0:  # one progress bar and one log, from rank 0
        logging.getLogger().setLevel(logging.WARNING)
        os.environ["PROGRESS"] = "0"
    log.info("distributed: %d processes, backend %s", world_size, backend)
    return Distributed(rank, world_size, local_rank, device)
