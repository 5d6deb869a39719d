"""Mislabel rankers: one score per training example, higher = more likely mislabelled.

Every ranker reads quantities the feature store already holds (per-checkpoint model
outputs, final-layer inputs and self-influence terms, and a sketch of each example's
inputs), so none costs another pass over the data. Results are tables (pandas) with columns ``index``, ``score``, ``rank``
(1 = review first), cleanlab-style.

Which ranker is the default, and why: ``benchmarks/mislabel_quality.py`` measures every
ranker on three noise models (the Captum tutorial's "most probable wrong class",
uniform flips, class-pair flips) at 10% and 20%, two training schedules each, on the
digits demo, two bundled tabular data sets and 10,000-image subsets of Fashion-MNIST;
results in ``benchmarks/results/mislabel_quality.md``. :data:`DEFAULT_RANKER` is
``combined``: :func:`rank_mean` of the :data:`COMBINABLE` signals with
:data:`COMBINED_WEIGHTS`, chosen on all four data sets by the issue's rule read as a floor
(within 0.005 of the best of self-influence, averaged loss and AUM in every setting; then
the best mean ROC AUC, and the fewest signals within one standard error of it). That choice
is now one signal, :func:`neighbour_margin_inputs`: neighbourhoods (the model's and the
inputs' own) and predictions vote together, and the score is their squared margin when the
run's wrong labels look like confusions, the given label's support alone when they look
random (:func:`flip_structure`, read from the run). The benchmark reports each data set with
weights chosen without it (leave-one-dataset-out), so the figures for a data set never come
from weights tuned on it: mean ROC AUC 0.9988 (digits), 0.9874 (wine), 0.9916 (breast
cancer), 0.9756 (Fashion-MNIST); within 0.005 of the best of self-influence, averaged loss
and AUM in all 40 settings; on Fashion-MNIST with tutorial noise +0.0111 to +0.0234 over it
(the issue's +0.01 met in all 4 settings); 95.5% of the digits demo's mislabels in the first
10% of the queue over 20 seeds.

"Early" checkpoints are the first third (at least one) of the checkpoints, in training
order: the model has learnt the clean majority by then but has not yet memorised the
wrong labels. How early that is depends on the schedule (short training may never
memorise; long training memorises early), so the *adaptive* rankers weight each
checkpoint by :func:`checkpoint_trust` instead: how little it has memorised the labels
its neighbourhoods find suspicious.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RankerInputs:
    """What rankers are computed from (everything one TracIn pass stores).

    ``logits``: (C, N, K) model outputs per checkpoint (C ordered by training time);
    ``labels``: (N,) given labels; ``weights``: (C,) learning rates;
    ``si_fast`` / ``si_cp``: (C, N) unweighted self-influence terms per checkpoint
    (last layer / all layers), ``si_cp`` may be None when not computed;
    ``features``: (C, N, H) inputs of the final layer per checkpoint (the store's
    ``c{c}/a``; a sequence of C (N, H) arrays works too), optional: rankers that look at
    neighbourhoods use them when given and the logits otherwise;
    ``inputs``: (N, D) a sketch of each example's model inputs (the store's ``c0/x``,
    :func:`tracin_core.engine.featurize.input_sketch`), optional: :func:`neighbour_margin_inputs`
    also looks at neighbourhoods in it when given.
    """

    logits: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    si_fast: np.ndarray
    si_cp: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    inputs: Optional[np.ndarray] = None


# --------------------------------------------------------------------------- building blocks
def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _labels(inp: RankerInputs) -> np.ndarray:
    return np.asarray(inp.labels, dtype=np.int64).reshape(-1)


def _given(a: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``a[..., n, labels[n]]`` for an array with the class axis last."""
    idx = np.broadcast_to(labels[:, None], a.shape[:-1] + (1,))
    return np.take_along_axis(a, idx, axis=-1)[..., 0]


def without_given(a: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A copy of ``a`` (class axis last, ``(..., N, K)``) with each item's given label at
    −inf: its ``max`` / ``argmax`` over the last axis is the best *other* class."""
    out = np.array(a, dtype=np.float64)
    np.put_along_axis(out, np.broadcast_to(labels[:, None], out.shape[:-1] + (1,)), -np.inf, axis=-1)
    return out


def n_early(n_checkpoints: int) -> int:
    """How many checkpoints count as early: the first third, at least one."""
    return max(1, int(round(n_checkpoints / 3)))


def probabilities(inp: RankerInputs) -> np.ndarray:
    """(C, N, K) softmax of the logits."""
    return np.exp(_log_softmax(np.asarray(inp.logits, dtype=np.float64)))


def weighted_probabilities(inp: RankerInputs, weights: np.ndarray) -> np.ndarray:
    """(N, K) ``Σ_c w_c · softmax(logits_c) / Σ_c w_c``, one checkpoint at a time (never the
    (C, N, K) array :func:`probabilities` makes: 80 MB per checkpoint at 1,000,000 rows and
    10 classes). ``weights``: (C,) ≥ 0, not all 0."""
    w = np.asarray(weights, dtype=np.float64)
    out = None
    for c, wc in enumerate(w / w.sum()):
        z = wc * np.exp(_log_softmax(np.asarray(inp.logits[c], dtype=np.float64)))
        out = z if out is None else out + z
    return out


def per_checkpoint_loss(inp: RankerInputs) -> np.ndarray:
    """(C, N) cross-entropy of the given label at each checkpoint."""
    return -_given(_log_softmax(np.asarray(inp.logits, dtype=np.float64)), _labels(inp))


def per_checkpoint_margin(inp: RankerInputs) -> np.ndarray:
    """(C, N) margin: logit of the given label minus the largest other logit (AUM's margin)."""
    z = np.asarray(inp.logits, dtype=np.float64)
    y = _labels(inp)
    return _given(z, y) - without_given(z, y).max(axis=-1)


#: at most this many rows, neighbours are found by exact search; above it, through an HNSW
#: graph (exact search costs O(N² · H): 13 s per checkpoint at 60,000 rows on two cores)
EXACT_SEARCH_MAX = 20_000
#: the HNSW graph (faiss ``IndexHNSWFlat``, inner product of unit rows): links per node and
#: the build's search width (``efConstruction``). A light graph with a calibrated search
#: width costs least for the recall asked: on one core, building and querying every row of
#: the last checkpoint's 1,000,000 Fashion-MNIST rows took 66 CPU-s with (10, 10), 71 with
#: (8, 12) and 73 with (12, 16); at 60,000 rows (10, 10) was also the cheapest of seven
#: settings. ``benchmarks/neighbour_search.py`` compares it with the annoy index it replaced.
HNSW_LINKS = 10
HNSW_BUILD_WIDTH = 10
#: the recall the search must reach on the sample checked against exact search, and that
#: sample's size (another sample of CALIBRATION_SAMPLE rows chooses the search width)
TARGET_RECALL = 0.95
RECALL_SAMPLE = 1000
CALIBRATION_SAMPLE = 1000
#: the calibration aims this far above TARGET_RECALL, so that the recall measured on the
#: other sample rarely falls short (a shortfall re-runs every query twice as wide)
CALIBRATION_MARGIN = 0.01
#: the search width (HNSW's ``efSearch``: candidates kept per query) is calibrated per search
#: before the full pass: it starts at k + 1 and grows by a quarter until the recall on a
#: calibration sample (another seed than the one reported) reaches :data:`TARGET_RECALL` +
#: :data:`CALIBRATION_MARGIN`; at most this many per neighbour asked for
HNSW_WIDTH_MAX_PER_NEIGHBOUR = 256
#: how many times the width may double when the reported recall still falls short
HNSW_WIDENINGS = 2
#: peak size (elements) of one block of similarities in exact search (64 MB of float32: query
#: rows are blocked by EXACT_QUERY_BLOCK and the columns so that a block stays below it;
#: searches running side by side each hold one, and 2,048 x 60,000 blocks put the 60,000-row
#: ranking's peak at 1.4 GB instead of 1.1)
EXACT_BLOCK_ELEMENTS = 2 ** 24
#: query rows per block in exact search (the columns are blocked to fit EXACT_BLOCK_ELEMENTS)
EXACT_QUERY_BLOCK = 1024


def search_threads() -> int:
    """Threads that build and query the neighbour graphs (faiss releases the GIL for both,
    each call on one OpenMP thread; several searches and blocks of queries run side by
    side). Read at call time: ``TRACIN_SEARCH_THREADS``,
    else the machine's cores, at most 8. The neighbours found never depend on it."""
    env = os.environ.get("TRACIN_SEARCH_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"TRACIN_SEARCH_THREADS must be a whole number, got {env!r}") from None
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class NeighbourSearch:
    """How one neighbour search was done. ``recall``: share of the true ``k`` nearest
    neighbours found, measured against exact search on ``sample`` random rows (1.0 and
    ``sample = n`` for exact search); ``links`` and ``width``: the HNSW graph's links per
    node and its search width (``efSearch``) for ``method == "hnsw"``."""

    method: str
    n: int
    k: int
    recall: float
    sample: int
    links: int = 0
    width: int = 0
    seconds: float = 0.0
    key: str = ""  # content hash of the rows searched (the same search, memoised, has the same key)

    def describe(self) -> str:
        if self.method == "exact":
            return f"exact neighbour search ({self.n:,} rows, k = {self.k})"
        return (f"HNSW neighbour search ({self.n:,} rows, k = {self.k}, {self.links} links, "
                f"width {self.width}): recall {self.recall:.3f} against exact search "
                f"on {self.sample:,} random rows")


_NN_CACHE: "OrderedDict[tuple, tuple[np.ndarray, NeighbourSearch]]" = OrderedDict()
_NN_CACHE_SIZE = 16
_NN_LOCK = threading.Lock()
_SEARCH_LOG = threading.local()


@contextlib.contextmanager
def recording_searches() -> Iterator[list[NeighbourSearch]]:
    """Collect a :class:`NeighbourSearch` for every :func:`nearest_neighbours` call made
    in this thread inside the ``with`` block (memoised calls included)."""
    outer = getattr(_SEARCH_LOG, "log", None)
    log: list[NeighbourSearch] = []  # one entry per distinct search (memoised repeats not again)
    _SEARCH_LOG.log = log
    try:
        yield log
    finally:
        _SEARCH_LOG.log = outer
        if outer is not None:
            outer.extend(log)


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(emb, dtype=np.float32).reshape(len(emb), -1))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _exact_rows(t, rows, k: int, chunk: int = 2048):
    """Exact ``k`` most cosine-similar other rows (unit rows ``t``, a torch tensor) for
    ``rows``: (len(rows), k) indices and similarities, most similar first.

    Blocks of at most ``chunk`` (and :data:`EXACT_QUERY_BLOCK`) query rows against column
    blocks of ``t``, each block of similarities at most :data:`EXACT_BLOCK_ELEMENTS`, one
    buffer reused; each column block's top ``k`` is merged into the running top ``k``. Written
    by hand because torch has no blocked top-k: at 1,000,000 rows, 1,000 query rows take 4.3 s
    this way against 6.9 s with 16-row blocks over every column (the row-only blocking this
    replaced), measured side by side on a busy two-core machine."""
    import torch

    rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    n = len(t)
    q_block = max(1, min(int(chunk), EXACT_QUERY_BLOCK, len(rows)))
    c_block = max(1, min(n, EXACT_BLOCK_ELEMENTS // q_block))
    idx = torch.empty((len(rows), k), dtype=torch.long)
    sims = torch.empty((len(rows), k), dtype=t.dtype)
    buf = torch.empty(q_block * c_block, dtype=t.dtype)
    with torch.no_grad():
        for s in range(0, len(rows), q_block):
            r = rows[s:s + q_block]
            q = t[r]
            best_v = best_i = None
            for c0 in range(0, n, c_block):
                c1 = min(n, c0 + c_block)
                sim = torch.mm(q, t[c0:c1].T, out=buf[:len(r) * (c1 - c0)].view(len(r), c1 - c0))
                own = ((r >= c0) & (r < c1)).nonzero()[:, 0]
                sim[own, r[own] - c0] = -float("inf")  # a row is not its own neighbour
                top = sim.topk(min(k, c1 - c0), dim=1, sorted=False)
                v, i = top.values, top.indices + c0
                if best_v is not None:
                    v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                    keep = v.topk(k, dim=1, sorted=False).indices
                    v, i = torch.gather(v, 1, keep), torch.gather(i, 1, keep)
                best_v, best_i = v, i
            order = best_v.argsort(dim=1, descending=True, stable=True)
            idx[s:s + len(r)] = torch.gather(best_i, 1, order)
            sims[s:s + len(r)] = torch.gather(best_v, 1, order)
    return idx.numpy(), sims.numpy()


def _recall_rows(x: np.ndarray, rows: np.ndarray, found: np.ndarray, true_sims: np.ndarray) -> float:
    """Share of ``found`` (len(rows), k) at least as similar as the true ``k``-th nearest."""
    got = np.einsum("rh,rkh->rk", x[rows], x[found])
    return float((got >= true_sims[:, -1:] - 1e-5).mean())


def _sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(int(sample), n), replace=False))


def _content_key(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).hexdigest()


def _cache_get(key: tuple) -> Optional[tuple]:
    """The neighbour cache's entry for ``key`` (marked recently used), or None."""
    with _NN_LOCK:
        hit = _NN_CACHE.get(key)
        if hit is not None:
            _NN_CACHE.move_to_end(key)
    return hit


def _cache_put(entries: "dict[tuple, tuple]") -> None:
    """Keep ``entries`` in the neighbour cache (the last :data:`_NN_CACHE_SIZE` results)."""
    with _NN_LOCK:
        for key, value in entries.items():
            _NN_CACHE[key] = value
        while len(_NN_CACHE) > _NN_CACHE_SIZE:
            _NN_CACHE.popitem(last=False)


def _memoised(key: tuple, compute: Callable[[], tuple]) -> tuple:
    """``compute()``, kept in the neighbour cache by ``key``."""
    hit = _cache_get(key)
    if hit is None:
        hit = compute()
        _cache_put({key: hit})
    return hit


def _exact_sample(x: np.ndarray, rows: np.ndarray, k: int, xkey: Optional[str] = None,
                  chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_exact_rows` of unit rows ``x`` for ``rows``, memoised by content: the
    calibration, the recall check and :func:`memorisation` read the same samples, so at
    1,000,000 rows (about 4 s per 1,000 rows) each sample is searched once. ``xkey``: the
    content key of ``x`` when the caller has it."""
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    key = (xkey or _content_key(x), x.shape, int(k), "rows", _content_key(rows))
    return _memoised(key, lambda: _exact_rows(torch.from_numpy(x), rows, k, chunk))


def _recall_on_sample(x: np.ndarray, found: np.ndarray, sample: int, seed: int, xkey: Optional[str] = None,
                      chunk: int = 2048) -> tuple[float, int]:
    rows = _sample_rows(len(x), sample, seed)
    sims = _exact_sample(x, rows, found.shape[1], xkey, chunk)[1]
    return _recall_rows(x, rows, found[rows], sims), len(rows)


def sampled_recall(emb: np.ndarray, found: np.ndarray, sample: int = RECALL_SAMPLE, seed: int = 0,
                   chunk: int = 2048) -> tuple[float, int]:
    """Recall of approximate neighbours ``found`` (N, k) against exact cosine search on
    ``sample`` random rows (seeded): the share of found neighbours at least as similar as
    the true ``k``-th nearest (ties with it count as found). Returns (recall, rows checked)."""
    found = np.asarray(found)
    n, k = found.shape
    if k == 0 or n == 0:
        return 1.0, 0
    return _recall_on_sample(_unit_rows(emb), found, sample, seed, chunk=chunk)


def _hnsw_index(x: np.ndarray):
    """A faiss HNSW graph (inner product) of unit rows ``x`` (C-contiguous float32), built
    on one OpenMP thread: faiss inserts rows in parallel otherwise, and the graph (so every
    neighbour found) would depend on the timing."""
    import faiss

    faiss.omp_set_num_threads(1)  # this thread's setting (each worker thread sets its own)
    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_BUILD_WIDTH
    index.add(x)
    return index


def _hnsw_rows(index, x: np.ndarray, rows: np.ndarray, k: int, width: int) -> np.ndarray:
    """(len(rows), k) neighbours of ``rows`` (the graph's own rows ``x``) through ``index``
    searching ``width`` candidates, itself excluded; rows for which the graph returned too
    few others are searched exactly."""
    import faiss

    faiss.omp_set_num_threads(1)
    params = faiss.SearchParametersHNSW(efSearch=int(max(width, k + 1)))
    got = index.search(np.ascontiguousarray(x[rows]), k + 1, params=params)[1]
    own = got == rows[:, None]
    # each row's first k results other than itself (and not -1, faiss's "nothing found")
    keep = ~own & (got >= 0)
    short = keep.sum(1) < k
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out = np.take_along_axis(got, order, axis=1)
    if short.any():
        import torch

        out[short] = _exact_rows(torch.from_numpy(x), rows[short], k)[0]
    return out


#: rows per leaf of :func:`locality_order`'s tree
LOCALITY_LEAF = 256


def locality_order(x: np.ndarray, leaf: int = LOCALITY_LEAF, seed: int = 0) -> np.ndarray:
    """(N,) a permutation of the rows of ``x`` (N, H) that puts similar rows near each other:
    the leaves, in order, of a random-projection tree (each level splits every group at the
    median of its rows' projections on one random direction; groups of at most ``leaf`` rows).

    Graph and tree searches are bound by memory latency: an index built on rows in this order
    and queried in this order finds the same recall 2.5x faster at 1,000,000 rows (annoy: 88
    vs 222 µs a query, measured on the 1M Fashion-MNIST set's last checkpoint), because
    consecutive queries and their candidates share cache lines and pages. Written by hand:
    neither annoy nor faiss exposes such an order, and a k-means order costs more.
    Deterministic given ``seed``."""
    n = len(x)
    depth = int(np.ceil(np.log2(n / leaf))) if n > leaf else 0
    proj = x @ np.random.default_rng(seed).standard_normal((x.shape[1], depth)).astype(x.dtype)
    order = np.arange(n)
    group = np.zeros(n, dtype=np.int64)
    for d in range(depth):
        o = np.lexsort((proj[order, d], group))  # each group (contiguous) sorted by its projection
        order, group = order[o], group[o]
        _, start, count = np.unique(group, return_index=True, return_counts=True)
        slot = np.searchsorted(start, np.arange(n), side="right") - 1
        group = 2 * slot + (np.arange(n) - start[slot] >= count[slot] // 2)
    return order


def _calibrated_index(x: np.ndarray, k: int, xkey: Optional[str] = None):
    """Build the graph on the rows in :func:`locality_order` and choose its search width:
    the smallest on the ladder (k + 1, then a quarter more each step) whose recall on a
    calibration sample (seed 1) reaches :data:`TARGET_RECALL` + :data:`CALIBRATION_MARGIN`.
    Returns (index, width, order, ordered rows): the graph's row ``i`` is row ``order[i]``."""
    order = locality_order(x)
    xo = np.ascontiguousarray(x[order])
    index = _hnsw_index(xo)
    at = np.empty(len(x), dtype=np.int64)
    at[order] = np.arange(len(x))
    rows = _sample_rows(len(x), CALIBRATION_SAMPLE, seed=1)
    sims = _exact_sample(x, rows, k, xkey)[1]
    width, ceiling = k + 1, HNSW_WIDTH_MAX_PER_NEIGHBOUR * (k + 1)
    while width < ceiling:
        found = order[_hnsw_rows(index, xo, at[rows], k, width)]
        if _recall_rows(x, rows, found, sims) >= TARGET_RECALL + CALIBRATION_MARGIN:
            break
        width = min(ceiling, max(width + 1, width * 5 // 4))
    return index, width, order, xo


def _graph_searches(xs: list[np.ndarray], k: int, chunk: int,
                    xkeys: Optional[list[str]] = None) -> list[tuple[np.ndarray, int, float, int]]:
    """HNSW neighbours for several searches at once, on :func:`search_threads` threads:
    graph builds run side by side and each search's queries are split in blocks, so every
    core stays busy. Returns (neighbours, width, recall, sample) per search; the recall is
    measured on another sample than the calibration's and the width doubles (at most
    :data:`HNSW_WIDENINGS` times) while it falls short."""
    from concurrent.futures import ThreadPoolExecutor

    threads = search_threads()
    out = []
    with ThreadPoolExecutor(threads) as pool:
        def query(index, xo: np.ndarray, width: int) -> list:
            """Every row's query, in blocks of consecutive rows on the pool (futures, in row order)."""
            return [pool.submit(_hnsw_rows, index, xo, r, k, width)
                    for r in np.array_split(np.arange(len(xo)), 4 * threads)]

        def gather(parts: list, order: np.ndarray) -> np.ndarray:
            """The graph rows' neighbours as the rows' neighbours (row ``order[i]`` is graph row ``i``)."""
            found = np.empty((len(order), k), dtype=np.int64)
            found[order] = order[np.concatenate([p.result() for p in parts])]
            return found

        xkeys = xkeys or [None] * len(xs)
        built = [pool.submit(_calibrated_index, x, k, xkey) for x, xkey in zip(xs, xkeys)]
        pending = []
        for b in built:  # each search's queries queue up as soon as its graph is ready
            index, width, order, xo = b.result()
            pending.append((index, width, order, xo, query(index, xo, width)))
        for x, xkey, (index, width, order, xo, parts) in zip(xs, xkeys, pending):
            for attempt in range(HNSW_WIDENINGS + 1):
                found = gather(parts, order)
                recall, sample = _recall_on_sample(x, found, RECALL_SAMPLE, 0, xkey, chunk)
                if (recall >= TARGET_RECALL or attempt == HNSW_WIDENINGS
                        or width >= HNSW_WIDTH_MAX_PER_NEIGHBOUR * (k + 1)):
                    break  # the neighbours, width and recall returned always belong together
                width *= 2
                parts = query(index, xo, width)
            out.append((found, width, recall, sample))
    return out


def nearest_neighbours_many(embs: Sequence[np.ndarray], k: int, chunk: int = 2048,
                            method: str = "auto") -> list[np.ndarray]:
    """:func:`nearest_neighbours` of several embeddings (e.g. one per checkpoint), the HNSW
    ones searched side by side (:func:`_graph_searches`). Same results as one call each."""
    import torch

    if method not in ("auto", "exact", "hnsw"):
        raise ValueError(f"method must be 'auto', 'exact' or 'hnsw'; got {method!r}")
    todo: dict[tuple, list[int]] = {}
    results: list = [None] * len(embs)
    keys, xs = [], {}
    for i, emb in enumerate(embs):
        x = _unit_rows(emb)
        n = len(x)
        kk = int(min(k, n - 1))
        if kk < 1:
            results[i] = (np.zeros((n, 0), dtype=np.int64), None)
            keys.append(None)
            continue
        use = method if method != "auto" else ("exact" if n <= EXACT_SEARCH_MAX else "hnsw")
        key = (_content_key(x), x.shape, kk, use)
        keys.append(key)
        hit = _cache_get(key)
        if hit is not None:
            results[i] = hit
        else:
            todo.setdefault(key, []).append(i)
            xs[key] = x
    fresh: dict[tuple, tuple[np.ndarray, NeighbourSearch]] = {}
    graph_keys = [key for key in todo if key[3] == "hnsw"]
    for key in todo:
        if key[3] == "exact":
            t0 = time.perf_counter()
            x = xs[key]
            found = _exact_rows(torch.from_numpy(x), np.arange(len(x)), key[2], chunk)[0]
            fresh[key] = (found, NeighbourSearch("exact", len(x), key[2], 1.0, len(x),
                                                 seconds=time.perf_counter() - t0, key=key[0][:16]))
    by_k: dict[int, list[tuple]] = {}
    for key in graph_keys:
        by_k.setdefault(key[2], []).append(key)
    for kk, group in by_k.items():
        t0 = time.perf_counter()
        done = _graph_searches([xs[key] for key in group], kk, chunk, [key[0] for key in group])
        seconds = (time.perf_counter() - t0) / len(group)  # side by side: each one's share of the wall time
        for key, (found, width, recall, sample) in zip(group, done):
            fresh[key] = (found, NeighbourSearch("hnsw", len(xs[key]), kk, recall, sample, HNSW_LINKS, width,
                                                 seconds=seconds, key=key[0][:16]))
    _cache_put(fresh)
    log = getattr(_SEARCH_LOG, "log", None)
    for key, idx in todo.items():
        for i in idx:
            results[i] = fresh[key]
    out = []
    for hit in results:
        info = hit[1]
        if log is not None and info is not None and all(s.key != info.key or s.k != info.k for s in log):
            log.append(info)
        out.append(hit[0].copy())
    return out


def nearest_neighbours(emb: np.ndarray, k: int, chunk: int = 2048, method: str = "auto") -> np.ndarray:
    """(N, k) indices of each row's ``k`` most cosine-similar other rows (itself excluded),
    most similar first.

    ``method``: ``"exact"`` (in blocks of rows: O(N² · H) time, O(chunk · N) memory),
    ``"hnsw"`` (a faiss HNSW graph of :data:`HNSW_LINKS` links per node, its search width
    calibrated to :data:`TARGET_RECALL` on a sample, then the recall measured against exact
    search on :data:`RECALL_SAMPLE` other random rows and reported), or ``"auto"`` (exact up
    to :data:`EXACT_SEARCH_MAX` rows, HNSW above). Each call's :class:`NeighbourSearch` goes to
    :func:`recording_searches`. Results are memoised by content (the last 16 calls), so
    several rankers and repeated queries over the same store pay once.
    """
    return nearest_neighbours_many([emb], k, chunk, method)[0]


def checkpoint_embeddings(inp: RankerInputs, c: int) -> np.ndarray:
    """What neighbourhoods are measured in at checkpoint ``c``: final-layer inputs, else logits."""
    if inp.features is not None:
        return np.asarray(inp.features[c])
    return np.asarray(inp.logits[c])


def early_neighbours(inp: RankerInputs, k: int = 10) -> list[np.ndarray]:
    """The ``k`` nearest neighbours (:func:`nearest_neighbours`) at each early checkpoint."""
    return nearest_neighbours_many([checkpoint_embeddings(inp, c) for c in range(n_early(len(inp.logits)))], k)


def spread_checkpoints(n_checkpoints: int) -> list[int]:
    """The first, middle and last checkpoints (fewer when there are fewer than three)."""
    return sorted({0, (n_checkpoints - 1) // 2, n_checkpoints - 1})


def spread_neighbours(inp: RankerInputs, k: int = 10) -> list[np.ndarray]:
    """The ``k`` nearest neighbours (:func:`nearest_neighbours`) at the first, middle and
    last checkpoints (:func:`spread_checkpoints`): three searches, whatever the number of
    checkpoints, and the first one is shared with :func:`early_neighbours`."""
    return nearest_neighbours_many([checkpoint_embeddings(inp, c) for c in spread_checkpoints(len(inp.logits))], k)


#: above :data:`EXACT_SEARCH_MAX` rows, :func:`memorisation` (one share per checkpoint) is
#: estimated on the rows whose exact neighbours the graph searches' recall check (seed 0) and
#: calibration (seed 1) found: about 2,000 rows, so a share's standard error is at most
#: 0.5 / √(suspects in the sample), about 0.035 at a 10% error rate, where a whole neighbour
#: search per early checkpoint would cost 3-5 CPU-s at 60,000 rows and minutes at 1,000,000;
#: the first checkpoint's samples are already searched (memoised), so only the other early
#: checkpoints cost anything.
def memorisation_rows(n: int) -> list[np.ndarray]:
    """The samples :func:`memorisation` reads above :data:`EXACT_SEARCH_MAX` rows: the
    recall check's rows and the calibration's (sorted; the two may share a few rows)."""
    return [_sample_rows(n, RECALL_SAMPLE, seed=0), _sample_rows(n, CALIBRATION_SAMPLE, seed=1)]


def neighbours_of_rows(emb: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), k) exact ``k`` most cosine-similar other rows of ``emb`` (N, H) for
    ``rows``, most similar first; memoised by content like :func:`nearest_neighbours`."""
    x = _unit_rows(emb)
    rows = np.asarray(rows, dtype=np.int64)
    k = int(min(k, len(x) - 1))
    if k < 1:
        return np.zeros((len(rows), 0), dtype=np.int64)
    return _exact_sample(x, rows, k)[0].copy()


def neighbour_label_shares(inp: RankerInputs, k: int = 10, labels: Optional[np.ndarray] = None,
                           neighbours: Optional[list[np.ndarray]] = None,
                           weights: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, K): share of each class among the ``k`` nearest neighbours' ``labels`` (the given
    labels by default), averaged over the neighbour sets (the early checkpoints' by
    default); ``weights`` (one per set, summing to 1) makes it a weighted mean."""
    C, N, K = np.shape(inp.logits)
    lab = _labels(inp) if labels is None else np.asarray(labels, dtype=np.int64)
    nbrs = early_neighbours(inp, k) if neighbours is None else neighbours
    shares = np.zeros((N, K))
    rows = np.arange(N, dtype=np.int64)[:, None] * K
    for i, nn in enumerate(nbrs):
        if nn.shape[1]:  # class counts among the neighbours (N·k integers, not an (N, k, K) one-hot)
            part = np.bincount((rows + lab[nn]).ravel(), minlength=N * K).reshape(N, K) / nn.shape[1]
        else:
            part = np.eye(K)[lab]
        shares += part if weights is None else weights[i] * part
    return shares / len(nbrs) if weights is None else shares


def _cleaned_vote(inp: RankerInputs, p: np.ndarray, nbrs: list[np.ndarray], k: int, max_rounds: int,
                  weights: Optional[np.ndarray] = None) -> np.ndarray:
    """The vote shared by :func:`neighbour_vote` and :func:`neighbour_vote_adaptive`:
    ``q = (neighbours' label shares + p) / 2`` with the neighbours' labels cleaned to a
    fixed point (at most ``max_rounds`` votes), then 1 − q(given label) over its class's
    average q (confident learning's per-class threshold)."""
    y = _labels(inp)
    n, K = p.shape
    labels = y
    for _ in range(max(1, int(max_rounds))):
        q = (neighbour_label_shares(inp, k, labels=labels, neighbours=nbrs, weights=weights) + p) / 2.0
        cleaned = q.argmax(axis=1)
        if np.array_equal(cleaned, labels):
            break
        labels = cleaned
    own = q[np.arange(n), y]
    thr = np.ones(K)
    for c in range(K):
        if (y == c).any():
            thr[c] = max(own[y == c].mean(), 1e-12)
    return 1.0 - own / thr[y]


# --------------------------------------------------------------------------- rankers
def self_influence_fast(inp: RankerInputs) -> np.ndarray:
    """TracInCPFast self-influence ``Σ_c η_c ‖a‖²‖δ‖²`` (Captum tutorial's ranking)."""
    return (np.asarray(inp.weights)[:, None] * inp.si_fast).sum(0)


def self_influence_cp(inp: RankerInputs) -> np.ndarray:
    """TracInCP self-influence over all layers."""
    if inp.si_cp is None:
        raise ValueError("all-layer self-influence was not computed for this workspace")
    return (np.asarray(inp.weights)[:, None] * inp.si_cp).sum(0)


def self_influence_fast_early(inp: RankerInputs) -> np.ndarray:
    """TracInCPFast self-influence over the early checkpoints only (before memorisation)."""
    e = n_early(len(inp.weights))
    return (np.asarray(inp.weights)[:e, None] * inp.si_fast[:e]).sum(0)


def self_influence_fast_normalised(inp: RankerInputs) -> np.ndarray:
    """TracInCPFast self-influence with the final-layer input normalised to unit length
    (the cosine variant): ``Σ_c η_c ‖δ‖²``, ``δ = softmax − onehot(given label)``."""
    p = probabilities(inp)
    y = _labels(inp)
    d = p.copy()
    d[:, np.arange(len(y)), y] -= 1.0
    return (np.asarray(inp.weights)[:, None] * (d ** 2).sum(-1)).sum(0)


def loss_final(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label at the final checkpoint."""
    return per_checkpoint_loss(inp)[-1]


def loss_mean(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label averaged over checkpoints."""
    return per_checkpoint_loss(inp).mean(0)


def loss_early(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label averaged over the early checkpoints."""
    L = per_checkpoint_loss(inp)
    return L[:n_early(len(L))].mean(0)


def aum(inp: RankerInputs) -> np.ndarray:
    """Area under the margin (Pleiss et al. 2020), negated: low margin = suspicious."""
    return -per_checkpoint_margin(inp).mean(0)


def aum_early(inp: RankerInputs) -> np.ndarray:
    """Area under the margin over the early checkpoints, negated."""
    M = per_checkpoint_margin(inp)
    return -M[:n_early(len(M))].mean(0)


def confidence_class_normalised(inp: RankerInputs) -> np.ndarray:
    """1 − the early checkpoints' probability of the given label divided by its class's
    average (confident learning's per-class threshold, Northcutt et al. 2021)."""
    p = probabilities(inp)
    p = p[:n_early(len(p))].mean(0)
    y = _labels(inp)
    K = p.shape[1]
    thr = np.ones(K)
    for k in range(K):
        if (y == k).any():
            thr[k] = max(p[y == k, k].mean(), 1e-12)
    return 1.0 - p[np.arange(len(y)), y] / thr[y]


def knn_disagreement(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """Share of the ``k`` nearest neighbours (final-layer inputs at the early checkpoints;
    logits when the inputs are not given) with another given label (Deep k-NN, Bahri et
    al. 2020); early loss breaks ties."""
    shares = neighbour_label_shares(inp, k)
    y = _labels(inp)
    return 1.0 - shares[np.arange(len(y)), y] + 1e-6 * np.tanh(loss_early(inp))


def knn_spread(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """Share of the ``k`` nearest neighbours with another given label, averaged over the
    first, middle and last checkpoints (:func:`spread_neighbours`; final-layer inputs, or
    logits when the inputs are not given). Unlike :func:`knn_disagreement` it also looks
    where the representation is best when training stops before memorising (short
    schedules); the averaged loss breaks ties."""
    shares = neighbour_label_shares(inp, k, neighbours=spread_neighbours(inp, k))
    y = _labels(inp)
    return 1.0 - shares[np.arange(len(y)), y] + 1e-6 * np.tanh(loss_mean(inp))


def neighbour_vote(inp: RankerInputs, k: int = 10, max_rounds: int = 10) -> np.ndarray:
    """How far the given label falls short of its class's usual support: 1 − q(given label)
    divided by the average q of the items given that label.

    ``q`` (N, K) averages two votes: the labels of the ``k`` nearest neighbours (final-layer
    inputs at the early checkpoints; logits when the inputs are not given) and what the early
    checkpoints predict. The neighbours' labels are cleaned first: each is replaced by its
    own ``q``'s most likely class and ``q`` recomputed, until no label changes (a fixed
    point; at most ``max_rounds`` votes). Dividing by the class's average ``q`` is confident
    learning's per-class threshold (Northcutt et al. 2021): a label from a class the model
    and the neighbourhoods find hard is not suspicious just for that.
    """
    p = probabilities(inp)
    return _cleaned_vote(inp, p[:n_early(len(p))].mean(0), early_neighbours(inp, k), k, max_rounds)


def memorisation(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """(C,) how far each checkpoint has memorised suspicious labels: the share of the
    *suspects* (items whose given label is not the most common label among their ``k``
    nearest neighbours at the early checkpoints) that the checkpoint predicts as their
    given label. 0 when there are no suspects. Above :data:`EXACT_SEARCH_MAX` rows it is
    estimated on :func:`memorisation_rows`."""
    y = _labels(inp)
    n, K = len(y), np.shape(inp.logits)[2]
    if n > EXACT_SEARCH_MAX:  # estimated on samples (see memorisation_rows)
        samples = memorisation_rows(n)
        rows, first = np.unique(np.concatenate(samples), return_index=True)  # a row in both samples counts once
        shares = np.zeros((len(rows), K))
        at = np.arange(len(rows), dtype=np.int64)[:, None] * K
        for c in range(n_early(len(inp.logits))):
            x = _unit_rows(checkpoint_embeddings(inp, c))
            xkey = _content_key(x)  # once per checkpoint, not per sample (256 MB at 1M rows)
            nn = np.concatenate([_exact_sample(x, r, min(k, n - 1), xkey)[0] for r in samples])[first]
            shares += np.bincount((at + y[nn]).ravel(), minlength=len(rows) * K).reshape(len(rows), K)
        suspects = rows[shares.argmax(axis=1) != y[rows]]
    else:
        suspects = np.flatnonzero(neighbour_label_shares(inp, k).argmax(axis=1) != y)
    if not len(suspects):
        return np.zeros(len(inp.logits))
    pred = np.stack([np.asarray(lg[suspects]).argmax(axis=-1) for lg in inp.logits])
    return (pred == y[suspects]).mean(axis=1)


def checkpoint_trust(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """(C,) weights of the checkpoints for the adaptive rankers: ``1 − memorisation``
    (at least 0.001). A checkpoint that predicts the suspects' given labels has learnt
    them by heart, so its losses, margins and neighbourhoods say little about them; this
    replaces the fixed "first third" by what each run shows (long training memorises,
    short training may not)."""
    return np.clip(1.0 - memorisation(inp, k), 1e-3, None)


def aum_adaptive(inp: RankerInputs) -> np.ndarray:
    """Area under the margin, negated, with checkpoints weighted by :func:`checkpoint_trust`:
    ``−Σ_c t_c · margin_c / Σ_c t_c``."""
    t = checkpoint_trust(inp)
    return -(t[:, None] * per_checkpoint_margin(inp)).sum(0) / t.sum()


def loss_adaptive(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label, checkpoints weighted by :func:`checkpoint_trust`."""
    t = checkpoint_trust(inp)
    return (t[:, None] * per_checkpoint_loss(inp)).sum(0) / t.sum()


def neighbour_vote_adaptive(inp: RankerInputs, k: int = 10, max_rounds: int = 10) -> np.ndarray:
    """:func:`neighbour_vote` with the checkpoints weighted by :func:`checkpoint_trust`
    instead of the fixed early third: ``q`` averages the neighbours' (cleaned) labels at
    the first, middle and last checkpoints (:func:`spread_neighbours`) and the predictions
    of every checkpoint, each weighted by its trust; then the same per-class normalisation."""
    p = probabilities(inp)
    t = checkpoint_trust(inp, k)
    cs = spread_checkpoints(len(p))
    return _cleaned_vote(inp, (t[:, None, None] * p).sum(0) / t.sum(), spread_neighbours(inp, k), k, max_rounds,
                         weights=t[cs] / t[cs].sum())


def probability_margin_sq_adaptive(inp: RankerInputs) -> np.ndarray:
    """Squared-probability margin of the best other class over the given label, checkpoints
    weighted by :func:`checkpoint_trust`: ``Σ_c t_c · (max_{k≠y} p_ck² − p_cy²) / Σ_c t_c``.
    ``(p_o − p_y)(p_o + p_y)``: the probability margin weighted by the mass the two contenders
    hold, so doubt between the given label and one other class (what a flipped label looks
    like) counts more than doubt spread over many classes (a hard or odd item). In [−1, 1]."""
    p = probabilities(inp)
    y = _labels(inp)
    d = without_given(p, y).max(axis=-1) ** 2 - _given(p, y) ** 2
    t = checkpoint_trust(inp)
    return (t[:, None] * d).sum(0) / t.sum()


def flip_structure(q: np.ndarray, labels: np.ndarray) -> float:
    """How structured a run's label flips look, in [0, 1]: among the *suspects* (items whose
    given label is not the most likely class of ``q`` (N, K)), the share whose given label
    is the runner-up, corrected for chance (``1 / (K − 1)``, what flips to a random other
    class would give): ``(share − 1/(K−1)) / (1 − 1/(K−1))``, clipped. Near 1 when wrong
    labels name each item's most confusable class (Captum's tutorial noise, class pairs),
    near 0 when they are spread at random. 1 with two classes or no suspects."""
    q = np.asarray(q, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    K = q.shape[1]
    qy = q[np.arange(len(y)), y]
    suspects = qy < q.max(axis=1)
    if K <= 2 or not suspects.any():
        return 1.0
    second = np.partition(q[suspects], K - 2, axis=1)[:, K - 2]
    share = float((qy[suspects] >= second).mean())
    chance = 1.0 / (K - 1)
    return float(np.clip((share - chance) / (1.0 - chance), 0.0, 1.0))


def neighbour_margin_adaptive(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """Squared-probability margin of a vote that neighbourhoods and predictions cast
    together, with the doubt spread over the other classes counted as far as the run's
    flips look unstructured.

    ``q`` (N, K) is the mean of two views, each weighted per checkpoint by
    :func:`checkpoint_trust`: the ``k`` nearest neighbours' given labels at the first,
    middle and last checkpoints (:func:`spread_neighbours`) and every checkpoint's
    predictions. With ``q_y`` the given label's share, ``q_o`` the best other class's and
    ``r = 1 − q_y − q_o`` the rest, the score is ``(q_o + w·r)² − q_y²`` with
    ``w = 1 −`` :func:`flip_structure` ``(q, labels)``: the squared margin of
    :func:`probability_margin_sq_adaptive` (doubt between the given label and one other
    class) when the suspects' labels are their runner-up classes, and ``1 − 2·q_y`` (the
    given label's support alone, like the loss) when wrong labels look random. Higher =
    more likely mislabelled; in [−1, 1]. No constant is fitted: ``w`` is read from the run.
    """
    return _neighbour_margin(inp, k, with_inputs=False)


def _neighbour_margin(inp: RankerInputs, k: int, with_inputs: bool) -> np.ndarray:
    """:func:`neighbour_margin_adaptive`, and with ``with_inputs`` (and a sketch in ``inp``)
    :func:`neighbour_margin_inputs`: the input sketch's neighbours in the neighbour view."""
    y = _labels(inp)
    x = _centred_sketch(inp) if with_inputs and inp.inputs is not None else None
    own_nn = None
    if x is not None:  # the four searches side by side (graph builds on every core); memoised,
        # so spread_neighbours below finds the model's three
        *_, own_nn = nearest_neighbours_many(
            [checkpoint_embeddings(inp, c) for c in spread_checkpoints(len(inp.logits))] + [x], k)
        del x
    t = checkpoint_trust(inp, k)
    shares = _trusted_neighbour_shares(inp, t, k)
    if own_nn is not None:
        own = neighbour_label_shares(inp, k, neighbours=[own_nn])
        beta = input_view_weight(own, shares, y)
        shares = (1.0 - beta) * shares + beta * own
        del own
    q = (shares + weighted_probabilities(inp, t)) / 2.0
    return _adaptive_margin(q, y)


def _trusted_neighbour_shares(inp: RankerInputs, trust: np.ndarray, k: int) -> np.ndarray:
    """(N, K) the neighbours' given labels at the first, middle and last checkpoints,
    weighted by the checkpoints' ``trust``: the neighbour view of the margin rankers."""
    cs = spread_checkpoints(len(trust))
    return neighbour_label_shares(inp, k, neighbours=spread_neighbours(inp, k), weights=trust[cs] / trust[cs].sum())


def _adaptive_margin(q: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``(q_o + w·r)² − q_y²`` of a vote ``q`` (N, K) (see :func:`neighbour_margin_adaptive`)."""
    qy, qo = _given(q, labels), without_given(q, labels).max(axis=1)
    w = 1.0 - flip_structure(q, labels)
    rest = np.clip(1.0 - qy - qo, 0.0, None)
    return (qo + w * rest) ** 2 - qy ** 2


def input_neighbours(inp: RankerInputs, k: int = 10) -> Optional[np.ndarray]:
    """(N, k) the ``k`` nearest neighbours (:func:`nearest_neighbours`: cosine similarity)
    of every example in its input sketch (``inp.inputs``) centred on the mean sketch; None
    when the inputs carry no sketch."""
    if inp.inputs is None:
        return None
    return nearest_neighbours(_centred_sketch(inp), k)


def _centred_sketch(inp: RankerInputs) -> np.ndarray:
    x = np.asarray(inp.inputs, dtype=np.float32)
    return x - x.mean(axis=0, dtype=np.float64).astype(np.float32)


def label_agreement(shares: np.ndarray, labels: np.ndarray) -> float:
    """How far the neighbours' labels agree with each item's given label beyond chance:
    ``(a − a₀) / (1 − a₀)`` with ``a`` the mean share of the given label among an item's
    neighbours (``shares`` (N, K), rows summing to 1) and ``a₀ = Σ_c π_c²`` what neighbours
    drawn at random would give (``π`` the given labels' class shares). 1 = every
    neighbour carries the item's label; about 0 = the neighbourhoods know nothing of the
    classes; below 0 possible."""
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    K = shares.shape[1]
    pi = np.bincount(y, minlength=K) / max(1, len(y))
    chance = float((pi ** 2).sum())
    agree = float(_given(np.asarray(shares, dtype=np.float64), y).mean())
    return (agree - chance) / max(1.0 - chance, 1e-12)


def input_view_weight(input_shares: np.ndarray, model_shares: np.ndarray, labels: np.ndarray) -> float:
    """The input-space neighbours' part of :func:`neighbour_margin_inputs`'s neighbour view,
    in [0, ½]: ``½ · clip(κ_in / κ_model, 0, 1)``, ``κ`` the :func:`label_agreement` of the
    input sketch's neighbourhoods and of the model's (trust-weighted) ones. Half when the
    inputs' neighbours agree with the labels at least as well as the model's do (digits,
    tabular data), less as they know less of the classes, 0 when they know nothing (an
    uninformative sketch changes nothing)."""
    k_in, k_model = label_agreement(input_shares, labels), label_agreement(model_shares, labels)
    if k_in <= 0:
        return 0.0
    return 0.5 if k_in >= k_model else 0.5 * k_in / k_model


def neighbour_margin_inputs(inp: RankerInputs, k: int = 10) -> np.ndarray:
    """:func:`neighbour_margin_adaptive` with the examples' neighbourhoods in their own
    inputs as part of the neighbour view: the model's neighbourhoods learn along with the
    labels (an item whose wrong label a checkpoint has already learnt sits among the class
    it was given), the inputs' never do.

    The neighbour view becomes ``(1 − β) · model neighbours' shares + β · input neighbours'
    shares`` (``k`` nearest in the input sketch, :func:`input_neighbours`), ``β`` =
    :func:`input_view_weight` (at most ½, read from the run: how well each neighbourhood's
    labels agree with the given ones); the predictions' view and the score are
    :func:`neighbour_margin_adaptive`'s. Without an input sketch (``inp.inputs`` None) it
    is :func:`neighbour_margin_adaptive`. Higher = more likely mislabelled; in [−1, 1].
    """
    return _neighbour_margin(inp, k, with_inputs=True)


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged; higher value -> higher rank."""
    return pd.Series(x).rank(method="average").to_numpy() / len(x)


def rank_combo(inp: RankerInputs) -> np.ndarray:
    """Mean of the rank-normalised self-influence (Fast), mean loss and AUM scores."""
    return (_rank01(self_influence_fast(inp)) + _rank01(loss_mean(inp)) + _rank01(aum(inp))) / 3.0


#: signals the default may combine (none needs the all-layer pass); the benchmark searches
#: weights over these. ``neighbour_vote_adaptive`` is not among them: it is the best single
#: ranker on the three small data sets, so a choice made on them gives it most of the weight,
#: and on Fashion-MNIST with tutorial noise it is 0.024 AUC below AUM (benchmarks/results/
#: mislabel_quality.md). It remains a ranking of its own.
COMBINABLE = ("knn_spread", "aum_adaptive", "aum", "loss_mean", "self_influence_fast_normalised",
              "probability_margin_sq_adaptive", "neighbour_margin_adaptive", "neighbour_margin_inputs")
#: the default's weights, chosen by ``benchmarks/mislabel_quality.py`` on all its data sets
#: (digits, wine, breast cancer, Fashion-MNIST; every noise model, rate and schedule): among
#: the grid points within 0.005 ROC AUC of the best of self-influence, averaged loss and AUM in
#: every setting, the best mean ROC AUC (data sets weighted equally), then the fewest signals
#: within one standard error of it. On all four data sets, and without any one of them, that
#: is :func:`neighbour_margin_inputs` alone. The benchmark reports each data set with
#: weights chosen without it (leave-one-dataset-out).
COMBINED_WEIGHTS: dict[str, float] = {"neighbour_margin_inputs": 1.0}


def rank_mean(inp: RankerInputs, weights: "dict[str, float]") -> np.ndarray:
    """Weighted mean of rankers' scores, each turned into ranks scaled to (0, 1] (ties
    averaged): ``Σ_s w_s · rank01(score_s) / Σ_s w_s``. Higher = more likely mislabelled,
    as every ranker in :data:`COMBINABLE` is. ``weights``: ranker name -> weight ≥ 0."""
    if not weights:
        raise ValueError("weights must name at least one ranker")
    bad = [n for n in weights if n not in COMBINABLE]
    if bad:
        raise ValueError(f"weights: {', '.join(map(repr, bad))} not combinable; choose from {', '.join(COMBINABLE)}")
    w = np.array([float(v) for v in weights.values()])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, ≥ 0 and not all 0, got {dict(weights)}")
    total = np.zeros(len(_labels(inp)))
    for (name, _), wi in zip(weights.items(), w):
        if wi > 0:
            total += wi * _rank01(RANKERS[name][0](inp))
    return total / w.sum()


def combined(inp: RankerInputs) -> np.ndarray:
    """:func:`rank_mean` with :data:`COMBINED_WEIGHTS`."""
    return rank_mean(inp, COMBINED_WEIGHTS)


RANKERS: dict[str, tuple[Callable[[RankerInputs], np.ndarray], str]] = {
    "combined": (combined, "weighted mean rank of the combinable signals, weights chosen across data sets "
                           "(now neighbour_margin_inputs alone)"),
    "neighbour_vote": (neighbour_vote, "neighbours' cleaned labels + early predictions: support for the given "
                                       "label relative to its class's average"),
    "knn_disagreement": (knn_disagreement, "share of the 10 nearest neighbours (early checkpoints) with another label"),
    "knn_spread": (knn_spread, "share of the 10 nearest neighbours with another label, first / middle / last "
                               "checkpoints"),
    "neighbour_vote_adaptive": (neighbour_vote_adaptive,
                                "neighbour_vote over the first / middle / last checkpoints' neighbourhoods and "
                                "every checkpoint's predictions, weighted by how little each memorised suspects"),
    "aum_adaptive": (aum_adaptive, "area under the margin (negated), checkpoints weighted by how little each "
                                   "memorised suspects"),
    "loss_adaptive": (loss_adaptive, "loss of the given label, checkpoints weighted by how little each memorised "
                                     "suspects"),
    "loss_early": (loss_early, "loss of the given label, early checkpoints"),
    "aum_early": (aum_early, "area under the margin (negated), early checkpoints"),
    "confidence_class_normalised": (confidence_class_normalised,
                                    "early probability of the given label relative to its class's average (cleanlab)"),
    "self_influence_fast": (self_influence_fast, "TracIn self-influence, last layer (Captum's TracInCPFast)"),
    "self_influence_fast_early": (self_influence_fast_early, "TracIn self-influence, last layer, early checkpoints"),
    "self_influence_fast_normalised": (self_influence_fast_normalised,
                                       "TracIn self-influence, last layer, inputs normalised to unit length"),
    "self_influence_cp": (self_influence_cp, "TracIn self-influence, all layers (TracInCP)"),
    "loss_final": (loss_final, "loss of the given label, final checkpoint"),
    "loss_mean": (loss_mean, "loss of the given label, averaged over checkpoints"),
    "aum": (aum, "area under the margin (negated), averaged over checkpoints"),
    "rank_combo": (rank_combo, "mean rank of self-influence (Fast), mean loss and AUM"),
    "probability_margin_sq_adaptive": (probability_margin_sq_adaptive,
                                       "squared probability of the best other class minus the given label's, "
                                       "checkpoints weighted by how little each memorised suspects"),
    "neighbour_margin_adaptive": (neighbour_margin_adaptive,
                                  "squared margin of the neighbours' labels and the predictions together, the "
                                  "other classes' spread counted as far as the run's flips look random"),
    "neighbour_margin_inputs": (neighbour_margin_inputs,
                                "neighbour_margin_adaptive with neighbours in the examples' own inputs too, "
                                "weighted by how well they agree with the labels"),
}

#: rankers that combine several signals (the others are single signals)
COMBINATIONS = frozenset({"combined", "neighbour_vote", "rank_combo"})
#: rankers that need the all-layer (TracInCP) pass
NEEDS_CP = frozenset({"self_influence_cp"})
#: rankers that use ``RankerInputs.features`` when given (neighbourhoods)
USES_FEATURES = frozenset({"combined", "neighbour_vote", "knn_disagreement", "knn_spread", "neighbour_vote_adaptive",
                           "aum_adaptive", "loss_adaptive", "probability_margin_sq_adaptive",
                           "neighbour_margin_adaptive", "neighbour_margin_inputs"})

#: the Review page's default ranking: see the module docstring and benchmarks/mislabel_quality.py
DEFAULT_RANKER = "combined"


def score_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every score, shape ``(n,)`` int64: 1 = largest score (most likely
    mislabelled); ties keep index order."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    return rank


def score_table(scores: np.ndarray) -> pd.DataFrame:
    """``index``, ``score``, ``rank`` (1 = most likely mislabelled), sorted by rank (the
    order :func:`score_ranks` gives: ties keep index order)."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")  # one sort: the rows in rank order are the table
    return pd.DataFrame({"index": order, "score": scores[order], "rank": np.arange(1, len(scores) + 1)})


def compute(name: Optional[str], inp: RankerInputs) -> np.ndarray:
    """Scores of ranker ``name`` (None = :data:`DEFAULT_RANKER`)."""
    name = name or DEFAULT_RANKER
    if name not in RANKERS:
        raise ValueError(f"unknown ranking {name!r}; choose one of {', '.join(RANKERS)}")
    return np.asarray(RANKERS[name][0](inp), dtype=np.float64)


def available(inp_has_cp: bool, inp_has_features: bool = True) -> list[str]:
    """Rankers computable from inputs with / without the all-layer terms. Rankers in
    :data:`USES_FEATURES` work without features too (on the logits), so
    ``inp_has_features`` changes nothing; it is accepted for symmetry."""
    return [n for n in RANKERS if inp_has_cp or n not in NEEDS_CP]


# --------------------------------------------------------------------------- evaluation
def thin_curve(x: np.ndarray, y: np.ndarray, points: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``2 · points`` points of the curve ``(x, y)`` (x non-decreasing): evenly
    spaced by position and by x, first and last kept. ``points=None`` keeps every point.
    For charts: 60,000-point curves make slow pages and look the same thinned."""
    x, y = np.asarray(x), np.asarray(y)
    if points is None or len(x) <= 2 * int(points):
        return x, y
    by_pos = np.linspace(0, len(x) - 1, int(points)).round().astype(np.int64)
    by_x = np.searchsorted(x, np.linspace(x[0], x[-1], int(points)), side="left").clip(0, len(x) - 1)
    keep = np.unique(np.concatenate([by_pos, by_x, [0, len(x) - 1]]))
    return x[keep], y[keep]


def found_curve(scores: np.ndarray, is_mislabelled: Sequence[bool],
                points: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(share reviewed, share of mislabels found) reviewing in descending score order;
    ``points``: thin to about that many (:func:`thin_curve`)."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    found = np.cumsum(truth[order]) / max(1, truth.sum())
    reviewed = np.arange(1, len(truth) + 1) / len(truth)
    return thin_curve(np.concatenate([[0.0], reviewed]), np.concatenate([[0.0], found]), points)


def roc_points(scores: np.ndarray, is_mislabelled: Sequence[bool],
               points: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) of ``scores`` (scikit-learn's ROC curve);
    ``points``: thin to about that many (:func:`thin_curve`)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(is_mislabelled, dtype=bool), np.asarray(scores, dtype=np.float64))
    return thin_curve(fpr, tpr, points)


def found_at(scores: np.ndarray, is_mislabelled: Sequence[bool], share: float) -> float:
    """Share of mislabels found in the first ``share`` of the queue."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    k = int(round(share * len(truth)))
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(truth[order].sum() / max(1, truth.sum()))


def precision_at(scores: np.ndarray, is_mislabelled: Sequence[bool], k: int) -> float:
    """Share of mislabelled items among the first ``k`` of the queue."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    k = int(min(max(k, 0), len(truth)))
    if k == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(truth[order].mean())


def roc_auc(scores: np.ndarray, is_mislabelled: Sequence[bool]) -> float:
    """ROC AUC of ``scores`` for mislabelled vs clean (ties count half); NaN if one class is empty."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    npos, nneg = int(truth.sum()), int((~truth).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    r = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((r[truth].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def quality(scores: np.ndarray, is_mislabelled: Sequence[bool]) -> dict[str, float]:
    """``auc``, ``found@10%``, ``found@20%`` of one ranking."""
    return {"auc": roc_auc(scores, is_mislabelled),
            "found@10%": found_at(scores, is_mislabelled, 0.10),
            "found@20%": found_at(scores, is_mislabelled, 0.20)}


@dataclass(frozen=True)
class QueueCurves:
    """How one ranking's queue finds the mislabels, everything from one sort (what the
    Evaluation page draws; 17 rankings of 60,000 items take about 0.15 s where one sort per
    figure and metric took 2 s). ``auc``: ROC AUC, ties counting half; ``found10`` /
    ``found20``: share of the mislabels in the first 10% / 20% of the queue; ``roc``: (false
    positive rate, true positive rate) and ``found``: (share reviewed, share found), each
    thinned to about ``points`` points (:func:`thin_curve`); ``found_counts``: (N,)
    mislabels among the first 1..N of the queue (precision in the top k is
    ``found_counts[k - 1] / k``)."""

    auc: float
    found10: float
    found20: float
    roc: tuple[np.ndarray, np.ndarray]
    found: tuple[np.ndarray, np.ndarray]
    found_counts: np.ndarray

    def precision_at(self, k: int) -> float:
        """Share of mislabelled items among the first ``k`` of the queue (NaN for k = 0)."""
        k = int(min(max(k, 0), len(self.found_counts)))
        return float(self.found_counts[k - 1] / k) if k else float("nan")


def queue_curves(scores: np.ndarray, is_mislabelled: Sequence[bool], points: Optional[int] = None) -> QueueCurves:
    """:class:`QueueCurves` of ``scores`` (higher = reviewed first; ties in index order, as
    :func:`found_curve`). Same values as :func:`roc_auc`, :func:`found_at`,
    :func:`found_curve` and :func:`roc_points` (scikit-learn's ROC curve with every
    threshold kept, before thinning)."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n, npos = len(truth), int(truth.sum())
    nneg = n - npos
    order = np.argsort(-s, kind="stable")
    counts = np.cumsum(truth[order], dtype=np.int64)
    # ROC: one point per distinct score (the last position of each run of equal scores)
    ends = np.flatnonzero(np.diff(s[order]) != 0) if n else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([ends, [n - 1]]) if n else ends
    tps = counts[ends] if n else np.zeros(0)
    fpr = np.concatenate([[0.0], (ends + 1 - tps) / max(1, nneg)])
    tpr = np.concatenate([[0.0], tps / max(1, npos)])
    auc = float(np.trapezoid(tpr, fpr)) if npos and nneg else float("nan")

    def found_at_share(share: float) -> float:
        k = int(round(share * n))
        return float(counts[k - 1] / max(1, npos)) if k else 0.0

    reviewed = np.arange(0, n + 1) / max(1, n)
    found = np.concatenate([[0.0], counts / max(1, npos)])
    return QueueCurves(auc, found_at_share(0.10), found_at_share(0.20), thin_curve(fpr, tpr, points),
                       thin_curve(reviewed, found, points), counts)
