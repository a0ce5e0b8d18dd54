"""The two things every accumulator shares: the block of rows it is fed (:class:`Rows`) and the
spec it is made from (:class:`Spec`); and the wrapper of a statistic that merges and serialises itself."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from actgeom.core.base.errors import UsageError


@dataclass
class Rows:
    """One block of a layer as the accumulators see it (all float64).

    X (n, D): the rows the pass uses (selected by --tokens, non-finite rows dropped);
    labels (n,): class indices, -1 = none (0 for every row of an unlabelled dump);
    index (n,): global row numbers (keys of the seeded sample);
    block / boundaries: the whole block before selection and the starts/end of the whole
    sequences in it (sequence statistics use whole sequences, whatever --tokens selects).
    """

    X: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    block: np.ndarray | None = None
    boundaries: np.ndarray | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # per-row vectors a spec asked for, aligned with X

    @functools.cached_property
    def norms(self) -> np.ndarray:
        """‖x_i‖ per row, computed once per block for every accumulator that needs it."""
        return np.sqrt(np.einsum("ij,ij->i", self.X, self.X))


class Spec:
    """What one accumulator keeps. ``slot`` names it in a layer's statistics; ``union`` is the
    spec that serves two requests at once; ``covers`` says whether statistics made with this
    spec can answer a request (for statistics loaded from a file)."""

    slot: ClassVar[str]
    row_vectors: ClassVar[tuple[str, ...]] = ()  # per-row vectors it reads: "position", "token_id", "sequence", ...

    def union(self, other: "Spec") -> "Spec":
        if other != self:
            raise UsageError(f"two families ask for different {self.slot} statistics: {self.record()} and {other.record()}")
        return self

    def covers(self, other: "Spec") -> bool:
        return self == other

    def build(self, n_units: int, storage_dtype: str, products: str = "float64"):
        """The accumulator for a layer of ``n_units`` stored as ``storage_dtype``; ``products``:
        how D×D products of blocks are computed (core/base/stats.py BlockProducts)."""
        raise NotImplementedError

    def record(self) -> dict:
        return asdict(self)

    def readers(self, dump) -> dict:
        """Per-row vectors of ``row_vectors`` the spec reads itself from the dump: {name: function of
        rows (start, stop)}; the others are the dump's /rows/<name> or the rows' sequences."""
        return {}

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        """About how much memory the accumulator keeps for a layer of ``n_units`` and ``n_classes``
        classes (the jackknife keeps one per group: core/state/groups.py check_groups)."""
        return 64 * n_units

    def describe(self) -> str:
        """What the statistic is, in words (for messages)."""
        raise NotImplementedError


class Wrapper:
    """An accumulator around a statistic that merges and serialises itself (core/base/stats.py):
    only ``update`` (what it reads of a block) differs from one to the next."""

    kind: ClassVar[str]
    inner_class: ClassVar[type]

    def __init__(self, inner):
        self.inner = inner

    def merge(self, other: "Wrapper") -> None:
        self.inner.merge(other.inner)

    def finalize(self):
        return self.inner

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.inner.to_arrays()

    @classmethod
    def from_arrays(cls, spec: Spec, arrays: dict[str, np.ndarray]) -> "Wrapper":
        return cls(cls.inner_class.from_arrays(arrays))



def nested(**parts) -> dict[str, np.ndarray]:
    """The arrays of several parts as one whole, each key under its part's name (parts that are None
    are left out); :func:`prefixed` takes a part back out."""
    return {f"{name}/{key}": value for name, part in parts.items() if part is not None
            for key, value in part.to_arrays().items()}


def prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The arrays whose key starts with ``prefix``, keyed without it: one part of a saved whole
    (``{"classes/sums": a}`` with prefix ``"classes/"`` → ``{"sums": a}``)."""
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
