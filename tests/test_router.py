"""The one Streamlit workaround (pages/common.ensure_router): it relies on Streamlit
internals, so these tests fail when Streamlit changes them, and the workaround must then
be revisited (or dropped, if Streamlit stops reading ``pages/`` next to an entrypoint
that calls ``st.navigation``)."""
from __future__ import annotations

import inspect

import pytest


@pytest.fixture
def pages_manager():
    from streamlit.runtime.pages_manager import PagesManager

    saved = PagesManager.uses_pages_directory
    yield PagesManager
    PagesManager.uses_pages_directory = saved


def test_a_pages_folder_still_starts_the_legacy_mode(tmp_path, pages_manager):
    """Streamlit still switches to its legacy multipage mode when the entrypoint has a
    ``pages/`` folder beside it (why the workaround exists), through the class flag the
    workaround clears."""
    (tmp_path / "app.py").write_text("")
    pages_manager.uses_pages_directory = None
    pages_manager(str(tmp_path / "app.py"))
    assert pages_manager.uses_pages_directory is False  # no pages/ folder: the new mode
    (tmp_path / "pages").mkdir()
    pages_manager.uses_pages_directory = None
    pages_manager(str(tmp_path / "app.py"))
    assert pages_manager.uses_pages_directory is True  # pages/ beside it: legacy mode


def test_the_script_runner_and_st_navigation_use_that_flag():
    """The script runner picks the legacy mode by that flag, and ``st.navigation`` clears
    it: what ensure_router imitates before it reruns a session through app.py."""
    from streamlit.commands import navigation
    from streamlit.runtime.scriptrunner import script_runner

    assert "PagesManager.uses_pages_directory" in inspect.getsource(script_runner.ScriptRunner)
    assert "PagesManager.uses_pages_directory = False" in inspect.getsource(navigation)


def test_every_page_goes_through_the_router_first():
    """Each page script calls common.ensure_router() before anything else it renders."""
    from tests.conftest import REPO

    for name in ("workspace.py", "influence.py", "review.py", "evaluation.py"):
        text = (REPO / "pages" / name).read_text()
        assert "common.ensure_router(" in text, name
        first_call = min(text.find(f"common.{fn}(") for fn in ("require", "current_workspace")
                         if f"common.{fn}(" in text)
        assert text.find("common.ensure_router(") < first_call, name


def test_the_server_imports_the_engine_at_start_before_any_visit(tmp_path):
    """``streamlit run app.py`` serves ``app.py``'s ``st.App``: its lifespan imports torch and
    the pages' shared module when the server starts, so the first visitor does not wait for
    them (2-3 s). No browser visits here: the log line comes from the server alone."""
    import time

    from streamlit.web.server.app_discovery import discover_asgi_app

    from tests.conftest import REPO, AppServer

    found = discover_asgi_app(REPO / "app.py")
    assert found.is_asgi_app and found.import_string == "app:app"
    log = tmp_path / "streamlit.log"
    server = AppServer(tmp_path, log)
    try:
        deadline = time.monotonic() + 180
        while "engine imported at server start" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "engine imported at server start" in log.read_text(), log.read_text()[-2000:]
    finally:
        server.stop()
