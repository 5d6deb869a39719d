"""Security in a real browser: sign-in through a real OIDC provider, roles, hostile visitors.

Two servers: one in local mode (no sign-in; the session-wide ``app_server``), one that signs
users in through ``tests/oidc/server.js`` (npm's oauth2-mock-server on loopback) with a
server config mapping three users to the three roles. Each browser context is one person.
"""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, AppServer, free_port, wait_for_app, write_server_config
from tests.oidc_provider import oidc_provider  # noqa: F401 (fixture)
from tests.test_security import evil_toml

pytestmark = pytest.mark.browser
WAIT = 60_000
USERS = {"alice@example.com": "admin", "bob@example.com": "annotator", "carol@example.com": "viewer"}


def _settle(pg) -> None:
    wait_for_app(pg, WAIT)
    pg.wait_for_function(
        "() => { const app = document.querySelector('[data-testid=\"stApp\"]');"
        " return app && app.getAttribute('data-test-script-state') === 'notRunning'"
        " && !document.querySelector('[data-stale=\"true\"]'); }", timeout=WAIT)


def _events(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT reviewer, item_id, action FROM events ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def signed_in_server(oidc_provider, tmp_path_factory):  # noqa: F811
    cache = tmp_path_factory.mktemp("oidc_app")
    port = free_port()
    config = write_server_config(cache / "tracin_audit.toml", users=USERS, mode="oidc")
    server = AppServer(cache, cache / "streamlit.log", config=config, port=port,
                       secrets=oidc_provider.secrets_toml(f"http://127.0.0.1:{port}/oauth2callback"))
    yield server
    server.stop()


def _person(browser, provider, email: str):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    provider.sign_in_as(ctx, email)
    pg = ctx.new_page()
    pg.set_default_timeout(WAIT)
    return ctx, pg


def _sign_in(pg, url: str, email: str) -> None:
    pg.goto(url)
    pg.get_by_role("button", name="Sign in").click()
    pg.get_by_text(f"Signed in as {email}").wait_for(timeout=WAIT)
    _settle(pg)


def test_three_roles_sign_in_through_a_real_provider(browser, oidc_provider, signed_in_server):  # noqa: F811
    server = signed_in_server
    people = {email: _person(browser, oidc_provider, email) for email in USERS}
    try:
        alice, bob, carol = (people[e][1] for e in USERS)
        # signed out: only the sign-in button, no data
        bob.goto(server.url + "/review")
        bob.get_by_role("button", name="Sign in").wait_for()
        assert bob.locator("[data-testid='stImage']").count() == 0
        for email, (_, pg) in people.items():
            _sign_in(pg, server.url, email)
            pg.get_by_text(f"Signed in as {email} · {USERS[email]}").wait_for()

        # admin: the Workspace page offers opening and building (uploads included)
        alice.get_by_text("Open another workspace").wait_for()
        alice.get_by_role("tab", name="Build one here").click()
        assert alice.locator("input[type='file']").count() >= 1
        # annotator: the Workspace page shows the workspace, no way to open or upload
        bob.get_by_text("Only admins open or build workspaces").wait_for()
        assert bob.get_by_text("Open another workspace").count() == 0
        assert bob.locator("input[type='file']").count() == 0
        assert bob.get_by_text("Reviewer name").count() == 0  # the identity is not a text field

        # annotator reviews with the keyboard; the event records the signed-in identity
        bob.goto(server.url + "/review")
        cap = bob.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first
        cap.wait_for(timeout=180_000)
        _settle(bob)
        first = cap.inner_text().strip()
        bob.locator("h1").first.click()
        bob.keyboard.press("a")
        bob.wait_for_function(
            "(b) => { const c = document.querySelector('.st-key-rv_item_panel [data-testid=\"stImageCaption\"]');"
            " return c && c.innerText.trim() !== b; }", arg=first, timeout=WAIT)
        events = _events(server.review_db)
        assert events and events[-1][0] == "bob@example.com" and events[-1][2] == "accept"
        assert "Item #" + str(events[-1][1]) == first
        assert bob.locator(".st-key-rv_dl_decisions_csv").count() == 0  # no export of everyone's
        assert bob.locator(".st-key-rv_dl_mine_csv").count() == 1

        # viewer: a direct URL to Review lands on a page a viewer may see
        carol.goto(server.url + "/review")
        carol.get_by_role("heading", name="Influence").wait_for()
        _settle(carol)
        assert carol.locator(".st-key-rv_item_panel").count() == 0
        nav = carol.locator("[data-testid='stSidebarNav']").inner_text()
        assert "Review" not in nav and "Workspace" not in nav and "Evaluation" in nav
        assert [e for e in _events(server.review_db) if e[0] == "carol@example.com"] == []
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        for email, (_ctx, pg) in people.items():
            pg.screenshot(path=str(ARTIFACTS / f"roles-{email}.png"))
        raise
    finally:
        for ctx, _ in people.values():
            ctx.close()


def test_uploaded_file_never_opens_as_a_workspace(page, app_server, tmp_path):
    """The two steps of the reported attack, as an anonymous visitor in local mode."""
    marker = tmp_path / "marker"
    evil = evil_toml(marker).encode()
    page.goto(app_server.url)
    _settle(page)
    page.get_by_role("tab", name="Build one here").click()
    page.get_by_text("Upload a zip of class folders").click()
    _settle(page)
    page.locator(".st-key-build_zip input[type='file']").set_input_files(
        {"name": "x.zip", "mimeType": "application/zip", "buffer": evil})
    _settle(page)
    uploaded = app_server.cache_dir / "uploads" / f"{hashlib.sha256(evil).hexdigest()[:32]}.zip"
    for value in (str(uploaded), "/etc/passwd", "../../../etc/passwd"):
        page.goto(f"{app_server.url}/?workspace={value}")
        page.get_by_text("is listed on this server; the demo is open instead").wait_for()
        page.get_by_text("Active workspace: digits-demo").wait_for()
        assert "root:x:" not in page.content()
    assert not marker.exists()


def test_html_in_a_reviewer_name_is_shown_as_text(browser, app_server):
    evil = "<img src=x id=injected onerror=document.title='pwned'>"
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(WAIT)
        from urllib.parse import quote

        pg.goto(f"{app_server.url}/review?reviewer={quote(evil)}")
        cap = pg.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first
        cap.wait_for(timeout=180_000)
        _settle(pg)
        first = cap.inner_text().strip()
        item = int(first.split("#")[1])
        pg.locator(".st-key-rv_accept button").first.click()
        # the next item on show: the accept is recorded (settling alone can return before the
        # click's rerun has started, and the event was then not yet in the store)
        pg.wait_for_function(
            "(b) => { const c = document.querySelector('.st-key-rv_item_panel [data-testid=\"stImageCaption\"]');"
            " return c && c.innerText.trim() !== b; }", arg=first, timeout=WAIT)
        _settle(pg)
        from tracin_core.audit.review import ReviewStore

        with sqlite3.connect(app_server.review_db) as conn:  # the scope this session writes to
            workspace, data_hash = conn.execute(
                "SELECT workspace, data_hash FROM events WHERE reviewer = ? LIMIT 1", (evil,)).fetchone()
        with ReviewStore(app_server.review_db, workspace=workspace, data_hash=data_hash) as store:
            store.record(item, "other", "exclude")
        pg.locator(".st-key-rv_mode button", has_text="Conflicts").click()
        pg.locator(f".st-key-rv_conflict_{item}").wait_for()
        _settle(pg)
        from playwright.sync_api import expect

        box = pg.locator(f".st-key-rv_conflict_{item}")
        expect(box).to_contain_text(evil + ": accepted", timeout=WAIT)  # the name, as text
        assert pg.locator("#injected").count() == 0 and pg.title() != "pwned"
    finally:
        ctx.close()


def test_two_default_sessions_get_their_own_identity(browser, app_server):
    ctxs = [browser.new_context(viewport={"width": 1400, "height": 1000}) for _ in range(2)]
    try:
        pages, items = [], []
        for ctx in ctxs:
            pg = ctx.new_page()
            pg.set_default_timeout(WAIT)
            pg.goto(app_server.url + "/review")
            cap = pg.locator(".st-key-rv_item_panel [data-testid='stImageCaption']").first
            cap.wait_for(timeout=180_000)
            _settle(pg)
            pages.append(pg)
            items.append(cap.inner_text().strip())
        names = [pg.locator(".st-key-reviewer_input input").input_value() for pg in pages]
        assert names[0].startswith("local-") and names[1].startswith("local-") and names[0] != names[1]
        assert items[0] != items[1]  # never the same item from "my queue"
        for pg, key in zip(pages, ("a", "e")):
            pg.locator("h1").first.click()
            pg.keyboard.press(key)
        for pg, before in zip(pages, items):
            pg.wait_for_function(
                "(b) => { const c = document.querySelector('.st-key-rv_item_panel [data-testid=\"stImageCaption\"]');"
                " return c && c.innerText.trim() !== b; }", arg=before, timeout=WAIT)
        mine = {(r, i, a) for r, i, a in _events(app_server.review_db) if r in names}
        assert mine == {(names[0], int(items[0].split("#")[1]), "accept"),
                        (names[1], int(items[1].split("#")[1]), "exclude")}
    finally:
        for ctx in ctxs:
            ctx.close()
