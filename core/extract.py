"""Derive a dump from activation sources: select layers, rows, classes, a seeded sample, tokens; convert.

The sources' rows are read once, block by block (whole sequences per block when the selection
is per sequence), and written with :class:`DumpWriter`, so memory is bounded by a block, never
by the number of rows. The pipeline, in order:

1. **tokens**: ``all`` rows; ``first``/``last`` row of each sequence; ``mean`` of each sequence
   (float64 sums); ``from:K`` the rows at position ≥ K. The result is the *candidate* rows,
   numbered 0, 1, … across the sources in order (core/candidates.py).
2. **rows** ``A:B``: candidates A ≤ i < B.
3. **classes**: candidates whose label is one of these.
4. **sample** N (seed S): the N candidates left with the smallest splitmix keys of their candidate
   number (:func:`hash_keys` of core/base/sample.py), so the sample is reproducible and independent of block sizes; with
   ``stratify`` the N are split over classes in proportion to their counts (largest remainders).

Rows keep their order. A pooled sequence (``mean``) has the label its rows share, or -1 when they
disagree. Output offsets list the sequences that kept at least one row.

Resume: the dump records each extract run (sources with size and mtime, the selection, the
number of candidates consumed). ``append`` with the same selection and a source list that starts
with the last run's sources continues after the candidates already consumed, so extracting
``a b`` and then ``a b c`` with ``append`` equals extracting ``a b c`` at once; a killed run leaves
the dump as it was, and running it again resumes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core.base.errors import InvalidInputError, UsageError
from actgeom.core.base.options import check_seed
from actgeom.core.base.outputs import check_output
from actgeom.core.base.sample import hash_keys
from actgeom.core.candidates import Block, CandidateStream, first_position
from actgeom.core.dump.source import Source
from actgeom.core.dump.writer import COMPRESSION, STORAGE, DumpWriter

PROVENANCE_ATTR = "extract_runs"


@dataclass(frozen=True)
class Selection:
    """What to keep of the sources and how to store it (see the module docstring for the order)."""

    rows: tuple[int, int | None] | None = None
    classes: tuple[int, ...] = ()
    sample: int | None = None
    seed: int = 0
    stratify: bool = False
    tokens: str = "all"
    dtype: str | None = None
    compression: str | None = None

    def __post_init__(self):
        first_position(self.tokens)
        if self.dtype is not None and self.dtype not in STORAGE:
            raise UsageError(f"--dtype '{self.dtype}' is not one of {', '.join(STORAGE)}")
        if self.compression not in COMPRESSION:
            raise UsageError(f"--compression '{self.compression}' is not one of lzf, gzip")
        if self.sample is not None and self.sample < 1:
            raise UsageError(f"--sample {self.sample}: the sample size must be ≥ 1")
        check_seed(self.seed)
        if self.stratify and self.sample is None:
            raise UsageError("--stratify needs --sample N")
        if self.rows is not None and (self.rows[0] < 0 or (self.rows[1] is not None and self.rows[1] < self.rows[0])):
            raise UsageError(f"--rows {self.rows[0]}:{self.rows[1]} is not a range A:B with 0 ≤ A ≤ B")

    def record(self) -> dict:
        """The options that decide which rows are kept (not the storage), as JSON values."""
        record = asdict(self)
        del record["dtype"], record["compression"]
        record["rows"] = None if self.rows is None else list(self.rows)
        record["classes"] = list(self.classes)
        return record


def parse_classes(text: str | None) -> tuple[int, ...]:
    """``3,5,7`` → (3, 5, 7)."""
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--classes '{text}' is not a comma-separated list of class indices (e.g. 0,3,7)") from None


def parse_rows(text: str | None) -> tuple[int, int | None] | None:
    """``A:B``, ``A:`` or ``:B`` → (A, B or None)."""
    if text is None:
        return None
    head, sep, tail = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(head) if head.strip() else 0, int(tail) if tail.strip() else None)
    except ValueError:
        raise UsageError(f"--rows '{text}' is not a row range A:B (e.g. 0:100000, 5000:, :1000)") from None


def _sample(stream: CandidateStream, selection: Selection, eligible) -> np.ndarray | None:
    """Sorted candidate numbers of the seeded sample (None: no sampling)."""
    if selection.sample is None:
        return None
    n = selection.sample
    if not selection.stratify:
        keys, kept = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        for index, _ in eligible():
            keys, kept = _smallest(np.concatenate([keys, hash_keys(index, selection.seed)]), np.concatenate([kept, index]), n)
        return np.sort(kept)
    counts: dict[int, int] = {}
    for _, labels in eligible():
        for label, count in zip(*np.unique(labels, return_counts=True)):
            counts[int(label)] = counts.get(int(label), 0) + int(count)
    quota = stratified_quota(counts, n)
    kept = {label: (np.zeros(0, np.uint64), np.zeros(0, np.int64)) for label in quota}
    for index, labels in eligible():
        for label in np.unique(labels):
            if quota.get(int(label), 0) == 0:
                continue
            mine = index[labels == label]
            keys, rows = kept[int(label)]
            kept[int(label)] = _smallest(np.concatenate([keys, hash_keys(mine, selection.seed)]),
                                         np.concatenate([rows, mine]), quota[int(label)])
    return np.sort(np.concatenate([rows for _, rows in kept.values()] + [np.zeros(0, np.int64)]))


def stratified_quota(counts: dict[int, int], n: int) -> dict[int, int]:
    """How many rows of each class a stratified sample of n takes: n·n_c/N rounded by largest
    remainders (ties to the smaller label), so the quotas sum to min(n, N) and never exceed n_c.

    >>> stratified_quota({0: 50, 1: 30, 2: 20}, 7)
    {0: 4, 1: 2, 2: 1}
    """
    total = sum(counts.values())
    n = min(n, total)
    labels = sorted(counts)
    exact = {c: n * counts[c] / total for c in labels} if total else {}
    quota = {c: int(np.floor(exact[c])) for c in labels}
    rest = sorted(labels, key=lambda c: (-(exact[c] - quota[c]), c))
    for c in rest[: n - sum(quota.values())]:
        quota[c] += 1
    return quota


def _smallest(keys: np.ndarray, index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if keys.size <= n:
        return keys, index
    part = np.argpartition(keys, n - 1)[:n]
    return keys[part], index[part]


def _fingerprint(source: Source) -> dict:
    stat = source.path.stat()
    return {"path": str(source.path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime}


def _default_dtype(stream: CandidateStream) -> str:
    dtypes = {l.dtype for s in stream.sources for l in s.layers}
    if len(dtypes) == 1:
        return dtypes.pop()
    return "float64" if "float64" in dtypes else "float32"  # float32 holds float16 and bfloat16 exactly


def _resume_point(writer: DumpWriter, sources: list[dict], selection: Selection, out: Path) -> int:
    """Candidates already in the dump from an earlier run of this extract (0 when none)."""
    runs = json.loads(writer.get_attr(PROVENANCE_ATTR) or "[]")
    if not runs:
        return 0
    last = runs[-1]
    before = last["sources"]
    if last["selection"] == selection.record() and sources[: len(before)] == before:
        if selection.sample is not None and len(sources) != len(before):
            raise UsageError(f"--append to {out}: --sample draws from all sources at once, so adding sources would "
                             "change the sample; extract the whole source list to a new file")
        return int(last["candidates"])
    known = {s["path"] for run in runs for s in run["sources"]}
    again = [s["path"] for s in sources if s["path"] in known]
    if again:
        raise UsageError(f"--append to {out}: rows of {again[0]} are already in it from an earlier extract with other "
                         "sources or options; resume only with the same options and the earlier sources first")
    return 0


def extract_dump(sources: list[Source], out: str | Path, selection: Selection, *, append: bool = False) -> dict:
    """Write the selected rows of ``sources`` to the dump ``out`` (atomically); return a summary.

    An existing ``out`` is replaced, as every output is (core/base/outputs.py); it may not be an input.
    With ``append`` the rows are added to the complete dump at ``out`` (same layers, widths and
    dtype), resuming after the candidates an earlier run of the same extract consumed.
    """
    out = Path(out)
    check_output(out, [s.path for s in sources])  # never an input, a directory, a place that cannot be written
    stream = CandidateStream(sources, selection.tokens)
    if (selection.classes or selection.stratify) and "labels" not in stream.vectors:
        option = "--classes" if selection.classes else "--stratify"
        raise InvalidInputError(f"{option} needs labels in every source (e.g. /rows/label, --labels, a labels array)")
    dtype = selection.dtype or _default_dtype(stream)
    fingerprints = [_fingerprint(s) for s in sources]
    with DumpWriter(out, layers={l.name: l.n_units for l in stream.layers}, dtype=dtype, level=stream.level,
                    compression=selection.compression, append=append, **_identity(sources),
                    expected_rows=_most_rows(selection), label_names=sources[0].label_names) as writer:
        _carry_classifier(writer, sources[0])
        skip = _resume_point(writer, fingerprints, selection, out) if append else 0
        before = writer.n_rows
        chosen = _sample(stream, selection, lambda: _eligible(stream, selection))
        n_candidates = 0
        for block in stream.blocks():
            n_candidates = block.first + block.n_candidates
            keep = _keep(stream, selection, block, chosen, skip)
            if keep is None:
                continue
            batch = {l.name: stream.rows(block, l.name)[keep] for l in stream.layers}
            vectors = {kind: stream.vector(block, kind) for kind in ("labels", "token_id", "position", "prediction")}
            writer.append(batch, **{k: None if v is None else v[keep] for k, v in vectors.items()})
            if block.sequence is not None and stream.level == "token" and stream.has_offsets:
                lengths = np.bincount(block.sequence[keep])
                writer.add_sequences(lengths[lengths > 0])
        run = {"tool": f"actgeom {__version__}", "sources": fingerprints, "selection": selection.record(),
               "candidates": n_candidates, "rows_written": writer.n_rows - before, "dtype": dtype,
               "overflow_to_inf": writer.n_overflow}
        runs = json.loads(writer.get_attr(PROVENANCE_ATTR) or "[]") + [run]
        writer.set_attrs(**{PROVENANCE_ATTR: json.dumps(runs)})
    return {"output": str(out), "n_rows_written": run["rows_written"], "n_rows": writer.n_rows, "n_candidates": n_candidates,
            "resumed_after": skip, "layers": [l.name for l in stream.layers], "dtype": dtype, "level": stream.level,
            "overflow_to_inf": writer.n_overflow}


def _carry_classifier(writer: DumpWriter, source: Source) -> None:
    """The first source's classifier (an actgeom dump's W, b) goes with the layer it reads."""
    if source.classifier is None or writer.has_classifier:
        return
    weight, bias, layer = source.classifier
    if layer in writer.layer_units:
        writer.set_classifier(weight, bias, layer=layer)


def _most_rows(selection: Selection) -> int | None:
    """An upper bound on the rows written, when the selection gives one (HDF5 allocates whole chunks)."""
    bounds = [selection.sample] if selection.sample is not None else []
    if selection.rows is not None and selection.rows[1] is not None:
        bounds.append(selection.rows[1] - selection.rows[0])
    return min(bounds) if bounds else None


def _identity(sources: list[Source]) -> dict:
    """model/checkpoint/step of the output: the first source's when it is an actgeom dump, else the file names."""
    return sources[0].identity or {"model": ", ".join(dict.fromkeys(s.path.name for s in sources))}


def _filter(stream: CandidateStream, selection: Selection, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Candidate numbers of a block, the mask of those passing --rows and --classes, and their labels."""
    index = block.first + np.arange(block.n_candidates)
    mask = np.ones(block.n_candidates, dtype=bool)
    if selection.rows is not None:
        low, high = selection.rows
        mask &= index >= low
        if high is not None:
            mask &= index < high
    labels = stream.labels(block) if selection.classes or selection.stratify else None
    if selection.classes:  # labels exist: checked before the pass
        mask &= np.isin(labels, selection.classes)
    return index, mask, labels


def _eligible(stream: CandidateStream, selection: Selection):
    """(candidate numbers, labels) of the candidates passing --rows/--classes, block by block."""
    for block in stream.blocks():
        if selection.rows is not None and selection.rows[1] is not None and block.first >= selection.rows[1]:
            return
        index, mask, labels = _filter(stream, selection, block)
        yield index[mask], (None if labels is None else labels[mask])


def _keep(stream: CandidateStream, selection: Selection, block: Block, chosen: np.ndarray | None, skip: int) -> np.ndarray | None:
    """Local candidates of a block to write (None: nothing), cheapest tests first."""
    end = block.first + block.n_candidates
    if block.n_candidates == 0 or end <= skip:
        return None
    if selection.rows is not None and (end <= selection.rows[0] or
                                       (selection.rows[1] is not None and block.first >= selection.rows[1])):
        return None
    if chosen is not None:
        lo, hi = np.searchsorted(chosen, [block.first, end])
        if lo == hi:
            return None
    index, mask, _ = _filter(stream, selection, block)
    mask &= index >= skip
    if chosen is not None:
        mask &= np.isin(index, chosen[lo:hi])
    return np.flatnonzero(mask) if mask.any() else None
