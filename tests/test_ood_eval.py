"""AUROC, AUPR-In/Out and FPR at 95 % TPR (core/metrics/ood_eval.py) against scikit-learn, with ties."""

from __future__ import annotations

import numpy as np
import pytest

from actgeom.core.metrics.ood_eval import aupr_in, aupr_out, auroc, fpr_at_tpr

metrics = pytest.importorskip("sklearn.metrics")


def _reference(id_scores, ood_scores) -> dict:
    y = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    s = np.r_[id_scores, ood_scores]
    fpr, tpr, _ = metrics.roc_curve(y, s)
    return {"auroc": metrics.roc_auc_score(y, s), "aupr_in": metrics.average_precision_score(y, s),
            "aupr_out": metrics.average_precision_score(1 - y, -s), "fpr95": fpr[np.argmax(tpr >= 0.95)]}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_equal_scikit_learn(seed, ties):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, rng.integers(5, 300))
    ood_scores = rng.normal(0.0, 1.5, rng.integers(5, 300))
    if ties:  # few distinct values: long runs of ties within and across the two sets
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    got = {"auroc": auroc(id_scores, ood_scores), "aupr_in": aupr_in(id_scores, ood_scores),
           "aupr_out": aupr_out(id_scores, ood_scores), "fpr95": fpr_at_tpr(id_scores, ood_scores)}
    assert got == pytest.approx(_reference(id_scores, ood_scores), rel=1e-12, abs=1e-15)


def test_closed_forms():
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and fpr_at_tpr([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5  # a tie counts half
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 0.0 and fpr_at_tpr([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert aupr_in([1.0, 1.0], [1.0, 1.0]) == 0.5  # one threshold: precision = the ID share


def test_refuses_empty_or_nonfinite():
    with pytest.raises(ValueError, match="at least one"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        auroc([np.nan], [1.0])
