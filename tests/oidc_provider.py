"""A real OpenID Connect provider on loopback for tests of ``st.login`` / ``st.user``.

``tests/oidc/server.js`` (npm's ``oauth2-mock-server``, pinned in
``tests/oidc/package-lock.json``; install with ``npm ci --prefix tests/oidc``) runs on
127.0.0.1 and issues signed id tokens carrying ``sub``, ``email``, ``email_verified``
and ``name``. Which user signs in is chosen per Playwright browser context with
:meth:`OIDCProvider.sign_in_as` (a ``mock_user`` cookie on the provider's origin), so
several users can be signed in at once against one provider.

Use::

    from tests.oidc_provider import oidc_provider, streamlit_with_auth  # noqa: F401 (fixture)

    @pytest.mark.browser
    def test_x(oidc_provider, browser, tmp_path):
        with streamlit_with_auth(oidc_provider, "app.py", tmp_path) as app:
            ctx = browser.new_context()
            oidc_provider.sign_in_as(ctx, "alice@example.com")
            page = ctx.new_page(); page.goto(app.url)  # then click the app's st.login() button

Importing the fixture into a test module registers it for that module (one provider
per importing module). To share one provider across modules, add the same import line
to ``tests/conftest.py``. Outside pytest fixtures use :func:`running_oidc_provider`.

Streamlit gets the ``[auth]`` secrets through ``--secrets.files <file>`` (replaces the
default list, so a developer's ``.streamlit/secrets.toml`` is never read);
``STREAMLIT_SECRETS_FILES=<file>`` works too. ``redirect_uri`` must be
``http://127.0.0.1:<port>/oauth2callback`` with the same host the browser uses.
"""
from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parent.parent
OIDC_DIR = REPO / "tests" / "oidc"
SERVER_JS = OIDC_DIR / "server.js"
INSTALL_HINT = "npm ci --prefix tests/oidc"
READY_PREFIX = "OIDC_MOCK_READY "
USER_COOKIE = "mock_user"
NAME_COOKIE = "mock_user_name"
DEFAULT_CLIENT_ID = "tracin-audit-test"
DEFAULT_CLIENT_SECRET = "tracin-audit-test-secret"
MIN_NODE = (20, 19)  # oauth2-mock-server 8.2.3's "engines"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass
class OIDCProvider:
    """A running provider. ``issuer`` is ``http://127.0.0.1:<port>``."""

    issuer: str
    client_id: str
    client_secret: str
    log_path: Path
    cookie_secret: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def port(self) -> int:
        return int(self.issuer.rsplit(":", 1)[1])

    @property
    def server_metadata_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def sign_in_as(self, context: Any, email: str, name: str | None = None) -> None:
        """Make the next sign-ins from Playwright ``BrowserContext`` ``context`` be ``email``.

        Sets the ``mock_user`` cookie (and ``mock_user_name`` when ``name`` is given;
        the default name is the capitalised local part, ``alice`` -> ``Alice``) on the
        provider's origin. Call it again to switch users within a context.
        Note: cookies ignore ports, so these cookies also reach other 127.0.0.1 servers
        (Streamlit ignores them).
        """
        cookies = [{"name": USER_COOKIE, "value": quote(email, safe=""), "url": self.issuer}]
        if name is not None:
            cookies.append({"name": NAME_COOKIE, "value": quote(name, safe=""), "url": self.issuer})
        else:
            context.clear_cookies(name=NAME_COOKIE)
        context.add_cookies(cookies)

    def secrets_toml(self, redirect_uri: str) -> str:
        """The ``[auth]`` section for Streamlit (default provider: plain ``st.login()``).

        ``redirect_uri`` is ``http://127.0.0.1:<streamlit port>/oauth2callback``
        (Streamlit also accepts a literal ``{port}`` placeholder there).
        """
        lines = [
            "[auth]",
            f"redirect_uri = {_toml_str(redirect_uri)}",
            f"cookie_secret = {_toml_str(self.cookie_secret)}",
            f"client_id = {_toml_str(self.client_id)}",
            f"client_secret = {_toml_str(self.client_secret)}",
            f"server_metadata_url = {_toml_str(self.server_metadata_url)}",
        ]
        return "\n".join(lines) + "\n"

    def write_secrets(self, path: Path, redirect_uri: str) -> Path:
        """Write :meth:`secrets_toml` to ``path`` (parents created); returns ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.secrets_toml(redirect_uri), encoding="utf-8")
        return path


def _read_ready_line(proc: subprocess.Popen, timeout: float) -> str:
    """Read stdout until the ready line, at most ``timeout`` seconds; '' on failure."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, min(0.5, deadline - time.monotonic()))):
                if proc.poll() is not None:
                    return ""
                continue
            chunk = os.read(fd, 4096)
            if not chunk:  # EOF: the process exited
                return ""
            buf += chunk
            for line in buf.decode("utf-8", "replace").splitlines():
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX):].strip()
    return ""


def _stop(proc: subprocess.Popen, timeout: float = 5) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


@contextmanager
def running_oidc_provider(
    log_path: Path | None = None,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    startup_timeout: float = 20,
) -> Iterator[OIDCProvider]:
    """Start ``tests/oidc/server.js`` on a free 127.0.0.1 port; stop it on exit.

    Skips (``pytest.skip``) when ``node`` is not installed, except under CI (``$CI``); fails when node is older
    than 20.19, or with the install command when ``tests/oidc/node_modules`` is missing. The provider
    rejects other client credentials at /token. Its stderr goes to ``log_path``
    (default: a temporary file).
    """
    node = shutil.which("node")
    if node is None:
        message = "node is not installed: the OIDC test provider (tests/oidc/server.js) needs Node.js >= 20.19"
        if os.environ.get("CI"):  # CI has node: its absence there is a failure, never a skip
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    parts = tuple(int(x) for x in version.lstrip("v").split(".")[:2] if x.isdigit())
    if parts < MIN_NODE:
        pytest.fail(f"node {version or '?'} is too old for the OIDC test provider: it needs >= "
                    f"{MIN_NODE[0]}.{MIN_NODE[1]} (oauth2-mock-server 8.2.3)", pytrace=False)
    if not (OIDC_DIR / "node_modules" / "oauth2-mock-server" / "package.json").is_file():
        pytest.fail(f"the OIDC test provider's npm packages are missing; run: {INSTALL_HINT}", pytrace=False)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="oidc-provider-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OIDC_MOCK_CLIENT_ID=client_id, OIDC_MOCK_CLIENT_SECRET=client_secret)
    with open(log_path, "wb") as log:
        # port 0: the provider binds a free port itself (no race) and reports its issuer;
        # --watch-stdin: it exits when this process goes away, even on SIGKILL
        proc = subprocess.Popen(
            [node, str(SERVER_JS), "0", "--watch-stdin"],
            cwd=OIDC_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
        )
        try:
            issuer = _read_ready_line(proc, startup_timeout)
            if not issuer:
                _stop(proc)
                detail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(
                    f"OIDC test provider did not start within {startup_timeout:g} s "
                    f"(exit code {proc.returncode}); log {log_path}:\n{detail}\n"
                    f"(if packages are broken, run: {INSTALL_HINT})",
                    pytrace=False,
                )
            yield OIDCProvider(issuer=issuer, client_id=client_id, client_secret=client_secret, log_path=log_path)
        finally:
            _stop(proc)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory) -> Iterator[OIDCProvider]:
    """A provider for the whole session (see the module docstring to register it)."""
    log_dir = tmp_path_factory.mktemp("oidc_provider")
    with running_oidc_provider(log_dir / "provider.log") as provider:
        yield provider


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class StreamlitServer:
    url: str  # http://127.0.0.1:<port>
    port: int
    secrets_file: Path
    log_path: Path
    proc: subprocess.Popen

    @property
    def redirect_uri(self) -> str:
        return f"{self.url}/oauth2callback"


@contextmanager
def streamlit_with_auth(
    provider: OIDCProvider,
    script: str | Path,
    work_dir: Path,
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    startup_timeout: float = 60,
) -> Iterator[StreamlitServer]:
    """``streamlit run <script>`` on a free 127.0.0.1 port, signed in through ``provider``.

    Writes ``work_dir/secrets.toml`` (:meth:`OIDCProvider.secrets_toml`) and passes it
    with ``--secrets.files``; runs from the repo root so ``.streamlit/config.toml``
    applies, but the repo's ``.streamlit/secrets.toml`` is not read. The process is
    stopped on exit, also when the body raises. ``env`` is added to the environment.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    secrets_file = provider.write_secrets(work_dir / "secrets.toml", f"{url}/oauth2callback")
    log_path = work_dir / "streamlit.log"
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script),
        "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
        "--secrets.files", str(secrets_file), *extra_args,
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, url, startup_timeout, log_path)
            yield StreamlitServer(url=url, port=port, secrets_file=secrets_file, log_path=log_path, proc=proc)
        finally:
            _stop(proc, timeout=15)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early (code {proc.returncode}); see {log_path}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"streamlit did not become healthy in {timeout:g} s; see {log_path}")
