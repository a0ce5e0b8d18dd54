"""Linear probes and concept directions, in closed form from class moments (docs/metrics.md,
"Linear probes and concept directions").

The probes are fitted from the class moments of the train rows (core/metrics/probesplit.py: the seeded
split) — no gradient descent, no copy of the rows — and evaluated on the test rows in the shared
second pass. With n train rows, class counts n_c, priors π_c = n_c/n, means μ_c, x̄ = Σ π_c μ_c,
pooled within-class covariance Σ_W = S_W/n and total scatter S_T = S_W + Σ_c n_c(μ_c − x̄)(μ_c − x̄)ᵀ:

- LDA: argmax_c w_cᵀx + b_c, w_c = Σ_s⁻¹μ_c, b_c = −½μ_cᵀΣ_s⁻¹μ_c + log π_c,
  Σ_s = (1−s)Σ_W + s·(tr Σ_W/D)·I (s = 0: scikit-learn's LinearDiscriminantAnalysis(solver="lsqr")).
- ridge: least squares on one-hot targets with an intercept, penalty λ·(tr S_T/D)·‖W‖²:
  W = (S_T + λ·(tr S_T/D)·I)⁻¹ X̃ᵀY with X̃ᵀY = [n_c(μ_c − x̄)]_c (XᵀY of a one-hot Y holds the
  class sums), intercept π_c − x̄ᵀw_c. λ is relative to the mean variance per unit, so the
  prediction does not change when the rows are scaled.
- nearest class mean (the NC4 view): argmin_c ‖x − μ_c‖.

Every probe scores x − x̄ (the class-independent part of the LDA score, x̄ᵀΣ_s⁻¹x, dropped): no
cancellation between large offsets of the rows and of the intercepts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from actgeom.core.base.options import (  # noqa: F401 (re-exported)
    CONTROLS,
    DEFAULT_RIDGE_LAMBDA,
    DEFAULT_SHRINKAGE,
    SHRINKAGE_GRID,
    SPLIT_BY,
    ProbeOptions,
)
from actgeom.core.base.registry import Unavailable, registry
from actgeom.core.base.stats import ClassStats, argmax_tiled, pooled
from actgeom.core.base.threads import blas_threads

# -- fitting ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: predicts ``classes[argmax_k weight_kᵀ(x − centre) + offsets_k]``."""

    classes: np.ndarray  # (K,) class indices with train rows
    centre: np.ndarray  # (D,)
    weight: np.ndarray  # (K, D)
    offsets: np.ndarray  # (K,)

    def scores(self, X: np.ndarray) -> np.ndarray:
        return (X - self.centre) @ self.weight.T + self.offsets

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The predicted class of each row, over tiles of classes (memory bounded for large C)."""
        return self.classes[argmax_tiled(X - self.centre, self.weight, self.offsets)]

    def uncentred(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) with scores x·w_k + b_k: the same decisions, for comparison with other tools."""
        return self.weight, self.offsets - self.weight @ self.centre


def _kept(stats: ClassStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = np.flatnonzero(stats.counts > 0)
    return kept, stats.counts[kept].astype(np.float64), stats.means[kept]


def _solve(A: np.ndarray, B: np.ndarray, regularised: bool) -> np.ndarray:
    """A⁻¹B for symmetric A: Cholesky when a regulariser made A positive definite; else the
    minimum-norm least-squares solution (what scikit-learn's lsqr solver computes)."""
    with blas_threads(A.shape[0]):
        return _solve_symmetric(A, B, regularised)


def _solve_symmetric(A: np.ndarray, B: np.ndarray, regularised: bool) -> np.ndarray:
    if regularised:
        try:
            return scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, check_finite=False), B, check_finite=False)
        except np.linalg.LinAlgError:  # tr = 0: every row equals its class mean
            pass
    return scipy.linalg.lstsq(A, B, check_finite=False)[0]


def shrunk_covariance(stats: ClassStats, shrinkage: float) -> np.ndarray:
    """Σ_s = (1−s)Σ_W + s·(tr Σ_W/D)·I, Σ_W = S_W / n (pooled within-class covariance)."""
    sigma = stats.within_scatter / stats.counts.sum()
    d = sigma.shape[0]
    return (1 - shrinkage) * sigma + shrinkage * (np.trace(sigma) / d) * np.eye(d)


def lda_probe(stats: ClassStats, shrinkage: float) -> LinearProbe:
    """LDA with shrinkage: w_c = Σ_s⁻¹(μ_c − x̄), b_c = −½(μ_c − x̄)ᵀΣ_s⁻¹(μ_c − x̄) + log π_c on x − x̄.

    Source: Friedman, JASA 1989 (regularised discriminant analysis); the s = 0 case is
    scikit-learn's LinearDiscriminantAnalysis(solver="lsqr"), shrinkage as its ``shrinkage=s``."""
    kept, counts, means = _kept(stats)
    centre = counts @ means / counts.sum()
    m = means - centre
    weight = _solve(shrunk_covariance(stats, shrinkage), m.T, shrinkage > 0).T
    offsets = -0.5 * np.einsum("ij,ij->i", m, weight) + np.log(counts / counts.sum())
    return LinearProbe(kept, centre, weight, offsets)


def ridge_probe(stats: ClassStats, ridge_lambda: float) -> LinearProbe:
    """Ridge on one-hot targets: W = (S_T + λ·(tr S_T/D)·I)⁻¹[n_c(μ_c − x̄)], intercept π_c on x − x̄."""
    kept, counts, means = _kept(stats)
    total = pooled(ClassStats(counts=counts, means=means, within_scatter=stats.within_scatter, sq_dev=np.zeros(counts.size)))
    n, centre, scatter = total.n, total.means[0], total.within_scatter
    d = scatter.shape[0]
    A = scatter + ridge_lambda * (np.trace(scatter) / d) * np.eye(d)
    weight = _solve(A, (means - centre).T * counts, ridge_lambda > 0).T
    return LinearProbe(kept, centre, weight, counts / n)


def ncc_probe(stats: ClassStats) -> LinearProbe:
    """Nearest class mean: argmax_c (μ_c − x̄)ᵀ(x − x̄) − ½‖μ_c − x̄‖² = argmin_c ‖x − μ_c‖."""
    kept, counts, means = _kept(stats)
    centre = counts @ means / counts.sum()
    m = means - centre
    return LinearProbe(kept, centre, m, -0.5 * np.einsum("ij,ij->i", m, m))


# -- evaluation ---------------------------------------------------------------------------------

class Confusion:
    """Per class: test rows, predictions and correct predictions (3 vectors: no C×C matrix)."""

    def __init__(self):
        self.true = np.zeros(0, dtype=np.int64)
        self.predicted = np.zeros(0, dtype=np.int64)
        self.correct = np.zeros(0, dtype=np.int64)

    def add(self, y: np.ndarray, predicted: np.ndarray) -> None:
        if y.size == 0:
            return
        size = max(self.true.size, int(y.max()) + 1, int(predicted.max()) + 1)
        for name, values in (("true", y), ("predicted", predicted), ("correct", y[y == predicted])):
            counts = getattr(self, name)
            grown = np.bincount(values, minlength=size)
            grown[: counts.size] += counts
            setattr(self, name, grown)

    def merge(self, other: "Confusion") -> None:
        """Add another row range's counts."""
        for name in ("true", "predicted", "correct"):
            mine, theirs = getattr(self, name), getattr(other, name)
            size = max(mine.size, theirs.size)
            setattr(self, name, np.pad(mine, (0, size - mine.size)) + np.pad(theirs, (0, size - theirs.size)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"true": self.true, "predicted": self.predicted, "correct": self.correct}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Confusion":
        confusion = cls()
        confusion.true, confusion.predicted, confusion.correct = (np.asarray(arrays[name], dtype=np.int64)
                                                                  for name in ("true", "predicted", "correct"))
        return confusion

    @property
    def n(self) -> int:
        return int(self.true.sum())

    def scores(self) -> dict[str, float]:
        """accuracy = Σ correct / n; balanced accuracy = mean over true classes of recall;
        macro-F1 = mean over true or predicted classes of 2·correct/(true + predicted)
        (scikit-learn's accuracy_score, balanced_accuracy_score, f1_score(average="macro"))."""
        if self.n == 0:
            return dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1"), Unavailable("no test rows"))
        size = max(self.true.size, self.predicted.size)
        true, predicted, correct = (np.pad(a, (0, size - a.size)) for a in (self.true, self.predicted, self.correct))
        present = true > 0
        either = present | (predicted > 0)
        return {"accuracy": float(correct.sum() / true.sum()),
                "balanced_accuracy": float(np.mean(correct[present] / true[present])),
                "macro_f1": float(np.mean(2 * correct[either] / (true[either] + predicted[either])))}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + ½P(tie), exactly, from average ranks
    (Mann–Whitney U / (n₊n₋)); Hanley & McNeil, Radiology 1982."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return Unavailable("AUROC needs test rows of both classes")
    from scipy.stats import rankdata  # 0.5 s to import: only for two-class AUROC

    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """aᵀb / (‖a‖‖b‖); None when either is missing, zero or of another width."""
    if a is None or b is None or a.shape != b.shape:
        return None
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else None


# -- the registry -------------------------------------------------------------------------------

@dataclass
class ProbeInputs:
    """One layer: train class counts, the test-set confusions {probe: Confusion} and the LDA
    scores of a two-class test set (None without a second pass), the direction and tr Σ_W."""

    counts: np.ndarray
    confusions: dict | None
    binary_scores: tuple[np.ndarray, np.ndarray] | None  # (scores, is positive class) of the test rows
    direction: np.ndarray | None
    direction_problem: str
    sigma_w_trace: float


def baselines(inputs: ProbeInputs, options: ProbeOptions) -> dict:
    """chance = 1/C over the C classes with train rows; majority = the largest train class share."""
    counts = inputs.counts[inputs.counts > 0]
    return {"chance": 1.0 / counts.size, "majority": float(counts.max() / counts.sum())}


def probe_scores(inputs: ProbeInputs, options: ProbeOptions) -> dict:
    """Test-set accuracy, balanced accuracy and macro-F1 of the LDA and ridge probes, NCC accuracy,
    and the LDA's AUROC when there are two classes (positive = the larger class index)."""
    values = {}
    for probe in ("lda", "ridge", "ncc"):
        values |= {f"{probe}_{name}": value for name, value in inputs.confusions[probe].scores().items()}
    for name in ("ncc_balanced_accuracy", "ncc_macro_f1"):
        values.pop(name)
    if inputs.binary_scores is None:
        values["lda_auroc"] = Unavailable(f"AUROC is for two classes; the train rows have {(inputs.counts > 0).sum()}")
    else:
        values["lda_auroc"] = auroc(*inputs.binary_scores)
    return values


def control_scores(inputs: ProbeInputs, options: ProbeOptions) -> dict:
    """control_accuracy: the LDA probe's accuracy on the control task; selectivity = lda_accuracy − it."""
    if options.control is None:
        return dict.fromkeys(("control_accuracy", "selectivity"), Unavailable("needs --control token|row"))
    control = inputs.confusions["control"].scores()["accuracy"]
    lda = inputs.confusions["lda"].scores()["accuracy"]
    if isinstance(control, Unavailable):
        return {"control_accuracy": control, "selectivity": control}
    return {"control_accuracy": control, "selectivity": lda - control}


def direction_scores(inputs: ProbeInputs, options: ProbeOptions) -> dict:
    """direction_norm = ‖μ₊ − μ₋‖; fisher_ratio = ‖μ₊ − μ₋‖² / tr Σ_W (train rows, Σ_W pooled over every class)."""
    if inputs.direction is None:
        return dict.fromkeys(("direction_norm", "fisher_ratio"), Unavailable(inputs.direction_problem))
    norm_sq = float(inputs.direction @ inputs.direction)
    fisher = norm_sq / inputs.sigma_w_trace if inputs.sigma_w_trace > 0 else math.inf
    return {"direction_norm": math.sqrt(norm_sq), "fisher_ratio": fisher}


_TEST = "tests/test_probe.py::"
_HL = "Hewitt & Liang, EMNLP 2019"
_SRT = frozenset({"scale", "rotation", "shift"})  # shrinkage and ridge penalties are isotropic: not affine
_EVAL = ("labels", "dump")
_ACC = dict(compute=probe_scores, needs=_EVAL, ideal=1.0, range=(0, 1), direction="higher", invariant=_SRT)

REGISTRY = registry(
    "probe",
    dict(name="lda_accuracy",
         formula="share of test rows with argmax_c w_cᵀx + b_c = y, w_c = Σ_s⁻¹μ_c, b_c = −½μ_cᵀΣ_s⁻¹μ_c + log π_c, "
                 "Σ_s = (1−s)Σ_W + s·(tr Σ_W/D)·I (train rows)", source="Friedman, JASA 1989; Alain & Bengio, ICLR 2017 (probes)",
         test=_TEST + "test_lda_equals_scikit_learn", **_ACC),
    dict(name="lda_balanced_accuracy", formula="mean over the test classes of the LDA probe's recall",
         source="Brodersen et al., ICPR 2010", test=_TEST + "test_scores_equal_scikit_learn",
         **_ACC),
    dict(name="lda_macro_f1", formula="mean over true or predicted test classes of 2·TP_c/(2·TP_c + FP_c + FN_c), LDA probe",
         source="scikit-learn f1_score(average='macro')", test=_TEST + "test_scores_equal_scikit_learn",
         **_ACC),
    dict(name="lda_auroc",
         formula="two classes: P(s(x₊) > s(x₋)) + ½P(=) over test rows, s = LDA score difference (exact, from ranks)",
         source="Hanley & McNeil, Radiology 1982", test=_TEST + "test_scores_equal_scikit_learn", **_ACC),
    dict(name="ridge_accuracy",
         formula="share of test rows with argmax_c of W(x − x̄) + π = y, W = [(S_T + λ·(tr S_T/D)·I)⁻¹ n_c(μ_c − x̄)]ᵀ "
                 "(train rows)",
         source="Hoerl & Kennard, Technometrics 1970", test=_TEST + "test_ridge_equals_a_direct_solve",
         **_ACC),
    dict(name="ridge_balanced_accuracy", formula="mean over the test classes of the ridge probe's recall",
         source="Brodersen et al., ICPR 2010",
         test=_TEST + "test_ridge_equals_a_direct_solve", **_ACC),
    dict(name="ridge_macro_f1", formula="mean over true or predicted test classes of the ridge probe's F1",
         source="scikit-learn f1_score(average='macro')",
         test=_TEST + "test_ridge_equals_a_direct_solve", **_ACC),
    dict(name="ncc_accuracy", formula="share of test rows whose nearest train class mean is their class",
         source="Papyan, Han & Donoho, PNAS 2020 (NC4)", test=_TEST + "test_ncc_is_nearest_train_mean",
         **_ACC),
    dict(name="chance", formula="1/C, C = classes with train rows", compute=baselines, needs=("labels",), direction="neither",
         range=(0, 1),
         invariant=frozenset({"scale", "rotation", "shift", "affine"}), source="1/C", test=_TEST + "test_baselines"),
    dict(name="majority", formula="max_c n_c / n over the train rows", compute=baselines, needs=("labels",), direction="neither",
         range=(0, 1),
         invariant=frozenset({"scale", "rotation", "shift", "affine"}), source="largest train class share",
         test=_TEST + "test_baselines"),
    dict(name="control_accuracy",
         formula="the LDA probe's test accuracy on control labels (a class per token id or row bucket by seeded hash, "
                 "real class frequencies)", compute=control_scores, needs=_EVAL, direction="neither", range=(0, 1),
         invariant=_SRT,
         source=_HL, test=_TEST + "test_control_task"),
    dict(name="selectivity", formula="lda_accuracy − control_accuracy", compute=control_scores, needs=_EVAL, ideal=1.0,
         range=(-1, 1), direction="higher",
         invariant=_SRT, source=_HL, test=_TEST + "test_control_task"),
    dict(name="direction_norm", formula="‖μ₊ − μ₋‖ (train rows)", compute=direction_scores, needs=("labels",),
         direction="neither", range=(0, math.inf),
         invariant=frozenset({"rotation", "shift"}), source="difference of means (Marks & Tegmark, 2023)",
         test=_TEST + "test_planted_direction"),
    dict(name="fisher_ratio", formula="‖μ₊ − μ₋‖² / tr Σ_W (train rows, Σ_W pooled over every class)", compute=direction_scores,
         needs=("labels",), direction="higher", range=(0, math.inf),
         invariant=_SRT, source="Fisher, Ann. Eugenics 1936", test=_TEST + "test_planted_direction", log_scale=True),
)
