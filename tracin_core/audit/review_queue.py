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


def _by_item(ids: np.ndarray, items: np.ndarray, values: np.ndarray, n: int, default: str) -> pd.Categorical:
    """``values[j]`` for item ``items[j]``, ``default`` for the other items, read at ``ids``:
    a categorical (a million strings as Python objects, or as Arrow strings under pandas 3,
    take about a second to build; the codes take milliseconds)."""
    ok = items < n
    items, values = items[ok], np.asarray(values, dtype=object)[ok].astype(str)
    categories = pd.Index([default] + sorted(set(values.tolist()) - {default}))
    codes = np.zeros(n, dtype=np.int32)  # 0: the default
    codes[items] = categories.get_indexer(values)
    return pd.Categorical.from_codes(codes[ids], categories=categories)


def _status_columns(ids: np.ndarray, finals: pd.DataFrame, n: int) -> tuple[pd.Categorical, pd.Categorical]:
    """(status, final_by) of items ``ids`` (see :func:`with_status`), as categoricals."""
    if finals.empty:
        finals = pd.DataFrame({"item_id": np.zeros(0, dtype=np.int64), "status": [], "reviewer": [],
                               "is_final": np.zeros(0, dtype=bool)})
    adj = finals[finals["is_final"].to_numpy(dtype=bool)]
    return (_by_item(ids, finals["item_id"].to_numpy(dtype=np.int64), finals["status"].to_numpy(), n, UNDECIDED),
            _by_item(ids, adj["item_id"].to_numpy(dtype=np.int64), adj["reviewer"].to_numpy(), n, ""))


def with_status(table: pd.DataFrame, finals: pd.DataFrame, n: int) -> pd.DataFrame:
    """A copy of ``table`` (an ``index`` column of item ids in 0..n-1) with two columns
    from ``ReviewStore.final_decisions()``: ``status`` (the final status, or
    :data:`UNDECIDED`) and ``final_by`` (the adjudicator of an adjudicated item, or ""),
    both categorical. Decisions on items at or past ``n`` (other training data) are left out."""
    table = table.copy()
    table["status"], table["final_by"] = _status_columns(table["index"].to_numpy(), finals, n)
    return table


def review_table(ranking: pd.DataFrame, predictions: pd.DataFrame, finals: pd.DataFrame,
                 n: int) -> pd.DataFrame:
    """One row per training item, in ranking order: ``ranking``'s columns (``index``,
    ``score``, ``rank``), the predictions' :data:`PREDICTION_COLUMNS` (``predictions``
    indexed by item id) and :func:`with_status`'s ``status`` and ``final_by``.

    Built column by column with positional takes (a pandas join of a million rows takes
    about a second, and the page builds this table on every full run)."""
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lacks column(s) {', '.join(missing)}")
    ids = ranking["index"].to_numpy()
    pos = predictions.index.get_indexer(ids) if not _is_positional(predictions.index) else ids
    columns = {c: ranking[c].to_numpy() for c in ranking.columns}
    if len(pos) and (pos.min() < 0 or pos.max() >= len(predictions)):  # rows the predictions lack: NaN
        table = ranking.join(predictions[list(PREDICTION_COLUMNS)], on="index")
        return with_status(table, finals, n)
    for c in PREDICTION_COLUMNS:
        columns[c] = predictions[c].to_numpy()[pos]
    columns["status"], columns["final_by"] = _status_columns(ids, finals, n)
    return pd.DataFrame(columns, index=ranking.index)


def _is_positional(index: pd.Index) -> bool:
    """Whether item id ``i`` sits at row ``i`` of a frame with this index."""
    if isinstance(index, pd.RangeIndex):
        return index.start == 0 and index.step == 1
    values = index.to_numpy()
    return values.dtype.kind in "iu" and bool(np.array_equal(values, np.arange(len(values))))


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
    return table["index"].to_numpy()[mask].tolist()  # Python ints
