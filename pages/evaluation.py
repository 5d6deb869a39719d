"""Evaluation page: how well each mislabel ranking finds the wrong labels, and what fixing them buys.

With ground truth (the demo): ROC curves with their AUC, the share of the mislabels found
against the share of the data reviewed, precision in the top k, score histograms split by
mislabelled / clean, and a table of AUC / found@10% / found@20% for every ranking. The
all-layer TracInCP ranking costs a pass over the data, so it is computed on demand.
Without ground truth: only the score histogram.

Closing the loop (the demo): retrain the demo's CNN on the corrected labels from the
review store and compare test accuracy with the noisy and the true labels.

UI only: scores come from ``Workspace.ranker_inputs`` and ``tracin_core.audit.rankers`` (the
same inputs ``Workspace.mislabel_scores`` ranks with), retraining from
``tracin_core.audit.demo.retrain_on_labels``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import streamlit as st

from pages import common
from pages.charts import curves_figure, histogram_figure, precision_histogram_figure, ranking_label
from tracin_core.audit import rankers as rk
from tracin_core.audit import retrain

#: epochs for the retraining (the demo's recipe uses 30); tests set it low
RETRAIN_EPOCHS = 30  # the Epochs box's default (tests set the box: key "ev_epochs")
#: points per curve sent to the browser (a 60,000-item queue's curves, thinned, look the same)
CURVE_POINTS = 500


# ---------------------------------------------------------------------------- cached work
@st.cache_resource(show_spinner=False, max_entries=16)
def _scores(fingerprint: str, with_cp: bool, _ws) -> dict[str, np.ndarray]:
    """Every available ranking's scores, from one set of ranker inputs (read-only)."""
    return _ws.mislabel_score_arrays(rk.available(with_cp), with_cp=with_cp)


@st.cache_resource(show_spinner=False, max_entries=16)
def _curves(fingerprint: str, with_cp: bool, _scores: dict[str, np.ndarray],
            _truth: np.ndarray) -> dict[str, rk.QueueCurves]:
    """Each ranking's AUC, found@, ROC and found curves and top-k counts, one sort each."""
    return {name: rk.queue_curves(s, _truth, points=CURVE_POINTS) for name, s in _scores.items()}


@st.cache_resource(show_spinner=False)
def _retrain_registry() -> retrain.RetrainRegistry:
    """Finished retrainings, shared by every session (one training at a time on the server)."""
    return retrain.RetrainRegistry()


def _cp_ready(ws) -> bool:
    return ws.store_ready("cp")


def _is_demo(ws) -> bool:
    from tracin_core.audit.workspace import DEMO_TOML

    return ws.source is not None and Path(ws.source).resolve() == DEMO_TOML.resolve()


def metrics_table(curves: dict[str, rk.QueueCurves], k: int) -> pd.DataFrame:
    rows = []
    for name, c in curves.items():
        rows.append({"ranking": ranking_label(name), "AUC": c.auc, "found@10%": c.found10,
                     "found@20%": c.found20, f"precision@{k}": c.precision_at(k),
                     "description": rk.RANKERS[name][1]})
    return pd.DataFrame(rows).sort_values("AUC", ascending=False, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------- sections
def section_rankings(ws, scores: dict[str, np.ndarray], truth: Optional[np.ndarray]) -> None:
    if truth is None:
        st.info("No ground truth for this workspace (which labels are wrong is unknown), so the rankings "
                "cannot be scored here. Below: the distribution of a ranking's scores. A workspace file "
                "can name a ground-truth CSV under `[evaluation] ground_truth`.")
        name = st.selectbox("Ranking", list(scores), index=list(scores).index(rk.DEFAULT_RANKER)
                            if rk.DEFAULT_RANKER in scores else 0, format_func=ranking_label, key="ev_hist_ranker")
        st.plotly_chart(histogram_figure(scores[name], None, name), key="ev_hist")
        return

    n, n_bad = len(truth), int(truth.sum())
    st.markdown(f"**{n_bad:,}** of **{n:,}** training items ({n_bad / n:.1%}) are known to be mislabelled. "
                f"Default ranking: **{rk.DEFAULT_RANKER}**.")
    k = st.slider("k (top of the queue)", min_value=1, max_value=n, value=min(n, max(1, n_bad)), key="ev_k",
                  help="Precision in the top k: the share of mislabelled items among the first k of each queue.")
    curves = _curves(ws.fingerprint, rk.NEEDS_CP.issubset(scores), scores, truth)
    table = metrics_table(curves, k)
    st.subheader("Rankings side by side")
    st.dataframe(table, hide_index=True, key="ev_table", column_config={
        "AUC": st.column_config.NumberColumn(format="%.4f"),
        "found@10%": st.column_config.NumberColumn(format="percent"),
        "found@20%": st.column_config.NumberColumn(format="percent"),
        f"precision@{k}": st.column_config.NumberColumn(format="percent"),
    })
    st.plotly_chart(curves_figure(curves, truth), key="ev_curves")
    _, right = st.columns(2)
    name = right.selectbox("Histogram of", list(scores), index=list(scores).index(rk.DEFAULT_RANKER)
                           if rk.DEFAULT_RANKER in scores else 0, format_func=ranking_label, key="ev_hist_ranker")
    st.plotly_chart(precision_histogram_figure({nm: c.precision_at(k) for nm, c in curves.items()}, k,
                                               scores[name], truth, name), key="ev_precision_hist")


def _corrected_labels(ws) -> tuple[np.ndarray, int]:
    """Labels after the review store's decisions (-1 = excluded) and the number of decided items."""
    store = common.review_store(ws)
    labels, excluded = store.corrected_labels(ws.train.labels.numpy().astype(np.int64).tolist())
    labels[excluded] = -1
    decided = len(store.final_decisions())
    return labels, decided


def section_retrain(ws, scores: dict[str, np.ndarray], truth: np.ndarray) -> None:
    st.subheader("Close the loop: retrain on corrected labels")
    if not _is_demo(ws):
        st.info("Retraining is available for the built-in digits demo (its training recipe is known).")
        return
    given = ws.train.labels.numpy().astype(np.int64)
    source = st.radio("Corrected labels from", ["the review store's decisions", "a perfect reviewer of the queue"],
                      horizontal=True, key="ev_source",
                      help="The review store: every accept / relabel / exclude recorded on the Review page. "
                           "A perfect reviewer: the first N items of a ranking's queue get their true labels "
                           "(what reviewing that many items would buy at best).")
    if source == "the review store's decisions":
        corrected, decided = _corrected_labels(ws)
        if decided == 0:
            st.caption("No decisions in the review store yet: the corrected labels equal the given ones. "
                       "Review items on the Review page, or pick a perfect reviewer above.")
    else:
        c1, c2 = st.columns(2)
        name = c1.selectbox("Queue", list(scores), index=list(scores).index(rk.DEFAULT_RANKER)
                            if rk.DEFAULT_RANKER in scores else 0, format_func=ranking_label, key="ev_oracle_ranker")
        count = int(c2.number_input("Items reviewed", min_value=0, max_value=len(given),
                                    value=int(round(0.1 * len(given))), step=10, key="ev_oracle_n"))
        corrected = retrain.oracle_labels(given, ws.ground_truth, scores[name], count)
    changed = corrected != given
    fixed = int((changed & (corrected == ws.ground_truth)).sum())
    broken = int((changed & (corrected >= 0) & (corrected != ws.ground_truth)).sum())
    excluded = int((corrected < 0).sum())
    remaining = int(((corrected >= 0) & (corrected != ws.ground_truth)).sum())
    st.caption(f"{fixed:,} labels fixed · {broken:,} changed to another wrong label · {excluded:,} excluded · "
               f"{remaining:,} wrong labels left (of {int(truth.sum()):,}).")
    epochs = int(st.number_input("Epochs", min_value=1, max_value=200, value=RETRAIN_EPOCHS, key="ev_epochs",
                                 help="The demo's recipe trains for 30 epochs (a few seconds each run)."))
    if common.pressed("ev_retrain", st.button("Retrain on corrected labels", type="primary", key="ev_retrain")):
        runs = [("noisy labels (as given)", given), ("corrected labels", corrected), ("true labels", ws.ground_truth)]
        bar = st.progress(0.0, text="Retraining…")
        results = {}
        for i, (title, labels) in enumerate(runs):
            def progress(fraction: float, message: str, i=i, title=title) -> None:
                bar.progress(min(1.0, (i + fraction) / len(runs)), text=f"{title}: {message}")

            labels = np.asarray(labels, dtype=np.int64)
            results[title] = _retrain_registry().accuracy(labels, epochs, progress=progress)
        bar.empty()
        st.session_state["ev_retrain_result"] = {"key": (retrain.labels_key(corrected), epochs), "acc": results}
    res = st.session_state.get("ev_retrain_result")
    if res and res["key"] == (retrain.labels_key(corrected), epochs):  # only for the labels shown above
        acc = res["acc"]
        c1, c2, c3 = st.columns(3)
        before = acc["noisy labels (as given)"]
        c1.metric("Test accuracy · noisy labels", f"{before:.1%}")
        for col, title in ((c2, "corrected labels"), (c3, "true labels")):
            diff = 100 * (acc[title] - before)
            col.metric(f"Test accuracy · {title}", f"{acc[title]:.1%}",
                       delta=f"{diff:+.1f} points" if abs(diff) >= 0.05 else None)
        st.caption(f"A fresh DigitsCNN per column, the demo's recipe, {epochs} epochs, same seed; "
                   "accuracy on the test split's true labels.")


# ---------------------------------------------------------------------------- page
#: the page's buttons: a press in a run that the router reruns is kept (common.ensure_router)
BUTTONS = ("ev_cp_button", "ev_retrain")


def main() -> None:
    common.ensure_router(keep=BUTTONS)
    who = common.require("evaluation", "open the Evaluation page")
    ws = common.current_workspace()
    st.title("Evaluation")
    if ws is None:
        st.stop()
    common.ensure_store(ws, "fast")
    truth = ws.is_mislabelled

    wanted = st.session_state.setdefault("ev_cp", set())  # fingerprints whose TracInCP pass was asked for
    with_cp = _cp_ready(ws) or ws.fingerprint in wanted
    if not with_cp and who.can("retrain"):
        if common.pressed("ev_cp_button", st.button("Add the all-layer TracInCP ranking (one pass over the training data)",
                                              key="ev_cp_button")):
            common.ensure_store(ws, "cp")
            wanted.add(ws.fingerprint)
            with_cp = True
    elif not _cp_ready(ws):
        common.ensure_store(ws, "cp")
    with st.spinner("Scoring every ranking…"):
        scores = _scores(ws.fingerprint, with_cp, ws)
    section_rankings(ws, scores, truth)
    if truth is not None and who.can("retrain"):
        section_retrain(ws, scores, truth)
    elif truth is not None:
        st.caption("Admins can retrain the model on corrected labels here.")


main()
