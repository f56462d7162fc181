"""Classification post-processing: scores → top-k with labels."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# how far scores may stray from one softmax's before the warm-up warns (a quantized output
# adds half a step per score: not_probabilities)
PROBABILITY_SLACK = 0.01
SUM_SLACK = 0.1
SORT_ALL = 256  # ranked(): sort this many scores whole (ImageNet's 1000 go by partition)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over a 1-D float array, in float32 (in place on one copy:
    a request's few scores cost numpy's per-call overhead, not arithmetic)."""
    exp = np.array(scores, dtype=np.float32)  # a copy, whatever came in
    exp -= exp.max()
    np.exp(exp, out=exp)
    exp /= exp.sum()
    return exp


def dequantize(values: np.ndarray, quantization: Optional[Tuple[float, int]]) -> np.ndarray:
    """Integer outputs → float32 ``(q - zero_point) * scale``; float ones as they are."""
    if quantization is None:
        return values.astype(np.float32, copy=False)
    scale, zero_point = quantization
    return (values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def class_scores(
    output: np.ndarray, kind: str, quantization: Optional[Tuple[float, int]] = None
) -> np.ndarray:
    """A ``[1, N]`` (or ``[N]``, ``[1, N, 1, 1]``) output → 1-D probabilities ``[N]``; an
    integer output is dequantized with its ``(scale, zero_point)`` first."""
    scores = dequantize(output.reshape(-1), quantization)
    if kind == "logits":
        return softmax(scores)
    return scores


def not_probabilities(scores: np.ndarray, step: float = 0.0) -> Optional[str]:
    """Why 1-D ``scores`` do not look like one softmax's probabilities, or None: values
    outside 0..1, or a sum far from 1 (figures in the message). ``step`` is a quantized
    output's scale: each score may be off by half of it, so their sum by N times that."""
    low, high, total = float(scores.min()), float(scores.max()), float(scores.sum())
    if low < -PROBABILITY_SLACK or high > 1 + PROBABILITY_SLACK:
        return f"they range from {low:.4g} to {high:.4g} (not within 0..1) and sum to {total:.4g}"
    if abs(total - 1.0) > SUM_SLACK + scores.size * step / 2:
        return f"they sum to {total:.4g}, not 1 (range {low:.4g} to {high:.4g})"
    return None


def top_k(
    probabilities: np.ndarray, k: int, labels: Sequence[str] = (), label_offset: int = 0
) -> List[Dict[str, Any]]:
    """The ``k`` best classes, best first: ``[{"index", "label", "score"}]``; equal scores
    rank by the lower output index, so every ``k`` gives a prefix of the same order.

    ``index`` is the label index (output index minus ``label_offset``, so a 1001-way model
    with a background class and a 1000-line label file reports ImageNet indices); the
    outputs before ``label_offset`` (the background) are never returned.
    """
    labelled = probabilities[label_offset:]  # the outputs before label_offset have no label
    k = max(1, min(k, labelled.size))
    best = ranked(labelled, k)
    return [_entry(i, s, labels) for i, s in zip(best.tolist(), labelled[best].tolist())]


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best of a 1-D array, best first, equal scores by lower index.

    int8 models tie in steps of 1/256: ``argpartition`` alone left ties in an arbitrary
    order that changed with ``k``. Here every score equal to the k-th best is a candidate
    (``flatnonzero`` keeps index order) and a stable sort of the candidates breaks ties by
    index: O(N) plus a sort of about ``k`` values (a full sort of 21k classes costs 20x).
    Up to :data:`SORT_ALL` scores, one stable sort gives the same order in fewer steps."""
    negated = -scores.astype(np.float32, copy=False)
    if negated.size > SORT_ALL:
        kth = np.partition(negated, k - 1)[k - 1]
        candidates = np.flatnonzero(negated <= kth)
        if candidates.size >= k:  # fewer: NaN scores, which the full sort puts last
            return candidates[np.argsort(negated[candidates], kind="stable")][:k]
    return np.argsort(negated, kind="stable")[:k]


def _entry(index: int, score: float, labels: Sequence[str]) -> Dict[str, Any]:
    label = labels[index] if 0 <= index < len(labels) else ""
    return {"index": index, "label": label, "score": score}
