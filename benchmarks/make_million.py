"""Make a 1,000,000-image workspace of the ``npy`` kind for the scale benchmark (never committed).

    python benchmarks/make_million.py [--out benchmarks/_work/million] [--n 1000000] [--seed 0]

Each image is a Fashion-MNIST training image (Debian's ``dataset-fashion-mnist``) drawn at
random (seeded) and shifted by up to ``--shift`` pixels in each direction (zero fill); it
keeps its source's label in the built-in Fashion-MNIST workspace (the noisy labels its
checkpoints were trained on) and its true label (the ground truth). The workspace uses
those six checkpoints (``assets/fashion``) and the Fashion-MNIST test set.

Written in chunks through a memory-mapped ``.npy`` (the million images, 784 MB, are never
all in memory): ``images.npy`` (N, 28, 28) uint8, ``labels.npy`` (N,) int64,
``labels.csv`` (index, true_label), ``workspace.toml``. An existing folder made with the
same settings is reused (``meta.json`` records them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_OUT = REPO / "benchmarks" / "_work" / "million"
CHUNK = 50_000

WORKSPACE_TOML = """\
# 1,000,000 shifted Fashion-MNIST images (benchmarks/make_million.py); never committed.
name = "fashion-million"

[model]
factory = "tracin_core.audit.models:FashionCNN"
final_fc_layer = "fc2"

[checkpoints]
paths = {checkpoints}

[train]
kind = "npy"
path = "images.npy"
labels = "labels.npy"
normalize = [0.2860, 0.3530]

[test]
kind = "fashion_mnist"
split = "test"

[loss]
name = "cross_entropy"
reduction = "sum"

[evaluation]
ground_truth = "labels.csv"
"""


def shifted(images: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``images`` (n, H, W) uint8 each moved by (dx, dy) pixels (positive = right / down), zero fill."""
    n, h, w = images.shape
    m = int(max(np.abs(dx).max(initial=0), np.abs(dy).max(initial=0)))
    padded = np.zeros((n, h + 2 * m, w + 2 * m), dtype=images.dtype)
    padded[:, m:m + h, m:m + w] = images
    rows = (np.arange(h)[None, :] + m - dy[:, None])[:, :, None]
    cols = (np.arange(w)[None, :] + m - dx[:, None])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def make(out: Path = DEFAULT_OUT, n: int = 1_000_000, seed: int = 0, shift: int = 2) -> Path:
    """Write the workspace into ``out`` (reused when made with the same settings); returns its TOML."""
    import pandas as pd
    from numpy.lib.format import open_memmap

    from tracin_core.audit.datasets import FASHION_MNIST_ROOT, load_dataset, read_idx
    from tracin_core.audit.demo import FASHION_DIR

    settings = {"n": n, "seed": seed, "shift": shift, "version": 1}
    toml = out / "workspace.toml"
    meta = out / "meta.json"
    if toml.is_file() and meta.is_file() and json.loads(meta.read_text()) == settings:
        return toml
    out.mkdir(parents=True, exist_ok=True)
    meta.unlink(missing_ok=True)
    source = load_dataset("fashion_mnist", split="train")
    pixels = read_idx(FASHION_MNIST_ROOT / "train-images-idx3-ubyte")
    if len(pixels) != len(source):
        raise SystemExit(f"{FASHION_MNIST_ROOT}: {len(pixels)} images, {len(source)} labels")
    table = pd.read_csv(FASHION_DIR / "labels.csv").sort_values("index")
    noisy, true = table["noisy_label"].to_numpy(np.int64), table["true_label"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(pixels), size=n)
    dx, dy = rng.integers(-shift, shift + 1, size=(2, n))
    images = open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(n,) + pixels.shape[1:])
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        images[s:e] = shifted(pixels[src[s:e]], dx[s:e], dy[s:e])
        print(f"  images {e:,}/{n:,}", file=sys.stderr, flush=True)
    images.flush()
    del images
    np.save(out / "labels.npy", noisy[src])
    pd.DataFrame({"index": np.arange(n), "true_label": true[src]}).to_csv(out / "labels.csv", index=False)
    toml.write_text(WORKSPACE_TOML.format(checkpoints=json.dumps(str(FASHION_DIR.resolve() / "checkpoint-*.pt"))))
    meta.write_text(json.dumps(settings))
    return toml


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=int, default=2, help="largest shift in pixels, each direction")
    args = ap.parse_args(argv)
    print(make(args.out, args.n, args.seed, args.shift))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
