"""GPU suite: device='cuda' gives the CPU scores. Skips cleanly where CUDA is absent (CI)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tracin_core import TracInCP, TracInCPFast, TracInCPFastRandProj
from tests.reference import SmallCNN, make_checkpoints

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU suite)"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    paths = make_checkpoints(SmallCNN, tmp_path_factory.mktemp("gpu"), 3, torch.float32, [1.0, 0.5, 2.0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return paths, TensorDataset(x[:32], y[:32]), (x[32:], y[32:])


@pytest.mark.parametrize("cls,extra", [(TracInCPFast, {"final_fc_layer": "fc2"}), (TracInCP, {})])
def test_cuda_matches_cpu(setup, cls, extra):
    paths, train, test = setup
    loss = nn.CrossEntropyLoss(reduction="sum")
    cpu = cls(SmallCNN(), train_dataset=train, checkpoints=paths, loss_fn=loss, batch_size=8, **extra)
    gpu = cls(SmallCNN(), train_dataset=train, checkpoints=paths, loss_fn=loss, batch_size=8, device="cuda", **extra)
    assert torch.allclose(cpu.influence(test), gpu.influence(test), rtol=1e-3, atol=1e-4)
    assert torch.allclose(cpu.self_influence(), gpu.self_influence(), rtol=1e-3, atol=1e-4)
    top = gpu.influence(test, k=5)
    assert top.indices.shape == (8, 5)


def test_cuda_randproj(setup):
    paths, train, test = setup
    rp = TracInCPFastRandProj(SmallCNN(), "fc2", train, paths, loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                              batch_size=8, device="cuda")
    assert rp.influence(test, k=3).indices.shape == (8, 3)


def test_cuda_intermediate_quantities_and_cache_dir(setup, tmp_path):
    paths, train, test = setup
    loss = nn.CrossEntropyLoss(reduction="sum")
    cpu = TracInCP(SmallCNN(), train, paths, loss_fn=loss, batch_size=8)
    gpu = TracInCP(SmallCNN(), train, paths, loss_fn=loss, batch_size=8, device="cuda", cache_dir=tmp_path)
    emb = gpu.compute_intermediate_quantities(test)
    assert emb.device.type == "cpu"
    assert torch.allclose(cpu.compute_intermediate_quantities(test), emb, rtol=1e-3, atol=1e-5)
    # the memory-mapped store written from the GPU reads back in a fresh instance
    again = TracInCP(SmallCNN(), train, paths, loss_fn=loss, batch_size=8, device="cuda", cache_dir=tmp_path)
    assert torch.allclose(gpu.self_influence(), again.self_influence())


def test_npy_kind_on_cuda(setup, tmp_path):
    """The memory-mapped ``npy`` dataset kind, decoded a batch at a time, scored on cuda."""
    import numpy as np

    from tracin_core.audit.datasets import load_dataset

    paths, _, _ = setup
    g = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", g.integers(0, 256, (40, 6, 6), dtype=np.uint8))
    np.save(tmp_path / "y.npy", g.integers(0, 3, 40))
    ds = load_dataset("npy", path=tmp_path / "x.npy", labels=tmp_path / "y.npy", normalize=[0.5, 0.25])
    test = ds.decode_batch(range(32, 40))
    loss = nn.CrossEntropyLoss(reduction="sum")
    cpu = TracInCPFast(SmallCNN(), "fc2", ds, paths, loss_fn=loss, batch_size=8)
    gpu = TracInCPFast(SmallCNN(), "fc2", ds, paths, loss_fn=loss, batch_size=8, device="cuda")
    assert torch.allclose(cpu.influence(test), gpu.influence(test), rtol=1e-3, atol=1e-4)
