"""Shared helpers for the benchmarks: the CIFAR-10-format data, checkpoints, timing, memory.

Both libraries are fed the *same* Dataset type: torchvision's ``CIFAR10`` (its own
pickle reader and ``__getitem__``: PIL image -> ToTensor -> Normalize), subclassed only to
skip the md5 checks (the folder holds random images, not the real CIFAR-10).
"""
from __future__ import annotations

import glob
import json
import os
import pickle
import resource
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ----------------------------------------------------------------------------- data


def make_dataset_class():
    from torchvision.datasets import CIFAR10

    class CIFAR10NoCheck(CIFAR10):
        """torchvision's CIFAR10 with the md5 checks switched off (random-image folder)."""

        def _check_integrity(self) -> bool:  # noqa: D401
            return True

        def _load_meta(self) -> None:  # torchvision's md5-checks batches.meta too
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return CIFAR10NoCheck


def tutorial_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def load_split(root: str | os.PathLike, train: bool):
    cls = make_dataset_class()
    return cls(str(root), train=train, download=False, transform=tutorial_transform())


def _write_cifar_folder(root: Path, n_train: int, n_test: int, seed: int) -> None:
    """Fallback writer (torchvision's python-pickle format), used if tracin_core's is unusable."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def write(name, imgs, labs, label):
        entry = {
            "batch_label": label,
            "labels": [int(v) for v in labs],
            "data": imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3072).copy(),
            "filenames": [f"{name}_{k:05d}.png" for k in range(len(imgs))],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    imgs = rng.integers(0, 256, size=(n_train, 32, 32, 3), dtype=np.uint8)
    labs = rng.integers(0, 10, size=n_train)
    bounds = np.linspace(0, n_train, 6).round().astype(int)
    for b in range(5):
        write(f"data_batch_{b + 1}", imgs[bounds[b]:bounds[b + 1]], labs[bounds[b]:bounds[b + 1]],
              f"training batch {b + 1} of 5")
    imgs = rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8)
    labs = rng.integers(0, 10, size=n_test)
    write("test_batch", imgs, labs, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": max(1, -(-n_train // 5)), "label_names": CIFAR10_CLASSES,
                     "num_vis": 3072}, f, protocol=2)


def ensure_cifar_folder(work: Path, n_train: int, n_test: int, seed: int = 0) -> tuple[Path, str]:
    """A CIFAR-10-format folder of random images under ``work`` (created once, then reused).

    Returns ``(root, writer)``; ``writer`` says which code wrote the files.
    """
    root = work / f"cifar10_random_{n_train}_{n_test}_s{seed}"
    marker = root / "DONE.json"
    if marker.exists():
        return root, json.loads(marker.read_text()).get("writer", "?")
    writer = "tracin_core.audit.datasets.make_cifar10_folder"
    try:
        from tracin_core.audit.datasets import make_cifar10_folder

        make_cifar10_folder(root, n_train, n_test, seed)
        ds_tr, ds_te = load_split(root, True), load_split(root, False)
        assert len(ds_tr) == n_train and len(ds_te) == n_test
        x, y = ds_tr[0]
        assert tuple(x.shape) == (3, 32, 32) and 0 <= int(y) < 10
    except Exception as exc:  # noqa: BLE001  (missing or broken, whatever the error: use our own writer)
        print(f"[bench] make_cifar10_folder unusable ({exc!r}); using benchmarks.common writer", flush=True)
        writer = "benchmarks.common._write_cifar_folder"
        _write_cifar_folder(root, n_train, n_test, seed)
        ds_tr, ds_te = load_split(root, True), load_split(root, False)
        assert len(ds_tr) == n_train and len(ds_te) == n_test
    marker.write_text(json.dumps({"n_train": n_train, "n_test": n_test, "seed": seed, "writer": writer}))
    return root, writer


def test_batch(test_ds, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [test_ds[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.long)


# ----------------------------------------------------------------------------- checkpoints


def checkpoints_load_func(net: nn.Module, path: str) -> float:
    """The tutorial's loader (same function for both libraries)."""
    net.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
    return 1.0


def ensure_checkpoints(data_root: Path, n_ckpt: int = 6, n_images: int = 5000, batch_size: int = 4,
                       every: int = 200, seed: int = 0) -> tuple[list[str], str]:
    """Train TutorialCifarNet briefly (SGD lr 0.001, momentum 0.9, one epoch on the first
    ``n_images`` training images, batch 4 as in PyTorch's CIFAR-10 tutorial), saving a
    tutorial-style checkpoint every ``every`` steps. Reused if present.

    Returns ``(sorted paths, description)``.
    """
    from tracin_core.audit.models import TutorialCifarNet

    folder = data_root / "checkpoints"
    marker = folder / "DONE.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        return sorted(glob.glob(str(folder / "*.pt"))), info["how"]
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train = load_split(data_root, True)
    n = min(n_images, len(train))
    steps_needed = n_ckpt * every
    # with few images, train over several epochs until n_ckpt checkpoints exist
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train, range(n)), batch_size=batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(seed))
    net = TutorialCifarNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    step, epoch, saved = 0, 0, 0
    t0 = time.perf_counter()
    running = 0.0
    while saved < n_ckpt:
        for x, y in loader:
            opt.zero_grad()
            loss = crit(net(x), y)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item()
            if step % every == 0:
                saved += 1
                torch.save({"epoch": epoch, "model_state_dict": net.state_dict(),
                            "optimizer_state_dict": opt.state_dict(), "loss": running / every},
                           folder / f"cifar_10_step{step:05d}.pt")
                running = 0.0
                if saved >= n_ckpt:
                    break
        epoch += 1
    how = (f"trained: SGD lr=0.001 momentum=0.9, batch {batch_size}, {step} steps "
           f"({step * batch_size / n:.2f} epochs over the first {n} training images), "
           f"checkpoint every {every} steps ({time.perf_counter() - t0:.1f} s)")
    marker.write_text(json.dumps({"how": how, "steps": step}))
    assert step >= steps_needed
    return sorted(glob.glob(str(folder / "*.pt"))), how


# ----------------------------------------------------------------------------- measuring


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:  # noqa: BLE001  (no psutil or no reading: report nan, never stop a benchmark)
        return float("nan")


class Timer:
    """Wall-clock seconds (``s``) and this process's CPU seconds, all threads (``cpu``)."""

    def __enter__(self):
        self.c0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (scale-relative: well-defined when some entries are ~0)."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.shape != b.shape:
        return float("inf")
    scale = b.abs().max().clamp_min(1e-300)
    return float((a - b).abs().max() / scale)


def max_elem_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max_i |a_i - b_i| / |b_i| over entries with |b_i| > 1e-6 · max |b|."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.shape != b.shape:
        return float("inf")
    mask = b.abs() > 1e-6 * b.abs().max()
    if not mask.any():
        return 0.0
    return float(((a - b).abs()[mask] / b.abs()[mask]).max())


# ----------------------------------------------------------------------------- a shared, noisy machine


def cpu_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            parts = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / hz, (busy + idle + iowait) / hz


def machine_busy_cores(interval: float = 1.0) -> float:
    """Average number of busy cores over ``interval`` seconds (call it while idle yourself)."""
    b0, _ = cpu_busy_seconds()
    time.sleep(interval)
    b1, _ = cpu_busy_seconds()
    return (b1 - b0) / interval


def wait_quiet(max_wait: float, threshold: float = 0.3, log=print) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < ``threshold`` cores for 3 s in a row.

    Returns the busy cores seen last.
    """
    t0 = time.perf_counter()
    quiet = 0
    busy = machine_busy_cores()
    while time.perf_counter() - t0 < max_wait:
        if busy < threshold:
            quiet += 1
            if quiet >= 3:
                return busy
        else:
            quiet = 0
        busy = machine_busy_cores()
    log(f"[bench] machine still busy ({busy:.2f} cores used by others) after {max_wait:.0f} s; going on")
    return busy
