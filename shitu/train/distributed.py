"""Training on several processes under ``torchrun``: process group, device, and each rank's share.

One process per device (or per CPU socket). Every rank draws the same P x K batch from the same seed
and keeps whole classes of it, so its own triplets still have positives and negatives; DDP averages
the gradients, so every rank applies the same update and holds the same weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from shitu.errors import ShituError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that validates, writes checkpoints and logs."""
        return self.rank == 0

    def barrier(self):
        if self.size > 1:
            dist.barrier()


def join(device: str | None) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes in the environment (or stay alone)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if size == 1:
        return World(), torch.device(device or ("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    chosen = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return World(dist.get_rank(), dist.get_world_size()), chosen


def check_batch(batch_classes: int, world: World):
    """Each rank needs two whole classes of the batch for its triplets."""
    if batch_classes < 2 * world.size:
        raise ShituError(f"batch_classes = {batch_classes} is too small for {world.size} processes: "
                         f"each needs at least 2 classes (use batch_classes >= {2 * world.size})")


def shard(batch: np.ndarray, per_class: int, world: World) -> np.ndarray:
    """This rank's whole classes of a P x K batch laid out class by class."""
    return batch.reshape(-1, per_class)[world.rank::world.size].reshape(-1)


def mean_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """Average per-rank numbers (epoch losses) so the log describes the whole batch."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return {k: float(v) / world.size for k, v in zip(keys, tensor)}


def check_in_sync(model: torch.nn.Module, world: World):
    """Refuse to go on if the ranks' weights drifted apart (they must stay identical under DDP)."""
    if world.size == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().cpu().view(1)
    gathered = [torch.zeros_like(checksum) for _ in range(world.size)]
    dist.all_gather(gathered, checksum)
    if any(not torch.allclose(g, gathered[0], rtol=1e-9, atol=0.0) for g in gathered):
        raise ShituError("distributed training went wrong: the processes' weights differ")


def leave(world: World):
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
