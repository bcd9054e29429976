"""Collectives a lock run needs beyond DDP's gradient averaging.

:func:`gather_batch` concatenates every rank's rows of a batch, in rank order, keeping the autograd graph: the
backward pass sums the gathered gradient over ranks (an all-reduce, which every backend supports) and hands each
rank its own slice. An objective computed on the gathered global batch is then identical on every rank; each rank's
parameter gradient is ``world_size`` times the part of the global gradient that flows through its own rows, and
DDP's averaging turns these into exactly the gradient of one process holding the whole global batch. Ranks may hold
different numbers of rows (a short last batch): rows are padded for the collective and trimmed again.

These collectives (and those of :mod:`.selection`) call ``torch.distributed`` rather than ``accelerate.utils``'
``gather`` / ``reduce`` / ``broadcast``: accelerate's gather has no backward, and its operations decide whether to
communicate from accelerate's own process state (read from the launcher's environment), while a lock run checks the
initialised default process group, which is also there when a user or a test starts the ranks without accelerate.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world() -> int:
    """Number of processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_sizes(rows: int, device: torch.device) -> list[int]:
    size = torch.tensor([rows], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        sizes = _all_sizes(len(tensor), tensor.device)
        longest = max(sizes)
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every row: sum their gradients
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_batch(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Every rank's rows of ``tensor`` in rank order (differentiable for floating tensors); identity in one process."""
    if tensor is None or distributed_world() == 1:
        return tensor
    if tensor.is_floating_point() and tensor.requires_grad:
        return _GatherRows.apply(tensor)
    with torch.no_grad():
        return _GatherRows.apply(tensor)
