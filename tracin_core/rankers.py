"""Mislabel rankers: one score per training example, higher = more likely mislabelled.

Every ranker reads quantities the feature store already holds (per-checkpoint
model outputs and self-influence terms), so none costs another pass over the data.
Results are tables (pandas) with columns ``index``, ``score``, ``rank`` (1 = review first).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class RankerInputs:
    """What rankers are computed from.

    ``logits``: (C, N, K) model outputs per checkpoint (C ordered by training time);
    ``labels``: (N,) given labels; ``weights``: (C,) learning rates;
    ``si_fast`` / ``si_cp``: (C, N) unweighted self-influence terms per checkpoint
    (last layer / all layers), ``si_cp`` may be None when not computed.
    """

    logits: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    si_fast: np.ndarray
    si_cp: Optional[np.ndarray] = None


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def per_checkpoint_loss(inp: RankerInputs) -> np.ndarray:
    """(C, N) cross-entropy of the given label at each checkpoint."""
    lp = _log_softmax(inp.logits.astype(np.float64))
    return -np.take_along_axis(lp, inp.labels[None, :, None].astype(np.int64), axis=2)[..., 0]


def per_checkpoint_margin(inp: RankerInputs) -> np.ndarray:
    """(C, N) margin: logit of the given label minus the largest other logit (AUM's margin)."""
    z = inp.logits.astype(np.float64)
    given = np.take_along_axis(z, inp.labels[None, :, None].astype(np.int64), axis=2)[..., 0]
    others = z.copy()
    np.put_along_axis(others, inp.labels[None, :, None].astype(np.int64), -np.inf, axis=2)
    return given - others.max(axis=2)


def self_influence_fast(inp: RankerInputs) -> np.ndarray:
    """TracInCPFast self-influence ``Σ_c η_c ‖a‖²‖δ‖²`` (Captum tutorial's ranking)."""
    return (inp.weights[:, None] * inp.si_fast).sum(0)


def self_influence_cp(inp: RankerInputs) -> np.ndarray:
    """TracInCP self-influence over all layers."""
    if inp.si_cp is None:
        raise ValueError("all-layer self-influence was not computed for this workspace")
    return (inp.weights[:, None] * inp.si_cp).sum(0)


def loss_final(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label at the final checkpoint."""
    return per_checkpoint_loss(inp)[-1]


def loss_mean(inp: RankerInputs) -> np.ndarray:
    """Loss of the given label averaged over checkpoints."""
    return per_checkpoint_loss(inp).mean(0)


def aum(inp: RankerInputs) -> np.ndarray:
    """Area under the margin (Pleiss et al. 2020), negated: low margin = suspicious."""
    return -per_checkpoint_margin(inp).mean(0)


def _rank01(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged; higher value -> higher rank."""
    return pd.Series(x).rank(method="average").to_numpy() / len(x)


def rank_combo(inp: RankerInputs) -> np.ndarray:
    """Mean of the rank-normalised self-influence (Fast), mean loss and AUM scores."""
    return (_rank01(self_influence_fast(inp)) + _rank01(loss_mean(inp)) + _rank01(aum(inp))) / 3.0


RANKERS: dict[str, tuple[Callable[[RankerInputs], np.ndarray], str]] = {
    "self_influence_fast": (self_influence_fast, "TracIn self-influence, last layer (Captum's TracInCPFast)"),
    "self_influence_cp": (self_influence_cp, "TracIn self-influence, all layers (TracInCP)"),
    "loss_final": (loss_final, "loss of the given label, final checkpoint"),
    "loss_mean": (loss_mean, "loss of the given label, averaged over checkpoints"),
    "aum": (aum, "area under the margin (negated), averaged over checkpoints"),
    "rank_combo": (rank_combo, "mean rank of self-influence (Fast), mean loss and AUM"),
}

#: the Review page's default ranking (see benchmarks/mislabel_quality.py)
DEFAULT_RANKER = "rank_combo"


def score_table(scores: np.ndarray) -> pd.DataFrame:
    """``index``, ``score``, ``rank`` (1 = most likely mislabelled), sorted by rank."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[order] = np.arange(1, len(scores) + 1)
    df = pd.DataFrame({"index": np.arange(len(scores)), "score": scores, "rank": rank})
    return df.sort_values("rank", kind="stable").reset_index(drop=True)


def compute(name: Optional[str], inp: RankerInputs) -> np.ndarray:
    """Scores of ranker ``name`` (None = :data:`DEFAULT_RANKER`)."""
    name = name or DEFAULT_RANKER
    if name not in RANKERS:
        raise ValueError(f"unknown ranking {name!r}; choose one of {', '.join(RANKERS)}")
    return RANKERS[name][0](inp)


def available(inp_has_cp: bool) -> list[str]:
    return [n for n in RANKERS if inp_has_cp or n != "self_influence_cp"]


def found_curve(scores: np.ndarray, is_mislabelled: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(share reviewed, share of mislabels found) reviewing in descending score order."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    order = np.argsort(-np.asarray(scores), kind="stable")
    found = np.cumsum(truth[order]) / max(1, truth.sum())
    reviewed = np.arange(1, len(truth) + 1) / len(truth)
    return np.concatenate([[0.0], reviewed]), np.concatenate([[0.0], found])


def found_at(scores: np.ndarray, is_mislabelled: Sequence[bool], share: float) -> float:
    """Share of mislabels found in the first ``share`` of the queue."""
    truth = np.asarray(is_mislabelled, dtype=bool)
    k = int(round(share * len(truth)))
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return float(truth[order].sum() / max(1, truth.sum()))
