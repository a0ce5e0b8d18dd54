"""Groups of sampling units for the delete-a-group jackknife (docs/metrics.md, "Uncertainty and nulls").

Every sampling unit — a row of a sample-level dump, a whole sequence of a token-level one — falls in
group g = key(unit) mod G, a seeded hash of the unit's global number (the row number, or the global
row of the sequence's first token). It depends on nothing else, so the groups are the same for any
chunking, row range, shard, merge order and backend. A grouped pass keeps every accumulator once per
group (:class:`~actgeom.core.state.engine.LayerStats` ``groups``); the total is their merge, and the
statistics without group g (:func:`leave_out`) are the merge of the others: exactly the statistics
of the rows outside the group.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.errors import OptionError
from actgeom.core.base.options import CI_GROUPS as DEFAULT_GROUPS
from actgeom.core.base.sample import hash_keys
from actgeom.core.dump.validate import memory_bytes

GROUP_SALT = 0x6A09E667  # the groups' keys differ from the sample's and the split's keys of the same seed


@dataclass(frozen=True)
class Grouping:
    """G groups of sampling units, by a hash seeded with ``seed``."""

    groups: int = DEFAULT_GROUPS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.groups < 2:
            raise OptionError("ci_groups", self.groups, "must be ≥ 2 (the jackknife leaves out one group of several)")
        if self.seed < 0:
            raise OptionError("ci_seed", self.seed, "must be ≥ 0")

    def of(self, units: np.ndarray) -> np.ndarray:
        """The group (0..G−1) of each sampling unit (int64 global numbers)."""
        keys = hash_keys(hash_keys(units, self.seed).view(np.int64), GROUP_SALT)
        return (keys % np.uint64(self.groups)).astype(np.int64)


def block_factor(groups: int) -> int:
    """How many default blocks a grouped pass reads at once: each group's share of a block (its D×D
    product) then has about a quarter of a default block's rows, where a dsyrk is still efficient
    (G = 20: 5 blocks of ~8 MiB; measured in benchmarks/bench_ci_cost.py)."""
    return max(1, groups // 4)


@dataclass(frozen=True)
class Parts:
    """A block's rows by group: ``order`` sorts them by group (stably), group g's rows are then
    ``starts[g]:starts[g + 1]``; ``present``: the groups with rows."""

    order: np.ndarray
    starts: np.ndarray
    present: np.ndarray


def parts_of(groups: np.ndarray, n_groups: int) -> Parts:
    """Rows by group (``groups``: each row's group, 0..n_groups−1)."""
    counts = np.bincount(groups, minlength=n_groups)
    return Parts(order=np.argsort(groups, kind="stable"), starts=np.r_[0, np.cumsum(counts)],
                 present=np.flatnonzero(counts))


class BlockSplit:
    """Gathers a block's rows in the order of its groups (:func:`parts_of`) for a grouped pass, into
    a buffer reused from block to block (fresh memory costs page faults: core/base/stats.py
    ``_buffer``), instead of a mask and a copy per group. (The reader thread does this gather itself
    where it can: core/state/stream.py ``arrange``.)"""

    def __init__(self):
        self._rows = np.empty((0, 0))

    def rows(self, X: np.ndarray, order: np.ndarray) -> np.ndarray:
        """X's rows in ``order`` (a view of the buffer, valid until the next call)."""
        if self._rows.shape[0] < X.shape[0] or self._rows.shape[1:] != X.shape[1:] or self._rows.dtype != X.dtype:
            self._rows = np.empty(X.shape, dtype=X.dtype)
        return np.take(X, order, axis=0, out=self._rows[: X.shape[0]], mode="clip")  # "raise" would copy `out` first


class SamplingUnits:
    """The jackknife group of each row of a pass (None without groups): by its global row number,
    or on a token-level dump by its whole sequence (the global row of its first token); ``options``:
    the pass's PassOptions (its grouping and row offset)."""

    def __init__(self, dump, options):
        self.grouping, self.row_offset = options.grouping, options.row_offset
        grouped_by_sequence = self.grouping is not None and sampling_unit(dump) == "sequence"
        self.offsets = dump.offsets() if grouped_by_sequence else None

    def groups(self, start: int, stop: int) -> np.ndarray | None:
        if self.grouping is None:
            return None
        rows = np.arange(start, stop)
        if self.offsets is not None:
            rows = self.offsets[np.searchsorted(self.offsets, rows, side="right") - 1]
        return self.grouping.of(self.row_offset + rows)

    def parts(self, start: int, stop: int) -> Parts:
        """Rows [start, stop) by group (a grouped pass)."""
        return parts_of(self.groups(start, stop), self.grouping.groups)


def leave_out(stats, g: int):
    """The statistics of every group but ``g`` (a LayerStats with ``groups``): each accumulator the
    merge of the other groups' (G − 2 merges on a copy), the row counts theirs."""
    others = [part for i, part in enumerate(stats.groups) if i != g]
    merged = copy.deepcopy(others[0])
    for part in others[1:]:
        merged.merge(part)
    return merged


def each_left_out(stats):
    """The statistics without group g (as :func:`~actgeom.core.state.groups.leave_out`: the merge
    of the other groups), for g = 0 … G−1 in turn, by halving the groups: the statistics outside
    a range of groups plus one half of it are those outside the other half. About G·log₂G merges
    instead of G·(G−2), and log₂G copies alive at a time."""
    groups = stats.groups

    def walk(lo: int, hi: int, outside):
        if hi - lo == 1:
            yield outside
            return
        mid = (lo + hi) // 2
        yield from walk(lo, mid, _merged(outside, groups[mid:hi]))
        yield from walk(mid, hi, _merged(outside, groups[lo:mid]))

    return walk(0, len(groups), None)


def _merged(outside, parts: list):
    """A copy of ``outside`` (None: nothing yet) with every part merged in."""
    merged = copy.deepcopy(outside if outside is not None else parts[0])
    for part in parts if outside is not None else parts[1:]:
        merged.merge(part)
    return merged


def settle(stats) -> None:
    """Set a grouped LayerStats' total (its accumulators and counts) to the merge of its groups."""
    total = copy.deepcopy(stats.groups[0])
    for part in stats.groups[1:]:
        total.merge(part)
    stats.accumulators = total.accumulators
    stats.n_rows, stats.n_nonfinite, stats.n_unlabeled = total.n_rows, total.n_nonfinite, total.n_unlabeled


def sampling_unit(dump) -> str:
    """What a jackknife group holds whole: the "sequence" of a token-level dump (its tokens are not
    independent), else the "row"."""
    return "sequence" if dump.offsets_path is not None else "row"


def check_groups(dump, specs: dict, options) -> None:
    """Refuse before the pass a ``--ci-groups`` larger than the sampling units of the rows read, or
    whose G copies of the layer statistics (and two more while intervals are made) exceed memory."""
    grouping, unit = options.grouping, sampling_unit(dump)
    start, stop = options.row_range or (0, dump.n_rows)
    units = stop - start
    if unit == "sequence":
        offsets = dump.offsets()  # sequence s holds rows [offsets[s], offsets[s+1])
        units = int(((offsets[:-1] < stop) & (offsets[1:] > start)).sum())
    if grouping.groups > units:
        raise OptionError("ci_groups", grouping.groups, f"is more than the {units} {unit}s of {dump.path} "
                          f"(rows {start}:{stop}): every jackknife group needs one")
    label_range = (dump.class_ranges or (None, None))[0]
    n_classes = 1 if label_range is None else label_range[1] + 1
    for layer in dump.layers:
        each = sum(spec.state_bytes(layer.n_units, n_classes) for spec in specs.values())
        need, have = (grouping.groups + 2) * each, memory_bytes()
        if need > have:
            fits = have // each - 2
            hint = f"--ci-groups {fits} would fit" if fits >= 2 else "no number of groups fits; select fewer --layers units"
            raise OptionError("ci_groups", grouping.groups,
                              f"needs about {need / 2**30:.1f} GiB for the statistics of layer '{layer.name}' in "
                              f"{grouping.groups} groups ({each / 2**20:.0f} MiB each), more than this machine's "
                              f"{have / 2**30:.1f} GiB; {hint}")
