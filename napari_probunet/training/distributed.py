"""Several processes (``torchrun``): which one this is, and what the processes agree on.

``torchrun --nproc_per_node=N -m napari_probunet.cli train ...`` starts N processes with
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; they train data-parallel through
``torch.distributed`` (gloo on CPU, NCCL on CUDA). Each rank draws its own batches; rank 0
writes the logs, checkpoints and model files. The ranks agree on when to stop (the slowest
clock), on skipping a step whose loss is not finite on any of them, and, at the end, show
that their weights are identical (a checksum each). One process alone is a world of one:
every agreement is then a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass

from napari_probunet.device import resolve_device


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run: ``rank`` of ``world`` processes."""

    world: int
    rank: int

    @classmethod
    def from_environment(cls) -> Ranks:
        """The place ``torchrun`` gave this process (``WORLD_SIZE``, ``RANK``); else 1 of 1."""
        return cls(world=int(os.environ.get("WORLD_SIZE", "1")),
                   rank=int(os.environ.get("RANK", "0")))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files and prints."""
        return self.rank == 0

    def join(self, device: str):
        """Join the process group (NCCL where ``device`` allows CUDA and there is one, else
        gloo) and return this rank's ``torch.device`` (its own GPU: ``LOCAL_RANK``)."""
        import torch
        import torch.distributed as dist

        if self.distributed and not dist.is_initialized():
            use_nccl = device in ("auto", "cuda") and torch.cuda.is_available()
            dist.init_process_group("nccl" if use_nccl else "gloo")
        chosen = resolve_device(device)
        if self.distributed and chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        return chosen

    def all_min(self, value) -> None:
        """Replace the tensor ``value`` in place by its smallest value over the ranks."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.MIN)

    def all_max(self, value) -> None:
        """Replace the tensor ``value`` in place by its largest value over the ranks."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.MAX)

    def gather(self, item) -> list:
        """Every rank's ``item`` (any picklable object), in rank order."""
        if not self.distributed:
            return [item]
        import torch.distributed as dist

        items = [None] * self.world
        dist.all_gather_object(items, item)
        return items

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


@contextlib.contextmanager
def closing_process_group():
    """Close, on the way out, a process group opened inside (none is open on the way in).

    A process group left to the interpreter's exit can abort the process ("terminate called
    without an active exception", seen once under load): close what we opened.
    """
    import torch.distributed as dist

    owns_group = not dist.is_initialized()
    try:
        yield
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()


def weights_checksum(model) -> str:
    """sha256 of ``model``'s weights (names and float32 values), to compare across ranks."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
