"""The state of the token-level entropies: per-sequence prompt entropy and the sequence vectors'
scatter (Skean et al. 2025), merged across row ranges like every accumulator's."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.entropy import renyi_entropy


class SequenceEntropy:
    """Per-sequence entropies of a token-level layer (Skean et al. 2025), fed whole sequences.

    Each sequence's rows are centred by the sequence mean and L2-normalised (Z). Prompt
    entropy: the Rényi entropy of Z Zᵀ (computed on its smaller side), averaged over sequences.
    Token-level dataset entropy: the Rényi entropy of the Gram of the sequence vectors
    v_s = mean of Z's rows, accumulated on the D×D side Σ v vᵀ. Sequences of one token or of
    identical tokens (zero after centring; counted together) and sequences holding NaN/inf are
    skipped and counted.
    """

    def __init__(self, n_units: int, alpha: float):
        self.alpha = float(alpha)
        self.prompt_sum = 0.0
        self.n_sequences = 0
        self.n_single = 0
        self.n_nonfinite = 0
        self.vector_scatter = np.zeros((n_units, n_units))

    def update(self, X: np.ndarray, boundaries: np.ndarray) -> None:
        """Rows X hold whole sequences; ``boundaries`` (k+1,) are their starts and end within X."""
        vectors = []
        with blas_threads(min(int(np.diff(boundaries).max(initial=0)), X.shape[1])):  # the Grams' side
            self._prompts(X, boundaries, vectors)
        if vectors:
            V = np.asarray(vectors)
            self.vector_scatter += V.T @ V

    def _prompts(self, X: np.ndarray, boundaries: np.ndarray, vectors: list) -> None:
        """Each sequence's prompt entropy; its vector appended to ``vectors``."""
        for a, b in zip(boundaries[:-1], boundaries[1:]):
            if b - a < 2:
                self.n_single += 1
                continue
            rows = X[a:b]
            if not np.isfinite(rows).all():
                self.n_nonfinite += 1
                continue
            Z = rows - rows.mean(axis=0)
            norms = np.linalg.norm(Z, axis=1)
            if not norms.any():  # identical tokens: zero after centring, like one token
                self.n_single += 1
                continue
            Z /= np.where(norms == 0, 1.0, norms)[:, None]
            gram = Z @ Z.T if Z.shape[0] <= Z.shape[1] else Z.T @ Z
            self.prompt_sum += renyi_entropy(np.linalg.eigvalsh(gram), self.alpha)
            self.n_sequences += 1
            vectors.append(Z.mean(axis=0))

    def merge(self, other: "SequenceEntropy") -> None:
        for name in ("prompt_sum", "n_sequences", "n_single", "n_nonfinite", "vector_scatter"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def results(self) -> dict:
        used = self.n_sequences
        with blas_threads(self.vector_scatter.shape[0]):
            eigenvalues = np.linalg.eigvalsh(self.vector_scatter)
        return {"prompt_entropy": self.prompt_sum / used if used else float("nan"),
                "dataset_entropy": renyi_entropy(eigenvalues, self.alpha),
                "n_sequences": used, "n_single_token_sequences_skipped": self.n_single,
                "n_nonfinite_sequences_skipped": self.n_nonfinite}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scalars": np.array([self.alpha, self.prompt_sum]),
                "counts": np.array([self.n_sequences, self.n_single, self.n_nonfinite]),
                "vector_scatter": self.vector_scatter}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "SequenceEntropy":
        acc = cls(arrays["vector_scatter"].shape[0], float(arrays["scalars"][0]))
        acc.prompt_sum = float(arrays["scalars"][1])
        acc.n_sequences, acc.n_single, acc.n_nonfinite = (int(v) for v in arrays["counts"])
        acc.vector_scatter = np.array(arrays["vector_scatter"])
        return acc
