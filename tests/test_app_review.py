"""Review page: AppTest (in-process) and browser tests (keyboard, reload, export, two
reviewers, conflicts and adjudication).

Every decision goes to the review store at once; these tests read the store file back.
"""
from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO, SCREENSHOTS, screenshots_wanted, wait_for_app
from tracin_core import ReviewStore

WORKSPACE = "digits-demo"
N_TRAIN = 1437
CAPTION = re.compile(r"^Item #(\d+)$")


def _events(db: Path, reviewer: str | None = None) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in con.execute("SELECT * FROM events ORDER BY id")]
    finally:
        con.close()
    return [r for r in rows if reviewer is None or r["reviewer"] == reviewer]


def _store(db: Path) -> ReviewStore:
    """The app's store (workspace "digits-demo", the data hash its events were made on)."""
    hashes = {r["data_hash"] for r in _events(db) if r["workspace"] == WORKSPACE}
    hashes.discard("other-data")
    assert len(hashes) == 1, hashes
    return ReviewStore(db, workspace=WORKSPACE, data_hash=hashes.pop())


# ---------------------------------------------------------------------------- AppTest


@pytest.fixture()
def review_app(tmp_path, monkeypatch):
    """AppTest of app.py on the Review page, with its own cache folder and review store.

    The app reads TRACIN_CACHE / TRACIN_REVIEW_DB when it needs them
    (tracin_core.audit.settings), so setting the environment is enough.
    """
    from streamlit.testing.v1 import AppTest

    cache, db = tmp_path / "cache", tmp_path / "reviews.sqlite"
    monkeypatch.setenv("TRACIN_CACHE", str(cache))
    monkeypatch.setenv("TRACIN_REVIEW_DB", str(db))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    at.query_params["reviewer"] = "apptest"
    return at, db


def _open_review(at):
    at.run()
    at.switch_page("pages/review.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _apptest_item(at) -> int:
    """The item on show (the caption "Item #N" of the first image)."""
    for image in at.get("image"):
        for img in image.proto.imgs:
            m = CAPTION.match(img.caption)
            if m:
                return int(m.group(1))
    raise AssertionError("no 'Item #N' image on the page")


def test_apptest_accept_undo_and_data_warning(review_app):
    at, db = review_app
    # an event recorded on other training data (another data hash) must be flagged
    ReviewStore(db, workspace=WORKSPACE, data_hash="other-data").record(
        3, "someone", "accept", given_label=1)
    _open_review(at)
    assert not at.error, [e.value for e in at.error]
    labels = {b.label for b in at.button}
    assert {"Accept (A)", "Relabel (R)", "Exclude (E)", "Skip (S)", "Undo (U)"} <= labels
    assert any("other training data" in w.value for w in at.warning)
    item = _apptest_item(at)

    at.button(key="rv_accept").click().run()
    assert not at.exception and not at.error
    mine = _events(db, "apptest")
    assert [(e["action"], e["status"]) for e in mine] == [("accept", "accepted")]
    from tracin_core.audit.rankers import DEFAULT_RANKER

    assert mine[0]["ranking"] == DEFAULT_RANKER and mine[0]["score"] is not None
    assert mine[0]["item_id"] == item
    assert _apptest_item(at) != item  # on to the next one
    store = _store(db)
    decided = store.decisions()
    assert decided["reviewer"].tolist() == ["apptest"]
    assert decided["given_label"].iloc[0] == decided["final_label"].iloc[0]

    at.button(key="rv_undo_btn").click().run()
    assert not at.exception and not at.error
    assert [e["action"] for e in _events(db, "apptest")] == ["accept", "undo"]
    assert store.decisions().empty
    assert store.other_data_decisions() == 1
    assert _apptest_item(at) == item  # the undone item is back in the queue


def test_apptest_store_error_is_shown_not_raised(review_app):
    at, db = review_app
    db.write_bytes(b"this is not a SQLite database" * 100)
    _open_review(at)
    assert any("not a valid review store" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert not at.button  # no actions without a store


def test_apptest_filters_conflicts_adjudication(review_app):
    at, db = review_app
    from pages import common

    ws = common._load_workspace(common.spec_key(common.DEMO_SPEC))
    store = ReviewStore(db, workspace=WORKSPACE, data_hash=ws.data_hash)
    labels = ws.train.labels.tolist()
    disputed = 700
    store.record(disputed, "alice", "accept", given_label=labels[disputed])
    store.record(disputed, "bob", "exclude", given_label=labels[disputed])
    _open_review(at)

    # "All items" filtered on status "conflict": the disputed item only
    at.segmented_control(key="rv_mode").set_value("All items").run()
    at.multiselect(key="rv_f_status").set_value(["conflict"]).run()
    assert not at.exception
    assert _apptest_item(at) == disputed
    assert any("1** of **1** matching" in m.value for m in at.markdown)
    # a given-class filter: every item shown has that label
    at.multiselect(key="rv_f_status").set_value([]).run()
    at.multiselect(key="rv_f_given").set_value([7]).run()
    shown = _apptest_item(at)
    assert labels[shown] == 7
    at.button(key="rv_next").click().run()
    assert _apptest_item(at) != shown and labels[_apptest_item(at)] == 7

    # Conflicts: the adjudicator excludes the item; it becomes final
    at.segmented_control(key="rv_mode").set_value("Conflicts").run()
    assert not at.exception
    at.selectbox(key=f"rv_adj_choice_{disputed}").set_value("exclude").run()
    at.button(key=f"rv_adj_{disputed}").click().run()
    assert not at.exception and not at.error
    final = store.final_decisions().set_index("item_id").loc[disputed]
    assert final["status"] == "excluded" and bool(final["is_final"])
    assert final["reviewer"] == "apptest"
    assert store.conflicts().empty
    assert not [b for b in at.button if b.key == f"rv_adj_{disputed}"]
    assert any(s.value.startswith("No conflicts") for s in at.success)


def test_apptest_queue_shows_the_demos_mislabels_first(review_app):
    """The Review queue follows the default ranking, most likely mislabelled first: the
    items it hands out are the ranking's first ones, and against the demo's ground truth
    nearly all of them are mislabelled."""
    at, db = review_app
    from pages import common

    ws = common._load_workspace(common.spec_key(common.DEMO_SPEC))
    truth = ws.is_mislabelled
    ranking = ws.mislabel_scores()["index"].tolist()
    _open_review(at)
    shown = [_apptest_item(at)]
    for _ in range(9):
        at.button(key="rv_skip").click().run()
        assert not at.exception and not at.error
        shown.append(_apptest_item(at))
    assert shown == ranking[:10]
    assert sum(bool(truth[i]) for i in shown) >= 9
    assert [e["item_id"] for e in _events(db, "apptest")] == ranking[:9]


# --------------------------------------------------------------------------- browser


def _review_db(app_server) -> Path:
    """The server's review store: TRACIN_REVIEW_DB, else <its TRACIN_CACHE>/reviews.sqlite."""
    if os.environ.get("TRACIN_REVIEW_DB"):
        return Path(os.environ["TRACIN_REVIEW_DB"])
    return Path(app_server.log.name).parent / "reviews.sqlite"


def _settle(pg, timeout: float = 60_000) -> None:
    """The script run is over (the app says "notRunning") and no element is stale."""
    wait_for_app(pg, timeout)
    pg.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-stale=\"true\"]'); }", timeout=timeout)


def _current(pg) -> int:
    cap = pg.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first
    text = cap.inner_text(timeout=60_000).strip()
    m = CAPTION.match(text)
    assert m, text
    return int(m.group(1))


def _open(pg, app_server, reviewer: str, item: int | None = None) -> int:
    url = f"{app_server.url}/review?reviewer={reviewer}"
    if item is not None:
        url += f"&item={item}"
    pg.goto(url)
    pg.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first.wait_for(
        timeout=180_000)
    _settle(pg)
    pg.wait_for_function("() => window.__tracinRelabelKey === true")
    pg.locator("h1").first.click()  # keyboard focus on the page, not in a text field
    return _current(pg)


def _press(pg, key: str, before: int) -> tuple[int, float]:
    """Press a shortcut; wait for the next item. Returns (item, seconds)."""
    t0 = time.perf_counter()
    pg.keyboard.press(key)
    pg.wait_for_function(
        "(b) => { const c = document.querySelector("
        "'.st-key-rv_item_panel [data-testid=\"stImageCaption\"]');"
        " return c && c.innerText.trim() !== 'Item #' + b; }", arg=before, timeout=30_000)
    dt = time.perf_counter() - t0
    _settle(pg)
    return _current(pg), dt


def _download(pg, key: str) -> Path:
    with pg.expect_download(timeout=30_000) as info:
        pg.locator(f".st-key-{key} button").click()
    path = info.value.path()
    assert path and Path(path).stat().st_size > 0
    return Path(path)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_apptest_ranking_selector_one_option_each(review_app):
    """#13 item 8: one option per ranking, the default first and marked "(default)" once (not
    a "(default)" option beside its own name); a short help and the chosen ranking's
    description under the box, instead of a tooltip listing every ranking."""
    from pages.common import esc
    from tracin_core.audit import rankers as rk

    at, db = review_app
    _open_review(at)
    box = at.selectbox(key="rv_ranking")
    assert box.options[0] == f"{rk.DEFAULT_RANKER} (default)"
    assert sorted(o.replace(" (default)", "") for o in box.options) == sorted(rk.RANKERS)
    assert sum("(default)" in o for o in box.options) == 1 and len(box.options) == len(rk.RANKERS)
    assert box.value == rk.DEFAULT_RANKER and len(box.help) < 100, box.help
    captions = [c.value for c in at.sidebar.caption]
    assert esc(rk.RANKERS[rk.DEFAULT_RANKER][1]) in captions
    box.set_value("loss_mean").run()
    assert not at.exception and not at.error
    assert esc(rk.RANKERS["loss_mean"][1]) in [c.value for c in at.sidebar.caption]
    item = _apptest_item(at)
    at.button(key="rv_accept").click().run()
    assert [(e["item_id"], e["ranking"]) for e in _events(db, "apptest")] == [(item, "loss_mean")]


@pytest.mark.browser
def test_browser_keyboard_undo_reload_export(page, app_server):
    from playwright.sync_api import expect

    db = _review_db(app_server)
    reviewer = f"kb{uuid.uuid4().hex[:6]}"
    first = _open(page, app_server, reviewer)
    # (how long each key takes is measured by benchmarks/app_latency.py, not asserted here)
    second, _ = _press(page, "a", first)
    third, _ = _press(page, "r", second)
    fourth, _ = _press(page, "e", third)
    back, _ = _press(page, "u", fourth)  # undo the exclusion: that item comes back
    assert back == third
    assert len({first, second, third, fourth}) == 4

    store = _store(db)
    mine = store.decisions()
    mine = mine[mine["reviewer"] == reviewer].set_index("item_id")
    assert sorted(mine.index) == sorted([first, second])
    assert mine.loc[first, "status"] == "accepted"
    assert mine.loc[second, "status"] == "relabelled"
    assert mine.loc[second, "final_label"] != mine.loc[second, "given_label"]
    assert [e["action"] for e in _events(db, reviewer)] == ["accept", "relabel", "exclude", "undo"]

    # a reload keeps everything: the counts, and the queue resumes at the undone item
    page.reload()
    page.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first.wait_for()
    _settle(page)
    assert _current(page) == third
    expect(page.locator("[data-testid='stProgress']").first).to_contain_text("you: 2")
    if screenshots_wanted():  # the README's screenshot, only when asked for
        page.screenshot(path=str(_screenshot_path()), full_page=False)

    # undo after the reload: no session stack left, the store's history says what to undo
    page.wait_for_function("() => window.__tracinRelabelKey === true")
    page.locator("h1").first.click()
    item, _ = _press(page, "u", third)
    assert item == second
    mine = store.decisions()
    assert mine[mine["reviewer"] == reviewer]["item_id"].tolist() == [first]

    # exports
    rows = _csv(_download(page, "rv_dl_decisions_csv"))
    assert set(rows[0]) >= {"index", "given_label", "final_label", "status", "reviewer",
                            "is_final"}
    row = next(r for r in rows if int(r["index"]) == first)
    assert row["status"] == "accepted" and row["final_label"] == row["given_label"]
    assert all(int(r["index"]) != second or reviewer not in r["reviewer"] for r in rows)
    js = json.loads(_download(page, "rv_dl_decisions_json").read_text())
    assert sorted(int(r["index"]) for r in js) == sorted(int(r["index"]) for r in rows)
    history = _csv(_download(page, "rv_dl_history_csv"))
    assert [r["action"] for r in history if r["reviewer"] == reviewer] == \
        ["accept", "relabel", "exclude", "undo", "undo"]
    labels = _csv(_download(page, "rv_dl_corrected_csv"))
    assert len(labels) == N_TRAIN and list(labels[0]) == ["index", "label", "excluded", "flag",
                                                          "duplicate_of"]
    assert int(labels[first]["label"]) == int(row["given_label"])


def _screenshot_path() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / "review.png"


@pytest.mark.browser
def test_browser_two_reviewers_conflict_adjudication(browser, app_server):
    from playwright.sync_api import expect

    db = _review_db(app_server)
    tag = uuid.uuid4().hex[:6]
    alice, bob = f"alice{tag}", f"bob{tag}"
    ctx_a = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        pa, pb = ctx_a.new_page(), ctx_b.new_page()
        for pg in (pa, pb):
            pg.set_default_timeout(30_000)
        a = _open(pa, app_server, alice)
        b = _open(pb, app_server, bob)
        seen_a, seen_b = [a], [b]
        assert a != b
        # both queues advance; neither ever shows the item the other one holds
        for _ in range(2):
            a, _dt = _press(pa, "a", a)
            assert a != b
            b, _dt = _press(pb, "a", b)
            assert b != a
            seen_a.append(a)
            seen_b.append(b)
        assert not set(seen_a) & set(seen_b)
        claims = _store(db).claims()
        held = dict(zip(claims["reviewer"], claims["item_id"]))
        assert held[alice] == a and held[bob] == b

        # alice opens an item bob accepted ("All items" view) and relabels it: a conflict
        disputed = seen_b[0]
        assert _open(pa, app_server, alice, item=disputed) == disputed
        _press(pa, "r", disputed)
        conflicts = _store(db).conflicts()
        assert set(conflicts[conflicts["item_id"] == disputed]["reviewer"]) == {alice, bob}

        # the Conflicts view lists it; the adjudicator keeps alice's relabel (the default)
        pa.locator(".st-key-rv_mode button", has_text="Conflicts").click()
        box = pa.locator(f".st-key-rv_conflict_{disputed}")
        box.wait_for()
        _settle(pa)
        expect(box).to_contain_text(f"{bob}: accepted")
        expect(box).to_contain_text(f"{alice}: relabelled")
        box.locator(f".st-key-rv_adj_{disputed} button").click()
        box.wait_for(state="detached")
        _settle(pa)

        final = _store(db).final_decisions().set_index("item_id").loc[disputed]
        assert final["status"] == "relabelled" and bool(final["is_final"])
        rows = _csv(_download(pa, "rv_dl_decisions_csv"))
        row = next(r for r in rows if int(r["index"]) == disputed)
        assert row["status"] == "relabelled" and row["is_final"] == "True"
        assert row["reviewer"] == alice and row["final_label"] != row["given_label"]
        relabel = [e for e in _events(db, alice) if e["item_id"] == disputed]
        assert int(row["final_label"]) == relabel[0]["new_label"]
    finally:
        ctx_a.close()
        ctx_b.close()


def test_apptest_counters_skip_queue_size_and_ranking_switch(review_app):
    """Skips are not 'decided'; the queue's open count goes down; another ranking moves the
    queue to that ranking's first item."""
    at, db = review_app
    _open_review(at)

    def progress_text() -> str:
        return at.get("progress")[0].proto.text

    def open_count() -> int:
        cap = next(c.value for c in at.caption if c.value.startswith("Your queue:"))
        return int(re.match(r"Your queue: ([\d,]+) of", cap).group(1).replace(",", ""))

    start = open_count()
    at.button(key="rv_skip").click().run()
    assert "**0 / 1,437** items decided" in progress_text() and "you: 0" in progress_text()
    assert open_count() == start  # a skipped item is still open
    at.button(key="rv_accept").click().run()
    assert "**1 / 1,437** items decided" in progress_text() and "you: 1" in progress_text()
    assert open_count() == start - 1
    held = _apptest_item(at)
    from tracin_core import Workspace

    ws = Workspace.demo(cache_dir=Path(os.environ["TRACIN_CACHE"]) / "stores")
    decided = set(_store(db).decided_items("apptest"))

    def first_open(method: str) -> int:
        return next(int(i) for i in ws.mislabel_scores(method)["index"] if int(i) not in decided)

    # a ranking whose first open item is not the one shown (rankings may agree on it)
    other = next(m for m in ("loss_mean", "aum", "self_influence_fast", "loss_final") if first_open(m) != held)
    at.selectbox(key="rv_ranking").set_value(other).run()
    assert not at.exception and not at.error
    assert _apptest_item(at) == first_open(other) != held


def test_apptest_number_keys_relabel(review_app):
    """#13 item 6: each of the first ten classes has a button with its number as shortcut."""
    at, db = review_app
    _open_review(at)
    item = _apptest_item(at)
    buttons = {b.key: b for b in at.button if (b.key or "").startswith("rv_to_class_")}
    assert len(buttons) == 9  # every class but the given label
    assert all(b.proto.shortcut == b.key.rsplit("_", 1)[1] for b in buttons.values())
    target = next(k for k in sorted(buttons))
    label = int(target.rsplit("_", 1)[1])
    buttons[target].click().run()
    assert not at.exception and not at.error
    event = _events(db, "apptest")[-1]
    assert (event["item_id"], event["action"], event["new_label"]) == (item, "relabel", label)
    assert any(f"#{item} relabelled → {label}" in c.value for c in at.caption)  # the class name (a digit here)


@pytest.mark.browser
def test_browser_number_key_relabels(page, app_server):
    """A relabel to a non-suggested class with one key press, no mouse."""
    db = _review_db(app_server)
    who = f"digits{uuid.uuid4().hex[:6]}"
    item = _open(page, app_server, who)
    key = "0" if page.locator(".st-key-rv_to_class_0").count() else "1"
    after, _dt = _press(page, key, item)
    assert after != item
    event = [e for e in _events(db, who)][-1]
    assert (event["item_id"], event["action"], event["new_label"]) == (item, "relabel", int(key))


def test_apptest_flags_ambiguous_outlier_duplicate(review_app):
    """#11 item 5: Ambiguous (M), Outlier (O) and Duplicate (D) of #N are recorded like the
    other decisions, counted, filtered on and undone; a bad duplicate index records
    nothing and says why."""
    at, db = review_app
    _open_review(at)
    shortcuts = {b.key: b.proto.shortcut for b in at.button
                 if b.key in ("rv_ambiguous", "rv_outlier", "rv_duplicate")}
    assert shortcuts == {"rv_ambiguous": "m", "rv_outlier": "o", "rv_duplicate": "d"}
    assert {"Ambiguous (M)", "Outlier (O)", "Duplicate (D)"} <= {b.label for b in at.button}

    first = _apptest_item(at)
    at.button(key="rv_ambiguous").click().run()
    assert not at.exception and not at.error
    assert any(f"#{first} marked ambiguous" in c.value for c in at.caption)
    second = _apptest_item(at)
    assert second != first
    at.button(key="rv_outlier").click().run()
    third = _apptest_item(at)
    assert third not in (first, second)
    assert [(e["item_id"], e["action"], e["status"]) for e in _events(db, "apptest")] == [
        (first, "ambiguous", "ambiguous"), (second, "outlier", "outlier")]

    # a duplicate needs the other item's index: missing, itself, or not in the data
    for value, message in ((None, "Enter the index"), (third, "cannot be a duplicate of itself"),
                           (N_TRAIN, "no such item")):
        if value is not None:
            at.number_input(key=f"rv_dup_of_{third}").set_value(value).run()
        at.button(key="rv_duplicate").click().run()
        assert not at.exception
        assert any(message in e.value for e in at.error), [e.value for e in at.error]
        assert len(_events(db, "apptest")) == 2  # nothing recorded
        assert _apptest_item(at) == third  # still on the same item
    at.number_input(key=f"rv_dup_of_{third}").set_value(first).run()
    at.button(key="rv_duplicate").click().run()
    assert not at.exception and not at.error
    assert any(f"#{third} marked a duplicate of #{first}" in c.value for c in at.caption)
    event = _events(db, "apptest")[-1]
    assert (event["item_id"], event["action"], event["duplicate_of"]) == (third, "duplicate", first)

    # counts
    counts = " ".join(m.value for m in at.markdown)
    for name in ("ambiguous", "outlier", "duplicate"):
        assert f"[{name} 1]" in counts, counts
    assert "**3 / 1,437** items decided" in at.get("progress")[0].proto.text

    # filters: "All items" on the new statuses
    at.segmented_control(key="rv_mode").set_value("All items").run()
    at.multiselect(key="rv_f_status").set_value(["duplicate"]).run()
    assert not at.exception
    assert _apptest_item(at) == third
    assert any("1** of **1** matching" in m.value for m in at.markdown)
    assert any("duplicate of #" in m.value for m in at.markdown)  # your decision, with its item
    at.multiselect(key="rv_f_status").set_value(["ambiguous", "outlier"]).run()
    assert any("of **2** matching" in m.value for m in at.markdown)
    assert _apptest_item(at) in (first, second)

    # undo reverts the duplicate (the latest decision)
    at.button(key="rv_undo_btn").click().run()
    assert not at.exception and not at.error
    assert [e["action"] for e in _events(db, "apptest")][-1] == "undo"
    decided = _store(db).decisions().set_index("item_id")
    assert sorted(decided.index) == sorted([first, second])
    assert decided.loc[first, "status"] == "ambiguous" and decided.loc[second, "status"] == "outlier"


def test_apptest_adjudicate_a_flag_conflict(review_app):
    """Two reviewers who flag an item differently are in conflict; the adjudicator can
    settle it on one reviewer's "duplicate of #N"."""
    at, db = review_app
    from pages import common

    ws = common._load_workspace(common.spec_key(common.DEMO_SPEC))
    store = ReviewStore(db, workspace=WORKSPACE, data_hash=ws.data_hash)
    labels = ws.train.labels.tolist()
    disputed = 700
    store.record(disputed, "alice", "ambiguous", given_label=labels[disputed])
    store.record(disputed, "bob", "duplicate", given_label=labels[disputed], duplicate_of=3)
    _open_review(at)
    at.segmented_control(key="rv_mode").set_value("Conflicts").run()
    assert not at.exception
    box = " ".join(m.value for m in at.markdown)
    assert "duplicate" in box and "of #3" in box
    choice = at.selectbox(key=f"rv_adj_choice_{disputed}")
    assert choice.options[-4:] == ["Exclude the example", "Ambiguous (more than one class fits)",
                                   "Outlier (none of the classes fits)", "Duplicate of #3"]
    choice.set_value("duplicate:3").run()
    at.button(key=f"rv_adj_{disputed}").click().run()
    assert not at.exception and not at.error
    final = store.final_decisions().set_index("item_id").loc[disputed]
    assert (final["status"], final["duplicate_of"], bool(final["is_final"])) == ("duplicate", 3, True)
    assert store.conflicts().empty


@pytest.mark.browser
def test_browser_flag_keys(page, app_server):
    """M, O and D from the keyboard: ambiguous, outlier, and a duplicate of the index typed
    in "Duplicate of #" (D with no index records nothing and says why)."""
    db = _review_db(app_server)
    who = f"flags{uuid.uuid4().hex[:6]}"
    first = _open(page, app_server, who)
    second, _ = _press(page, "m", first)
    third, _ = _press(page, "o", second)
    page.keyboard.press("d")  # no index yet: an error, the item stays
    page.get_by_text("Enter the index of the item it duplicates").wait_for(timeout=30_000)
    _settle(page)
    assert _current(page) == third
    field = page.locator(f".st-key-rv_dup_of_{third} input")
    field.fill(str(first))
    field.press("Enter")
    _settle(page)
    page.locator("h1").first.click()  # focus off the field, so D is a shortcut again
    after, _ = _press(page, "d", third)
    assert after not in (first, second, third)
    events = [(e["item_id"], e["action"], e["duplicate_of"]) for e in _events(db, who)]
    assert events == [(first, "ambiguous", None), (second, "outlier", None),
                      (third, "duplicate", first)]


def _demo_copy(folder: Path, labels_override: Path, name: str = WORKSPACE) -> Path:
    """The demo's workspace file under ``folder`` (absolute paths) with other training labels."""
    demo = REPO / "assets" / "demo"
    text = (demo / "workspace.toml").read_text().replace('name = "digits-demo"', f'name = "{name}"')
    text = text.replace('paths = "checkpoint-*.pt"', f'paths = "{demo}/checkpoint-*.pt"')
    text = text.replace('labels_override = "labels_override.csv"', f'labels_override = "{labels_override}"')
    text = text.replace('ground_truth = "labels.csv"', f'ground_truth = "{demo}/labels.csv"')
    path = folder / f"{labels_override.stem}.toml"
    path.write_text(text)
    return path


def test_apptest_corrected_labels_carry_the_review_over(tmp_path):
    """#13 item 2: a workspace that loads the Review page's "Corrected labels" export as
    labels_override (same workspace name) goes on from the earlier review: its decisions
    count there, and the queue starts after them (not at an excluded item). Labels that
    are not that export: the page says plainly why the review does not carry over."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import isolated_app_cache, write_server_config
    from tracin_core import Workspace

    cache = tmp_path / "cache"
    ws = Workspace.demo(cache_dir=cache / "stores")
    given = ws.train.labels.tolist()
    top = [int(i) for i in ws.mislabel_scores()["index"][:3]]
    store = ReviewStore(cache / "reviews.sqlite", workspace=ws.name, data_hash=ws.data_hash)
    store.record(top[0], "ann", "exclude", given_label=given[top[0]])  # the queue's first item
    store.record(top[1], "ann", "relabel", (given[top[1]] + 1) % 10, given_label=given[top[1]])
    store.record(top[2], "bob", "accept", given_label=given[top[2]])
    listed = tmp_path / "listed"  # workspace files, outside the app's cache (and its uploads)
    listed.mkdir()
    corrected = store.export_corrected_labels(listed / "corrected.csv", given)  # as the page's button
    tampered = listed / "tampered.csv"  # the relabel undone by hand: not that export any more
    tampered.write_text(corrected.read_text().replace(
        f"\n{top[1]},{(given[top[1]] + 1) % 10},", f"\n{top[1]},{given[top[1]]},"))
    config = write_server_config(listed / "tracin_audit.toml", workspaces={
        "corrected": _demo_copy(listed, corrected), "tampered": _demo_copy(listed, tampered)})

    def review_page(name: str):
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
        at.query_params["workspace"] = name
        at.query_params["reviewer"] = "cy"
        at.run()
        at.switch_page("pages/review.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        return at

    with isolated_app_cache(cache, config=config):
        at = review_page("corrected")
        info = " ".join(i.value for i in at.info)
        assert "The earlier review of **digits-demo** carried over" in info and "3 item(s)" in info
        assert not any("other training data" in w.value for w in at.warning)
        assert "**3 / 1,437** items decided" in at.get("progress")[0].proto.text
        assert _apptest_item(at) not in top  # the excluded item (and the others) are done
        at.button(key="rv_accept").click().run()
        assert not at.exception and not at.error
        assert len(_events(cache / "reviews.sqlite", "cy")) == 1

        at = review_page("tampered")
        warning = " ".join(w.value for w in at.warning).replace("\\", "")
        assert "were recorded on other training data and are not carried over" in warning
        assert f"item #{top[1]} was relabelled as {(given[top[1]] + 1) % 10} there, but its label here " \
               f"is {given[top[1]]}" in warning, warning
        assert "**0 / 1,437** items decided" in at.get("progress")[0].proto.text
        assert _apptest_item(at) == top[0]  # nothing carried: the queue starts afresh


BADGES_JS = """
(keys) => keys.map((key) => {
  const button = document.querySelector('.st-key-' + key + ' button');
  if (!button) { return [key, null, 'no button']; }
  const kbd = button.querySelector('kbd');
  if (kbd) {
    const box = kbd.getBoundingClientRect();
    return [key, kbd.innerText.trim(), box.width > 0 && getComputedStyle(kbd).opacity > 0 ? 'shown' : 'hidden'];
  }
  const span = button.querySelector('[data-has-shortcut]');
  const after = getComputedStyle(span, '::after');
  const text = after.content.replace(/^"|"$/g, '');
  // the badge drawn by CSS widens its span beyond the label (by the gap and the letter)
  const wider = span.getBoundingClientRect().width - span.querySelector('p').getBoundingClientRect().width;
  const fits = span.getBoundingClientRect().right <= button.getBoundingClientRect().right;
  return [key, text === 'none' ? null : text,
          after.display !== 'none' && after.opacity > 0 && wider >= 12 && fits ? 'shown' : 'hidden'];
})
"""


@pytest.mark.browser
def test_browser_every_action_button_shows_its_key(page, app_server):
    """#13 item 6: every action button on the Review page shows its key badge, as
    Streamlit draws it for shortcuts, Relabel (R, a key Streamlit reserves) included."""
    who = f"badges{uuid.uuid4().hex[:6]}"
    _open(page, app_server, who)
    given = int(re.search(r"Given label:\s*(\d)", page.locator(".st-key-rv_item_panel").inner_text()).group(1))
    expected = {"rv_accept": "A", "rv_relabel": "R", "rv_exclude": "E", "rv_skip": "S", "rv_undo_btn": "U",
                "rv_ambiguous": "M", "rv_outlier": "O", "rv_duplicate": "D"}
    expected.update({f"rv_to_class_{k}": str(k) for k in range(10) if k != given})
    badges = page.evaluate(BADGES_JS, list(expected))
    assert {key: (text, shown) for key, text, shown in badges} == {
        key: (text, "shown") for key, text in expected.items()}
    # the Relabel badge's key works: R relabels to the class chosen beside it
    before = _current(page)
    after, _ = _press(page, "r", before)
    assert after != before
    assert [e["action"] for e in _events(_review_db(app_server), who)] == ["relabel"]


def test_apptest_link_from_another_page_opens_that_item(review_app):
    """#13 item 6: Influence's detail dialog links to ``review?item=N&goto=1``; the Review
    page then shows item N under "All items", even when this session was on its queue."""
    at, _ = review_app
    _open_review(at)
    first = _apptest_item(at)
    target = 7 if first != 7 else 8
    at.query_params["item"] = str(target)
    at.query_params["goto"] = "1"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert _apptest_item(at) == target
    assert at.session_state["rv_mode"] == "All items" and "goto" not in at.query_params
    at.button(key="rv_next").click().run()  # and browsing on from there works as before
    assert _apptest_item(at) != target and not at.error


def test_apptest_influence_details_link_to_review(review_app):
    at, _ = review_app
    at.run()
    at.switch_page("pages/influence.py")
    at.query_params["test"] = "5"
    at.run()
    detail = next(b for b in at.button if (b.key or "").startswith("det_p_"))
    detail.click().run()
    assert not at.exception, [e.value for e in at.exception]
    links = [e.proto for e in at.get("page_link")]
    link = next(x for x in links if x.label.startswith("Review #"))
    item = int(re.match(r"Review #(\d+) ", link.label).group(1))
    assert sorted(link.query_string.split("&")) == ["goto=1", f"item={item}"]


@pytest.mark.browser
def test_browser_thirty_items_by_keyboard_only(page, app_server):
    """#13: a new user reviews 30 items without the mouse: accepts, relabels to classes the
    page did not suggest (number keys), excludes, skips, flags; every decision is stored as
    pressed."""
    db = _review_db(app_server)
    who = f"walk{uuid.uuid4().hex[:6]}"
    url = f"{app_server.url}/review?reviewer={who}"
    page.goto(url)
    page.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first.wait_for(timeout=180_000)
    _settle(page)
    page.wait_for_function("() => window.__tracinRelabelKey === true")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no click
    item = _current(page)
    plan = ["a", "relabel", "e", "s", "relabel", "a", "m", "relabel", "a", "o"] * 3
    expected = []
    for step in plan:
        text = page.locator(".st-key-rv_item_panel").first.inner_text()
        given = int(re.search(r"Given label:\s*(\d+)", text).group(1))
        suggested = int(re.search(r"Suggested label:\s*(\d+)", text).group(1))
        key = step
        if step == "relabel":
            key = str(next(c for c in range(9, -1, -1) if c not in (given, suggested)))
        expected.append((item, {"a": "accept", "e": "exclude", "s": "skip", "m": "ambiguous",
                                "o": "outlier"}.get(key, "relabel"), int(key) if key.isdigit() else None))
        after, _ = _press(page, key, item)
        assert after != item
        item = after
    got = [(e["item_id"], e["action"], int(e["new_label"]) if e["action"] == "relabel" else None)
           for e in _events(db, who)]
    assert got == expected
    assert len({i for i, _, _ in got}) == 30  # thirty different items


def test_apptest_large_unranked_workspace_asks_before_ranking(review_app, monkeypatch):
    """#12: a large workspace whose ranking is not kept shows what is missing, the CLI
    command and a button, and computes nothing until the button is pressed."""
    from tracin_core.audit import rankers as rk
    from pages import common
    from tracin_core.audit import workspace as wsm

    common._mislabel_table.clear()  # another test's ranking of the same demo, kept in memory
    monkeypatch.setattr(wsm, "RANKING_ASK_ROWS", 100, raising=False)  # the demo's 1,437 rows count as large
    # rankings kept by earlier tests on the same store are another code's: none is kept for this one
    monkeypatch.setattr(wsm, "_rankers_code", lambda: "asks-before-ranking")
    calls = []
    real = rk.compute
    monkeypatch.setattr(rk, "compute", lambda name, inp: calls.append(name) or real(name, inp))
    at, db = review_app
    _open_review(at)
    assert calls == [] and not at.exception
    assert any("not computed yet" in w.value for w in at.warning), [w.value for w in at.warning]
    assert [c.value for c in at.code] == ["python -m tracin_core mislabels demo"]
    assert not at.get("image")
    at.button(key="rv_compute_ranking").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls[:1] == [rk.DEFAULT_RANKER]  # (the combined ranking computes its parts too)
    computed = len(calls)
    _apptest_item(at)  # the queue is on show
    at.run()  # kept now: no notice, nothing recomputed
    assert len(calls) == computed and not any("not computed yet" in w.value for w in at.warning)


def test_the_claim_is_renewed_by_a_timed_fragment_and_the_ranking_notice_is_not_one():
    """An open Review page renews its claim every RENEW_SECONDS (a fragment run on a timer);
    the notice about a missing ranking runs once per page run (a timed fragment around it
    would re-check the ranking every 40 s and leave the claim to lapse)."""
    import ast

    tree = ast.parse((REPO / "pages" / "review.py").read_text())
    timed = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
             for d in f.decorator_list
             if isinstance(d, ast.Call) and ast.unparse(d.func) == "st.fragment"
             and any(k.arg == "run_every" and ast.unparse(k.value) == "RENEW_SECONDS" for k in d.keywords)}
    assert "keep_claim" in timed
    assert "ask_before_ranking" not in timed


def test_apptest_actions_are_drawn_before_the_item_image_and_proponents(review_app, monkeypatch):
    """A key pressed as soon as the next item's "Item #N" caption shows must find its button:
    the page draws every action button (and so its shortcut) before the item's image and
    before the proponents (the slow influence search). Drawn after them, the first press on
    a freshly opened 1M-row page landed before the buttons existed and was lost."""
    at, _ = review_app
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    from pages import common

    seen: list[tuple[str, set]] = []  # (what was drawn, the widget keys drawn before it)
    upscale, proponents = common.upscale, common.train_proponents

    def keys_so_far() -> set:  # the widget keys this run has drawn so far (Streamlit's own record)
        return set(get_script_run_ctx().shared.widget_user_keys_this_run.snapshot())

    def traced_upscale(img, size=112):
        if size == 224:  # the item's own image (proponents are drawn at 72)
            seen.append(("image", keys_so_far()))
        return upscale(img, size)

    def traced_proponents(*args, **kwargs):
        seen.append(("proponents", keys_so_far()))
        return proponents(*args, **kwargs)

    monkeypatch.setattr(common, "upscale", traced_upscale)
    monkeypatch.setattr(common, "train_proponents", traced_proponents)
    _open_review(at)
    assert not at.error, [e.value for e in at.error]
    at.button(key="rv_accept").click().run()  # the next item, drawn by the same code
    assert not at.exception and not at.error
    actions = {"rv_accept", "rv_exclude", "rv_skip", "rv_undo_btn", "rv_relabel", "rv_ambiguous",
               "rv_outlier", "rv_duplicate"}
    assert [what for what, _ in seen].count("image") >= 2 and "proponents" in [w for w, _ in seen]
    for what, keys in seen:
        assert actions <= keys, f"{what} drawn before the buttons {sorted(actions - keys)}"
