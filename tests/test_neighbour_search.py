"""Neighbour search behind the neighbourhood rankings: exact below a size, HNSW above it
with a recall measured against exact search, the record kept beside a ranking; chart
curves thinned without changing their shape."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from tracin_core.audit import rankers as rk


def _clusters(n: int = 3000, dim: int = 16, centres: int = 30, seed: int = 0) -> np.ndarray:
    """Clustered rows (what final-layer inputs look like), no exact ties."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    return (c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def _exact_sets(x: np.ndarray, k: int) -> list[set[int]]:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return [set(row) for row in np.argsort(-sim, axis=1, kind="stable")[:, :k]]


def test_auto_is_exact_up_to_the_threshold_and_hnsw_above(monkeypatch):
    x = _clusters()
    rk._NN_CACHE.clear()
    with rk.recording_searches() as log:
        exact = rk.nearest_neighbours(x, 10)
    assert [s.method for s in log] == ["exact"] and log[0].recall == 1.0 and log[0].n == len(x)
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", 1000)
    with rk.recording_searches() as log:
        approx = rk.nearest_neighbours(x, 10)
        assert np.array_equal(rk.nearest_neighbours(x, 10), approx)  # memoised: recorded once
    assert [s.method for s in log] == ["hnsw"] and len(log[0].key) == 16
    info = log[0]
    assert info.sample == rk.RECALL_SAMPLE and info.links == rk.HNSW_LINKS and info.k == 10
    # the recall it reports is the recall it has, measured here on every row
    truth = _exact_sets(x, 10)
    full = np.mean([len(set(a) & t) / 10 for a, t in zip(approx, truth)])
    assert info.recall >= rk.TARGET_RECALL and abs(info.recall - full) < 0.03
    assert approx.shape == exact.shape and approx.dtype == np.int64
    assert not (approx == np.arange(len(x))[:, None]).any()  # never the row itself
    assert all(len(set(r)) == 10 for r in approx)  # k distinct neighbours per row
    # deterministic: a fresh search (memo cleared) gives the same neighbours
    rk._NN_CACHE.clear()
    assert np.array_equal(rk.nearest_neighbours(x, 10, method="hnsw"), approx)


def test_hnsw_calibrates_its_width_until_the_recall_is_reached(monkeypatch):
    x = _clusters(n=2000, dim=32, centres=200, seed=3)
    rk._NN_CACHE.clear()
    monkeypatch.setattr(rk, "HNSW_LINKS", 4)  # a poor graph: the narrowest search falls short
    monkeypatch.setattr(rk, "HNSW_BUILD_WIDTH", 8)
    with rk.recording_searches() as log:
        rk.nearest_neighbours(x, 10, method="hnsw")
    assert log[0].width > 11 and log[0].recall >= rk.TARGET_RECALL
    rk._NN_CACHE.clear()


def test_hnsw_widens_when_the_reported_recall_falls_short(monkeypatch):
    """The calibration stops too early (a margin far below the target): the recall check on
    the other sample sees the shortfall and the search is redone twice as wide."""
    x = _clusters(n=2000, dim=32, centres=200, seed=3)
    rk._NN_CACHE.clear()
    monkeypatch.setattr(rk, "HNSW_LINKS", 8)  # a poor graph: recall 0.83 at width 11, 0.95 at 88
    monkeypatch.setattr(rk, "HNSW_BUILD_WIDTH", 8)
    monkeypatch.setattr(rk, "HNSW_WIDENINGS", 6)
    monkeypatch.setattr(rk, "CALIBRATION_MARGIN", -1.0)  # the first width passes the calibration
    calls = []
    real = rk._hnsw_rows
    monkeypatch.setattr(rk, "_hnsw_rows", lambda *a: calls.append(a[-1]) or real(*a))
    with rk.recording_searches() as log:
        found = rk.nearest_neighbours(x, 10, method="hnsw")
    assert calls[0] == 11 and log[0].width in (22, 44, 88, 176, 352) and log[0].width == max(calls)
    assert log[0].recall >= rk.TARGET_RECALL
    assert rk.sampled_recall(x, found)[0] == log[0].recall  # the neighbours returned are the widest search's
    rk._NN_CACHE.clear()


def test_sampled_recall_counts_ties_and_misses():
    x = _clusters(n=400, dim=8)
    exact = rk.nearest_neighbours(x, 5, method="exact")
    assert rk.sampled_recall(x, exact, sample=100) == (1.0, 100)
    wrong = exact.copy()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    wrong[::2, 0] = np.argmin(u @ u.T, axis=1)[::2]  # every other row: its first neighbour is its farthest row
    recall, rows = rk.sampled_recall(x, wrong, sample=400)
    assert rows == 400 and recall == pytest.approx(1 - 200 / (400 * 5))
    # duplicates: any of several equally near rows is a true neighbour
    dup = np.repeat(_clusters(n=50, dim=8), 4, axis=0)
    found = rk.nearest_neighbours(dup, 3, method="exact")[:, ::-1].copy()  # same rows, another order
    assert rk.sampled_recall(dup, found, sample=200)[0] == 1.0


def test_ranking_keeps_its_neighbour_search_record(tmp_path, monkeypatch):
    from tracin_core.audit.workspace import Workspace

    rk._NN_CACHE.clear()
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", 500)  # the demo's 1,437 rows go through HNSW
    ws = Workspace.demo(cache_dir=tmp_path / "c")
    assert ws.ranking_searches() == []  # nothing computed yet
    scores = ws.mislabel_scores()
    searches = Workspace.demo(cache_dir=tmp_path / "c").ranking_searches()  # read back from disk
    assert searches and {s.method for s in searches} == {"hnsw"}  # one per checkpoint it looks at
    assert all(s.n == len(scores) and s.recall >= rk.TARGET_RECALL for s in searches)
    assert "recall" in searches[0].describe() and "1,437 rows" in searches[0].describe()
    assert ws.ranking_searches("loss_mean") == []
    # the graph search's ranking is close to the exact one's
    rk._NN_CACHE.clear()
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", 10**9)
    exact = rk.compute(None, ws.ranker_inputs())
    truth = ws.is_mislabelled
    by_index = scores.sort_values("index")["score"].to_numpy()
    assert abs(rk.roc_auc(by_index, truth) - rk.roc_auc(exact, truth)) < 0.005


def test_thin_curve_keeps_the_shape():
    rng = np.random.default_rng(0)
    truth = rng.random(20_000) < 0.1
    scores = rng.random(20_000) + truth
    x, y = rk.found_curve(scores, truth)
    tx, ty = rk.found_curve(scores, truth, points=200)
    assert len(tx) <= 2 * 200 + 2 and (tx[0], ty[0], tx[-1], ty[-1]) == (x[0], y[0], x[-1], y[-1])
    assert np.all(np.diff(tx) > 0) and np.all(np.diff(ty) >= 0)
    # every kept point is a point of the full curve, and the gaps are small
    pos = np.searchsorted(x, tx)
    assert np.array_equal(x[pos], tx) and np.array_equal(y[pos], ty)
    assert np.diff(tx).max() <= 1.0 / 199 + 1.0 / 20_000
    fpr, tpr, _ = roc_curve(truth, scores)
    assert all(np.array_equal(a, b) for a, b in zip(rk.roc_points(scores, truth), (fpr, tpr)))
    f, t = rk.roc_points(scores, truth, points=100)
    assert len(f) <= 202 and (f[0], t[0], f[-1], t[-1]) == (fpr[0], tpr[0], fpr[-1], tpr[-1])
    assert np.trapezoid(t, f) == pytest.approx(rk.roc_auc(scores, truth), abs=0.01)
    short = np.linspace(0, 1, 50)
    assert rk.thin_curve(short, short, 100)[0] is short or np.array_equal(rk.thin_curve(short, short, 100)[0], short)


def test_several_searches_side_by_side_match_one_at_a_time(monkeypatch):
    xs = [_clusters(n=1500, dim=16, seed=s) for s in range(3)]
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", 500)
    rk._NN_CACHE.clear()
    monkeypatch.setenv("TRACIN_SEARCH_THREADS", "3")
    together = rk.nearest_neighbours_many(xs, 10)
    rk._NN_CACHE.clear()
    monkeypatch.setenv("TRACIN_SEARCH_THREADS", "1")
    alone = [rk.nearest_neighbours(x, 10) for x in xs]
    rk._NN_CACHE.clear()
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))  # threads never change what is found
    monkeypatch.setenv("TRACIN_SEARCH_THREADS", "two")
    with pytest.raises(ValueError, match="TRACIN_SEARCH_THREADS"):
        rk.search_threads()


def test_exact_search_blocks_do_not_change_the_result(monkeypatch):
    import torch

    x = rk._unit_rows(_clusters(n=600, dim=8))
    whole = rk._exact_rows(torch.from_numpy(x), np.arange(600), 5)
    monkeypatch.setattr(rk, "EXACT_BLOCK_ELEMENTS", 600 * 7)  # blocks of 7 rows
    blocks = rk._exact_rows(torch.from_numpy(x), np.arange(600), 5)
    assert np.array_equal(whole[0], blocks[0]) and np.allclose(whole[1], blocks[1])


def _noisy_inputs(n: int = 600, classes: int = 4, seed: int = 0) -> rk.RankerInputs:
    """Clustered features, 15% of labels flipped; checkpoint c predicts the flipped labels
    for a growing share of them (0%, 50%, 90%: memorisation over training)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, n)
    centres = rng.normal(scale=3.0, size=(classes, 8))
    feats = np.stack([centres[true] + rng.normal(size=(n, 8)) for _ in range(3)]).astype(np.float32)
    labels = true.copy()
    flip = rng.random(n) < 0.15
    labels[flip] = (true[flip] + rng.integers(1, classes, flip.sum())) % classes
    logits = np.zeros((3, n, classes))
    for c, share in enumerate((0.0, 0.5, 0.9)):
        pred = true.copy()
        learnt = flip & (rng.random(n) < share)
        pred[learnt] = labels[learnt]
        logits[c, np.arange(n), pred] = 3.0
    si = np.ones((3, n))
    return rk.RankerInputs(logits, labels, np.full(3, 0.1), si, None, feats)


def test_memorisation_is_estimated_on_a_sample_above_the_exact_size(monkeypatch):
    inp = _noisy_inputs()
    full = rk.memorisation(inp)
    n = len(inp.labels)
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", n - 1)
    monkeypatch.setattr(rk, "RECALL_SAMPLE", n)  # the "sample" is every row: the same shares
    rk._NN_CACHE.clear()
    assert np.array_equal(rk.memorisation(inp), full)
    monkeypatch.setattr(rk, "RECALL_SAMPLE", n // 4)  # about half the rows: close, not equal
    monkeypatch.setattr(rk, "CALIBRATION_SAMPLE", n // 4)
    half = rk.memorisation(inp)
    rk._NN_CACHE.clear()
    assert np.abs(half - full).max() < 0.15 and full.max() > 0.2


def test_memorisation_reuses_the_searches_samples(monkeypatch):
    """Above the exact size, the first checkpoint's sampled rows were searched exactly by the
    graph search's calibration and recall check: memorisation searches only the others."""
    inp = _noisy_inputs()
    n = len(inp.labels)
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", n - 1)
    monkeypatch.setattr(rk, "RECALL_SAMPLE", 100)
    monkeypatch.setattr(rk, "CALIBRATION_SAMPLE", 100)
    rk._NN_CACHE.clear()
    searched = []
    exact = rk._exact_rows
    monkeypatch.setattr(rk, "_exact_rows", lambda t, rows, k, chunk=2048: searched.append(len(rows)) or exact(t, rows, k, chunk))
    rk.spread_neighbours(inp)
    before = len(searched)
    assert before >= 2 * 3  # calibration and recall samples of three searches
    shares = rk.memorisation(inp)
    assert searched[before:] == [100, 100] * (rk.n_early(3) - 1)  # checkpoint 0's samples are reused
    rk._NN_CACHE.clear()
    monkeypatch.setattr(rk, "_exact_rows", exact)
    assert np.array_equal(rk.memorisation(inp), shares)  # the same shares without the searches before


@pytest.mark.parametrize("ties", [False, True])
def test_queue_curves_match_the_one_metric_at_a_time_functions(ties):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(1)
    truth = rng.random(3000) < 0.1
    scores = rng.random(3000) + truth
    if ties:
        scores = np.round(scores, 1)  # long runs of equal scores: ties count half, in index order
    q = rk.queue_curves(scores, truth)
    assert q.auc == pytest.approx(rk.roc_auc(scores, truth), abs=1e-12)
    assert (q.found10, q.found20) == (rk.found_at(scores, truth, 0.1), rk.found_at(scores, truth, 0.2))
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    assert np.allclose(q.roc[0], fpr) and np.allclose(q.roc[1], tpr)
    x, y = rk.found_curve(scores, truth)
    assert np.array_equal(q.found[0], x) and np.allclose(q.found[1], y)
    for k in (1, 17, 300, 3000):
        assert q.precision_at(k) == rk.precision_at(scores, truth, k)
    assert np.isnan(q.precision_at(0))
    thin = rk.queue_curves(scores, truth, points=50)
    assert len(thin.found[0]) <= 102 and thin.auc == q.auc


def test_exact_search_matches_brute_force_with_query_and_column_blocks(monkeypatch):
    """Column blocks smaller than k, query blocks of 5 rows, rows given in any order: the
    k nearest other rows and their similarities are those of a full argsort."""
    import torch

    x = rk._unit_rows(_clusters(n=300, dim=6, seed=3))
    rows = np.random.default_rng(1).permutation(300)[:40]
    sims = x[rows] @ x.T
    sims[np.arange(len(rows)), rows] = -np.inf
    want = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    monkeypatch.setattr(rk, "EXACT_QUERY_BLOCK", 5)
    monkeypatch.setattr(rk, "EXACT_BLOCK_ELEMENTS", 5 * 4)  # 4 columns a block: fewer than k
    idx, got = rk._exact_rows(torch.from_numpy(x), rows, 6)
    assert np.allclose(got, np.take_along_axis(sims, want, 1), atol=1e-6)
    assert np.array_equal(idx, want)
    assert not (idx == rows[:, None]).any()


def test_locality_order_is_a_seeded_permutation_that_puts_similar_rows_together():
    x = rk._unit_rows(_clusters(n=5000, dim=12, centres=40, seed=4))
    order = rk.locality_order(x, leaf=64)
    assert np.array_equal(np.sort(order), np.arange(len(x)))
    assert np.array_equal(order, rk.locality_order(x, leaf=64))  # deterministic
    assert not np.array_equal(order, rk.locality_order(x, leaf=64, seed=1))
    shuffled = np.random.default_rng(0).permutation(len(x))
    def cos(o):
        return float((x[o[:-1]] * x[o[1:]]).sum(1).mean())
    assert cos(order) > cos(shuffled) + 0.3  # consecutive rows are alike
    assert np.array_equal(rk.locality_order(x[:50], leaf=64), np.arange(50))  # one leaf: nothing to order
