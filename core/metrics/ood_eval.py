"""How well a score separates in-distribution (ID) rows from out-of-distribution (OOD) rows
(for the ood family's scores): every score is "higher = more ID", ID is the
positive class unless a name says otherwise, and ties count as scikit-learn counts them.

All four are exact functions of the two score sets, computed from one sort of their union: the
distinct thresholds t (descending) give the ID and OOD counts with score ≥ t, i.e. the ROC and
precision–recall curves at every threshold where either changes.
"""

from __future__ import annotations

import numpy as np

TPR_LEVEL = 0.95


def _curve(positive: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(true positives, false positives) with score ≥ t for each distinct threshold t, descending,
    both starting at (0, 0) — scikit-learn's roc_curve before it drops intermediate points."""
    scores = np.concatenate([positive, negative])
    is_positive = np.r_[np.ones(positive.size), np.zeros(negative.size)]
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # the last row of each run of ties
    tp = np.cumsum(is_positive)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, tp], np.r_[0.0, fp]


def _checked(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if id_scores.size == 0 or ood_scores.size == 0:
        raise ValueError("both the ID and the OOD rows must have at least one score")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ValueError("scores must be finite")
    return id_scores, ood_scores


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, ID positive: P(s_ID > s_OOD) + ½ P(s_ID = s_OOD) (trapezoids over
    the tie runs; scikit-learn's roc_auc_score)."""
    tp, fp = _curve(*_checked(id_scores, ood_scores))
    return float(np.trapezoid(tp, fp) / (tp[-1] * fp[-1]))


def average_precision(positive, negative) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over the distinct thresholds, descending (scikit-learn's
    average_precision_score: no interpolation)."""
    tp, fp = _curve(*_checked(positive, negative))
    tp, fp = tp[1:], fp[1:]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr_in(id_scores, ood_scores) -> float:
    """Average precision with ID rows positive and higher scores first."""
    return average_precision(id_scores, ood_scores)


def aupr_out(id_scores, ood_scores) -> float:
    """Average precision with OOD rows positive and lower scores first (the scores negated)."""
    return average_precision(-np.asarray(ood_scores, dtype=np.float64), -np.asarray(id_scores, dtype=np.float64))


def fpr_at_tpr(id_scores, ood_scores, level: float = TPR_LEVEL) -> float:
    """The fraction of OOD rows accepted at the highest threshold that accepts ≥ ``level`` of the ID
    rows (ID positive, as the OOD papers define FPR at 95 % TPR): fpr[argmax(tpr ≥ level)] of
    scikit-learn's roc_curve. (OpenOOD v1.5 takes the OOD rows as positive: another quantity.)"""
    tp, fp = _curve(*_checked(id_scores, ood_scores))
    tpr, fpr = tp / tp[-1], fp / fp[-1]
    return float(fpr[np.argmax(tpr >= level)])
