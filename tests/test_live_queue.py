"""The live queue's worker (tracin_core.audit.live_queue): the re-rank of a batch of
decisions runs in its own thread, gives what the same computation gives in place, and
keeps the last results; errors reach the caller."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from tests.test_active_review import clusters, reviewed_head
from tracin_core.audit import live_queue as lq


def test_live_reranker_computes_off_the_callers_thread(monkeypatch):
    sig, truth = clusters()
    outcomes = reviewed_head(sig, truth, 30)
    expected = lq.live_result(sig, outcomes)
    release, threads = threading.Event(), []
    original = lq.live_result

    def slow(*args, **kwargs):
        threads.append(threading.current_thread().name)
        assert release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(lq, "live_result", slow)
    worker = lq.LiveReranker(sig, keep=2)
    worker.request(outcomes)  # returns at once, though the computation is held
    assert worker.get(outcomes) is None
    worker.request(dict(reversed(list(outcomes.items()))))  # the same set: not queued twice
    release.set()
    got = worker.wait(outcomes, timeout=30)
    assert threads == [lq.LiveReranker.THREAD_NAME]
    assert got.outcomes == lq.outcome_key(outcomes) == expected.outcomes
    assert np.array_equal(got.scores, expected.scores)  # the same as computed in place
    pd.testing.assert_frame_equal(got.table, expected.table)
    assert got.estimate == expected.estimate
    assert worker.get(outcomes) is got and worker.computed == 1
    # compute(): in the caller when not ready; the last `keep` results are kept
    assert worker.compute({}).table is None  # no evidence: the static order
    assert threads[-1] == threading.current_thread().name
    worker.compute(reviewed_head(sig, truth, 5))
    assert worker.get(outcomes) is None and worker.computed == 3
    # a decision outside the signals: the ValueError of the computation, on get()
    worker.request({sig.n + 5: True})
    with pytest.raises(ValueError, match="outside"):
        worker.wait({sig.n + 5: True}, timeout=30)
    with pytest.raises(ValueError, match="keep"):
        lq.LiveReranker(sig, keep=0)
