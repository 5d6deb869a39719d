"""Sharding the training pass over processes (``torchrun``).

    torchrun --nproc-per-node N -m tracin_core precompute WORKSPACE.toml

or, in your own script run under ``torchrun`` (every rank must make the same calls)::

    with tracin_core.engine.distributed.sharded():
        TracInCPFast(..., cache_dir="store/").self_influence()

Every process (rank) builds the same engine and feature store folder; batch ``b`` of the
training data is computed by rank ``b % N`` and written straight into the shared
memory-mapped store (:class:`~tracin_core.engine.store.FeatureStore`), so the result is the
store a single process writes. Rank 0 first computes batch 0 (it fixes the arrays'
shapes and allocates the files), the ranks meet at a barrier, each computes its share
(skipping batches already done by an earlier, interrupted run: it resumes), they meet
again and rank 0 marks the store complete. Process groups use ``gloo`` on CPU and
``nccl`` on GPUs (one GPU per rank, ``LOCAL_RANK``).
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.distributed as dist


_SHARDING = threading.local()


@contextmanager
def sharded() -> Iterator[None]:
    """Inside this block, training passes are shared by the ranks of the initialised
    process group (outside it, a process group is ignored: a pass is one process's own,
    so code that calls the engine on one rank only never waits at a barrier)."""
    before = getattr(_SHARDING, "on", False)
    _SHARDING.on = True
    try:
        yield
    finally:
        _SHARDING.on = before


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` that the training pass is shared by: the initialised process
    group's inside :func:`sharded`, else ``(0, 1)``."""
    if getattr(_SHARDING, "on", False) and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def launched_by_torchrun() -> bool:
    """True when the environment of this process comes from ``torchrun`` with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: Optional[str] = None) -> Optional[str]:
    """Join the process group ``torchrun`` describes; returns this rank's device
    (``cuda:LOCAL_RANK`` with CUDA unless ``device`` is given, else ``device``)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    use_cuda = (device is None or str(device).startswith("cuda")) and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
