"""Scores from stored per-example arrays: influence matrices, top-k, self-influence.

All computations are blockwise over training rows so memory stays bounded:
a block of ``rows`` training examples costs ``n_test × rows`` scores at a time.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .errors import TracInArgumentError
from .featurize import Term
from .store import array_name

#: upper bound on the elements of one (n_test × rows) score block
BLOCK_ELEMENTS = 1 << 24


class KMostInfluentialResults(NamedTuple):
    """Top-k results, shapes ``(n_test, k)``.

    ``indices[i, j]`` is the training index of the ``j``-th proponent (highest score
    first) or opponent (most negative first) of test example ``i``;
    ``influence_scores[i, j]`` is its score.
    """

    indices: Tensor
    influence_scores: Tensor


ArrayGetter = Callable[[str, int, int], Tensor]  # (name, start, stop) -> rows on device


def score_block(
    test: Mapping[str, Tensor],
    train_rows: Callable[[str], Tensor],
    terms: Sequence[Term],
    weights: Sequence[float],
) -> Tensor:
    """``Σ_c w_c Σ_terms`` for one block: ``(n_test, rows)``."""
    # (rows, d) @ (d, n_test): the tall-skinny product is ~2x faster than its transpose
    # on CPU BLAS for the few-test-examples case; the result is transposed at the end.
    total: Optional[Tensor] = None
    for c, w in enumerate(weights):
        for term in terms:
            if term[0] == "factor":
                a_name, d_name = array_name(c, term[1]), array_name(c, term[2])
                s = (train_rows(a_name) @ test[a_name].T).mul_(train_rows(d_name) @ test[d_name].T)
            else:
                g_name = array_name(c, term[1])
                s = train_rows(g_name) @ test[g_name].T
            if w != 1.0:
                s.mul_(w)
            total = s if total is None else total.add_(s)
    assert total is not None
    return total.T


def block_rows(n_test: int, n_train: int) -> int:
    return max(1, min(n_train, BLOCK_ELEMENTS // max(1, n_test)))


def iter_score_blocks(
    test: Mapping[str, Tensor],
    get_rows: ArrayGetter,
    n_train: int,
    terms: Sequence[Term],
    weights: Sequence[float],
):
    """Yield ``(start, scores_block)`` over the training rows."""
    n_test = next(iter(test.values())).shape[0]
    step = block_rows(n_test, n_train)
    for start in range(0, n_train, step):
        stop = min(n_train, start + step)
        yield start, score_block(test, lambda name, a=start, b=stop: get_rows(name, a, b), terms, weights)


def influence_matrix(test, get_rows, n_train, terms, weights, aggregate: bool = False,
                     progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """Scores ``(n_test, n_train)``, or ``(1, n_train)`` summed over tests when ``aggregate``.

    ``progress(rows)`` is called after each block of training rows."""
    blocks = []
    for _, s in iter_score_blocks(test, get_rows, n_train, terms, weights):
        blocks.append(s.sum(0, keepdim=True) if aggregate else s)
        if progress is not None:
            progress(s.shape[1])
    return torch.cat(blocks, dim=1)


class TopK:
    """Running top-k merge over score blocks (proponents: largest; opponents: smallest)."""

    def __init__(self, k: int, proponents: bool) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise TracInArgumentError(f"k must be a positive int or None, got {k!r}")
        self.k = k
        self.sign = 1.0 if proponents else -1.0
        self.values: Optional[Tensor] = None
        self.indices: Optional[Tensor] = None

    def add(self, start: int, scores: Tensor) -> None:
        s = scores * self.sign
        kk = min(self.k, s.shape[1])
        v, i = torch.topk(s, kk, dim=1)
        i = i + start
        if self.values is not None:
            v = torch.cat([self.values, v], dim=1)
            i = torch.cat([self.indices, i], dim=1)
            kk = min(self.k, v.shape[1])
            v, order = torch.topk(v, kk, dim=1)
            i = torch.gather(i, 1, order)
        self.values, self.indices = v, i

    def result(self, n_test: int, dtype: torch.dtype) -> KMostInfluentialResults:
        if self.values is None:
            return KMostInfluentialResults(
                torch.empty(n_test, 0, dtype=torch.long), torch.empty(n_test, 0, dtype=dtype)
            )
        return KMostInfluentialResults(self.indices.cpu().long(), (self.values * self.sign).cpu())


def top_k(test, get_rows, n_train, terms, weights, k: int, proponents: bool, aggregate: bool = False,
          progress: Optional[Callable[[int], None]] = None):
    """Exact top-k over all training rows, blockwise (``progress(rows)`` after each block)."""
    n_test = 1 if aggregate else next(iter(test.values())).shape[0]
    acc = TopK(k, proponents)
    dtype = torch.float32
    for start, s in iter_score_blocks(test, get_rows, n_train, terms, weights):
        if aggregate:
            s = s.sum(0, keepdim=True)
        dtype = s.dtype
        acc.add(start, s)
        if progress is not None:
            progress(s.shape[1])
    return acc.result(n_test, dtype)


def weighted_self(self_cols: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``Σ_c w_c · self_c`` for per-checkpoint columns of shape (N, 1) -> (N,)."""
    total: Optional[Tensor] = None
    for col, w in zip(self_cols, weights):
        v = col.reshape(-1) * w
        total = v if total is None else total + v
    assert total is not None
    return total
