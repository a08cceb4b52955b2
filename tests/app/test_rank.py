"""Ranking scores into predictions: best first, ties to the lower label index, both code paths."""

from __future__ import annotations

import numpy as np
import pytest

from app.service import SMALL_LABEL_SET, rank


@pytest.mark.parametrize(
    ("rows", "labels", "k"),
    [(1, 10, 3), (5, 3, 10), (4, SMALL_LABEL_SET, SMALL_LABEL_SET), (3, SMALL_LABEL_SET + 1, 5), (2, 1000, 1000)],
)
def test_rank_orders_scores_like_a_stable_descending_sort(rows: int, labels: int, k: int) -> None:
    rng = np.random.default_rng(rows * labels)
    probabilities = rng.random((rows, labels)).astype(np.float32)
    probabilities[:, labels // 2] = probabilities[:, 0]  # a tie: label 0 must come first
    names = [f"label{i}" for i in range(labels)]

    result = rank(probabilities, names, k)

    assert len(result) == rows
    for row, prediction in zip(probabilities.tolist(), result, strict=True):
        expected = sorted(range(labels), key=lambda i: (-row[i], i))[:k]
        assert [t["label"] for t in prediction["top_k"]] == [names[i] for i in expected]
        assert [t["score"] for t in prediction["top_k"]] == [row[i] for i in expected]
        assert (prediction["label"], prediction["score"]) == (names[expected[0]], row[expected[0]])
