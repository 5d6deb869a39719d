"""The Review page's live queue off the key path: re-ranking a million rows takes about a
second, so the page hands each batch of decisions to a worker thread and keeps showing the
queue it has until the new one is ready (issue #12).

:func:`live_result` is what the page shows for one set of decisions (the re-ranked scores
as a table and the estimate of the mislabels left, :mod:`tracin_core.audit.active_review`);
:class:`LiveReranker` computes it in a background thread and keeps the last few. A result
depends only on the signals and the *set* of decisions. No Streamlit here.

Kept apart from :mod:`~tracin_core.audit.active_review` on purpose: the stored rankings are
keyed by that module's source, and this one does not change what they hold.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import numpy as np
import pandas as pd

from tracin_core.audit import active_review as ar
from tracin_core.audit import rankers as rk
from tracin_core.audit.active_review import RemainingEstimate, ReviewSignals

__all__ = ["LiveResult", "LiveReranker", "OutcomeKey", "live_result", "outcome_key"]

#: a set of decisions as a hashable, order-free key: sorted ((item, confirmed mislabel), ...)
OutcomeKey = tuple[tuple[int, bool], ...]


def outcome_key(outcomes: Mapping[int, bool]) -> OutcomeKey:
    """``outcomes`` (item -> confirmed mislabel) as a sorted tuple: the same set of
    decisions gives the same key whatever order they were given in."""
    return tuple(sorted((int(i), bool(v)) for i, v in outcomes.items()))


@dataclass(frozen=True)
class LiveResult:
    """What the Review page shows for one set of decisions (:func:`live_result`).

    ``outcomes``: the decisions (:func:`outcome_key`); ``scores``: (N,) live scores
    (:func:`~tracin_core.audit.active_review.rerank`; higher = more likely mislabelled), or None while the evidence is short
    of :func:`~tracin_core.audit.active_review.is_active` (the static order holds); ``table``: ``scores`` as
    :func:`tracin_core.audit.rankers.score_table` (index, score, rank; sorted by rank), or
    None with ``scores``; ``estimate``: :func:`~tracin_core.audit.active_review.estimate_remaining` for the queue ahead."""

    outcomes: OutcomeKey
    scores: Optional[np.ndarray]
    table: Optional[pd.DataFrame]
    estimate: RemainingEstimate


def live_result(sig: ReviewSignals, outcomes: Mapping[int, bool], ahead: int = 50) -> LiveResult:
    """The re-ranked queue and the estimate for ``outcomes`` (a pure function of the signals
    and the *set* of decisions). Raises ValueError for an item outside ``0..sig.n - 1``."""
    key = outcome_key(outcomes)
    decided = dict(key)
    ar._outcome_vector(sig, decided)  # ValueError for an item outside the signals
    scores = ar.rerank(sig, decided) if ar.is_active(decided) else None
    order = ar.queue_order(sig.static if scores is None else scores, list(decided))
    estimate = ar.estimate_remaining(sig, decided, ahead=ahead, order=order)
    table = None if scores is None else rk.score_table(scores)
    return LiveResult(outcomes=key, scores=scores, table=table, estimate=estimate)


class LiveReranker:
    """Computes :func:`live_result` off the caller's thread, so that re-ranking a million
    rows (about a second) never runs inside a key press's page run.

    :meth:`request` queues a set of decisions and returns at once; one daemon thread
    (named ``tracin-live-rerank``) computes the queued sets oldest first, one at a time;
    :meth:`get` returns a finished result or None, never waits; :meth:`compute` computes
    in the caller when there is nothing to show yet (a session's first visit). The last
    ``keep`` results are kept, so every session on the same ranking shares them. A result
    depends only on the signals and the set of decisions, never on timing: what timing
    decides is only *when* a caller swaps a newer result in.
    """

    THREAD_NAME = "tracin-live-rerank"

    def __init__(self, sig: ReviewSignals, keep: int = 4, ahead: int = 50) -> None:
        if keep < 1:
            raise ValueError(f"keep: {keep} must be at least 1")
        self._sig, self._keep, self._ahead = sig, int(keep), int(ahead)
        self._cond = threading.Condition()
        self._done: "OrderedDict[OutcomeKey, Union[LiveResult, Exception]]" = OrderedDict()
        self._queue: "OrderedDict[OutcomeKey, None]" = OrderedDict()
        self._running: Optional[OutcomeKey] = None
        self._thread: Optional[threading.Thread] = None
        self.computed = 0  #: results computed so far (in any thread)

    @property
    def signals(self) -> ReviewSignals:
        return self._sig

    def _store(self, key: OutcomeKey, res: Union[LiveResult, Exception]) -> None:
        self._done[key] = res  # the caller holds the lock
        self._done.move_to_end(key)
        while len(self._done) > self._keep:
            self._done.popitem(last=False)
        self.computed += 1
        self._cond.notify_all()

    def _compute(self, key: OutcomeKey) -> Union[LiveResult, Exception]:
        try:
            return live_result(self._sig, dict(key), ahead=self._ahead)
        except Exception as exc:  # noqa: BLE001 - kept as the result: get() raises it to the caller
            return exc

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._thread = None
                    return
                key, _ = self._queue.popitem(last=False)
                self._running = key
            res = self._compute(key)
            with self._cond:
                self._running = None
                self._store(key, res)

    def request(self, outcomes: Mapping[int, bool] | OutcomeKey) -> None:
        """Queue ``outcomes`` (a mapping or an :func:`outcome_key`) for the worker thread;
        returns at once. Nothing happens when it is finished, running or queued already.
        At most ``keep`` sets wait: the oldest waiting one is dropped first (ask again)."""
        key = self._key(outcomes)
        with self._cond:
            if key in self._done or key == self._running or key in self._queue:
                return
            self._queue[key] = None
            while len(self._queue) > self._keep:
                self._queue.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.THREAD_NAME, daemon=True)
                self._thread.start()

    def get(self, outcomes: Mapping[int, bool] | OutcomeKey) -> Optional[LiveResult]:
        """The finished result for ``outcomes``, or None (not asked for, or not ready);
        raises the exception its computation raised (ValueError: an item outside the
        signals)."""
        key = self._key(outcomes)
        with self._cond:
            res = self._done.get(key)
            if res is not None:
                self._done.move_to_end(key)
        if isinstance(res, Exception):
            raise res
        return res

    def wait(self, outcomes: Mapping[int, bool] | OutcomeKey, timeout: Optional[float] = None) -> Optional[LiveResult]:
        """Request ``outcomes`` and wait for its result (None after ``timeout`` seconds)."""
        key = self._key(outcomes)
        self.request(key)
        with self._cond:
            self._cond.wait_for(lambda: key in self._done or (key != self._running and key not in self._queue),
                                timeout=timeout)
        return self.get(key)

    def compute(self, outcomes: Mapping[int, bool] | OutcomeKey) -> LiveResult:
        """The result for ``outcomes``: a finished one, else computed now in the caller."""
        key = self._key(outcomes)
        res = self.get(key)
        if res is None:
            res = self._compute(key)
            with self._cond:
                self._store(key, res)
            if isinstance(res, Exception):
                raise res
        return res

    @staticmethod
    def _key(outcomes: Mapping[int, bool] | OutcomeKey) -> OutcomeKey:
        return outcome_key(outcomes if isinstance(outcomes, Mapping) else dict(outcomes))
