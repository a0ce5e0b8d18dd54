"""The compare pass: one read of every compared layer of every file, aligned block by block.

A *stream* is one layer of one file. Every stream's blocks are read with the same row bounds
(core/state/stream.py ``iter_blocks``, one read-ahead thread each) and zipped: per block, each stream's
own moments are updated once, and each requested pair's cross-moments once, however many pairs a
stream is in (A's L layers × B's M layers: L + M side updates and L·M cross GEMMs per block).
A row that is NaN/inf in any stream is dropped from all of them, so every pair uses the same rows.
The seeded row sample (RSA, mutual k-NN) is a :class:`~actgeom.core.base.stats.Reservoir` per stream:
its keys depend only on the row number and the seed, so every stream keeps the same rows.
:func:`accumulate_rows` runs the pass over one row range into :class:`CompareMoments`, which merge
(and travel as plain arrays): ranges run elsewhere (core/backends/dask.py) give one pass's moments.

With jackknife groups (``ci_groups`` G, core/state/groups.py): each aligned row falls in the group
of its sampling unit (its row number, or its sequence on a token-level A: the files are aligned row
by row), and the sides' and pairs' moments are kept once per group (``CompareMoments.groups``);
the total is their merge and :meth:`PassResult.leave_out` the merge of the other groups. The sample
is one for all groups; each sampled row carries its group (as the reservoir's label), and leaving
out group g leaves its rows out of the sample.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.sample import Reservoir
from actgeom.core.dump import Dump, LayerInfo
from actgeom.core.metrics.compare_moments import CentredCross, CentredSide, CrossMoments, SideMoments
from actgeom.core.state.accumulators.base import prefixed
from actgeom.core.state.engine import PassOptions, Progress
from actgeom.core.state.groups import SamplingUnits
from actgeom.core.state.stream import iter_blocks

MOMENTS_FORMAT = "actgeom-compare-moments"  # the header of a row range's moments as plain arrays
_ID_BLOCK = 1 << 20  # ids compared a million at a time: memory independent of N
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class Stream:
    """One layer of one open dump."""

    dump: Dump
    layer: LayerInfo

    @property
    def key(self) -> tuple:
        return (str(self.dump.path.resolve()), self.layer.path)


def parse_bytes(text: str | int | float) -> int:
    """'4GiB', '500MB', '2e9' → bytes."""
    if isinstance(text, (int, float)):
        return int(text)
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise OptionError("max_memory", text, "is not a size such as 4GiB, 500MB or 2e9 (bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_bytes(streams: list[Stream], pairs: list[tuple[int, int]], block_rows: int, sample: int,
                 groups: int = 0) -> int:
    """What the pass holds: 8·(Σ_pairs D_a·D_b + Σ_streams D²) of moments, plus each stream's
    read buffers (4 blocks) and sample. With G jackknife groups the moments are held G + 3 times:
    once per group, the total, and a leave-one-group-out merge with its finalised copy."""
    widths = [s.layer.n_units for s in streams]
    moments = sum(widths[i] * widths[j] for i, j in pairs) + sum(d * d for d in widths)
    return 8 * (moments * (groups + 3 if groups else 1) + sum(widths) * (4 * block_rows + sample))


def check_alignment(dumps: list[Dump], ids: str | None) -> dict:
    """Refuse rows that do not correspond; say how alignment was established.

    Every file needs the same number of rows. With ids in every file (``ids`` = --ids, else
    /rows/sample_id), they must be equal row by row (streamed, a million at a time); the first
    mismatch is named. Without ids in every file, alignment is assumed (and said so).
    """
    first = dumps[0]
    for dump in dumps[1:]:
        if dump.n_rows != first.n_rows:
            raise InvalidInputError(f"{first.path} has {first.n_rows} rows but {dump.path} has {dump.n_rows}: "
                                    "compare needs the same inputs, in the same order, in every file")
    paths = [dump.ids_path(ids) for dump in dumps]
    if any(path is None for path in paths):
        without = [str(d.path) for d, p in zip(dumps, paths) if p is None]
        return {"by": "assumed", "note": f"alignment assumed: no row ids (/rows/sample_id or --ids) in "
                                         f"{', '.join(without)}; row i of every file is taken to be the same input"}
    for start in range(0, first.n_rows, _ID_BLOCK):
        stop = min(start + _ID_BLOCK, first.n_rows)
        reference = first.row_ids(paths[0], start, stop)
        for dump, path in zip(dumps[1:], paths[1:]):
            other = dump.row_ids(path, start, stop)
            same_kind = reference.dtype.kind in "iu" and other.dtype.kind in "iu"
            differ = np.flatnonzero(reference != other) if same_kind else \
                np.flatnonzero(reference.astype(object) != other.astype(object))
            if differ.size:
                row, mine, theirs = start + int(differ[0]), _plain(reference[differ[0]]), _plain(other[differ[0]])
                raise InvalidInputError(
                    f"rows differ at row {row}: {first.path} has id {mine!r} ({paths[0]}), "
                    f"{dump.path} has {theirs!r} ({path}); compare needs the same inputs in the same order")
    return {"by": "ids", "note": f"rows aligned by their ids ({paths[0]}): equal in every file"}


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class PassResult:
    """Finalised moments of every stream and pair, the shared sample, and the row counts; with
    jackknife groups, each group's moments (``parts``) and the group of each sampled row."""

    sides: list[CentredSide]
    crosses: dict[tuple[int, int], CentredCross]
    samples: list[np.ndarray | None]
    n_rows: int
    n_nonfinite: int
    parts: list[CompareMoments] | None = None
    sample_groups: np.ndarray | None = None

    def cross(self, i: int, j: int) -> CentredCross:
        """Cross-moments of streams (i, j), oriented rows = i, columns = j."""
        if i == j:
            return CentredCross.of_itself(self.sides[i])
        return self.crosses[(i, j)] if (i, j) in self.crosses else self.crosses[(j, i)].transposed()

    def leave_out(self, g: int) -> "PassResult":
        """The pass as if the rows of group ``g`` were not in the files: the moments the merge of
        the other groups' (exactly those of the rows outside g), the sample without g's rows."""
        merged = _merged([part for i, part in enumerate(self.parts) if i != g])
        keep = None if self.sample_groups is None else self.sample_groups != g
        return PassResult(sides=[side.finalize() for side in merged.sides],
                          crosses={pair: cross.finalize() for pair, cross in merged.crosses.items()},
                          samples=[None if rows is None else rows[keep] for rows in self.samples],
                          n_rows=merged.sides[0].n, n_nonfinite=0)


def compare_pass(streams: list[Stream], pairs: list[tuple[int, int]], *, block_rows: int, subsample: int = 0,
                 seed: int = 0, nonfinite: str = "error", ci_groups: int = 0, ci_seed: int = 0,
                 progress: Progress | None = None, backend=None) -> PassResult:
    """One pass over every stream (same row bounds), feeding each stream's moments once per block
    and each pair's cross-moments once per block. ``pairs`` are unordered (i ≠ j). ``ci_groups``:
    keep the moments per jackknife group (0: none). ``backend``: None (this process), or a
    core.backends executor running :func:`accumulate_rows` over row ranges and merging the results."""
    grouped = {"ci_groups": ci_groups, "ci_seed": ci_seed} if ci_groups else {}
    if backend is None:
        moments = accumulate_rows(streams, pairs, block_rows=block_rows, subsample=subsample, seed=seed,
                                  progress=progress, **grouped)
    else:
        moments = backend.compare(streams, pairs, block_rows=block_rows, subsample=subsample, seed=seed,
                                  progress=progress, **grouped)
    return moments.result(streams, nonfinite)


def accumulate_rows(streams: list[Stream], pairs: list[tuple[int, int]], *, block_rows: int, subsample: int = 0,
                    seed: int = 0, ci_groups: int = 0, ci_seed: int = 0, rows: tuple[int, int] | None = None,
                    progress: Progress | None = None) -> CompareMoments:
    """The pass's moments over ``rows`` (default: every row); blocks start at ``rows[0]`` and the
    sample's keys (and the jackknife groups) are of global row numbers, so ranges merge into the
    moments of one pass."""
    start, stop = rows or (0, streams[0].dump.n_rows)
    moments = CompareMoments.empty([s.layer.n_units for s in streams], pairs, subsample=subsample, seed=seed,
                                   groups=ci_groups)
    units = SamplingUnits(streams[0].dump, PassOptions(ci_groups=ci_groups, ci_seed=ci_seed))
    partners = {i: [j for pair in pairs if i in pair for j in pair if j != i] for i in range(len(streams))}
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(contextlib.closing(iter_blocks(s.dump, s.layer, start, stop, block_rows)))
                   for s in streams]
        for blocks in zip(*readers):
            Xs = [block.X for block in blocks]
            first = blocks[0].start
            index = np.arange(first, first + Xs[0].shape[0])
            groups = units.groups(first, first + Xs[0].shape[0])
            if groups is None:
                Xs, index = _feed(moments, moments, Xs, index, partners)
                labels = np.zeros(index.size, dtype=np.int64)
            else:  # each group's rows feed its moments; the sample takes them all, labelled by group
                kept = [_feed(moments, moments.groups[g], [X[groups == g] for X in Xs], index[groups == g], partners)
                        for g in np.unique(groups)]
                Xs = [np.concatenate([part[s] for part, _ in kept]) for s in range(len(streams))]
                index = np.concatenate([part_index for _, part_index in kept])
                labels = groups[index - first]
            for reservoir, X in zip(moments.reservoirs, Xs):
                if reservoir is not None:
                    reservoir.update(X, labels, index)
            if progress is not None:
                progress("the compared layers", first + blocks[0].X.shape[0] - start, stop - start)
    return moments


def _feed(counts: "CompareMoments", moments: "CompareMoments", Xs: list[np.ndarray], index: np.ndarray,
          partners: dict[int, list[int]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Add aligned blocks (one per stream) to the sides and pairs of ``moments``; a row NaN/inf in
    any stream is dropped from all (counted in ``counts``). → the blocks' finite rows and their index."""
    shifted = [side.shift(X, index=i) for i, (side, X) in enumerate(zip(moments.sides, Xs))]
    finite = _finite_rows(shifted)
    if finite is not None:
        counts.n_nonfinite += int((~finite).sum())
        Xs, index = [X[finite] for X in Xs], index[finite]
        shifted = [block.select(finite) for block in shifted]
    for block in shifted:
        block.finish([shifted[j] for j in partners[block.index]])
    for side, block in zip(moments.sides, shifted):
        side.update(block)
    for (i, j), cross in moments.crosses.items():
        cross.update(shifted[i], shifted[j])
    return Xs, index


def _merged(parts: list["CompareMoments"]) -> "CompareMoments":
    """A new CompareMoments holding the moments of every part (the parts unchanged)."""
    merged = CompareMoments.empty([side.n_units for side in parts[0].sides], list(parts[0].crosses), subsample=0, seed=0)
    for part in parts:
        merged.merge(part)
    return merged


@dataclass
class CompareMoments:
    """The pass's state over some rows, mergeable: every stream's moments, every pair's
    cross-moments, every stream's sample (None: --subsample 0), the rows dropped as non-finite;
    with jackknife groups, the moments per group (``groups``; then ``sides`` and ``crosses`` stay
    empty until :meth:`result` merges them)."""

    sides: list[SideMoments]
    crosses: dict[tuple[int, int], CrossMoments]
    reservoirs: list[Reservoir | None]
    n_nonfinite: int = 0
    groups: list["CompareMoments"] | None = None

    @classmethod
    def empty(cls, widths: list[int], pairs: list[tuple[int, int]], *, subsample: int, seed: int,
              groups: int = 0) -> "CompareMoments":
        parts = [cls.empty(widths, pairs, subsample=0, seed=seed) for _ in range(groups)] if groups else None
        return cls(sides=[SideMoments(d) for d in widths],
                   crosses={(i, j): CrossMoments(widths[i], widths[j]) for i, j in pairs},
                   reservoirs=[Reservoir(subsample, d, np.float64, seed) if subsample else None for d in widths],
                   groups=parts)

    def merge(self, other: "CompareMoments") -> None:
        """Add another row range's moments (the same streams, pairs and groups)."""
        for mine, theirs in zip(self.sides, other.sides):
            mine.merge(theirs)
        for pair, cross in self.crosses.items():
            cross.merge(other.crosses[pair])
        for mine, theirs in zip(self.reservoirs, other.reservoirs):
            if mine is not None:
                mine.merge(theirs)
        for mine, theirs in zip(self.groups or (), other.groups or ()):
            mine.merge(theirs)
        self.n_nonfinite += other.n_nonfinite

    def result(self, streams: list[Stream], nonfinite: str) -> PassResult:
        """The finalised moments (with groups: of their merge), or the error of --nonfinite error
        when rows were NaN/inf."""
        if self.n_nonfinite and nonfinite == "error":
            raise InvalidInputError(f"{self.n_nonfinite} rows have NaN or inf values in a compared layer "
                                    f"({', '.join(sorted({str(s.dump.path) for s in streams}))}); "
                                    "pass --nonfinite drop to leave them out of every layer")
        total = self if self.groups is None else _merged(self.groups)
        samples = [None if r is None else r.sample() for r in self.reservoirs]
        sampled = next((sample for sample in samples if sample is not None), None)
        return PassResult(sides=[side.finalize() for side in total.sides],
                          crosses={pair: cross.finalize() for pair, cross in total.crosses.items()},
                          samples=[None if sample is None else sample[2] for sample in samples],
                          n_rows=total.sides[0].n, n_nonfinite=self.n_nonfinite, parts=self.groups,
                          sample_groups=None if self.groups is None or sampled is None else sampled[1])

    def to_arrays(self, meta: dict | None = None) -> dict[str, np.ndarray]:
        """Plain arrays (an .npz's content, no pickles) with a JSON header holding ``meta``."""
        arrays = {"n_nonfinite": np.array(self.n_nonfinite)} | self._moment_arrays()
        for g, part in enumerate(self.groups or ()):
            arrays |= {f"group/{g}/{key}": value for key, value in part._moment_arrays().items()}
        for i, reservoir in enumerate(self.reservoirs):
            if reservoir is not None:
                arrays |= {f"sample/{i}/{key}": value for key, value in reservoir.to_arrays().items()}
        header = {"format": MOMENTS_FORMAT, "streams": len(self.sides), "pairs": [list(p) for p in self.crosses],
                  "groups": len(self.groups or ()), "meta": meta or {}}
        arrays["header"] = np.array(json.dumps(header))
        return arrays

    def _moment_arrays(self) -> dict[str, np.ndarray]:
        arrays = {}
        for i, side in enumerate(self.sides):
            arrays |= {f"side/{i}/{key}": value for key, value in side.to_arrays().items()}
        for (i, j), cross in self.crosses.items():
            arrays |= {f"cross/{i}-{j}/{key}": value for key, value in cross.to_arrays().items()}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> tuple["CompareMoments", dict]:
        """The inverse of :meth:`to_arrays` → (moments, meta)."""
        header = json.loads(str(arrays["header"]))
        n, pairs = header["streams"], [tuple(p) for p in header["pairs"]]
        moments = cls._from_moment_arrays(arrays, n, pairs)
        moments.reservoirs = [Reservoir.from_arrays(prefixed(arrays, f"sample/{i}/"))
                              if f"sample/{i}/keys" in arrays else None for i in range(n)]
        moments.n_nonfinite = int(arrays["n_nonfinite"])
        groups = header.get("groups", 0)
        moments.groups = [cls._from_moment_arrays(prefixed(arrays, f"group/{g}/"), n, pairs)
                          for g in range(groups)] if groups else None
        return moments, header["meta"]

    @classmethod
    def _from_moment_arrays(cls, arrays: dict[str, np.ndarray], n: int, pairs: list[tuple]) -> "CompareMoments":
        return cls(sides=[SideMoments.from_arrays(prefixed(arrays, f"side/{i}/")) for i in range(n)],
                   crosses={(i, j): CrossMoments.from_arrays(prefixed(arrays, f"cross/{i}-{j}/")) for i, j in pairs},
                   reservoirs=[None] * n)


def _finite_rows(blocks: list) -> np.ndarray | None:
    """None when every value is finite (every row's ‖z‖² is: NaN/inf propagate), else the rows
    finite in every stream."""
    if all(np.isfinite(block.k).all() for block in blocks):
        return None
    finite = np.ones(blocks[0].z.shape[0], dtype=bool)
    for block in blocks:
        finite &= np.isfinite(block.z).all(axis=1)
    return finite
