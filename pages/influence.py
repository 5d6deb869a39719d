"""Influence page: pick (or upload) a test image, see its proponents and opponents.

UI only: every score comes from ``Workspace.influence`` / ``Workspace.self_influence``.
The selected test index lives in ``st.session_state`` and in ``?test=`` so a reload keeps it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
from typing import Any, Iterator, Optional

import numpy as np
import streamlit as st
import torch
from PIL import Image, UnidentifiedImageError

from pages import common
from tracin_core.audit import rankers
from tracin_core.audit.datasets import open_image

PER_PAGE = 40
GRID_COLS = 10
GRID_HEIGHT = 400  # the picker scrolls inside this box, so the results stay in view
GALLERY_COLS = 8
METHODS = {
    "Fast (last layer)": "fast",
    "TracInCP (chosen layers)": "cp",
    "RandProj": "randproj",
    "Fast via an index": "index",
}
ALL_CLASSES = "All classes"
# After a pick the results are brought into view: the picker above them is taller than a
# laptop screen (1280x720), so the galleries would start below the fold. Runs once per new
# selection (the nonce makes each pick's element new, so its script runs again).
SCROLL_TO_RESULTS_JS = """
<script>
(function () {{
  var tries = 60;  // nonce {nonce}
  (function go() {{
    var box = document.querySelector(".st-key-inf_results");
    if (box && box.querySelector("[class*='st-key-gallery_'] img")) {{
      box.style.scrollMarginTop = "3.75rem";  // below Streamlit's top bar
      box.scrollIntoView({{block: "start"}});
      return;
    }}
    if (tries-- > 0) {{ setTimeout(go, 50); }}
  }})();
}})();
</script>
"""


# ----------------------------------------------------------------------------- cached engine calls
@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run one-example queries with one intra-op thread.

    A query is a few tiny tensor ops; on a busy machine (more runnable threads than
    cores) every extra OpenMP thread turns each op into a wait for a descheduled thread
    (measured: 0.3 s instead of 0.01 s per query on 2 shared cores). torch's thread count
    is per thread here (OpenMP), and Streamlit runs each script run in its own thread.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@st.cache_resource(show_spinner=False, max_entries=256)
def _influence(fp: str, test_key: str, k: int, method: str, opts_json: str, label: Optional[int],
               _ws, _x: Optional[torch.Tensor]):
    """``Workspace.influence`` (shared by every session; keyed by the workspace's hash)."""
    opts = json.loads(opts_json)
    test: Any = _x if _x is not None else int(test_key)
    return _ws.influence(test, k=k, method=method, label=label, **opts)


@st.cache_resource(show_spinner=False, max_entries=4096)
def _thumbnail(fp: str, split: str, i: int, size: int, alt: str, _ws) -> str:
    """Image ``i`` of the ``split`` data as an inline ``<img>`` (:func:`pages.common.image_html`),
    PNG-encoded once per server: every pick reruns the page, and the 40 picker thumbnails
    (and a gallery's recurring training examples) do not change between runs."""
    data = _ws.test if split == "test" else _ws.train
    return common.image_html(data.image(i), size, alt)


@st.cache_resource(show_spinner=False, max_entries=8)
def _self_influence_rank(fp: str, _ws) -> np.ndarray:
    """Rank (1 = largest) of every training example's self-influence (fast method)."""
    return rankers.score_ranks(_ws.self_influence("fast"))


def _sig3(x: float) -> str:
    """Three significant digits, trailing zeros kept (0.190, 1.20, 123, -4.56e-05)."""
    text = f"{float(x):#.3g}"
    return text[:-1] if text.endswith(".") else text.replace(".e", "e")


def _param_layers(ws) -> list[str]:
    return [n for n, m in ws.model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]


# ----------------------------------------------------------------------------- selection state
def _select_index(i: int) -> None:
    st.session_state["inf_sel"] = {"fp": st.session_state.get("inf_fp"), "kind": "index", "index": int(i)}
    st.session_state["inf_scroll"] = st.session_state.get("inf_scroll_n", 0) + 1
    st.query_params["test"] = str(int(i))


def _select_typed_index(n: int) -> None:
    """The "By index" button: a whole number in 0..n-1, else a message and no selection."""
    raw = str(st.session_state.get("inf_index_input", "")).strip()
    try:
        i = int(raw)
    except ValueError:
        i = None
    if i is None or not 0 <= i < n:
        st.session_state["inf_index_error"] = (
            f"“{raw[:40]}” is not a test index: enter a whole number from 0 to {n - 1:,}.")
        st.session_state["inf_sel"] = None  # what was shown before no longer applies
        if "test" in st.query_params:
            del st.query_params["test"]
        return
    st.session_state.pop("inf_index_error", None)
    _select_index(i)


def _select_upload(sha: str) -> None:
    st.session_state["inf_sel"] = {"fp": st.session_state.get("inf_fp"), "kind": "upload", "sha": sha}
    st.session_state["inf_scroll"] = st.session_state.get("inf_scroll_n", 0) + 1
    if "test" in st.query_params:
        del st.query_params["test"]


def _current_selection(ws) -> Optional[dict[str, Any]]:
    fp = ws.fingerprint
    st.session_state["inf_fp"] = fp
    sel = st.session_state.get("inf_sel")
    if sel is not None and sel.get("fp") == fp:
        if sel["kind"] == "upload" and st.session_state.get("inf_upload", {}).get("sha") != sel["sha"]:
            sel = None
        return sel
    sel = None
    raw = st.query_params.get("test")
    if raw is not None and ws.test is not None:
        try:
            i = int(raw)
        except ValueError:
            i = -1
        if 0 <= i < len(ws.test):
            sel = {"fp": fp, "kind": "index", "index": i}
        else:
            st.session_state["inf_index_error"] = (
                f"The link's test index “{str(raw)[:40]}” is not one of 0 to {len(ws.test) - 1:,}.")
            del st.query_params["test"]
    st.session_state["inf_sel"] = sel
    return sel


# ----------------------------------------------------------------------------- uploads
def upload_tab(ws) -> None:
    c, h, w = (tuple(ws.train.input_shape) + (1, 1, 1))[:3]
    st.caption(f"PNG or JPG; converted to the model's input ({c}×{h}×{w}"
               f"{', greyscale' if c == 1 else ', RGB'}).")
    up = st.file_uploader("Test image", type=["png", "jpg", "jpeg"], key="inf_upload_file")
    if up is None:
        return
    too_large = common.upload_too_large(up)
    if too_large:
        st.error(too_large, icon=":material/block:")
        return
    data = up.getvalue()
    sha = hashlib.sha256(data).hexdigest()[:16]
    try:
        with open_image(io.BytesIO(data)) as im:  # PIL's decompression-bomb limit, as an error
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        reason = ("its bytes are not a PNG or JPG image" if isinstance(exc, UnidentifiedImageError)
                  else common.public_message(exc))
        st.error(f"**{common.esc(up.name)}** cannot be read as an image: {reason}.", icon=":material/error:")
        # the previous upload's results no longer apply
        st.session_state.pop("inf_upload", None)
        if (st.session_state.get("inf_sel") or {}).get("kind") == "upload":
            st.session_state["inf_sel"] = None
        return
    grey_mean = float(np.asarray(img.convert("L"), dtype=np.float64).mean())
    light_on_dark = ws.train.image(0).mean() < 128 if len(ws.train) else False
    auto_invert = c == 1 and light_on_dark and grey_mean > 127
    a, b = st.columns(2)
    invert = a.checkbox("Invert colours", value=auto_invert, key=f"inf_invert_{sha}",
                        help="The training images are light on dark; a dark drawing on white needs inverting.")
    options = ["unknown"] + ws.classes
    label_choice = b.selectbox("True label (if known)", options, key=f"inf_upload_label_{sha}")
    x, view = ws.train.preprocess(img, invert=invert)
    label = None if label_choice == "unknown" else ws.classes.index(label_choice)
    st.session_state["inf_upload"] = {"sha": sha, "x": x, "view": view, "name": up.name, "label": label}
    sel = st.session_state.get("inf_sel") or {}
    if sel.get("kind") != "upload" or sel.get("sha") != sha:
        _select_upload(sha)
        st.rerun()


# ----------------------------------------------------------------------------- picking
def browse_tab(ws) -> None:
    if ws.test is None:
        st.info("This workspace has no test data: upload an image instead.")
        return
    preds = ws.predictions("test")
    a, b, c = st.columns([2, 1, 1], vertical_alignment="bottom")
    cls = a.selectbox("Class (true label)", [ALL_CLASSES] + ws.classes, key="inf_class")
    wrong_only = b.checkbox("Misclassified only", key="inf_wrong")
    idx = preds["index"].to_numpy()
    mask = np.ones(len(idx), dtype=bool)
    if cls != ALL_CLASSES:
        mask &= preds["label"].to_numpy() == ws.classes.index(cls)
    if wrong_only:
        mask &= ~preds["correct"].to_numpy()
    idx = idx[mask]
    n_pages = max(1, -(-len(idx) // PER_PAGE))
    if st.session_state.get("inf_page", 1) > n_pages:
        st.session_state["inf_page"] = 1
    page = int(c.number_input(f"Page (of {n_pages})", 1, n_pages, key="inf_page"))
    shown = idx[(page - 1) * PER_PAGE: page * PER_PAGE]
    st.caption(f"{len(idx):,} test images match · showing {len(shown)} "
               f"({(page - 1) * PER_PAGE + 1 if len(shown) else 0}–{(page - 1) * PER_PAGE + len(shown)})")
    if not len(shown):
        st.info("No test image matches these filters.")
        return
    labels, predicted = preds["label"].to_numpy(), preds["predicted"].to_numpy()
    box = st.container(height=GRID_HEIGHT, border=True)
    for row in range(0, len(shown), GRID_COLS):
        cols = box.columns(GRID_COLS)
        for col, i in zip(cols, shown[row: row + GRID_COLS]):
            i = int(i)
            with col:
                mark = "" if labels[i] == predicted[i] else " " + common.CROSS
                st.html(_thumbnail(ws.fingerprint, "test", i, 64, f"Test image #{i}", ws) + common.caption_html(
                    "", f"#{i} · {common.class_html(ws, labels[i])}→{common.class_html(ws, predicted[i])}{mark}"))
                st.button("Pick", key=f"pick_{i}", on_click=_select_index, args=(i,))


def index_tab(ws) -> None:
    if ws.test is None:
        st.info("This workspace has no test data: upload an image instead.")
        return
    sel = st.session_state.get("inf_sel") or {}
    a, b = st.columns([1, 3], vertical_alignment="bottom")
    if "inf_index_input" not in st.session_state:
        st.session_state["inf_index_input"] = str(sel.get("index", 0)) if sel.get("kind") == "index" else "0"
    a.text_input(f"Test index (0–{len(ws.test) - 1:,})", key="inf_index_input", max_chars=12)
    b.button("Show this test image", key="inf_index_go", on_click=_select_typed_index, args=(len(ws.test),))
    if "inf_index_error" in st.session_state:
        st.error(common.esc(st.session_state.pop("inf_index_error")), icon=":material/error:")


# ----------------------------------------------------------------------------- results
@st.dialog("Training example", width="medium")
def details(ws, i: int) -> None:
    preds = ws.predictions("train")
    row = preds.iloc[i]
    a, b = st.columns([1, 1])
    a.image(common.upscale(ws.train.image(i), 256), width=256)
    lines = [
        f"**Training example #{i}**",
        f"- Label (in the data): **{common.class_md(ws, row['label'])}**",
        f"- Predicted (last checkpoint): **{common.class_md(ws, row['predicted'])}** "
        f"({row['probability']:.1%})",
    ]
    if ws.ground_truth is not None:
        lines.append(f"- Ground truth: **{common.class_md(ws, ws.ground_truth[i])}**")
    try:
        ranks = _self_influence_rank(ws.fingerprint, ws)
        lines.append(f"- Self-influence rank: **{int(ranks[i]):,}** of {len(ranks):,} "
                     "(1 = most self-influential: unusual or possibly mislabelled)")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"- Self-influence: unavailable ({exc})")
    b.markdown("\n".join(lines))
    if common.current_identity_can("review"):
        b.page_link(common.page_file("review.py"), label=f"Review #{i} (tag its label) →",
                    query_params={"item": str(i), "goto": "1"})


def gallery(ws, table, kind: str, title: str, help_text: str, per_row: int = GALLERY_COLS) -> None:
    box = st.container(key=f"gallery_{kind}")
    box.subheader(title)
    box.caption(help_text)
    if table.empty:
        box.info("No training examples.")
        return
    rows = list(table.itertuples(index=False))
    for start in range(0, len(rows), per_row):
        cols = box.columns(per_row)
        for col, r in zip(cols, rows[start: start + per_row]):
            i = int(r.index)
            with col:
                wrong = "" if r.label == r.predicted else " " + common.WARNING
                st.html(_thumbnail(ws.fingerprint, "train", i, 96,
                                   f"Training example #{i}, label {common.class_name(ws, r.label)}", ws)
                        + common.caption_html(f"<b>{common.class_html(ws, r.label)}</b>{wrong} · {_sig3(r.score)}",
                                              f"#{i} · pred. {common.class_html(ws, r.predicted)}"))
                if st.button("details", key=f"det_{kind}_{r.rank}", type="tertiary"):
                    details(ws, i)


def method_controls(ws) -> tuple[str, str, int, dict[str, Any]]:
    """Method, k and the method's options (shown before a test image is picked, too)."""
    a, b, c = st.columns([1.3, 1, 1], gap="large")
    method_label = a.radio("Method", list(METHODS), key="inf_method", horizontal=True)
    method = METHODS[method_label]
    k = b.slider("How many proponents and opponents (k)", 1, 30, 8, key="inf_k")
    opts: dict[str, Any] = {}
    if method == "cp":
        layers = _param_layers(ws)
        default = [ws.final_fc_layer] if ws.final_fc_layer in layers else layers[-1:]
        chosen = c.multiselect("Layers (empty = all parameters)", layers, default=default, key="inf_layers")
        if chosen:
            opts["layers"] = sorted(chosen, key=layers.index)
    elif method == "randproj":
        opts["projection_dim"] = int(c.number_input("Projection dimension", 1, 4096, 16, key="inf_projdim"))
        c.caption("RandProj: an annoy index of randomly projected gradients proposes candidates; each is "
                  "then scored exactly (TracInCPFast), so the scores do not depend on the dimension. "
                  "A proponent the index misses is not shown: Fast finds them all.")
    elif method == "index":
        c.caption("Fast via an index, for large data: the final-layer gradients reduced to 32 principal "
                  "directions propose 100 candidates, each scored exactly (TracInCPFast). Built once per "
                  "workspace and kept beside the store.")
    else:
        c.caption("Fast: gradients of the final layer only (TracInCPFast), from the precomputed store.")
    return method_label, method, int(k), opts


def results(ws, sel: dict[str, Any], method_label: str, method: str, k: int, opts: dict[str, Any]) -> None:
    if sel["kind"] == "index":
        i = int(sel["index"])
        img = ws.test.image(i)
        title, alt = f"test #{i}", f"Test image #{i}"
        known = int(ws.test.labels[i])
        x, test_key, label = None, str(i), None
    else:
        up = st.session_state["inf_upload"]
        img = up["view"]
        title, alt = f"uploaded {common.esc(up['name'])}", f"Uploaded image {up['name']}"
        known = up["label"]
        x, test_key, label = up["x"], "upload:" + up["sha"], up["label"]

    try:
        if opts or method != "fast":
            common.ensure_store(ws, method, **opts)
        with st.spinner("Computing influence scores…"), _one_thread():
            res = _influence(ws.fingerprint, test_key, int(k), method, json.dumps(opts, sort_keys=True),
                             label, ws, x)
    except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
        st.error(f"Computing influence failed: {type(exc).__name__}: {common.public_message(exc)}")
        return

    left, mid = st.columns([1, 3], gap="medium")
    left.html(common.image_html(img, 224, alt, "" if sel["kind"] == "index" else
                                common.caption_html("", "As the model sees it")))  # inline, as the cards
    ok = None if known is None else known == res.predicted
    explain = "prediction" if known is None else "true label"
    if ok is False:  # misclassified: what made the model say so, beside what supports the truth
        explain = {"Side by side": "both", "The true label": "true label", "The prediction": "prediction"}[
            mid.segmented_control("Explain", ["Side by side", "The true label", "The prediction"],
                                  default="Side by side", key="inf_explain", required=True,
                                  help="TracIn scores explain one label: the true one (as Captum's tutorial "
                                       "does) or the one the model predicted.")]
    shown = {"both": "the true label (left) and the prediction (right)",
             "true label": f"the true label **{common.class_md(ws, known)}**" if known is not None else "",
             "prediction": f"the prediction **{common.class_md(ws, res.predicted)}**"}[explain]
    mid.markdown(
        f"### {title[0].upper() + title[1:]}\n\n"
        f"True label: **{common.class_md(ws, known) if known is not None else 'unknown'}**  \n"
        f"Predicted: **{common.class_md(ws, res.predicted)}** with probability **{res.probability:.1%}** "
        f"{'' if ok is None else ':green[:material/check_circle:]' if ok else ':red[:material/cancel:]'}\n\n"
        f":gray[Scores explain {shown} · method {method_label.lower()} · {len(ws.checkpoints)} checkpoints]"
    )
    pred = res
    if explain in ("both", "prediction") and known is not None and not ok:
        try:
            with st.spinner("Computing the prediction's influence scores…"), _one_thread():
                pred = _influence(ws.fingerprint, test_key, int(k), method, json.dumps(opts, sort_keys=True),
                                  int(res.predicted), ws, x)
        except Exception as exc:  # noqa: BLE001 - shown to the user, never a traceback
            st.error(f"Computing influence failed: {type(exc).__name__}: {common.public_message(exc)}")
            return
    if explain == "both":
        a, b = st.columns(2, gap="large")
        with a:
            galleries(ws, res, title, f"true label {common.class_md(ws, known)}", "", GALLERY_COLS // 2)
        with b:
            galleries(ws, pred, title, f"prediction {common.class_md(ws, res.predicted)}", "pred_", GALLERY_COLS // 2)
    else:
        galleries(ws, pred if explain == "prediction" else res, title, "", "", GALLERY_COLS)


def galleries(ws, res, title: str, which: str, prefix: str, per_row: int) -> None:
    """Proponents then opponents of one explained label (``which``: named in the titles)."""
    legend = ("Each: **label in the data** · TracIn score, then the training index and the model's "
              "prediction (:orange[⚠] where they differ).")
    suffix = f" · {which}" if which else ""
    gallery(ws, res.proponents, f"{prefix}p", f"Proponents of {title}{suffix}",
            "Training examples whose gradients agree with this one: they pushed the model towards this label. "
            + legend, per_row)
    gallery(ws, res.opponents, f"{prefix}o", f"Opponents of {title}{suffix}",
            "Training examples whose gradients disagree: they pushed the model away from this label. " + legend,
            per_row)


# ----------------------------------------------------------------------------- page
common.ensure_router()
common.require("influence", "open the Influence page")
st.title("Influence")
ws = common.current_workspace()
if ws is None:
    st.stop()
common.ensure_store(ws)  # on failure: the error in words and the way back, then stop

with _one_thread():
    ws.predictions("train")  # warm: the galleries need it; computed once per workspace
sel = _current_selection(ws)
st.caption("Pick a test image: the training examples that most supported (proponents) or opposed "
           "(opponents) the model's answer are shown below, with TracIn scores from the workspace.")
tab_browse, tab_index, tab_upload = st.tabs(["Browse the test set", "By index", "Upload an image"])
with tab_browse:
    browse_tab(ws)
with tab_index:
    index_tab(ws)
with tab_upload:
    upload_tab(ws)

st.divider()
controls = method_controls(ws)
sel = _current_selection(ws)
if sel is None:
    st.info("Pick a test image above to see its proponents and opponents.")
else:
    with st.container(key="inf_results"):
        results(ws, sel, *controls)
    if "inf_scroll" in st.session_state:  # a new pick: bring its galleries into view
        st.session_state["inf_scroll_n"] = st.session_state.pop("inf_scroll")
        st.html(SCROLL_TO_RESULTS_JS.format(nonce=st.session_state["inf_scroll_n"]),
                unsafe_allow_javascript=True)
