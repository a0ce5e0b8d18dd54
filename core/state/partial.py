"""Partial statistics: saved by one job, loaded and merged by another (cluster scale-out).

A partial-statistics file is an .npz (no pickles) holding every accumulator of every layer and a
JSON header. Merging is exact up to float64 rounding, in any order and any split of the rows.

Provenance: the header records which dump the statistics describe (a fingerprint of its
attributes, layer names, widths and dtypes, so shard files of one checkpoint share it while two
checkpoints do not), the label and offset datasets its rows were grouped by, the global row ranges
they cover, and the pass options that shape them. `merge` refuses statistics of different dumps or
datasets, overlapping rows and different pass options; `--stats` refuses statistics of another
dump, of other labels or offsets (labels only where a family groups rows by class), of other pass
options, or of only part of the rows (unless the caller accepts a partial view, which the output
then records).
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import DataWarning, InvalidInputError, UsageError
from actgeom.core.base.outputs import atomic_output
from actgeom.core.state.accumulators import ACCUMULATORS, spec_from_record
from actgeom.core.state.accumulators.base import prefixed
from actgeom.core.state.engine import LayerStats, PassOptions
from actgeom.core.state.groups import settle

PARTIAL_FORMAT = "actgeom-partial-stats"
PARTIAL_VERSION = 4  # 2: accumulators named by slot with their specs; 3: D×D scatters packed; 4: label/offset datasets


def save_partial(path: str | Path, stats: dict[str, LayerStats], meta: dict | None = None, *, inputs=(),
                 option: str = "--save-stats") -> None:
    """Write partial statistics (an .npz, no pickles) by the output rules of core/base/outputs.py (never
    one of ``inputs``, atomic, umask), for a later :func:`merge_partials`."""
    save_arrays(path, stats_arrays(stats, meta), inputs=inputs, option=option)


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray], *, inputs=(), option: str = "--save-stats") -> None:
    """Write plain arrays (a partial-statistics file's content) as an .npz by the output rules."""
    with atomic_output(path, inputs, option=option) as handle:
        np.savez(handle, **arrays)


def stats_arrays(stats: dict[str, LayerStats], meta: dict | None = None) -> dict[str, np.ndarray]:
    """Statistics as plain arrays (the content of a partial-statistics file; also what a Dask task
    returns): every accumulator's arrays by layer and slot, and a JSON header."""
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, (name, layer_stats) in enumerate(stats.items()):
        layers.append({"name": name, "n_units": layer_stats.n_units, "dtype": layer_stats.dtype,
                       "specs": {slot: spec.record() for slot, spec in layer_stats.specs.items()}}
                      | _counts(layer_stats))
        if layer_stats.groups is None:
            for slot, acc in layer_stats.accumulators.items():
                arrays.update({f"{i}/{slot}/{key}": value for key, value in acc.to_arrays().items()})
            continue
        layers[-1]["groups"] = [_counts(part) for part in layer_stats.groups]  # the total is their merge
        for g, part in enumerate(layer_stats.groups):
            for slot, acc in part.accumulators.items():
                arrays.update({f"{i}/g{g}/{slot}/{key}": value for key, value in acc.to_arrays().items()})
    header = {"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, "layers": layers, "meta": meta or {}}
    arrays["header"] = np.array(json.dumps(header, default=_plain_number))
    return arrays


COUNTS = ("n_rows", "n_nonfinite", "n_unlabeled")


def _counts(stats: LayerStats) -> dict:
    return {name: getattr(stats, name) for name in COUNTS}


def _plain_number(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in partial-statistics metadata is not JSON-serialisable")


def load_partial(path: str | Path) -> tuple[dict[str, LayerStats], dict]:
    """Read a file written by :func:`save_partial` → (statistics by layer, meta)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != PARTIAL_FORMAT:
                raise KeyError
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # not an .npz, or a truncated one
        raise InvalidInputError(f"{path} is not an actgeom partial-statistics file") from None
    return stats_from_arrays(arrays, path)


def stats_from_arrays(arrays: dict[str, np.ndarray], path: str | Path = "the statistics") -> tuple[dict[str, LayerStats], dict]:
    """The inverse of :func:`stats_arrays` → (statistics by layer, meta)."""
    header = json.loads(str(arrays["header"]))
    if header.get("version") != PARTIAL_VERSION:
        raise InvalidInputError(f"{path} holds partial statistics of version {header.get('version')}; this actgeom "
                                f"reads version {PARTIAL_VERSION}: make them again with `actgeom stats`")
    stats = {}
    for i, entry in enumerate(header["layers"]):
        specs = {slot: spec_from_record(slot, record) for slot, record in entry["specs"].items()}
        if "groups" not in entry:
            stats[entry["name"]] = _layer_stats(arrays, entry, specs, {key: entry[key] for key in COUNTS}, f"{i}/")
            continue
        grouped = LayerStats(layer=entry["name"], n_units=entry["n_units"], dtype=entry["dtype"], specs=specs,
                             groups=[_layer_stats(arrays, entry, specs, counts, f"{i}/g{g}/")
                                     for g, counts in enumerate(entry["groups"])])
        settle(grouped)
        stats[entry["name"]] = grouped
    return stats, header["meta"]


def _layer_stats(arrays: dict, entry: dict, specs: dict, counts: dict, prefix: str) -> LayerStats:
    """One layer's (or one jackknife group's) statistics from the arrays under ``prefix``."""
    accumulators = {slot: ACCUMULATORS[slot].from_arrays(spec, prefixed(arrays, f"{prefix}{slot}/"))
                    for slot, spec in specs.items()}
    return LayerStats(layer=entry["name"], n_units=entry["n_units"], dtype=entry["dtype"], specs=specs,
                      accumulators=accumulators, **counts)


# Root attributes that say when and how a file was written, not what it holds.
_VOLATILE = {"n_rows", "complete", "created", "created_by", "writer_version", "extract_runs"}
# the pass options that decide which rows count and how (and their jackknife groups)
PROVENANCE_PASS = ("nonfinite", "tokens", "products", "ci_groups", "ci_seed")


def dump_fingerprint(dump) -> str:
    """What identifies the data of a dump: its attributes (but the row count and writing details)
    and every dataset's path, width and dtype. Shard files of one checkpoint share it; two
    checkpoints differ in their attributes (checkpoint, step). Foreign files without attributes
    are told apart by their datasets only."""
    identity = {"attrs": {k: v for k, v in dump.attrs.items() if k not in _VOLATILE}, "datasets": dump.structure()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(dump, options: PassOptions) -> dict:
    """Where statistics of one pass come from: the dump, the datasets its rows are grouped by, the
    global rows, the pass options."""
    start, stop = options.row_range or (0, dump.n_rows)
    return {"dumps": [str(dump.path)], "fingerprint": dump_fingerprint(dump), "sources": data_sources(dump),
            "rows": [[start + options.row_offset, stop + options.row_offset]],
            "pass": {name: getattr(options, name) for name in PROVENANCE_PASS}}


def data_sources(dump) -> dict:
    """The datasets beside the layers that shape statistics: class labels (--labels) and sequence
    offsets (--offsets). Two label sets of one dump give other statistics."""
    return {"labels": dump.labels_path, "offsets": dump.offsets_path}


def _sources_text(sources: dict | None) -> str:
    if sources is None:
        return "no record of its label and offset datasets"
    return ", ".join(f"{name} {path or '(none)'}" for name, path in sources.items())


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _recorded(meta: dict, name: str):
    """A pass option a statistics file was made with (files older than the option: its default)."""
    return meta["pass"].get(name, getattr(PassOptions(), name))


def merge_partials(loaded: list[tuple[str, dict[str, LayerStats], dict]]) -> tuple[dict[str, LayerStats], dict]:
    """Merge (path, statistics, provenance) of disjoint rows of one dump, or refuse naming why."""
    first_path, _, first = loaded[0]
    for path, _, meta in loaded[1:]:
        if meta.get("fingerprint") != first.get("fingerprint"):
            raise InvalidInputError(f"{path} holds statistics of another dump ({', '.join(meta.get('dumps', []))}) "
                                    f"than {first_path} ({', '.join(first.get('dumps', []))})")
        if meta.get("sources") != first.get("sources"):  # (none: statistics saved from memory by the Python API)
            raise InvalidInputError(f"{path} was made with {_sources_text(meta.get('sources'))}, {first_path} with "
                                    f"{_sources_text(first.get('sources'))}")
        for name in PROVENANCE_PASS:
            if _recorded(meta, name) != _recorded(first, name):
                raise InvalidInputError(f"{path} was made with --{_flag(name)} {_recorded(meta, name)}, {first_path} with "
                                        f"--{_flag(name)} {_recorded(first, name)}")
    ranges = sorted((a, b, path) for path, _, meta in loaded for a, b in meta["rows"])
    for (a1, b1, p1), (a2, b2, p2) in zip(ranges, ranges[1:]):
        if a2 < b1:
            raise InvalidInputError(f"{p1} (rows {a1}:{b1}) and {p2} (rows {a2}:{b2}) overlap: rows would count twice")
    merged = merge_stats([stats for _, stats, _ in loaded])
    meta = {"dumps": sorted({d for _, _, m in loaded for d in m["dumps"]}), "fingerprint": first["fingerprint"],
            "sources": first.get("sources"), "rows": _union([[a, b] for a, b, _ in ranges]), "pass": first["pass"]}
    return merged, meta


def _union(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def check_provenance(path, meta: dict, dump, options: PassOptions, *, partial_ok: bool = False,
                     by_label: bool = True) -> dict:
    """Refuse statistics that do not describe this dump's rows as this pass would read them;
    return what the output records about them. ``by_label`` False: the families do not group rows
    by class (rank), so statistics made with any labels serve them."""
    if meta.get("fingerprint") != dump_fingerprint(dump):
        raise InvalidInputError(f"{path} holds statistics of {', '.join(meta.get('dumps', ['another dump']))}, "
                                f"not of {dump.path} (their attributes or layers differ)")
    made, wanted = meta["sources"], data_sources(dump)
    if not by_label:
        made, wanted = {"offsets": made["offsets"]}, {"offsets": wanted["offsets"]}
    if made != wanted:
        raise InvalidInputError(f"{path} was made with {_sources_text(made)}; this command reads {_sources_text(wanted)} "
                                "(give the same --labels / --offsets)")
    grouped = _recorded(meta, "ci_groups")
    if options.ci_groups and not grouped:
        raise InvalidInputError(f"{path} holds no jackknife groups, which --ci needs: make it with `actgeom stats "
                                f"--ci-groups {options.ci_groups}`")
    for name in PROVENANCE_PASS:
        if name.startswith("ci_") and not options.ci_groups:
            continue  # grouped statistics serve a run without intervals: their total is kept
        if _recorded(meta, name) != getattr(options, name):
            raise InvalidInputError(f"{path} was made with --{_flag(name)} {_recorded(meta, name)}; this command uses "
                                    f"--{_flag(name)} {getattr(options, name)}")
    if Path(path).stat().st_mtime_ns < dump.path.stat().st_mtime_ns:  # same fingerprint, maybe other rows
        warnings.warn(DataWarning(f"{path} was written before {dump.path} was last modified: if the dump was written "
                                  "again since, make the statistics again"), stacklevel=2)
    covered = _union(meta["rows"])
    whole = covered == [[0, dump.n_rows]]
    if not whole and not partial_ok:
        shown = ", ".join(f"{a}:{b}" for a, b in covered)
        raise InvalidInputError(f"{path} covers rows {shown} of the {dump.n_rows} rows of {dump.path}; merge every "
                                "shard first, or pass --partial-ok to use part of the rows")
    return {"file": str(path), "rows": covered, "partial": not whole}


def merge_stats(parts: list[dict[str, LayerStats]]) -> dict[str, LayerStats]:
    """Merge statistics of the same layers computed on disjoint rows (shards or row ranges)."""
    if not parts:
        raise UsageError("nothing to merge")
    merged = parts[0]
    for part in parts[1:]:
        if set(part) != set(merged):
            raise InvalidInputError(f"partial statistics cover different layers: {sorted(merged)} vs {sorted(part)}")
        for name, layer_stats in part.items():
            merged[name].merge(layer_stats)
    return merged
