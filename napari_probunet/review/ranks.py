"""This process's place in a ``torchrun`` job, and the two collectives ``probunet sample`` uses.

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank plans the same case list and takes its share
by position (:mod:`napari_probunet.review.batch`); at the end the results are gathered on every
rank as JSON (:meth:`Ranks.gather_json`) and rank 0 writes the summary. torch is imported when
a :class:`Ranks` is made, never at import.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any

from napari_probunet.device import resolve_device

#: how long a rank waits for the others at the final gather (ranks finish at different times)
DIST_TIMEOUT = timedelta(hours=24)


class Ranks:
    """This process's place in a ``torchrun`` job (or a job of one), and the collectives used.

    ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` come from torchrun. With ``WORLD_SIZE > 1`` the
    process group is initialised (NCCL when the device is CUDA, else gloo) and each CUDA rank
    uses GPU ``LOCAL_RANK`` unless a device index was given.
    """

    def __init__(self, device: str = "auto") -> None:
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if self.world > 1 and dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        self.device = dev
        self._owner = False
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                        timeout=DIST_TIMEOUT)
                self._owner = True

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def gather_json(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (JSON-serialisable), in rank order, on every rank.

        Sent as UTF-8 JSON in byte tensors (no pickling, unlike ``all_gather_object``).
        """
        if not self.distributed:
            return [obj]
        import torch
        import torch.distributed as dist

        dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        data = json.dumps(obj).encode("utf-8")
        size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(longest, dtype=torch.uint8)
        buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        bufs = [torch.empty(longest, dtype=torch.uint8, device=dev) for _ in range(self.world)]
        dist.all_gather(bufs, buf.to(dev))
        return [json.loads(bytes(b[: int(s.item())].cpu().numpy()).decode("utf-8"))
                for b, s in zip(bufs, sizes)]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._owner:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owner = False
