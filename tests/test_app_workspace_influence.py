"""The Workspace and Influence pages: AppTest (in process) and headless Chromium.

AppTest runs ``app.py`` with the cache under a temporary folder; the browser tests use
the shared ``app_server`` / ``page`` fixtures and save the README's screenshots under
``docs/screenshots/``.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (ARTIFACTS, REPO, SCREENSHOTS, isolated_app_cache, screenshots_wanted,
                            wait_for_app, write_server_config)


DEMO_TOML = REPO / "assets" / "demo" / "workspace.toml"


# ----------------------------------------------------------------------------- AppTest
@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """TRACIN_CACHE (and the module-level paths derived from it) under a temporary folder;
    a server config listing the demo's workspace file and a broken one."""
    listed = tmp_path_factory.mktemp("listed")
    (listed / "broken.toml").write_text('name = "broken"\n[model]\nfactory = "tracin_core.audit.models:DigitsCNN"\n')
    config = write_server_config(listed / "tracin_audit.toml",
                                 workspaces={"digits-file": DEMO_TOML, "broken": listed / "broken.toml"})
    with isolated_app_cache(tmp_path_factory.mktemp("apptest_cache"), config=config) as cache:
        yield cache


def _app(app_cache, page: str | None = None, query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "error", "info") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


#: a gallery card's caption (HTML under its inline image): label, score, index, prediction
CARD = re.compile(r'<div [^>]*><b>(\d)</b>[^·]* · ([^<]+)</div><div [^>]*>#(\d+) · pred\. (\d)</div>$')


def _cards(at) -> list[str]:
    """Gallery cards: label, score (3 significant digits), index and predicted class."""
    return ["|".join(m.groups()) for h in at.get("html") for m in [CARD.search(h.proto.body)] if m]


def test_workspace_page_shows_demo_and_choosers(app_cache):
    at = _app(app_cache)
    text = _texts(at)
    assert "Active workspace: digits-demo" in text
    assert "**Classes:** 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text
    captions = [c for img in at.get("image") for c in img.captions]  # the preview grid
    assert len(captions) == 24 and captions[23].startswith("#23 · ")
    assert not at.error
    for key in ("open_demo", "open_listed", "open_build"):
        assert at.button(key=key) is not None
    assert any(o.startswith("digits_cnn — ") for o in at.selectbox(key="build_arch").options)
    first = at.selectbox(key="build_arch").value
    from tracin_core.audit.models import ARCHITECTURES

    assert at.selectbox(key=f"build_layer_{first}").value == ARCHITECTURES[first].final_fc_layer
    assert list(at.radio(key="build_dataset").options)[0] == "digits (built-in)"
    # the checkpoints table: six checkpoints with the learning rates they store
    df = at.dataframe[0].value
    assert len(df) == 6 and set(df["learning rate"]) == {0.05}
    assert set(df["learning rate from"]) == {"stored in the checkpoint"}
    # the next step: a link to each page the role may open, with what it is for (#13 item 8)
    links = [e.proto for e in at.get("page_link")]
    assert [x.label for x in links] == ["Influence →", "Review →", "Evaluation →"]
    assert "check the labels most likely wrong" in text


def test_workspace_page_opens_listed_and_reports_broken(app_cache):
    at = _app(app_cache)
    assert at.selectbox(key="listed_name").options == ["broken", "digits-file"]
    at.selectbox(key="listed_name").set_value("broken").run()
    at.button(key="open_listed").click().run()
    assert not at.exception
    assert any("Could not open the workspace" in e.value and "final\\_fc\\_layer" in e.value for e in at.error)
    assert at.button(key="open_build") is not None  # the choosers stay usable
    next(b for b in at.button if b.label == "Go back to the demo").click().run()
    assert "Active workspace: digits-demo" in _texts(at) and not at.error
    at.selectbox(key="listed_name").set_value("digits-file").run()
    at.button(key="open_listed").click().run()
    assert not at.exception and not at.error
    # the URL carries the listed name, never a path
    assert at.query_params["workspace"] in ("digits-file", ["digits-file"])
    text = _texts(at)
    assert "Active workspace: digits-demo" in text and "digits-file" in text
    assert str(DEMO_TOML.parent) not in text


def test_influence_page_pick_filters_and_methods(app_cache):
    at = _app(app_cache, "pages/influence.py")
    assert "Pick a test image above" in _texts(at)
    picks = [b for b in at.button if (b.key or "").startswith("pick_")]
    assert len(picks) == 40
    assert at.selectbox(key="inf_class").options[0] == "All classes"

    at.button(key="pick_5").click().run()
    assert not at.exception and not at.error
    heads = [s.value for s in at.subheader]
    assert "Proponents of test #5" in heads and "Opponents of test #5" in heads
    assert at.query_params["test"] in ("5", ["5"])
    assert len(_cards(at)) == 16  # k = 8 proponents + 8 opponents
    scores = [c.split("|")[1] for c in _cards(at)]  # three significant digits, trailing zeros kept
    assert scores == [f"{float(v):#.3g}".rstrip(".").replace(".e", "e") for v in scores]
    assert "True label: **3**" in _texts(at) and "with probability" in _texts(at)

    # k and the other methods
    at.slider(key="inf_k").set_value(3).run()
    assert len(_cards(at)) == 6
    fast_cards = _cards(at)
    for method in ("RandProj", "Fast via an index", "TracInCP (chosen layers)"):
        at.radio(key="inf_method").set_value(method).run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert "Opponents of test #5" in [s.value for s in at.subheader]
        if method == "Fast via an index":  # exact scores of the exact top 3 (the demo is small)
            assert _cards(at) == fast_cards
    assert at.multiselect(key="inf_layers").value == ["fc2"]

    # filters: misclassified only, then one class
    at.checkbox(key="inf_wrong").check().run()
    shown = [int(b.key[5:]) for b in at.button if (b.key or "").startswith("pick_")]
    from pages.common import _load_workspace, spec_key, DEMO_SPEC

    preds = _load_workspace(spec_key(DEMO_SPEC)).predictions("test")
    wrong = preds.loc[~preds["correct"], "index"].tolist()
    assert shown == wrong[:40] and 0 < len(shown)
    at.checkbox(key="inf_wrong").uncheck().run()
    at.selectbox(key="inf_class").set_value("3").run()
    shown = [int(b.key[5:]) for b in at.button if (b.key or "").startswith("pick_")]
    assert shown and all(preds.loc[i, "label"] == 3 for i in shown)


def test_influence_page_restores_test_from_url(app_cache):
    at = _app(app_cache, "pages/influence.py", query={"test": "7"})
    heads = [s.value for s in at.subheader]
    assert "Proponents of test #7" in heads and "Opponents of test #7" in heads
    at.text_input(key="inf_index_input").input("11").run()
    at.button(key="inf_index_go").click().run()
    assert "Opponents of test #11" in [s.value for s in at.subheader]


def test_influence_page_says_what_is_wrong_with_bad_values(app_cache):
    """#13 item 7: a bad index, a bad link, a non-image upload each say so and clear what
    no longer applies; an image with no true label gets no check mark."""
    import io

    from PIL import Image

    at = _app(app_cache, "pages/influence.py", query={"test": "5"})
    for bad in ("-1", "99999", "seven", "3.5"):
        at.text_input(key="inf_index_input").input(bad).run()
        at.button(key="inf_index_go").click().run()
        assert not at.exception
        errors = [e.value.replace("\\", "") for e in at.error]
        assert any("is not a test index: enter a whole number from 0 to 359" in e for e in errors), (bad, errors)
        assert not [s.value for s in at.subheader if "of test #" in s.value]  # the old galleries are gone
    at = _app(app_cache, "pages/influence.py", query={"test": "4000"})
    assert any("is not one of 0 to 359" in e.value.replace("\\", "") for e in at.error)
    assert "test" not in at.query_params

    at = _app(app_cache, "pages/influence.py")
    blank = io.BytesIO()
    Image.new("L", (8, 8), 0).save(blank, format="PNG")
    at.file_uploader(key="inf_upload_file").set_value(("blank.png", blank.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    head = next(m.value for m in at.markdown if "True label:" in m.value)
    assert "True label: **unknown**" in head and "check_circle" not in head and ":red[" not in head
    at.file_uploader(key="inf_upload_file").set_value(("notes.png", b"not an image", "image/png")).run()
    assert not at.exception
    assert any("cannot be read as an image: its bytes are not a PNG or JPG image" in e.value.replace("\\", "")
               for e in at.error)
    assert not [s.value for s in at.subheader if "uploaded" in s.value]  # the previous upload's results are gone


# ----------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def warm_server(browser, app_server):
    """Load the main page once before any deep link.

    Streamlit starts in its legacy "pages/ folder" mode (this repository has a ``pages/``
    package next to ``app.py``) until a run of ``app.py`` reaches ``st.navigation``; a
    fresh server's first request for ``/influence`` would run that page alone.
    """
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto(app_server.url)
    _settle(pg, "Open another workspace", 120_000)
    ctx.close()
    return app_server


def _settle(pg, text: str, timeout: float = 90_000):
    """Wait until ``text`` is visible and the script run has finished.

    On a timeout the page is saved under test-artifacts/ for a look.
    """
    try:
        pg.get_by_text(text, exact=False).first.wait_for(timeout=timeout)
        wait_for_app(pg, timeout)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"timeout-{re.sub(r'[^A-Za-z0-9]+', '_', text)[:40]}.png"))
        raise


def _no_exceptions(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in pg.inner_text("body")


def _expect_galleries(pg, k: int) -> None:
    """Both galleries show ``k`` training images each, inline (no /media request per image),
    each decoded and with its alt text."""
    from playwright.sync_api import expect

    for kind in ("p", "o"):
        imgs = pg.locator(f'.st-key-gallery_{kind} img')
        expect(imgs).to_have_count(k, timeout=30_000)
        pg.wait_for_function("(sel) => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                             arg=f'.st-key-gallery_{kind} img', timeout=30_000)
        for n in range(k):
            assert imgs.nth(n).get_attribute("src").startswith("data:image/png;base64,")
            assert re.fullmatch(r"Training example #\d+, label .+", imgs.nth(n).get_attribute("alt"))
        assert pg.locator(f'.st-key-gallery_{kind} [data-testid="stImage"]').count() == 0


def _nav(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()


def _screenshot(pg, path: Path) -> None:
    """The whole page (Streamlit scrolls inside its main container, so grow the viewport);
    only with TRACIN_SCREENSHOTS=1 (a plain test run changes no tracked file)."""
    if not screenshots_wanted():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    height = pg.evaluate(
        "() => Math.max(...['[data-testid=\"stMain\"]', '[data-testid=\"stAppViewContainer\"]',"
        " '[data-testid=\"stMainBlockContainer\"]'].map(s => document.querySelector(s))"
        ".filter(Boolean).map(e => e.scrollHeight), document.body.scrollHeight)")
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": int(min(max(height + 40, size["height"]), 3600))})
    pg.wait_for_timeout(600)
    pg.screenshot(path=str(path))
    pg.set_viewport_size(size)


@pytest.mark.browser
def test_browser_demo_opens_with_digits(page, warm_server):
    page.goto(warm_server.url)
    _settle(page, "#23 · ")
    page.get_by_text("Open another workspace").wait_for()
    wait_for_app(page)
    imgs = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    assert imgs.count() >= 24
    assert page.get_by_text("Active workspace:").count() == 1
    _no_exceptions(page)
    _screenshot(page, SCREENSHOTS / "workspace.png")


@pytest.mark.browser
def test_browser_every_page_via_sidebar(page, warm_server):
    page.goto(warm_server.url)
    _settle(page, "Open another workspace")
    page.get_by_role("link", name="Review →").click()  # the home page's next step
    page.locator("h1").filter(has_text="Review").first.wait_for(timeout=90_000)
    wait_for_app(page, 90_000)
    _no_exceptions(page)
    for title in ("Influence", "Review", "Evaluation", "Workspace"):
        _nav(page, title)
        page.locator("h1").filter(has_text=title).first.wait_for(timeout=90_000)
        page.wait_for_timeout(300)
        wait_for_app(page, 90_000)
        _no_exceptions(page)


@pytest.mark.browser
def test_browser_every_page_by_its_url(page, warm_server):
    """#13 item 8: each page opens by its name typed in the address bar, the first one
    (Workspace) too; "/" leads to the first page at its own URL, keeping the query."""
    from urllib.parse import parse_qs, urlparse

    for path, title in (("workspace", "Workspace"), ("influence", "Influence"), ("review", "Review"),
                        ("evaluation", "Evaluation")):
        page.goto(f"{warm_server.url}/{path}")
        page.locator('[data-testid="stMain"] h1').filter(has_text=title).first.wait_for(timeout=90_000)
        wait_for_app(page, 90_000)
        page.wait_for_timeout(300)
        assert page.get_by_text("Page not found").count() == 0, path
        assert urlparse(page.url).path == f"/{path}", page.url
        _no_exceptions(page)
    page.goto(f"{warm_server.url}/?reviewer=ann-by-link")
    page.locator('[data-testid="stMain"] h1').filter(has_text="Workspace").first.wait_for(timeout=90_000)
    wait_for_app(page)
    page.wait_for_function("() => window.location.pathname === '/workspace'")
    assert parse_qs(urlparse(page.url).query).get("reviewer") == ["ann-by-link"], page.url
    assert page.get_by_text("Page not found").count() == 0


@pytest.mark.browser
def test_browser_influence_pick_shows_galleries(page, warm_server):
    page.goto(warm_server.url + "/influence")
    _settle(page, "Pick a test image above")
    page.locator(".st-key-pick_3 button").click()
    _settle(page, "Opponents of test #3")
    page.get_by_text("Proponents of test #3").wait_for()
    _expect_galleries(page, 8)
    assert "test=3" in page.url
    _no_exceptions(page)
    _screenshot(page, SCREENSHOTS / "influence.png")


    page.get_by_role("button", name="details").first.click()
    dialog = page.locator('[data-testid="stDialog"]')
    dialog.get_by_text("Self-influence rank").wait_for()
    assert dialog.get_by_text(re.compile(r"Training example #\d+")).count() == 1
    page.keyboard.press("Escape")

    page.reload()  # the URL keeps the selected test image
    _settle(page, "Opponents of test #3")
    _no_exceptions(page)

    # an uploaded picture: a dark digit on white, larger than 8x8 (inverted and resized)
    import io

    import numpy as np
    from PIL import Image

    from tracin_core.audit.datasets import load_dataset

    digit = load_dataset("digits", split="test").image(3)
    buf = io.BytesIO()
    Image.fromarray(255 - np.kron(digit, np.ones((8, 8), dtype=np.uint8))).save(buf, format="PNG")
    page.get_by_role("tab", name="Upload an image").click()
    page.locator('[data-testid="stFileUploader"]').filter(has_text="Test image").locator('input[type="file"]') \
        .set_input_files(files=[{"name": "my-digit.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    _settle(page, "Opponents of uploaded my-digit.png")
    _expect_galleries(page, 8)
    assert page.get_by_role("checkbox", name="Invert colours").is_checked()
    page.get_by_text(re.compile(r"Predicted: 7 with probability")).first.wait_for()
    assert "test=" not in page.url
    _no_exceptions(page)


IN_VIEW_JS = """(sel) => { const el = document.querySelector(sel); if (!el) return false;
  const r = el.getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }"""


@pytest.mark.browser
def test_browser_galleries_in_view_after_pick_at_1280x720(browser, warm_server):
    """#13 item 8: on a 1280x720 screen the first row of the proponents' gallery is in view
    after each Pick (and after "By index"), without scrolling by hand."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    try:
        pg.goto(warm_server.url + "/influence")
        _settle(pg, "Pick a test image above")
        first_image = '.st-key-gallery_p img'
        for i in (3, 12):
            pg.locator(f".st-key-pick_{i} button").click()  # Playwright scrolls up to the picker
            _settle(pg, f"Opponents of test #{i}")
            _expect_galleries(pg, 8)
            pg.wait_for_function(IN_VIEW_JS, arg=first_image, timeout=10_000)
            head = pg.locator(".st-key-gallery_p").bounding_box()
            image = pg.locator(first_image).first.bounding_box()
            assert 0 <= head["y"] < 720 and image["y"] + image["height"] <= 720, (head, image)
            assert pg.get_by_text(f"Proponents of test #{i}").is_visible()
        pg.get_by_role("tab", name="By index").click()
        pg.locator(".st-key-inf_index_input input").fill("11")
        pg.locator(".st-key-inf_index_go button").click()
        _settle(pg, "Opponents of test #11")
        pg.wait_for_function(IN_VIEW_JS, arg=first_image, timeout=10_000)
        _no_exceptions(pg)
    finally:
        ctx.close()


@pytest.mark.browser
def test_browser_corrupt_checkpoint_is_reported(page, warm_server, tmp_path):
    from tracin_core.audit.models import DigitsCNN

    four_classes = tmp_path / "four-classes.pt"  # right layer names, wrong shapes for 10 digits
    torch.save(DigitsCNN(num_classes=4).state_dict(), four_classes)
    page.goto(warm_server.url)
    _settle(page, "Open another workspace")
    page.get_by_role("tab", name="Build one here").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Checkpoints")
    uploader.locator('input[type="file"]').set_input_files(
        files=[{"name": "bad.pt", "mimeType": "application/octet-stream", "buffer": os.urandom(4096)},
               {"name": four_classes.name, "mimeType": "application/octet-stream",
                "buffer": four_classes.read_bytes()}])
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="bad.pt")
    alert.first.wait_for(timeout=60_000)
    assert "Cannot use bad.pt" in alert.first.inner_text() and "not a checkpoint" in alert.first.inner_text()
    page.get_by_text("parameter names match digits_cnn").wait_for()
    wait_for_app(page)
    _no_exceptions(page)

    page.locator(".st-key-open_build button").click()  # the valid file does not fit 10 classes
    fit = page.locator('[data-testid="stAlert"]').filter(has_text="four-classes.pt")
    fit.first.wait_for(timeout=60_000)
    assert "shape mismatch" in fit.first.inner_text() and "fc2.weight" in fit.first.inner_text()
    wait_for_app(page)
    assert page.get_by_text("Active workspace:").first.inner_text().endswith("digits-demo")
    _no_exceptions(page)
    _nav(page, "Influence")  # the app keeps working
    _settle(page, "Pick a test image above")
    assert page.get_by_role("button", name="Pick", exact=True).count() == 40
    _no_exceptions(page)


@pytest.mark.browser
def test_browser_build_workspace_from_uploaded_checkpoints(page, warm_server, tmp_path):
    from tracin_core.audit.models import DigitsCNN

    files = []
    for n, seed in ((1, 1), (2, 2)):
        torch.manual_seed(seed)
        state = DigitsCNN(num_classes=10).state_dict()
        obj = state if n == 1 else {"model_state_dict": state, "learning_rate": 0.5, "epoch": 2}
        path = tmp_path / f"upload-{n}.pt"
        torch.save(obj, path)
        files.append(str(path))

    page.goto(warm_server.url)
    _settle(page, "Open another workspace")
    page.get_by_role("tab", name="Build one here").click()
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="Checkpoints")
    uploader.locator('input[type="file"]').set_input_files(files)
    page.get_by_text("Learning rates").wait_for(timeout=60_000)
    wait_for_app(page)
    # the architecture is preselected from the checkpoints' parameter names
    page.get_by_text("parameter names match digits_cnn").wait_for()
    assert page.get_by_role("combobox", name="Architecture").input_value().startswith("digits_cnn")
    page.locator(".st-key-open_build button").click()
    _settle(page, "Active workspace: custom-digits_cnn")
    cells = page.locator('.st-key-active_checkpoints [role="gridcell"]')
    deadline = time.monotonic() + 30
    texts: list[str] = []
    while time.monotonic() < deadline:  # the grid is a canvas: its cells are hidden, not absent
        texts = cells.all_text_contents()
        if "upload-2.pt" in texts:
            break
        page.wait_for_timeout(250)
    assert "upload-1.pt" in texts and "upload-2.pt" in texts
    assert "stored in the checkpoint" in texts and "default (none stored)" in texts, texts
    _no_exceptions(page)

    _nav(page, "Influence")
    _settle(page, "Pick a test image above")
    page.locator(".st-key-pick_0 button").click()
    _settle(page, "Opponents of test #0")
    _expect_galleries(page, 8)
    _no_exceptions(page)


def test_every_page_offers_the_way_back_when_the_pass_fails(tmp_path, monkeypatch):
    """A workspace that opens but whose training pass fails (here: an unreadable image,
    simulated) says so in words on every page that needs the pass, and each offers the way
    back to the demo, which then opens (#13 item 1)."""
    from streamlit.testing.v1 import AppTest

    from tracin_core.audit.workspace import Workspace

    real = Workspace.precompute

    def failing(self, *args, **kwargs):
        if self.name == "digits-demo-copy":
            raise ValueError("image 'train/3/bad.png' cannot be read: not an image file")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "precompute", failing)
    listed = tmp_path / "listed"
    listed.mkdir()
    demo = REPO / "assets" / "demo"
    text = (demo / "workspace.toml").read_text().replace('name = "digits-demo"', 'name = "digits-demo-copy"')
    text = text.replace('paths = "checkpoint-*.pt"', f'paths = "{demo}/checkpoint-*.pt"')
    text = text.replace('labels_override = "labels_override.csv"', f'labels_override = "{demo}/labels_override.csv"')
    text = text.replace('ground_truth = "labels.csv"', f'ground_truth = "{demo}/labels.csv"')
    (listed / "copy.toml").write_text(text)
    config = write_server_config(listed / "tracin_audit.toml", workspaces={"copy": listed / "copy.toml"})
    with isolated_app_cache(tmp_path / "cache", config=config):
        for page in ("pages/influence.py", "pages/review.py", "pages/evaluation.py"):
            at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120)
            at.query_params["workspace"] = "copy"
            at.run()
            at.switch_page(page)
            at.run()
            assert not at.exception, (page, [e.value for e in at.exception])
            errors = [e.value for e in at.error]
            assert any("digits-demo-copy" in e and "train/3/bad.png" in e for e in errors), (page, errors)
            assert not any("Traceback" in e or str(tmp_path) in e for e in errors)
            links = [e.proto.label for e in at.get("page_link")]
            assert "Open another workspace →" in links  # local mode: every visitor is admin
            at.button(key="way_back_demo").click().run()
            assert not at.exception and not at.error, (page, [e.value for e in at.error])
            assert at.session_state["ws_spec"] == {"kind": "demo"}


def _card_indices(at) -> list[int]:
    """Training indices of every gallery card, in page order (any score format)."""
    return [int(m.group(3)) for h in at.get("html") for m in [CARD.search(h.proto.body)] if m]


def test_misclassified_image_explains_truth_and_prediction_side_by_side(app_cache):
    """#13 item 4: for a misclassified test image the page says which label the scores
    explain and shows the true label's and the prediction's galleries side by side; either
    alone on request. They are the engine's results for each label."""
    from pages.common import DEMO_SPEC, _load_workspace, spec_key

    ws = _load_workspace(spec_key(DEMO_SPEC))
    preds = ws.predictions("test")
    wrong = preds.loc[~preds["correct"]].iloc[0]
    i, true, predicted = int(wrong["index"]), int(wrong["label"]), int(wrong["predicted"])
    at = _app(app_cache, "pages/influence.py", query={"test": str(i)})
    assert not at.error, [e.value for e in at.error]
    heads = [s.value for s in at.subheader]
    assert heads == [f"Proponents of test #{i} · true label {true}", f"Opponents of test #{i} · true label {true}",
                     f"Proponents of test #{i} · prediction {predicted}",
                     f"Opponents of test #{i} · prediction {predicted}"]
    assert "Scores explain the true label (left) and the prediction (right)" in _texts(at)
    by_truth = ws.influence(i, k=8, label=true)
    by_pred = ws.influence(i, k=8, label=predicted)
    assert by_truth.proponents["index"].tolist() != by_pred.proponents["index"].tolist()
    shown = _card_indices(at)
    assert shown == (by_truth.proponents["index"].tolist() + by_truth.opponents["index"].tolist()
                     + by_pred.proponents["index"].tolist() + by_pred.opponents["index"].tolist())
    at.segmented_control(key="inf_explain").set_value("The prediction").run()
    assert [s.value for s in at.subheader] == [f"Proponents of test #{i}", f"Opponents of test #{i}"]
    assert f"Scores explain the prediction **{predicted}**" in _texts(at)
    shown = _card_indices(at)
    assert shown == by_pred.proponents["index"].tolist() + by_pred.opponents["index"].tolist()
    # a correctly classified image: one explanation, the true label, no choice offered
    right = int(preds.loc[preds["correct"]].iloc[0]["index"])
    at = _app(app_cache, "pages/influence.py", query={"test": str(right)})
    assert len(at.subheader) == 2 and not at.get("segmented_control")


def test_gallery_images_are_inline_with_alt_text(app_cache):
    """#12: each gallery and picker image travels inline with the page (a PNG data URI in
    one HTML element: no media file registered per run, no /media request per image) and
    keeps its alt text; the PNG holds the image's own pixels, in the cards' order."""
    import base64
    import html
    import io

    import numpy as np
    from PIL import Image

    from pages.common import DEMO_SPEC, _load_workspace, spec_key

    ws = _load_workspace(spec_key(DEMO_SPEC))
    at = _app(app_cache, "pages/influence.py", query={"test": "5"})
    pat = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="Training example #(\d+), label ([^"]+)"')
    found = [m for h in at.get("html") for m in [pat.match(h.proto.body)] if m]
    cards = _card_indices(at)
    assert len(cards) == 16 and [int(m.group(2)) for m in found] == cards
    for m in found:
        i = int(m.group(2))
        assert html.unescape(m.group(3)) == ws.classes[int(ws.train.labels[i])]
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))
        assert np.array_equal(pixels, np.asarray(ws.train.image(i), dtype=np.uint8))
    # the picked test image, inline too (no st.image: no media file, no lazy image component)
    pat = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="Test image #(\d+)" width="(\d+)"')
    found = [m for h in at.get("html") for m in [pat.match(h.proto.body)] if m]
    big = [m for m in found if m.group(3) == "224"]
    assert [int(m.group(2)) for m in big] == [5]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(big[0].group(1)))))
    assert np.array_equal(pixels, np.asarray(ws.test.image(5), dtype=np.uint8))
    # the picker: one inline image per Pick button, the test image it picks
    found = [m for m in found if m.group(3) == "64"]
    picks = [int(b.key[5:]) for b in at.button if (b.key or "").startswith("pick_")]
    assert len(picks) == 40 and [int(m.group(2)) for m in found] == picks
    for m in found:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))
        assert np.array_equal(pixels, np.asarray(ws.test.image(int(m.group(2))), dtype=np.uint8))
