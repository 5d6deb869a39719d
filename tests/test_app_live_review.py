"""Review page, learning from the decisions (AppTest): the estimate of the mislabels left is
shown, the queue re-ranks once enough decisions arrived, and the item on show stays."""
from __future__ import annotations

import re
import threading

from tests.test_app_review import WORKSPACE, _apptest_item, _events, _open_review, review_app  # noqa: F401
from tracin_core import ReviewStore


def _estimate_text(at) -> str:
    texts = [m.value for m in at.markdown if "Mislabels left" in m.value]
    texts += [c.value for c in at.caption if "Mislabels left" in c.value]
    assert texts, "no estimate on the page"
    return texts[0]


def test_apptest_live_rerank_keeps_the_item_and_shows_the_estimate(review_app):  # noqa: F811
    at, db = review_app
    from pages import common

    ws = common._load_workspace(common.spec_key(common.DEMO_SPEC))
    store = ReviewStore(db, workspace=WORKSPACE, data_hash=ws.data_hash)
    truth = ws.is_mislabelled
    labels = ws.train.labels.tolist()
    static = ws.mislabel_scores()["index"].tolist()
    # another reviewer already confirmed 12 mislabels and kept 12 clean labels
    bad = [i for i in static if truth[i]][:12]
    clean = [i for i in static if not truth[i]][:12]
    for i in bad:
        store.record(i, "bob", "exclude", given_label=labels[i])
    for i in clean:
        store.record(i, "bob", "accept", given_label=labels[i])

    _open_review(at)
    assert not at.error, [e.value for e in at.error]
    text = _estimate_text(at)
    assert "re-ranked by 24 decisions" in text, text
    m = re.search(r"about \*\*([\d,]+)\*\* of ([\d,]+) unreviewed", text)
    assert m and int(m.group(2).replace(",", "")) == len(labels) - 24
    assert at.toggle(key="rv_live").value is True
    shown = _apptest_item(at)
    assert shown not in bad + clean

    # ten more decisions from bob arrive: the next run re-ranks, the item on show stays,
    # though the re-ranked queue would put another item first
    from tracin_core.audit import active_review as ar
    from tracin_core.audit.rankers import DEFAULT_RANKER

    sig = ar.build_signals(ws.mislabel_score_arrays([DEFAULT_RANKER])[DEFAULT_RANKER], ws.ranker_inputs())
    known = {i: True for i in bad} | {i: False for i in clean}
    rest = [i for i in static if i not in known and i != shown]
    for start in range(0, 200, 10):
        more = rest[start:start + 10]
        outcomes = known | {i: bool(truth[i]) for i in more}
        if int(ar.queue_order(ar.rerank(sig, outcomes), list(outcomes))[0]) != shown:
            break
    else:
        raise AssertionError("no batch of decisions moves another item to the front")
    used_before = at.session_state["rv_live_used"]
    for i in more:
        store.record(i, "bob", "exclude" if truth[i] else "accept", given_label=labels[i])
    # the next run hands the batch to the worker thread and keeps the queue on show; a run
    # after the worker finished swaps the re-ranked queue in
    at.run()
    assert not at.exception and not at.error
    pending = at.session_state["rv_live_pending"]
    assert pending is not None and len(pending) == len(used_before) + 10
    assert at.session_state["rv_live_used"] == used_before
    assert at.session_state["rv_live_worker"].wait(pending, timeout=120) is not None
    at.run()
    assert not at.exception and not at.error
    assert at.session_state["rv_live_pending"] is None
    assert len(at.session_state["rv_live_used"]) == len(used_before) + 10
    assert _apptest_item(at) == shown
    assert "re-ranked by 34 decisions" in _estimate_text(at)

    # a decision on the page: recorded from the live queue, and the queue moves on
    at.button(key="rv_accept").click().run()
    assert not at.exception and not at.error
    mine = _events(db, "apptest")
    assert [(e["item_id"], e["action"]) for e in mine] == [(shown, "accept")]
    assert mine[0]["ranking"].endswith("+live")
    assert _apptest_item(at) != shown

    # switched off: the static queue; the estimate still shown (it follows the decisions
    # in batches of LIVE_EVERY, like the queue: 35 is not a new batch yet)
    at.toggle(key="rv_live").set_value(False).run()
    assert not at.exception and not at.error
    assert "from 34 decisions" in _estimate_text(at)


def test_apptest_rerank_runs_off_the_key_press(review_app, monkeypatch):  # noqa: F811
    """The key press that completes a batch of decisions does not re-rank in its page run:
    the batch goes to the worker thread, the queue on show stays, a later run swaps it in."""
    at, db = review_app
    from tracin_core.audit import active_review as ar
    from pages.review import LIVE_EVERY
    from tracin_core.audit import live_queue as lq

    _open_review(at)
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["rv_live_used"] == ()
    calls: list[str] = []  # the thread of each re-rank / estimate

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls.append(threading.current_thread().name)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ar, "rerank", counted(ar.rerank))
    monkeypatch.setattr(ar, "estimate_remaining", counted(ar.estimate_remaining))
    shown = []
    for _ in range(LIVE_EVERY):
        shown.append(_apptest_item(at))
        at.button(key="rv_accept").click().run()
        assert not at.exception and not at.error
    assert [e["item_id"] for e in _events(db, "apptest")] == shown
    pending = at.session_state["rv_live_pending"]
    assert pending is not None and len(pending) == LIVE_EVERY  # handed to the worker ...
    assert at.session_state["rv_live_used"] == ()  # ... and the queue on show stays
    assert at.session_state["rv_live_worker"].wait(pending, timeout=120) is not None
    on_page = [name for name in calls if name != lq.LiveReranker.THREAD_NAME]
    assert on_page == [], f"re-ranked inside a page run: {on_page}"
    held = _apptest_item(at)
    at.run()
    assert not at.exception and not at.error
    assert len(at.session_state["rv_live_used"]) == LIVE_EVERY
    assert at.session_state["rv_live_pending"] is None
    assert _apptest_item(at) == held  # the reviewer keeps the place
    assert [name for name in calls if name != lq.LiveReranker.THREAD_NAME] == []
