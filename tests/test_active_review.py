"""Live re-ranking and the estimate of the mislabels left (tracin_core.audit.active_review):
determinism given a decisions log, orientation of the evidence on tiny hand-made data,
reviewed items never re-entering the queue, the static fallback, and the interval of the
estimate on a synthetic calibrated example."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from tracin_core.audit import active_review as ar
from tracin_core.audit import rankers as rk


def clusters(seed: int = 0) -> tuple[ar.ReviewSignals, np.ndarray]:
    """Two look-alike groups of 30 items with the same given label, plus 60 others.

    Group A (items 0..29) is mislabelled, group B (30..59) is clean; the static score does
    not tell them apart (interleaved scores); the 60 others (60..119) score low and are
    clean. Neighbours: the 10 next items of the same group (cyclically)."""
    rng = np.random.default_rng(seed)
    n = 120
    static = np.empty(n)
    static[:60] = rng.permutation(np.linspace(1.0, 2.0, 60))  # A and B interleaved
    static[60:] = rng.uniform(0.0, 0.5, 60)
    labels = np.zeros(n, dtype=np.int64)
    labels[60:] = 1
    group = np.repeat(np.arange(4), 30)
    nbrs = np.stack([(np.arange(1, 11) + i % 30) % 30 + 30 * group[i] for i in range(n)])
    truth = np.zeros(n, dtype=bool)
    truth[:30] = True
    sig = ar.ReviewSignals(static=static, static_logit=ar._rank_logit(static), features=np.zeros((n, 5)),
                           neighbours=nbrs, same_label=labels[nbrs] == labels[:, None],
                           names=("a", "b", "c", "d", "e"))
    return sig, truth


def reviewed_head(sig: ar.ReviewSignals, truth: np.ndarray, k: int) -> dict[int, bool]:
    return {int(i): bool(truth[i]) for i in ar.queue_order(sig.static)[:k]}


def test_same_log_gives_bitwise_same_scores_whatever_its_order():
    sig, truth = clusters()
    log = reviewed_head(sig, truth, 30)
    shuffled = dict(sorted(log.items(), key=lambda kv: -kv[0]))
    assert list(shuffled) != list(log)
    a, b = ar.rerank(sig, log), ar.rerank(sig, shuffled)
    assert a.tobytes() == b.tobytes()
    ea, eb = ar.estimate_remaining(sig, log), ar.estimate_remaining(sig, shuffled)
    assert ea == eb
    # and again from scratch (no hidden state between calls)
    assert ar.rerank(sig, dict(log)).tobytes() == a.tobytes()
    # with the confusions' evidence too (sums over reviewed items, whatever their order)
    paired = dataclasses.replace(sig, pairs=np.arange(sig.n) % 3)
    assert ar.rerank(paired, log).tobytes() == ar.rerank(paired, shuffled).tobytes()


def test_confirmed_mislabels_raise_their_lookalikes_and_clean_ones_lower_them():
    sig, truth = clusters()
    log = reviewed_head(sig, truth, 30)  # about 15 of each group
    assert sum(log.values()) >= 10 and len(log) - sum(log.values()) >= 10
    live = ar.rerank(sig, log)
    open_a = [i for i in range(30) if i not in log]
    open_b = [i for i in range(30, 60) if i not in log]
    assert open_a and open_b
    # static: the two groups are interleaved; live: every open A item before every open B item
    assert min(live[open_a]) > max(live[open_b])
    assert not min(sig.static[open_a]) > max(sig.static[open_b])
    # the fitted weight of the look-alikes' confirmed rate: more mislabels there, higher
    coef = ar.fit(sig, log).coef  # ..., look-alikes' rate, look-alikes reviewed, confusion
    assert coef[-3] > 0


def test_neighbour_evidence_direct():
    """The look-alikes' evidence item by item: among the neighbours with the item's given
    label, confirmed mislabels and clean labels, their rate in log odds against the overall
    rate (shrunk with the pseudo-count), and the share of them reviewed; nothing without
    decisions."""
    sig, truth = clusters()
    n, k = sig.n, sig.neighbours.shape[1]
    assert all(np.all(x == 0) for x in ar.neighbour_evidence(sig, np.zeros(n, dtype=np.int8), 2.0))
    rng = np.random.default_rng(5)
    o = np.zeros(n, dtype=np.int8)
    seen = rng.choice(n, 50, replace=False)
    o[seen] = np.where(truth[seen], 1, -1)
    r = (o == 1).sum() / (o != 0).sum()
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    rate, reviewed = ar.neighbour_evidence(sig, o, 2.0)
    for i in range(n):
        same = [j for j, s in zip(sig.neighbours[i], sig.same_label[i]) if s]
        bad = sum(o[j] == 1 for j in same)
        clean = sum(o[j] == -1 for j in same)
        assert np.isclose(rate[i], logit((bad + 2.0 * r) / (bad + clean + 2.0)) - logit(r))
        assert np.isclose(reviewed[i], (bad + clean) / k)
    # a neighbour with another given label is no evidence
    other = dataclasses.replace(sig, same_label=np.zeros_like(sig.same_label))
    rate, reviewed = ar.neighbour_evidence(other, o, 2.0)
    assert np.allclose(rate, 0.0) and np.all(reviewed == 0)


def test_reviewed_items_never_reenter_the_queue():
    sig, truth = clusters()
    log = reviewed_head(sig, truth, 30)
    live = ar.rerank(sig, log)
    bad = [i for i, v in log.items() if v]
    clean = [i for i, v in log.items() if not v]
    assert np.all(live[bad] == 1.0) and np.all(live[clean] == 0.0)
    order = ar.queue_order(live, list(log))
    assert len(order) == sig.n - len(log)
    assert not set(order.tolist()) & set(log)
    assert set(order.tolist()) | set(log) == set(range(sig.n))


def test_too_little_evidence_keeps_the_static_order():
    sig, truth = clusters()
    log = reviewed_head(sig, truth, 12)  # fewer than 10 of one kind
    assert not ar.is_active(log)
    live = ar.rerank(sig, log)
    np.testing.assert_array_equal(ar.queue_order(live, list(log)), ar.queue_order(sig.static, list(log)))
    # no decisions at all: exactly the static order
    np.testing.assert_array_equal(ar.queue_order(ar.rerank(sig, {})), ar.queue_order(sig.static))


def test_outcomes_from_finals_and_errors():
    finals = pd.DataFrame({"item_id": [1, 2, 3, 4, 5],
                           "status": ["relabelled", "excluded", "accepted", "skipped", "conflict"]})
    assert ar.outcomes_from_finals(finals) == {1: True, 2: True, 3: False}
    assert ar.outcomes_from_finals(finals.iloc[:0]) == {}
    sig, _ = clusters()
    with pytest.raises(ValueError, match="outcomes"):
        ar.rerank(sig, {sig.n: True})
    with pytest.raises(ValueError, match="level"):
        ar.estimate_remaining(sig, {}, level=1.5)


def calibrated(seed: int, n: int = 4000) -> tuple[ar.ReviewSignals, np.ndarray]:
    """Scores whose rank logit s gives P(mislabelled) = σ(2 (s − 2)) exactly."""
    rng = np.random.default_rng(seed)
    static = rng.permutation(n).astype(float)
    s = ar._rank_logit(static)
    truth = rng.random(n) < 1 / (1 + np.exp(-2.0 * (s - 2.0)))
    sig = ar.ReviewSignals(static=static, static_logit=s, features=np.zeros((n, 1)),
                           neighbours=np.zeros((n, 0), dtype=np.int64), same_label=np.zeros((n, 0), dtype=bool),
                           names=("none",))
    return sig, truth


def test_estimate_covers_the_truth_on_a_calibrated_example_and_shrinks():
    covered, widths = 0, {0.05: [], 0.3: []}
    for seed in range(10):
        sig, truth = calibrated(seed)
        for share in widths:
            log = reviewed_head(sig, truth, int(share * sig.n))
            est = ar.estimate_remaining(sig, log)
            left = int(truth.sum()) - sum(log.values())
            assert est.reviewed == len(log) and est.found == sum(log.values())
            assert est.unreviewed == sig.n - len(log)
            assert est.remaining_low <= est.remaining <= est.remaining_high
            assert 0.0 <= est.precision_ahead_low <= est.precision_ahead <= est.precision_ahead_high <= 1.0
            covered += est.remaining_low <= left <= est.remaining_high
            widths[share].append(est.remaining_high - est.remaining_low)
    assert covered >= 17  # of 20 runs, nominal 90%
    assert np.mean(widths[0.3]) < np.mean(widths[0.05])


def test_build_signals_from_ranker_inputs():
    from tests.test_rankers import constructed

    inp, bad = constructed()
    static = rk.compute(None, inp)
    sig = ar.build_signals(static, inp, k=5)
    assert sig.features.shape == (len(static), len(sig.names))
    assert sig.neighbours.shape == (len(static), 5)
    assert np.all(np.isfinite(sig.features))
    # with no decisions, the queue is the static one: the known mislabel first
    assert int(ar.queue_order(ar.rerank(sig, {}))[0]) == bad
    with pytest.raises(ValueError, match="static"):
        ar.build_signals(static[:-1], inp)


def test_build_signals_with_an_input_sketch():
    """With an input sketch the look-alikes are the early checkpoints' neighbours followed by
    the sketch's (the default ranking's searches), and the sketch's neighbours' disagreement
    with the given label is one more signal; explicit neighbours are used alone."""
    from tests.test_rankers import _memorised_from_the_start

    inp, bad = _memorised_from_the_start(True)
    static = rk.compute(None, inp)
    sig = ar.build_signals(static, inp, k=5)
    early = rk.early_neighbours(inp, 5)[0]
    own = rk.input_neighbours(inp, 5)
    assert np.array_equal(sig.neighbours, np.hstack([early, own]))
    y = np.asarray(inp.labels)
    assert np.array_equal(sig.same_label, y[sig.neighbours] == y[:, None])
    col = list(sig.names).index("input_disagreement")
    shares = rk.neighbour_label_shares(inp, 5, neighbours=[own])
    want = ar._rank_logit(-shares[np.arange(len(y)), y])
    assert np.allclose(sig.features[:, col], (want - want.mean()) / want.std())
    assert int(ar.queue_order(ar.rerank(sig, {}))[0]) == bad  # no decisions: the static queue
    given = ar.build_signals(static, inp, k=5, neighbours=early)
    assert np.array_equal(given.neighbours, early) and "input_disagreement" not in given.names
    without = ar.build_signals(static, dataclasses.replace(inp, inputs=None), k=5)
    assert without.neighbours.shape == (len(y), 5) and "input_disagreement" not in without.names


def test_build_signals_above_the_exact_size_reuse_the_first_checkpoints_search(monkeypatch):
    from tests.test_neighbour_search import _noisy_inputs

    three = _noisy_inputs(n=400)
    order = [0, 2, 1, 0, 1, 2]  # six checkpoints: two early ones, whose neighbourhoods differ
    inp = rk.RankerInputs(three.logits[order], three.labels, np.full(6, 0.1), three.si_fast[order], None,
                          three.features[order])
    assert rk.n_early(6) == 2
    static = rk.compute(None, inp)
    first = rk.nearest_neighbours(rk.checkpoint_embeddings(inp, 0), 5)
    small = ar.build_signals(static, inp, k=5)  # below the size: every early checkpoint's neighbours
    col = list(small.names).index("neighbour_disagreement")
    assert np.array_equal(small.neighbours, first)
    monkeypatch.setattr(rk, "EXACT_SEARCH_MAX", len(static) - 1)
    big = ar.build_signals(static, inp, k=5)
    first = rk.nearest_neighbours(rk.checkpoint_embeddings(inp, 0), 5)  # now through the HNSW graph, like the ranking's
    assert np.array_equal(big.neighbours, first)
    y = np.asarray(inp.labels)
    shares = rk.neighbour_label_shares(inp, 5, neighbours=[first])
    expected = ar._rank_logit(-shares[np.arange(len(y)), y])
    assert not np.allclose(small.features[:, col], big.features[:, col])  # the second checkpoint left out
    standardised = (expected - expected.mean()) / max(expected.std(), 1e-12)
    assert np.allclose(big.features[:, col], standardised)


def test_estimate_with_nothing_and_everything_reviewed():
    sig, truth = clusters()
    none = ar.estimate_remaining(sig, {})
    assert none.reviewed == 0 and none.unreviewed == sig.n
    assert 0.0 <= none.remaining_low <= none.remaining_high <= sig.n
    everything = {i: bool(truth[i]) for i in range(sig.n)}
    done = ar.estimate_remaining(sig, everything)
    assert done.unreviewed == 0 and done.found == int(truth.sum()) and done.ahead == 0
    assert done.remaining == done.remaining_low == done.remaining_high == 0.0


def test_review_simulation_benchmark_runs_on_a_dump(tmp_path):
    """benchmarks/review_simulation.py on two tiny saved runs: the report has the tables."""
    from benchmarks import review_simulation as rs
    from tests.test_rankers import constructed

    for seed in (0, 1):
        inp, bad = constructed(seed=seed)
        clean = inp.labels.copy()
        clean[bad] = 0  # the constructed bad item is a class-0 item labelled 2
        np.savez(tmp_path / f"tiny_tutorial_0.1_{seed}.npz", logits=inp.logits, labels=inp.labels,
                 weights=inp.weights, si_fast=inp.si_fast, si_cp=inp.si_cp, features=inp.features,
                 inputs=inp.features[0], truth=clean)
    out = tmp_path / "report.md"
    assert rs.main([str(tmp_path), "--out", str(out), "--batch", "5"]) == 0
    text = out.read_text()
    assert "| tiny / tutorial / 10% | 2 | 36 (1) |" in text
    assert "## Targets (issue #11)" in text and "live queue, all runs and checkpoints" in text


def test_pair_evidence_is_leave_one_out_and_raises_a_confirmed_confusion():
    """Two confusions with the same static scores: reviewers confirm mislabels in one and
    clean labels in the other, so its unreviewed items move up and the other's down; an
    item's own answer never enters its own feature."""
    n = 200
    rng = np.random.default_rng(3)
    static = rng.permutation(np.linspace(0.0, 1.0, n))
    pairs = np.where(np.arange(n) % 2 == 0, 1, 2)  # even items: confusion 1, odd: confusion 2
    sig = ar.ReviewSignals(static=static, static_logit=ar._rank_logit(static), features=np.zeros((n, 1)),
                           neighbours=np.zeros((n, 0), dtype=np.int64), same_label=np.zeros((n, 0), dtype=bool),
                           names=("a",), pairs=pairs)
    log = {int(i): bool(i % 2 == 0) for i in ar.queue_order(static)[:60]}
    o = ar._outcome_vector(sig, log)
    got = ar.pair_evidence(sig, o, 5.0)
    # direct: the other reviewed items of the same confusion, shrunk towards the overall rate
    r = np.mean(list(log.values()))
    lg = lambda p: np.log(np.clip(p, 1e-3, 1 - 1e-3) / (1 - np.clip(p, 1e-3, 1 - 1e-3)))  # noqa: E731
    for i in range(n):
        others = [v for j, v in log.items() if j != i and pairs[j] == pairs[i]]
        want = lg((sum(others) + 5.0 * r) / (len(others) + 5.0)) - lg(r)
        assert np.isclose(got[i], want), i
    assert np.allclose(ar.pair_evidence(sig, np.zeros(n, dtype=np.int8), 5.0), 0)
    live = ar.rerank(sig, log)
    ahead = ar.queue_order(live, list(log))[:40]
    assert (pairs[ahead] == 1).mean() > 0.9  # the confirmed confusion comes first
    # without pairs: no such evidence, the static order among the unreviewed
    plain = ar.rerank(dataclasses.replace(sig, pairs=None), log)
    assert np.array_equal(ar.queue_order(plain, list(log)), ar.queue_order(static, list(log)))


def test_confusion_pairs_direct():
    from tests.test_rankers import constructed

    inp, _ = constructed(memorised=True)
    t = rk.checkpoint_trust(inp)
    p = np.exp(inp.logits) / np.exp(inp.logits).sum(-1, keepdims=True)
    pm = (t[:, None, None] * p).sum(0) / t.sum()
    y = inp.labels
    K = p.shape[2]
    want = [y[i] * K + max((c for c in range(K) if c != y[i]), key=lambda c: pm[i, c]) for i in range(len(y))]
    assert ar.confusion_pairs(inp).tolist() == want
