"""Mislabel rankers: orientation (a known mislabel ranks first), equality with direct
computations on a tiny model, the evaluation helpers, and the noise models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torch.utils.data import TensorDataset

from tracin_core.audit import demo
from tracin_core.audit import rankers as rk
from tracin_core.engine.tracin import TracInCP, TracInCPFast

ALL = list(rk.RANKERS)


# ----------------------------------------------------------------------------- constructed inputs
def constructed(memorised: bool = False, features: bool = True, seed: int = 0) -> tuple[rk.RankerInputs, int]:
    """Three well-separated classes; item ``bad`` carries a wrong label.

    The model predicts every item's cluster class with moderate confidence at every
    checkpoint; with ``memorised`` it has learnt the bad item's wrong label at the last
    checkpoint. Self-influence terms are ``‖a‖²‖δ‖²`` (all layers: twice that).
    """
    rng = np.random.default_rng(seed)
    C, K, per = 3, 3, 12
    true = np.repeat(np.arange(K), per)
    N = len(true)
    centres = np.eye(K, 6) * 5.0
    bad = 7  # a class-0 item
    labels = true.copy()
    labels[bad] = 2
    feats = np.stack([centres[true] + rng.normal(scale=0.3, size=(N, 6)) for _ in range(C)])
    logits = np.zeros((C, N, K))
    for c in range(C):
        conf = 1.0 + c  # confidence grows over training
        logits[c, np.arange(N), true] = conf + rng.uniform(0, 0.2, N)
    if memorised:
        logits[-1, bad] = [0.0, 0.0, 6.0]
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    delta = p - np.eye(K)[labels][None]
    si = (feats ** 2).sum(-1) * (delta ** 2).sum(-1)
    inp = rk.RankerInputs(logits, labels, np.array([0.1, 0.1, 0.1]), si, 2.0 * si, feats if features else None)
    return inp, bad


@pytest.mark.parametrize("name", ALL)
def test_orientation_known_mislabel_ranks_first(name):
    inp, bad = constructed()
    table = rk.score_table(rk.compute(name, inp))
    assert int(table["index"].iloc[0]) == bad, name
    assert int(table.loc[table["index"] == bad, "rank"].iloc[0]) == 1


@pytest.mark.parametrize("name", ["neighbour_vote", "knn_disagreement", "loss_early", "aum_early",
                                  "confidence_class_normalised", "self_influence_fast_early",
                                  "neighbour_vote_adaptive", "aum_adaptive", "loss_adaptive", "knn_spread",
                                  "probability_margin_sq_adaptive", "neighbour_margin_adaptive",
                                  "neighbour_margin_inputs", "combined"])
def test_early_rankers_find_a_memorised_mislabel(name):
    inp, bad = constructed(memorised=True)
    assert int(np.argmax(rk.compute(name, inp))) == bad
    # the final checkpoint alone is fooled
    assert int(np.argmax(rk.compute("loss_final", inp))) != bad


@pytest.mark.parametrize("name", sorted(rk.USES_FEATURES))
def test_neighbour_rankers_without_features_use_logits(name):
    # memorised: the adaptive rankers' checkpoint weights depend on the neighbourhoods too
    inp, bad = constructed(memorised=True, features=False)
    assert inp.features is None
    assert int(np.argmax(rk.compute(name, inp))) == bad
    without = rk.compute(name, inp)
    # without features, neighbourhoods are measured in the logits: passing the logits as
    # the features gives the same scores ...
    as_features = rk.RankerInputs(inp.logits, inp.labels, inp.weights, inp.si_fast, inp.si_cp,
                                  np.asarray(inp.logits))
    assert np.allclose(rk.compute(name, as_features), without)
    # ... and features with other neighbourhoods (random points) give other scores
    noise = np.random.default_rng(1).normal(size=(*np.shape(inp.logits)[:2], 6))
    random_features = rk.RankerInputs(inp.logits, inp.labels, inp.weights, inp.si_fast,
                                      inp.si_cp, noise)
    assert not np.allclose(rk.compute(name, random_features), without)


def test_registry_and_errors():
    assert rk.DEFAULT_RANKER in rk.RANKERS
    assert rk.COMBINATIONS <= set(rk.RANKERS) and rk.USES_FEATURES <= set(rk.RANKERS)
    assert all(isinstance(d, str) and d for _, d in rk.RANKERS.values())
    inp, _ = constructed()
    no_cp = rk.RankerInputs(inp.logits, inp.labels, inp.weights, inp.si_fast)
    # available() tells the truth: each listed ranking computes from such inputs, the
    # others refuse them; with the all-layer terms every ranking is available
    assert "self_influence_cp" not in rk.available(False)
    assert set(rk.available(True)) == set(rk.RANKERS) and len(rk.available(True)) == len(ALL)
    for has_cp, source in ((True, inp), (False, no_cp)):
        listed = rk.available(has_cp)
        for name in rk.RANKERS:
            if name in listed:
                scores = rk.compute(name, source)
                assert scores.shape == (len(inp.labels),) and np.all(np.isfinite(scores)), name
            else:
                with pytest.raises(ValueError):
                    rk.compute(name, source)
    assert np.array_equal(rk.compute(None, inp), rk.compute(rk.DEFAULT_RANKER, inp))
    with pytest.raises(ValueError, match="unknown ranking"):
        rk.compute("nope", inp)
    with pytest.raises(ValueError, match="all-layer"):
        rk.compute("self_influence_cp", no_cp)
    # the first third rounded to the nearest count, at least one: 4/3 -> 1 (not up to 2),
    # 5/3 -> 2 (not down to 1), 7/3 -> 2, 8/3 -> 3
    assert [rk.n_early(n) for n in range(1, 10)] == [1, 1, 1, 1, 2, 2, 2, 3, 3]


# ----------------------------------------------------------------------------- a tiny real model
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    x = torch.randn(30, 5)
    y = torch.randint(0, 3, (30,))
    states = []
    for c in range(6):
        torch.manual_seed(10 + c)
        states.append({k: v.clone() for k, v in Tiny().state_dict().items()})
    lrs = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05]

    def load(model, i):
        model.load_state_dict(states[i])
        return lrs[i]

    ds = TensorDataset(x, y)
    common = dict(checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=7)
    fast = TracInCPFast(Tiny(), "fc2", ds, list(range(6)), store_outputs=True, store_input_sketch=True, **common)
    cp = TracInCP(Tiny(), ds, list(range(6)), **common)
    store, cstore = fast._train_store(), cp._train_store()
    inp = rk.RankerInputs(
        logits=np.stack([store.outputs(c).double().numpy() for c in range(6)]), labels=y.numpy(),
        weights=np.asarray(lrs), si_fast=np.stack([store.self_terms(c).double().numpy() for c in range(6)]),
        si_cp=np.stack([cstore.self_terms(c).double().numpy() for c in range(6)]),
        features=np.stack([store.layer_inputs(c).double().numpy() for c in range(6)]),
        inputs=store.input_sketch().numpy())
    models = []
    for s in states:
        m = Tiny()
        m.load_state_dict(s)
        models.append(m.eval())
    return dict(x=x, y=y, lrs=lrs, states=states, inp=inp, fast=fast, cp=cp, models=models, ds=ds, load=load)


def _outputs(t) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([m(t["x"]) for m in t["models"]]).double()


def test_self_influence_equals_engines(tiny):
    inp = tiny["inp"]
    assert np.allclose(rk.compute("self_influence_fast", inp), tiny["fast"].self_influence().double().numpy(),
                       rtol=1e-5, atol=1e-8)
    assert np.allclose(rk.compute("self_influence_cp", inp), tiny["cp"].self_influence().double().numpy(),
                       rtol=1e-5, atol=1e-8)
    # early: the same engine over the first third of the checkpoints
    early = TracInCPFast(Tiny(), "fc2", tiny["ds"], [0, 1], checkpoints_load_func=tiny["load"],
                         loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=7)
    assert np.allclose(rk.compute("self_influence_fast_early", inp), early.self_influence().double().numpy(),
                       rtol=1e-5, atol=1e-8)


def test_normalised_self_influence_is_the_output_gradient_norm(tiny):
    total = torch.zeros(len(tiny["y"]), dtype=torch.float64)
    for m, lr in zip(tiny["models"], tiny["lrs"]):
        out = m(tiny["x"]).detach().double().requires_grad_(True)
        loss = nn.CrossEntropyLoss(reduction="sum")(out, tiny["y"])
        (g,) = torch.autograd.grad(loss, out)
        total += lr * (g ** 2).sum(1)
    assert np.allclose(rk.compute("self_influence_fast_normalised", tiny["inp"]), total.numpy(), rtol=1e-5, atol=1e-7)


def test_losses_equal_cross_entropy(tiny):
    out = _outputs(tiny)
    ce = torch.stack([nn.CrossEntropyLoss(reduction="none")(o, tiny["y"]) for o in out]).numpy()
    inp = tiny["inp"]
    assert np.allclose(rk.per_checkpoint_loss(inp), ce, rtol=1e-5, atol=1e-7)
    assert np.allclose(rk.compute("loss_mean", inp), ce.mean(0), rtol=1e-5, atol=1e-7)
    assert np.allclose(rk.compute("loss_final", inp), ce[-1], rtol=1e-5, atol=1e-7)
    assert np.allclose(rk.compute("loss_early", inp), ce[:2].mean(0), rtol=1e-5, atol=1e-7)


def test_aum_equals_mean_margin(tiny):
    out = _outputs(tiny).numpy()
    y = tiny["y"].numpy()
    margins = []
    for o in out:
        given = o[np.arange(len(y)), y]
        other = np.array([np.delete(row, label).max() for row, label in zip(o, y)])
        margins.append(given - other)
    margins = np.array(margins)
    assert np.allclose(rk.compute("aum", tiny["inp"]), -margins.mean(0), rtol=1e-5, atol=1e-6)
    assert np.allclose(rk.compute("aum_early", tiny["inp"]), -margins[:2].mean(0), rtol=1e-5, atol=1e-6)


def test_confidence_class_normalised_direct(tiny):
    p = torch.softmax(_outputs(tiny), dim=2).numpy()[:2].mean(0)
    y = tiny["y"].numpy()
    thr = {k: p[y == k, k].mean() for k in np.unique(y)}
    want = np.array([1 - p[i, y[i]] / thr[y[i]] for i in range(len(y))])
    assert np.allclose(rk.compute("confidence_class_normalised", tiny["inp"]), want, rtol=1e-5, atol=1e-6)


def _sk_neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    nn_ = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(emb)
    _, idx = nn_.kneighbors(emb)
    return np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])


def _check_neighbours(emb: np.ndarray, got: np.ndarray, k: int) -> None:
    """``got`` holds each row's k most cosine-similar other rows (tie order aside)."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    want = -np.sort(-sim, axis=1)[:, :k]
    assert got.shape == (len(emb), k)
    assert not (got == np.arange(len(emb))[:, None]).any()
    assert np.allclose(np.take_along_axis(sim, got, axis=1), want, atol=1e-5)


def test_neighbour_rankers_direct(tiny):
    inp = tiny["inp"]
    y = inp.labels
    K = inp.logits.shape[2]
    nbrs = [rk.nearest_neighbours(inp.features[c], 10) for c in range(2)]
    for c in range(2):
        _check_neighbours(inp.features[c], nbrs[c], 10)

    def shares(labels):
        return np.mean([np.eye(K)[labels][nb].mean(1) for nb in nbrs], 0)

    loss_early = rk.compute("loss_early", inp)
    knn = 1 - shares(y)[np.arange(len(y)), y]
    got = rk.compute("knn_disagreement", inp)
    assert np.allclose(got, knn, atol=1e-5)
    assert np.array_equal(np.argsort(-got, kind="stable"),
                          np.lexsort((-loss_early, -knn)))  # ties broken by the early loss

    p = torch.softmax(_outputs(tiny), dim=2).numpy()[:2].mean(0)
    assert np.allclose(rk.compute("neighbour_vote", inp), _neighbour_vote_naive(nbrs, y, p, 10),
                       rtol=1e-5, atol=1e-6)


def _neighbour_vote_naive(nbrs: list, y: np.ndarray, p: np.ndarray, max_rounds: int) -> np.ndarray:
    """neighbour_vote item by item: votes of the neighbours' (cleaned) labels and the early
    predictions, cleaning repeated until no label changes, then 1 − q(given) / class average."""
    n, K = p.shape
    labels = list(y)
    for _ in range(max_rounds):
        q = np.zeros((n, K))
        for i in range(n):
            for c in range(K):
                votes = [np.mean([labels[j] == c for j in nb[i]]) for nb in nbrs]
                q[i, c] = (np.mean(votes) + p[i, c]) / 2
        cleaned = [int(np.argmax(q[i])) for i in range(n)]
        if cleaned == labels:
            break
        labels = cleaned
    own = [q[i, y[i]] for i in range(n)]
    avg = {c: np.mean([own[i] for i in range(n) if y[i] == c]) for c in set(y.tolist())}
    return np.array([1 - own[i] / avg[y[i]] for i in range(n)])


def test_neighbour_vote_cleans_to_a_fixed_point_and_normalises_per_class():
    rng = np.random.default_rng(3)
    C, K, N = 3, 4, 80
    true = rng.integers(0, K, N)
    feats = np.stack([np.eye(K, 8)[true] * 3 + rng.normal(scale=0.8, size=(N, 8)) for _ in range(C)])
    logits = np.stack([np.eye(K)[true] * (1 + c) + rng.normal(scale=1.0, size=(N, K)) for c in range(C)])
    labels = true.copy()
    flip = rng.choice(N, 16, replace=False)
    labels[flip] = (labels[flip] + 1 + rng.integers(0, K - 1, 16)) % K
    inp = rk.RankerInputs(logits, labels, np.full(C, 0.1), np.ones((C, N)), None, feats)
    nbrs = [rk.nearest_neighbours(feats[0], 10)]  # n_early(3) = 1
    p = np.exp(logits[0]) / np.exp(logits[0]).sum(1, keepdims=True)
    got = rk.neighbour_vote(inp)
    assert np.allclose(got, _neighbour_vote_naive(nbrs, labels, p, 10), atol=1e-9)
    # stopping after one cleaning round (the ranker before issue #5's fixed point) differs here
    one_round = rk.neighbour_vote(inp, max_rounds=2)
    assert np.allclose(one_round, _neighbour_vote_naive(nbrs, labels, p, 2), atol=1e-9)
    assert not np.allclose(one_round, got)
    # per-class normalisation: the items given a label average a score of 0
    for c in range(K):
        assert abs(got[labels == c].mean()) < 1e-9
    # orientation: the flipped items lead the queue
    assert rk.roc_auc(got, labels != true) > 0.99
    assert rk.found_at(got, labels != true, 0.1) == 0.5  # the first 8 of 80 are all flipped


def test_rank_combo_direct(tiny):
    inp = tiny["inp"]
    r = lambda v: rankdata(v) / len(v)  # noqa: E731
    want = (r(rk.compute("self_influence_fast", inp)) + r(rk.compute("loss_mean", inp))
            + r(rk.compute("aum", inp))) / 3
    assert np.allclose(rk.compute("rank_combo", inp), want)


def _suspects_naive(inp: rk.RankerInputs, k: int = 10) -> np.ndarray:
    """Items whose given label is not the most common label of their k neighbours (sklearn,
    early checkpoints, item by item)."""
    C, N, K = np.shape(inp.logits)
    early = range(rk.n_early(C))
    nbrs = [_sk_neighbours(np.asarray(inp.features[c]), k) for c in early]
    out = []
    for i in range(N):
        votes = np.mean([[np.mean([inp.labels[j] == c for j in nb[i]]) for c in range(K)] for nb in nbrs], 0)
        out.append(int(np.argmax(votes)) != inp.labels[i])
    return np.array(out)


def test_checkpoint_trust_direct(tiny):
    inp = tiny["inp"]
    y = inp.labels
    suspects = _suspects_naive(inp)
    assert suspects.any()
    pred = _outputs(tiny).argmax(-1).numpy()
    mem = np.array([np.mean([pred[c, i] == y[i] for i in np.flatnonzero(suspects)]) for c in range(6)])
    assert np.allclose(rk.memorisation(inp), mem)
    assert np.allclose(rk.checkpoint_trust(inp), np.maximum(1 - mem, 1e-3))
    # a run that memorised the mislabel at the last checkpoint trusts that checkpoint least
    cons, bad = constructed(memorised=True)
    t = rk.checkpoint_trust(cons)
    assert t[-1] < t[0] and t[0] == 1.0
    assert rk.memorisation(constructed()[0]).max() == 0.0  # nothing memorised: trust 1 everywhere


def test_adaptive_losses_direct(tiny):
    inp = tiny["inp"]
    out = _outputs(tiny)
    y = tiny["y"].numpy()
    t = rk.checkpoint_trust(inp)
    ce = torch.stack([nn.CrossEntropyLoss(reduction="none")(o, tiny["y"]) for o in out]).numpy()
    o = out.numpy()
    margins = np.array([[o[c, i, y[i]] - np.delete(o[c, i], y[i]).max() for i in range(len(y))] for c in range(6)])
    assert np.allclose(rk.compute("loss_adaptive", inp), (t[:, None] * ce).sum(0) / t.sum(), rtol=1e-5, atol=1e-7)
    assert np.allclose(rk.compute("aum_adaptive", inp), -(t[:, None] * margins).sum(0) / t.sum(),
                       rtol=1e-5, atol=1e-6)
    # equal trust everywhere: the plain checkpoint averages
    cons, _ = constructed()
    assert np.allclose(rk.compute("aum_adaptive", cons), rk.compute("aum", cons))
    assert np.allclose(rk.compute("loss_adaptive", cons), rk.compute("loss_mean", cons))


def test_probability_margin_sq_adaptive_direct(tiny):
    inp = tiny["inp"]
    y = tiny["y"].numpy()
    t = rk.checkpoint_trust(inp)
    pr = torch.softmax(_outputs(tiny).double(), dim=-1).numpy()
    d = np.array([[np.delete(pr[c, i], y[i]).max() ** 2 - pr[c, i, y[i]] ** 2 for i in range(len(y))]
                  for c in range(6)])
    assert np.allclose(rk.compute("probability_margin_sq_adaptive", inp), (t[:, None] * d).sum(0) / t.sum(),
                       rtol=1e-5, atol=1e-7)
    # orientation: the item whose model prefers another class scores higher; equal trust: the plain mean
    cons, bad = constructed()
    p = rk.probabilities(cons)
    yy = cons.labels
    plain = np.mean([[np.delete(p[c, i], yy[i]).max() ** 2 - p[c, i, yy[i]] ** 2 for i in range(len(yy))]
                     for c in range(3)], axis=0)
    got = rk.compute("probability_margin_sq_adaptive", cons)
    assert np.allclose(got, plain) and int(np.argmax(got)) == bad and got[bad] > 0 > np.delete(got, bad).max()


def test_spread_neighbour_rankers_direct(tiny):
    inp = tiny["inp"]
    y = inp.labels
    K = inp.logits.shape[2]
    assert rk.spread_checkpoints(6) == [0, 2, 5] and rk.spread_checkpoints(1) == [0]
    assert rk.spread_checkpoints(2) == [0, 1] and rk.spread_checkpoints(10) == [0, 4, 9]
    cs = [0, 2, 5]
    nbrs = [_sk_neighbours(np.asarray(inp.features[c]), 10) for c in cs]
    for c, nb in zip(cs, rk.spread_neighbours(inp)):
        _check_neighbours(inp.features[c], nb, 10)
    knn = 1 - np.array([np.mean([np.mean(y[nb[i]] == y[i]) for nb in nbrs]) for i in range(len(y))])
    got = rk.compute("knn_spread", inp)
    assert np.allclose(got, knn, atol=1e-5)  # + 1e-6 · tanh(mean loss), the tie-break
    assert np.array_equal(np.argsort(-got, kind="stable"),
                          np.lexsort((-rk.compute("loss_mean", inp), -np.round(knn, 9))))

    # neighbour_vote_adaptive item by item: trust-weighted neighbour votes and predictions
    t = rk.checkpoint_trust(inp)
    p = torch.softmax(_outputs(tiny), dim=2).numpy()
    p_w = sum(t[c] * p[c] for c in range(6)) / t.sum()
    tn = t[cs] / t[cs].sum()
    n = len(y)
    labels = list(y)
    for _ in range(10):
        q = np.array([[(sum(w * np.mean([labels[j] == c for j in nb[i]]) for w, nb in zip(tn, nbrs)) + p_w[i, c]) / 2
                       for c in range(K)] for i in range(n)])
        cleaned = [int(np.argmax(q[i])) for i in range(n)]
        if cleaned == labels:
            break
        labels = cleaned
    own = q[np.arange(n), y]
    avg = {c: own[y == c].mean() for c in set(y.tolist())}
    want = np.array([1 - own[i] / avg[y[i]] for i in range(n)])
    assert np.allclose(rk.compute("neighbour_vote_adaptive", inp), want, rtol=1e-5, atol=1e-6)

    # neighbour_margin_adaptive item by item: the same trust-weighted votes of the given
    # (uncleaned) labels and predictions; w from the suspects' runner-up share
    q = np.array([[(sum(w * np.mean([y[j] == c for j in nb[i]]) for w, nb in zip(tn, nbrs)) + p_w[i, c]) / 2
                   for c in range(K)] for i in range(n)])
    got = rk.compute("neighbour_margin_adaptive", inp)
    assert np.allclose(got, _adaptive_margin_direct(q, y), rtol=1e-5, atol=1e-6)
    assert ((got >= -1) & (got <= 1)).all()


def _adaptive_margin_direct(q: np.ndarray, y: np.ndarray) -> list[float]:
    """``(q_o + w·r)² − q_y²`` item by item, ``w`` from the suspects' runner-up share."""
    n, K = q.shape
    suspects = [i for i in range(n) if q[i, y[i]] < q[i].max()]
    runner_up = np.mean([q[i, y[i]] >= sorted(q[i])[-2] for i in suspects])
    w = 1 - min(1.0, max(0.0, (runner_up - 1 / (K - 1)) / (1 - 1 / (K - 1))))
    assert suspects and np.isclose(1 - w, rk.flip_structure(q, y))
    want = []
    for i in range(n):
        qo = max(q[i, c] for c in range(K) if c != y[i])
        want.append((qo + w * max(0.0, 1 - q[i, y[i]] - qo)) ** 2 - q[i, y[i]] ** 2)
    return want


def _clusters(y: np.ndarray, K: int, scale: float, rng: np.random.Generator, dim: int = 6) -> np.ndarray:
    """(N, dim) points around one centre per class (``scale`` apart; unit noise)."""
    return np.eye(K, dim)[y] * scale + rng.normal(size=(len(y), dim))


def test_neighbour_margin_inputs_direct(tiny):
    """neighbour_margin_inputs item by item on the tiny model's outputs: the trust-weighted
    neighbour view of the features mixed with the input sketch's neighbours (centred, cosine)
    by β = ½ · κ_in / κ_model (chance-corrected agreement with the given labels), then the
    margin of neighbour_margin_adaptive."""
    base = tiny["inp"]
    y = base.labels
    K, n = 3, len(y)
    rng = np.random.default_rng(1)
    feats = np.stack([_clusters(y, K, 2.5, rng) for _ in range(6)])
    inputs = _clusters(y, K, 1.5, rng) + 3.0  # off the origin: the sketch is centred first
    inp = dataclasses.replace(base, features=feats, inputs=inputs)
    t = rk.checkpoint_trust(inp)
    cs = [0, 2, 5]
    tn = t[cs] / t[cs].sum()
    nbrs = [_sk_neighbours(feats[c], 10) for c in cs]
    own = _sk_neighbours(inputs - inputs.mean(0), 10)
    _check_neighbours(inputs - inputs.mean(0), rk.input_neighbours(inp), 10)
    model_sh = np.array([[sum(w * np.mean([y[j] == c for j in nb[i]]) for w, nb in zip(tn, nbrs)) for c in range(K)]
                         for i in range(n)])
    in_sh = np.array([[np.mean([y[j] == c for j in own[i]]) for c in range(K)] for i in range(n)])
    pi = np.bincount(y, minlength=K) / n
    chance = (pi ** 2).sum()

    def kappa(sh):
        return (np.mean([sh[i, y[i]] for i in range(n)]) - chance) / (1 - chance)

    k_in, k_model = kappa(in_sh), kappa(model_sh)
    assert 0 < k_in < k_model  # the weight's middle branch
    beta = 0.5 * k_in / k_model
    assert np.isclose(rk.input_view_weight(in_sh, model_sh, y), beta)
    p = torch.softmax(_outputs(tiny), dim=2).numpy()
    p_w = sum(t[c] * p[c] for c in range(6)) / t.sum()
    q = ((1 - beta) * model_sh + beta * in_sh + p_w) / 2
    got = rk.compute("neighbour_margin_inputs", inp)
    assert np.allclose(got, _adaptive_margin_direct(q, y), rtol=1e-5, atol=1e-6)
    assert ((got >= -1) & (got <= 1)).all()
    # without a sketch it is neighbour_margin_adaptive
    assert np.array_equal(rk.compute("neighbour_margin_inputs", dataclasses.replace(inp, inputs=None)),
                          rk.compute("neighbour_margin_adaptive", inp))


def test_label_agreement_and_input_view_weight():
    y = np.array([0] * 6 + [1] * 2)  # chance agreement: (6/8)² + (2/8)²
    assert rk.label_agreement(np.eye(2)[y], y) == 1.0
    pi = np.array([0.75, 0.25])
    assert np.isclose(rk.label_agreement(np.tile(pi, (8, 1)), y), 0.0)  # neighbours drawn at random
    assert rk.label_agreement(np.eye(2)[1 - y], y) < 0
    mixed = 0.5 * np.eye(2)[y] + 0.5 * np.tile(pi, (8, 1))  # half-way between the two
    assert np.isclose(rk.label_agreement(mixed, y), 0.5)
    perfect = np.eye(2)[y]
    assert rk.input_view_weight(perfect, mixed, y) == 0.5  # the inputs know more: capped at ½
    assert rk.input_view_weight(perfect, perfect, y) == 0.5
    assert np.isclose(rk.input_view_weight(mixed, perfect, y), 0.25)
    assert rk.input_view_weight(np.tile(pi, (8, 1)), perfect, y) == 0.0
    assert rk.input_view_weight(np.eye(2)[1 - y], perfect, y) == 0.0


def _memorised_from_the_start(inputs_informative: bool, seed: int = 0) -> tuple[rk.RankerInputs, int]:
    """Three classes; item ``bad`` (class 0) labelled 2, and every checkpoint has learnt it:
    its features sit in class 2's cluster and every checkpoint predicts 2. Its inputs sit
    among class 0's (``inputs_informative``) or every input is noise."""
    rng = np.random.default_rng(seed)
    K, per, C = 3, 40, 3
    true = np.repeat(np.arange(K), per)
    N = len(true)
    bad = 5
    labels = true.copy()
    labels[bad] = 2
    feats = np.stack([_clusters(labels, K, 6.0, rng) for _ in range(C)])  # the model's view: the given label
    logits = np.zeros((C, N, K))
    logits[:, np.arange(N), labels] = 3.0 + rng.uniform(0, 1, (C, N))
    # a few clean items the model doubts: they would come first without the inputs
    doubted = [50, 90, 110]
    logits[:, doubted, (labels[doubted] + 1) % K] = 3.2
    inputs = _clusters(true, K, 6.0, rng) if inputs_informative else rng.normal(size=(N, 6))
    return rk.RankerInputs(logits, labels, np.full(C, 0.1), np.ones((C, N)), None, feats, inputs), bad


def test_input_neighbours_find_a_label_learnt_from_the_start():
    """The model's neighbourhoods and predictions agree with a wrong label learnt from the
    first checkpoint: neighbour_margin_adaptive ranks clean items it doubts first; the
    inputs' neighbours still see the item among its true class, and
    neighbour_margin_inputs ranks it first (orientation: higher = more likely wrong)."""
    inp, bad = _memorised_from_the_start(True)
    assert int(np.argmax(rk.compute("neighbour_margin_adaptive", inp))) != bad
    assert int(np.argmax(rk.compute("neighbour_margin_inputs", inp))) == bad
    # an input sketch that knows nothing of the classes gets (almost) no weight
    inp, bad = _memorised_from_the_start(False)
    t = rk.checkpoint_trust(inp)
    own = rk.neighbour_label_shares(inp, 10, neighbours=[rk.input_neighbours(inp)])
    beta = rk.input_view_weight(own, rk._trusted_neighbour_shares(inp, t, 10), inp.labels)
    assert beta < 0.05
    with_noise, without = rk.compute("neighbour_margin_inputs", inp), rk.compute("neighbour_margin_adaptive", inp)
    if beta == 0:
        assert np.array_equal(with_noise, without)
    assert np.corrcoef(rankdata(with_noise), rankdata(without))[0, 1] > 0.98


def test_weighted_probabilities_equal_the_weighted_mean_of_softmaxes(tiny):
    inp = tiny["inp"]
    w = np.array([0.0, 1.0, 2.0, 0.5, 0.0, 3.0])
    want = np.tensordot(w / w.sum(), rk.probabilities(inp), axes=1)
    got = rk.weighted_probabilities(inp, w)
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-12, atol=1e-14)


def test_flip_structure_tells_confusable_from_random_flips():
    """Suspects labelled with their runner-up class: 1; labels spread at random: about 0;
    the score then follows the squared margin or the given label's support alone."""
    rng = np.random.default_rng(0)
    n, K = 2000, 10
    true = rng.integers(0, K, n)
    q = np.full((n, K), 0.02)
    q[np.arange(n), true] = 0.62
    q[np.arange(n), (true + 1) % K] = 0.22  # each item's most confusable class
    wrong = rng.random(n) < 0.2
    to_pair = np.where(wrong, (true + 1) % K, true)
    to_random = np.where(wrong, (true + rng.integers(1, K, n)) % K, true)
    assert rk.flip_structure(q, to_pair) == 1.0
    assert rk.flip_structure(q, to_random) < 0.1
    assert rk.flip_structure(q, true) == 1.0  # no suspects
    assert rk.flip_structure(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([1, 0])) == 1.0  # two classes

    # on logits that carry q, the score orders as the squared margin (structured flips) or as
    # 1 − 2·q_y (random flips): a confident item with a random wrong label still ranks first
    def inputs(labels):
        logits = np.log(q)[None]
        return rk.RankerInputs(logits, labels, np.ones(1), np.zeros((1, n)), None,
                               np.eye(K)[true][None] + rng.normal(scale=0.01, size=(1, n, K)))
    s = rk.compute("neighbour_margin_adaptive", inputs(to_random))
    assert roc_auc_score(wrong, s) > 0.99
    s = rk.compute("neighbour_margin_adaptive", inputs(to_pair))
    assert roc_auc_score(wrong, s) > 0.99


def test_rank_mean_and_combined_direct(tiny):
    inp = tiny["inp"]
    r = lambda v: rankdata(v) / len(v)  # noqa: E731
    w = {"knn_spread": 0.3, "aum": 0.7}
    want = (0.3 * r(rk.compute("knn_spread", inp)) + 0.7 * r(rk.compute("aum", inp))) / 1.0
    assert np.allclose(rk.rank_mean(inp, w), want)
    ws = rk.COMBINED_WEIGHTS
    want = sum(v * r(rk.compute(k, inp)) for k, v in ws.items()) / sum(ws.values())
    assert np.allclose(rk.compute("combined", inp), want)
    assert set(ws) <= set(rk.COMBINABLE) and not (set(ws) & rk.NEEDS_CP)
    with pytest.raises(ValueError, match="not combinable"):
        rk.rank_mean(inp, {"loss_final": 1.0})
    with pytest.raises(ValueError, match="not combinable"):
        rk.rank_mean(inp, {"neighbour_vote_adaptive": 1.0})
    with pytest.raises(ValueError, match="weights must be"):
        rk.rank_mean(inp, {"aum": -1.0})
    with pytest.raises(ValueError, match="at least one"):
        rk.rank_mean(inp, {})


def test_nearest_neighbours_memo_and_edges():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    a = rk.nearest_neighbours(x, 5, chunk=7)
    a[0, 0] = -1  # callers get copies
    b = rk.nearest_neighbours(x, 5)
    assert b[0, 0] != -1
    assert np.array_equal(b, _sk_neighbours(x, 5))  # no ties in random data: the same order
    _check_neighbours(x, b, 5)
    assert rk.nearest_neighbours(x[:1], 5).shape == (1, 0)
    assert rk.nearest_neighbours(x[:3], 5).shape == (3, 2)


# ----------------------------------------------------------------------------- evaluation helpers
def test_metrics():
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.1
    scores = np.round(rng.random(200) + truth * 0.5, 1)  # with ties
    assert rk.roc_auc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))
    assert np.isnan(rk.roc_auc(scores, np.zeros(200, bool)))
    perfect = truth.astype(float)
    assert rk.found_at(perfect, truth, truth.mean()) == 1.0
    assert rk.precision_at(perfect, truth, int(truth.sum())) == 1.0
    assert rk.precision_at(-perfect, truth, int(truth.sum())) == 0.0
    x, y = rk.found_curve(perfect, truth)
    assert x[0] == 0 and y[0] == 0 and x[-1] == 1 and y[-1] == 1 and np.all(np.diff(y) >= 0)
    q = rk.quality(perfect, truth)
    assert q == {"auc": 1.0, "found@10%": pytest.approx(min(1.0, 20 / truth.sum())), "found@20%": 1.0}
    # the first share of the queue is rounded to the nearest count: 10% of 17 is 2 items,
    # 10% of 13 is 1 item (one mislabel at each of the first three places)
    for n, expected in ((17, 2 / 3), (13, 1 / 3)):
        truth_n = np.zeros(n, bool)
        truth_n[:3] = True
        assert rk.found_at(-np.arange(n, dtype=float), truth_n, 0.10) == pytest.approx(expected)
    t = rk.score_table(np.array([0.1, 3.0, 2.0]))
    assert list(t["index"]) == [1, 2, 0] and list(t["rank"]) == [1, 2, 3]
    # score_ranks: 1 = largest score, ties keep index order
    assert rk.score_ranks(np.array([0.1, 3.0, 2.0, 3.0])).tolist() == [4, 1, 3, 2]


# ----------------------------------------------------------------------------- noise models
def test_noisy_labels_models():
    y = np.arange(100) % 4
    logits = np.zeros((100, 4))
    logits[np.arange(100), (y + 2) % 4] = 5.0  # the most probable wrong class: y + 2
    logits[np.arange(100), y] = 9.0  # the true class is most probable of all
    tut, idx = demo.noisy_labels(y, 0.2, "tutorial", seed=3, clean_logits=logits)
    assert len(idx) == 20 and np.array_equal(np.flatnonzero(tut != y), idx)
    assert np.array_equal(tut[idx], (y[idx] + 2) % 4)
    pair, idx2 = demo.noisy_labels(y, 0.2, "pair", seed=3)
    assert np.array_equal(idx2, idx) and np.array_equal(pair[idx], (y[idx] + 1) % 4)
    uni, idx3 = demo.noisy_labels(y, 0.2, "uniform", seed=3)
    assert np.array_equal(idx3, idx) and (uni[idx] != y[idx]).all() and (uni[idx] < 4).all()
    assert np.array_equal(uni, demo.noisy_labels(y, 0.2, "uniform", seed=3)[0])  # seeded
    _, small = demo.noisy_labels(y, 0.1, "pair", seed=3)
    assert set(small) <= set(idx)  # a larger rate mislabels a superset
    with pytest.raises(ValueError, match="clean_logits"):
        demo.noisy_labels(y, 0.1, "tutorial")
    with pytest.raises(ValueError, match="unknown noise"):
        demo.noisy_labels(y, 0.1, "nope")
    with pytest.raises(ValueError, match="fraction"):
        demo.noisy_labels(y, 1.5, "pair")


def test_noise_subset_is_the_demos():
    labels = pd.read_csv(demo.DEMO_DIR / "labels.csv")
    y = labels["true_label"].to_numpy()
    _, idx = demo.noisy_labels(y, demo.NOISE_FRACTION, "pair", seed=0)
    assert np.array_equal(idx, np.flatnonzero(labels["is_mislabelled"].to_numpy()))


# ----------------------------------------------------------------------------- the benchmark
def test_benchmark_smoke(tmp_path):
    """benchmarks/mislabel_quality.py end to end on the smallest setting (1 seed, short training)."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("mislabel_quality", REPO / "benchmarks" / "mislabel_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mq.md"
    assert bench.main(["--quick", "--datasets", "wine", "--noise", "pair", "--rates", "0.1", "--out", str(out)]) == 0
    text = out.read_text()
    assert "### wine / long / pair / 10%" in text and "### wine / short / pair / 10%" in text
    assert f"| {bench.LODO} **(default)**" in text and "Leave-one-dataset-out" in text
    for name in rk.RANKERS:
        assert f"| {name}" in text
    # the saved runs give the same report
    dumps = tmp_path / "dumps"
    assert bench.main(["--quick", "--datasets", "wine", "--noise", "pair", "--rates", "0.1", "--out", str(out),
                       "--dump", str(dumps), "--dump-only"]) == 0
    names = sorted(p.name for p in dumps.iterdir())
    assert names == ["wine-long_pair_0.1_0.npz", "wine-short_pair_0.1_0.npz"]
    z = np.load(dumps / names[0])
    assert {"logits", "labels", "weights", "si_fast", "si_cp", "features", "truth"} <= set(z.files)
    assert (z["labels"] != z["truth"]).mean() == pytest.approx(0.1, abs=0.01)
    again = tmp_path / "again.md"
    assert bench.main(["--quick", "--datasets", "wine", "--noise", "pair", "--rates", "0.1", "--out", str(again),
                       "--from-dumps", str(dumps)]) == 0
    # the same choice, summary and per-setting tables (the header names the command; the
    # per-data-set tables hold timings)
    cut = lambda t: (t[t.index("## The default"):t.index("## Mean ROC AUC")]  # noqa: E731
                     + t[t.index("## Every setting"):])
    assert cut(again.read_text()) == cut(text)


def test_lodo_never_looks_at_the_held_out_data_set():
    """The weights reported for a data set are chosen on the others: changing its runs
    changes nothing in its own weights."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("mislabel_quality", REPO / "benchmarks" / "mislabel_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    grid = bench.weight_grid(3, 0.5)
    assert grid.shape == (6, 3) and np.allclose(grid.sum(1), 1)
    ds = np.array(["a", "a", "b", "c"])
    st = np.array(["a/x", "a/x", "b/x", "c/x"])
    best = np.array([0.9, 0.9, 0.8, 0.8])
    aucs = np.tile(np.linspace(0.85, 0.95, 6), (4, 1))
    aucs[2:, 0] = 0.99  # b and c prefer grid point 0
    aucs[:2, 5] = 1.0  # a prefers point 5
    assert bench.select_weights(aucs, ds, st, best, exclude="a") == 0
    changed = aucs.copy()
    changed[:2] = 0.5  # whatever a's runs say ...
    assert bench.select_weights(changed, ds, st, best, exclude="a") == 0  # ... a's weights stay
    # without b: points 3-5 keep a within 0.005 of its best single signal (the floor); of
    # those, 5 has the best mean AUC over a and c
    assert bench.select_weights(aucs, ds, st, best, exclude="b") == 5


def test_selection_is_a_floor_then_the_mean():
    """Every point that clears the floor (−0.005 in every setting) is judged by its mean AUC,
    not by its worst setting; with none clearing it, the worst setting decides."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("mislabel_quality", REPO / "benchmarks" / "mislabel_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ds = np.array(["a", "b"])
    st = np.array(["a/x", "b/x"])
    best = np.array([0.90, 0.90])
    # point 0: margins +0.02 / +0.02 (best worst); point 1: −0.004 / +0.10 (best mean, clears the floor)
    aucs = np.array([[0.92, 0.896, 0.80], [0.92, 1.00, 0.99]])
    assert bench.select_weights(aucs, ds, st, best) == 1
    # point 1 now misses the floor in a (−0.006): point 0; point 2 never clears it
    aucs[0, 1] = 0.894
    assert bench.select_weights(aucs, ds, st, best) == 0
    # nothing clears it: the largest worst margin (point 1, −0.006, over point 0's −0.03)
    aucs[:, 0] = [0.87, 0.99]
    assert bench.select_weights(aucs, ds, st, best) == 1


def test_selection_prefers_fewer_signals_within_one_standard_error():
    """The one-standard-error rule: a point with fewer signals whose mean AUC is within one
    standard error (over seeds) of the best point's is chosen instead; outside it, not."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("mislabel_quality", REPO / "benchmarks" / "mislabel_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # one data set, one setting, 4 seeds; point 0 weights two signals, point 1 one
    ds = np.array(["a"] * 4)
    st = np.array(["a/x"] * 4)
    seeds = np.arange(4)
    best = np.full(4, 0.90)
    sizes = np.array([2, 1])
    spread = np.array([-0.01, 0.01, -0.01, 0.01])  # the best point's seeds: standard error 0.01 / √4 · √(4/3)
    se = spread.std(ddof=1) / 2
    aucs = np.stack([0.95 + spread, np.full(4, 0.95 - 0.5 * se)], axis=1)
    assert bench.select_weights(aucs, ds, st, best) == 0  # without seeds: the best mean
    assert bench.select_weights(aucs, ds, st, best, seeds=seeds, sizes=sizes) == 1  # within one SE: fewer signals
    aucs[:, 1] = 0.95 - 2 * se
    assert bench.select_weights(aucs, ds, st, best, seeds=seeds, sizes=sizes) == 0  # two SE below: not
