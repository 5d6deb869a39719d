"""Decoding training data a batch at a time instead of an example at a time.

The training pass reads every example once; with torchvision's image datasets most of
that time is spent turning one array at a time into a PIL image and back into a tensor
(``Image.fromarray`` -> ``ToTensor`` -> ``Normalize``): about 6 s of a 50,000-image
CIFAR-10 pass on two CPU cores, a third of the whole pass. :func:`batch_decoder` gives
such datasets a ``__getitems__`` that does the same arithmetic on a whole batch of the
dataset's stored array in one go (0.4 s), returning **bitwise the same tensors** as the
per-example path (tested in ``tests/test_batching.py``).

It only takes over where it can prove that: the dataset is a torchvision ``CIFAR10`` /
``CIFAR100`` / ``MNIST`` (and the MNIST family that inherits its ``__getitem__``) whose
class has not overridden ``__getitem__``, with ``transform`` made only of ``ToTensor``
and ``Normalize`` (optionally inside a ``Compose``) and no ``target_transform``; a
``TensorDataset``; or a ``Subset`` of one of these. Anything else -- other transforms,
custom datasets, a user's own ``DataLoader`` -- is decoded exactly as before, one
example at a time.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

BatchFn = Callable[[Sequence[int]], tuple]


def _transform_steps(transform: Any) -> Optional[list[Callable[[Tensor], Tensor]]]:
    """``[normalize, ...]`` after ``ToTensor`` when ``transform`` is exactly
    ``ToTensor`` [+ ``Normalize``...]; None when it is anything else."""
    try:
        from torchvision import transforms as T
    except Exception:  # noqa: BLE001 - torchvision missing or broken: nothing to recognise
        return None
    steps = list(transform.transforms) if type(transform) is T.Compose else [transform]
    if not steps or type(steps[0]) is not T.ToTensor:
        return None
    rest = steps[1:]
    if not all(type(s) is T.Normalize for s in rest):
        return None
    return list(rest)


def _to_tensor_batch(images: Tensor) -> Tensor:
    """``ToTensor`` on a (N, C, H, W) uint8 batch: the same ops as on one image."""
    return images.contiguous().to(dtype=torch.get_default_dtype()).div(255)


def _vision_decoder(ds: Any) -> Optional[BatchFn]:
    try:
        from torchvision.datasets import CIFAR10, MNIST
    except Exception:  # noqa: BLE001 - torchvision missing or broken: decode one at a time
        return None
    cls = type(ds)
    if getattr(ds, "target_transform", None) is not None or getattr(ds, "transform", None) is None:
        return None
    steps = _transform_steps(ds.transform)
    if steps is None:
        return None
    if isinstance(ds, CIFAR10) and cls.__getitem__ is CIFAR10.__getitem__:
        data = ds.data
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 4
                and data.shape[3] == 3):
            return None
        targets = ds.targets

        def images(idx: Sequence[int]) -> Tensor:  # (N, H, W, 3) -> (N, 3, H, W)
            return torch.from_numpy(data[np.asarray(idx, dtype=np.int64)]).permute(0, 3, 1, 2)

        def labels(idx: Sequence[int]) -> Tensor:
            return torch.tensor([int(targets[i]) for i in idx], dtype=torch.int64)
    elif isinstance(ds, MNIST) and cls.__getitem__ is MNIST.__getitem__:
        data = ds.data
        if not (isinstance(data, Tensor) and data.dtype == torch.uint8 and data.dim() == 3):
            return None
        targets = ds.targets

        def images(idx: Sequence[int]) -> Tensor:  # (N, H, W) -> (N, 1, H, W)
            return data[torch.as_tensor(idx, dtype=torch.int64)].unsqueeze(1)

        def labels(idx: Sequence[int]) -> Tensor:
            return torch.as_tensor(targets)[torch.as_tensor(idx, dtype=torch.int64)].to(torch.int64)
    else:
        return None

    def decode(idx: Sequence[int]) -> tuple:
        x = _to_tensor_batch(images(idx))
        for norm in steps:
            x = norm(x)
        return (x, labels(idx))

    return decode


def _decoder(ds: Any) -> Optional[BatchFn]:
    own = getattr(ds, "decode_batch", None)  # tracin_core's LabeledDataset kinds that can
    if callable(own):
        return own
    if isinstance(ds, TensorDataset):
        tensors = ds.tensors
        return lambda idx: tuple(t[torch.as_tensor(idx, dtype=torch.int64)] for t in tensors)
    if isinstance(ds, Subset) and type(ds).__getitem__ is Subset.__getitem__:
        inner = _decoder(ds.dataset)
        if inner is None:
            return None
        indices = ds.indices
        return lambda idx: inner([int(indices[i]) for i in idx])
    return _vision_decoder(ds)


class BatchDecoded(Dataset):
    """``dataset`` with a ``__getitems__`` that returns a whole collated batch.

    Use with ``DataLoader(..., collate_fn=collated)``; ``dataset[i]`` still works.
    """

    def __init__(self, dataset: Dataset, decode: BatchFn) -> None:
        self.dataset = dataset
        self._decode = decode

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int]) -> tuple:
        return self._decode(list(indices))


def collated(batch: Any) -> Any:
    """The ``collate_fn`` for :class:`BatchDecoded`: the batch is already collated."""
    return batch


def batch_decoder(dataset: Any) -> Optional[BatchDecoded]:
    """``dataset`` wrapped to decode whole batches, or None when that is not provably
    identical to decoding it one example at a time (see the module docstring)."""
    decode = _decoder(dataset)
    return None if decode is None else BatchDecoded(dataset, decode)


def batch_decode_enabled() -> bool:
    """False when the environment sets ``TRACIN_BATCH_DECODE=0`` (decode one example at
    a time, as Captum does: for benchmarks and debugging; the results are the same)."""
    from .settings import env_flag

    return env_flag("TRACIN_BATCH_DECODE")
