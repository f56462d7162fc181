"""Classification post-processing: scores → top-k with labels."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over a 1-D float array."""
    shifted = scores.astype(np.float32) - np.max(scores)
    exp = np.exp(shifted)
    return exp / exp.sum()


def class_scores(output: np.ndarray, kind: str) -> np.ndarray:
    """A ``[1, N]`` (or ``[N]``, ``[1, N, 1, 1]``) output → 1-D probabilities ``[N]``."""
    scores = output.reshape(-1).astype(np.float32, copy=False)
    if kind == "logits":
        return softmax(scores)
    return scores


def top_k(
    probabilities: np.ndarray, k: int, labels: Sequence[str] = (), label_offset: int = 0
) -> List[Dict[str, Any]]:
    """The ``k`` best classes, best first: ``[{"index", "label", "score"}]``; equal scores
    rank by the lower output index, so every ``k`` gives a prefix of the same order.

    ``index`` is the label index (output index minus ``label_offset``, so a 1001-way model
    with a background class and a 1000-line label file reports ImageNet indices).
    """
    k = max(1, min(k, probabilities.size))
    best = ranked(probabilities, k)
    return [_entry(int(i) - label_offset, float(probabilities[i]), labels) for i in best]


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best of a 1-D array, best first, equal scores by lower index.

    int8 models tie in steps of 1/256: ``argpartition`` alone left ties in an arbitrary
    order that changed with ``k``. Here every score equal to the k-th best is a candidate
    (``flatnonzero`` keeps index order) and a stable sort of the candidates breaks ties by
    index: O(N) plus a sort of about ``k`` values (a full sort of 21k classes costs 20x)."""
    negated = -scores.astype(np.float32, copy=False)
    kth = np.partition(negated, k - 1)[k - 1]
    candidates = np.flatnonzero(negated <= kth)
    if candidates.size < k:  # NaN scores: fall back to one full stable sort (NaN last)
        return np.argsort(negated, kind="stable")[:k]
    return candidates[np.argsort(negated[candidates], kind="stable")][:k]


def _entry(index: int, score: float, labels: Sequence[str]) -> Dict[str, Any]:
    label = labels[index] if 0 <= index < len(labels) else ""
    return {"index": index, "label": label, "score": score}
