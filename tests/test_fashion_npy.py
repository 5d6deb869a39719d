"""The ``fashion_mnist`` kind (IDX files, gzipped or not; Debian's dataset-fashion-mnist) and
the ``npy`` kind (a memory-mapped uint8 image array plus a labels file): inputs, labels,
class names, errors, and batch decoding that is bitwise the per-example decoding."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import torch

from tracin_core.engine.batching import batch_decoder
from tracin_core.audit.datasets import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_NORMALIZE, FASHION_MNIST_ROOT, load_dataset, load_dataset_config, read_idx,
)


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fake_fashion(root, n_train=30, n_test=7, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_kind_reads_idx_files(tmp_path, gz):
    arrays = fake_fashion(tmp_path / "fm", gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion_mnist", root=tmp_path / "fm", split=split)
        x, y = arrays[prefix]
        assert len(ds) == len(y) and ds.classes == list(FASHION_MNIST_CLASSES) and ds.input_shape == (1, 28, 28)
        assert ds.labels.tolist() == y.tolist()
        mean, std = FASHION_MNIST_NORMALIZE
        want = (torch.from_numpy(x[3]).float() / 255 - mean) / std
        assert torch.allclose(ds[3][0][0], want, atol=1e-6)
        assert np.array_equal(ds.image(3), x[3])
    # the same data in a workspace table, with the folder relative to the workspace file
    ds = load_dataset_config({"kind": "fashion_mnist", "root": "fm", "split": "test"}, tmp_path)
    assert len(ds) == 7


def test_idx_images_are_decoded_into_one_array_the_dataset_shares(tmp_path):
    """read_idx returns a writable array owning its memory (a big-endian type is swapped to
    native), and the fashion_mnist kind's images are that array, not a second copy of it
    (60,000 images: a copy cost 0.1-0.2 s of every workspace opening)."""
    from tracin_core.audit import datasets

    fake_fashion(tmp_path / "fm", gz=False)
    a = read_idx(tmp_path / "fm" / "train-images-idx3-ubyte")
    assert a.flags.writeable and a.flags.owndata
    write_idx(tmp_path / "be", np.arange(6, dtype=">i4").reshape(2, 3), gz=False)
    b = read_idx(tmp_path / "be")
    assert b.dtype == np.dtype("=i4") and b.flags.writeable and b.tolist() == [[0, 1, 2], [3, 4, 5]]
    loaded = datasets._load_fashion_mnist(tmp_path / "fm", "train")
    image = loaded["get_image"](3)
    x = loaded["get_batch"].__closure__  # the batch decoder's uint8 tensor
    tensors = [c.cell_contents for c in x if isinstance(c.cell_contents, torch.Tensor)]
    assert len(tensors) == 1 and tensors[0].dtype == torch.uint8
    assert np.shares_memory(tensors[0].numpy(), image)


def test_batch_decoding_is_bitwise_the_items_and_follows_overrides(tmp_path):
    fake_fashion(tmp_path / "fm")
    (tmp_path / "override.csv").write_text("index,label\n2,7\n5,1\n")
    ds = load_dataset("fashion_mnist", root=tmp_path / "fm", labels_override=tmp_path / "override.csv")
    idx = [5, 0, 2, 29, 11]
    xb, yb = ds.decode_batch(idx)
    assert torch.equal(xb, torch.stack([ds[i][0] for i in idx]))
    assert yb.tolist() == [ds[i][1] for i in idx] and yb[0] == 1 and yb[2] == 7
    assert batch_decoder(ds) is not None  # the training pass decodes whole batches
    with pytest.raises(IndexError):
        ds.decode_batch([30])


def test_idx_and_fashion_errors_name_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big"))
    with pytest.raises(ValueError, match="bad.*truncated header"):
        read_idx(tmp_path / "bad")
    (tmp_path / "magic").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="magic.*not an IDX header"):
        read_idx(tmp_path / "magic")
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8), gz=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="short.*expected"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path / "none")
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", root=tmp_path / "half")


def test_npy_kind_is_memory_mapped(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 40)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "y.csv").write_text("\n".join(map(str, y)) + "\n")
    modes = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        modes.append((os.path.basename(str(path)), kwargs.get("mmap_mode")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    for labels in ("y.npy", "y.csv"):
        ds = load_dataset_config({"kind": "npy", "path": "x.npy", "labels": labels, "normalize": [0.5, 0.25]},
                                 tmp_path)
        assert ("x.npy", "r") in modes  # opened memory-mapped: nothing read until used
        assert len(ds) == 40 and ds.input_shape == (3, 6, 5) and ds.labels.tolist() == y.tolist()
        assert torch.allclose(ds[4][0], (torch.from_numpy(x[4]).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)
        xb, _ = ds.decode_batch([4, 9])
        assert torch.equal(xb, torch.stack([ds[4][0], ds[9][0]]))
        assert np.array_equal(ds.image(4), x[4])
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_dataset("npy", path=tmp_path / "f.npy", labels=tmp_path / "y.npy")
    np.save(tmp_path / "y2.npy", y[:3])
    with pytest.raises(ValueError, match="expected 40 integer labels"):
        load_dataset("npy", path=tmp_path / "x.npy", labels=tmp_path / "y2.npy")
    with pytest.raises(ValueError, match="needs 'labels'"):
        load_dataset("npy", path=tmp_path / "x.npy")


def test_engine_scores_equal_with_and_without_batch_decoding(tmp_path, monkeypatch):
    from torch import nn

    from tracin_core import TracInCPFast

    fake_fashion(tmp_path / "fm", n_train=50)
    ds = load_dataset("fashion_mnist", root=tmp_path / "fm")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    ckpt = tmp_path / "c.pt"
    torch.save(net.state_dict(), ckpt)
    test = torch.stack([ds[i][0] for i in range(3)]), ds.labels[:3]
    scores = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("TRACIN_BATCH_DECODE", flag)
        eng = TracInCPFast(net, net[3], ds, [str(ckpt)], loss_fn=nn.CrossEntropyLoss(reduction="sum"),
                           batch_size=8)
        scores[flag] = eng.influence(test)
    assert torch.equal(scores["1"], scores["0"])


def test_debian_fashion_mnist_package():
    """CI installs Debian's dataset-fashion-mnist (.ci/run); elsewhere it may be absent."""
    if not FASHION_MNIST_ROOT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_MNIST_ROOT} is missing: .ci/run installs dataset-fashion-mnist")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    train = load_dataset("fashion_mnist", split="train")
    test = load_dataset("fashion_mnist", split="test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert np.bincount(train.labels.numpy()).tolist() == [6000] * 10


def _need_fashion() -> None:
    if not FASHION_MNIST_ROOT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{FASHION_MNIST_ROOT} is missing: .ci/run installs dataset-fashion-mnist")
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")


def test_fashion_recipe_is_deterministic(tmp_path):
    from tracin_core.audit import demo

    _need_fashion()
    metas = [demo.build_fashion(tmp_path / name, limit=600, epochs=2, clean_epochs=1) for name in ("a", "b")]
    assert metas[0] == metas[1] and len(metas[0]["checkpoints"]) == 2
    assert metas[0]["n_train"] == 600 and metas[0]["n_mislabelled"] == 60
    for name in ("labels.csv", "labels_override.csv", "checkpoint-1.pt", "checkpoint-2.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shipped_fashion_workspace():
    import json

    from tracin_core import Workspace
    from tracin_core.audit import demo
    from tracin_core.engine.checkpoints import load_checkpoint
    from tracin_core.audit.models import FashionCNN

    assert demo.verify_demo(demo.FASHION_DIR) == []
    meta = json.loads((demo.FASHION_DIR / "meta.json").read_text())
    assert (meta["n_train"], meta["n_test"], meta["n_mislabelled"]) == (60_000, 10_000, 6_000)
    assert len(meta["checkpoints"]) == 6 and meta["test_accuracy_clean"] > 0.8
    model = FashionCNN()
    model.load_state_dict(load_checkpoint(demo.FASHION_DIR / meta["checkpoints"][-1]["file"]))
    _need_fashion()
    ws = Workspace.fashion(cache_dir="/nonexistent-never-written")
    assert len(ws.train) == 60_000 and len(ws.test) == 10_000 and len(ws.checkpoints) == 6
    assert ws.classes == list(FASHION_MNIST_CLASSES)
    assert int(ws.is_mislabelled.sum()) == 6_000
    assert ws.train.labels.tolist() != ws.train.original_labels.tolist()  # the noisy labels are in effect


def test_app_offers_fashion_or_the_apt_command(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO, isolated_app_cache

    (tmp_path / "cache").mkdir()
    with isolated_app_cache(tmp_path / "cache"):
        monkeypatch.setattr("tracin_core.audit.datasets.FASHION_MNIST_ROOT", tmp_path / "absent")
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception
        assert any("apt-get install dataset-fashion-mnist" in i.value for i in at.info)
        assert at.button(key="open_demo") is not None and not [b for b in at.button if b.key == "open_fashion"]
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
        at.query_params["workspace"] = "fashion"
        at.run()
        assert any("the Fashion-MNIST images are not installed" in e.value for e in at.error)
        monkeypatch.undo()
        _need_fashion()
        # installed: a link opens it, and the first visit runs the training pass (60,000 images)
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
        at.query_params["workspace"] = "fashion"
        at.run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        text = "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(s.value) for s in at.subheader)
        assert "Active workspace: fashion\\-mnist" in text or "Active workspace: fashion-mnist" in text
        assert "T\\-shirt/top" in text or "T-shirt/top" in text
        assert [m.value for m in at.metric][:2] == ["60,000", "10,000"]
        assert at.query_params["workspace"] in ("fashion", ["fashion"])


def test_npy_batches_are_read_from_the_file_not_the_map(tmp_path, monkeypatch):
    """A pass reads consecutive rows with one plain file read (its memory stays flat in N);
    other indices go through the map; both give the same inputs, and the content hash is
    the one the memory map gave before (stores built earlier keep their key)."""
    import hashlib

    from tracin_core.audit import datasets as dsmod

    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (70, 9, 7), dtype=np.uint8)
    y = rng.integers(0, 3, 70)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = load_dataset("npy", path=tmp_path / "x.npy", labels=tmp_path / "y.npy", normalize=[0.5, 0.25])
    want = lambda idx: (torch.from_numpy(x[idx]).unsqueeze(1).float() / 255 - 0.5) / 0.25  # noqa: E731
    header = os.path.getsize(tmp_path / "x.npy") - x.nbytes
    reads = []
    real = os.pread
    monkeypatch.setattr(dsmod.os, "pread", lambda fd, n, off: reads.append((n, off)) or real(fd, n, off))
    xb, yb = ds.decode_batch(range(10, 42))
    assert torch.equal(xb, want(np.arange(10, 42))) and yb.tolist() == y[10:42].tolist()
    assert reads == [(32 * 63, header + 10 * 63)]
    xb, _ = ds.decode_batch([5, 3, 60])  # not consecutive: through the map
    assert torch.equal(xb, want(np.array([5, 3, 60]))) and len(reads) == 1
    h = hashlib.sha256(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    h.update(y.astype(np.int64).tobytes())
    assert ds.content_hash() == h.hexdigest()
    cut = np.load(tmp_path / "x.npy", mmap_mode="r")
    with open(tmp_path / "x.npy", "r+b") as fh:  # a file cut short names itself
        fh.truncate(os.path.getsize(tmp_path / "x.npy") - 63)
    with pytest.raises(ValueError, match="shorter than its header"):
        dsmod._FileRows(cut).read(60, 70)
