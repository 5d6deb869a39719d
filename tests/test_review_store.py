"""Tests for tracin_core.review.ReviewStore: semantics, concurrency, crash safety, errors."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from tracin_core import review
from tracin_core.labels_csv import read_labels_csv as _read_csv
from tracin_core.review import (
    SCHEMA_VERSION,
    ReviewStore,
    ReviewStoreError,
    replay,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
N_LABELS = 10


@pytest.fixture
def store(tmp_path: Path) -> ReviewStore:
    s = ReviewStore(tmp_path / "review.db", workspace="ws", data_hash="h1")
    yield s
    s.close()


def given_of(item: int) -> int:
    return item % N_LABELS


def assert_replay_agrees(store: ReviewStore) -> None:
    pd.testing.assert_frame_equal(store.decisions(), replay(store.history()))


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# ----------------------------------------------------------------------- workers
# Module-level so that 'spawn' children can import them.


def _decision_worker(store: ReviewStore, k: int, n: int, start, results) -> None:
    """Record n events as reviewer f"r{k}"; report ids and the expected end state."""
    try:
        rng = random.Random(1000 + k)
        reviewer = f"r{k}"
        stacks: dict[int, list[tuple[str, int | None]]] = defaultdict(list)
        ids = []
        start.wait(30)
        for i in range(n):
            item = rng.randrange(30)  # items overlap between reviewers
            given = given_of(item)
            if stacks[item] and rng.random() < 0.25:
                event_id = store.undo(item, reviewer)
                assert event_id is not None
                stacks[item].pop()
            else:
                action = rng.choice(["accept", "relabel", "exclude", "skip", "adjudicate"])
                if action == "relabel":
                    new = (given + 1 + rng.randrange(N_LABELS - 1)) % N_LABELS
                    event_id = store.record(item, reviewer, "relabel", new, given_label=given,
                                            ranking="self_influence", score=rng.random())
                    stacks[item].append(("relabelled", new))
                elif action == "adjudicate":
                    event_id = store.record(item, reviewer, "adjudicate", None,
                                            given_label=given)
                    stacks[item].append(("accepted", given))
                else:
                    event_id = store.record(item, reviewer, action, given_label=given)
                    stacks[item].append({"accept": ("accepted", given),
                                         "exclude": ("excluded", None),
                                         "skip": ("skipped", None)}[action])
            ids.append(event_id)
            if i % 20 == 0:  # exercise the claims table at the same time
                store.claim_next(reviewer, range(40), lease_seconds=5)
        expected = {item: stack[-1] for item, stack in stacks.items() if stack}
        results.put((k, None, ids, expected))
    except BaseException as exc:  # report, never hang the parent
        results.put((k, repr(exc), [], {}))


def _claim_worker(path: str, k: int, n_items: int, start, results) -> None:
    try:
        store = ReviewStore(path, workspace="ws", data_hash="h1")
        reviewer = f"c{k}"
        got = []
        start.wait(30)
        while True:
            item = store.claim_next(reviewer, range(n_items), lease_seconds=60)
            if item is None:
                break
            got.append(item)
            store.record(item, reviewer, "accept", given_label=given_of(item))
        results.put((k, None, got))
    except BaseException as exc:
        results.put((k, repr(exc), []))


def _run_processes(ctx, target, args_for, n_procs: int) -> list[tuple]:
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(k), start, results))
             for k in range(n_procs)]
    for p in procs:
        p.start()
    start.set()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"
    return sorted(out)


# ------------------------------------------------------------------- concurrency


@pytest.mark.timeout(90)
def test_many_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    parent = ReviewStore(path, workspace="ws", data_hash="h1")
    parent.decisions()  # the parent has an open connection when it forks
    out = _run_processes(mp.get_context("fork"), _decision_worker,
                         lambda k: (parent, k, 200), 8)

    errors = [(k, err) for k, err, _, _ in out if err]
    assert errors == []
    ids = [i for _, _, got, _ in out for i in got]
    history = parent.history()
    assert len(history) == 1600
    assert len(set(ids)) == 1600
    assert set(history["id"]) == set(ids)
    assert_replay_agrees(parent)

    decisions = parent.decisions()
    for k, _, _, expected in out:
        mine = decisions[decisions["reviewer"] == f"r{k}"]
        got = {int(r.item_id): (r.status, None if pd.isna(r.final_label) else int(r.final_label))
               for r in mine.itertuples()}
        assert got == expected
    assert integrity(path) == "ok"
    parent.close()


@pytest.mark.timeout(90)
def test_spawned_processes_receive_a_pickled_store(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "review.db", workspace="ws", data_hash="h1")
    out = _run_processes(mp.get_context("spawn"), _decision_worker,
                         lambda k: (store, k, 25), 2)
    assert [err for _, err, _, _ in out if err] == []
    assert len(store.history()) == 50
    assert_replay_agrees(store)


@pytest.mark.timeout(60)
def test_threads_share_one_store(store: ReviewStore) -> None:
    errors: list[BaseException] = []
    ids: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            rng = random.Random(k)
            barrier.wait()
            mine = []
            for i in range(50):
                item = rng.randrange(20)
                if i % 7 == 6:
                    event_id = store.undo(item, f"t{k}")
                    if event_id is None:  # nothing to undo there: decide instead
                        event_id = store.record(item, f"t{k}", "skip")
                else:
                    event_id = store.record(item, f"t{k}", "accept", given_label=given_of(item))
                mine.append(event_id)
            with lock:
                ids.extend(mine)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(ids) == len(set(ids)) == 400
    assert set(store.history()["id"]) == set(ids)
    assert_replay_agrees(store)


@pytest.mark.timeout(60)
def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    ReviewStore(path).close()
    script = textwrap.dedent(f"""
        import sys
        from tracin_core.review import ReviewStore
        store = ReviewStore({str(path)!r})
        i = 0
        while True:
            action = ("accept", "exclude", "skip")[i % 3]
            event_id = store.record(i % 500, "killme", action, given_label=i % 10)
            sys.stdout.write(f"{{event_id}}\\n")
            sys.stdout.flush()
            i += 1
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            acked.append(int(line))
            if len(acked) >= 300:
                break
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    acked += [int(x) for x in rest.split()]
    assert child.returncode == -signal.SIGKILL, err
    assert len(acked) >= 300

    assert integrity(path) == "ok"
    reopened = ReviewStore(path)
    present = set(reopened.history()["id"])
    assert set(acked) <= present
    assert len(present) - len(acked) <= 1  # at most the one being acknowledged
    assert_replay_agrees(reopened)
    reopened.record(0, "after", "accept")
    reopened.close()


# ---------------------------------------------------------------------- semantics


def test_record_validates_arguments(store: ReviewStore) -> None:
    with pytest.raises(ValueError, match="item_id"):
        store.record(-1, "ann", "accept")
    with pytest.raises(ValueError, match="item_id"):
        store.record("3", "ann", "accept")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item_id"):
        store.record(True, "ann", "accept")
    with pytest.raises(ValueError, match="reviewer"):
        store.record(1, "  ", "accept")
    with pytest.raises(ValueError, match="reviewer"):
        store.record(1, None, "accept")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="action"):
        store.record(1, "ann", "approve")
    with pytest.raises(ValueError, match="new_label"):
        store.record(1, "ann", "relabel")
    with pytest.raises(ValueError, match="new_label"):
        store.record(1, "ann", "accept", 4)
    with pytest.raises(ValueError, match="new_label"):
        store.record(1, "ann", "relabel", -2)
    with pytest.raises(ValueError, match="given_label"):
        store.record(1, "ann", "accept", given_label=-1)
    with pytest.raises(ValueError, match="nothing to undo"):
        store.record(1, "ann", "undo")
    assert store.history().empty
    # numpy / pandas integers are fine
    import numpy as np
    event_id = store.record(np.int64(3), " ann ", "Relabel", np.int64(2), given_label=np.int32(1))
    row = store.history().iloc[-1]
    assert (row["id"], row["item_id"], row["reviewer"], row["action"]) == (event_id, 3, "ann",
                                                                           "relabel")


def test_undo_reverts_latest_decision_one_at_a_time(store: ReviewStore) -> None:
    a = store.record(5, "ann", "accept", given_label=2)
    b = store.record(5, "ann", "relabel", 7)  # given label remembered from the item
    store.record(5, "bob", "exclude", given_label=2)
    c = store.record(5, "ann", "exclude")

    def current(reviewer: str):
        d = store.decisions()
        d = d[(d["item_id"] == 5) & (d["reviewer"] == reviewer)]
        return None if d.empty else (d.iloc[0]["status"], d.iloc[0]["event_id"])

    assert current("ann") == ("excluded", c)
    u1 = store.undo(5, "ann")
    assert current("ann") == ("relabelled", b)
    u2 = store.record(5, "ann", "undo")
    assert current("ann") == ("accepted", a)
    u3 = store.undo(5, "ann")
    assert current("ann") is None
    assert store.undo(5, "ann") is None  # nothing left: no event
    assert current("bob") == ("excluded", b + 1)  # other reviewers untouched

    h = store.history().set_index("id")
    assert len(h) == 7  # undo never deletes
    assert list(h.loc[[u1, u2, u3], "undoes"]) == [c, b, a]
    assert list(h.loc[[u1, u2, u3], "status"].fillna("-")) == ["relabelled", "accepted", "-"]
    # old_label: label in effect before the event; new_label of an undo: after it
    assert (h.loc[b, "given_label"], h.loc[b, "old_label"], h.loc[b, "new_label"]) == (2, 2, 7)
    assert (h.loc[c, "old_label"], pd.isna(h.loc[c, "new_label"])) == (7, True)
    assert (h.loc[u1, "old_label"], h.loc[u1, "new_label"]) == (2, 7)
    assert (h.loc[u2, "old_label"], h.loc[u2, "new_label"]) == (7, 2)
    assert h["created_at"].str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$").all()

    # redo after undo, then undo again: the stack still works
    d = store.record(5, "ann", "skip")
    store.undo(5, "ann")
    assert current("ann") is None
    assert d in set(store.history()["id"])
    assert store.decided_items() == {5}
    assert store.decided_items("ann") == set()
    assert_replay_agrees(store)


def test_undo_never_restores_a_decision_already_undone(store: ReviewStore,
                                                       tmp_path: Path) -> None:
    """relabel -> exclude -> undo -> skip -> undo: the last undo restores the relabel.

    Every history row is checked, in the store and in both history exports: the second
    undo must restore the relabel (label 7, relabelled), not the exclude that the first
    undo already reverted.
    """
    r = store.record(4, "ann", "relabel", 7, given_label=2)
    x = store.record(4, "ann", "exclude")
    u1 = store.undo(4, "ann")
    s = store.record(4, "ann", "skip")
    u2 = store.undo(4, "ann")
    columns = ["id", "item_id", "reviewer", "action", "given_label", "old_label",
               "new_label", "is_final", "status", "undoes"]
    expected = [
        # id  item reviewer action     given old   new   final  status        undoes
        (r,   4, "ann", "relabel", 2,    2,    7,    False, "relabelled", None),
        (x,   4, "ann", "exclude", 2,    7,    None, False, "excluded",   None),
        (u1,  4, "ann", "undo",    2,    2,    7,    False, "relabelled", x),
        (s,   4, "ann", "skip",    2,    7,    None, False, "skipped",    None),
        (u2,  4, "ann", "undo",    2,    2,    7,    False, "relabelled", s),
    ]

    def rows(records):
        out = []
        for rec in records:
            row = []
            for col in columns:
                value = rec[col]
                if value is None or (not isinstance(value, str) and pd.isna(value)):
                    value = None
                elif col == "is_final":
                    value = value in (True, 1, "True", "true", "1")
                elif col != "reviewer" and col != "action" and col != "status":
                    value = int(value)
                row.append(value)
            out.append(tuple(row))
        return out

    assert rows(store.history().to_dict("records")) == expected
    store.export(tmp_path / "history.csv", kind="history")
    store.export(tmp_path / "history.json", kind="history")
    assert rows(pd.read_csv(tmp_path / "history.csv", dtype=str,
                            keep_default_na=False, na_values=[""]).to_dict("records")) \
        == expected
    assert rows(json.loads((tmp_path / "history.json").read_text())) == expected
    d = store.decisions()
    assert list(d[["item_id", "status", "final_label", "event_id"]].itertuples(
        index=False, name=None)) == [(4, "relabelled", 7, r)]
    assert_replay_agrees(store)


def test_decision_columns_and_labels(store: ReviewStore) -> None:
    store.record(0, "ann", "accept", given_label=3, ranking="self_influence", score=1.5)
    store.record(1, "ann", "relabel", 4, given_label=1)
    store.record(2, "ann", "exclude", given_label=2)
    store.record(3, "ann", "skip", given_label=3)
    store.record(4, "ann", "relabel", 4, given_label=4)  # same as given: an accept
    d = store.decisions().set_index("item_id")
    assert list(store.decisions().columns[:7]) == ["item_id", "reviewer", "action",
                                                   "given_label", "final_label", "status",
                                                   "decided_at"]
    assert list(d["status"]) == ["accepted", "relabelled", "excluded", "skipped", "accepted"]
    assert d.loc[0, "final_label"] == 3 and d.loc[1, "final_label"] == 4
    assert pd.isna(d.loc[2, "final_label"]) and pd.isna(d.loc[3, "final_label"])
    h = store.history()
    assert h.loc[0, "ranking"] == "self_influence" and h.loc[0, "score"] == 1.5
    assert store.progress("ann") == {"decided": 5, "accepted": 2, "relabelled": 1,
                                     "excluded": 1, "skipped": 1, "ambiguous": 0,
                                     "outlier": 0, "duplicate": 0, "conflict": 0,
                                     "adjudicated": 0, "by_reviewer": {"ann": 5}}


def test_conflicts_consensus_and_adjudication(store: ReviewStore) -> None:
    store.record(0, "ann", "relabel", 4, given_label=1)
    store.record(0, "bob", "relabel", 4, given_label=1)   # agree -> consensus
    store.record(1, "ann", "accept", given_label=1)
    store.record(1, "bob", "relabel", 3, given_label=1)   # disagree -> conflict
    store.record(2, "ann", "exclude", given_label=2)
    store.record(2, "bob", "skip", given_label=2)         # skip abstains
    store.record(3, "ann", "relabel", 5, given_label=3)
    store.record(3, "bob", "relabel", 6, given_label=3)   # different labels -> conflict

    f = store.final_decisions().set_index("item_id")
    assert list(store.final_decisions().columns) == ["item_id", "given_label", "final_label",
                                                     "status", "reviewer", "decided_at",
                                                     "is_final", "duplicate_of"]
    assert list(f["status"]) == ["relabelled", "conflict", "excluded", "conflict"]
    assert f.loc[0, "final_label"] == 4 and f.loc[0, "reviewer"] == "ann,bob"
    assert f.loc[2, "reviewer"] == "ann"
    assert pd.isna(f.loc[1, "final_label"]) and not f["is_final"].any()

    c = store.conflicts()
    assert sorted(set(c["item_id"])) == [1, 3]
    assert len(c) == 4 and set(c["reviewer"]) == {"ann", "bob"}
    assert store.progress()["conflict"] == 2
    assert store.progress("bob")["conflict"] == 2

    adj = store.record(1, "carol", "adjudicate", 3)
    store.record(3, "carol", "adjudicate", exclude=True)
    f = store.final_decisions().set_index("item_id")
    assert (f.loc[1, "status"], f.loc[1, "final_label"], f.loc[1, "reviewer"],
            bool(f.loc[1, "is_final"])) == ("relabelled", 3, "carol", True)
    assert f.loc[3, "status"] == "excluded" and bool(f.loc[3, "is_final"])
    assert store.conflicts().empty
    assert store.history().set_index("id").loc[adj, "is_final"]
    p = store.progress()
    assert (p["decided"], p["conflict"], p["adjudicated"]) == (4, 0, 2)
    assert p["by_reviewer"] == {"ann": 4, "bob": 4, "carol": 2}

    store.undo(1, "carol")  # undoing the adjudication reopens the conflict
    assert set(store.conflicts()["item_id"]) == {1}
    store.record(1, "carol", "adjudicate")  # None: the given label stands
    f = store.final_decisions().set_index("item_id")
    assert (f.loc[1, "status"], f.loc[1, "final_label"]) == ("accepted", 1)
    assert_replay_agrees(store)


def test_claim_next_queue(store: ReviewStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ranking = [9, 3, 7, 1, 5]
    assert store.claim_next("ann", ranking) == 9
    assert store.claim_next("bob", ranking) == 3       # 9 is ann's
    assert store.claim_next("ann", ranking) == 9       # asking again keeps the same item
    store.record(9, "ann", "accept", given_label=9)     # deciding releases the claim
    assert set(store.claims()["item_id"]) == {3}
    assert store.claim_next("ann", ranking) == 7
    assert store.claim_next("ann", [3, 7, 1]) == 7      # own claim is not "held by others"
    store.record(3, "bob", "skip", given_label=3)
    assert store.claim_next("bob", ranking) == 1       # 9 decided, 3 skipped, 7 ann's
    store.release("bob")
    assert store.claim_next("bob", [3, 1]) == 1        # bob's skip hides 3 from bob...
    store.release("ann")
    assert store.claim_next("ann", [3, 1]) == 3        # ...but not from ann
    assert store.claim_next("carol", [3, 1, 9]) is None  # 3, 1 held; 9 decided
    assert store.release("carol") == 0
    assert store.release("ann") == 1
    assert store.claim_next("carol", [3, 1, 9]) == 3

    # leases expire: move the clock past them
    real_now = review._utcnow()
    monkeypatch.setattr(review, "_utcnow", lambda: real_now + timedelta(seconds=3600))
    assert store.claims().empty
    assert store.claim_next("dave", [1]) == 1
    with pytest.raises(ValueError, match="lease_seconds"):
        store.claim_next("dave", [1], lease_seconds=0)
    with pytest.raises(ValueError, match="candidates"):
        store.claim_next("dave", [-1])


@pytest.mark.timeout(60)
def test_claim_next_never_hands_out_an_item_twice(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    ReviewStore(path, workspace="ws", data_hash="h1").close()
    out = _run_processes(mp.get_context("fork"), _claim_worker,
                         lambda k: (str(path), k, 60), 6)
    assert [err for _, err, _ in out if err] == []
    claimed = [i for _, _, got in out for i in got]
    assert sorted(claimed) == list(range(60))  # every item once, none twice
    store = ReviewStore(path, workspace="ws", data_hash="h1")
    assert len(store.history()) == 60
    assert store.conflicts().empty


# ------------------------------------------------------------------------ exports


def test_export_csv_and_json_round_trip(store: ReviewStore, tmp_path: Path) -> None:
    store.record(0, "ann", "relabel", 4, given_label=1, ranking="r", score=0.5)
    store.record(1, "ann", "exclude", given_label=2)
    store.record(2, "ann", "accept", given_label=3)
    store.record(2, "bob", "relabel", 8, given_label=3)
    store.record(3, "bob", "skip", given_label=0)
    store.undo(3, "bob")
    final = store.final_decisions()

    csv_path = store.export(tmp_path / "out.csv")
    back = pd.read_csv(csv_path)
    assert list(back.columns) == ["index", "given_label", "final_label", "status", "reviewer",
                                  "decided_at", "is_final", "duplicate_of"]
    assert list(back["index"]) == [0, 1, 2]
    assert list(back["status"]) == ["relabelled", "excluded", "conflict"]
    assert back.loc[0, "final_label"] == 4 and pd.isna(back.loc[1, "final_label"])
    assert list(back["reviewer"]) == ["ann", "ann", "ann,bob"]
    assert list(back["decided_at"]) == list(final["decided_at"])

    json_path = store.export(tmp_path / "out.json")
    records = json.loads(json_path.read_text())
    assert [r["index"] for r in records] == [0, 1, 2]
    assert records[0] == {"index": 0, "given_label": 1, "final_label": 4,
                          "status": "relabelled", "reviewer": "ann",
                          "decided_at": final.loc[0, "decided_at"], "is_final": False,
                          "duplicate_of": None}
    assert records[1]["final_label"] is None

    hist_csv = pd.read_csv(store.export(tmp_path / "history.csv", kind="history"))
    hist_json = json.loads(store.export(tmp_path / "history.json", kind="history").read_text())
    history = store.history()
    assert len(hist_csv) == len(hist_json) == len(history) == 6
    assert list(hist_csv["id"]) == [r["id"] for r in hist_json] == list(history["id"])
    assert list(hist_csv["action"]) == list(history["action"])
    assert hist_json[-1]["action"] == "undo" and hist_json[-1]["undoes"] == history["id"].iloc[-2]

    for bad in ("out.txt", "out", "out.xlsx"):
        with pytest.raises(ValueError, match=r"\.csv or \.json"):
            store.export(tmp_path / bad)
    with pytest.raises(ValueError, match="kind"):
        store.export(tmp_path / "x.csv", kind="everything")


def test_corrected_labels_round_trip(store: ReviewStore, tmp_path: Path) -> None:
    given = [0, 1, 2, 3, 4, 5, 6]
    store.record(1, "ann", "relabel", 9, given_label=1)
    store.record(2, "ann", "exclude", given_label=2)
    store.record(3, "ann", "accept", given_label=3)
    store.record(4, "ann", "accept", given_label=4)
    store.record(4, "bob", "relabel", 7, given_label=4)  # conflict: given label stays
    store.record(5, "ann", "relabel", 2, given_label=5)
    store.record(5, "bob", "exclude", given_label=5)
    store.record(5, "carol", "adjudicate", 8)              # adjudicated
    store.record(6, "ann", "skip", given_label=6)

    path = store.export_corrected_labels(tmp_path / "labels.csv", given)
    assert path.read_text().splitlines()[:4] == ["index,label,excluded,flag,duplicate_of",
                                                 "0,0,0,,", "1,9,0,,", "2,2,1,excluded,"]
    labels, excluded = read_labels_override(path, len(given))
    assert labels == [0, 9, 2, 3, 4, 8, 6]
    assert excluded == [False, False, True, False, False, False, False]

    with pytest.raises(ValueError, match="given_labels"):
        store.export_corrected_labels(tmp_path / "short.csv", [0, 1])
    with pytest.raises(ValueError, match=r"\.csv"):
        store.export_corrected_labels(tmp_path / "labels.json", given)


def read_labels_override(path, n, base_labels=None, **kw):
    """The labels CSV reader (tracin_core.labels_csv) with lists out, as these tests compare."""
    labels, excluded = _read_csv(path, n, base_labels=base_labels, **kw)
    return labels.tolist(), excluded.tolist()


def test_read_labels_override_validation(tmp_path: Path) -> None:
    def write(text: str) -> Path:
        p = tmp_path / "override.csv"
        p.write_text(text)
        return p

    p = write("idx,label\n0,1\n")
    with pytest.raises(ValueError, match=r"override\.csv.*missing column.*index"):
        read_labels_override(p, 1)
    p = write("index,label,excluded\n0,1,0\n5,2,0\n")
    with pytest.raises(ValueError, match=r"override\.csv', line 3: index 5 is out of range"):
        read_labels_override(p, 2)
    p = write("index,label,excluded\n0,1,0\n1,cat,0\n")
    with pytest.raises(ValueError, match=r"override\.csv', line 3: label 'cat' is not an integer"):
        read_labels_override(p, 2)
    p = write("index,label,excluded\n0,1.5,0\n1,1,0\n")
    with pytest.raises(ValueError, match=r"line 2: label '1.5' is not an integer"):
        read_labels_override(p, 2)
    p = write("index,label,excluded\n0,1,0\n0,2,0\n")
    with pytest.raises(ValueError, match=r"line 3: index 0 appears more than once"):
        read_labels_override(p, 2)
    p = write("index,label,excluded\n0,1,maybe\n1,1,0\n")
    with pytest.raises(ValueError, match=r"line 2: excluded"):
        read_labels_override(p, 2)
    p = write("index,label\n1,3\n")
    with pytest.raises(ValueError, match=r"no row.*first missing index: 0"):
        read_labels_override(p, 2)
    assert read_labels_override(p, 2, base_labels=[7, 7]) == ([7, 3], [False, False])
    p = write("label,index,excluded\n4,1,1\n2.0,0,\n")  # any column order, 2.0 is 2
    assert read_labels_override(p, 2) == ([2, 4], [False, True])


# -------------------------------------------------------------- scope and errors


def test_workspace_and_data_hash_isolation(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    a = ReviewStore(path, workspace="ws", data_hash="old")
    b = ReviewStore(path, workspace="ws", data_hash="new")
    c = ReviewStore(path, workspace="other", data_hash="new")
    a.record(0, "ann", "relabel", 3, given_label=1)
    a.record(1, "ann", "exclude", given_label=1)
    b.record(0, "ann", "accept", given_label=1)
    c.record(0, "ann", "skip", given_label=1)
    assert a.claim_next("ann", [2]) == 2
    assert b.claim_next("bob", [2]) == 2  # claims are per scope too

    assert len(a.history()) == 2 and len(b.history()) == 1 and len(c.history()) == 1
    assert list(b.decisions()["status"]) == ["accepted"]
    assert list(c.final_decisions()["status"]) == ["skipped"]
    assert b.decided_items() == {0} and a.decided_items() == {0, 1}
    assert b.undo(1, "ann") is None
    assert b.data_hashes() == ["old", "new"] and c.data_hashes() == ["new"]
    assert b.other_data_decisions() == 2 and a.other_data_decisions() == 1
    assert c.other_data_decisions() == 0
    assert set(ReviewStore(path).history()["id"]) == set()  # default workspace: empty


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    ReviewStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(ReviewStoreError, match="newer tracin_core.*[Uu]pgrade tracin_core") as e:
        ReviewStore(path)
    assert str(path) in str(e.value)
    assert issubclass(ReviewStoreError, RuntimeError)


def test_not_a_review_store(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ReviewStoreError, match="not a review store"):
        ReviewStore(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ReviewStoreError, match="not a valid review store") as e:
        ReviewStore(junk)
    assert str(junk) in str(e.value)


def test_unwritable_location(tmp_path: Path) -> None:
    # Parent "folder" is a regular file: fails even for root.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(ReviewStoreError, match="cannot be written") as e:
        ReviewStore(blocker / "review.db")
    assert str(blocker / "review.db") in str(e.value)


def test_read_only_store_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    with ReviewStore(path) as s:
        s.record(0, "ann", "accept", given_label=1)
    ro = ReviewStore(path, read_only=True)  # a mode=ro SQLite connection: fails as root too
    assert len(ro.history()) == 1  # reading works
    for write in (lambda: ro.record(1, "ann", "accept"), lambda: ro.undo(0, "ann"),
                  lambda: ro.claim_next("ann", [1])):
        with pytest.raises(ReviewStoreError, match="read-only") as e:
            write()
        assert str(path) in str(e.value)
    assert len(ro.history()) == 1
    with pytest.raises(ReviewStoreError, match="does not exist"):
        ReviewStore(tmp_path / "missing.db", read_only=True)
    assert len(ReviewStore(path).history()) == 1


def test_disk_full_is_reported_and_nothing_partial(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    store = ReviewStore(path)
    store.record(0, "ann", "accept", given_label=0)
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # simulate a full disk
    acked = []
    with pytest.raises(ReviewStoreError, match="disk holding .* is full") as e:
        for i in range(100_000):
            acked.append(store.record(i, "ann", "relabel", 1, given_label=0,
                                      ranking="x" * 200))
    assert str(path) in str(e.value) and "Free some disk space" in str(e.value)
    store.close()
    reopened = ReviewStore(path)
    ids = list(reopened.history()["id"])
    assert ids[1:] == acked  # every acknowledged event, nothing half-written
    assert integrity(path) == "ok"


def test_lock_held_past_timeout(tmp_path: Path) -> None:
    path = tmp_path / "review.db"
    store = ReviewStore(path, timeout=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(ReviewStoreError, match="locked.*0.2 s") as e:
            store.record(0, "ann", "accept")
        assert str(path) in str(e.value) and "Try again" in str(e.value)
        assert store.history().empty  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.record(0, "ann", "accept")
    assert len(store.history()) == 1


def test_wal_and_pickling(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "review.db"
    store = ReviewStore(path, workspace="w", data_hash="d", timeout=5)
    assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous=FULL (2) on every connection: one per thread, each set when opened
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    seen = []
    worker = threading.Thread(
        target=lambda: seen.append(store._conn().execute("PRAGMA synchronous").fetchone()[0]))
    worker.start()
    worker.join()
    assert seen == [2]
    # the WAL journal is a property of the file: a plain connection sees it too
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    store.record(0, "ann", "accept")
    clone = pickle.loads(pickle.dumps(store))
    assert (clone.workspace, clone.data_hash, clone.timeout) == ("w", "d", 5.0)
    assert len(clone.history()) == 1
    with pytest.raises(ValueError, match="path"):
        ReviewStore(":memory:")


def test_snapshot_is_the_separate_reads_in_one(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", workspace="w", data_hash="h")
    store.record(1, "ann", "accept", given_label=2)
    store.record(1, "bob", "relabel", 3, given_label=2)
    store.record(4, "ann", "skip", given_label=0)
    store.record(5, "bob", "exclude", given_label=1)
    snap = store.snapshot("ann")
    assert snap.decisions.equals(store.decisions()) and snap.finals.equals(store.final_decisions())
    assert snap.progress == store.progress() and snap.mine == store.progress("ann")
    assert snap.mine["decided"] == 2 and snap.mine["conflict"] == 1 and snap.progress["excluded"] == 1


# ------------------------------------------- flags: ambiguous, outlier, duplicate of #N

V1_FILE = Path(__file__).resolve().parent / "data" / "review_store_v1.sqlite"


def test_flag_actions_recorded_undone_replayed(store: ReviewStore) -> None:
    store.record(0, "ann", "ambiguous", given_label=0, ranking="r", score=0.5)
    store.record(1, "ann", "outlier", given_label=1)
    store.record(2, "ann", "accept", given_label=2)
    dup = store.record(2, "ann", "duplicate", given_label=2, duplicate_of=9)
    d = store.decisions().set_index("item_id")
    assert list(d["status"]) == ["ambiguous", "outlier", "duplicate"]
    assert list(d["action"]) == ["ambiguous", "outlier", "duplicate"]
    assert d["final_label"].isna().all()
    assert pd.isna(d.loc[0, "duplicate_of"]) and d.loc[2, "duplicate_of"] == 9
    h = store.history().set_index("id")
    assert (h.loc[dup, "status"], h.loc[dup, "duplicate_of"], h.loc[dup, "old_label"]) == \
        ("duplicate", 9, 2)
    assert_replay_agrees(store)
    p = store.progress("ann")
    assert (p["ambiguous"], p["outlier"], p["duplicate"], p["decided"]) == (1, 1, 1, 3)

    # undo pops the duplicate: the accept under it is back, and the undo event says so
    undo_id = store.undo(2, "ann")
    h = store.history().set_index("id")
    assert (h.loc[undo_id, "undoes"], h.loc[undo_id, "status"]) == (dup, "accepted")
    assert pd.isna(h.loc[undo_id, "duplicate_of"])
    d = store.decisions().set_index("item_id")
    assert d.loc[2, "status"] == "accepted" and pd.isna(d.loc[2, "duplicate_of"])
    assert_replay_agrees(store)
    # undoing a decision made *after* a duplicate restores the duplicate with its item
    store.record(2, "ann", "duplicate", duplicate_of=4)
    store.record(2, "ann", "ambiguous")
    undo_id = store.undo(2, "ann")
    h = store.history().set_index("id")
    assert (h.loc[undo_id, "status"], h.loc[undo_id, "duplicate_of"]) == ("duplicate", 4)
    d = store.decisions().set_index("item_id")
    assert (d.loc[2, "status"], d.loc[2, "duplicate_of"]) == ("duplicate", 4)
    assert_replay_agrees(store)
    for item in (0, 1):
        store.undo(item, "ann")
    assert set(store.decided_items("ann")) == {2}
    assert_replay_agrees(store)
    # flagged items are decided: the queue does not hand them out again
    store.record(5, "ann", "outlier", given_label=5)
    assert store.claim_next("bob", [5, 2, 6]) == 6


def test_flag_actions_validate_arguments(store: ReviewStore) -> None:
    with pytest.raises(ValueError, match="duplicate_of.*required"):
        store.record(0, "ann", "duplicate")
    with pytest.raises(ValueError, match="duplicate of itself"):
        store.record(3, "ann", "duplicate", duplicate_of=3)
    with pytest.raises(ValueError, match="duplicate_of must be a non-negative integer"):
        store.record(3, "ann", "duplicate", duplicate_of=-1)
    with pytest.raises(ValueError, match="duplicate_of is only used"):
        store.record(3, "ann", "accept", duplicate_of=4)
    with pytest.raises(ValueError, match="duplicate_of is only used"):
        store.record(3, "ann", "adjudicate", duplicate_of=4)
    with pytest.raises(ValueError, match="new_label is only used"):
        store.record(3, "ann", "ambiguous", 2)
    with pytest.raises(ValueError, match="flag must be one of"):
        store.record(3, "ann", "accept", flag="outlier")
    with pytest.raises(ValueError, match="flag must be one of"):
        store.record(3, "ann", "adjudicate", flag="excluded")
    with pytest.raises(ValueError, match="flag must be one of"):
        store.record(3, "ann", "adjudicate", 2, flag="outlier")
    with pytest.raises(ValueError, match="duplicate_of.*required"):
        store.record(3, "ann", "adjudicate", flag="duplicate")
    with pytest.raises(ValueError, match="action must be one of.*ambiguous.*outlier.*duplicate"):
        store.record(3, "ann", "maybe")
    assert store.history().empty
    # the table itself refuses a duplicate without its other item, or of itself
    conn = sqlite3.connect(store.path)
    try:
        for dup_of, status in ((None, "duplicate"), (3, "duplicate"), (4, "ambiguous")):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute("INSERT INTO events (workspace, data_hash, item_id, reviewer, "
                             "action, status, duplicate_of, created_at) VALUES "
                             "('ws', 'h1', 3, 'x', 'duplicate', ?, ?, 'now')", (status, dup_of))
    finally:
        conn.close()


def test_flag_conflicts_and_adjudication(store: ReviewStore) -> None:
    store.record(0, "ann", "ambiguous", given_label=0)
    store.record(0, "bob", "ambiguous", given_label=0)        # agree
    store.record(1, "ann", "duplicate", given_label=1, duplicate_of=5)
    store.record(1, "bob", "duplicate", given_label=1, duplicate_of=6)  # other item: conflict
    store.record(2, "ann", "outlier", given_label=2)
    store.record(2, "bob", "accept", given_label=2)           # conflict
    store.record(3, "ann", "duplicate", given_label=3, duplicate_of=5)
    store.record(3, "bob", "duplicate", given_label=3, duplicate_of=5)  # agree
    store.record(4, "ann", "outlier", given_label=4)
    store.record(4, "bob", "skip", given_label=4)             # a skip abstains
    store.record(6, "ann", "ambiguous", given_label=6)
    store.record(6, "bob", "outlier", given_label=6)          # two flags: conflict
    f = store.final_decisions().set_index("item_id")
    assert list(f["status"]) == ["ambiguous", "conflict", "conflict", "duplicate", "outlier",
                                 "conflict"]
    assert f.loc[3, "duplicate_of"] == 5 and pd.isna(f.loc[1, "duplicate_of"])
    assert sorted(set(store.conflicts()["item_id"])) == [1, 2, 6]
    p = store.progress()
    assert (p["ambiguous"], p["duplicate"], p["outlier"], p["conflict"]) == (1, 1, 1, 3)

    store.record(1, "carol", "adjudicate", flag="duplicate", duplicate_of=6)
    store.record(2, "carol", "adjudicate", flag="outlier")
    store.record(6, "carol", "adjudicate", flag="ambiguous")
    f = store.final_decisions().set_index("item_id")
    assert (f.loc[1, "status"], f.loc[1, "duplicate_of"], bool(f.loc[1, "is_final"])) == \
        ("duplicate", 6, True)
    assert f.loc[2, "status"] == "outlier" and f.loc[6, "status"] == "ambiguous"
    assert store.conflicts().empty
    assert_replay_agrees(store)


def test_flag_exports_and_corrected_labels_round_trip(store: ReviewStore,
                                                       tmp_path: Path) -> None:
    given = [0, 1, 2, 3, 4, 5, 6, 7]
    store.record(1, "ann", "relabel", 9, given_label=1)
    store.record(2, "ann", "exclude", given_label=2)
    store.record(3, "ann", "ambiguous", given_label=3)
    store.record(4, "ann", "outlier", given_label=4)
    store.record(5, "ann", "duplicate", given_label=5, duplicate_of=0)
    store.record(6, "ann", "ambiguous", given_label=6)
    store.record(6, "bob", "accept", given_label=6)            # conflict: not flagged
    store.record(7, "ann", "skip", given_label=7)

    back = pd.read_csv(store.export(tmp_path / "d.csv"))
    assert list(back["status"]) == ["relabelled", "excluded", "ambiguous", "outlier",
                                    "duplicate", "conflict", "skipped"]
    assert back.set_index("index").loc[5, "duplicate_of"] == 0
    assert back.drop(index=4)["duplicate_of"].isna().all()
    records = {r["index"]: r for r in json.loads(store.export(tmp_path / "d.json").read_text())}
    assert (records[5]["status"], records[5]["duplicate_of"]) == ("duplicate", 0)
    assert records[3]["final_label"] is None and records[3]["duplicate_of"] is None
    hist = json.loads(store.export(tmp_path / "h.json", kind="history").read_text())
    assert [r["action"] for r in hist if r["reviewer"] == "ann"] == [
        "relabel", "exclude", "ambiguous", "outlier", "duplicate", "ambiguous", "skip"]
    hist_csv = pd.read_csv(store.export(tmp_path / "h.csv", kind="history"))
    assert hist_csv.loc[hist_csv["action"] == "duplicate", "duplicate_of"].tolist() == [0]
    mine = pd.read_csv(store.export(tmp_path / "mine.csv", reviewer="ann"))
    assert mine.set_index("index").loc[4, "status"] == "outlier"

    path = store.export_corrected_labels(tmp_path / "labels.csv", given)
    lines = path.read_text().splitlines()
    assert lines[0] == "index,label,excluded,flag,duplicate_of"
    assert lines[3:7] == ["2,2,1,excluded,", "3,3,1,ambiguous,", "4,4,1,outlier,",
                          "5,5,1,duplicate,0"]
    assert lines[7] == "6,6,0,," and lines[8] == "7,7,0,,"
    labels, excluded = read_labels_override(path, len(given))          # default: exclude
    assert labels == [0, 9, 2, 3, 4, 5, 6, 7]
    assert excluded == [False, False, True, True, True, True, False, False]
    labels, excluded = read_labels_override(path, len(given), flagged="keep")
    assert labels == [0, 9, 2, 3, 4, 5, 6, 7] and not any(excluded)
    # corrected_labels gives the same arrays without a file
    for choice in ("exclude", "keep", ["duplicate"]):
        arrays = store.corrected_labels(given, flagged=choice)
        assert (arrays[0].tolist(), arrays[1].tolist()) == read_labels_override(
            path, len(given), flagged=choice)
    _, excluded = read_labels_override(path, len(given), flagged=["excluded", "duplicate"])
    assert [i for i, e in enumerate(excluded) if e] == [2, 5]
    _, excluded = read_labels_override(path, len(given), flagged="outlier")
    assert [i for i, e in enumerate(excluded) if e] == [4]
    for bad in ("drop", ["ambiguous", "maybe"], 3):
        with pytest.raises(ValueError, match="flagged must be 'exclude', 'keep'"):
            read_labels_override(path, len(given), flagged=bad)
    # a file with an unknown flag or a bad duplicate_of names the line
    (tmp_path / "bad.csv").write_text("index,label,excluded,flag\n0,1,0,blurry\n")
    with pytest.raises(ValueError, match=r"bad\.csv', line 2: flag 'blurry'"):
        read_labels_override(tmp_path / "bad.csv", 1)
    (tmp_path / "bad.csv").write_text("index,label,flag,duplicate_of\n0,1,duplicate,0\n1,1,,\n")
    with pytest.raises(ValueError, match=r"line 2: duplicate_of 0 must be another item"):
        read_labels_override(tmp_path / "bad.csv", 2)


@pytest.mark.timeout(60)
def test_sigkill_while_flagging_loses_no_acknowledged_event(tmp_path: Path) -> None:
    """The new actions are events like the others: a SIGKILL mid-stream loses none that
    was acknowledged, and the reopened store exports what it holds."""
    path = tmp_path / "review.db"
    ReviewStore(path, workspace="ws", data_hash="h1").close()
    script = textwrap.dedent(f"""
        import sys
        from tracin_core.review import ReviewStore
        store = ReviewStore({str(path)!r}, workspace="ws", data_hash="h1")
        i = 0
        while True:
            item = i % 200
            kind = i % 4
            if kind == 0:
                event_id = store.record(item, "killme", "ambiguous", given_label=item % 10)
            elif kind == 1:
                event_id = store.record(item, "killme", "outlier", given_label=item % 10)
            elif kind == 2:
                event_id = store.record(item, "killme", "duplicate", given_label=item % 10,
                                        duplicate_of=(item + 1) % 200)
            else:
                event_id = store.undo((i - 1) % 200, "killme")
            sys.stdout.write(f"{{event_id}}\\n")
            sys.stdout.flush()
            i += 1
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            acked.append(int(line))
            if len(acked) >= 300:
                break
        os.kill(child.pid, signal.SIGKILL)
        rest, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    acked += [int(x) for x in rest.split()]
    assert child.returncode == -signal.SIGKILL, err

    assert integrity(path) == "ok"
    reopened = ReviewStore(path, workspace="ws", data_hash="h1")
    history = reopened.history()
    assert set(acked) <= set(history["id"])
    assert len(history) - len(acked) <= 1
    assert set(history["action"]) == {"ambiguous", "outlier", "duplicate", "undo"}
    assert_replay_agrees(reopened)
    finals = reopened.final_decisions()
    assert set(finals["status"]) <= {"ambiguous", "outlier", "duplicate"}
    assert not finals.empty
    # ... and exports it: the flags and the other items come back from the files
    given = [i % 10 for i in range(200)]
    out = reopened.export_corrected_labels(tmp_path / "labels.csv", given)
    back = pd.read_csv(out, keep_default_na=False).set_index("index")
    for row in finals.itertuples(index=False):
        assert back.loc[row.item_id, "flag"] == row.status
        assert back.loc[row.item_id, "label"] == given[row.item_id]
        if row.status == "duplicate":
            assert int(back.loc[row.item_id, "duplicate_of"]) == row.duplicate_of
    _, excluded = read_labels_override(out, 200)
    assert sorted(i for i, e in enumerate(excluded) if e) == sorted(finals["item_id"])
    _, kept = read_labels_override(out, 200, flagged="keep")
    assert not any(kept)
    records = json.loads(reopened.export(tmp_path / "d.json").read_text())
    assert [(r["index"], r["status"]) for r in records] == \
        list(zip(finals["item_id"], finals["status"]))
    reopened.record(0, "after", "outlier")
    reopened.close()


# ------------------------------------------------------------- schema 1 -> 2 upgrade


def _v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "v1.sqlite"
    path.write_bytes(V1_FILE.read_bytes())
    return path


def _pragma(path: Path, name: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


def _raw_events(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT id, workspace, data_hash, item_id, reviewer, action, "
                            "given_label, old_label, new_label, ranking, score, is_final, "
                            "status, undoes, created_at FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_upgrade_from_schema_1_keeps_every_event(tmp_path: Path) -> None:
    """A file written by the schema-1 store (tests/data/make_review_store_v1.py) opens,
    is upgraded in place, and reads as before; new actions can then be recorded."""
    path = _v1_copy(tmp_path)
    assert (_pragma(path, "user_version"), SCHEMA_VERSION) == (1, 2)
    before = _raw_events(path)
    assert len(before) == 15

    store = ReviewStore(path, workspace="ws", data_hash="h1")
    assert _pragma(path, "user_version") == 2
    assert _raw_events(path) == before  # every row, every id, every value
    h = store.history()
    assert h["duplicate_of"].isna().all() and len(h) == 14
    d = store.decisions().set_index(["item_id", "reviewer"])
    assert d.loc[(1, "ann"), "final_label"] == 7 and d.loc[(6, "ann"), "status"] == "relabelled"
    assert (5, "bob") not in d.index  # undone in version 1
    f = store.final_decisions().set_index("item_id")
    assert list(f["status"]) == ["accepted", "relabelled", "excluded", "skipped", "conflict",
                                 "relabelled", "relabelled"]
    assert bool(f.loc[7, "is_final"]) and f.loc[7, "final_label"] == 3
    assert_replay_agrees(store)
    assert set(store.claims()["item_id"]) <= {8}  # the claims table is untouched
    assert ReviewStore(path, workspace="ws", data_hash="h0").decisions()["status"].tolist() == \
        ["excluded"]

    new = store.record(8, "ann", "duplicate", given_label=8, duplicate_of=1)
    assert new == 16  # ids continue after the old ones (AUTOINCREMENT counter kept)
    store.record(4, "ann", "ambiguous")
    assert store.undo(4, "ann") is not None
    assert store.decisions().set_index(["item_id", "reviewer"]).loc[(4, "ann"), "status"] == \
        "accepted"
    assert_replay_agrees(store)
    store.close()

    # the rebuilt table is the one a new store creates: triggers and indexes included
    fresh = tmp_path / "fresh.sqlite"
    ReviewStore(fresh).close()

    def schema(p: Path) -> list[tuple]:
        conn = sqlite3.connect(p)
        try:
            return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                "WHERE name <> 'sqlite_sequence' ORDER BY type, name").fetchall()
        finally:
            conn.close()

    assert schema(path) == schema(fresh)
    assert integrity(path) == "ok"
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE id = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET action = 'skip' WHERE id = 1")
    finally:
        conn.close()
    ReviewStore(path).close()  # opening again: nothing more to do
    assert len(_raw_events(path)) == 18


def test_schema_1_read_only_is_read_as_it_is(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    ro = ReviewStore(path, workspace="ws", data_hash="h1", read_only=True)
    assert _pragma(path, "user_version") == 1  # not upgraded
    assert len(ro.history()) == 14 and ro.history()["duplicate_of"].isna().all()
    assert "conflict" in set(ro.final_decisions()["status"])
    assert_replay_agrees(ro)
    with pytest.raises(ReviewStoreError, match="read-only"):
        ro.record(9, "ann", "outlier")
    ro.close()


def test_failed_upgrade_leaves_schema_1_as_it_was(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _v1_copy(tmp_path)
    before = _raw_events(path)
    # make the copy step fail half-way through the upgrade's transaction
    monkeypatch.setattr(review, "_V1_EVENT_COLUMNS", review._V1_EVENT_COLUMNS + ["no_such"])
    with pytest.raises(ReviewStoreError, match="no_such"):
        ReviewStore(path, workspace="ws", data_hash="h1")
    assert _pragma(path, "user_version") == 1
    assert _raw_events(path) == before
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "events_v1" not in names and {"events_no_update", "events_by_item"} <= names
    monkeypatch.undo()
    assert len(ReviewStore(path, workspace="ws", data_hash="h1").history()) == 14


@pytest.mark.timeout(60)
def test_sigkill_during_upgrade_leaves_schema_1_then_upgrades(tmp_path: Path) -> None:
    """The upgrade is one transaction: a process killed after copying every row, before
    the commit, leaves the version-1 file whole; the next open upgrades it."""
    path = _v1_copy(tmp_path)
    before = _raw_events(path)
    script = textwrap.dedent(f"""
        import os, signal
        from tracin_core import review
        real = review.ReviewStore._upgrade_v1
        def upgrade_then_die(self, conn):
            real(self, conn)
            assert conn.in_transaction
            os.kill(os.getpid(), signal.SIGKILL)
        review.ReviewStore._upgrade_v1 = upgrade_then_die
        review.ReviewStore({str(path)!r})
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert integrity(path) == "ok"
    assert _pragma(path, "user_version") == 1
    assert _raw_events(path) == before
    store = ReviewStore(path, workspace="ws", data_hash="h1")
    assert _pragma(path, "user_version") == 2 and _raw_events(path) == before
    assert_replay_agrees(store)
    store.close()


def _open_and_flag_worker(path: str, k: int, start, results) -> None:
    try:
        start.wait(30)
        store = ReviewStore(path, workspace="ws", data_hash="h1")
        results.put((k, None, [store.record(100 + k, f"p{k}", "outlier")]))
    except BaseException as exc:
        results.put((k, repr(exc), []))


@pytest.mark.timeout(60)
def test_processes_opening_a_schema_1_file_at_once(tmp_path: Path) -> None:
    path = _v1_copy(tmp_path)
    out = _run_processes(mp.get_context("fork"), _open_and_flag_worker,
                         lambda k: (str(path), k), 4)
    assert [err for _, err, _ in out if err] == []
    store = ReviewStore(path, workspace="ws", data_hash="h1")
    assert len(store.history()) == 14 + 4
    assert (store.final_decisions()["status"] == "outlier").sum() == 4
    assert _pragma(path, "user_version") == 2 and integrity(path) == "ok"


def test_final_status_and_open_items_read_only_the_decided_rows(tmp_path):
    """What the Review page shows per key press, from the decided rows only: an item's
    final status and adjudicator, and how many of a queue's items are still open."""
    import numpy as np

    from tracin_core.review import final_status, open_items

    store = ReviewStore(tmp_path / "r.sqlite", workspace="w", data_hash="h")
    store.record(1, "ann", "accept", given_label=0)
    store.record(2, "ann", "skip", given_label=0)
    store.record(3, "ann", "relabel", given_label=0, new_label=2)
    store.record(3, "bob", "exclude", given_label=0)  # a conflict on 3
    finals = store.final_decisions()
    assert final_status(finals, 1) == ("accepted", "")
    assert final_status(finals, 2) == ("skipped", "")
    assert final_status(finals, 3)[0] == "conflict"
    assert final_status(finals, 9) == ("undecided", "")
    store.record(3, "admin", "adjudicate", given_label=0, new_label=1)
    assert final_status(store.final_decisions(), 3) == ("relabelled", "admin")
    members = np.zeros(10, dtype=bool)
    members[[1, 2, 3, 4, 5]] = True
    # 1 and 3 are closed; 2 (skipped), 4 and 5 are open
    assert open_items(store.final_decisions(), members) == 3
    members[1] = False
    assert open_items(store.final_decisions(), members) == 3
    assert open_items(store.final_decisions().iloc[0:0], members) == 4
    # the same numbers as the page's former full-table computation (with_status)
    status = np.full(10, "undecided", dtype=object)
    f = store.final_decisions()
    status[f["item_id"].to_numpy()] = f["status"].to_numpy()
    assert open_items(f, members) == int(np.isin(status[members], ["undecided", "skipped"]).sum())


def _corrected(path: Path) -> tuple[list[int], list[bool]]:
    """(labels, excluded) a reader makes of a corrected-labels CSV (flagged = "exclude")."""
    labels, excluded = read_labels_override(path, N_LABELS)
    return [int(v) for v in labels], [bool(v) for v in excluded]


def test_carry_over_to_the_corrected_labels(tmp_path: Path) -> None:
    """#13 item 2: training data that loads a review's corrected labels has another data
    hash; that review's decisions carry over to it (once), and its own export is the same."""
    given = [i % 3 for i in range(N_LABELS)]
    old = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-old")
    old.record(0, "ann", "relabel", 2, given_label=given[0], ranking="combined", score=1.5)
    old.record(1, "ann", "accept", given_label=given[1])
    old.record(2, "ann", "exclude", given_label=given[2])
    old.record(3, "bob", "duplicate", given_label=given[3], duplicate_of=7)
    old.record(4, "ann", "ambiguous", given_label=given[4])
    old.record(4, "bob", "outlier", given_label=given[4])  # a conflict carries over as one
    old.record(5, "bob", "skip", given_label=given[5])
    old.record(6, "ann", "accept", given_label=given[6])
    old.undo(6, "ann")  # undone: nothing to carry for item 6
    old.export_corrected_labels(tmp_path / "corrected.csv", given)
    labels, excluded = _corrected(tmp_path / "corrected.csv")
    assert labels[0] == 2 and excluded[:4] == [False, False, True, True]

    new = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-new")
    assert new.final_decisions().empty
    result = new.carry_over(labels, excluded)
    assert result == review.CarryOver(source="h-old", events=7, items=6, reason="")
    cols = ["item_id", "given_label", "final_label", "status", "reviewer", "decided_at", "duplicate_of"]
    pd.testing.assert_frame_equal(new.final_decisions()[cols], old.final_decisions()[cols])
    assert set(new.history()["ranking"]) == {"carried over from h-old"}
    # the next export, from the carried decisions on the corrected labels, is the same file
    new.export_corrected_labels(tmp_path / "again.csv", labels)
    assert (tmp_path / "again.csv").read_text() == (tmp_path / "corrected.csv").read_text()
    # once: a second call (another session) copies nothing and names the source
    assert new.carry_over(labels, excluded) == review.CarryOver("h-old", 0, 6, "")
    assert len(new.history()) == 7 and len(old.history()) == 9
    # kept with their given label instead of excluded (flagged = "keep"): holds as well
    kept = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-kept")
    assert kept.carry_over(labels, [False] * N_LABELS).events == 7
    # other workspaces see nothing
    assert ReviewStore(tmp_path / "r.db", workspace="other", data_hash="h-new").carry_over(labels) is None


def test_carry_over_refused_with_the_reason(tmp_path: Path) -> None:
    """Labels that are not the earlier review's corrected labels: nothing is copied and the
    first decision that does not hold is named; the newest review that holds is taken."""
    given = [1] * N_LABELS
    old = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-old")
    old.record(0, "ann", "relabel", 2, given_label=1)
    old.record(3, "ann", "exclude", given_label=1)
    new = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-new")
    result = new.carry_over(given)  # the labels before the review: item 0 is still 1
    assert result.source is None and result.events == 0
    assert result.reason == "item #0 was relabelled as 2 there, but its label here is 1"
    assert new.history().empty
    relabelled = [2] + given[1:]
    assert new.carry_over([2, 1, 1, 0] + given[4:]).reason == (
        "item #3 was marked excluded there, but here it is neither excluded nor kept with "
        "its label 1 (its label is 0)")
    assert new.carry_over(relabelled[:2]).reason == "item #3 was decided there, but this training data has 2 items"
    # decisions recorded here first: an earlier review is not merged into them
    mine = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-mine")
    mine.record(5, "cy", "accept", given_label=1)
    assert mine.carry_over(relabelled).reason == "decisions were recorded on this training data before"
    assert len(mine.history()) == 1
    # the newest review that holds: a later one whose decisions these labels break is passed over
    later = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-later")
    later.record(1, "ann", "relabel", 0, given_label=1)
    fresh = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h-fresh")
    assert fresh.carry_over(relabelled).source == "h-mine"  # newer than h-old, older than h-later
    with pytest.raises(ValueError, match="excluded has 3 entries, labels 10"):
        fresh.carry_over(relabelled, [False] * 3)


def test_carry_problem_rules() -> None:
    row = dict(item_id=0, given_label=1, final_label=None, status="skipped")
    assert review.carry_problem([row], [0], [False]) == ""  # a skip names no label
    assert review.carry_problem([dict(row, status="conflict")], [0], [False]) == ""
    assert review.carry_problem([dict(row, status="accepted", final_label=1)], [1], [False]) == ""
    assert "was accepted as 1 there" in review.carry_problem(
        [dict(row, status="accepted", final_label=1)], [0], [False])
    assert review.carry_problem([dict(row, status="outlier")], [0], [True]) == ""  # excluded
    assert review.carry_problem([dict(row, status="outlier")], [1], [False]) == ""  # kept
    assert review.carry_problem([], [1], [False]) == "that review has no decision in effect"
