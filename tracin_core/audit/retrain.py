"""Close the loop: the labels a reviewer would leave, and the retrainings on them.

:func:`oracle_labels` is the best a reviewer of a queue can do (the first ``count`` items
get their true labels); :class:`RetrainRegistry` keeps finished retrainings so each set of
labels and epochs is trained once per server, one training at a time. No Streamlit here:
the Evaluation page holds one registry in ``st.cache_resource``.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Callable, Optional

import numpy as np

#: ``progress(fraction, message)``, as taken by :func:`tracin_core.audit.demo.retrain_on_labels`
Progress = Callable[[float, str], None]
#: ``train(labels, epochs, progress) -> test accuracy``
TrainFn = Callable[[np.ndarray, int, Optional[Progress]], float]


def oracle_labels(labels: np.ndarray, truth: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """The given ``labels`` (shape ``(n,)``) with the first ``count`` items of the queue
    ranked by ``scores`` (shape ``(n,)``, higher = more likely mislabelled; ties keep index
    order) set to their true labels ``truth`` (shape ``(n,)``). Returns a new int64 array."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    truth = np.asarray(truth, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != labels.shape:
        raise ValueError(f"truth has shape {truth.shape}; labels have {labels.shape}")
    if scores.shape != labels.shape:
        raise ValueError(f"scores has shape {scores.shape}; labels have {labels.shape}")
    if int(count) < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    order = np.argsort(-scores, kind="stable")[: int(count)]
    labels[order] = truth[order]
    return labels


def labels_key(labels: np.ndarray) -> str:
    """SHA-256 hex digest of ``labels`` as int64: equal labels, equal keys."""
    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _train_demo(labels: np.ndarray, epochs: int, progress: Optional[Progress]) -> float:
    from tracin_core.audit.demo import retrain_on_labels

    _, acc = retrain_on_labels(labels, epochs=epochs, progress=progress)
    return float(acc)


class RetrainRegistry:
    """Finished retrainings, keyed by ``(labels_key(labels), epochs)`` -> test accuracy,
    shared by every session; a lock lets one training run at a time. ``train`` defaults
    to the demo CNN's recipe (:func:`tracin_core.audit.demo.retrain_on_labels`)."""

    def __init__(self, train: Optional[TrainFn] = None) -> None:
        self._train: TrainFn = train or _train_demo
        self._done: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def accuracy(self, labels: np.ndarray, epochs: int, progress: Optional[Progress] = None) -> float:
        """Test accuracy after retraining on ``labels`` (shape ``(n,)``, -1 = excluded) for
        ``epochs`` epochs; trained on the first call, remembered after."""
        labels = np.asarray(labels, dtype=np.int64)
        key = (labels_key(labels), int(epochs))
        with self._lock:
            if key not in self._done:
                self._done[key] = float(self._train(labels, int(epochs), progress))
            return self._done[key]

    def __len__(self) -> int:
        return len(self._done)
