"""The rules the pages used to hold, now public tracin_core functions (no Streamlit):
the review queue (review_queue), the suggested label, undo's fallback
(ReviewStore.last_decision) and each dataset's input normalisation (preprocess)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tracin_core.datasets import FASHION_MNIST_NORMALIZE, MNIST_NORMALIZE, LabeledDataset, load_dataset
from tracin_core.review import ReviewStore
from tracin_core.review_queue import (
    UNDECIDED,
    queue_order,
    review_table,
    suggested_labels,
    with_status,
)


# ------------------------------------------------------------------ suggested label
def test_suggested_label_is_the_prediction_or_the_runner_up() -> None:
    probs = np.array([[0.7, 0.2, 0.1],    # predicted 0 = given 0: suggest the runner-up, 1
                      [0.1, 0.3, 0.6],    # predicted 2 != given 0: suggest 2
                      [0.4, 0.4, 0.2]])   # a tie: the stable sort keeps class order
    given = np.array([0, 0, 0])
    suggested, p_suggested, p_given = suggested_labels(given, probs)
    assert suggested.tolist() == [1, 2, 1]
    assert p_suggested.tolist() == [0.2, 0.6, 0.4]
    assert p_given.tolist() == [0.7, 0.1, 0.4]
    one_class = suggested_labels(np.array([0, 0]), np.ones((2, 1)))[0]
    assert one_class.tolist() == [0, 0]
    with pytest.raises(ValueError, match=r"probs must have shape \(N, K\)"):
        suggested_labels(np.array([0]), np.ones((2, 3)))


# ------------------------------------------------------------------ queue
def _finals(rows: list[tuple[int, str, str, bool]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "status", "reviewer", "is_final"])


def _tables(n: int = 6):
    ranking = pd.DataFrame({"index": [4, 1, 0, 5, 2, 3], "score": [0.9, 0.7, 0.5, 0.3, 0.2, -0.1],
                            "rank": np.arange(1, n + 1)})
    preds = pd.DataFrame({"index": np.arange(n), "label": [0, 1, 2, 0, 1, 2],
                          "predicted": [0, 2, 2, 1, 1, 0], "probability": 0.5,
                          "suggested": [1, 2, 0, 1, 0, 0], "suggested_probability": 0.3,
                          "given_probability": 0.5}).set_index("index", drop=False)
    return ranking, preds


def test_with_status_marks_final_statuses_and_adjudicators() -> None:
    ranking, _ = _tables()
    finals = _finals([(1, "accepted", "ann", False), (4, "relabelled", "carol", True),
                      (9, "excluded", "ann", False)])  # item 9: other training data, left out
    table = with_status(ranking, finals, 6)
    by_item = table.set_index("index")
    assert by_item.loc[1, "status"] == "accepted" and by_item.loc[1, "final_by"] == ""
    assert by_item.loc[4, "status"] == "relabelled" and by_item.loc[4, "final_by"] == "carol"
    assert (by_item.drop([1, 4])["status"] == UNDECIDED).all()
    assert "status" not in ranking.columns  # a copy, the ranking is left alone
    empty = with_status(ranking, _finals([]), 6)
    assert (empty["status"] == UNDECIDED).all()


def test_queue_order_applies_every_filter_in_ranking_order() -> None:
    ranking, preds = _tables()
    table = review_table(ranking, preds, _finals([(1, "accepted", "ann", False)]), 6)
    assert list(table.columns[:3]) == ["index", "score", "rank"]
    assert table["suggested"].tolist() == [0, 2, 1, 0, 0, 1]  # joined on index, not position
    assert queue_order(table) == [4, 1, 0, 5, 2, 3]
    assert queue_order(table, given=[1]) == [4, 1]
    assert queue_order(table, suggested=[0], given=[1, 2]) == [4, 5, 2]
    assert queue_order(table, status=[UNDECIDED]) == [4, 0, 5, 2, 3]
    assert queue_order(table, status=["accepted"]) == [1]
    assert queue_order(table, score_range=(0.2, 0.7)) == [1, 0, 5, 2]  # inclusive
    assert queue_order(table, given=[], suggested=None, status=[]) == [4, 1, 0, 5, 2, 3]
    with pytest.raises(ValueError, match="suggested_probability"):
        review_table(ranking, preds.drop(columns="suggested_probability"), _finals([]), 6)


# ------------------------------------------------------------------ undo's fallback
def test_last_decision_skips_undone_and_other_reviewers(tmp_path: Path) -> None:
    store = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="h")
    try:
        assert store.last_decision("ann") is None
        store.record(3, "ann", "accept", given_label=3)
        store.record(5, "ann", "relabel", 1, given_label=5)
        store.record(7, "bob", "exclude", given_label=7)
        assert store.last_decision("ann") == 5 and store.last_decision("bob") == 7
        store.undo(5, "ann")
        assert store.last_decision("ann") == 3        # the undone one no longer counts
        store.record(5, "ann", "accept", given_label=5)
        store.record(5, "ann", "exclude", given_label=5)
        store.undo(5, "ann")                           # the accept on 5 is back in effect
        assert store.last_decision("ann") == 5
        store.undo(5, "ann")
        store.undo(3, "ann")
        assert store.last_decision("ann") is None
        other = ReviewStore(tmp_path / "r.db", workspace="ws", data_hash="other")
        assert other.last_decision("bob") is None     # another data hash: not in scope
        other.close()
    finally:
        store.close()


# ------------------------------------------------------------------ normalisation
def _dataset(kind: str, shape: tuple[int, ...], params: dict | None = None) -> LabeledDataset:
    return LabeledDataset(kind=kind, source="test", length=2, get_input=lambda i: torch.zeros(shape),
                          get_image=lambda i: np.zeros(shape[1:], np.uint8),
                          original_labels=torch.tensor([0, 1]), classes=["a", "b"],
                          content_hash=lambda: "x", params=params)


@pytest.mark.parametrize("kind, params, mean_std", [
    ("mnist", None, MNIST_NORMALIZE),
    ("fashion_mnist", None, FASHION_MNIST_NORMALIZE),
    ("npy", {"normalize": [0.25, 0.5]}, (0.25, 0.5)),
    ("tensors", None, (0.5, 0.5)),
])
def test_preprocess_uses_each_datasets_normalisation(kind, params, mean_std) -> None:
    ds = _dataset(kind, (1, 4, 4), params)
    assert ds.input_normalization() == mean_std
    img = Image.fromarray(np.full((4, 4), 51, np.uint8))  # 51/255 = 0.2
    x, pixels = ds.preprocess(img)
    assert x.shape == (1, 4, 4) and x.dtype == torch.float32 and pixels.dtype == np.uint8
    mean, std = mean_std
    torch.testing.assert_close(x, torch.full((1, 4, 4), (0.2 - mean) / std))
    inverted, view = ds.preprocess(img, invert=True)
    assert (view == 204).all()
    torch.testing.assert_close(inverted, torch.full((1, 4, 4), (0.8 - mean) / std))


def test_preprocess_digits_and_rgb() -> None:
    digits = load_dataset("digits", split="test")
    x, view = digits.preprocess(Image.fromarray(np.full((32, 32), 255, np.uint8)))
    assert tuple(x.shape) == tuple(digits.input_shape) == (1, 8, 8)
    assert view.shape == (8, 8)
    torch.testing.assert_close(x, torch.ones(1, 8, 8))  # white = 16 on digits' scale = +1
    rgb = _dataset("image_folder", (3, 2, 2))
    x, view = rgb.preprocess(Image.fromarray(np.zeros((5, 5, 3), np.uint8)))
    assert x.shape == (3, 2, 2) and view.shape == (2, 2, 3)
    torch.testing.assert_close(x, torch.full((3, 2, 2), -1.0))
    with pytest.raises(ValueError, match="image must be a PIL.Image"):
        rgb.preprocess(np.zeros((2, 2, 3)))
