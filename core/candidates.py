"""The sources of an extract as one stream of *candidate* rows, read block by block.

``tokens`` decides the candidates: ``all`` rows; ``first``/``last`` row of each sequence; ``mean``
of each sequence (float64 sums); ``from:K`` the rows at position ≥ K. Candidates are numbered 0,
1, … across the sources in order. A block holds whole sequences when the choice is per sequence,
about :data:`BLOCK_BYTES` per layer, and is planned from metadata (offsets, positions) only; its
rows are read when asked for. core/extract.py selects among the candidates and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actgeom.core.base.errors import InvalidInputError, UsageError
from actgeom.core.dump.source import Source

TOKEN_CHOICES = "all, first, last, mean, from:K"
BLOCK_BYTES = 8 << 20  # rows per block: about this many bytes per layer as float64


def first_position(tokens: str) -> int | None:
    """K of ``from:K``; None for the other choices (validating them)."""
    if tokens in ("all", "first", "last", "mean"):
        return None
    head, _, k = tokens.partition(":")
    if head != "from" or not k.isdigit():
        raise UsageError(f"--tokens '{tokens}' is not one of {TOKEN_CHOICES} (e.g. from:1 skips BOS rows)")
    return int(k)


@dataclass
class Block:
    """Input rows [start, stop) of one source, and which candidates they give."""

    source: Source
    start: int  # in the source
    stop: int
    first: int  # candidate number of the block's first candidate
    take: np.ndarray | None  # local row of each candidate (None: every row, or pooled)
    pool: np.ndarray | None  # mean: local start row of each pooled sequence
    sequence: np.ndarray | None  # local sequence of each candidate (token-level output with offsets)
    n_candidates: int


class CandidateStream:
    """The sources as one candidate stream, in blocks, from metadata (offsets, positions) only."""

    def __init__(self, sources: list[Source], tokens: str):
        self.sources, self.tokens, self.k = sources, tokens, first_position(tokens)
        first = sources[0]
        self.layers = first.layers
        for source in sources[1:]:
            if [(l.name, l.n_units) for l in source.layers] != [(l.name, l.n_units) for l in self.layers]:
                raise InvalidInputError(
                    f"{source.path} has layers {_shapes(source)} but {first.path} has {_shapes(first)}; "
                    "sources are concatenated along rows, so they need the same layers and widths")
        self.vectors = set.intersection(*(s.vector_kinds for s in sources))
        unlabelled = [s for s in sources if "labels" not in s.vector_kinds]
        if unlabelled and len(unlabelled) < len(sources):
            labelled = next(s for s in sources if "labels" in s.vector_kinds)
            raise InvalidInputError(f"{labelled.path} has labels but {unlabelled[0].path} has none; concatenated "
                                    "sources need labels in all or none (name them with --labels)")
        self.has_offsets = all(s.offsets is not None for s in sources)
        for source in sources:
            if tokens != "all" and source.offsets is None and not (self.k is not None and "position" in source.vector_kinds):
                raise InvalidInputError(
                    f"--tokens {tokens} needs sequence offsets in {source.path} (/sequences/offsets or --offsets, "
                    "an offsets array, or a 3-D (sequences, tokens, units) array)"
                    + ("" if self.k is None else ", or token positions"))
        self.pooled = tokens in ("first", "last", "mean")
        self.level = "sample" if self.pooled or not (self.has_offsets or "position" in self.vectors) else "token"
        self.block_rows = max(1, BLOCK_BYTES // (8 * max(l.n_units for l in self.layers)))

    def blocks(self):
        first = 0
        for source in self.sources:
            for block in self._source_blocks(source, first):
                yield block
                first += block.n_candidates

    def _source_blocks(self, source: Source, first: int):
        offsets = source.offsets
        if offsets is None or (self.tokens == "all" and not self.has_offsets):
            for start in range(0, source.n_rows, self.block_rows):
                stop = min(start + self.block_rows, source.n_rows)
                take = None
                if self.k is not None:
                    take = np.flatnonzero(source.vector("position", start, stop) >= self.k)
                n = stop - start if take is None else take.size
                yield Block(source, start, stop, first, take, None, None, n)
                first += n
            return
        s = 0
        n_sequences = offsets.size - 1
        while s < n_sequences:  # whole sequences, about block_rows rows (at least one sequence)
            end = int(np.searchsorted(offsets, offsets[s] + self.block_rows, side="right")) - 1
            end = min(max(end, s + 1), n_sequences)
            block = self._sequence_block(source, offsets[s : end + 1], first)
            yield block
            first += block.n_candidates
            s = end

    def _sequence_block(self, source: Source, bounds: np.ndarray, first: int) -> Block:
        start, stop = int(bounds[0]), int(bounds[-1])
        local = bounds - start
        lengths = np.diff(local)
        nonempty = lengths > 0
        take = pool = sequence = None
        if self.tokens == "first":
            take = local[:-1][nonempty]
        elif self.tokens == "last":
            take = local[1:][nonempty] - 1
        elif self.tokens == "mean":
            pool = local[:-1][nonempty]
        else:
            sequence = np.repeat(np.arange(lengths.size), lengths)
            if self.k is not None:
                position = np.arange(stop - start) - np.repeat(local[:-1], lengths)
                take = np.flatnonzero(position >= self.k)
                sequence = sequence[take]
        n = int(nonempty.sum()) if self.pooled else (stop - start if take is None else take.size)
        return Block(source, start, stop, first, take, pool, sequence, n)

    def labels(self, block: Block) -> np.ndarray | None:
        """Labels of a block's candidates (a pooled sequence: the shared label, else -1)."""
        if "labels" not in self.vectors:
            return None
        labels = block.source.vector("labels", block.start, block.stop)
        if block.pool is not None:
            low, high = np.minimum.reduceat(labels, block.pool), np.maximum.reduceat(labels, block.pool)
            return np.where(low == high, low, -1)
        return labels if block.take is None else labels[block.take]

    def rows(self, block: Block, layer: str) -> np.ndarray:
        x = block.source.rows(layer, block.start, block.stop)
        if block.pool is not None:  # float64 sums: the mean of float16 rows is not rounded per row
            lengths = np.diff(np.append(block.pool, block.stop - block.start))
            return np.add.reduceat(x.astype(np.float64), block.pool, axis=0) / lengths[:, None]
        return x if block.take is None else x[block.take]

    def vector(self, block: Block, kind: str) -> np.ndarray | None:
        if kind not in self.vectors or (kind != "labels" and block.pool is not None):
            return None
        if kind == "labels":
            return self.labels(block)
        values = block.source.vector(kind, block.start, block.stop)
        return values if block.take is None else values[block.take]


def _shapes(source: Source) -> str:
    return ", ".join(f"{l.name} ({l.n_units})" for l in source.layers)
