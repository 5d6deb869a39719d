"""Dataset loaders for workspaces and the app.

Every loader returns a :class:`LabeledDataset`: a ``torch.utils.data.Dataset`` whose items
are ``(image float32 tensor, label int)``, plus what the app needs to show and audit it
(class names, displayable images, the labels in effect, a content fingerprint).

Kinds (design.md §4): ``cifar10``, ``mnist``, ``image_folder``, ``digits``, ``tensors``.
See :func:`load_dataset`.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import stat
import tempfile
import threading
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels_csv import flagged_set, read_labels_csv

__all__ = [
    "DATASET_KINDS",
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "MAX_ZIP_UNCOMPRESSED_BYTES",
    "LabeledDataset",
    "load_dataset",
    "load_dataset_config",
    "digits_split_indices",
    "make_cifar10_folder",
    "extract_zip_safely",
    "check_image_files",
    "open_image",
]

DATASET_KINDS = ("cifar10", "mnist", "fashion_mnist", "image_folder", "digits", "tensors", "npy")
#: where Debian's ``dataset-fashion-mnist`` package puts the four IDX files
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
#: the training set's pixel mean and standard deviation (on the 0-1 scale)
FASHION_MNIST_NORMALIZE = (0.2860, 0.3530)
MNIST_NORMALIZE = (0.1307, 0.3081)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_ZIP_UNCOMPRESSED_BYTES = 1 << 30  # 1 GiB
MAX_ZIP_MEMBERS = 2_000_000

# The digits demo's fixed split (design.md §4): do not change, checkpoints depend on it.
DIGITS_N = 1797
DIGITS_TEST_SIZE = 0.2
DIGITS_SPLIT_SEED = 0

# Bump when a transform changes, so that fingerprints (and the feature stores keyed on
# them) change too.
_FINGERPRINT_VERSION = "tracin-audit-dataset-v1"

PathLike = str | os.PathLike


# ---------------------------------------------------------------------------------------
# LabeledDataset
# ---------------------------------------------------------------------------------------
class LabeledDataset(Dataset):
    """A dataset of ``(image tensor float32, label int)`` with the labels in effect.

    Attributes and methods the app relies on:

    * ``labels`` (LongTensor, the labels in effect: after ``labels_override``),
      ``original_labels`` (LongTensor, as stored in the data), ``excluded`` (BoolTensor:
      items the override file excludes, given the ``flagged`` choice; they stay in the
      dataset so indices stay stable), ``classes`` (list of class names), ``num_classes``.
    * ``image(i)``: ``numpy.uint8`` array ``HxW`` or ``HxWx3`` for display (not normalised).
    * ``fingerprint()``: sha256 hex digest of the content (raw arrays, or for image folders
      file names + sizes + mtimes) plus the labels in effect and the exclusions.

    Instances are built by :func:`load_dataset`; the constructor is for loaders.
    """

    def __init__(
        self,
        *,
        kind: str,
        source: str,
        length: int,
        get_input: Callable[[int], torch.Tensor],
        get_image: Callable[[int], np.ndarray],
        original_labels: torch.Tensor,
        classes: Sequence[str],
        content_hash: Callable[[], str],
        params: dict[str, Any] | None = None,
        labels_override: PathLike | None = None,
        get_batch: Callable[[torch.Tensor], torch.Tensor] | None = None,
        flagged: str | Iterable[str] = "exclude",
    ) -> None:
        self.kind = kind
        self.source = source
        self._length = int(length)
        self._get_input = get_input
        self._get_batch = get_batch
        self._get_image = get_image
        self._original_labels = torch.as_tensor(original_labels, dtype=torch.long).reshape(-1).clone()
        if len(self._original_labels) != self._length:
            raise ValueError(f"{source}: {len(self._original_labels)} labels for {self._length} items")
        self._classes = [str(c) for c in classes]
        self._content_hash_fn = content_hash
        self._content_hash: str | None = None
        self._params = dict(params or {})
        self._fingerprint: str | None = None
        self._lock = threading.Lock()
        self._labels = self._original_labels.clone()
        self._excluded = torch.zeros(self._length, dtype=torch.bool)
        self.labels_override: str | None = None
        if labels_override is not None:
            labels, excluded = read_labels_csv(
                labels_override, self._length, num_classes=len(self._classes),
                base_labels=self._original_labels.numpy(), flagged=flagged,
            )
            self._labels, self._excluded = torch.from_numpy(labels), torch.from_numpy(excluded)
            self.labels_override = str(labels_override)

    # -- Dataset protocol ------------------------------------------------------------
    def __len__(self) -> int:
        return self._length

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for dataset of size {self._length}")
        return index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = self._check_index(index)
        return self._get_input(index), int(self._labels[index])

    @property
    def decode_batch(self) -> Callable[[Sequence[int]], tuple[torch.Tensor, torch.Tensor]] | None:
        """``decode_batch(indices) -> (inputs, labels)``, bitwise what stacking
        ``self[i]`` gives (the training pass uses it, :mod:`tracin_core.engine.batching`);
        None for kinds that decode one example at a time."""
        if self._get_batch is None:
            return None

        def decode(indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.as_tensor([self._check_index(i) for i in indices], dtype=torch.int64)
            return self._get_batch(idx), self._labels[idx]

        return decode

    # -- labels ---------------------------------------------------------------------
    @property
    def labels(self) -> torch.Tensor:
        """Labels in effect (after any override), LongTensor of shape (N,)."""
        return self._labels.clone()

    @property
    def original_labels(self) -> torch.Tensor:
        """Labels as stored in the data, LongTensor of shape (N,)."""
        return self._original_labels.clone()

    @property
    def excluded(self) -> torch.Tensor:
        """BoolTensor of shape (N,): items excluded by the override file."""
        return self._excluded.clone()

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._get_input(0).shape) if self._length else ()

    def input_normalization(self) -> tuple[float, float]:
        """``(mean, std)`` of this data's inputs on the 0..1 scale: a pixel ``x`` in
        0..255 becomes ``(x/255 - mean)/std``. MNIST and Fashion-MNIST: their published
        constants; ``npy``: its ``normalize``; the rest (digits' ``(x/16 - 0.5)/0.5``
        is the same map, CIFAR-10, image folders, and tensors by assumption): (0.5, 0.5)."""
        if self.kind == "mnist":
            return MNIST_NORMALIZE
        if self.kind == "fashion_mnist":
            return FASHION_MNIST_NORMALIZE
        if self.kind == "npy" and "normalize" in self._params:
            mean, std = self._params["normalize"]
            return float(mean), float(std)
        return (0.5, 0.5)

    def preprocess(self, image: Any, *, invert: bool = False) -> tuple[torch.Tensor, np.ndarray]:
        """A picture (a ``PIL.Image``) as this data's model input and a uint8 view of it.

        Returns ``(x, pixels)``: ``x`` float32 of shape :attr:`input_shape` (C, H, W),
        ``pixels`` uint8 (H, W) for one channel or (H, W, 3). The picture is converted to
        greyscale (one channel) or RGB, resized to (H, W) (box filter when shrinking a
        greyscale one, else bilinear), inverted when ``invert`` (dark strokes on light
        paper), and normalised by :meth:`input_normalization` (8x8 greyscale: scaled to
        digits' 0..16, then ``(x/16 - 0.5)/0.5``).
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
        c, h, w = (tuple(self.input_shape) + (1, 1, 1))[:3]
        mean, std = self.input_normalization()
        if c == 1:
            shrink = w < image.width and h < image.height
            g = image.convert("L").resize((w, h), Image.BOX if shrink else Image.BILINEAR)
            arr = np.asarray(g, dtype=np.float64)
            if invert:
                arr = 255.0 - arr
            if (h, w) == (8, 8):
                x16 = arr / 255.0 * 16.0
                x = (x16 / 16.0 - 0.5) / 0.5
            else:
                x = (arr / 255.0 - mean) / std
            return torch.from_numpy(x.astype(np.float32)).unsqueeze(0), np.round(arr).astype(np.uint8)
        rgb = image.convert("RGB").resize((w, h), Image.BILINEAR)
        arr = np.asarray(rgb, dtype=np.float64)
        if invert:
            arr = 255.0 - arr
        x = (arr / 255.0 - mean) / std
        return (torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1).contiguous(),
                np.round(arr).astype(np.uint8))

    def with_labels(self, labels: Sequence[int] | torch.Tensor,
                    excluded: Sequence[bool] | torch.Tensor | None = None) -> "LabeledDataset":
        """A copy sharing the data, with other labels in effect (label -1 marks excluded)."""
        labels_t = torch.as_tensor(labels, dtype=torch.long).reshape(-1).clone()
        if len(labels_t) != self._length:
            raise ValueError(f"expected {self._length} labels, got {len(labels_t)}")
        excl = (torch.zeros(self._length, dtype=torch.bool) if excluded is None
                else torch.as_tensor(excluded, dtype=torch.bool).reshape(-1).clone())
        if len(excl) != self._length:
            raise ValueError(f"expected {self._length} exclusion flags, got {len(excl)}")
        minus = labels_t == -1
        excl |= minus
        labels_t[minus] = self._original_labels[minus]
        bad = (labels_t < 0) | (labels_t >= self.num_classes)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"label {int(labels_t[i])} at index {i} is outside 0..{self.num_classes - 1}")
        new = object.__new__(LabeledDataset)
        new.__dict__.update(self.__dict__)
        new._labels, new._excluded = labels_t, excl
        new._fingerprint = None
        new._lock = threading.Lock()
        new.labels_override = None
        return new

    # -- display and identity --------------------------------------------------------
    def image(self, index: int) -> np.ndarray:
        """The item as a displayable ``uint8`` array (``HxW`` or ``HxWx3``), not normalised."""
        index = self._check_index(index)
        img = np.asarray(self._get_image(index))
        if img.dtype != np.uint8:
            img = img.astype(np.uint8)
        return img

    def content_hash(self) -> str:
        """sha256 of the underlying data only (no labels)."""
        with self._lock:
            if self._content_hash is None:
                self._content_hash = self._content_hash_fn()
            return self._content_hash

    def fingerprint(self) -> str:
        """sha256 hex digest of content + parameters + labels in effect + exclusions."""
        content = self.content_hash()
        with self._lock:
            if self._fingerprint is None:
                h = hashlib.sha256()
                header = {"v": _FINGERPRINT_VERSION, "kind": self.kind, "n": self._length,
                          "classes": self._classes, "params": self._params}
                h.update(json.dumps(header, sort_keys=True, default=str).encode())
                h.update(content.encode())
                h.update(self._original_labels.numpy().astype("<i8").tobytes())
                h.update(self._labels.numpy().astype("<i8").tobytes())
                h.update(self._excluded.numpy().astype(np.uint8).tobytes())
                self._fingerprint = h.hexdigest()
            return self._fingerprint

    def __repr__(self) -> str:
        return (f"LabeledDataset(kind={self.kind!r}, source={self.source!r}, n={self._length}, "
                f"classes={len(self._classes)}, override={self.labels_override!r})")




# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def _resolve(p: PathLike | None, base_dir: PathLike | None) -> Path | None:
    if p is None:
        return None
    path = Path(os.path.expanduser(os.fspath(p)))
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _hash_arrays(*arrays: np.ndarray | torch.Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().contiguous().numpy()
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _to_display_uint8(x: np.ndarray, was_uint8: bool) -> np.ndarray:
    """Best-effort display image (HxW or HxWx3 uint8) from an arbitrary tensor item."""
    a = np.asarray(x)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim > 3:
        a = a.reshape(-1, a.shape[-1])
    if a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim == 1:
        side = int(round(np.sqrt(a.size)))
        a = a.reshape(side, side) if side * side == a.size else a.reshape(1, -1)
    elif a.ndim == 3:
        if a.shape[0] in (1, 3) or (a.shape[0] == 4 and a.shape[-1] not in (1, 3, 4)):
            a = np.transpose(a, (1, 2, 0))  # CHW (torch's layout) -> HWC
        if a.shape[-1] == 1:
            a = a[..., 0]
        elif a.shape[-1] == 4:
            a = a[..., :3]
        elif a.shape[-1] != 3:
            a = a.mean(axis=-1)
    if was_uint8:
        return np.ascontiguousarray(a.astype(np.uint8))
    a = a.astype(np.float64)
    lo, hi = float(np.min(a)), float(np.max(a))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.full(a.shape, 128, dtype=np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _check_split(kind: str, split: str) -> bool:
    if split not in ("train", "test"):
        raise ValueError(f"dataset kind {kind!r}: split must be 'train' or 'test', got {split!r}")
    return split == "train"


# ---------------------------------------------------------------------------------------
# cifar10
# ---------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files: allows numpy arrays and plain Python values only."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")


def _read_cifar_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"CIFAR-10 file {str(path)!r} is not a valid CIFAR python batch: {exc}") from exc


def _cifar10_class():
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.vision import VisionDataset

    class CIFAR10Folder(CIFAR10):
        """torchvision CIFAR10 reading the python-pickle folder format without md5 checks.

        ``_check_integrity`` only checks that the files exist (so regenerated or subset
        folders work), and the batch files are read with an unpickler that allows numpy
        arrays only (no arbitrary code from a data folder).
        """

        def __init__(self, root: PathLike, train: bool = True, transform: Callable | None = None) -> None:
            VisionDataset.__init__(self, root, transform=transform)
            self.train = train
            if not self._check_integrity():
                missing = [n for n, _ in self.train_list + self.test_list
                           if not os.path.isfile(os.path.join(self.root, self.base_folder, n))]
                raise FileNotFoundError(
                    f"CIFAR-10 folder {os.path.join(self.root, self.base_folder)!r} is incomplete: "
                    f"missing {', '.join(missing)}"
                )
            files = self.train_list if train else self.test_list
            data, targets = [], []
            for name, _ in files:
                path = Path(self.root) / self.base_folder / name
                entry = _read_cifar_pickle(path)
                if not isinstance(entry, dict) or "data" not in entry or not ("labels" in entry or "fine_labels" in entry):
                    raise ValueError(f"CIFAR-10 file {str(path)!r} lacks 'data' and 'labels'")
                arr = np.asarray(entry["data"], dtype=np.uint8)
                if arr.size and (arr.ndim != 2 or arr.shape[1] != 3 * 32 * 32):
                    raise ValueError(f"CIFAR-10 file {str(path)!r}: data has shape {arr.shape}, expected (N, 3072)")
                labs = list(entry["labels"] if "labels" in entry else entry["fine_labels"])
                if len(labs) != (arr.shape[0] if arr.size else 0):
                    raise ValueError(f"CIFAR-10 file {str(path)!r}: {len(labs)} labels for {arr.shape[0]} images")
                data.append(arr.reshape(-1, 3 * 32 * 32))
                targets.extend(int(t) for t in labs)
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1)).copy()
            self.targets = targets
            self._load_meta()

        def _check_integrity(self) -> bool:  # existence only, no md5
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, n))
                       for n, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if path.is_file():
                meta = _read_cifar_pickle(path)
                names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
                self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else list(CIFAR10_CLASSES)
            else:
                self.classes = list(CIFAR10_CLASSES)
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10Folder


def _load_cifar10(root: Path, split: str) -> dict[str, Any]:
    from torchvision import transforms

    train = _check_split("cifar10", split)
    if not root.exists():
        raise FileNotFoundError(f"CIFAR-10 root {str(root)!r} does not exist")
    if (root / "data_batch_1").is_file() and not (root / "cifar-10-batches-py").exists():
        root = root.parent  # pointed at the cifar-10-batches-py folder itself
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ds = _cifar10_class()(str(root), train=train, transform=transform)
    labels = torch.tensor(ds.targets, dtype=torch.long)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(ds.classes)):
        raise ValueError(f"CIFAR-10 folder {str(root)!r}: labels outside 0..{len(ds.classes) - 1}")
    return dict(
        length=len(ds), get_input=lambda i: ds[i][0], get_image=lambda i: ds.data[i],
        original_labels=labels, classes=ds.classes,
        content_hash=lambda: _hash_arrays(ds.data, labels),
        source=str(root), params={"split": split}, base=ds,
    )


def make_cifar10_folder(root: PathLike, n_train: int, n_test: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write random images in CIFAR-10's python-pickle format under ``root/cifar-10-batches-py``.

    ``n_train`` images are split over ``data_batch_1..5`` (as evenly as possible),
    ``n_test`` go to ``test_batch``; ``batches.meta`` holds the class names. Returns
    ``{"train": (images NxHxWx3 uint8, labels int64), "test": (...)}`` as written.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def write(name: str, imgs: np.ndarray, labs: np.ndarray, label: str) -> None:
        entry = {
            "batch_label": label,
            "labels": [int(v) for v in labs],
            "data": imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3 * 32 * 32).copy(),
            "filenames": [f"{name}_{k:05d}.png" for k in range(len(imgs))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labs = rng.integers(0, 10, size=n).astype(np.int64)
        out[split] = (imgs, labs)
        if split == "train":
            bounds = np.linspace(0, n, 6).round().astype(int)
            for b in range(5):
                s, e = bounds[b], bounds[b + 1]
                write(f"data_batch_{b + 1}", imgs[s:e], labs[s:e], f"training batch {b + 1} of 5")
        else:
            write("test_batch", imgs, labs, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": max(1, -(-n_train // 5)), "label_names": list(CIFAR10_CLASSES),
                     "num_vis": 3072}, f, protocol=2)
    return out


# ---------------------------------------------------------------------------------------
# mnist
# ---------------------------------------------------------------------------------------
def _load_mnist(root: Path, split: str) -> dict[str, Any]:
    from torchvision import transforms
    from torchvision.datasets import MNIST

    train = _check_split("mnist", split)
    if not root.exists():
        raise FileNotFoundError(f"MNIST root {str(root)!r} does not exist")
    if not (root / "MNIST").exists() and root.name == "MNIST":
        root = root.parent  # pointed at the MNIST folder itself
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_NORMALIZE[0],), (MNIST_NORMALIZE[1],))])
    try:
        ds = MNIST(str(root), train=train, transform=transform, download=False)
    except RuntimeError as exc:
        raise FileNotFoundError(
            f"MNIST root {str(root)!r}: expected torchvision's raw files under {str(root / 'MNIST' / 'raw')!r} "
            f"(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte): {exc}"
        ) from exc
    except (AssertionError, ValueError) as exc:
        raise ValueError(f"MNIST root {str(root)!r}: files are not valid IDX files: {exc}") from exc
    labels = ds.targets.clone().long()
    return dict(
        length=len(ds), get_input=lambda i: ds[i][0], get_image=lambda i: ds.data[i].numpy(),
        original_labels=labels, classes=[str(d) for d in range(10)],
        content_hash=lambda: _hash_arrays(ds.data, labels),
        source=str(root), params={"split": split}, base=ds,
    )


# ---------------------------------------------------------------------------------------
# fashion_mnist (IDX files) and npy (memory-mapped arrays)
# ---------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: PathLike) -> np.ndarray:
    """An IDX file (the MNIST family's format), gzipped (``.gz``) or not, as a numpy array.

    ``path`` may omit the ``.gz``: the plain file is tried first, then ``path + ".gz"``.
    Raises ValueError naming the file when the header or the size is wrong.
    """
    import gzip

    path = Path(path)
    if not path.is_file() and Path(str(path) + ".gz").is_file():
        path = Path(str(path) + ".gz")
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {str(path)!r} (or {str(path)!r}.gz) does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"IDX file {str(path)!r} could not be read: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"IDX file {str(path)!r}: not an IDX header (magic {data[:4].hex()})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"IDX file {str(path)!r}: truncated header")
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    need = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != need:
        raise ValueError(f"IDX file {str(path)!r}: {len(data)} bytes, expected {need} for shape {shape}")
    # astype copies: the array returned is writable and owns its memory (not the bytes read)
    return np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def _normalized(images: torch.Tensor, mean: float, std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``idx -> (N, C, H, W)`` float inputs ``(x / 255 - mean) / std`` from uint8 images
    (N, H, W) or (N, H, W, C); the same elementwise ops for one image or a batch."""
    def batch(idx: torch.Tensor) -> torch.Tensor:
        x = images[idx]
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        return x.to(torch.get_default_dtype()).div(255).sub(mean).div(std)
    return batch


def _load_fashion_mnist(root: Path, split: str) -> dict[str, Any]:
    train = _check_split("fashion_mnist", split)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST folder {str(root)!r} does not exist (Debian: apt-get install dataset-fashion-mnist, "
            f"which installs it in {FASHION_MNIST_ROOT})")
    prefix = "train" if train else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte")
    if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST folder {str(root)!r}: {prefix} images {images.shape} {images.dtype} "
                         f"and labels {labels.shape} do not match")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < 10:
        raise ValueError(f"Fashion-MNIST folder {str(root)!r}: labels outside 0-9")
    x = torch.from_numpy(images)  # read_idx's array is writable and its own: no second copy
    y = torch.from_numpy(labels.astype(np.int64))
    batch = _normalized(x, *FASHION_MNIST_NORMALIZE)
    return dict(
        length=len(y), get_input=lambda i: batch(torch.tensor([i]))[0], get_batch=batch,
        get_image=lambda i: images[i], original_labels=y, classes=list(FASHION_MNIST_CLASSES),
        content_hash=lambda: _hash_arrays(images, labels), source=str(root),
        params={"split": split}, base=None,
    )


def _load_npy(path: Path, labels_path: Path | None, normalize: Sequence[float] | None) -> dict[str, Any]:
    """Images in a ``.npy`` file opened memory-mapped (nothing read until used), labels in a
    ``.npy`` or a one-column ``.csv``/``.txt`` file."""
    if labels_path is None:
        raise ValueError("dataset kind 'npy' needs 'labels' (a .npy or .csv file of integer labels)")
    if not path.is_file():
        raise FileNotFoundError(f"npy file {str(path)!r} does not exist")
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"npy file {str(path)!r} could not be opened (allow_pickle=False): {exc}") from exc
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
        raise ValueError(f"npy file {str(path)!r}: expected uint8 images (N, H, W) or (N, H, W, 1|3), "
                         f"got {images.dtype} {images.shape}")
    if not labels_path.is_file():
        raise FileNotFoundError(f"labels file {str(labels_path)!r} does not exist")
    if labels_path.suffix.lower() == ".npy":
        labels = np.load(labels_path, allow_pickle=False)
    else:
        labels = np.loadtxt(labels_path, dtype=np.int64, delimiter=",", ndmin=1)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
        raise ValueError(f"labels file {str(labels_path)!r}: expected {len(images)} integer labels, "
                         f"got {labels.dtype} {labels.shape}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels file {str(labels_path)!r}: negative label {int(labels.min())}")
    mean, std = (float(normalize[0]), float(normalize[1])) if normalize else (0.0, 1.0)
    x = _FileRows(images)
    batch = _normalized(x, mean, std)
    y = torch.from_numpy(labels.astype(np.int64))
    n_cls = int(labels.max()) + 1 if len(labels) else 1

    def content_hash() -> str:  # streamed: a million images are never all in memory
        h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
        for start in range(0, len(images), 65536):
            h.update(x.read(start, min(len(images), start + 65536)).tobytes())
        h.update(np.ascontiguousarray(labels).astype(np.int64).tobytes())
        return h.hexdigest()

    return dict(
        length=len(y), get_input=lambda i: batch(torch.tensor([i]))[0], get_batch=batch,
        get_image=lambda i: np.asarray(images[i]).squeeze(), original_labels=y,
        classes=[str(c) for c in range(n_cls)], content_hash=content_hash, source=str(path),
        params={"normalize": [mean, std]}, base=None,
    )


class _FileRows:
    """Row indexing of a memory-mapped ``.npy`` into fresh tensors.

    A run of consecutive rows (a batch of a pass over the data) is read from the file with
    one ``pread``, other indices through the memory map. Reading a million images through
    the map would leave every page mapped in the process (its resident memory growing with
    N); plain reads go through the page cache only, so a pass's memory stays flat.
    """

    def __init__(self, array: np.memmap) -> None:
        self.array = array
        self.row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
        self.path = getattr(array, "filename", None)
        self.offset = int(getattr(array, "offset", 0))
        self.plain = self.path is not None and array.flags.c_contiguous

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh array."""
        if not self.plain or stop <= start:
            return np.array(self.array[start:stop])
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        if len(data) != (stop - start) * self.row_bytes:
            raise ValueError(f"npy file {self.path!r} is shorter than its header says (rows {start}-{stop - 1})")
        out = np.frombuffer(bytearray(data), dtype=self.array.dtype)
        return out.reshape((stop - start,) + self.array.shape[1:])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
            return torch.from_numpy(self.read(int(idx[0]), int(idx[-1]) + 1))
        return torch.from_numpy(np.ascontiguousarray(self.array[idx]))


# ---------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------
_DIGITS_CACHE: dict[str, Any] = {}
_DIGITS_LOCK = threading.Lock()


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images (1797,8,8) float64 in 0..16, targets, train_idx, test_idx), cached."""
    with _DIGITS_LOCK:
        if not _DIGITS_CACHE:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            d = load_digits()
            target = np.asarray(d.target, dtype=np.int64)
            train_idx, test_idx = train_test_split(
                range(DIGITS_N), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=target
            )
            _DIGITS_CACHE.update(
                images=np.asarray(d.images, dtype=np.float64), target=target,
                train=np.asarray(train_idx, dtype=np.int64), test=np.asarray(test_idx, dtype=np.int64),
            )
        c = _DIGITS_CACHE
        return c["images"], c["target"], c["train"], c["test"]


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``sklearn.datasets.load_digits()`` of the demo's train and test items.

    ``train_test_split(range(1797), test_size=0.2, random_state=0, stratify=target)``,
    in the order it returns them (dataset index ``i`` of split ``s`` is ``load_digits()``
    item ``digits_split_indices()[s][i]``).
    """
    _, _, train, test = _digits_arrays()
    return train.copy(), test.copy()


def _load_digits(split: str) -> dict[str, Any]:
    train = _check_split("digits", split)
    images, target, train_idx, test_idx = _digits_arrays()
    idx = train_idx if train else test_idx
    raw = images[idx]  # (n, 8, 8) in 0..16
    x = torch.from_numpy(((raw / 16.0 - 0.5) / 0.5).astype(np.float32)).unsqueeze(1).contiguous()
    display = np.round(raw / 16.0 * 255.0).astype(np.uint8)
    labels = torch.from_numpy(target[idx].copy())
    return dict(
        length=len(idx), get_input=lambda i: x[i], get_image=lambda i: display[i],
        original_labels=labels, classes=[str(d) for d in range(10)],
        content_hash=lambda: _hash_arrays(x, idx),
        source="sklearn.datasets.load_digits", params={"split": split}, base=None, x=x,
        source_indices=idx.copy(),
    )


# ---------------------------------------------------------------------------------------
# tensors
# ---------------------------------------------------------------------------------------
def _load_tensors(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"tensors file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    classes: list[str] | None = None
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(
                f"tensors file {str(path)!r} could not be read with torch.load(weights_only=True): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(obj, dict) or "x" not in obj or "y" not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"tensors file {str(path)!r} must hold a dict with keys 'x' and 'y'; found {keys}")
        x, y = obj["x"], obj["y"]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError(f"tensors file {str(path)!r}: 'x' and 'y' must be tensors")
        if "classes" in obj:
            classes = [str(c) for c in obj["classes"]]
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if "x" not in npz.files or "y" not in npz.files:
                    raise ValueError(f"tensors file {str(path)!r} must hold arrays 'x' and 'y'; found {sorted(npz.files)}")
                xa, ya = npz["x"], npz["y"]
                if "classes" in npz.files:
                    classes = [str(c) for c in npz["classes"].tolist()]
        except ValueError as exc:
            if str(path) in str(exc):
                raise
            raise ValueError(f"tensors file {str(path)!r} could not be read as .npz (allow_pickle=False): {exc}") from exc
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"tensors file {str(path)!r} is not a valid .npz file: {exc}") from exc
        if xa.dtype == object or ya.dtype == object:
            raise ValueError(f"tensors file {str(path)!r}: object arrays are not allowed")
        if not np.issubdtype(xa.dtype, np.number) and xa.dtype != np.bool_:
            raise ValueError(f"tensors file {str(path)!r}: 'x' has non-numeric dtype {xa.dtype}")
        x, y = torch.from_numpy(np.ascontiguousarray(xa)), torch.from_numpy(np.ascontiguousarray(ya))
    else:
        raise ValueError(f"tensors file {str(path)!r}: unsupported suffix {suffix!r} (use .pt or .npz)")

    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dtype.is_complex:
        if y.dtype.is_floating_point and bool(torch.all(y == y.round())):
            y = y.long()
        else:
            raise ValueError(f"tensors file {str(path)!r}: 'y' must hold integer labels, got dtype {y.dtype}")
    y = y.reshape(-1).long() if y.dim() <= 1 else None
    if y is None:
        raise ValueError(f"tensors file {str(path)!r}: 'y' must be one-dimensional")
    if x.dim() < 1 or x.shape[0] != len(y):
        raise ValueError(f"tensors file {str(path)!r}: 'x' has {x.shape[0] if x.dim() else 0} rows but 'y' has {len(y)} labels")
    if x.is_complex():
        raise ValueError(f"tensors file {str(path)!r}: complex 'x' is not supported")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"tensors file {str(path)!r}: negative label {int(y.min())} in 'y'")
    n_cls = int(y.max()) + 1 if len(y) else 1
    if classes is None:
        classes = [str(c) for c in range(max(n_cls, 1))]
    elif n_cls > len(classes):
        raise ValueError(f"tensors file {str(path)!r}: label {n_cls - 1} but only {len(classes)} class names")
    was_uint8 = x.dtype == torch.uint8
    x_raw = x.detach().cpu().contiguous()
    xf = x_raw.to(torch.float32)
    return dict(
        length=len(y), get_input=lambda i: xf[i], get_image=lambda i: _to_display_uint8(x_raw[i].numpy(), was_uint8),
        original_labels=y, classes=classes,
        content_hash=lambda: _hash_arrays(x_raw, y),
        source=str(path), params={}, base=None, x=xf,
    )


# ---------------------------------------------------------------------------------------
# image_folder (+ safe zip extraction)
# ---------------------------------------------------------------------------------------
_ZIP_HASH_MEMO: dict[tuple[str, int, int], str] = {}
_ZIP_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _ZIP_LOCK:
        if key in _ZIP_HASH_MEMO:
            return _ZIP_HASH_MEMO[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _ZIP_LOCK:
        _ZIP_HASH_MEMO[key] = digest
    return digest


def _zip_cache_base() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    base = Path(tempfile.gettempdir()) / f"tracin_audit_zip_cache_{uid}"
    base.mkdir(mode=0o700, exist_ok=True)
    st = base.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"zip cache {str(base)!r} is not a plain directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise ValueError(f"zip cache {str(base)!r} belongs to another user")
    return base


def _check_member_name(zpath: Path, name: str) -> None:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or norm.startswith("//"):
        raise ValueError(f"zip file {str(zpath)!r}: member {name!r} has an absolute path")
    if any(part == ".." for part in norm.split("/")):
        raise ValueError(f"zip file {str(zpath)!r}: member {name!r} escapes the extraction folder ('..')")
    if "\x00" in norm:
        raise ValueError(f"zip file {str(zpath)!r}: member {name!r} has a NUL byte in its name")


def extract_zip_safely(
    zip_path: PathLike, dest: PathLike | None = None, *, max_bytes: int | None = None,
    max_members: int | None = None,
) -> Path:
    """Extract a zip of images into a cache folder and return that folder.

    Rejects absolute member paths, ``..`` components, symlinks, more than
    ``max_members`` (default ``MAX_ZIP_MEMBERS``) members and more than ``max_bytes``
    (default :data:`MAX_ZIP_UNCOMPRESSED_BYTES`, 1 GiB) uncompressed, declared or actually
    read. Without ``dest`` the folder is ``<tmp>/tracin_audit_zip_cache_<uid>/<sha256>``
    and is reused when it already exists; extraction goes to a temporary sibling that is
    renamed into place, so concurrent callers are safe.
    """
    zpath = Path(zip_path)
    if max_bytes is None:
        max_bytes = MAX_ZIP_UNCOMPRESSED_BYTES
    if max_members is None:
        max_members = MAX_ZIP_MEMBERS
    if not zpath.is_file():
        raise FileNotFoundError(f"zip file {str(zpath)!r} does not exist")
    if dest is None:
        dest = _zip_cache_base() / _file_sha256(zpath)
    dest = Path(dest)
    if (dest / ".complete").is_file():
        return dest
    try:
        zf = zipfile.ZipFile(zpath)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"zip file {str(zpath)!r} is not a valid zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise ValueError(f"zip file {str(zpath)!r} has {len(infos)} members (limit {max_members})")
        declared = 0
        for info in infos:
            _check_member_name(zpath, info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                raise ValueError(f"zip file {str(zpath)!r}: member {info.filename!r} is a symbolic link")
            if info.flag_bits & 0x1:
                raise ValueError(f"zip file {str(zpath)!r}: member {info.filename!r} is encrypted")
            declared += info.file_size
        if declared > max_bytes:
            raise ValueError(
                f"zip file {str(zpath)!r} would expand to {declared} bytes, over the limit of {max_bytes} bytes"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir(mode=0o700)
        try:
            written = 0
            tmp_resolved = tmp.resolve()
            for info in infos:
                target = (tmp / info.filename.replace("\\", "/")).resolve()
                if target != tmp_resolved and tmp_resolved not in target.parents:
                    raise ValueError(f"zip file {str(zpath)!r}: member {info.filename!r} escapes the extraction folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise ValueError(
                                f"zip file {str(zpath)!r} expands to more than the limit of {max_bytes} bytes"
                            )
                        out.write(chunk)
            (tmp / ".complete").write_text("ok\n")
            try:
                os.replace(tmp, dest)
            except OSError:
                if not (dest / ".complete").is_file():  # not a concurrent winner: a real error
                    raise
        except zipfile.BadZipFile as exc:
            raise ValueError(f"zip file {str(zpath)!r} is corrupt: {exc}") from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _find_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for fn in sorted(filenames):
            if not _is_hidden(fn) and fn.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / fn)
    return found


def _image_folder_root(root: Path) -> Path:
    """Descend into a single wrapping folder (``data/cat/*.png`` inside a zip)."""
    for _ in range(3):
        entries = [e for e in root.iterdir() if not _is_hidden(e.name)]
        dirs = [e for e in entries if e.is_dir()]
        if len(dirs) != 1 or any(e.is_file() for e in entries):
            return root
        inner = dirs[0]
        inner_entries = [e for e in inner.iterdir() if not _is_hidden(e.name)]
        if inner_entries and all(e.is_dir() for e in inner_entries):
            root = inner
        else:
            return root
    return root


def open_image(path: PathLike):
    """``PIL.Image.open`` with PIL's decompression-bomb limit as a hard error.

    PIL only warns between ``Image.MAX_IMAGE_PIXELS`` and twice that; here an image over
    the limit always raises (``PIL.Image.DecompressionBombError``), before any pixel is
    decoded (the size comes from the header; no global warning filter is touched, so
    threads serving other sessions are unaffected). The caller closes the image.
    """
    from PIL import Image

    im = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.size[0] * im.size[1] > limit:
        size = im.size
        im.close()
        raise Image.DecompressionBombError(
            f"image of {size[0]}x{size[1]} = {size[0] * size[1]} pixels is over the limit of {limit} "
            "pixels (PIL's decompression-bomb guard)")
    return im


def check_image_files(dataset: "LabeledDataset", max_problems: int = 10) -> list[str]:
    """Open every image file's header (no decoding); the problems found, file by file.

    For ``image_folder`` datasets (others have no files and give ``[]``): a file that is
    not an image, is truncated before its header ends, or is over PIL's
    decompression-bomb limit is named with the reason. Stops after ``max_problems``.
    """
    problems: list[str] = []
    for f in getattr(dataset, "files", None) or []:
        try:
            with open_image(f) as im:
                im.size  # noqa: B018 - the header is read by open
        except Exception as exc:  # noqa: BLE001 - every reason is reported by name
            problems.append(f"{_display_path(dataset, f)}: {type(exc).__name__}: {exc}")
            if len(problems) >= max_problems:
                break
    return problems


def _display_path(dataset: "LabeledDataset", f: Path) -> str:
    """A file's path relative to its class folders' parent (never the server's cache path)."""
    return "/".join(Path(f).parts[-2:])


def _load_image_folder(root: Path, image_size: int, max_zip_bytes: int | None = None,
                       max_zip_files: int | None = None) -> dict[str, Any]:
    from torchvision import transforms

    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    try:
        image_size = int(image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an integer, got {image_size!r}") from None
    if not 1 <= image_size <= 4096:
        raise ValueError(f"image_size must be between 1 and 4096, got {image_size}")
    params: dict[str, Any] = {"image_size": image_size}
    if root.is_file():
        if root.suffix.lower() != ".zip" and not zipfile.is_zipfile(root):
            raise ValueError(f"image folder {str(root)!r} is a file but not a .zip archive")
        zip_digest = _file_sha256(root)
        folder = _image_folder_root(extract_zip_safely(root, max_bytes=max_zip_bytes,
                                                       max_members=max_zip_files))
        params["zip_sha256"] = zip_digest
    else:
        folder = _image_folder_root(root)
        zip_digest = None
    class_dirs = sorted(e for e in folder.iterdir() if e.is_dir() and not _is_hidden(e.name))
    if not class_dirs:
        raise ValueError(f"image folder {str(root)!r} has no class subfolders (expected one subfolder per class)")
    classes = [d.name for d in class_dirs]
    files: list[Path] = []
    labels: list[int] = []
    for c, d in enumerate(class_dirs):
        imgs = _find_images(d)
        files.extend(imgs)
        labels.extend([c] * len(imgs))
    if not files:
        raise ValueError(
            f"image folder {str(root)!r} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}) in its class subfolders"
        )
    resize = transforms.Resize((image_size, image_size))
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def load_pil(i: int):
        try:
            with open_image(files[i]) as im:
                return resize(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"image {str(files[i])!r} could not be read: {type(exc).__name__}: {exc}") from exc

    def content_hash() -> str:
        h = hashlib.sha256()
        if zip_digest is not None:
            h.update(f"zip:{zip_digest}".encode())
        for f in files:
            st = f.stat()
            rel = f.relative_to(folder).as_posix()
            h.update(f"{rel}\0{st.st_size}".encode())
            if zip_digest is None:  # extracted files get fresh mtimes; the zip hash covers them
                h.update(f"\0{st.st_mtime_ns}".encode())
            h.update(b"\n")
        return h.hexdigest()

    return dict(
        length=len(files), get_input=lambda i: to_tensor(load_pil(i)),
        get_image=lambda i: np.array(load_pil(i), dtype=np.uint8),
        original_labels=torch.tensor(labels, dtype=torch.long), classes=classes,
        content_hash=content_hash, source=str(root), params=params, base=None, files=files,
    )


# ---------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------
def load_dataset(
    kind: str,
    *,
    root: PathLike | None = None,
    split: str = "train",
    path: PathLike | None = None,
    labels_override: PathLike | None = None,
    base_dir: PathLike | None = None,
    image_size: int = 32,
    max_zip_bytes: int | None = None,
    max_zip_files: int | None = None,
    labels: PathLike | None = None,
    normalize: Sequence[float] | None = None,
    flagged: str | Iterable[str] = "exclude",
) -> LabeledDataset:
    """Load a dataset of one of :data:`DATASET_KINDS`.

    * ``cifar10``: ``root`` holds ``cifar-10-batches-py`` (torchvision's folder format; md5
      checks skipped); ``split`` train/test; ToTensor + Normalize(0.5, 0.5).
    * ``mnist``: ``root`` holds ``MNIST/raw`` (torchvision's format, never downloaded);
      ToTensor + Normalize(0.1307, 0.3081).
    * ``image_folder``: ``root`` is a folder with one subfolder per class, or a ``.zip``
      of that; images converted to RGB, resized to ``image_size``x``image_size``,
      ToTensor + Normalize(0.5, 0.5).
    * ``fashion_mnist``: ``root`` holds the four IDX files (``train-images-idx3-ubyte`` …,
      gzipped or not; default :data:`FASHION_MNIST_ROOT`, Debian's ``dataset-fashion-mnist``);
      ``split`` train/test; (1, 28, 28) inputs ``(x/255 - 0.2860)/0.3530``; class names.
    * ``npy``: ``path`` to a uint8 ``.npy`` image array (N, H, W[, C]) opened memory-mapped,
      ``labels`` a ``.npy`` or one-column ``.csv`` of integer labels; inputs
      ``(x/255 - mean)/std`` with ``normalize = [mean, std]`` (default [0, 1]).
    * ``digits``: scikit-learn's bundled digits, the demo's fixed 80/20 split; (1, 8, 8)
      inputs ``(x/16 - 0.5)/0.5``.
    * ``tensors``: ``path`` to a ``.pt`` (``weights_only=True``) with ``{"x", "y"}`` (and
      optionally ``"classes"``) or an ``.npz`` with arrays ``x``, ``y`` (``allow_pickle=False``).

    ``max_zip_bytes`` / ``max_zip_files`` cap the extraction of a zipped image folder
    (defaults :data:`MAX_ZIP_UNCOMPRESSED_BYTES` / :data:`MAX_ZIP_MEMBERS`).
    ``labels_override``: a CSV ``index,label[,excluded,flag,duplicate_of]`` (see
    :func:`tracin_core.audit.labels_csv.read_labels_csv`); ``flagged``: what to do with the items it flags
    (excluded, ambiguous, outlier, duplicate): ``"exclude"`` (default) them, ``"keep"``
    them with their label, or exclude only the flags listed. Relative paths are resolved
    against ``base_dir``.
    """
    flagged_set(flagged)  # a wrong choice fails before any data is read
    kind = str(kind).strip().lower()
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    root_p, path_p = _resolve(root, base_dir), _resolve(path, base_dir)
    override_p = _resolve(labels_override, base_dir)
    if kind in ("cifar10", "mnist", "image_folder"):
        root_p = root_p if root_p is not None else path_p
        if root_p is None:
            raise ValueError(f"dataset kind {kind!r} needs 'root'")
    if kind == "fashion_mnist":
        spec = _load_fashion_mnist(root_p if root_p is not None else FASHION_MNIST_ROOT, split)
    elif kind == "npy":
        path_p = path_p if path_p is not None else root_p
        if path_p is None:
            raise ValueError("dataset kind 'npy' needs 'path' (a .npy file of uint8 images)")
        spec = _load_npy(path_p, _resolve(labels, base_dir), normalize)
    elif kind == "cifar10":
        spec = _load_cifar10(root_p, split)
    elif kind == "mnist":
        spec = _load_mnist(root_p, split)
    elif kind == "image_folder":
        spec = _load_image_folder(root_p, image_size, max_zip_bytes, max_zip_files)
    elif kind == "digits":
        spec = _load_digits(split)
    else:
        path_p = path_p if path_p is not None else root_p
        if path_p is None:
            raise ValueError("dataset kind 'tensors' needs 'path' (a .pt or .npz file)")
        spec = _load_tensors(path_p)
    extras = {k: spec.pop(k) for k in ("base", "x", "files", "source_indices") if k in spec}
    ds = LabeledDataset(kind=kind, labels_override=override_p, flagged=flagged, **spec)
    ds.base = extras.get("base")
    if "source_indices" in extras:
        ds.source_indices = extras["source_indices"]
    if "files" in extras:
        ds.files = list(extras["files"])
    return ds


_CONFIG_KEYS = {"kind", "root", "split", "path", "labels_override", "flagged", "image_size", "labels", "normalize"}


def load_dataset_config(config: dict[str, Any], base_dir: PathLike | None = None, *, section: str = "dataset") -> LabeledDataset:
    """:func:`load_dataset` from a workspace table such as ``[train]`` (unknown keys rejected)."""
    if not isinstance(config, dict):
        raise ValueError(f"[{section}] must be a table, got {type(config).__name__}")
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"[{section}]: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_CONFIG_KEYS))}")
    if "kind" not in config:
        raise ValueError(f"[{section}]: missing 'kind' (one of {', '.join(DATASET_KINDS)})")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    return load_dataset(config["kind"], base_dir=base_dir, **kwargs)

