"""Shared UI helpers for the pages: the active workspace, the review store, images.

UI only: every score comes from ``tracin_core``. Heavy objects (workspaces, review
stores) live in ``st.cache_resource`` so every session on the server shares them;
they are keyed by content hashes (a changed checkpoint or dataset is a new key).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

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
