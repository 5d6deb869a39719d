"""Reviewers' decisions on training examples, kept in a SQLite file.

``ReviewStore`` is the audit trail of a data review: every click on the Review page
(accept / relabel / exclude / skip / ambiguous / outlier / duplicate / undo, and an
adjudicator's final word) is appended
as one row of the ``events`` table, in its own transaction, and nothing is ever updated
or deleted. The current state (what each reviewer decided, what the final label of each
item is, where reviewers disagree) is computed from that log.

Schema (``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; ``PRAGMA application_id``
marks the file as a review store)::

    events                      -- append-only (triggers refuse UPDATE and DELETE)
      id           INTEGER PRIMARY KEY AUTOINCREMENT   -- order of events
      workspace    TEXT      -- which audit; every query filters on it
      data_hash    TEXT      -- content hash of the training data the decision was made on
      item_id      INTEGER   -- index of the training example (>= 0)
      reviewer     TEXT
      action       TEXT      -- accept | relabel | exclude | skip | ambiguous | outlier |
                             -- duplicate | undo | adjudicate
      given_label  INTEGER   -- label in the data set (NULL when unknown)
      old_label    INTEGER   -- label in effect for this reviewer before the event
      new_label    INTEGER   -- the decision's final label: given label for accept,
                             -- new label for relabel, NULL for exclude / skip and the
                             -- flags (ambiguous, outlier, duplicate); for an undo: the
                             -- label in effect after it
      ranking      TEXT      -- which ranking the item was reviewed from (optional)
      score        REAL      -- its score in that ranking (optional)
      is_final     INTEGER   -- 1 for adjudications
      status       TEXT      -- accepted | relabelled | excluded | skipped | ambiguous |
                             -- outlier | duplicate: the outcome of the decision (for an
                             -- undo: of the decision it restores, NULL when none is left)
      undoes       INTEGER   -- for an undo: id of the event it reverts
      created_at   TEXT      -- UTC, ISO-8601 with microseconds
      duplicate_of INTEGER   -- the other item when status is duplicate, else NULL
                             -- (schema version 2)

    claims                      -- "my queue" leases, one per item and one per reviewer
      workspace, data_hash, item_id, reviewer, expires_at (UTC ISO-8601)

Undo semantics: the decisions of one reviewer on one item form a stack; a decision
(adjudications included) pushes, an undo pops. So the current decision of a reviewer on
an item is their latest decision event that no undo event names in ``undoes``.
:func:`replay` rebuilds :meth:`ReviewStore.decisions` from :meth:`ReviewStore.history`
with that stack, independently of the SQL. A relabel to the given label counts as an
accept. In :meth:`ReviewStore.final_decisions` an adjudication wins; otherwise the
reviewers' decisions must agree (status, final label and, for duplicates, the other
item), skips being abstentions.

Flags: besides a label, a reviewer can say that an item is *ambiguous* (more than one
class fits), an *outlier* (none of the classes fits) or a *duplicate* of another item
(``duplicate_of``). These are statuses like ``excluded`` (:data:`FLAGS`): the corrected
labels (:meth:`ReviewStore.export_corrected_labels`) name each flagged item, and whoever
loads them chooses to exclude flagged items or keep them with their given label
(``flagged`` of :func:`~tracin_core.labels_csv.read_labels_csv` and of ``datasets.load_dataset``).

Schema versions: 1 had no ``duplicate_of`` and no flag actions. Opening a version-1
file read-write upgrades it in one transaction (the ``events`` table is rebuilt with the
new CHECK constraints, every row and id kept); a crash during the upgrade leaves the
version-1 file as it was. A version-1 file opened read-only is read as it is.

Concurrency: WAL journal, a busy timeout, ``BEGIN IMMEDIATE`` for every write, one
connection per thread and per process (a forked child opens its own),
``synchronous=FULL`` (a committed event survives a crash or power loss). Many processes
and threads may write at once; each event is one transaction, so a crash never leaves
half an event. Problems with the file (read-only, disk full, lock held too long, newer
schema, not a review store) raise :class:`ReviewStoreError` with a message that names
the file and says what to do.
"""
from __future__ import annotations

from dataclasses import dataclass

import math
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter, defaultdict
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from .labels_csv import FLAGS, atomic_write as _atomic_write, flagged_set, write_labels_csv

__all__ = [
    "ReviewStore",
    "final_status",
    "open_items",
    "ReviewStoreError",
    "replay",
    "ACTIONS",
    "STATUSES",
    "FLAGS",
    "FLAG_ACTIONS",
    "flagged_set",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 2
APPLICATION_ID = 0x54524356  # "TRCV": marks a review store file

ACTIONS = ("accept", "relabel", "exclude", "skip", "ambiguous", "outlier", "duplicate",
           "undo", "adjudicate")
STATUSES = ("accepted", "relabelled", "excluded", "skipped", "ambiguous", "outlier",
            "duplicate")
#: actions that flag an item instead of labelling it; their status has the same name
FLAG_ACTIONS = ("ambiguous", "outlier", "duplicate")
# FLAGS (statuses that flag an item as unusable with a label: a corrected-labels reader
# excludes these items or keeps them with their given label, ``flagged=``) and
# flagged_set live with the labels CSV format, in labels_csv.py
#: statuses of :meth:`ReviewStore.final_decisions` (``conflict``: reviewers disagree)
FINAL_STATUSES = STATUSES + ("conflict",)

EVENT_COLUMNS = [
    "id", "workspace", "data_hash", "item_id", "reviewer", "action", "given_label",
    "old_label", "new_label", "ranking", "score", "is_final", "status", "undoes",
    "created_at", "duplicate_of",
]
DECISION_COLUMNS = [
    "item_id", "reviewer", "action", "given_label", "final_label", "status",
    "decided_at", "is_final", "event_id", "duplicate_of",
]
FINAL_COLUMNS = [
    "item_id", "given_label", "final_label", "status", "reviewer", "decided_at", "is_final",
    "duplicate_of",
]
CLAIM_COLUMNS = ["item_id", "reviewer", "expires_at"]

_INT_COLUMNS = {"id", "item_id", "event_id"}
_LABEL_COLUMNS = {"given_label", "old_label", "new_label", "final_label", "undoes",
                  "duplicate_of"}
_BOOL_COLUMNS = {"is_final"}
_FLOAT_COLUMNS = {"score"}

_EVENTS_TABLE = """
    CREATE TABLE IF NOT EXISTS events (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        workspace    TEXT    NOT NULL,
        data_hash    TEXT    NOT NULL,
        item_id      INTEGER NOT NULL CHECK (item_id >= 0),
        reviewer     TEXT    NOT NULL CHECK (reviewer <> ''),
        action       TEXT    NOT NULL CHECK (action IN
                         ('accept', 'relabel', 'exclude', 'skip', 'ambiguous', 'outlier',
                          'duplicate', 'undo', 'adjudicate')),
        given_label  INTEGER,
        old_label    INTEGER,
        new_label    INTEGER,
        ranking      TEXT,
        score        REAL,
        is_final     INTEGER NOT NULL DEFAULT 0 CHECK (is_final IN (0, 1)),
        status       TEXT CHECK (status IS NULL OR status IN
                         ('accepted', 'relabelled', 'excluded', 'skipped', 'ambiguous',
                          'outlier', 'duplicate')),
        undoes       INTEGER REFERENCES events (id),
        created_at   TEXT    NOT NULL,
        duplicate_of INTEGER CHECK (duplicate_of IS NULL
                                    OR (duplicate_of >= 0 AND duplicate_of <> item_id)),
        CHECK ((duplicate_of IS NULL) = (status IS NOT 'duplicate'))
    )
    """

# the columns of a version-1 events table (all kept by the upgrade)
_V1_EVENT_COLUMNS = [c for c in EVENT_COLUMNS if c != "duplicate_of"]

_SCHEMA = [
    _EVENTS_TABLE,
    """
    CREATE INDEX IF NOT EXISTS events_by_item
        ON events (workspace, data_hash, item_id, reviewer, id)
    """,
    "CREATE INDEX IF NOT EXISTS events_by_undoes ON events (undoes) WHERE undoes IS NOT NULL",
    """
    CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'review events are append-only'); END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'review events are append-only'); END
    """,
    """
    CREATE TABLE IF NOT EXISTS claims (
        workspace  TEXT    NOT NULL,
        data_hash  TEXT    NOT NULL,
        item_id    INTEGER NOT NULL,
        reviewer   TEXT    NOT NULL,
        expires_at TEXT    NOT NULL,
        PRIMARY KEY (workspace, data_hash, item_id),
        UNIQUE (workspace, data_hash, reviewer)
    )
    """,
]

# Current decision per (item, reviewer): the latest non-undo event nobody has undone.
_CURRENT_SQL = """
SELECT id AS event_id, item_id, reviewer, action, given_label, new_label AS final_label,
       status, created_at AS decided_at, is_final, {dup} AS duplicate_of
FROM (
    SELECT e.*, ROW_NUMBER() OVER (PARTITION BY e.item_id, e.reviewer
                                   ORDER BY e.id DESC) AS rn
    FROM events AS e
    WHERE e.workspace = ? AND e.data_hash = ? AND e.action <> 'undo'
      AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.undoes = e.id)
)
WHERE rn = 1
ORDER BY item_id, reviewer
"""

# Connections inherited through fork(): kept referenced so that a child process never
# closes (and so never disturbs) its parent's SQLite connections. Just before a fork,
# every open connection of every store is stashed; the child keeps the stash for good.
_INHERITED: list[Any] = []
_STORES: "weakref.WeakSet[ReviewStore]" = weakref.WeakSet()
_FORK_STASH: list[Any] = []


def _before_fork() -> None:
    stash = []
    for store in list(_STORES):
        if store._holders_lock.acquire(timeout=1.0):
            try:
                stash.extend(store._holders)
            finally:
                store._holders_lock.release()
    _FORK_STASH[:] = stash


def _after_fork_in_parent() -> None:
    _FORK_STASH.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)


class ReviewStoreError(RuntimeError):
    """The review store file cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------- helpers


def _utcnow() -> datetime:
    """Current time, UTC (tests may patch this to move the clock)."""
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _check_item(value: Any, name: str = "item_id") -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        item = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if item < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {item}")
    return item


def _check_label(value: Any, name: str) -> int | None:
    if value is None:
        return None
    return _check_item(value, name)


def _check_reviewer(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"reviewer must be a non-empty string, got {value!r}")
    name = value.strip()
    if "," in name or any(ch in name for ch in "\r\n\t"):
        raise ValueError(f"reviewer must not contain commas, tabs or line breaks: {name!r}")
    return name


def _check_action(value: Any) -> str:
    action = value.strip().lower() if isinstance(value, str) else value
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}; got {value!r}")
    return action


def _check_scope(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return int(value)


def _outcome(action: str, new_label: int | None, given: int | None,
             exclude: bool, flag: str | None = None) -> tuple[str, int | None]:
    """(status, final_label) of a decision. A relabel to the given label is an accept;
    a flag (ambiguous, outlier, duplicate: the action's own name, or an adjudication's
    ``flag``) has no final label."""
    if action in FLAG_ACTIONS:
        return action, None
    if action == "adjudicate" and flag is not None:
        return flag, None
    if action == "accept" or (action == "adjudicate" and new_label is None and not exclude):
        return "accepted", given
    if action in ("relabel", "adjudicate") and not exclude:
        if given is not None and new_label == given:
            return "accepted", given
        return "relabelled", new_label
    if action == "skip":
        return "skipped", None
    return "excluded", None


def _label_in_effect(decision: dict[str, Any] | None, given: int | None) -> int | None:
    if decision is not None and decision["final_label"] is not None:
        return decision["final_label"]
    return given


def _frame(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    """A DataFrame with stable dtypes (nullable Int64 labels, bool flags), also when empty."""
    df = pd.DataFrame(list(rows), columns=list(columns))
    for col in columns:
        if col in _INT_COLUMNS:
            df[col] = df[col].astype("int64")
        elif col in _LABEL_COLUMNS:
            df[col] = df[col].astype("Int64")
        elif col in _BOOL_COLUMNS:
            df[col] = df[col].astype(bool)
        elif col in _FLOAT_COLUMNS:
            df[col] = df[col].astype("float64")
        else:
            df[col] = df[col].astype(object)
    return df


def _decisions_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    rows = sorted(rows, key=lambda r: (r["item_id"], r["reviewer"]))
    return _frame(rows, DECISION_COLUMNS)


def _final_rows(decisions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per item: the latest adjudication, else the reviewers' consensus.

    Skips are abstentions: they count only when nobody else decided the item.
    """
    by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in decisions:
        by_item[row["item_id"]].append(row)
    out = []
    for item_id in sorted(by_item):
        rows = sorted(by_item[item_id], key=lambda r: r["event_id"])
        given = next((r["given_label"] for r in reversed(rows)
                      if r["given_label"] is not None), None)
        finals = [r for r in rows if r["is_final"]]
        if finals:
            last = finals[-1]
            out.append(dict(item_id=item_id, given_label=given,
                            final_label=last["final_label"], status=last["status"],
                            reviewer=last["reviewer"], decided_at=last["decided_at"],
                            is_final=True, duplicate_of=last.get("duplicate_of")))
            continue
        votes = [r for r in rows if r["status"] != "skipped"] or rows
        # duplicates of different items disagree, as do different labels or flags
        outcomes = {(r["status"], r["final_label"], r.get("duplicate_of")) for r in votes}
        status, final_label, duplicate_of = (
            outcomes.pop() if len(outcomes) == 1 else ("conflict", None, None))
        out.append(dict(item_id=item_id, given_label=given, final_label=final_label,
                        status=status,
                        reviewer=",".join(sorted({r["reviewer"] for r in votes})),
                        decided_at=max(r["decided_at"] for r in votes), is_final=False,
                        duplicate_of=duplicate_of))
    return out


def _progress(rows: Sequence[dict[str, Any]], finals: Sequence[dict[str, Any]],
              reviewer: str | None) -> dict[str, Any]:
    """:meth:`ReviewStore.progress` from decision rows and their final rows, already read."""
    by_reviewer = Counter(r["reviewer"] for r in rows)
    if reviewer is None:
        counts = Counter(r["status"] for r in finals)
        result: dict[str, Any] = {"decided": len(finals)}
        result.update({s: counts.get(s, 0) for s in FINAL_STATUSES})
        result["adjudicated"] = sum(1 for r in finals if r["is_final"])
        result["by_reviewer"] = dict(sorted(by_reviewer.items()))
        return result
    reviewer = _check_reviewer(reviewer)
    mine = [r for r in rows if r["reviewer"] == reviewer]
    counts = Counter(r["status"] for r in mine)
    conflicted = {r["item_id"] for r in finals if r["status"] == "conflict"}
    result = {"decided": len(mine)}
    result.update({s: counts.get(s, 0) for s in STATUSES})
    result["conflict"] = sum(1 for r in mine if r["item_id"] in conflicted)
    result["adjudicated"] = sum(1 for r in mine if r["is_final"])
    result["by_reviewer"] = {reviewer: len(mine)}
    return result


def final_status(finals: pd.DataFrame, item: int) -> tuple[str, str]:
    """(final status, adjudicator or "") of ``item`` in ``finals`` (the table of
    :meth:`ReviewStore.final_decisions`): "undecided" and "" when it has no row; the last
    row counts when there are several. Reads the decided rows only (not one per item)."""
    rows = finals[finals["item_id"] == int(item)] if not finals.empty else finals
    if rows.empty:
        return "undecided", ""
    adjudicated = rows[rows["is_final"].astype(bool)]
    return str(rows.iloc[-1]["status"]), (str(adjudicated.iloc[-1]["reviewer"]) if not adjudicated.empty else "")


def open_items(finals: pd.DataFrame, members: np.ndarray) -> int:
    """How many items of a queue are still open (undecided or skipped); ``members`` (N,)
    bool marks the queue's items, ``finals`` is :meth:`ReviewStore.final_decisions`."""
    members = np.asarray(members, dtype=bool)
    if finals.empty:
        return int(members.sum())
    ids = finals["item_id"].to_numpy().astype(np.int64)
    shut = ~finals["status"].isin(["undecided", "skipped"]).to_numpy()
    closed = np.unique(ids[shut & (ids >= 0) & (ids < len(members))])
    return int(members.sum()) - int(members[closed].sum())


#: the ``ranking`` text of the events :meth:`ReviewStore.carry_over` copies, before the
#: data hash they were copied from
CARRIED_FROM = "carried over from "


def carry_problem(finals: Sequence[dict[str, Any]], labels: Sequence[int],
                  excluded: Sequence[bool]) -> str:
    """Why an earlier review's decisions do not hold for training data with ``labels``
    (labels in effect, length N) and ``excluded`` (length N); "" when every one does.

    ``finals``: that review's :meth:`ReviewStore.final_decisions` rows (dicts). A decision
    holds when the data is what its "Corrected labels" export makes of it: an accepted or
    relabelled item has the final label; a flagged item (excluded, ambiguous, outlier,
    duplicate) is excluded, or kept with the label it was given (``flagged = "keep"``).
    Skips and conflicts name no label, so any label fits them. Only the first problem
    is told.
    """
    n = len(labels)
    if len(excluded) != n:
        raise ValueError(f"excluded has {len(excluded)} entries, labels {n}")
    if not finals:
        return "that review has no decision in effect"
    for row in finals:
        item, status = int(row["item_id"]), row["status"]
        if item >= n:
            return f"item #{item} was decided there, but this training data has {n:,} items"
        label, final, given = int(labels[item]), row["final_label"], row["given_label"]
        if status in ("accepted", "relabelled") and final is not None and label != int(final):
            return (f"item #{item} was {status} as {int(final)} there, but its label here "
                    f"is {label}")
        if status in FLAGS and not excluded[item] and given is not None and label != int(given):
            return (f"item #{item} was marked {status} there, but here it is neither "
                    f"excluded nor kept with its label {int(given)} (its label is {label})")
    return ""


@dataclass(frozen=True)
class CarryOver:
    """What :meth:`ReviewStore.carry_over` did.

    ``source``: the data hash whose decisions hold here (None: none does); ``events``:
    decisions copied by this call (0 when they were copied before); ``items``: items
    decided in that review; ``reason``: why nothing carries over ("" when it does).
    """

    source: str | None
    events: int
    items: int
    reason: str


@dataclass(frozen=True)
class ReviewSnapshot:
    """One read of a store: :meth:`ReviewStore.decisions`, :meth:`ReviewStore.final_decisions`,
    :meth:`ReviewStore.progress` overall and for one reviewer (``mine``)."""

    decisions: pd.DataFrame
    finals: pd.DataFrame
    progress: dict[str, Any]
    mine: dict[str, Any]


def replay(events: pd.DataFrame) -> pd.DataFrame:
    """Rebuild the current decisions (as :meth:`ReviewStore.decisions`) from an event log.

    ``events`` is a :meth:`ReviewStore.history` frame (events of one workspace and data
    hash). Per (item, reviewer) each decision is pushed on a stack and each undo pops it;
    the top of each non-empty stack is the current decision.
    """
    missing = {"id", "item_id", "reviewer", "action"} - set(events.columns)
    if missing:
        raise ValueError(f"replay needs the history() columns; missing {sorted(missing)}")
    stacks: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in events.sort_values("id").to_dict("records"):
        key = (int(ev["item_id"]), str(ev["reviewer"]))
        if ev["action"] == "undo":
            if stacks[key]:
                stacks[key].pop()
            continue
        stacks[key].append(dict(
            item_id=key[0], reviewer=key[1], action=ev["action"],
            given_label=_optional_int(ev.get("given_label")),
            final_label=_optional_int(ev.get("new_label")),
            status=ev.get("status"), decided_at=ev.get("created_at"),
            is_final=bool(ev.get("is_final")), event_id=int(ev["id"]),
            duplicate_of=_optional_int(ev.get("duplicate_of"))))
    return _decisions_frame([stack[-1] for stack in stacks.values() if stack])


def _export_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"export path must end in .csv or .json, got {str(path)!r}")
    return suffix[1:]


def _write_frame(df: pd.DataFrame, path: Path) -> None:
    fmt = _export_format(path)
    if fmt == "csv":
        _atomic_write(path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n"))
    else:
        _atomic_write(path, lambda fh: fh.write(
            df.to_json(orient="records", indent=2, force_ascii=False) + "\n"))


# ---------------------------------------------------------------------------- store


class _Holder:
    """Per-thread box for a connection (sqlite3 connections cannot be weakly referenced)."""

    __slots__ = ("conn", "__weakref__")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn


class ReviewStore:
    """Reviewers' decisions for one workspace and one version of the training data.

    ``path``: the SQLite file (created with its folder when missing). ``workspace`` and
    ``data_hash`` scope every read and write, so one file can hold several audits.
    ``timeout``: seconds to wait for another writer's lock before giving up.
    ``read_only``: open an existing store for reading only (writes then raise).

    Safe to share between threads (one connection per thread) and processes (each
    process, forked or not, opens its own connections).
    """

    def __init__(self, path: str | os.PathLike[str], workspace: str = "default",
                 data_hash: str = "", *, timeout: float = 30.0,
                 read_only: bool = False) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ValueError(f"path must be a file path for the review store, got {path!r}")
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.workspace = _check_scope(workspace, "workspace")
        self.data_hash = _check_scope(data_hash, "data_hash")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = float(timeout)
        self.read_only = bool(read_only)
        self._dup = "duplicate_of"  # "NULL" for a version-1 file opened read-only
        self._reset_connections()
        _STORES.add(self)
        self._initialize()

    # -- connections ---------------------------------------------------------------

    def _reset_connections(self) -> None:
        self._pid = os.getpid()
        self._local = threading.local()
        self._holders: weakref.WeakSet[_Holder] = weakref.WeakSet()
        self._holders_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            target, uri = f"file:{quote(str(self.path))}?mode=ro", True
        else:
            target, uri = str(self.path), False
        conn = sqlite3.connect(target, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False, uri=uri)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if not self.read_only:
                conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _forget_inherited(self) -> None:
        """After a fork: drop the parent's connections without closing them."""
        if os.getpid() != self._pid:
            _INHERITED.append((self._local, list(self._holders)))
            self._reset_connections()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection in this process (opened on first use)."""
        self._forget_inherited()
        holder = getattr(self._local, "holder", None)
        if holder is None:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise self._error(exc, "open the review store") from exc
            holder = _Holder(conn)
            self._local.holder = holder
            with self._holders_lock:
                self._holders.add(holder)
        return holder.conn

    def close(self) -> None:
        """Close the connections this process opened (the store reopens on next use)."""
        if os.getpid() != self._pid:
            self._forget_inherited()
            return
        with self._holders_lock:
            holders = list(self._holders)
        for holder in holders:
            try:
                holder.conn.close()
            except sqlite3.Error:
                pass
        self._reset_connections()

    def __enter__(self) -> "ReviewStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return dict(path=str(self.path), workspace=self.workspace,
                    data_hash=self.data_hash, timeout=self.timeout,
                    read_only=self.read_only)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["workspace"], state["data_hash"],  # type: ignore[misc]
                      timeout=state["timeout"], read_only=state["read_only"])

    def __repr__(self) -> str:
        return (f"ReviewStore({str(self.path)!r}, workspace={self.workspace!r}, "
                f"data_hash={self.data_hash!r})")

    # -- errors and transactions -----------------------------------------------------

    def _error(self, exc: BaseException, doing: str) -> ReviewStoreError:
        """Turn a sqlite3/OS error into a ReviewStoreError with advice."""
        msg = str(exc).lower()
        where = f"review store {self.path}"
        if self.read_only and ("readonly" in msg or "read-only" in msg):
            text = (f"Cannot {doing}: {where} was opened read-only. Open it without "
                    f"read_only=True to record decisions.")
        elif self.read_only and "unable to open" in msg:
            text = (f"Cannot {doing}: {where} cannot be opened read-only (SQLite needs to "
                    f"create {self.path.name}-shm next to it, and the folder is not "
                    f"writable). Copy the file to a writable folder and open the copy.")
        elif "full" in msg:
            text = (f"Cannot {doing}: the disk holding {where} is full (nothing was "
                    f"written). Free some disk space, then try again.")
        elif "locked" in msg or "busy" in msg:
            text = (f"Cannot {doing}: {where} stayed locked by another process or thread "
                    f"for more than {self.timeout:g} s. Try again; if it keeps happening, "
                    f"close other programs using this file (or pass a larger timeout).")
        elif ("readonly" in msg or "read-only" in msg or "unable to open" in msg
              or "permission" in msg or isinstance(exc, (PermissionError,
                                                         NotADirectoryError,
                                                         FileExistsError))):
            text = (f"Cannot {doing}: {where} cannot be written (the file or its folder "
                    f"is read-only or is not a folder). Fix the permissions or choose a "
                    f"writable location for the review store.")
        elif "not a database" in msg or "malformed" in msg or "corrupt" in msg:
            text = (f"Cannot {doing}: {self.path} is not a valid review store (the file is "
                    f"damaged or is not a SQLite database). Move it aside or restore it "
                    f"from a backup, then open the workspace again.")
        else:
            text = f"Cannot {doing}: {where}: {exc}"
        return ReviewStoreError(text)

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT); rolled back on any error."""
        if self.read_only:  # refused before any query (a version-1 file lacks columns)
            raise self._error(sqlite3.OperationalError("attempt to write a readonly "
                                                       "database"), doing)
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc, doing) from exc
            raise

    def _query(self, sql: str, params: Sequence[Any], doing: str) -> list[dict[str, Any]]:
        conn = self._conn()
        try:
            cur = conn.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc

    def _initialize(self) -> None:
        """Create or check the schema; refuse files written by a newer tracin_core."""
        if not self.read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._error(exc, "create the review store's folder") from exc
        elif not self.path.is_file():
            raise ReviewStoreError(f"Cannot open review store {self.path} read-only: the "
                                   f"file does not exist.")
        doing = "open the review store"
        conn = self._conn()
        try:
            found = self._check_header(conn)
            if self.read_only:
                self._dup = "duplicate_of" if found >= 2 else "NULL"
                return
            deadline = time.monotonic() + self.timeout
            while True:  # changing the journal mode may report "busy" without waiting
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) \
                            or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise ReviewStoreError(f"Cannot {doing}: {self.path} cannot use SQLite's WAL "
                                       f"journal (mode is {mode!r}); keep the review store "
                                       f"on a local disk.")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        if version < SCHEMA_VERSION:
            with self._write(doing) as conn:  # one transaction: all of it, or nothing
                found = self._check_header(conn)  # another process may have done it
                if found < SCHEMA_VERSION:
                    if found == 1:
                        self._upgrade_v1(conn)
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _upgrade_v1(self, conn: sqlite3.Connection) -> None:
        """Version 1 -> 2, inside the caller's write transaction: rebuild ``events`` with
        the new CHECK constraints and the ``duplicate_of`` column (SQLite cannot alter a
        CHECK), copying every row with its id; the AUTOINCREMENT counter is carried over.
        The caller recreates the indexes and triggers (:data:`_SCHEMA`)."""
        cols = ", ".join(_V1_EVENT_COLUMNS)
        for statement in ("DROP TRIGGER IF EXISTS events_no_update",
                          "DROP TRIGGER IF EXISTS events_no_delete",
                          "DROP INDEX IF EXISTS events_by_item",
                          "DROP INDEX IF EXISTS events_by_undoes",
                          "ALTER TABLE events RENAME TO events_v1",
                          _EVENTS_TABLE,
                          f"INSERT INTO events ({cols}) SELECT {cols} FROM events_v1 ORDER BY id"):
            conn.execute(statement)
        old, new = (conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("events_v1", "events"))
        if old != new:  # never expected: refuse rather than lose events
            raise ReviewStoreError(f"Cannot upgrade review store {self.path}: copied {new} of "
                                   f"{old} events (the file was left as it was).")
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events_v1'").fetchone()
        conn.execute("DROP TABLE events_v1")
        if seq is not None:
            conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
            top = conn.execute("SELECT max(id) FROM events").fetchone()[0] or 0
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)",
                         (max(int(seq[0]), int(top)),))

    def _check_header(self, conn: sqlite3.Connection) -> int:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ReviewStoreError(
                f"Review store {self.path} was written by a newer tracin_core (schema "
                f"version {version}; this tracin_core reads up to {SCHEMA_VERSION}). "
                f"Upgrade tracin_core to open it.")
        has_tables = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchone()[0]
        if app_id not in (0, APPLICATION_ID) or (version == 0 and has_tables):
            raise ReviewStoreError(
                f"{self.path} is a SQLite file but not a review store. Choose another file "
                f"name for the review store, or move this file aside.")
        if self.read_only and version == 0:
            raise ReviewStoreError(f"Cannot open {self.path} read-only: it is not a review "
                                   f"store yet (no decisions were ever recorded in it).")
        return version

    # -- writing -------------------------------------------------------------------

    @property
    def _scope(self) -> tuple[str, str]:
        return (self.workspace, self.data_hash)

    @property
    def _current_sql(self) -> str:
        return _CURRENT_SQL.replace("{dup}", self._dup)

    def _given_label(self, conn: sqlite3.Connection, item_id: int) -> int | None:
        row = conn.execute(
            "SELECT given_label FROM events WHERE workspace = ? AND data_hash = ? "
            "AND item_id = ? AND given_label IS NOT NULL ORDER BY id DESC LIMIT 1",
            (*self._scope, item_id)).fetchone()
        return None if row is None else row[0]

    def _current(self, conn: sqlite3.Connection, item_id: int,
                 reviewer: str) -> dict[str, Any] | None:
        """The reviewer's current (latest not undone) decision on the item, or None."""
        cur = conn.execute(
            "SELECT id AS event_id, action, given_label, new_label AS final_label, status, "
            "is_final, duplicate_of FROM events AS e WHERE workspace = ? AND data_hash = ? "
            "AND item_id = ? AND reviewer = ? AND action <> 'undo' "
            "AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.undoes = e.id) "
            "ORDER BY id DESC LIMIT 1", (*self._scope, item_id, reviewer))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row))

    def _insert(self, conn: sqlite3.Connection, **values: Any) -> int:
        return self._insert_at(conn, _iso(_utcnow()), **values)

    def record(self, item_id: int, reviewer: str, action: str,
               new_label: int | None = None, *, given_label: int | None = None,
               ranking: str | None = None, score: float | None = None,
               exclude: bool = False, duplicate_of: int | None = None,
               flag: str | None = None) -> int:
        """Append one decision (one transaction) and return its event id.

        ``action``: accept | relabel | exclude | skip | ambiguous | outlier | duplicate |
        undo | adjudicate. ``new_label`` is required for relabel; for adjudicate it is the
        final label (None: the given label stands; ``exclude=True``: the adjudicator
        excludes the item; ``flag="ambiguous" | "outlier" | "duplicate"``: the
        adjudicator flags it). ``duplicate_of``: the other item (an index >= 0, not
        ``item_id``), required for duplicate and for ``flag="duplicate"``; the store
        cannot check that it exists in the data set (the caller does). An undo
        reverts the reviewer's latest decision on the item still in effect (ValueError
        when there is none; :meth:`undo` returns None instead). ``given_label``: the
        label in the data set (when omitted, the one recorded earlier for the item).
        """
        item_id = _check_item(item_id)
        reviewer = _check_reviewer(reviewer)
        action = _check_action(action)
        new_label = _check_label(new_label, "new_label")
        given_label = _check_label(given_label, "given_label")
        if ranking is not None and not isinstance(ranking, str):
            raise ValueError(f"ranking must be a string or None, got {ranking!r}")
        if score is not None:
            try:
                score = float(score)
            except (TypeError, ValueError):
                raise ValueError(f"score must be a number or None, got {score!r}") from None
            if math.isnan(score):
                score = None
        if action == "relabel" and new_label is None:
            raise ValueError("new_label is required for action 'relabel'")
        if action not in ("relabel", "adjudicate") and new_label is not None:
            raise ValueError(f"new_label is only used with 'relabel' and 'adjudicate', "
                             f"not with {action!r}")
        if exclude and (action != "adjudicate" or new_label is not None):
            raise ValueError("exclude=True is only used with action 'adjudicate' and "
                             "no new_label")
        if flag is not None and (action != "adjudicate" or flag not in FLAG_ACTIONS
                                 or new_label is not None or exclude):
            raise ValueError(f"flag must be one of {', '.join(FLAG_ACTIONS)} and is only "
                             f"used with action 'adjudicate', without new_label or "
                             f"exclude; got flag={flag!r} with action {action!r}")
        duplicate_of = _check_label(duplicate_of, "duplicate_of")
        is_duplicate = action == "duplicate" or flag == "duplicate"
        if is_duplicate and duplicate_of is None:
            raise ValueError("duplicate_of (the index of the other item) is required to "
                             "mark a duplicate")
        if not is_duplicate and duplicate_of is not None:
            raise ValueError(f"duplicate_of is only used to mark a duplicate, not with "
                             f"action {action!r}")
        if duplicate_of is not None and duplicate_of == item_id:
            raise ValueError(f"duplicate_of must name another item: item {item_id} cannot "
                             f"be a duplicate of itself")
        if action == "undo":
            event_id = self.undo(item_id, reviewer, ranking=ranking, score=score)
            if event_id is None:
                raise ValueError(f"nothing to undo: reviewer {reviewer!r} has no decision "
                                 f"on item {item_id}")
            return event_id
        with self._write("record a decision") as conn:
            given = given_label if given_label is not None else \
                self._given_label(conn, item_id)
            before = self._current(conn, item_id, reviewer)
            status, final_label = _outcome(action, new_label, given, exclude, flag)
            event_id = self._insert(
                conn, item_id=item_id, reviewer=reviewer, action=action,
                given_label=given, old_label=_label_in_effect(before, given),
                new_label=final_label, ranking=ranking, score=score,
                is_final=int(action == "adjudicate"), status=status, undoes=None,
                duplicate_of=duplicate_of)
            conn.execute("DELETE FROM claims WHERE workspace = ? AND data_hash = ? "
                         "AND item_id = ? AND reviewer = ?", (*self._scope, item_id, reviewer))
        return event_id

    def undo(self, item_id: int, reviewer: str, *, ranking: str | None = None,
             score: float | None = None) -> int | None:
        """Revert the reviewer's latest decision on the item still in effect.

        Records an ``undo`` event and returns its id; None when there is nothing to undo.
        Undoing again reverts the decision before, and so on.
        """
        item_id = _check_item(item_id)
        reviewer = _check_reviewer(reviewer)
        with self._write("undo a decision") as conn:
            target = self._current(conn, item_id, reviewer)
            if target is None:
                return None
            given = self._given_label(conn, item_id)
            # the decision that becomes current: the latest one below the target
            cur = conn.execute(
                "SELECT id AS event_id, new_label AS final_label, status, duplicate_of "
                "FROM events AS e WHERE workspace = ? AND data_hash = ? "
                "AND item_id = ? AND reviewer = ? AND action <> 'undo' AND id < ? "
                "AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.undoes = e.id) "
                "ORDER BY id DESC LIMIT 1",
                (*self._scope, item_id, reviewer, target["event_id"]))
            row = cur.fetchone()
            restored = None if row is None else \
                dict(zip([d[0] for d in cur.description], row))
            return self._insert(
                conn, item_id=item_id, reviewer=reviewer, action="undo",
                given_label=given, old_label=_label_in_effect(target, given),
                new_label=_label_in_effect(restored, given), ranking=ranking, score=score,
                is_final=0, status=None if restored is None else restored["status"],
                undoes=target["event_id"],
                duplicate_of=None if restored is None else restored["duplicate_of"])

    # -- "my queue" ------------------------------------------------------------------

    def claim_next(self, reviewer: str, candidates: Sequence[int],
                   lease_seconds: float = 120.0) -> int | None:
        """Claim the first candidate nobody has decided and no other reviewer holds.

        Candidates are taken in the given order (e.g. a mislabel ranking). Skipped
        items stay available to other reviewers, not to the one who skipped them. The
        claim lasts ``lease_seconds``; a reviewer holds one claim at a time (a new claim,
        or recording a decision on the claimed item, releases the old one). Returns None
        when every undecided candidate is claimed by someone else.
        """
        reviewer = _check_reviewer(reviewer)
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) \
                or not 0 < lease_seconds < math.inf:
            raise ValueError(f"lease_seconds must be a positive number, got {lease_seconds!r}")
        with self._write("claim an item") as conn:
            now = _utcnow()
            conn.execute("DELETE FROM claims WHERE workspace = ? AND data_hash = ? "
                         "AND (expires_at <= ? OR reviewer = ?)",
                         (*self._scope, _iso(now), reviewer))
            held = {row[0] for row in conn.execute(
                "SELECT item_id FROM claims WHERE workspace = ? AND data_hash = ?",
                self._scope)}
            done = set()
            for row in conn.execute(self._current_sql, self._scope):
                if row[6] != "skipped" or row[2] == reviewer:  # status, reviewer
                    done.add(row[1])
            choice = None
            for candidate in candidates:
                item = _check_item(candidate, "candidates")
                if item not in held and item not in done:
                    choice = item
                    break
            if choice is not None:
                conn.execute("INSERT INTO claims (workspace, data_hash, item_id, reviewer, "
                             "expires_at) VALUES (?, ?, ?, ?, ?)",
                             (*self._scope, choice, reviewer,
                              _iso(now + timedelta(seconds=float(lease_seconds)))))
        return choice

    def release(self, reviewer: str) -> int:
        """Drop the reviewer's claim; returns how many claims were released (0 or 1)."""
        reviewer = _check_reviewer(reviewer)
        with self._write("release a claim") as conn:
            cur = conn.execute("DELETE FROM claims WHERE workspace = ? AND data_hash = ? "
                               "AND reviewer = ?", (*self._scope, reviewer))
            count = cur.rowcount
        return count

    def claims(self) -> pd.DataFrame:
        """Unexpired claims: item_id, reviewer, expires_at."""
        rows = self._query("SELECT item_id, reviewer, expires_at FROM claims "
                           "WHERE workspace = ? AND data_hash = ? AND expires_at > ? "
                           "ORDER BY item_id", (*self._scope, _iso(_utcnow())),
                           "read claims")
        return _frame(rows, CLAIM_COLUMNS)

    # -- reading -------------------------------------------------------------------

    def _decision_rows(self) -> list[dict[str, Any]]:
        rows = self._query(self._current_sql, self._scope, "read decisions")
        for row in rows:
            row["is_final"] = bool(row["is_final"])
        return rows

    def last_decision(self, reviewer: str) -> int | None:
        """The item of ``reviewer``'s latest decision still in effect (not undone), the
        one :meth:`undo` should revert next when a session has no undo stack of its own
        (a reload, another tab); None when there is none."""
        reviewer = _check_reviewer(reviewer)
        rows = self._query(
            "SELECT item_id FROM events AS e WHERE workspace = ? AND data_hash = ? "
            "AND reviewer = ? AND action <> 'undo' "
            "AND NOT EXISTS (SELECT 1 FROM events AS u WHERE u.undoes = e.id) "
            "ORDER BY id DESC LIMIT 1",
            (*self._scope, reviewer), "read the last decision")
        return None if not rows else int(rows[0]["item_id"])

    def history(self) -> pd.DataFrame:
        """Every event of this workspace and data hash, in id order (all columns)."""
        cols = ", ".join("NULL AS duplicate_of" if c == "duplicate_of" and self._dup == "NULL"
                         else c for c in EVENT_COLUMNS)
        rows = self._query(f"SELECT {cols} FROM events "
                           "WHERE workspace = ? AND data_hash = ? ORDER BY id",
                           self._scope, "read the history")
        return _frame(rows, EVENT_COLUMNS)

    def decisions(self) -> pd.DataFrame:
        """Current decision per (item, reviewer), undos applied.

        Columns: item_id, reviewer, action, given_label, final_label, status
        (accepted | relabelled | excluded | skipped | ambiguous | outlier | duplicate),
        decided_at, is_final, event_id, duplicate_of (the other item of a duplicate, else
        <NA>). final_label is <NA> for excluded, skipped and flagged items.
        """
        return _decisions_frame(self._decision_rows())

    def final_decisions(self) -> pd.DataFrame:
        """One row per decided item: the adjudication, else the reviewers' consensus.

        Columns: item_id, given_label, final_label, status (accepted | relabelled |
        excluded | skipped | ambiguous | outlier | duplicate | conflict), reviewer
        (comma-joined), decided_at, is_final (True for adjudications), duplicate_of.
        Skips count only when nobody else decided the item. Reviewers who agree on the
        status but not on the label, or on "duplicate" but not on the other item, are in
        conflict.
        """
        return _frame(_final_rows(self._decision_rows()), FINAL_COLUMNS)

    def conflicts(self) -> pd.DataFrame:
        """Current decisions (as :meth:`decisions`, skips left out) on the items whose
        reviewers disagree and that no adjudication settled yet."""
        rows = self._decision_rows()
        conflicted = {r["item_id"] for r in _final_rows(rows) if r["status"] == "conflict"}
        return _decisions_frame([r for r in rows if r["item_id"] in conflicted
                                 and r["status"] != "skipped"])

    def decided_items(self, reviewer: str | None = None) -> set[int]:
        """Items with a current decision (skips included); with ``reviewer``, theirs."""
        if reviewer is not None:
            reviewer = _check_reviewer(reviewer)
        return {r["item_id"] for r in self._decision_rows()
                if reviewer is None or r["reviewer"] == reviewer}

    def progress(self, reviewer: str | None = None) -> dict[str, Any]:
        """Counts for a progress bar.

        Keys: ``decided`` (items with a current decision), one count per status
        (accepted, relabelled, excluded, skipped, ambiguous, outlier, duplicate,
        conflict), ``adjudicated`` and
        ``by_reviewer`` (reviewer -> number of items they decided). Without ``reviewer``
        the statuses are those of :meth:`final_decisions`; with it, that reviewer's own
        decisions (``conflict``: how many of their items are in conflict).
        """
        rows = self._decision_rows()
        return _progress(rows, _final_rows(rows), reviewer)

    def snapshot(self, reviewer: str) -> "ReviewSnapshot":
        """Decisions, final decisions and both progress counts from one read of the store
        (what the Review page shows after each key press)."""
        reviewer = _check_reviewer(reviewer)
        rows = self._decision_rows()
        finals = _final_rows(rows)
        return ReviewSnapshot(decisions=_decisions_frame(rows), finals=_frame(finals, FINAL_COLUMNS),
                              progress=_progress(rows, finals, None), mine=_progress(rows, finals, reviewer))

    def data_hashes(self) -> list[str]:
        """Data hashes with events in this workspace, oldest first."""
        rows = self._query("SELECT data_hash FROM events WHERE workspace = ? "
                           "GROUP BY data_hash ORDER BY MIN(id)", (self.workspace,),
                           "read data hashes")
        return [r["data_hash"] for r in rows]

    def other_data_decisions(self) -> int:
        """Number of events in this workspace recorded on other training data."""
        rows = self._query("SELECT count(*) AS n FROM events WHERE workspace = ? "
                           "AND data_hash <> ?", self._scope, "read data hashes")
        return int(rows[0]["n"])

    def carry_over(self, labels: Sequence[int],
                   excluded: Sequence[bool] | None = None) -> CarryOver | None:
        """Carry an earlier review of this workspace over to this data hash, when this
        training data is what that review's "Corrected labels" export makes of it.

        ``labels`` / ``excluded``: the labels in effect and the exclusions of this
        training data (length N). The review store keys decisions by the data they were
        made on, and loading corrected labels changes that data hash. Each other data
        hash of this workspace, newest first, is checked with :func:`carry_problem`; the
        current decisions of the first one that holds throughout are copied here (one
        transaction; same reviewers, actions, labels, flags and times; ``ranking`` says
        ``"carried over from <hash>"``), so the queue, counts and exports go on from them.
        Nothing is copied when this data hash already has events of its own.

        Returns None when no other data hash of this workspace has events; else a
        :class:`CarryOver` (``events=0`` and the source when copied before).
        """
        labels = [int(v) for v in labels]
        excluded = [False] * len(labels) if excluded is None else [bool(v) for v in excluded]
        if len(excluded) != len(labels):
            raise ValueError(f"excluded has {len(excluded)} entries, labels {len(labels)}")
        rows = self._query("SELECT data_hash, MAX(id) AS last FROM events WHERE workspace = ? "
                           "AND data_hash <> ? GROUP BY data_hash ORDER BY last DESC",
                           self._scope, "read data hashes")
        if not rows:
            return None
        here = self._query("SELECT ranking FROM events WHERE workspace = ? AND data_hash = ? "
                           "ORDER BY id LIMIT 1", self._scope, "read the history")
        if here:
            first = here[0]["ranking"] or ""
            if first.startswith(CARRIED_FROM):
                prefix = first[len(CARRIED_FROM):]
                source = next((r["data_hash"] for r in rows if r["data_hash"].startswith(prefix)), prefix)
                items = len({r["item_id"] for r in self._decision_rows()})
                return CarryOver(source=source, events=0, items=items, reason="")
            return CarryOver(source=None, events=0, items=0,
                             reason="decisions were recorded on this training data before")
        reason = ""
        for row in rows:
            decisions = self._query(self._current_sql, (self.workspace, row["data_hash"]),
                                    "read decisions")
            for d in decisions:
                d["is_final"] = bool(d["is_final"])
            problem = carry_problem(_final_rows(decisions), labels, excluded)
            if problem:
                reason = reason or problem  # the newest review's problem is the one told
                continue
            if self.read_only:
                return CarryOver(source=None, events=0, items=0,
                                 reason=f"the review store {self.path} is open read-only")
            return self._copy_decisions(row["data_hash"], decisions)
        return CarryOver(source=None, events=0, items=0, reason=reason)

    def _copy_decisions(self, source: str, decisions: list[dict[str, Any]]) -> CarryOver:
        """Copy ``decisions`` (current decisions of data hash ``source``) into this scope."""
        with self._write("carry the earlier decisions over") as conn:
            again = conn.execute("SELECT 1 FROM events WHERE workspace = ? AND data_hash = ? "
                                 "LIMIT 1", self._scope).fetchone()
            if again is not None:  # another session copied them (or decided) meanwhile
                copied = 0
            else:
                for d in sorted(decisions, key=lambda r: r["event_id"]):
                    self._insert_at(conn, d["decided_at"], item_id=d["item_id"],
                                    reviewer=d["reviewer"], action=d["action"],
                                    given_label=d["given_label"], old_label=d["given_label"],
                                    new_label=d["final_label"],
                                    ranking=CARRIED_FROM + source[:16], score=None,
                                    is_final=int(d["is_final"]), status=d["status"], undoes=None,
                                    duplicate_of=d["duplicate_of"])
                copied = len(decisions)
        return CarryOver(source=source, events=copied,
                         items=len({d["item_id"] for d in decisions}), reason="")

    def _insert_at(self, conn: sqlite3.Connection, created_at: str, **values: Any) -> int:
        values = dict(workspace=self.workspace, data_hash=self.data_hash, created_at=created_at,
                      **values)
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = conn.execute(f"INSERT INTO events ({cols}) VALUES ({marks})", tuple(values.values()))
        return int(cur.lastrowid)  # type: ignore[arg-type]

    # -- export --------------------------------------------------------------------

    def export(self, path: str | os.PathLike[str], kind: str = "decisions", *,
               reviewer: str | None = None) -> Path:
        """Write final decisions (``kind="decisions"``) or every event (``"history"``).

        CSV or JSON (a list of records) by the suffix of ``path``. Decisions have the
        columns index, given_label, final_label, status, reviewer, decided_at, is_final,
        duplicate_of (the other item of a duplicate; empty / null otherwise).
        With ``reviewer``: only that reviewer's own current decisions (or events), what an
        annotator may export. The file is replaced atomically. Returns the path.
        """
        path = Path(path)
        _export_format(path)
        if reviewer is not None:
            reviewer = _check_reviewer(reviewer)
        if kind == "decisions":
            df = self.decisions()[FINAL_COLUMNS] if reviewer is not None else self.final_decisions()
            df = df.rename(columns={"item_id": "index"})
        elif kind == "history":
            df = self.history()
        else:
            raise ValueError(f"kind must be 'decisions' or 'history', got {kind!r}")
        if reviewer is not None:
            df = df[df["reviewer"] == reviewer].reset_index(drop=True)
        _write_frame(df, path)
        return path

    def corrected_label_table(self, given_labels: Sequence[int]
                              ) -> tuple[list[int], list[str], list[int | None]]:
        """The corrected labels as three lists of length ``len(given_labels)``: ``labels``
        (the final label of accepted, relabelled and adjudicated items, else the given
        label: undecided, skipped, conflicting and flagged items), ``flags`` (the final
        status when it is one of :data:`FLAGS`, else "") and ``duplicate_of`` (the other
        item of a duplicate, else ``None``). Raises ``ValueError`` naming
        ``given_labels`` when an item decided here is out of its range.
        """
        given = [_check_item(v, "given_labels") for v in given_labels]
        labels = list(given)
        flags = [""] * len(given)
        duplicate_of: list[int | None] = [None] * len(given)
        for row in _final_rows(self._decision_rows()):
            item = row["item_id"]
            if item >= len(given):
                raise ValueError(f"item {item} was decided in {self.path} but given_labels "
                                 f"has only {len(given)} entries (other training data?)")
            if row["status"] in ("accepted", "relabelled") and row["final_label"] is not None:
                labels[item] = int(row["final_label"])
            elif row["status"] in FLAGS:
                flags[item] = row["status"]
                if row["status"] == "duplicate" and row.get("duplicate_of") is not None:
                    other = int(row["duplicate_of"])
                    if other >= len(given):
                        raise ValueError(f"item {item} was marked a duplicate of item "
                                         f"{other} in {self.path} but given_labels has only "
                                         f"{len(given)} entries (other training data?)")
                    duplicate_of[item] = other
        return labels, flags, duplicate_of

    def corrected_labels(self, given_labels: Sequence[int], *,
                         flagged: str | Iterable[str] = "exclude",
                         ) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, excluded)``: int64 and bool arrays of shape ``(N,)``, what reading
        :meth:`export_corrected_labels`' file back with
        :func:`~tracin_core.labels_csv.read_labels_csv` gives, without a file.
        ``flagged`` chooses which flagged items are excluded (:func:`flagged_set`).
        """
        excluding = flagged_set(flagged)
        labels, flags, _ = self.corrected_label_table(given_labels)
        return (np.asarray(labels, dtype=np.int64).reshape(-1),
                np.asarray([f in excluding for f in flags], dtype=bool).reshape(-1))

    def export_corrected_labels(self, path: str | os.PathLike[str],
                                given_labels: Sequence[int]) -> Path:
        """Write ``index,label,excluded,flag,duplicate_of`` for every training item (a
        labels override, :func:`~tracin_core.labels_csv.write_labels_csv`; the values
        are :meth:`corrected_label_table`'s). excluded: 1 for every flagged item, what a
        reader that knows only ``excluded`` does and what
        :func:`~tracin_core.labels_csv.read_labels_csv` does by default
        (``flagged="keep"`` keeps them with their given label instead).
        """
        path = Path(path)
        if path.suffix.lower() != ".csv":
            raise ValueError(f"corrected labels are written as CSV; path must end in .csv, "
                             f"got {str(path)!r}")
        labels, flags, duplicate_of = self.corrected_label_table(given_labels)
        return write_labels_csv(path, labels, flags=flags, duplicate_of=duplicate_of)
