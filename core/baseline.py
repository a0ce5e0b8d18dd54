"""Baseline dumps (docs/metrics.md, "Uncertainty and nulls"): the same metrics on a control run — a
randomly initialised model, shuffled inputs, another seed — matched to the analysed files' layers by
name, each value reported beside the baseline's with the difference θ̂ − θ̂_baseline and, when both
sides have jackknife intervals, the difference's interval from the independent-samples
se √(se² + se_baseline²) and whether it excludes 0.

core/analysis.py's ``run`` pairs the files with their baselines (:func:`paired`), checks the layers
before any pass (:func:`check_layers`), and after the files are analysed analyses each distinct
baseline once with the same families and options — the same groups — and attaches (:func:`attach`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
           memo: dict | None = None) -> None:
    """Each file record of ``files`` compared with its baseline's (``pairs``, in order): per file
    ``baseline_file``, per layer ``baseline`` and ``baseline_unavailable`` (:func:`compare_layer`).
    ``analyse(path)`` makes a baseline's file record with the files' families and options; ``memo``
    ({resolved path: file record}, filled here) keeps each distinct baseline analysed once — a caller
    may pass one across runs with the same families and options, or seed it with the analysed files'
    own records. ``groups``: the jackknife groups of both sides (None: no intervals)."""
    memo = {} if memo is None else memo
    for file, base in zip(files, pairs):
        key = base.resolve()
        if key not in memo:
            memo[key] = analyse(base)
        by_name = {(entry.get("kind"), entry["layer"]): entry for entry in memo[key]["layers"]}
        for layer in file["layers"]:
            layer["baseline"], layer["baseline_unavailable"] = compare_layer(
                layer, by_name.get((layer.get("kind"), layer["layer"])), groups)
        file["baseline_file"] = str(base)


def compare_layer(layer: dict, base: dict | None, groups: int | None) -> tuple[dict, dict]:
    """({metric: baseline_difference(...)}, {metric: why it has none}) for every finite number of
    ``layer``'s metrics against the same metric of ``base`` (the baseline's entry of the same name;
    None when it has none); the difference's interval only when both sides have one."""
    differences, reasons = {}, {}
    for metric, value in layer["metrics"].items():
        if not finite(value):
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
        differences[metric] = baseline_difference(float(value), layer.get("intervals", {}).get(metric), float(other),
                                                  base.get("intervals", {}).get(metric), groups)
    return differences, reasons
