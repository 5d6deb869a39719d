"""The Evaluation page (AppTest, in process): rankings scored against the demo's ground
truth, the on-demand TracInCP ranking, a workspace without ground truth, and retraining
on corrected labels (1 epoch, set in the page's Epochs box)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REPO, isolated_app_cache, write_server_config
from tracin_core.audit import rankers as rk


PAGE = "pages/evaluation.py"


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    # the demo's workspace file without the ground truth: a copy pointing at the shipped assets
    demo = REPO / "assets" / "demo"
    text = (demo / "workspace.toml").read_text()
    text = text.replace('paths = "checkpoint-*.pt"', f'paths = "{demo}/checkpoint-*.pt"')
    text = text.replace('labels_override = "labels_override.csv"', f'labels_override = "{demo}/labels_override.csv"')
    text = text.split("[evaluation]")[0]
    listed = tmp_path_factory.mktemp("listed")
    (listed / "nogt.toml").write_text(text)
    config = write_server_config(listed / "tracin_audit.toml", workspaces={"nogt": listed / "nogt.toml"})
    with isolated_app_cache(tmp_path_factory.mktemp("apptest_eval_cache"), config=config) as cache:
        yield cache


def _open(app_cache, spec: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    if spec is not None:
        at.session_state["ws_spec"] = spec
    at.run()
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _charts(at) -> list:
    return at.get("plotly_chart")


def _values(v) -> np.ndarray:
    """A plotly JSON array: a list, or numpy's bytes in base64 (``{"dtype", "bdata"}``)."""
    import base64

    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def _table(at):
    for df in at.dataframe:
        v = df.value
        if "AUC" in getattr(v, "columns", []):
            return v
    raise AssertionError("no metrics table on the page")


def test_demo_rankings_are_scored(app_cache):
    at = _open(app_cache)
    assert "Evaluation" in [t.value for t in at.title]
    assert not at.error
    charts = _charts(at)
    assert len(charts) == 2  # ROC and found curves; precision@k and the histogram
    import json

    curves = json.loads(charts[0].proto.spec)["data"]
    for axis in ("x", "x2"):  # ROC left, found curve right: one colour per ranking, the default in black,
        traces = [t for t in curves if t.get("xaxis", "x") == axis and t.get("legendgroup") != "random"
                  and t["name"] != "perfect queue"]  # thinned curves
        colours = [t["line"]["color"] for t in traces]
        assert len(set(colours)) == len(colours) == len(rk.available(False))
        assert [t["line"]["color"] for t in traces if "(default)" in t["name"]] == ["#000000"]
        assert all(10 <= len(_values(t["x"])) <= 2 * 500 + 2 for t in traces)
        # one legend for both: a ranking's two curves share its legend entry (a click hides both)
        assert [t["legendgroup"] for t in traces] == list(rk.available(False))
        assert all(t.get("showlegend", True) == (axis == "x") for t in traces)
    bars = json.loads(charts[1].proto.spec)["data"]
    precision = [t for t in bars if t.get("xaxis", "x") == "x"]
    assert len(precision) == 1 and precision[0]["orientation"] == "h"
    assert len(precision[0]["y"]) == len(rk.available(False))  # one bar per ranking
    hist = [t for t in bars if t.get("xaxis") == "x2"]
    assert [t["type"] for t in hist] == ["bar", "bar"]  # counted server-side
    assert sum(_values(t["y"]).sum() for t in hist) == 1437
    table = _table(at)
    names = {n.replace(" (default)", "") for n in table["ranking"]}
    assert names == set(rk.available(False))  # TracInCP only after its button
    assert table["ranking"].str.endswith("(default)").sum() == 1
    assert table["AUC"].between(0.5, 1.0).all()
    assert table["found@10%"].between(0.0, 1.0).all() and table["found@20%"].between(0.0, 1.0).all()
    assert (table["found@20%"] >= table["found@10%"]).all()
    default = table[table["ranking"] == f"{rk.DEFAULT_RANKER} (default)"].iloc[0]
    assert default["AUC"] > 0.99 and default["found@20%"] > 0.95  # the shipped demo
    k = at.slider(key="ev_k")
    assert k.value == 144  # the demo's number of mislabels
    assert f"precision@{k.value}" in table.columns
    k.set_value(20).run()
    assert not at.exception
    assert "precision@20" in _table(at).columns

    # all-layer TracInCP: computed behind its button, then listed
    at.button(key="ev_cp_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = _table(at)
    assert "self_influence_cp" in set(table["ranking"])
    assert table["AUC"].between(0.5, 1.0).all()


def test_retrain_on_corrected_labels(app_cache):
    at = _open(app_cache)
    assert at.number_input(key="ev_epochs").value == 30  # the default; 1 keeps the test short
    at.number_input(key="ev_epochs").set_value(1).run()
    assert at.number_input(key="ev_epochs").value == 1
    # the review store has no decisions: corrected = given
    at.button(key="ev_retrain").click().run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Test accuracy · noisy labels", "Test accuracy · corrected labels",
                            "Test accuracy · true labels"}
    for v in metrics.values():
        assert 0.0 < float(v.rstrip("%")) <= 100.0
    assert metrics["Test accuracy · noisy labels"] == metrics["Test accuracy · corrected labels"]

    # a perfect reviewer of the default queue's first 10%: labels are fixed
    at.radio(key="ev_source").set_value("a perfect reviewer of the queue").run()
    assert not at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "labels fixed" in caption
    fixed = int(caption.split(" labels fixed")[0].split()[-1].replace(",", ""))
    assert fixed >= 100  # most of the 144 wrong labels are in the first 10% of the queue
    at.button(key="ev_retrain").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.metric) == 3


def test_review_decisions_feed_the_retraining(app_cache):
    at = _open(app_cache)
    from pages import common
    from tracin_core import Workspace

    ws = Workspace.demo(cache_dir=app_cache / "stores")
    store = common._review_store(str(app_cache / "reviews.sqlite"), ws.name, ws.data_hash)
    wrong = np.flatnonzero(ws.is_mislabelled)[:3]
    for i in wrong:
        store.record(int(i), "tester", "relabel", new_label=int(ws.ground_truth[i]))
    at.run()
    assert not at.exception
    caption = " ".join(c.value for c in at.caption)
    assert "3 labels fixed" in caption and "141 wrong labels left" in caption


def test_without_ground_truth_only_the_histogram(app_cache):
    at = _open(app_cache, {"kind": "listed", "name": "nogt"})
    assert not at.error, [e.value for e in at.error]
    assert any("No ground truth" in i.value for i in at.info)
    assert len(_charts(at)) == 1
    assert not [df for df in at.dataframe if "AUC" in getattr(df.value, "columns", [])]
    assert not [b for b in at.get("button") if getattr(b, "key", None) == "ev_retrain"]
