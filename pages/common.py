"""Shared UI helpers for the pages: the active workspace, the review store, images.

UI only: every score comes from ``tracin_core``. Heavy objects (workspaces, review
stores) live in ``st.cache_resource`` so every session on the server shares them;
they are keyed by content hashes (a changed checkpoint or dataset is a new key).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import streamlit as st
from PIL import Image

from tracin_core import ReviewStore, Workspace
from tracin_core.audit import settings
from tracin_core.engine.checkpoints import CheckpointError
from tracin_core.audit.server_config import (
    ConfigError, ServerConfig, allowed, load_server_config,
)
from tracin_core.audit.workspace import WorkspaceError
from tracin_core.audit.workspace_config import WorkspaceConfig

DEMO_SPEC = {"kind": "demo"}
DEMO_NAME = "demo"
FASHION_SPEC = {"kind": "fashion"}
#: built-in workspaces by the name a ?workspace= link uses
BUILTIN_SPECS = {"demo": DEMO_SPEC, "fashion": FASHION_SPEC}
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()!|<>~&$:])")  # inline markdown, HTML, st directives
_MD_BLOCK_START = re.compile(r"^(\d*)([#+=.)-])")  # a heading, list or rule at the start


def esc(value: Any) -> str:
    """``value`` as literal text inside Streamlit markdown (never markdown, never HTML).

    Every user-supplied string (reviewer and file names, class names from folders,
    workspace names, error messages quoting them) goes through this before it is put
    into ``st.markdown``, ``st.error``, ``st.caption`` and the like.
    """
    text = " ".join(str(value).split())  # no line breaks: a name cannot start a block
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_BLOCK_START.sub(r"\1\\\2", text)


def hide_server_paths(text: str) -> str:
    """``text`` with the app's own folders (cache, uploads, zip extraction) shortened."""
    import tempfile

    for folder, shown in ((settings.upload_dir(), "<upload>"), (settings.cache_dir(), "<cache>"),
                          (Path(tempfile.gettempdir()), "<tmp>")):
        text = text.replace(str(folder), shown)
    return text


def public_message(exc: BaseException) -> str:
    """An exception's message for the page: server folders hidden, shown as plain text."""
    return esc(hide_server_paths(str(exc)))


# ------------------------------------------------------------------ server config, identity


@st.cache_resource(show_spinner=False)
def _server_config(path_key: str) -> ServerConfig:
    cfg = load_server_config()
    cfg.check_upload_dir(settings.upload_dir())
    return cfg


def server_config() -> ServerConfig:
    """The server config (``tracin_audit.toml``), read once; a bad file stops every page."""
    from tracin_core.audit.server_config import default_config_path

    try:
        return _server_config(str(default_config_path()))
    except ConfigError as exc:
        st.error(f"The server config is wrong, so nothing is served: {esc(exc)}")
        st.stop()
        raise  # pragma: no cover - st.stop raises


def auth_configured() -> bool:
    """Does ``.streamlit/secrets.toml`` hold an ``[auth]`` section for ``st.login``?"""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def sign_in_mode(cfg: ServerConfig) -> str:
    """'oidc' (everyone signs in) or 'local' (no sign-in; the server binds 127.0.0.1)."""
    if cfg.auth_mode == "auto":
        return "oidc" if auth_configured() else "local"
    return cfg.auth_mode


@dataclass(frozen=True)
class Identity:
    """Who this session is: ``name`` is what review events record."""

    name: str
    role: Optional[str]
    mode: str  # "oidc" | "local"

    def can(self, action: str) -> bool:
        return allowed(self.role, action)


LOCAL_ROLE = "admin"


def _local_name() -> str:
    """Local mode: a name of this browser session's own (kept in the URL across reloads)."""
    name = st.session_state.get("_local_reviewer")
    if name is None:
        from_url = str(st.query_params.get("reviewer", "")).strip()
        name = from_url[:80] if from_url else f"local-{secrets.token_hex(3)}"
        st.session_state["_local_reviewer"] = name
    return name


def current_identity() -> Identity | str:
    """The session's identity now, or why there is none (renders nothing; safe in callbacks)."""
    cfg = server_config()
    if sign_in_mode(cfg) == "local":
        return Identity(name=_local_name(), role=LOCAL_ROLE, mode="local")
    if not auth_configured():
        return "no-auth"
    if not st.user.is_logged_in:
        return "signed-out"
    email, sub = st.user.get("email"), st.user.get("sub")
    name = str(email or sub or "").strip()
    if not name:
        return "no-name"
    return Identity(name=name[:200], role=cfg.role_of(email, sub), mode="oidc")


def identity() -> Identity:
    """The session's identity; stops the page with a sign-in screen when needed."""
    who = current_identity()
    if who == "no-auth":
        st.error("The server config asks for sign-in ([auth] mode = \"oidc\") but "
                 "`.streamlit/secrets.toml` has no `[auth]` section: see the README, "
                 "\"Deploying for a team\".")
        st.stop()
    if who == "signed-out":
        st.title("TracIn Audit")
        st.markdown("Sign in to review training labels and browse influential examples.")
        st.button("Sign in", key="sign_in", type="primary", on_click=st.login, icon=":material/login:")
        st.stop()
    if who == "no-name":
        st.error("The sign-in provider gave no e-mail and no subject for this account.")
        st.stop()
    assert isinstance(who, Identity)
    return who


def require(action: str, what: str) -> Identity:
    """Stop the page (with a message) unless the session may do ``action``."""
    who = identity()
    if not who.can(action):
        st.error(f"Your role ({esc(who.role or 'no access')}) cannot {what}. "
                 "Ask an admin of this server if you need it.", icon=":material/block:")
        st.stop()
    return who


def refuse(action: str, what: str, reviewer: Optional[str] = None) -> bool:
    """For widget callbacks: True (and a message for the next run) unless the session, as
    it is *now*, may do ``action`` (and, signed in, is ``reviewer``, when given).

    The identity is read again here rather than taken from the widget's arguments, so a
    widget rendered for another role or account changes nothing when replayed.
    """
    who = current_identity()
    if not isinstance(who, Identity):
        message = "You are not signed in"
    elif not who.can(action):
        message = f"Your role ({who.role or 'no access'}) cannot {what}"
    elif reviewer is not None and who.mode != "local" and reviewer != who.name:
        message = f"This page was shown to {reviewer}, not to {who.name}: reload it"
    else:
        return False
    st.session_state["_refused"] = message + "; nothing was changed."
    return True


def show_refusal() -> None:
    if "_refused" in st.session_state:
        st.error(esc(st.session_state.pop("_refused")), icon=":material/block:")


def spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_workspace(key: str) -> Workspace:
    spec = json.loads(key)
    kind = spec["kind"]
    if kind == "demo":
        return Workspace.demo(cache_dir=settings.store_cache_dir())
    if kind == "fashion":
        return Workspace.fashion(cache_dir=settings.store_cache_dir())
    cfg = server_config()
    if kind == "listed":  # a name from the server config, never a path from a browser
        return Workspace.from_toml(cfg.workspace_path(spec["name"]), cache_dir=settings.store_cache_dir(),
                                   check_factory=cfg.check_factory)
    if kind == "config":  # built on the Workspace page from checked uploads and data roots
        config = WorkspaceConfig.from_dict(spec["config"])
        return Workspace.from_config(config, cache_dir=settings.store_cache_dir(),
                                     dataset_options=_zip_limits(cfg))
    raise WorkspaceError(f"unknown workspace kind {kind!r}")


def _zip_limits(cfg: ServerConfig) -> dict[str, int]:
    return {"max_zip_bytes": cfg.max_zip_bytes, "max_zip_files": cfg.max_zip_files}


def load_config_dataset(config: WorkspaceConfig, split: str):
    """A "Build one here" config's ``split`` (train/test) dataset, None when it has none.

    Its paths were checked against the data roots (or are the app's own uploads) when the
    config was made; zips are extracted under the server config's caps.
    """
    from tracin_core.audit.datasets import load_dataset

    spec = config.train if split == "train" else config.test
    if spec is None:
        return None
    extra = _zip_limits(server_config()) if spec.kind == "image_folder" else {}
    return load_dataset(spec.kind, **spec.load_arguments(), **extra)


def set_workspace(spec: dict[str, Any]) -> None:
    """Make ``spec`` the session's active workspace (and remember its *name* in the URL)."""
    st.session_state["ws_spec"] = spec
    if spec.get("kind") == "listed":
        st.query_params["workspace"] = spec["name"]
    elif spec.get("kind") == "fashion":
        st.query_params["workspace"] = "fashion"
    elif "workspace" in st.query_params:
        del st.query_params["workspace"]


def active_spec() -> dict[str, Any]:
    """The session's workspace: ``?workspace=NAME`` names a listed one (never a path)."""
    if "ws_spec" not in st.session_state:
        name = str(st.query_params.get("workspace", "") or "").strip()
        spec = dict(DEMO_SPEC)
        if name in BUILTIN_SPECS:
            spec = dict(BUILTIN_SPECS[name])
        elif name:
            if name in server_config().workspaces:
                spec = {"kind": "listed", "name": name}
            else:
                st.session_state["_ws_notice"] = (
                    f"No workspace named “{name[:80]}” is listed on this server; the demo is open instead.")
                del st.query_params["workspace"]
        st.session_state["ws_spec"] = spec
    return st.session_state["ws_spec"]


def workspace_notice() -> None:
    """Say once why a ``?workspace=`` link did not open what it named."""
    if "_ws_notice" in st.session_state:
        st.warning(esc(st.session_state.pop("_ws_notice")), icon=":material/link_off:")


def current_workspace(show_errors: bool = True) -> Optional[Workspace]:
    """The session's workspace, loaded once per server; None (with a message) on error."""
    spec = active_spec()
    try:
        with st.spinner("Opening the workspace…"):
            return _load_workspace(spec_key(spec))
    except (WorkspaceError, CheckpointError, ValueError, FileNotFoundError, OSError,
            PermissionError) as exc:
        if show_errors:
            st.error(f"Could not open the workspace: {esc(exc)}")
            way_back(spec)
        return None


def current_identity_can(action: str) -> bool:
    """Whether the session's identity may do ``action`` (renders nothing)."""
    who = current_identity()
    return isinstance(who, Identity) and who.can(action)


def way_back(spec: Optional[dict[str, Any]] = None) -> None:
    """After a workspace failed: a button back to the demo (any role: the demo is every
    session's default) and, for those who may open others, a link to the Workspace page."""
    spec = active_spec() if spec is None else spec
    with st.container(key="way_back"):
        if spec != DEMO_SPEC and st.button("Go back to the demo", key="way_back_demo", icon=":material/undo:"):
            set_workspace(dict(DEMO_SPEC))
            st.rerun()
        if current_identity_can("open_workspace") and current_identity_can(PAGE_ACTION["workspace"]):
            st.page_link(page_file("workspace.py"), label="Open another workspace →")


def ensure_store(ws: Workspace, method: str = "fast", **opts: Any) -> None:
    """Build the workspace's feature store for engine ``method`` (``opts``: its options,
    ``layers=[...]``, ``projection_dim=``) once, with a progress bar and counts."""
    if ws.store_ready(method, **opts):
        return
    text = (f"Computing {method} features (one pass over the training data)…" if opts
            else "Computing per-example features (one pass over the training data)…")
    bar = st.progress(0.0, text=text)
    total_n = len(ws.train)

    def progress(done: int, total: Optional[int]) -> None:
        total = total or total_n
        bar.progress(min(1.0, done / max(1, total)), text=f"Training pass: {done:,} / {total:,} examples")

    try:
        ws.ensure_store(method, progress=progress, **opts)
    except Exception as exc:  # noqa: BLE001 - shown in words, with the way back, never a traceback
        bar.empty()
        st.error(f"Computing the training features of “{esc(ws.name)}” failed: {type(exc).__name__}: "
                 f"{public_message(exc)}", icon=":material/error:")
        way_back()
        st.stop()
    bar.empty()


@st.cache_resource(show_spinner=False)
def _review_store(path: str, workspace: str, data_hash: str) -> ReviewStore:
    return ReviewStore(path, workspace=workspace, data_hash=data_hash)


def review_store(ws: Workspace) -> ReviewStore:
    db = settings.review_db()
    db.parent.mkdir(parents=True, exist_ok=True)
    return _review_store(str(db), ws.name, ws.data_hash)


def reviewer_name(who: Optional[Identity] = None) -> str:
    """The name review events record: the signed-in identity, never a text field.

    In local mode (no sign-in) each browser session starts with a name of its own
    (``local-xxxxxx``), kept in the URL so a reload keeps it, and may rename itself in
    the sidebar. Two sessions never share a name by default, so two browsers never get
    the same item from "my queue" nor overwrite each other's decisions.
    """
    who = who or identity()
    if who.mode != "local":
        return who.name
    current = _local_name()
    name = st.sidebar.text_input("Reviewer name (local mode)", value=current, key="reviewer_input",
                                 max_chars=80).strip()
    if name and name != current:
        st.session_state["_local_reviewer"] = name
        current = name
    if st.query_params.get("reviewer") != current:
        st.query_params["reviewer"] = current
    return current


def upscale(img: np.ndarray, size: int = 112) -> Image.Image:
    """Nearest-neighbour upscaling so 8x8 digits stay readable."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    scale = max(1, size // max(arr.shape[0], arr.shape[1]))
    return im.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def image_html(img: np.ndarray, size: int, alt: str, caption: str = "") -> str:
    """An ``<img>`` of ``img`` (H×W or H×W×C, values 0..255) inline as a PNG data URI, drawn
    ``size`` px on its longer side with nearest-neighbour scaling; ``alt`` is escaped.
    ``caption``: HTML drawn under the image in the same element (the caller escapes what it
    puts in it: :func:`caption_html`).

    For galleries: the image travels with the page's message, so no /media request per
    image and no media file registered per script run; with its caption, a card is one
    element instead of two (a pick redraws 56 fewer elements)."""
    import base64
    import html
    import io

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    h, w = arr.shape[:2]
    width, height = (size, max(1, round(size * h / w))) if w >= h else (max(1, round(size * w / h)), size)
    return (f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" '
            f'alt="{html.escape(alt, quote=True)}" width="{width}" height="{height}" '
            'style="image-rendering: pixelated; display: block">' + caption)


#: a card caption's secondary line: smaller and faded, readable on light and dark themes
_CAPTION_STYLE = "font-size: 0.8rem; line-height: 1.35; margin-top: 0.2rem"
_FADED_STYLE = "font-size: 0.8rem; opacity: 0.6"
#: signs drawn after a caption (misclassified, label differs from the prediction)
CROSS = '<span style="color: #ff2b2b" title="misclassified">✕</span>'
WARNING = '<span style="color: #e07b00" title="the model predicts another class">⚠</span>'


def caption_html(main: str, faded: str = "") -> str:
    """A card caption under :func:`image_html`: ``main`` and a smaller, faded ``faded`` line.
    Both are HTML: the caller escapes user text in them (``html.escape``)."""
    out = f'<div style="{_CAPTION_STYLE}">{main}</div>' if main else ""
    return out + (f'<div style="{_FADED_STYLE}">{faded}</div>' if faded else "")


def class_name(ws: Workspace, label: Optional[int]) -> str:
    if label is None:
        return "?"
    label = int(label)
    return ws.classes[label] if 0 <= label < len(ws.classes) else str(label)


def class_md(ws: Workspace, label: Optional[int]) -> str:
    """:func:`class_name` as literal text for markdown (class names may come from folder names)."""
    return esc(class_name(ws, label))


def class_html(ws: Workspace, label: Optional[int]) -> str:
    """:func:`class_name` as literal text inside HTML (class names may come from folder names)."""
    import html

    return html.escape(class_name(ws, label), quote=True)


def upload_too_large(f) -> Optional[str]:
    """A message when an uploaded file is over the server config's limit, else None."""
    limit = server_config().max_upload_bytes
    if getattr(f, "size", 0) > limit:
        return (f"**{esc(f.name)}** is {f.size / 2**20:.1f} MB, over this server's upload limit "
                f"of {limit / 2**20:.0f} MB; it was not read.")
    return None


def save_upload(data: bytes, suffix: str) -> Path:
    """Keep an uploaded file on the server under its content hash (``suffix``: ``.pt``, ``.zip`` …).

    The upload folder lies outside every data root and workspace folder (checked when the
    server config is read), and no browser input is ever resolved against it.
    """
    if suffix not in (".pt", ".pth", ".safetensors", ".zip"):
        raise ValueError(f"uploads are kept as .pt, .pth, .safetensors or .zip, not {suffix!r}")
    if len(data) > server_config().max_upload_bytes:
        raise ValueError("the upload is over this server's size limit")
    folder = settings.upload_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
    if not path.exists():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def sidebar_summary(ws: Optional[Workspace]) -> None:
    with st.sidebar:
        if ws is None:
            st.caption("No workspace open")
            return
        st.markdown(f"**Workspace:** {esc(ws.name)}")
        st.caption(
            f"{len(ws.train):,} training · {len(ws.test) if ws.test is not None else 0:,} test examples · "
            f"{len(ws.checkpoints)} checkpoints · id {ws.fingerprint[:8]}"
        )


# ------------------------------------------------------------------ review page helpers
# Read-only tables shared by every session, keyed by the workspace fingerprint (a changed
# checkpoint, dataset or label override is a new key). Callers must not modify them.


@st.cache_resource(show_spinner=False, max_entries=32)
def _mislabel_table(fingerprint: str, method: Optional[str], _ws: Workspace):
    return _ws.mislabel_scores(method)


def mislabel_table(ws: Workspace, method: Optional[str] = None):
    """``ws.mislabel_scores(method)`` (index, score, rank; sorted by rank), computed once."""
    return _mislabel_table(ws.fingerprint, method, ws)


@st.cache_resource(show_spinner=False, max_entries=8)
def _train_predictions(fingerprint: str, _ws: Workspace):
    return _ws.train_predictions()


def train_predictions(ws: Workspace):
    """``ws.train_predictions()`` (with the suggested labels), computed once."""
    return _train_predictions(ws.fingerprint, ws)


@st.cache_resource(show_spinner=False, max_entries=512)
def _train_proponents(fingerprint: str, item: int, label: int, k: int, _ws: Workspace):
    x, _ = _ws.train[item]
    result = _ws.influence(x, k=k + 1, label=label)
    props = result.proponents
    return props[props["index"] != item].head(k).reset_index(drop=True)


def train_proponents(ws: Workspace, item: int, label: int, k: int = 5):
    """Top-``k`` proponents (rank, index, score, label, predicted) of training example
    ``item`` with label ``label``, the example itself left out; cached per item."""
    return _train_proponents(ws.fingerprint, int(item), int(label), int(k), ws)


_ROUTER = threading.local()
_HERE = Path(__file__).resolve().parent
FAVICON = _HERE.parent / "assets" / "favicon.png"
#: (file, title, url path); "/" leads to the first one the role may open
PAGE_TABLE = [
    ("workspace.py", "Workspace", "workspace"),
    ("influence.py", "Influence", "influence"),
    ("review.py", "Review", "review"),
    ("evaluation.py", "Evaluation", "evaluation"),
]


def page_file(name: str) -> Path:
    """The path of page ``name`` (e.g. ``"review.py"``) as the router registered it (for ``st.page_link``)."""
    return _HERE / name


def page_config() -> None:
    st.set_page_config(page_title="TracIn Audit", page_icon=str(FAVICON), layout="wide")


#: page url path -> the action a role needs to see it (enforced again inside each page)
PAGE_ACTION = {"workspace": "view_workspace", "influence": "influence", "review": "review",
               "evaluation": "evaluation"}


def navigation():
    """The router (``st.navigation``) and the sidebar every page shares.

    Only the pages the session's role may open are registered, so another page's URL
    leads to the first allowed page; each page checks the role again itself.
    """
    who = identity()
    if who.role is None:
        st.title("TracIn Audit")
        st.error(f"The account {esc(who.name)} has no role on this server. Ask an admin to add it "
                 "under [auth.users] in the server config.", icon=":material/block:")
        st.button("Sign out", key="sign_out_norole", on_click=st.logout)
        st.stop()
    rows = [r for r in PAGE_TABLE if who.can(PAGE_ACTION[r[2]])]
    pages = [st.Page(_HERE / f, title=t, url_path=u) for f, t, u in rows]
    # Streamlit serves its default page at "/" only (its url_path is ignored), so no page
    # is the default: a hidden one at "/" sends the visitor to the first page, whose name
    # (/workspace) then works in the address bar like every other page's.
    home = st.Page(lambda: _go_home(pages[0]), title=rows[0][1], url_path="home", default=True,
                   visibility="hidden")
    nav = st.navigation([home] + pages)
    st.sidebar.title("TracIn Audit")
    sidebar_identity(who)
    sidebar_summary(current_workspace(show_errors=False))
    return nav


def _go_home(first) -> None:
    """The page at "/": the first page the role may open, at its own URL (query kept)."""
    st.switch_page(first, query_params=st.query_params.to_dict())


def sidebar_identity(who: Identity) -> None:
    with st.sidebar:
        if who.mode == "local":
            st.warning("**Local mode**: no sign-in, every visitor is admin. The server listens on "
                       "127.0.0.1 only. To share it with a team, see the README's "
                       "\"Deploying for a team\".", icon=":material/lock_open:")
        else:
            st.caption(f"Signed in as **{esc(who.name)}** · {esc(who.role)}")
            st.button("Sign out", key="sign_out", on_click=st.logout, icon=":material/logout:")


@contextmanager
def routed() -> Iterator[None]:
    """app.py runs the selected page inside this: the page then knows it was routed."""
    _ROUTER.active = True
    st.session_state["_tracin_routed_once"] = True
    try:
        yield
    finally:
        _ROUTER.active = False


def ensure_router(keep: Sequence[str] = ()) -> None:
    """Send a page run that bypassed app.py back through the router.

    The one workaround for Streamlit's legacy multipage mode (the page scripts live in
    ``pages/``, a name the project keeps, and Streamlit has no public switch to stop
    reading that folder): with a ``pages/`` folder next to ``app.py``, Streamlit starts in
    its legacy mode until a run calls ``st.navigation``, so on a freshly started server a
    first visit straight to a page URL (``/review``) runs the page file alone. Such a run
    is not inside :func:`routed`: the private flag
    ``PagesManager.uses_pages_directory`` is cleared (what ``st.navigation`` does) and a
    fresh session is rerun through app.py. (AppTest also runs page files directly after
    its first run; those runs carry widget events that a rerun would drop, so they go on
    as they are.) ``tests/test_router.py`` fails when Streamlit changes what this relies on.

    ``keep``: keys of buttons whose press in this run must survive that rerun; read them
    with :func:`pressed`. Every page calls this first.
    """
    for key in keep:
        if st.session_state.get(key):
            st.session_state[f"{key}_pending"] = True
    if getattr(_ROUTER, "active", False):
        return
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - Streamlit internals moved
        return
    PagesManager.uses_pages_directory = False
    if not st.session_state.get("_tracin_routed_once"):
        st.session_state["_tracin_routed_once"] = True
        st.rerun()


def pressed(key: str, value: bool) -> bool:
    """Whether button ``key`` was pressed: ``value`` (its ``st.button`` result) or a press
    that :func:`ensure_router` kept across its rerun."""
    return bool(value) | bool(st.session_state.pop(f"{key}_pending", False))
