"""The Review page's queue, as plain functions over tables (no Streamlit).

* :func:`suggested_labels`: the label the Review page proposes for each training item;
* :func:`with_status`: each item's final review status and adjudicator;
* :func:`review_table`: the ranking joined with the predictions and the statuses;
* :func:`queue_order`: the items of that table the page's filters keep, in ranking order.

Scores follow the rankers' convention: higher = more likely mislabelled.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import pandas as pd

__all__ = ["PREDICTION_COLUMNS", "UNDECIDED", "queue_order", "review_table",
           "suggested_labels", "with_status"]

#: the status of an item nobody has decided yet (the review store's statuses otherwise)
UNDECIDED = "undecided"
#: the columns of the predictions table the review table takes
PREDICTION_COLUMNS = ("label", "predicted", "probability", "suggested", "suggested_probability")


def suggested_labels(given: np.ndarray, probs: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The suggested label of each item: the model's prediction when it differs from the
    given label, else the second most probable class (the prediction itself with one
    class). ``given``: (N,) ints; ``probs``: (N, K) class probabilities. Returns
    ``(suggested (N,) int64, suggested_probability (N,), given_probability (N,))``; a
    given label outside 0..K-1 reads the probability of the nearest class index.
    """
    given = np.asarray(given).reshape(-1)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[0] != len(given):
        raise ValueError(f"probs must have shape (N, K) with N = len(given) = {len(given)}, "
                         f"got {probs.shape}")
    if probs.shape[1] == 0:
        raise ValueError("probs has no classes (shape (N, 0))")
    predicted = probs.argmax(1)
    second = (np.argsort(-probs, axis=1, kind="stable")[:, 1] if probs.shape[1] > 1
              else predicted)
    suggested = np.where(predicted != given, predicted, second).astype(np.int64)
    rows = np.arange(len(given))
    return (suggested, probs[rows, suggested],
            probs[rows, np.clip(given, 0, probs.shape[1] - 1)])


def with_status(table: pd.DataFrame, finals: pd.DataFrame, n: int) -> pd.DataFrame:
    """A copy of ``table`` (an ``index`` column of item ids in 0..n-1) with two columns
    from ``ReviewStore.final_decisions()``: ``status`` (the final status, or
    :data:`UNDECIDED`) and ``final_by`` (the adjudicator of an adjudicated item, or "").
    Decisions on items at or past ``n`` (other training data) are left out."""
    status = np.full(n, UNDECIDED, dtype=object)
    final_by = np.full(n, "", dtype=object)
    if not finals.empty:
        ids = finals["item_id"].to_numpy()
        ok = ids < n
        status[ids[ok]] = finals["status"].to_numpy()[ok]
        adj = finals[finals["is_final"]]
        ids = adj["item_id"].to_numpy()
        ok = ids < n
        final_by[ids[ok]] = adj["reviewer"].to_numpy()[ok]
    table = table.copy()
    table["status"] = status[table["index"].to_numpy()]
    table["final_by"] = final_by[table["index"].to_numpy()]
    return table


def review_table(ranking: pd.DataFrame, predictions: pd.DataFrame, finals: pd.DataFrame,
                 n: int) -> pd.DataFrame:
    """One row per training item, in ranking order: ``ranking``'s columns (``index``,
    ``score``, ``rank``), the predictions' :data:`PREDICTION_COLUMNS` (``predictions``
    indexed by item id) and :func:`with_status`'s ``status`` and ``final_by``."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lacks column(s) {', '.join(missing)}")
    table = ranking.join(predictions[list(PREDICTION_COLUMNS)], on="index")
    return with_status(table, finals, n)


def queue_order(table: pd.DataFrame, *, given: Optional[Iterable[int]] = None,
                suggested: Optional[Iterable[int]] = None,
                status: Optional[Iterable[str]] = None,
                score_range: Optional[tuple[float, float]] = None) -> list[int]:
    """The item ids of :func:`review_table`'s rows that pass every filter, in the table's
    (ranking) order. An empty or ``None`` filter keeps everything; ``given`` /
    ``suggested``: class ids; ``status``: statuses; ``score_range``: ``(lo, hi)``
    inclusive, with 1e-12 of slack for scores read back from a slider."""
    mask = np.ones(len(table), dtype=bool)
    if given:
        mask &= table["label"].isin(list(given)).to_numpy()
    if suggested:
        mask &= table["suggested"].isin(list(suggested)).to_numpy()
    if status:
        mask &= table["status"].isin(list(status)).to_numpy()
    if score_range is not None:
        lo, hi = score_range
        s = table["score"].to_numpy()
        mask &= (s >= lo - 1e-12) & (s <= hi + 1e-12)
    return [int(i) for i in table["index"].to_numpy()[mask]]
