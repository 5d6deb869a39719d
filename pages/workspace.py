"""Workspace page: what is open now, and three ways to open another workspace.

* the built-in digits demo;
* a workspace file (TOML, design.md §4) that the server config lists, picked by name;
* "build one here": uploaded checkpoints for a registered architecture plus a dataset
  (the built-in digits, a folder inside a data root the server config names, or a zip).

Only admins open or build workspaces (checked here, where it happens); a browser never
sends a path: it picks names, and relative folders are resolved inside their data root.

UI only: checkpoints are validated with ``tracin_core.checkpoints`` and every score comes
from the ``Workspace`` API (the store is built by :func:`pages.common.ensure_store`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import streamlit as st

from pages import common
from tracin_core import settings
from tracin_core.checkpoints import CheckpointError, fit_state_dict, read_checkpoint
from tracin_core.models import ARCHITECTURES, linear_layer_names
from tracin_core.server_config import PathRefused
from tracin_core.workspace_config import WorkspaceConfig, WorkspaceConfigError

PREVIEW_N = 24
PREVIEW_COLS = 12
DATASET_CHOICES = (
    "digits (built-in)",
    "CIFAR-10 folder in a data root",
    "Image folder in a data root",
    "Upload a zip of class folders",
)
LR_SOURCES = {
    "workspace": "set in the workspace",
    "checkpoint": "stored in the checkpoint",
    "default": "default (none stored)",
}


# ----------------------------------------------------------------------------- helpers
def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


@st.cache_resource(show_spinner=False)
def _layer_names(arch_key: str) -> list[str]:
    return linear_layer_names(ARCHITECTURES[arch_key].build())


@st.cache_resource(show_spinner=False)
def _state_keys(arch_key: str) -> frozenset:
    return frozenset(ARCHITECTURES[arch_key].build().state_dict())


def _detect_architecture(shapes: dict[str, tuple]) -> Optional[str]:
    """The first registered architecture whose parameter names match a checkpoint's."""
    keys = set(shapes)
    if keys and all(k.startswith("module.") for k in keys):
        keys = {k[len("module."):] for k in keys}
    for arch_key in ARCHITECTURES:
        if _state_keys(arch_key) == keys:
            return arch_key
    return None


def _looks_like_checkpoint(data: bytes) -> bool:
    """Does the file start like something torch.load or safetensors could read?"""
    if data[:4] == b"PK\x03\x04" or data[:1] == b"\x80":  # torch's zip format, legacy pickle
        return True
    header = int.from_bytes(data[:8], "little") if len(data) >= 10 else 0
    return 0 < header <= len(data) - 8 and data[8:9] == b"{"


def _checked_upload(f) -> dict[str, Any]:
    """Read an uploaded checkpoint once per upload (cached in the session)."""
    cache = st.session_state.setdefault("_ckpt_checks", {})
    key = f"{f.file_id}:{f.name}:{f.size}"
    if key not in cache:
        too_large = common.upload_too_large(f)
        if too_large:
            cache[key] = {"name": f.name, "ok": False, "error": too_large, "md": True}
            return cache[key]
        data = f.getvalue()
        try:
            state, info = read_checkpoint(data, name=f.name)
        except CheckpointError as exc:
            reason = str(exc)
            if reason.startswith(f"{f.name}: "):
                reason = reason[len(f.name) + 2:]
            if not _looks_like_checkpoint(data):
                reason += (" — its first bytes are neither a PyTorch zip archive, a pickle nor a "
                           "safetensors header: the file is corrupt or not a checkpoint")
            cache[key] = {"name": f.name, "ok": False, "error": reason}
        else:
            suffix = Path(f.name).suffix.lower() or ".pt"
            path = common.save_upload(data, suffix)
            cache[key] = {
                "name": f.name, "ok": True, "path": str(path), "sha256": info.sha256,
                "learning_rate": info.learning_rate, "epoch": info.epoch,
                "shapes": {k: tuple(v.shape) for k, v in state.items()},
            }
    return cache[key]


def _ordered_checkpoint_paths(items: list[dict[str, Any]]) -> list[str]:
    """Paths that keep the given order.

    ``Workspace`` sorts checkpoint paths by name (as it does for a folder or a glob) and
    uses the last one for predictions, while uploads are stored under content hashes.
    So the checked uploads are linked into a folder of their own as ``NNN-<file name>``.
    """
    digest = hashlib.sha256("|".join(f"{it['sha256']}:{it['name']}" for it in items).encode()).hexdigest()[:16]
    folder = settings.upload_dir() / "checkpoint-sets" / digest
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, it in enumerate(items):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(it["name"]).name) or "checkpoint.pt"
        target = folder / f"{i:03d}-{safe}"
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            try:
                os.link(it["path"], tmp)
            except OSError:
                shutil.copyfile(it["path"], tmp)
            os.replace(tmp, target)
        out.append(str(target))
    return out


def _display_name(path: str) -> str:
    """A checkpoint's file name (uploads: the name it was uploaded under)."""
    p = Path(path)
    if p.parent.parent == settings.upload_dir() / "checkpoint-sets":
        return re.sub(r"^\d{3}-", "", p.name)
    return p.name


def _fmt_lr(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:g}"


# ----------------------------------------------------------------------------- active workspace
#: (page file, title, what it is for, url path) of the pages to go on to
NEXT_STEPS = [
    ("influence.py", "Influence", "which training examples made a test prediction", "influence"),
    ("review.py", "Review", "check the labels most likely wrong, most suspicious first", "review"),
    ("evaluation.py", "Evaluation", "how well each ranking finds wrong labels", "evaluation"),
]


def next_steps(who) -> None:
    """Links to the pages this role may open next, with a line on what each is for."""
    steps = [s for s in NEXT_STEPS if who.can(common.PAGE_ACTION[s[3]])]
    if not steps:
        return
    with st.container(key="next_steps", border=True):
        st.markdown("**Next:**")
        for col, (page, title, what, _) in zip(st.columns(len(steps)), steps):
            col.page_link(common.page_file(page), label=f"{title} →")
            col.caption(what)


def show_active(ws) -> None:
    st.subheader(f"Active workspace: {common.esc(ws.name)}")
    spec = common.active_spec()
    if spec.get("kind") in ("listed", "demo", "fashion"):
        listed = spec.get("name", spec["kind"])
        st.caption(f"Listed on this server as “{common.esc(listed)}” · id `{ws.fingerprint[:12]}`")
    else:
        st.caption(f"Built in the app · id `{ws.fingerprint[:12]}`")
    n_test = len(ws.test) if ws.test is not None else 0
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Training examples", f"{len(ws.train):,}")
    c2.metric("Test examples", f"{n_test:,}" if ws.test is not None else "none")
    c3.metric("Classes", len(ws.classes))
    c4.metric("Checkpoints", len(ws.checkpoints))
    classes = ws.classes
    shown = ", ".join(common.esc(c) for c in classes[:30]) + (f", … ({len(classes) - 30} more)" if len(classes) > 30 else "")
    st.markdown(f"**Classes:** {shown}")
    st.markdown(f"**Model input:** {' × '.join(map(str, ws.train.input_shape))} · "
                f"**final layer:** {common.esc(ws.final_fc_layer)} · **loss:** {ws.loss_name} ({ws.reduction})")

    st.markdown("**Checkpoints** (in order; the last one gives the predictions)")
    table = pd.DataFrame({
        "checkpoint": [_display_name(c.name) for c in ws.checkpoints],
        "epoch": [str(c.epoch) if c.epoch is not None else "" for c in ws.checkpoints],
        "learning rate": [c.learning_rate for c in ws.checkpoints],
        "learning rate from": [LR_SOURCES.get(c.lr_source, c.lr_source) for c in ws.checkpoints],
        "sha256": [c.sha256[:12] for c in ws.checkpoints],
    })
    st.container(key="active_checkpoints").dataframe(
        table, hide_index=True, width="stretch",
        column_config={"learning rate": st.column_config.NumberColumn(format="%g")})

    n = min(PREVIEW_N, len(ws.train))
    st.markdown(f"**Training images** (the first {n}, with their labels)")
    labels = ws.train.labels.numpy()
    for start in range(0, n, PREVIEW_COLS):
        cols = st.columns(PREVIEW_COLS)
        for col, i in zip(cols, range(start, min(n, start + PREVIEW_COLS))):
            col.image(common.upscale(ws.train.image(i), 72), width=72,
                      caption=f"#{i} · {common.class_md(ws, labels[i])}")


# ----------------------------------------------------------------------------- choosers
def choose_demo() -> None:
    from tracin_core.datasets import FASHION_MNIST_ROOT

    st.markdown("The scikit-learn digits with a small CNN, six checkpoints and some corrupted "
                "training labels: ready to use, nothing to train.")
    if st.button("Built-in demo", key="open_demo", type="primary", icon=":material/science:"):
        common.set_workspace(dict(common.DEMO_SPEC))
        st.rerun()
    st.markdown("**Fashion-MNIST**: all 60,000 training and 10,000 test images, 10% of the "
                "training labels corrupted as in Captum's tutorial, a small CNN with six "
                "checkpoints. The first visit runs one pass over the training data (a progress "
                "bar shows it; `python -m tracin_core precompute fashion` does it ahead of time).")
    if FASHION_MNIST_ROOT.is_dir():
        if st.button("Fashion-MNIST", key="open_fashion", icon=":material/checkroom:"):
            common.set_workspace(dict(common.FASHION_SPEC))
            st.rerun()
    else:
        st.info("The Fashion-MNIST images are not installed on this server. An admin installs "
                "them with:\n\n```\napt-get install dataset-fashion-mnist\n```", icon=":material/download:")


def _open_listed() -> None:
    name = st.session_state.get("listed_name")
    if common.refuse("open_workspace", "open workspaces"):
        return
    if name not in common.server_config().workspaces:
        st.session_state["_refused"] = "That workspace is not listed on this server."
        return
    common.set_workspace({"kind": "listed", "name": name})


def choose_listed() -> None:
    cfg = common.server_config()
    names = sorted(cfg.workspaces, key=_natural_key)
    if not names:
        st.info("The server config lists no workspace files. An admin adds them under "
                "`[workspaces]` in `tracin_audit.toml` (see the README, \"Deploying for a team\").")
        return
    st.markdown("Workspace files (TOML: model factory, checkpoints, data) that this server's "
                "config lists. A link with `?workspace=NAME` opens one directly.")
    st.selectbox("Workspace", names, key="listed_name")
    st.button("Open workspace", key="open_listed", type="primary", on_click=_open_listed)


def _data_folder(label: str, key: str, required: bool = True) -> tuple[Optional[str], Optional[str]]:
    """A folder inside one of the server config's data roots: (absolute path, or None; problem)."""
    cfg = common.server_config()
    roots = list(cfg.data_roots)
    if not roots:
        return None, ("The server config names no data roots: an admin adds folders under "
                      "`[data_roots]` in `tracin_audit.toml`.")
    c1, c2 = st.columns([1, 2])
    root = c1.selectbox(f"{label}: data root", roots, key=f"{key}_root")
    rel = c2.text_input(f"{label}: folder inside it (empty: the root itself)", key=f"{key}_rel",
                        max_chars=500).strip()
    if not rel and not required:
        return None, None
    try:
        path = cfg.data_path(root, rel)
    except PathRefused as exc:
        return None, common.esc(exc)
    return str(path), None


def _dataset_inputs(arch_key: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The dataset part of a custom spec, or (None, reason)."""
    choice = st.radio("Dataset", DATASET_CHOICES, key="build_dataset", horizontal=True)
    default_size = int(ARCHITECTURES[arch_key].input_shape[-1])
    if choice == DATASET_CHOICES[0]:
        st.caption("scikit-learn's 8x8 digits with the demo's fixed train/test split (1,437 / 360).")
        return {"kind": "digits", "train": {"split": "train"}, "test": {"split": "test"}}, None
    if choice == DATASET_CHOICES[1]:
        root, problem = _data_folder("CIFAR-10 (holds cifar-10-batches-py)", "build_cifar")
        if problem:
            return None, problem
        return {"kind": "cifar10", "train": {"root": root, "split": "train"},
                "test": {"root": root, "split": "test"}}, None
    size = int(st.number_input("Image size (pixels, square)", 1, 4096, 32 if default_size == 224 else default_size,
                               key="build_image_size",
                               help="Images are converted to RGB and resized to this size."))
    if choice == DATASET_CHOICES[2]:
        root, problem = _data_folder("Training images (one subfolder per class)", "build_folder")
        if problem:
            return None, problem
        test_root, problem = _data_folder("Test images (optional, same class subfolders)",
                                          "build_folder_test", required=False)
        if problem:
            return None, problem
        return {"kind": "image_folder", "train": {"root": root, "image_size": size},
                "test": {"root": test_root, "image_size": size} if test_root else None}, None
    up = st.file_uploader("Zip of class folders (class_a/*.png, class_b/*.png, …)", type=["zip"], key="build_zip")
    if up is None:
        return None, "Upload a zip of class folders."
    too_large = common.upload_too_large(up)
    if too_large:
        return None, too_large
    path = common.save_upload(up.getvalue(), ".zip")
    return {"kind": "image_folder", "train": {"root": str(path), "image_size": size}, "test": None}, None


def choose_build() -> None:
    st.markdown("Upload the checkpoints of a model whose architecture the app knows, pick the "
                "data it was trained on, and open it.")
    files = st.file_uploader("Checkpoints (.pt, .pth or .safetensors; state dicts only)",
                             type=["pt", "pth", "safetensors"], accept_multiple_files=True, key="build_ckpts")
    checks = [_checked_upload(f) for f in files or []]
    for c in checks:
        if not c["ok"]:
            reason = c["error"] if c.get("md") else common.esc(c["error"])
            st.error(f"Cannot use **{common.esc(c['name'])}**: {reason}", icon=":material/block:")
    good = sorted((c for c in checks if c["ok"]), key=lambda c: _natural_key(c["name"]))

    keys = list(ARCHITECTURES)
    upload_set = "|".join(c["sha256"] for c in good)
    if good and st.session_state.get("_arch_detected_for") != upload_set:
        # new uploads: preselect the architecture their parameter names belong to
        st.session_state["_arch_detected_for"] = upload_set
        detected = _detect_architecture(good[0]["shapes"])
        if detected is not None:
            st.session_state["build_arch"] = detected
    col_a, col_b = st.columns(2)
    with col_a:
        arch_key = st.selectbox("Architecture", keys, key="build_arch",
                                format_func=lambda k: f"{k} — {ARCHITECTURES[k].description}")
        if good and _detect_architecture(good[0]["shapes"]) == arch_key:
            st.caption(f"The checkpoints' parameter names match {arch_key}.")
    arch = ARCHITECTURES[arch_key]
    layers = _layer_names(arch_key)
    with col_b:
        layer = st.selectbox("Final fully connected layer (for the fast method)", layers,
                             index=layers.index(arch.final_fc_layer) if arch.final_fc_layer in layers else 0,
                             key=f"build_layer_{arch_key}")

    lrs: list[float] = []
    if good:
        st.markdown("**Learning rates** (one per checkpoint; ordered by file name, the last gives predictions)")
        df = pd.DataFrame({
            "checkpoint": [c["name"] for c in good],
            "epoch": [c["epoch"] if c["epoch"] is not None else "" for c in good],
            "stored learning rate": [_fmt_lr(c["learning_rate"]) for c in good],
            "learning rate": [float(c["learning_rate"]) if c["learning_rate"] is not None else 1.0 for c in good],
        })
        editor_key = "build_lrs_" + hashlib.sha256("|".join(c["sha256"] for c in good).encode()).hexdigest()[:10]
        edited = st.data_editor(
            df, key=editor_key, hide_index=True, width="stretch",
            disabled=["checkpoint", "epoch", "stored learning rate"],
            column_config={"learning rate": st.column_config.NumberColumn(min_value=0.0, format="%g", required=True)},
        )
        lrs = [float(x) if x is not None else float("nan") for x in edited["learning rate"].tolist()]
    elif not checks:
        st.info("No checkpoints uploaded yet.")

    dataset, missing = _dataset_inputs(arch_key)
    name = st.text_input("Workspace name", key="build_name", placeholder=f"custom-{arch_key}").strip() or f"custom-{arch_key}"

    if st.button("Open", key="open_build", type="primary", disabled=not good):
        if common.refuse("open_workspace", "build workspaces"):
            st.rerun()
        bad_lr = [c["name"] for c, lr in zip(good, lrs) if not (math.isfinite(lr) and lr > 0)]
        if missing:
            st.error(missing)
            return
        if bad_lr:
            st.error(f"Learning rates must be positive numbers (check {', '.join(bad_lr)}).")
            return
        paths = _ordered_checkpoint_paths(good)
        # keep 'stored in the checkpoint' / 'default' as the source when the value was not changed
        rates: list[Optional[float]] = []
        for c, lr in zip(good, lrs):
            stored = c["learning_rate"]
            rates.append(None if (stored is not None and lr == float(stored)) or (stored is None and lr == 1.0) else lr)
        try:
            config = WorkspaceConfig.from_dict({
                "name": name,
                "model": {"factory": ARCHITECTURES[arch_key].factory_path, "final_fc_layer": layer},
                "checkpoints": {"paths": paths, "learning_rates": rates},
                "train": {"kind": dataset["kind"], **dataset["train"]},
                "test": {"kind": dataset["kind"], **dataset["test"]} if dataset.get("test") else None,
            }, where="Build one here")
        except WorkspaceConfigError as exc:
            st.error(common.public_message(exc), icon=":material/block:")
            return
        problems, num_classes = _check_fit(arch_key, config, good)
        if problems:
            for p in problems:
                st.error(p, icon=":material/block:")
            return
        if ARCHITECTURES[arch_key].num_classes_arg:
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, kwargs={"num_classes": num_classes}))
        common.set_workspace({"kind": "config", "config": config.to_dict()})
        st.rerun()


def _check_fit(arch_key: str, config: WorkspaceConfig,
               good: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Readable reasons why the checkpoints or data do not fit (empty list = fine), and
    the training data's number of classes (0 when it could not be read)."""
    from tracin_core.datasets import check_image_files

    arch = ARCHITECTURES[arch_key]
    with st.spinner("Checking the data and the checkpoints…"):
        try:
            train = common.load_config_dataset(config, "train")
            test = common.load_config_dataset(config, "test")
            if test is not None:
                bad = check_image_files(test)
                if bad:
                    return ["Some test images cannot be read: " + "; ".join(common.esc(p) for p in bad)], 0
        except (ValueError, FileNotFoundError, OSError) as exc:
            return [f"The dataset cannot be loaded: {common.public_message(exc)}"], 0
        bad_images = check_image_files(train)
        if bad_images:
            return ["Some images cannot be read, so the dataset is refused (fix or remove them): "
                    + "; ".join(common.esc(p) for p in bad_images)], 0
        try:
            model = arch.build(num_classes=train.num_classes)
        except ValueError as exc:
            return [f"{arch_key} does not fit this dataset: {exc}"], 0
        want, got = tuple(arch.input_shape), tuple(train.input_shape)
        problems = []
        if want[0] != got[0]:
            problems.append(f"{arch_key} takes {want[0]}-channel images but the dataset has {got[0]} "
                            f"(input {' × '.join(map(str, got))}).")
        for c in good:
            try:
                state, info = read_checkpoint(c["path"], name=c["name"])
                fit_state_dict(model, state, info.source)
            except CheckpointError as exc:
                problems.append(f"{common.esc(exc)} (architecture {arch_key}, {train.num_classes} classes)")
    return problems, train.num_classes


# ----------------------------------------------------------------------------- page
common.ensure_router()
who = common.require("view_workspace", "open the Workspace page")
st.title("Workspace")
common.workspace_notice()
common.show_refusal()
ws = common.current_workspace()
store_slot = st.container()
if ws is not None:
    next_steps(who)
    show_active(ws)

if who.can("open_workspace"):
    st.divider()
    st.subheader("Open another workspace")
    tab_demo, tab_toml, tab_build = st.tabs(["Built-in demo", "Listed workspaces", "Build one here"])
    with tab_demo:
        choose_demo()
    with tab_toml:
        choose_listed()
    with tab_build:
        choose_build()
else:
    st.caption("Only admins open or build workspaces; a link with `?workspace=NAME` from an admin "
               "opens a listed one.")

if ws is not None:
    with store_slot:
        try:
            common.ensure_store(ws)
        except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
            st.error(f"Computing the training features failed: {type(exc).__name__}: {common.public_message(exc)}")
