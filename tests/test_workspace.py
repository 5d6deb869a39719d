"""Workspace: TOML files, the demo, errors that name what is wrong, label overrides."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tracin_core import ReviewStore, TracInCPFast, Workspace
from tracin_core.engine.checkpoints import CheckpointError
from tracin_core.audit.datasets import load_dataset
from tracin_core.audit.models import DigitsCNN
from tracin_core.audit.workspace import DEMO_TOML, WorkspaceError

DEMO = DEMO_TOML.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return Workspace.demo(cache_dir=tmp_path_factory.mktemp("ws_cache"))


def test_demo_opens_with_checkpoint_learning_rates(demo):
    assert demo.name == "digits-demo"
    assert len(demo.checkpoints) == 6
    assert all(c.lr_source == "checkpoint" and c.learning_rate == pytest.approx(0.05) for c in demo.checkpoints)
    assert len(demo.train) == 1437 and len(demo.test) == 360
    assert demo.predictions("test")["correct"].mean() > 0.85
    truth = demo.is_mislabelled
    assert truth is not None and 0.08 < truth.mean() < 0.12


def test_workspace_influence_equals_the_engine(demo):
    res = demo.influence(3, k=6)
    assert list(res.proponents["rank"]) == list(range(1, 7))
    assert res.proponents["score"].is_monotonic_decreasing
    assert res.opponents["score"].is_monotonic_increasing
    x, y = demo.test[3]
    engine = TracInCPFast(DigitsCNN(), "fc2", demo.train, sorted(map(str, DEMO.glob("checkpoint-*.pt"))),
                          loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=500)
    scores = engine.influence((x.unsqueeze(0), torch.tensor([int(y)])))[0]
    top = torch.argsort(scores, descending=True)[:6].numpy()
    assert list(res.proponents["index"]) == list(top)
    assert np.allclose(res.proponents["score"], scores[top].double().numpy(), rtol=1e-5)
    assert np.allclose(demo.self_influence("fast"), engine.self_influence().double().numpy(), rtol=1e-5)


def test_uploaded_image_explains_the_prediction(demo):
    x, _ = demo.test[0]
    res = demo.influence(x, k=3)
    assert res.label is None and 0 <= res.predicted < 10 and 0 < res.probability <= 1
    assert len(res.proponents) == 3


def test_mislabel_scores_orientation(demo):
    methods = demo.mislabel_methods()
    assert "self_influence_fast" in methods
    for m in ["self_influence_fast", "loss_mean", None]:
        df = demo.mislabel_scores(m)
        assert list(df.columns) == ["index", "score", "rank"]
        assert df["rank"].iloc[0] == 1 and df["score"].iloc[0] == df["score"].max()
        assert sorted(df["index"]) == list(range(len(demo.train)))


def test_ranker_inputs_carry_the_input_sketch(demo):
    """The workspace's feature store keeps each training image's input sketch (the digits'
    8x8 pixels: 64 values, kept as they are) and the rankers receive it."""
    from tracin_core.engine.featurize import input_sketch

    inp = demo.ranker_inputs()
    x = torch.stack([demo.train[i][0] for i in range(len(demo.train))])
    assert inp.inputs is not None and inp.inputs.shape == (1437, 64)
    assert np.allclose(inp.inputs, input_sketch((x,)).numpy())
    assert np.allclose(inp.inputs, x.reshape(1437, -1).numpy())


def _queue_found(queue, truth):
    """(share of all mislabels in the first 10% of the queue, mislabels among its first 20)."""
    order = np.asarray(queue)
    first = order[: round(0.1 * len(truth))]
    return truth[first].sum() / truth.sum(), int(truth[order[:20]].sum())


def test_mislabel_queue_finds_the_demos_mislabels_first(demo):
    """The demo knows which 10% of its labels it corrupted: the default queue must put
    most of them in its first 10% (a reversed queue would put almost none there)."""
    truth = demo.is_mislabelled
    assert truth is not None and truth.sum() == 144
    found, top20 = _queue_found(demo.mislabel_scores()["index"], truth)
    assert found >= 0.9 and top20 >= 18
    for method in ("self_influence_fast", "loss_mean"):
        found, _ = _queue_found(demo.mislabel_scores(method)["index"], truth)
        assert found >= 0.75, method


def test_cli_mislabels_queue_against_ground_truth(tmp_path, demo):
    from tracin_core.__main__ import main

    out = tmp_path / "queue.csv"
    assert main(["mislabels", "demo", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    import pandas as pd

    queue = pd.read_csv(out)
    assert list(queue.columns) == ["index", "score", "rank"]
    assert list(queue["rank"]) == list(range(1, len(queue) + 1))
    assert queue["score"].is_monotonic_decreasing
    found, top20 = _queue_found(queue["index"], demo.is_mislabelled)
    assert found >= 0.9 and top20 >= 18
    assert list(queue["index"]) == list(demo.mislabel_scores()["index"])


def test_concurrent_queries_agree(demo):
    expected = demo.influence(5, k=4).proponents["index"].tolist()
    results, errors = [], []

    def worker():
        try:
            results.append(demo.influence(5, k=4).proponents["index"].tolist())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [expected] * 4


def _copy_demo(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    shutil.copytree(DEMO, folder)
    return folder


def test_toml_errors_name_the_problem(tmp_path):
    folder = _copy_demo(tmp_path)
    toml = (folder / "workspace.toml").read_text()
    cases = {
        "no_model.toml": (toml.replace("[model]", "[modelx]"), r"\[model\]"),
        "bad_factory.toml": (toml.replace("tracin_core.audit.models:DigitsCNN", "nosuchpkg.mod:Net"), "nosuchpkg"),
        "bad_layer.toml": (toml.replace('final_fc_layer = "fc2"', 'final_fc_layer = "fc9"'), "fc9"),
        "bad_kind.toml": (toml.replace('kind = "digits"\nsplit = "train"', 'kind = "nope"\nsplit = "train"'), "nope"),
        "bad_glob.toml": (toml.replace('"checkpoint-*.pt"', '"missing-*.pt"'), "missing-"),
        "syntax.toml": ("name = [", "TOML"),
    }
    for name, (text, pattern) in cases.items():
        (folder / name).write_text(text)
        with pytest.raises((WorkspaceError, ValueError), match=pattern):
            Workspace.from_toml(folder / name, cache_dir=tmp_path / "c")
    with pytest.raises(WorkspaceError, match="no such workspace file"):
        Workspace.from_toml(folder / "absent.toml")
    with pytest.raises(WorkspaceError, match=r"is a folder; give the workspace \.toml file inside it: it holds "
                                             r"bad_factory\.toml"):
        Workspace.from_toml(folder)  # a folder given as the workspace file (#13 item 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceError, match="holds no .toml file"):
        Workspace.from_toml(tmp_path / "empty")
    (folder / "checkpoint-10.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="checkpoint-10.pt"):
        Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")


def test_corrected_labels_round_trip(tmp_path):
    folder = _copy_demo(tmp_path)
    ws = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    given = ws.train.labels.tolist()
    store = ReviewStore(tmp_path / "r.sqlite", workspace=ws.name, data_hash=ws.data_hash)
    store.record(0, "ann", "relabel", (given[0] + 1) % 10, given_label=given[0])
    store.record(1, "ann", "accept", given_label=given[1])
    store.record(2, "ann", "exclude", given_label=given[2])
    store.export_corrected_labels(folder / "corrected.csv", given)
    text = (folder / "workspace.toml").read_text().replace("labels_override.csv", "corrected.csv")
    (folder / "corrected.toml").write_text(text)
    again = Workspace.from_toml(folder / "corrected.toml", cache_dir=tmp_path / "c")
    assert again.train.labels[0].item() == (given[0] + 1) % 10
    assert again.train.labels[1:].tolist() == given[1:]
    assert bool(again.train.excluded[2])
    assert again.data_hash != ws.data_hash  # other labels: the review store can warn


def test_corrected_labels_with_flags_exclude_or_keep(tmp_path, monkeypatch):
    """Review flags (excluded, ambiguous, outlier, duplicate of #N) in the corrected labels:
    the workspace file chooses to exclude those items or keep them with their given label."""
    folder = _copy_demo(tmp_path)
    ws = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    given = ws.train.labels.tolist()
    store = ReviewStore(tmp_path / "r.sqlite", workspace=ws.name, data_hash=ws.data_hash)
    store.record(0, "ann", "relabel", (given[0] + 1) % 10, given_label=given[0])
    store.record(1, "ann", "ambiguous", given_label=given[1])
    store.record(2, "ann", "outlier", given_label=given[2])
    store.record(3, "ann", "duplicate", given_label=given[3], duplicate_of=40)
    store.record(4, "ann", "exclude", given_label=given[4])
    store.export_corrected_labels(folder / "corrected.csv", given)
    base = (folder / "workspace.toml").read_text().replace("labels_override.csv", "corrected.csv")
    flagged_line = 'labels_override = "corrected.csv"'
    assert flagged_line in base

    def open_with(name: str, extra: str = "", **kw) -> Workspace:
        (folder / name).write_text(base.replace(flagged_line, flagged_line + extra))
        return Workspace.from_toml(folder / name, cache_dir=tmp_path / "c", **kw)

    default = open_with("default.toml")
    excluded = open_with("exclude.toml", '\nflagged = "exclude"')
    kept = open_with("keep.toml", '\nflagged = "keep"')
    only_dups = open_with("dups.toml", '\nflagged = ["duplicate", "excluded"]')
    for w in (default, excluded, kept, only_dups):
        assert w.train.labels[0].item() == (given[0] + 1) % 10
        assert w.train.labels[1:].tolist() == given[1:]  # flagged items: the given label
        assert len(w.train) == len(given)  # indices stay stable
    assert excluded.train.excluded.nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert torch.equal(default.train.excluded, excluded.train.excluded)
    assert default.data_hash == excluded.data_hash
    assert not bool(kept.train.excluded.any())
    assert only_dups.train.excluded.nonzero().flatten().tolist() == [3, 4]
    assert len({excluded.data_hash, kept.data_hash, only_dups.data_hash}) == 3
    # the keyword (the CLI's --flagged) wins over the file
    assert not bool(open_with("exclude2.toml", '\nflagged = "exclude"', flagged="keep").train.excluded.any())
    with pytest.raises(WorkspaceError, match="flagged must be 'exclude', 'keep'"):
        open_with("bad.toml", '\nflagged = "drop"')

    # the command line passes --flagged on to the workspace file
    from tracin_core import __main__ as cli

    seen = {}

    def fake_from_toml(path, **kw):
        seen.update(kw)
        raise ValueError("stop here")

    monkeypatch.setattr(Workspace, "from_toml", staticmethod(fake_from_toml))
    assert cli.main(["mislabels", str(folder / "keep.toml"), "--flagged", "exclude"]) == 2
    assert seen["flagged"] == "exclude"
    assert cli.main(["mislabels", str(folder / "keep.toml")]) == 2
    assert seen["flagged"] is None  # the file's choice
    with pytest.raises(SystemExit):
        cli.main(["mislabels", str(folder / "keep.toml"), "--flagged", "drop"])


def test_constructor_with_uploaded_bytes(tmp_path):
    data = [(p.name, p.read_bytes()) for p in sorted(DEMO.glob("checkpoint-*.pt"))[:2]]
    ws = Workspace(name="up", model_factory=DigitsCNN, final_fc_layer="fc2", checkpoints=data,
                   train=load_dataset("digits", split="train"), test=load_dataset("digits", split="test"),
                   learning_rates=[0.5, 2.0], cache_dir=tmp_path)
    assert ws.learning_rates == [0.5, 2.0]
    assert all(c.lr_source == "workspace" for c in ws.checkpoints)
    assert len(ws.influence(0, k=2).proponents) == 2
    with pytest.raises(CheckpointError, match="bad.pt"):
        Workspace(name="bad", model_factory=DigitsCNN, final_fc_layer="fc2", checkpoints=[("bad.pt", b"junk")],
                  train=load_dataset("digits", split="train"), cache_dir=tmp_path)


def test_cli_self_influence_and_top_k(tmp_path, demo):
    from tracin_core.__main__ import main

    out = tmp_path / "si.csv"
    assert main(["self-influence", "demo", "--cache-dir", str(tmp_path / "c"), "--out", str(out)]) == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == 1437 and np.allclose(df["self_influence"], demo.self_influence("fast"), rtol=1e-5)
    out2 = tmp_path / "top.csv"
    assert main(["top-k", "demo", "--test-index", "0", "1", "-k", "4", "--opponents",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(out2)]) == 0
    top = pd.read_csv(out2)
    assert len(top) == 8 and set(top["test_index"]) == {0, 1}
    assert main(["top-k", str(tmp_path / "none.toml"), "--test-index", "0"]) == 2


def test_explicit_checkpoint_list_keeps_its_order(tmp_path):
    files = sorted(DEMO.glob("checkpoint-*.pt"))
    order = [str(files[3]), str(files[0])]  # not sorted: the caller's order wins
    ws = Workspace(name="order", model_factory=DigitsCNN, final_fc_layer="fc2", checkpoints=order,
                   train=load_dataset("digits", split="train"), learning_rates=[0.1, 0.2], cache_dir=tmp_path)
    assert [c.name for c in ws.checkpoints] == order and ws.learning_rates == [0.1, 0.2]
    final = torch.load(order[-1], weights_only=True)["model_state_dict"]
    assert torch.equal(ws.model.state_dict()["fc2.weight"], final["fc2.weight"])


def test_train_predictions_from_the_store_equal_a_forward_pass(demo):
    df = demo.predictions("train")
    x = torch.stack([demo.train[i][0] for i in range(0, len(demo.train), 97)])
    pred, prob = demo.predict(x)
    assert np.array_equal(df["predicted"].to_numpy()[::97], pred)
    assert np.allclose(df["probability"].to_numpy()[::97], prob[np.arange(len(pred)), pred], atol=1e-5)


def test_store_ready_and_ensure_store(tmp_path):
    """The public store calls the pages use: ready only once the pass ran (here or on
    disk), ensure_store runs it once with progress, options give another engine."""
    ws = Workspace.demo(cache_dir=tmp_path)
    assert not ws.store_ready("fast") and not ws.store_ready("cp")
    seen = []
    ws.ensure_store("fast", progress=lambda done, total: seen.append(done))
    assert ws.store_ready("fast") and seen and seen[-1] == len(ws.train)
    seen.clear()
    ws.ensure_store("fast", progress=lambda done, total: seen.append(done))
    assert seen == []  # already done: no second pass
    again = Workspace.demo(cache_dir=tmp_path)  # a new instance, as a new process
    assert not again.store_ready("fast")  # not opened yet
    again.ensure_store("fast", progress=lambda done, total: seen.append(done))
    assert again.store_ready("fast") and seen == []  # read back from disk, no pass
    assert not ws.store_ready("cp", layers=["fc2"])
    ws.ensure_store("cp", layers=["fc2"])
    assert ws.store_ready("cp", layers=["fc2"]) and not ws.store_ready("cp")
    assert Workspace.ranking_needs_cp("self_influence_cp")
    assert not Workspace.ranking_needs_cp(None) and not Workspace.ranking_needs_cp("loss_mean")


def test_train_predictions_suggest_a_label_other_than_the_given_one(demo):
    pred = demo.train_predictions()
    assert list(pred.index) == list(pred["index"]) == list(range(len(demo.train)))
    probs = demo.class_probabilities("train")
    wrong = pred["predicted"] != pred["label"]
    assert (pred.loc[wrong, "suggested"] == pred.loc[wrong, "predicted"]).all()
    right = pred[~wrong]
    second = np.argsort(-probs, axis=1, kind="stable")[right.index, 1]
    assert (right["suggested"].to_numpy() == second).all()
    assert (pred["suggested"] != pred["label"]).all()
    rows = np.arange(len(pred))
    assert np.allclose(pred["suggested_probability"], probs[rows, pred["suggested"]])
    assert np.allclose(pred["given_probability"], probs[rows, pred["label"]])


def test_rankings_are_kept_beside_the_store(tmp_path, monkeypatch):
    """A ranking is computed once per workspace content and read back by later instances."""
    from tracin_core.audit import rankers as rk
    from tracin_core.audit.workspace import Workspace

    ws = Workspace.demo(cache_dir=tmp_path / "c")
    first = ws.mislabel_scores()
    files = list((ws.store_dir / "rankings").glob(f"{rk.DEFAULT_RANKER}-*.npy"))
    assert len(files) == 1
    calls = []
    real = rk.compute
    monkeypatch.setattr(rk, "compute", lambda name, inp: calls.append(name) or real(name, inp))
    again = Workspace.demo(cache_dir=tmp_path / "c").mislabel_scores()  # a new instance, as a new process
    assert calls == [] and again.equals(first)
    files[0].write_bytes(b"damaged")  # a damaged file is recomputed, not trusted
    assert Workspace.demo(cache_dir=tmp_path / "c").mislabel_scores().equals(first) and calls == [rk.DEFAULT_RANKER]
    Workspace.demo(cache_dir=tmp_path / "c").mislabel_scores("loss_mean")
    assert calls[-1] == "loss_mean"


def test_stored_rankings_are_keyed_by_the_ranking_code_only(tmp_path):
    """The stored rankings' code key changes with the rankers, the live re-ranking and
    ``Workspace.ranker_inputs``, not with an edit elsewhere in workspace.py (which made every
    stored 1M ranking stale before)."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO

    def key(edit) -> str:
        root = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(REPO / "tracin_core", root / "tracin_core", ignore=shutil.ignore_patterns("__pycache__"))
        if edit:
            path, old, new = edit
            text = (root / path).read_text()
            assert old is None or old in text
            (root / path).write_text(text + new if old is None else text.replace(old, new, 1))
        probe = "from tracin_core.audit.workspace import _rankers_code; print(_rankers_code())"
        out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    ws = "tracin_core/audit/workspace.py"
    base = key(None)
    assert key((ws, "def _write_atomic(", "# an unrelated edit\ndef _write_atomic(")) == base
    assert key((ws, "        eng = self._engine(\"fast\")\n        with self._lock:\n            store",
                "        eng = self._engine(\"fast\")  # edited\n        with self._lock:\n            store")) != base
    assert key(("tracin_core/audit/rankers.py", None, "# edited\n")) != base
    assert key(("tracin_core/audit/active_review.py", None, "# edited\n")) != base


def test_cli_precompute_warms_the_store_the_app_opens(tmp_path):
    """The CLI and the app share ``$TRACIN_CACHE/stores``: a store (and the default ranking)
    built ahead of time is the one the app opens."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = dict(os.environ, TRACIN_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "tracin_core", "precompute", "demo"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    stores = list((tmp_path / "stores").glob("digits-demo-*"))
    from tracin_core.audit.rankers import DEFAULT_RANKER

    assert len(stores) == 1 and list((stores[0] / "rankings").glob(f"{DEFAULT_RANKER}-*.npy"))
    # the app's path for the same environment (pages.common: settings.store_cache_dir()) and
    # a Workspace's default: both read TRACIN_CACHE when called
    probe = ("import pages.common, tracin_core.audit.settings as s, tracin_core.audit.workspace as w; "
             "print(s.store_cache_dir(), w.Workspace.demo().cache_dir)")
    app = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert app.stdout.split() == [str(tmp_path / "stores")] * 2, app.stderr


def test_stored_ranking_is_not_reused_when_labels_or_checkpoints_change(tmp_path):
    from tracin_core.audit.workspace import Workspace

    folder = _copy_demo(tmp_path)
    ws = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    base = ws.mislabel_scores()
    # another label override: another store, the ranking computed again on the new labels
    text = (folder / "labels_override.csv").read_text().splitlines()
    i, label = text[5].split(",")
    text[5] = f"{i},{(int(label) + 1) % 10}"
    (folder / "labels_override.csv").write_text("\n".join(text) + "\n")
    relabelled = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    assert relabelled.store_dir != ws.store_dir
    assert not (relabelled.store_dir / "rankings").exists()
    by_item = lambda t: t.sort_values("index")["score"].to_numpy()  # noqa: E731  (the table is in queue order)
    assert not np.array_equal(by_item(relabelled.mislabel_scores()), by_item(base))
    # one checkpoint fewer: another store again
    sorted(folder.glob("checkpoint-*.pt"))[0].unlink()
    fewer = Workspace.from_toml(folder / "workspace.toml", cache_dir=tmp_path / "c")
    assert fewer.store_dir not in (ws.store_dir, relabelled.store_dir)


def test_every_ranking_kept_for_the_evaluation_page(tmp_path, monkeypatch):
    from tracin_core.audit import rankers as rk
    from tracin_core.audit.workspace import Workspace

    calls = []
    real = rk.compute
    monkeypatch.setattr(rk, "compute", lambda name, inp: calls.append(name) or real(name, inp))
    first = Workspace.demo(cache_dir=tmp_path / "c").mislabel_score_arrays()
    assert sorted(calls) == sorted(rk.available(False)) == sorted(first)
    again = Workspace.demo(cache_dir=tmp_path / "c").mislabel_score_arrays()
    assert len(calls) == len(first)  # read back, nothing computed
    assert all(np.array_equal(first[n], again[n]) and not again[n].flags.writeable for n in first)
    with pytest.raises(ValueError, match="unknown ranking 'nope'"):
        Workspace.demo(cache_dir=tmp_path / "c").mislabel_score_arrays(["nope"])


def test_influence_of_chosen_rows_equals_the_score_matrix(demo):
    eng = demo._engine("fast")
    x, y = demo.test[3]
    batch = (torch.stack([x, demo.test[5][0]]), torch.tensor([int(y), int(demo.test[5][1])]))
    full = eng.influence(batch)
    idx = torch.tensor([[0, 7, 1436, 7], [5, 5, 100, 2]])
    assert torch.allclose(eng.influence_of(batch, idx), torch.gather(full, 1, idx), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        eng.influence_of(batch, idx[:1])
    with pytest.raises(ValueError, match="0..1436"):
        eng.influence_of(batch, idx + 1436)


def test_randproj_results_carry_exact_scores(demo):
    """Through the index, the candidates are scored exactly (TracInCPFast): the same
    training example gets the same score whatever the projection dimension, and the
    result agrees with the exact top-k where the index found it."""
    exact = demo.influence(7, k=8, method="fast")
    runs = [demo.influence(7, k=8, method="randproj", projection_dim=d) for d in (16, 256)]
    fast_scores = demo._engine("fast").influence(
        (demo.test[7][0].unsqueeze(0), torch.tensor([int(demo.test[7][1])])))[0].numpy()
    for res in runs:
        for table in (res.proponents, res.opponents):
            assert np.allclose(table["score"].to_numpy(), fast_scores[table["index"].to_numpy()], rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(res.proponents["score"].to_numpy()) <= 0)
        assert np.all(np.diff(res.opponents["score"].to_numpy()) >= 0)
    full = demo.influence(7, k=8, method="randproj", projection_dim=4096)  # no projection: the exact embedding
    assert full.proponents["index"].iloc[0] == exact.proponents["index"].iloc[0]
    assert len(set(full.proponents["index"]) & set(exact.proponents["index"])) >= 7
    common = set(runs[0].proponents["index"]) & set(runs[1].proponents["index"])
    assert common  # and a shared example scores the same at both dimensions
    i = next(iter(common))
    s = [float(r.proponents.set_index("index").loc[i, "score"]) for r in runs]
    assert s[0] == pytest.approx(s[1], rel=1e-6)


def test_review_signals_are_kept_beside_the_store(tmp_path, monkeypatch):
    """The live queue's signals are computed once per workspace content and read back by
    later instances (a Review page's first visit does not search neighbours again)."""
    from tracin_core.audit import active_review as ar

    ws = Workspace.demo(cache_dir=tmp_path / "c")
    first = ws.review_signals()
    # look-alikes: 10 neighbours at the early checkpoint, then 10 in the input sketch
    assert first.n == len(ws.train) and first.neighbours.shape == (len(ws.train), 20)
    files = list((ws.store_dir / "rankings").glob("*-signals.npz"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(ar, "build_signals", lambda *a, **k: calls.append(1))
    again = Workspace.demo(cache_dir=tmp_path / "c").review_signals()
    assert calls == [] and again.names == first.names
    for f in ("static", "static_logit", "features", "neighbours", "same_label", "pairs"):
        assert np.array_equal(getattr(again, f), getattr(first, f)), f
    files[0].write_bytes(b"damaged")
    monkeypatch.undo()
    redone = Workspace.demo(cache_dir=tmp_path / "c").review_signals()  # recomputed, not trusted
    assert np.array_equal(redone.features, first.features)


def test_ranking_status_says_stored_and_expensive(tmp_path, monkeypatch):
    """#12: ranking_status tells a page whether the ranking is kept and, if not, whether it
    is expensive (rows above RANKING_ASK_ROWS), with the CLI command; it computes nothing."""
    from tracin_core.audit import rankers as rk
    from tracin_core.audit import workspace as wsm

    ws = wsm.Workspace.demo(cache_dir=tmp_path / "c")
    calls = []
    monkeypatch.setattr(rk, "compute", lambda name, inp: calls.append(name))
    before = ws.ranking_status()
    assert (before.name, before.stored, before.rows, before.expensive) == (rk.DEFAULT_RANKER, False, len(ws.train), False)
    assert before.command == "python -m tracin_core mislabels demo" and calls == []
    monkeypatch.setattr(wsm, "RANKING_ASK_ROWS", len(ws.train) - 1)
    assert ws.ranking_status().expensive and ws.ranking_status("loss_mean").command.endswith("--method loss_mean")
    assert ws.ranking_status().estimated_seconds > 0
    monkeypatch.undo()
    ws.mislabel_scores()
    monkeypatch.setattr(wsm, "RANKING_ASK_ROWS", 10)
    after = ws.ranking_status()
    assert after.stored and not after.expensive
    with pytest.raises(ValueError, match="nope"):
        ws.ranking_status("nope")
