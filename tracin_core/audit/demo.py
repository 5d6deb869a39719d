"""The built-in digits demo: a small CNN trained on deliberately mislabelled digits.

Recipe (Captum's TracInCP tutorial, scaled down to scikit-learn's 8x8 digits):

1. The fixed 80/20 split of ``load_digits`` (see :func:`tracin_core.audit.datasets.digits_split_indices`).
2. Train a :class:`~tracin_core.audit.models.DigitsCNN` on the clean training labels.
3. Pick a seeded random 10% of the training items (``torch.Generator().manual_seed(seed)``)
   and give each the clean model's most probable *wrong* class; the true labels stay as
   ground truth.
4. Train a fresh ``DigitsCNN`` on the noisy labels (SGD, lr 0.05, momentum 0.9, batch 64)
   and save checkpoints evenly spread over training.

Outputs in ``out_dir`` (``assets/demo`` by default): ``checkpoint-<epoch>.pt`` (epoch
zero-padded so that names sort by epoch; each ``{"model_state_dict", "learning_rate",
"epoch"}``, loadable with ``torch.load(weights_only=True)``), ``labels.csv``
(``index,noisy_label,true_label,is_mislabelled``), ``labels_override.csv``
(``index,label``: the noisy labels), ``workspace.toml`` and ``meta.json``.

Everything is deterministic on a given machine: seeds, one thread and deterministic
algorithms while training. Rebuild with ``python -m tracin_core.audit.demo --rebuild``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from tracin_core.audit.datasets import load_dataset
from tracin_core.audit.models import DigitsCNN, FashionCNN

__all__ = [
    "DEMO_DIR",
    "DEFAULT_EPOCHS",
    "build_demo",
    "build_fashion",
    "FASHION_DIR",
    "retrain_on_labels",
    "train_digits_cnn",
    "evaluate",
    "demo_dir",
    "load_demo_labels",
    "verify_demo",
    "main",
]

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"
FASHION_DIR = Path(__file__).resolve().parents[2] / "assets" / "fashion"
#: the Fashion-MNIST recipe: all 60,000 / 10,000 images, the same noise procedure
FASHION = {"epochs": 6, "clean_epochs": 3, "batch_size": 128, "learning_rate": 0.05}
DEFAULT_EPOCHS = 30
CLEAN_EPOCHS = 15
LEARNING_RATE = 0.05
MOMENTUM = 0.9
BATCH_SIZE = 64
NOISE_FRACTION = 0.10
N_CHECKPOINTS = 6

Progress = Callable[[float, str], None] | None

WORKSPACE_TOML = """\
# The built-in digits demo (written by `python -m tracin_core.audit.demo --rebuild`).
name = "digits-demo"

[model]
factory = "tracin_core.audit.models:DigitsCNN"
final_fc_layer = "fc2"

[checkpoints]
paths = "checkpoint-*.pt"
# no learning_rate here: each checkpoint stores the one used ("learning_rate" key)

[train]
kind = "digits"
split = "train"
labels_override = "labels_override.csv"   # the noisy labels the checkpoints were trained on

[test]
kind = "digits"
split = "test"

[loss]
name = "cross_entropy"
reduction = "sum"

[evaluation]
ground_truth = "labels.csv"   # index,true_label: the demo knows which labels it corrupted
"""


def demo_dir() -> Path:
    """Folder of the shipped demo assets (``assets/demo`` next to the package)."""
    return DEMO_DIR


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One thread and deterministic algorithms; previous settings restored afterwards."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_num_threads(threads)


def _report(progress: Progress, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(min(max(fraction, 0.0), 1.0)), message)


def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train = load_dataset("digits", split="train")
    test = load_dataset("digits", split="test")
    x_train = torch.stack([train[i][0] for i in range(len(train))])
    x_test = torch.stack([test[i][0] for i in range(len(test))])
    return x_train, train.original_labels, x_test, test.original_labels


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    pred = model(x).argmax(dim=1)
    return float((pred == y).float().mean())


def train_digits_cnn(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    lr: float = LEARNING_RATE,
    momentum: float = MOMENTUM,
    batch_size: int = BATCH_SIZE,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    progress: Progress = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    factory: Callable[[], nn.Module] = lambda: DigitsCNN(num_classes=10),
) -> nn.Module:
    """Train a fresh, seeded ``factory()`` model (default ``DigitsCNN``) on ``(x, y)``
    with SGD; deterministic.

    ``on_epoch_end(epoch, model)`` is called after each epoch (1-based).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if len(x) == 0:
        raise ValueError("no training examples")
    with _deterministic():
        torch.manual_seed(seed)
        model = factory()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.CrossEntropyLoss()
        n = len(x)
        lo, hi = progress_span
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
            if on_epoch_end is not None:
                on_epoch_end(epoch, model)
            _report(progress, lo + (hi - lo) * epoch / epochs, f"epoch {epoch}/{epochs}")
    model.eval()
    return model


def _checkpoint_epochs(epochs: int, n: int = N_CHECKPOINTS) -> list[int]:
    """``n`` epochs evenly spread over ``1..epochs``, ending with the last one."""
    return sorted({max(1, int(round(epochs * (k + 1) / n))) for k in range(n)})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_csv(path: Path, header: Sequence[str], rows: Iterator[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode("utf-8"))


def build_demo(
    out_dir: str | Path = DEMO_DIR,
    seed: int = 0,
    progress: Progress = None,
    *,
    epochs: int = DEFAULT_EPOCHS,
    clean_epochs: int = CLEAN_EPOCHS,
) -> dict[str, Any]:
    """Build the demo assets into ``out_dir``; returns the contents of ``meta.json``.

    ``progress(fraction, message)`` is called as training proceeds. Old
    ``checkpoint-*.pt`` files in ``out_dir`` are removed first.
    """
    _report(progress, 0.0, "loading digits")
    return _build(Path(out_dir), "digits-demo", _digits_tensors(), WORKSPACE_TOML, seed, progress,
                  epochs=epochs, clean_epochs=clean_epochs, batch_size=BATCH_SIZE,
                  factory=lambda: DigitsCNN(num_classes=10))


FASHION_TOML = """\
# The built-in Fashion-MNIST workspace (written by `python -m tracin_core demo --rebuild fashion`).
# Its data come from Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist).
name = "fashion-mnist"

[model]
factory = "tracin_core.audit.models:FashionCNN"
final_fc_layer = "fc2"

[checkpoints]
paths = "checkpoint-*.pt"

[train]
kind = "fashion_mnist"
split = "train"
labels_override = "labels_override.csv"   # the noisy labels the checkpoints were trained on

[test]
kind = "fashion_mnist"
split = "test"

[loss]
name = "cross_entropy"
reduction = "sum"

[evaluation]
ground_truth = "labels.csv"   # index,true_label: the recipe knows which labels it corrupted
"""


def _fashion_tensors(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train = load_dataset("fashion_mnist", split="train")
    test = load_dataset("fashion_mnist", split="test")
    n_train = len(train) if limit is None else min(limit, len(train))
    n_test = len(test) if limit is None else min(limit, len(test))
    x_train, y_train = train.decode_batch(range(n_train))
    x_test, y_test = test.decode_batch(range(n_test))
    return x_train, y_train, x_test, y_test


def build_fashion(out_dir: str | Path = FASHION_DIR, seed: int = 0, progress: Progress = None, *,
                  epochs: int = FASHION["epochs"], clean_epochs: int = FASHION["clean_epochs"],
                  limit: int | None = None) -> dict[str, Any]:
    """Build the Fashion-MNIST workspace into ``out_dir`` (the digits recipe on all 60,000
    training images, :class:`~tracin_core.audit.models.FashionCNN`, batches of 128; about 2.5
    minutes on two cores). ``limit`` takes the first images only (for tests)."""
    _report(progress, 0.0, "loading Fashion-MNIST")
    meta = _build(Path(out_dir), "fashion-mnist", _fashion_tensors(limit), FASHION_TOML, seed, progress,
                  epochs=epochs, clean_epochs=clean_epochs, batch_size=FASHION["batch_size"],
                  factory=lambda: FashionCNN(num_classes=10))
    return meta


def _build(out: Path, name: str, tensors: tuple[torch.Tensor, ...], workspace_toml: str, seed: int,
           progress: Progress, *, epochs: int, clean_epochs: int, batch_size: int,
           factory: Callable[[], nn.Module]) -> dict[str, Any]:
    """The recipe of the module docstring for one data set; writes ``out`` and returns the meta."""
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_true, x_test, y_test = tensors
    n = len(y_true)

    # 1. clean model
    clean = train_digits_cnn(x_train, y_true, epochs=clean_epochs, seed=seed, batch_size=batch_size,
                             progress=progress, progress_span=(0.0, 0.3), factory=factory)
    acc_clean = evaluate(clean, x_test, y_test)

    # 2. mislabel a seeded 10%: most probable wrong class of the clean model
    n_noisy = int(round(NOISE_FRACTION * n))
    gen = torch.Generator().manual_seed(seed)
    noisy_idx = torch.randperm(n, generator=gen)[:n_noisy].sort().values
    with torch.no_grad(), _deterministic():
        logits = clean(x_train[noisy_idx])
    logits[torch.arange(n_noisy), y_true[noisy_idx]] = float("-inf")
    y_noisy = y_true.clone()
    y_noisy[noisy_idx] = logits.argmax(dim=1)
    mislabelled = y_noisy != y_true
    assert int(mislabelled.sum()) == n_noisy

    # 3. noisy model with checkpoints
    for old in out.glob("checkpoint-*.pt"):
        old.unlink()
    ckpt_epochs = _checkpoint_epochs(epochs)
    width = len(str(epochs))
    checkpoints: list[dict[str, Any]] = []

    def save(epoch: int, model: nn.Module) -> None:
        if epoch not in ckpt_epochs:
            return
        path = out / f"checkpoint-{epoch:0{width}d}.pt"
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        torch.save({"model_state_dict": state, "learning_rate": LEARNING_RATE, "epoch": epoch}, path)
        checkpoints.append({"file": path.name, "epoch": epoch, "test_accuracy": round(evaluate(model, x_test, y_test), 6),
                            "sha256": _sha256(path)})
        model.train()

    noisy = train_digits_cnn(x_train, y_noisy, epochs=epochs, seed=seed + 1, on_epoch_end=save,
                             progress=progress, progress_span=(0.3, 0.95), batch_size=batch_size,
                             factory=factory)
    acc_noisy = evaluate(noisy, x_test, y_test)

    # 4. labels and workspace
    _write_csv(out / "labels.csv", ["index", "noisy_label", "true_label", "is_mislabelled"],
               ((i, int(y_noisy[i]), int(y_true[i]), int(mislabelled[i])) for i in range(n)))
    _write_csv(out / "labels_override.csv", ["index", "label"], ((i, int(y_noisy[i])) for i in range(n)))
    (out / "workspace.toml").write_bytes(workspace_toml.encode("utf-8"))
    meta = {
        "name": name,
        "seed": seed,
        "epochs": epochs,
        "clean_epochs": clean_epochs,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "batch_size": batch_size,
        "noise_fraction": NOISE_FRACTION,
        "n_train": n,
        "n_test": len(y_test),
        "n_mislabelled": n_noisy,
        "test_accuracy_noisy": round(acc_noisy, 6),
        "test_accuracy_clean": round(acc_clean, 6),
        "checkpoints": checkpoints,
        "torch_version": torch.__version__.split("+")[0],
    }
    (out / "meta.json").write_bytes((json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    _report(progress, 1.0, "done")
    return meta


def retrain_on_labels(
    labels: Sequence[int] | torch.Tensor | np.ndarray,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    progress: Progress = None,
) -> tuple[nn.Module, float]:
    """Train a fresh ``DigitsCNN`` on the demo's training split with ``labels``.

    ``labels`` has one entry per training item (1437); ``-1`` marks an excluded item
    (dropped). Same recipe as the demo's noisy model. Returns ``(model, accuracy on the
    test split's true labels)``.
    """
    x_train, _, x_test, y_test = _digits_tensors()
    if isinstance(labels, torch.Tensor):
        y = labels.detach().to(torch.long).reshape(-1).clone()
    else:
        y = torch.from_numpy(np.array(labels, dtype=np.int64)).reshape(-1)
    if len(y) != len(x_train):
        raise ValueError(f"expected {len(x_train)} labels (one per training item), got {len(y)}")
    bad = (y < -1) | (y >= 10)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"label {int(y[i])} at index {i} is not -1 (excluded) or a class in 0..9")
    keep = y >= 0
    if not bool(keep.any()):
        raise ValueError("every training item is excluded")
    model = train_digits_cnn(x_train[keep], y[keep], epochs=epochs, seed=seed + 1, progress=progress)
    return model, evaluate(model, x_test, y_test)


def load_demo_labels(out_dir: str | Path = DEMO_DIR):
    """``labels.csv`` of the demo as a pandas DataFrame (index, noisy_label, true_label, is_mislabelled)."""
    import pandas as pd

    return pd.read_csv(Path(out_dir) / "labels.csv")


def verify_demo(out_dir: str | Path = DEMO_DIR) -> list[str]:
    """Problems found in the demo assets (missing files, checksum mismatches); empty when fine."""
    out = Path(out_dir)
    problems = []
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        return [f"{meta_path} is missing"]
    meta = json.loads(meta_path.read_text())
    for name in ("labels.csv", "labels_override.csv", "workspace.toml"):
        if not (out / name).is_file():
            problems.append(f"{out / name} is missing")
    for ck in meta.get("checkpoints", []):
        path = out / ck["file"]
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif _sha256(path) != ck["sha256"]:
            problems.append(f"{path}: sha256 differs from meta.json")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_core.audit.demo",
        description="Build or check a built-in workspace: the digits demo (default) or Fashion-MNIST "
                    "(checkpoints, noisy labels, workspace.toml).",
    )
    parser.add_argument("which", nargs="?", choices=("digits", "fashion"), default="digits",
                        help="which built-in workspace (default: digits)")
    parser.add_argument("--rebuild", action="store_true", help="train and write the assets")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: {DEMO_DIR} or {FASHION_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs for the noisy model (default: {DEFAULT_EPOCHS}; fashion {FASHION['epochs']})")
    parser.add_argument("--clean-epochs", type=int, default=None,
                        help=f"epochs for the clean model that picks wrong labels (default: {CLEAN_EPOCHS}; "
                             f"fashion {FASHION['clean_epochs']})")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    fashion = args.which == "fashion"
    out = args.out or (FASHION_DIR if fashion else DEMO_DIR)
    epochs = args.epochs if args.epochs is not None else (FASHION["epochs"] if fashion else DEFAULT_EPOCHS)
    clean_epochs = args.clean_epochs if args.clean_epochs is not None else (
        FASHION["clean_epochs"] if fashion else CLEAN_EPOCHS)
    if epochs < 1 or clean_epochs < 1:
        parser.error("--epochs and --clean-epochs must be at least 1")

    if not args.rebuild:
        problems = verify_demo(out)
        if problems:
            print("assets have problems (rebuild with --rebuild):", *problems, sep="\n  ", file=sys.stderr)
            return 1
        meta = json.loads((out / "meta.json").read_text())
        print(f"assets in {out} are complete: {len(meta['checkpoints'])} checkpoints, "
              f"{meta['n_mislabelled']}/{meta['n_train']} mislabelled, test accuracy "
              f"{meta['test_accuracy_noisy']:.3f} (noisy labels) / {meta['test_accuracy_clean']:.3f} (clean labels)")
        return 0

    def show(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr)

    build = build_fashion if fashion else build_demo
    meta = build(out, seed=args.seed, progress=None if args.quiet else show,
                 epochs=epochs, clean_epochs=clean_epochs)
    print(f"wrote {out}: {len(meta['checkpoints'])} checkpoints, {meta['n_mislabelled']}/{meta['n_train']} "
          f"mislabelled, test accuracy {meta['test_accuracy_noisy']:.3f} (noisy) / "
          f"{meta['test_accuracy_clean']:.3f} (clean)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------- noise models
NOISE_MODELS = ("tutorial", "uniform", "pair")


def noisy_labels(
    y_true: Sequence[int] | torch.Tensor | np.ndarray,
    fraction: float,
    kind: str = "tutorial",
    *,
    seed: int = 0,
    num_classes: int | None = None,
    clean_logits: torch.Tensor | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mislabel a seeded random ``fraction`` of ``y_true``; returns ``(noisy labels, indices changed)``.

    The subset is the demo's: the first ``round(fraction * n)`` items of
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed))``, sorted, so a
    larger fraction with the same seed mislabels a superset. Each chosen item gets a
    label other than its own:

    - ``"tutorial"`` (Captum's tutorial, the demo): the most probable *wrong* class of a
      model trained on the clean labels, ``clean_logits`` (n, K) being its outputs;
    - ``"uniform"``: a class drawn uniformly from the other ``K - 1`` (seeded by ``seed``);
    - ``"pair"``: the next class, ``(y + 1) mod K`` (the "pair flipping" of Han et al.,
      Co-teaching, 2018: every class is confused with one fixed other class).
    """
    y = np.array(y_true.detach().cpu().numpy() if isinstance(y_true, torch.Tensor) else y_true, dtype=np.int64)
    y = y.reshape(-1)
    n = len(y)
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if kind not in NOISE_MODELS:
        raise ValueError(f"unknown noise model {kind!r}; choose one of {', '.join(NOISE_MODELS)}")
    k_classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
    if k_classes < 2:
        raise ValueError("need at least two classes to mislabel")
    n_noisy = int(round(float(fraction) * n))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=gen)[:n_noisy].sort().values.numpy()
    out = y.copy()
    if kind == "tutorial":
        if clean_logits is None:
            raise ValueError("the tutorial noise model needs clean_logits (outputs of a model trained on clean labels)")
        z = np.array(clean_logits.detach().cpu().numpy() if isinstance(clean_logits, torch.Tensor) else clean_logits,
                     dtype=np.float64)
        if z.shape != (n, k_classes):
            raise ValueError(f"clean_logits must have shape ({n}, {k_classes}), got {z.shape}")
        z = z[idx]
        z[np.arange(len(idx)), y[idx]] = -np.inf
        out[idx] = z.argmax(axis=1)
    elif kind == "uniform":
        rng = np.random.default_rng(seed)
        out[idx] = (y[idx] + rng.integers(1, k_classes, size=len(idx))) % k_classes
    else:
        out[idx] = (y[idx] + 1) % k_classes
    return out, idx
