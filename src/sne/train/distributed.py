"""Training across processes: ``torchrun --nproc_per_node N -m sne train ...``.

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`start` then joins the process
group (gloo on CPU, NCCL on CUDA, one GPU per local rank) and the training loop wraps its model in
:class:`~torch.nn.parallel.DistributedDataParallel`. Every process draws the same batch order and
takes every ``N``-th network of each batch, so a run on ``N`` processes computes the step of one
process up to float rounding: losses are scaled so that DDP's gradient average is the mean over the
whole batch, and batch normalisation uses the whole batch's statistics
(:class:`DistributedBatchNorm1d`; PyTorch's SyncBatchNorm runs on GPUs only). Rank 0 writes the
run directory; every process reads it to resume.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

from sne.errors import SneError


def launched() -> bool:
    """Whether this process was started by torchrun (or any launcher setting ``WORLD_SIZE``) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """Whether this process speaks for all: rank 0 under torchrun, or the only process (read from
    ``RANK``, so it holds before the process group is joined and after it is left)."""
    return os.environ.get("RANK", "0") == "0"


def start(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (once); return (rank, world size), (0, 1) alone."""
    if not launched():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as error:
            raise SneError(f"cannot join the process group of WORLD_SIZE={os.environ.get('WORLD_SIZE')} "
                           f"({backend}): {error}") from None
    return dist.get_rank(), dist.get_world_size()


def local_device(device: torch.device) -> torch.device:
    """One GPU per process under torchrun; the CPU stays the CPU."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (the values themselves alone)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


class DistributedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the batch on all processes together
    (differentiable all-reduces of counts, sums and squared deviations; works on gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        count = all_reduce(x.new_tensor([float(x.shape[0])]))
        mean = all_reduce(x.sum(0)) / count
        # Two passes: E[x^2] - E[x]^2 would lose the spread of codes far from zero in float32.
        var = all_reduce((x - mean).square().sum(0)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight + self.bias if self.affine else x


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """Turn every BatchNorm1d inside ``module`` into a :class:`DistributedBatchNorm1d` in place
    (same parameters, buffers and state_dict keys)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            child.__class__ = DistributedBatchNorm1d
        else:
            sync_batch_norms(child)
    return module
