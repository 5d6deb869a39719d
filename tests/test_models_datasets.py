"""Models registry, trusted factories, and every dataset kind on small generated data."""
from __future__ import annotations

import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tracin_core.audit import datasets as D
from tracin_core.audit.datasets import (
    CIFAR10_CLASSES,
    LabeledDataset,
    digits_split_indices,
    extract_zip_safely,
    load_dataset,
    load_dataset_config,
    make_cifar10_folder,
)
from tracin_core.audit.models import (
    ARCHITECTURES,
    ArchitectureSpec,
    DigitsCNN,
    TutorialCifarNet,
    build_model,
    linear_layer_names,
    resnet18,
)


# --------------------------------------------------------------------------- models
def test_tutorial_cifar_net_matches_captum_tutorial():
    net = TutorialCifarNet()
    assert list(net.state_dict()) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias",
    ]
    assert [n for n, _ in net.named_children()] == [
        "conv1", "pool1", "pool2", "conv2", "fc1", "fc2", "fc3", "relu1", "relu2", "relu3", "relu4",
    ]
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["conv1.weight"] == (6, 3, 5, 5)
    assert shapes["conv2.weight"] == (16, 6, 5, 5)
    assert shapes["fc1.weight"] == (120, 400)
    assert shapes["fc3.weight"] == (10, 84)
    assert linear_layer_names(net) == ["fc3", "fc2", "fc1"]
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_digits_cnn_and_resnet():
    m = DigitsCNN()
    assert linear_layer_names(m)[0] == "fc2"
    assert m(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    assert DigitsCNN(num_classes=3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    assert not any(isinstance(mod, (nn.BatchNorm2d, nn.Dropout)) for mod in m.modules())
    r = resnet18(num_classes=4)
    assert linear_layer_names(r) == ["fc"]
    assert r(torch.zeros(2, 3, 32, 32)).shape == (2, 4)


def test_registry():
    assert set(ARCHITECTURES) == {"cifar_net", "digits_cnn", "fashion_cnn", "resnet18"}
    expected = {"cifar_net": ("fc3", (3, 32, 32)), "digits_cnn": ("fc2", (1, 8, 8)),
                "fashion_cnn": ("fc2", (1, 28, 28)), "resnet18": ("fc", (3, 224, 224))}
    for key, spec in ARCHITECTURES.items():
        assert isinstance(spec, ArchitectureSpec)
        assert spec.name == key
        assert (spec.final_fc_layer, spec.input_shape) == expected[key]
        assert spec.description
        model = spec.build().eval()
        assert isinstance(dict(model.named_modules())[spec.final_fc_layer], nn.Linear)
        assert linear_layer_names(model)[0] == spec.final_fc_layer
        shape = (3, 32, 32) if key == "resnet18" else spec.input_shape
        assert model(torch.zeros(1, *shape)).shape == (1, 10)
        assert build_model(spec.factory_path).__class__ is model.__class__
    assert ARCHITECTURES["cifar_net"].num_classes_arg is False
    assert ARCHITECTURES["digits_cnn"].build(num_classes=5).fc2.out_features == 5
    with pytest.raises(ValueError):
        ARCHITECTURES["cifar_net"].build(num_classes=5)


def test_build_model_accepts_importable_factories():
    m = build_model("tracin_core.audit.models:DigitsCNN", num_classes=7)
    assert isinstance(m, DigitsCNN) and m.fc2.out_features == 7
    assert isinstance(build_model("tracin_core.audit.models:resnet18", num_classes=3), nn.Module)
    assert isinstance(build_model("torch.nn:Identity"), nn.Identity)


def test_factory_paths_from_before_the_split_still_open():
    """Workspace files written before tracin_core split into engine/ and audit/ name
    ``tracin_core.models:…``; they open the same model, and the server still allows them."""
    from tracin_core.audit.server_config import AccessDenied, ServerConfig

    assert isinstance(build_model("tracin_core.models:DigitsCNN", num_classes=4), DigitsCNN)
    ServerConfig().check_factory(" tracin_core.models:FashionCNN")
    with pytest.raises(AccessDenied):
        ServerConfig().check_factory("tracin_core.modelsx:FashionCNN")
    with pytest.raises(ValueError, match="has no attribute"):
        build_model("tracin_core.models:NoSuchNet")


@pytest.mark.parametrize("path", [
    "no_such_package_xyz.models:Net",
    "tracin_core.no_such_module:Net",
    "tracin_core.audit.models:NoSuchNet",
    "tracin_core/audit/models.py:DigitsCNN",
    "/tmp/evil.py:Net",
    "tracin_core.audit.models",
    "os:system",
    "builtins:eval",
    "builtins:dict",
    "",
])
def test_build_model_rejects(path):
    with pytest.raises(ValueError):
        build_model(path)


def test_build_model_never_imports_code_outside_sys_path(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "uploaded_model_xyz.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\nimport torch\nNet = torch.nn.Identity\n"
    )
    assert str(tmp_path) not in sys.path
    with pytest.raises(ValueError, match="not importable"):
        build_model("uploaded_model_xyz:Net")
    assert not marker.exists()


def test_build_model_rejects_non_module_results():
    with pytest.raises(ValueError, match="nn.Module"):
        build_model("tracin_core.audit.datasets:digits_split_indices")


# --------------------------------------------------------------------------- cifar10
def test_cifar10_folder_roundtrip(tmp_path):
    written = make_cifar10_folder(tmp_path, n_train=13, n_test=4, seed=3)
    folder = tmp_path / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    for split, n in (("train", 13), ("test", 4)):
        ds = load_dataset("cifar10", root=tmp_path, split=split)
        imgs, labs = written[split]
        assert len(ds) == n
        assert ds.classes == list(CIFAR10_CLASSES)
        assert torch.equal(ds.labels, torch.from_numpy(labs))
        assert torch.equal(ds.original_labels, torch.from_numpy(labs))
        for i in range(n):
            np.testing.assert_array_equal(ds.image(i), imgs[i])
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y == labs[i]
            expected = (torch.from_numpy(imgs[i]).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
            torch.testing.assert_close(x, expected)
    # the batch files split the training set over the five files
    sizes = []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            sizes.append(len(pickle.load(f, encoding="latin1")["labels"]))
    assert sum(sizes) == 13 and max(sizes) - min(sizes) <= 1
    # pointing at the batches folder itself also works; relative roots use base_dir
    assert len(load_dataset("cifar10", root=folder, split="test")) == 4
    assert len(load_dataset("cifar10", root=tmp_path.name, base_dir=tmp_path.parent, split="test")) == 4


def test_cifar10_folder_is_readable_by_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    written = make_cifar10_folder(tmp_path, n_train=7, n_test=3, seed=0)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    for train, split in ((True, "train"), (False, "test")):
        ds = tv_cifar.CIFAR10(str(tmp_path), train=train, download=False)
        np.testing.assert_array_equal(ds.data, written[split][0])
        assert ds.targets == written[split][1].tolist()
        assert ds.classes == list(CIFAR10_CLASSES)


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", root=tmp_path / "nope")
    make_cifar10_folder(tmp_path, n_train=5, n_test=2, seed=0)
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", root=tmp_path, split="validation")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_refuses_code_in_pickles(tmp_path):
    make_cifar10_folder(tmp_path, n_train=5, n_test=2, seed=0)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path, split="test")
    assert not marker.exists()


# --------------------------------------------------------------------------- mnist
def _write_idx(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


def test_mnist_raw_format(tmp_path):
    rng = np.random.default_rng(0)
    tr_x, tr_y = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6)
    te_x, te_y = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), rng.integers(0, 10, 3)
    _write_idx(tmp_path, "train", tr_x, tr_y)
    _write_idx(tmp_path, "t10k", te_x, te_y)
    ds = load_dataset("mnist", root=tmp_path, split="train")
    assert len(ds) == 6 and ds.classes == [str(d) for d in range(10)]
    assert ds.labels.tolist() == tr_y.tolist()
    np.testing.assert_array_equal(ds.image(2), tr_x[2])
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == tr_y[2]
    torch.testing.assert_close(x[0], (torch.from_numpy(tr_x[2]).float() / 255 - 0.1307) / 0.3081)
    test = load_dataset("mnist", root=tmp_path / "MNIST", split="test")
    assert len(test) == 3
    assert ds.fingerprint() != test.fingerprint()
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root=tmp_path / "elsewhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load_dataset("mnist", root=empty)


# --------------------------------------------------------------------------- image_folder
def _make_image_tree(root: Path) -> dict[str, list[str]]:
    from PIL import Image

    rng = np.random.default_rng(1)
    layout = {"cat": ["a.png", "b.jpg"], "dog": ["c.png", "d.png", "e.bmp"]}
    for cls, names in layout.items():
        (root / cls).mkdir(parents=True)
        for k, name in enumerate(names):
            size = (20 + 3 * k, 12 + 5 * k)
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr if name != "e.bmp" else arr[..., 0]).save(root / cls / name)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return layout


def test_image_folder_from_folder(tmp_path):
    root = tmp_path / "imgs"
    _make_image_tree(root)
    ds = load_dataset("image_folder", root=root, image_size=16)
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 5
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        img = ds.image(i)
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
        torch.testing.assert_close(x, (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    assert load_dataset("image_folder", root=root).input_shape == (3, 32, 32)
    fp = ds.fingerprint()
    assert fp == load_dataset("image_folder", root="imgs", base_dir=tmp_path, image_size=16).fingerprint()
    assert fp != load_dataset("image_folder", root=root, image_size=8).fingerprint()
    f = root / "cat" / "a.png"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert fp != load_dataset("image_folder", root=root, image_size=16).fingerprint()


def _zip_tree(src: Path, zpath: Path, prefix: str = "") -> None:
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())


@pytest.mark.parametrize("prefix", ["", "dataset/"])
def test_image_folder_from_zip(tmp_path, prefix):
    root = tmp_path / "imgs"
    _make_image_tree(root)
    zpath = tmp_path / "imgs.zip"
    _zip_tree(root, zpath, prefix)
    folder_ds = load_dataset("image_folder", root=root, image_size=16)
    zip_ds = load_dataset("image_folder", root=zpath, image_size=16)
    assert zip_ds.classes == folder_ds.classes and len(zip_ds) == len(folder_ds)
    assert torch.equal(zip_ds.labels, folder_ds.labels)
    for i in range(len(zip_ds)):
        assert torch.equal(zip_ds[i][0], folder_ds[i][0])
    again = load_dataset("image_folder", root="imgs.zip", base_dir=tmp_path, image_size=16)
    assert again.fingerprint() == zip_ds.fingerprint()


def _zip_with(zpath: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return zpath


@pytest.mark.parametrize("bad_name", ["../evil/x.png", "cat/../../evil.png", "/abs/evil.png", "C:/evil.png", "..\\evil.png"])
def test_zip_slip_rejected(tmp_path, bad_name):
    zpath = _zip_with(tmp_path / "slip.zip", {"cat/a.png": b"x", bad_name: b"x"})
    with pytest.raises(ValueError, match="slip.zip"):
        load_dataset("image_folder", root=zpath)
    with pytest.raises(ValueError):
        extract_zip_safely(zpath, tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "evil.png").exists()


def test_zip_symlink_and_bomb_rejected(tmp_path, monkeypatch):
    zpath = tmp_path / "link.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        info = zipfile.ZipInfo("cat/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        extract_zip_safely(zpath, tmp_path / "out1")

    bomb = _zip_with(tmp_path / "bomb.zip", {"cat/zeros.png": bytes(4 << 20)})
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ValueError, match="limit"):
        extract_zip_safely(bomb, tmp_path / "out2", max_bytes=1 << 20)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("*"))
    # the size alone was refused: a limit above it extracts the same file
    extract_zip_safely(bomb, tmp_path / "out3", max_bytes=8 << 20)
    assert (tmp_path / "out3" / "cat" / "zeros.png").stat().st_size == 4 << 20
    # load_dataset applies the module's limit (lowered here to 1 MiB)
    monkeypatch.setattr(D, "MAX_ZIP_UNCOMPRESSED_BYTES", 1 << 20)
    with pytest.raises(ValueError, match="limit"):
        load_dataset("image_folder", root=bomb)


def test_zip_declared_size_limit_is_one_gib():
    assert D.MAX_ZIP_UNCOMPRESSED_BYTES == 1 << 30


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dataset("image_folder", root=tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="class subfolders"):
        load_dataset("image_folder", root=tmp_path / "flat")
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_dataset("image_folder", root=tmp_path / "noimg")
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="notzip.zip"):
        load_dataset("image_folder", root=tmp_path / "notzip.zip")


# --------------------------------------------------------------------------- tensors
def test_tensors_pt_and_npz(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    a = load_dataset("tensors", path=tmp_path / "d.pt")
    b = load_dataset("tensors", path="d.npz", base_dir=tmp_path)
    for ds in (a, b):
        assert len(ds) == 6 and ds.classes == ["0", "1", "2"]
        assert torch.equal(ds.labels, y)
        for i in range(6):
            xi, yi = ds[i]
            assert xi.dtype == torch.float32 and torch.equal(xi, x[i]) and yi == int(y[i])
        img = ds.image(0)
        assert img.dtype == np.uint8 and img.shape == (4, 4)
    assert a.content_hash() == b.content_hash()
    # uint8 images and class names
    imgs = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8, generator=g)
    torch.save({"x": imgs, "y": torch.tensor([1, 0, 1]), "classes": ["no", "yes"]}, tmp_path / "u.pt")
    u = load_dataset("tensors", path=tmp_path / "u.pt")
    assert u.classes == ["no", "yes"]
    np.testing.assert_array_equal(u.image(2), imgs[2].permute(1, 2, 0).numpy())
    np.savez(tmp_path / "c.npz", x=imgs.numpy(), y=np.array([1, 0, 1]), classes=np.array(["no", "yes"]))
    assert load_dataset("tensors", path=tmp_path / "c.npz").classes == ["no", "yes"]


def test_tensors_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dataset("tensors", path=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="needs 'path'"):
        load_dataset("tensors")
    torch.save({"x": torch.zeros(2, 3)}, tmp_path / "noy.pt")
    with pytest.raises(ValueError, match="noy.pt"):
        load_dataset("tensors", path=tmp_path / "noy.pt")
    torch.save({"x": torch.zeros(3, 2), "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "len.pt")
    with pytest.raises(ValueError, match="len.pt"):
        load_dataset("tensors", path=tmp_path / "len.pt")
    torch.save({"x": torch.zeros(2, 2), "y": torch.tensor([0.5, 1.0])}, tmp_path / "fy.pt")
    with pytest.raises(ValueError, match="integer"):
        load_dataset("tensors", path=tmp_path / "fy.pt")
    torch.save({"x": torch.zeros(2, 2), "y": torch.tensor([0, 1]), "extra": ArchitectureSpec}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="weights_only"):
        load_dataset("tensors", path=tmp_path / "code.pt")
    np.savez(tmp_path / "obj.npz", x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="obj.npz"):
        load_dataset("tensors", path=tmp_path / "obj.npz")
    (tmp_path / "d.csv").write_text("x,y\n")
    with pytest.raises(ValueError, match="suffix"):
        load_dataset("tensors", path=tmp_path / "d.csv")


# --------------------------------------------------------------------------- digits
def test_digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert (len(train), len(test)) == (1437, 360)
    assert train.classes == [str(d) for d in range(10)]
    digits = load_digits()
    tr_idx, te_idx = train_test_split(range(1797), test_size=0.2, random_state=0, stratify=digits.target)
    a, b = digits_split_indices()
    assert a.tolist() == list(tr_idx) and b.tolist() == list(te_idx)
    assert not set(a) & set(b) and len(set(a) | set(b)) == 1797
    assert train.labels.tolist() == digits.target[a].tolist()
    # stratified: per-class shares match the whole set
    total = np.bincount(digits.target, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels.numpy(), minlength=10) - total * 0.2) <= 1)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy((digits.images[a[0]] / 16 - 0.5) / 0.5).float())
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    img = train.image(0)
    assert img.shape == (8, 8) and img.dtype == np.uint8
    assert train.fingerprint() == load_dataset("digits").fingerprint() != test.fingerprint()
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(IndexError):
        train[1437]


# --------------------------------------------------------------------------- labels override
def test_labels_override_applied(tmp_path):
    base = load_dataset("digits", split="test")
    orig = base.labels
    new0, new5 = (int(orig[0]) + 1) % 10, (int(orig[5]) + 3) % 10
    (tmp_path / "ov.csv").write_text(f"index,label,excluded\n0,{new0},0\n5,{new5},\n7,-1,\n9,{int(orig[9])},1\n")
    ds = load_dataset("digits", split="test", labels_override="ov.csv", base_dir=tmp_path)
    assert int(ds.labels[0]) == new0 and int(ds[0][1]) == new0 and int(ds.labels[5]) == new5
    assert torch.equal(ds.original_labels, orig)
    assert ds.excluded.nonzero().flatten().tolist() == [7, 9]
    assert int(ds.labels[7]) == int(orig[7])
    assert torch.equal(ds.labels[10:], orig[10:])
    assert ds.fingerprint() != base.fingerprint() and ds.content_hash() == base.content_hash()
    # with_labels gives the same result without a file
    labels = orig.clone()
    labels[0], labels[5], labels[7] = new0, new5, -1
    excl = torch.zeros(len(orig), dtype=torch.bool)
    excl[9] = True
    same = base.with_labels(labels, excl)
    assert torch.equal(same.labels, ds.labels) and torch.equal(same.excluded, ds.excluded)
    assert same.fingerprint() == ds.fingerprint()


@pytest.mark.parametrize("content, message", [
    ("index,label\n0,1\n400,2\n", "line 3"),
    ("index,label\n0,1\n-1,2\n", "line 3"),
    ("index,label\n0,cat\n", "not an integer"),
    ("index,label\n0,1.5\n", "not an integer"),
    ("index,label\nx,1\n", "not an integer"),
    ("index,label\n0,10\n", "outside 0..9"),
    ("index,label\n0,1\n0,2\n", "more than once"),
    ("idx,lab\n0,1\n", "index"),
    ("", "empty"),
    ("index,label,excluded\n0,1,maybe\n", "excluded"),
    ("index,label\n0\n", "columns"),
])
def test_labels_override_rejected(tmp_path, content, message):
    path = tmp_path / "bad_labels.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_dataset("digits", split="test", labels_override=path)
    assert "bad_labels.csv" in str(info.value)
    assert message in str(info.value)


def test_labels_override_flags_exclude_or_keep(tmp_path):
    """The Review page's flags: ``flagged`` excludes flagged rows, keeps them with their
    label, or excludes only the flags listed; old-style rows (excluded=1, label -1) count
    as flag "excluded"."""
    base = load_dataset("digits", split="test")
    orig = base.labels
    (tmp_path / "ov.csv").write_text(
        "index,label,excluded,flag,duplicate_of\n"
        f"0,{(int(orig[0]) + 1) % 10},0,,\n"
        f"1,{int(orig[1])},1,ambiguous,\n"
        f"2,{int(orig[2])},1,outlier,\n"
        f"3,{int(orig[3])},1,duplicate,8\n"
        f"4,{int(orig[4])},1,excluded,\n"
        f"5,{int(orig[5])},1,,\n"
        "6,-1,,,\n"
        f"7,{int(orig[7])},0,ambiguous,\n")

    def load(**kw):
        return load_dataset("digits", split="test", labels_override="ov.csv", base_dir=tmp_path, **kw)

    default, keep = load(), load(flagged="keep")
    assert default.excluded.nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert torch.equal(load(flagged="exclude").excluded, default.excluded)
    assert not bool(keep.excluded.any())
    assert torch.equal(keep.labels, default.labels)
    assert int(keep.labels[0]) == (int(orig[0]) + 1) % 10 and torch.equal(keep.labels[1:], orig[1:])
    assert load(flagged=["ambiguous"]).excluded.nonzero().flatten().tolist() == [1, 7]
    assert load(flagged=("excluded", "duplicate")).excluded.nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert keep.fingerprint() != default.fingerprint()
    # a file without flags: the choice changes nothing, nor the fingerprint
    (tmp_path / "plain.csv").write_text(f"index,label\n0,{int(orig[0])}\n")
    plain = [load_dataset("digits", split="test", labels_override=tmp_path / "plain.csv", flagged=f)
             for f in ("exclude", "keep")]
    assert plain[0].fingerprint() == plain[1].fingerprint()
    with pytest.raises(ValueError, match="flagged must be 'exclude', 'keep'"):
        load(flagged="drop")
    with pytest.raises(ValueError, match="flagged must be"):
        load_dataset("digits", split="test", flagged=["blurry"])  # checked even without a file
    for row, message in (("0,1,0,blurry,", "flag 'blurry'"), ("0,1,1,duplicate,0", "duplicate_of 0 must be another"),
                         ("0,1,1,duplicate,x", "duplicate_of 'x' is not an integer")):
        (tmp_path / "bad.csv").write_text(f"index,label,excluded,flag,duplicate_of\n{row}\n")
        with pytest.raises(ValueError, match=message) as info:
            load_dataset("digits", split="test", labels_override=tmp_path / "bad.csv")
        assert "bad.csv', line 2" in str(info.value)


def test_labels_override_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_dataset("digits", labels_override="missing.csv", base_dir=tmp_path)


# --------------------------------------------------------------------------- entry points
def test_unknown_kind_and_config(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset kind"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs 'root'"):
        load_dataset("cifar10")
    ds = load_dataset_config({"kind": "digits", "split": "test"}, base_dir=tmp_path, section="test")
    assert isinstance(ds, LabeledDataset) and len(ds) == 360
    with pytest.raises(ValueError, match=r"\[train\].*colour"):
        load_dataset_config({"kind": "digits", "colour": "red"}, section="train")
    with pytest.raises(ValueError, match="kind"):
        load_dataset_config({"split": "train"})


def test_dataloader_batches():
    ds = load_dataset("digits", split="test")
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert x.shape == (8, 1, 8, 8) and y.dtype == torch.long and y.shape == (8,)
