"""What the data-set-wide analyses (:mod:`~zflight.analysis.topk`,
:mod:`~zflight.analysis.dissection`) share about ``torch.distributed`` and progress bars.

Under a process group each rank reads the images ``rank, rank + world, ...``
(:func:`rank_world`), and results are merged with collectives on :func:`comm_device`. Only
rank 0 shows a bar (:func:`progress_bar`), in images, so tqdm shows images/s.

Example:
    >>> rank_world()  # no process group
    (0, 1)
    >>> bar = progress_bar(False, 10, "dissect")
    >>> bar.update(10); bar.close()
"""

from __future__ import annotations

from typing import Any

import torch


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialized process group, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def comm_device() -> torch.device:
    """Where tensors must be for the process group's collectives."""
    import torch.distributed as dist

    # NCCL only moves CUDA tensors; gloo and others take CPU ones.
    if "nccl" in str(dist.get_backend()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor summed over every rank (``all_reduce(SUM)``), back on its own device."""
    import torch.distributed as dist

    comm = comm_device()
    out = []
    for t in tensors:
        c = t.to(comm).contiguous()
        dist.all_reduce(c, op=dist.ReduceOp.SUM)
        out.append(c.to(t.device))
    return tuple(out)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(show: bool, total: int, desc: str) -> Any:
    """A tqdm bar counting ``total`` images (it shows images/s), or one that does nothing.

    ``update(n)`` after each batch, ``close()`` at the end.
    """
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)
