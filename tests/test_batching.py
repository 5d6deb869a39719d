"""Batch decoding (tracin_core.batching) gives bitwise the tensors of per-example decoding,
and only takes over where it can prove that."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from tracin_core import TracInCPFast
from tracin_core.batching import BatchDecoded, batch_decoder, collated
from tracin_core.datasets import make_cifar10_folder

T = pytest.importorskip("torchvision.transforms")
tv_cifar = pytest.importorskip("torchvision.datasets.cifar")
from torchvision.datasets import MNIST  # noqa: E402

NORM = T.Normalize((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    make_cifar10_folder(tmp_path, n_train=37, n_test=5, seed=3)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return tmp_path


def cifar(root, transform, **kw):
    return tv_cifar.CIFAR10(str(root), train=True, download=False, transform=transform, **kw)


def mnist_like(n=29, transform=None):
    """torchvision's MNIST with its arrays set directly (no files needed)."""
    g = torch.Generator().manual_seed(0)
    ds = MNIST.__new__(MNIST)
    ds.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    ds.targets = torch.randint(0, 10, (n,), generator=g)
    ds.transform, ds.target_transform = transform, None
    return ds


def batches(ds, bs=8):
    """Per-example decoding with the default collate, as a DataLoader does it."""
    return list(DataLoader(ds, batch_size=bs, shuffle=False))


def fast_batches(ds, bs=8):
    fast = batch_decoder(ds)
    assert isinstance(fast, BatchDecoded)
    return list(DataLoader(fast, batch_size=bs, shuffle=False, collate_fn=collated))


def assert_bitwise_equal(slow, fast):
    assert len(slow) == len(fast)
    for a, b in zip(slow, fast):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y), (x - y).abs().max()


@pytest.mark.parametrize("transform", [
    T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]),  # the Captum tutorial's
    T.Compose([T.ToTensor(), NORM]),
    T.ToTensor(),
    T.Compose([T.ToTensor()]),
    T.Compose([T.ToTensor(), NORM, T.Normalize((0.1, 0.2, 0.3), (2.0, 3.0, 4.0))]),
])
def test_cifar10_batches_are_bitwise_identical(cifar_root, transform):
    ds = cifar(cifar_root, transform)
    assert_bitwise_equal(batches(ds), fast_batches(ds))


def test_mnist_and_subset_and_tensor_dataset_are_bitwise_identical(cifar_root):
    m = mnist_like(transform=T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]))
    assert_bitwise_equal(batches(m), fast_batches(m))
    sub = Subset(cifar(cifar_root, T.Compose([T.ToTensor(), NORM])), [5, 3, 36, 0, 9, 9, 1])
    assert_bitwise_equal(batches(sub, 3), fast_batches(sub, 3))
    g = torch.Generator().manual_seed(1)
    td = TensorDataset(torch.randn(19, 3, 4, generator=g), torch.randint(0, 5, (19,), generator=g),
                       torch.randn(19, generator=g).double())
    assert_bitwise_equal(batches(td, 4), fast_batches(td, 4))
    assert_bitwise_equal(batches(Subset(td, range(2, 17)), 4), fast_batches(Subset(td, range(2, 17)), 4))


class Custom(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(2), 0


def test_declines_what_it_cannot_prove_identical(cifar_root):
    class OwnGetitem(tv_cifar.CIFAR10):
        def __getitem__(self, i):
            x, y = super().__getitem__(i)
            return x * 2, y

    declined = [
        cifar(cifar_root, None),  # PIL images out: not tensors
        cifar(cifar_root, T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])),
        cifar(cifar_root, T.Compose([T.ToTensor(), T.Lambda(lambda x: x + 1)])),
        cifar(cifar_root, T.Compose([T.ToTensor(), NORM]), target_transform=lambda y: y + 1),
        OwnGetitem(str(cifar_root), train=True, download=False, transform=T.ToTensor()),
        mnist_like(transform=T.Compose([T.Resize(14), T.ToTensor()])),
        Custom(),
        Subset(Custom(), [0, 1]),
    ]
    for ds in declined:
        assert batch_decoder(ds) is None, ds


def test_tracin_scores_do_not_depend_on_batch_decoding(cifar_root, monkeypatch):
    from tracin_core.models import TutorialCifarNet

    ds = cifar(cifar_root, T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]))
    torch.manual_seed(0)
    states = [{k: v + 0.05 * i * torch.randn_like(v) for k, v in TutorialCifarNet().state_dict().items()}
              for i in range(2)]

    def load(model, state):
        model.load_state_dict(state)
        return 0.5

    test = (torch.stack([ds[i][0] for i in (0, 7)]), torch.tensor([ds.targets[0], 3]))

    def run():
        tr = TracInCPFast(TutorialCifarNet(), "fc3", ds, states, load, nn.CrossEntropyLoss(reduction="sum"),
                          batch_size=16)
        fast = isinstance(tr._pass_loader.dataset, BatchDecoded)
        return fast, tr.influence(test), tr.self_influence()

    monkeypatch.setenv("TRACIN_BATCH_DECODE", "0")
    fast0, inf0, self0 = run()
    monkeypatch.setenv("TRACIN_BATCH_DECODE", "1")
    fast1, inf1, self1 = run()
    assert (fast0, fast1) == (False, True)
    assert torch.equal(inf0, inf1) and torch.equal(self0, self1)
    assert inf0.shape == (2, 37) and self0.shape == (37,)
