"""tracin_core.audit.retrain: the perfect reviewer's labels and the shared registry of
finished retrainings (no Streamlit, no training: a counting stand-in trains)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tracin_core.audit import retrain


def test_oracle_labels_fixes_the_top_of_the_queue():
    labels = np.array([0, 1, 2, 3, 4])
    truth = np.array([9, 1, 8, 7, 4])
    scores = np.array([0.5, 3.0, 2.0, 2.0, -1.0])  # queue: 1, 2, 3 (tie: index order), 0, 4
    out = retrain.oracle_labels(labels, truth, scores, 2)
    assert out.tolist() == [0, 1, 8, 3, 4]
    assert labels.tolist() == [0, 1, 2, 3, 4]  # the input is not changed
    assert out.dtype == np.int64
    assert retrain.oracle_labels(labels, truth, scores, 0).tolist() == labels.tolist()
    assert retrain.oracle_labels(labels, truth, scores, 99).tolist() == truth.tolist()
    with pytest.raises(ValueError, match="scores"):
        retrain.oracle_labels(labels, truth, scores[:3], 1)
    with pytest.raises(ValueError, match="truth"):
        retrain.oracle_labels(labels, truth[:3], scores, 1)
    with pytest.raises(ValueError, match="count"):
        retrain.oracle_labels(labels, truth, scores, -1)


def test_labels_key_depends_on_values_only():
    a = retrain.labels_key(np.array([1, 2, 3], dtype=np.int32))
    assert a == retrain.labels_key([1, 2, 3])
    assert a != retrain.labels_key([1, 2, 4])
    assert len(a) == 64


def test_registry_trains_each_labels_and_epochs_once():
    calls = []

    def train(labels, epochs, progress):
        calls.append((labels.tolist(), epochs))
        if progress is not None:
            progress(1.0, "done")
        return 0.5 + 0.01 * epochs + 0.1 * int(labels[0])

    reg = retrain.RetrainRegistry(train=train)
    seen = []
    assert reg.accuracy(np.array([0, 1]), 3, progress=lambda f, m: seen.append((f, m))) == pytest.approx(0.53)
    assert seen == [(1.0, "done")]
    assert reg.accuracy([0, 1], 3) == pytest.approx(0.53)  # remembered: not trained again
    assert reg.accuracy([1, 1], 3) == pytest.approx(0.63)
    assert reg.accuracy([0, 1], 4) == pytest.approx(0.54)
    assert calls == [([0, 1], 3), ([1, 1], 3), ([0, 1], 4)]
    assert len(reg) == 3


def test_registry_runs_one_training_at_a_time():
    active, most = [0], [0]
    guard = threading.Lock()
    started = threading.Barrier(4)

    def train(labels, epochs, progress):
        with guard:
            active[0] += 1
            most[0] = max(most[0], active[0])
        threading.Event().wait(0.02)
        with guard:
            active[0] -= 1
        return float(labels[0])

    reg = retrain.RetrainRegistry(train=train)

    def worker(k):
        started.wait()
        reg.accuracy([k], 1)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and len(reg) == 4
