"""Shared UI helpers for the pages: the active workspace, the review store, images.

UI only: every score comes from ``tracin_core``. Heavy objects (workspaces, review
stores) live in ``st.cache_resource`` so every session on the server shares them;
they are keyed by content hashes (a changed checkpoint or dataset is a new key).
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import streamlit as st
from PIL import Image

from tracin_core import ReviewStore, Workspace
from tracin_core.checkpoints import CheckpointError
from tracin_core.workspace import WorkspaceError

CACHE_DIR = Path(os.environ.get("TRACIN_CACHE", Path.home() / ".cache" / "tracin_audit"))
UPLOAD_DIR = CACHE_DIR / "uploads"
REVIEW_DB = Path(os.environ.get("TRACIN_REVIEW_DB", CACHE_DIR / "reviews.sqlite"))
DEMO_SPEC = {"kind": "demo"}


def spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


@st.cache_resource(show_spinner=False, max_entries=8)
def _load_workspace(key: str) -> Workspace:
    spec = json.loads(key)
    kind = spec["kind"]
    if kind == "demo":
        return Workspace.demo(cache_dir=CACHE_DIR / "stores")
    if kind == "toml":
        return Workspace.from_toml(spec["path"], cache_dir=CACHE_DIR / "stores")
    if kind == "custom":
        from tracin_core.datasets import load_dataset
        from tracin_core.models import ARCHITECTURES

        arch = ARCHITECTURES[spec["architecture"]]
        train = load_dataset(spec["dataset"]["kind"], **spec["dataset"].get("train", {}))
        test_args = spec["dataset"].get("test")
        test = load_dataset(spec["dataset"]["kind"], **test_args) if test_args else None
        kwargs = {"num_classes": train.num_classes} if arch.num_classes_arg else {}
        return Workspace(
            name=spec.get("name", "custom"),
            model_factory=arch.factory_path or arch.factory,
            model_kwargs=kwargs,
            final_fc_layer=spec["final_fc_layer"],
            checkpoints=spec["checkpoints"],
            learning_rates=spec.get("learning_rates"),
            train=train,
            test=test,
            cache_dir=CACHE_DIR / "stores",
            batch_size=int(spec.get("batch_size", 256)),
        )
    raise WorkspaceError(f"unknown workspace kind {kind!r}")


def set_workspace(spec: dict[str, Any]) -> None:
    """Make ``spec`` the session's active workspace (and remember it in the URL)."""
    st.session_state["ws_spec"] = spec
    if spec.get("kind") == "toml":
        st.query_params["workspace"] = spec["path"]
    elif "workspace" in st.query_params:
        del st.query_params["workspace"]


def active_spec() -> dict[str, Any]:
    if "ws_spec" not in st.session_state:
        path = st.query_params.get("workspace")
        st.session_state["ws_spec"] = {"kind": "toml", "path": path} if path else dict(DEMO_SPEC)
    return st.session_state["ws_spec"]


def current_workspace(show_errors: bool = True) -> Optional[Workspace]:
    """The session's workspace, loaded once per server; None (with a message) on error."""
    spec = active_spec()
    try:
        with st.spinner("Opening the workspace…"):
            return _load_workspace(spec_key(spec))
    except (WorkspaceError, CheckpointError, ValueError, FileNotFoundError, OSError) as exc:
        if show_errors:
            st.error(f"Could not open the workspace: {exc}")
            if spec != DEMO_SPEC and st.button("Go back to the demo"):
                set_workspace(dict(DEMO_SPEC))
                st.rerun()
        return None


def ensure_store(ws: Workspace, method: str = "fast") -> None:
    """Build the workspace's feature store once, with a progress bar and counts."""
    engine = ws._engine(method)
    store = getattr(engine, "_store", None)
    if store is not None and store.complete:
        return
    bar = st.progress(0.0, text="Computing per-example features (one pass over the training data)…")
    total_n = len(ws.train)

    def progress(done: int, total: Optional[int]) -> None:
        total = total or total_n
        bar.progress(min(1.0, done / max(1, total)), text=f"Training pass: {done:,} / {total:,} examples")

    ws.precompute([method], progress=progress)
    bar.empty()


@st.cache_resource(show_spinner=False)
def _review_store(path: str, workspace: str, data_hash: str) -> ReviewStore:
    return ReviewStore(path, workspace=workspace, data_hash=data_hash)


def review_store(ws: Workspace) -> ReviewStore:
    REVIEW_DB.parent.mkdir(parents=True, exist_ok=True)
    return _review_store(str(REVIEW_DB), ws.name, ws.data_hash)


def reviewer_name() -> str:
    """The reviewer's name (sidebar), kept in the URL so a reload keeps it."""
    default = st.query_params.get("reviewer", "annotator")
    name = st.sidebar.text_input("Reviewer name", value=default, key="reviewer_input").strip()
    if name and name != st.query_params.get("reviewer"):
        st.query_params["reviewer"] = name
    return name or "annotator"


def upscale(img: np.ndarray, size: int = 112) -> Image.Image:
    """Nearest-neighbour upscaling so 8x8 digits stay readable."""
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    im = Image.fromarray(arr)
    scale = max(1, size // max(arr.shape[0], arr.shape[1]))
    return im.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def class_name(ws: Workspace, label: Optional[int]) -> str:
    if label is None:
        return "?"
    label = int(label)
    return ws.classes[label] if 0 <= label < len(ws.classes) else str(label)


def save_upload(data: bytes, suffix: str) -> Path:
    """Keep an uploaded file on the server under its content hash."""
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_DIR / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
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
        st.markdown(f"**Workspace:** `{ws.name}`")
        st.caption(
            f"{len(ws.train):,} training · {len(ws.test) if ws.test is not None else 0:,} test examples · "
            f"{len(ws.checkpoints)} checkpoints · id {ws.fingerprint[:8]}"
        )


def ensure_engine_store(ws: Workspace, method: str = "fast", **opts: Any) -> None:
    """Like :func:`ensure_store`, for an engine with options (``layers=[...]``, ``projection_dim=``).

    ``Workspace.precompute`` only builds the default engines, so this calls the engine's
    training pass itself (under the workspace's lock), with the same progress bar.
    """
    if not opts:
        ensure_store(ws, method)
        return
    engine = ws._engine(method, **opts)
    store = getattr(engine, "_store", None)
    if store is not None and store.complete:
        return
    bar = st.progress(0.0, text=f"Computing {method} features (one pass over the training data)…")
    total_n = len(ws.train)

    def progress(done: int, total: Optional[int]) -> None:
        total = total or total_n
        bar.progress(min(1.0, done / max(1, total)), text=f"Training pass: {done:,} / {total:,} examples")

    with ws._lock:
        engine._train_store(progress=progress)
    bar.empty()


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
    pred = _ws.predictions("train").set_index("index", drop=False)
    probs = np.asarray(_ws.class_probabilities("train"))
    given = pred["label"].to_numpy()
    predicted = pred["predicted"].to_numpy()
    rows = np.arange(len(pred))
    if probs.shape[1] > 1:
        second = np.argsort(-probs, axis=1, kind="stable")[:, 1]
    else:
        second = predicted
    suggested = np.where(predicted != given, predicted, second)
    pred["suggested"] = suggested
    pred["suggested_probability"] = probs[rows, suggested]
    pred["given_probability"] = probs[rows, np.clip(given, 0, probs.shape[1] - 1)]
    return pred


def train_predictions(ws: Workspace):
    """The model's view of every training example at the final checkpoint, computed once.

    Columns of ``ws.predictions("train")`` (index, label, predicted, probability, correct)
    plus ``suggested`` (the predicted class, or the second most probable one when the
    prediction equals the given label), ``suggested_probability`` and
    ``given_probability``. Indexed by ``index``.
    """
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
#: (file, title, url path); the first one is the default page
PAGE_TABLE = [
    ("workspace.py", "Workspace", "workspace"),
    ("influence.py", "Influence", "influence"),
    ("review.py", "Review", "review"),
    ("evaluation.py", "Evaluation", "evaluation"),
]


def page_config() -> None:
    st.set_page_config(page_title="TracIn Audit", page_icon=str(FAVICON), layout="wide")


def navigation():
    """The router (``st.navigation``) and the sidebar every page shares."""
    pages = [
        st.Page(_HERE / f, title=t, url_path=u, default=(i == 0)) for i, (f, t, u) in enumerate(PAGE_TABLE)
    ]
    nav = st.navigation(pages)
    st.sidebar.title("TracIn Audit")
    sidebar_summary(current_workspace(show_errors=False))
    return nav


@contextmanager
def routed() -> Iterator[None]:
    """app.py runs the selected page inside this: the page then knows it was routed."""
    _ROUTER.active = True
    st.session_state["_tracin_routed_once"] = True
    try:
        yield
    finally:
        _ROUTER.active = False


def ensure_router() -> None:
    """Send a page run that bypassed app.py back through the router.

    With a ``pages/`` folder next to ``app.py``, Streamlit starts in its legacy
    multipage mode until a run calls ``st.navigation``: on a freshly started server a
    first visit straight to a page URL (``/review``) runs the page file alone. Such a
    run is not inside :func:`routed`; a fresh session is rerun through app.py. (AppTest
    also runs page files directly after its first run; those runs carry widget events
    that a rerun would drop, so they go on as they are.)
    """
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
