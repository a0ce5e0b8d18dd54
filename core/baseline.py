"""Baseline dumps (docs/metrics.md, "Uncertainty and nulls"): the same metrics on a control run — a
randomly initialised model, shuffled inputs, another seed — matched to the analysed files' layers by
name, each value reported beside the baseline's with the difference θ̂ − θ̂_baseline and, when both
sides have jackknife intervals, the baseline's own interval and the difference's, and whether it
excludes 0. When the baseline holds the same sampling units as the file (:func:`same_units`: the same
inputs through another network), both sides' jackknife groups are the same hash of the same units and
the difference's se is the jackknife of the G leave-one-group-out differences (paired: the two sides'
correlated errors cancel); otherwise the independent-samples se √(se² + se_baseline²). Diagnostic
metrics (counts, sizes) get no difference.

core/analysis.py's ``run`` pairs the files with their baselines (:func:`paired`), checks the layers
before any pass (:func:`check_layers`), and after the files are analysed analyses each distinct
baseline once with the same families and options — the same groups — and attaches (:func:`attach`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.metrics.uncertainty import baseline_difference, finite


def paired(paths: list[Path], baseline) -> list[Path] | None:
    """The baseline of each file of ``paths``: ``baseline`` is None (no baselines), one path (the
    baseline of every file) or a list of paths (one for every file when it has one element, else one
    per file in order, so as many as the files)."""
    if baseline is None:
        return None
    given = [Path(baseline)] if isinstance(baseline, (str, Path)) else [Path(p) for p in baseline]
    if not given:
        return None
    if len(given) == 1:
        return given * len(paths)
    if len(given) != len(paths):
        raise OptionError("baseline", None, f"takes one dump for every file or one per file in order: "
                                            f"{len(given)} given for {len(paths)} file{'s' if len(paths) != 1 else ''}")
    return given


def check_layers(paths: list[Path], pairs: list[Path], spec: DumpSpec) -> None:
    """Before any pass: each baseline opens with the files' ``spec`` (its layers, labels, classifier)
    and has a layer of every name its file's analysis selects; one line naming the layer and the
    baseline's layers otherwise."""
    names: dict[Path, list[str]] = {}

    def layers_of(path: Path, role: str | None) -> list[str]:
        if path not in names:
            try:
                with Dump(path, spec) as dump:
                    names[path] = [layer.name for layer in dump.layers]
            except InvalidInputError as error:
                if role is None:
                    raise
                raise OptionError("baseline", str(path), f"cannot be read as the files are: {error}") from None
        return names[path]

    for path, base in zip(paths, pairs):
        have = layers_of(base, "baseline")
        missing = [name for name in layers_of(path, None) if name not in have]
        if missing:
            raise OptionError("baseline", str(base), f"has no layer '{missing[0]}' (a layer of {path}); "
                                                     f"its layers: {', '.join(have) or '(none)'}")


def attach(files: list[dict], pairs: list[Path], analyse: Callable[[Path], dict], groups: int | None,
           memo: dict | None = None, diagnostic: frozenset = frozenset(), spec: DumpSpec | None = None) -> None:
    """Each file record of ``files`` compared with its baseline's (``pairs``, in order): per file
    ``baseline_file`` and ``baseline_paired`` (:func:`same_units`), per layer ``baseline`` and
    ``baseline_unavailable`` (:func:`compare_layer`). ``analyse(path)`` makes a baseline's file record
    with the files' families and options; ``memo`` ({resolved path: file record}, filled here) keeps
    each distinct baseline analysed once — a caller may pass one across runs with the same families and
    options, or seed it with the analysed files' own records. ``groups``: the jackknife groups of both
    sides (None: no intervals); ``diagnostic``: the metrics that get no difference; ``spec``: how the
    dumps are read, to find whether a file and its baseline hold the same units (None: the files'
    numbers come from statistics files, whose rows may be a part of the dump's: never paired)."""
    memo = {} if memo is None else memo
    for file, base in zip(files, pairs):
        key = base.resolve()
        if key not in memo:
            memo[key] = analyse(base)
        paired = groups is not None and spec is not None and same_units(Path(file["file"]), base, spec)
        by_name = {(entry.get("kind"), entry["layer"]): entry for entry in memo[key]["layers"]}
        for layer in file["layers"]:
            layer["baseline"], layer["baseline_unavailable"] = compare_layer(
                layer, by_name.get((layer.get("kind"), layer["layer"])), groups, paired, diagnostic)
        file["baseline_file"] = str(base)
        file["baseline_paired"] = paired


def same_units(path: Path, base: Path, spec: DumpSpec, block: int = 1 << 22) -> bool:
    """Whether the baseline dump ``base`` holds the sampling units of ``path`` in the same order — the
    same number of rows, the same sequence offsets, the same labels and, where both have them, the same
    sample ids: then the jackknife groups (a hash of the unit) are the same on both sides. False when
    either cannot be read (e.g. a file analysed from its statistics alone)."""
    try:
        with Dump(path, spec) as mine, Dump(base, spec) as theirs:
            if mine.n_rows != theirs.n_rows or not _equal(mine.offsets(), theirs.offsets()):
                return False
            ids = (mine.ids_path(), theirs.ids_path())
            for start in range(0, mine.n_rows, block):
                stop = min(start + block, mine.n_rows)
                if not _equal(mine.labels(start, stop), theirs.labels(start, stop)):
                    return False
                if None not in ids and not _equal(mine.row_ids(ids[0], start, stop), theirs.row_ids(ids[1], start, stop)):
                    return False
            return True
    except (InvalidInputError, OSError):
        return False


def _equal(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def compare_layer(layer: dict, base: dict | None, groups: int | None, paired: bool = False,
                  diagnostic: frozenset = frozenset()) -> tuple[dict, dict]:
    """({metric: baseline_difference(...)}, {metric: why it has none}) for every finite number of
    ``layer``'s metrics but the ``diagnostic`` ones, against the same metric of ``base`` (the baseline's
    entry of the same name; None when it has none); the difference's interval only when both sides have
    one, from their leave-one-group-out values (``replicates``) when ``paired``."""
    differences, reasons = {}, {}
    for metric, value in layer["metrics"].items():
        if not finite(value) or metric in diagnostic:
            continue
        if base is None:
            reasons[metric] = f"the baseline has no {layer.get('kind', 'layer')} '{layer['layer']}'"
            continue
        other = base["metrics"].get(metric)
        if not finite(other):
            why = base.get("unavailable", {}).get(metric)
            reasons[metric] = (f"unavailable in the baseline: {why}" if why is not None else
                               "not in the baseline's results" if metric not in base["metrics"] else
                               f"not a finite number in the baseline ({other})")
            continue
        mine, theirs = layer.get("replicates", {}).get(metric), base.get("replicates", {}).get(metric)
        both = paired and mine is not None and theirs is not None and len(mine) == len(theirs)
        differences[metric] = baseline_difference(
            float(value), layer.get("intervals", {}).get(metric), float(other), base.get("intervals", {}).get(metric),
            groups, paired=[a - b for a, b in zip(mine, theirs)] if both else None)
    return differences, reasons
