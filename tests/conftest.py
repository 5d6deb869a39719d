"""Shared fixtures: a running app server (isolated cache) and a headless Chromium.

Browser tests drive Debian's /usr/bin/chromium through Playwright's Python package
(``executable_path``); nothing is downloaded (never ``playwright install``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOTS = REPO / "docs" / "screenshots"


def screenshots_wanted() -> bool:
    """The README's screenshots (tracked files under docs/screenshots/) are rewritten by
    the browser tests only when asked for: ``TRACIN_SCREENSHOTS=1 python -m pytest -m browser``."""
    return os.environ.get("TRACIN_SCREENSHOTS") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``streamlit run app.py`` on a free loopback port with its own cache folder."""

    def __init__(self, cache_dir: Path, log_path: Path, config: Path | None = None,
                 secrets: str | None = None, port: int | None = None) -> None:
        """``config``: the server config (default: an empty one, local mode); ``secrets``:
        the text of a secrets file (e.g. an ``[auth]`` section for sign-in)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cache_dir = cache_dir
        self.review_db = cache_dir / "reviews.sqlite"
        if config is None:
            config = write_server_config(cache_dir / "tracin_audit.toml")
        secrets_file = cache_dir / "secrets.toml"  # never the repo's .streamlit/secrets.toml
        secrets_file.write_text(secrets or "")
        env = dict(os.environ, TRACIN_CACHE=str(cache_dir), TRACIN_REVIEW_DB=str(self.review_db),
                   PYTHONPATH=str(REPO), TRACIN_AUDIT_CONFIG=str(config))
        self.log = open(log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--secrets.files", str(secrets_file)],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited early; see {log_path}")
            try:
                with urllib.request.urlopen(self.url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"streamlit did not become healthy in 90 s; see {log_path}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest installs the script it runs as ``sys.modules["__main__"]`` and leaves it there;
    a later ``multiprocessing`` spawn would then re-run that script in the child. Put the
    real ``__main__`` back after every test."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    cache = tmp_path_factory.mktemp("app_cache")
    server = AppServer(cache, cache / "streamlit.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), as .ci/run does")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, app_server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()


def wait_for_app(pg, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished running the script (no 'Running…' widget)."""
    pg.wait_for_selector('[data-testid="stApp"]', timeout=timeout)
    pg.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout
    )


def write_server_config(path: Path, *, workspaces: dict | None = None, data_roots: dict | None = None,
                        users: dict | None = None, mode: str = "auto", default_role: str = "none",
                        limits: dict | None = None, factory_modules: list | None = None) -> Path:
    """A ``tracin_audit.toml`` for a test server (values are written as TOML strings/numbers)."""
    import json

    def table(name: str, values: dict | None) -> list[str]:
        return [f"[{name}]"] + [f"{json.dumps(str(k))} = {json.dumps(v if isinstance(v, (int, float)) else str(v))}"
                                for k, v in (values or {}).items()]

    lines = table("workspaces", workspaces) + table("data_roots", data_roots) + table("limits", limits)
    lines += ["[factories]", f"modules = {json.dumps(factory_modules or [])}"]
    lines += ["[auth]", f"mode = {json.dumps(mode)}", f"default_role = {json.dumps(default_role)}"]
    lines += table("auth.users", users)
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def isolated_app_cache(cache: Path, config: Path | None = None, **env: str) -> Iterator[Path]:
    """Point the app (its environment variables) at ``cache``.

    ``config``: the server config file the app reads (``TRACIN_AUDIT_CONFIG``); default:
    an empty one (the demo only, local mode), so a developer's own file never leaks in.
    """
    mp = pytest.MonkeyPatch()
    if config is None:
        config = write_server_config(cache / "tracin_audit.toml")
    mp.setenv("TRACIN_AUDIT_CONFIG", str(config))
    mp.setenv("TRACIN_CACHE", str(cache))
    mp.setenv("TRACIN_REVIEW_DB", str(cache / "reviews.sqlite"))
    for key, value in env.items():
        mp.setenv(key, value)
    import pages.common as common  # the paths are read at call time (tracin_core.settings)
    common._load_workspace.clear()
    common._server_config.clear()
    try:
        yield cache
    finally:
        common._load_workspace.clear()
        common._server_config.clear()
        mp.undo()
