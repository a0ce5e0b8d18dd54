"""The library face of the commands that describe, derive or summarise dumps rather than measure
them: ``info``, ``extract``, ``stats`` and ``merge`` (the metric commands are core/api.py).

>>> import actgeom
>>> actgeom.info("sample_data/digits_mlp_epoch1500.h5")["n_rows"]  # doctest: +SKIP
1797
>>> dump = "sample_data/digits_mlp_epoch1500.h5"
>>> halves = [actgeom.stats(dump, rows=rows) for rows in ((0, 900), (900, 1797))]  # doctest: +SKIP
>>> actgeom.merge(halves).save("all.npz")  # doctest: +SKIP

Keyword names are the command-line options in snake_case (``--rows 0:900`` → ``rows=(0, 900)``).
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from pathlib import Path

from actgeom.core.base.errors import OptionError
from actgeom.core.base.outputs import check_outputs
from actgeom.core.base.result import document_header
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.state.engine import LayerStats, PassOptions, Progress, accumulate, options_record


def _names(layers) -> tuple[str, ...]:
    return tuple([layers] if isinstance(layers, str) else layers or ())


def info(paths, *, layers=None, labels=None, weight=None, bias=None, predictions=None, offsets=None,
         allow_incomplete=False) -> dict:
    """What is in one dump (a path) or several (a list): the document `actgeom info --format json`
    prints — layers (shape, dtype, chunking, compression), rows, labels, classifier, predictions,
    sequences, attention datasets, root attributes; no activation is read. A foreign file whose
    layers cannot be told apart (and no ``layers`` given) lists its datasets instead."""
    from actgeom.core.info import info_document

    spec = DumpSpec(layers=_names(layers), labels=labels, weight=weight, bias=bias, predictions=predictions,
                    offsets=offsets, allow_incomplete=allow_incomplete, describe_only=True)
    if isinstance(paths, (str, Path)):
        return info_document(paths, spec, listing_ok=not layers)
    return document_header() | {"files": [info_document(path, spec, listing_ok=not layers) for path in paths]}


def extract(sources, output, *, layers=None, labels=None, offsets=None, allow_incomplete=False, tokens="all",
            rows=None, classes=(), sample=None, seed=0, stratify=False, dtype=None, compression=None,
            append=False) -> dict:
    """Derive the dump ``output`` from activations in any format (`actgeom extract`): select,
    subsample, pool, convert; written atomically. ``rows=(start, stop)`` (stop None: to the end),
    ``classes=(0, 3, 7)``; the other keywords are the command's options. Returns what was written:
    output, n_rows_written, n_rows, n_candidates, resumed_after, layers, dtype, level, overflow_to_inf."""
    from actgeom.core.dump.sources import open_source
    from actgeom.core.extract import Selection, extract_dump

    selection = Selection(rows=None if rows is None else tuple(rows), classes=tuple(classes), sample=sample, seed=seed,
                          stratify=stratify, tokens=tokens, dtype=dtype, compression=compression)
    spec = DumpSpec(layers=_names(layers), labels=labels, offsets=offsets, allow_incomplete=allow_incomplete)
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    with ExitStack() as stack:
        opened = [stack.enter_context(open_source(path, spec)) for path in sources]
        return extract_dump(opened, output, selection, append=append)


class PartialStatistics:
    """Statistics of one pass over rows of a dump (:func:`stats`) or of merged shards (:func:`merge`):
    ``layers`` {name: LayerStats}, ``meta`` where they come from (dumps, fingerprint, rows, pass
    options). ``save(path)`` writes the file that ``--stats`` and ``merge`` read; ``to_dict()`` is
    the document the command prints (per layer: rows read, dropped, unlabelled, classes, variances)."""

    def __init__(self, layers: dict[str, LayerStats], meta: dict, inputs=()):
        self.layers, self.meta, self.inputs = layers, meta, list(inputs)

    def save(self, path: str | Path) -> None:
        """Write them (an .npz) by the output rules: atomically, never over one of their inputs."""
        from actgeom.core.state.partial import save_partial

        save_partial(path, self.layers, self.meta, inputs=self.inputs, option="save_stats")

    def to_dict(self) -> dict:
        from actgeom.core.state.summary import pass_summary

        return document_header() | {**self.meta,
                "layers": [pass_summary(layer_stats) for layer_stats in self.layers.values()]}

    def __repr__(self) -> str:
        rows = ", ".join(f"{a}:{b}" for a, b in self.meta["rows"])
        return f"<actgeom PartialStatistics: {len(self.layers)} layer(s), rows {rows} of {', '.join(self.meta['dumps'])}>"


# The families whose `--stats` runs `stats` serves; without ``families``: collapse and rank (rank
# without its sample unless ``subsample``), what `actgeom stats` kept before it asked the families.
STATS_FAMILIES = ("collapse", "rank", "entropy", "neurons", "probe")
DEFAULT_FAMILIES = ("collapse", "rank")


def stats_families(families=None, *, also=(), subsample=None, seed=0, threshold=0.0, entropy_alpha=None) -> dict:
    """{family: options} of the runs a statistics file is to serve. ``families``: names (a comma
    string or a list) or {name: options or keywords}; the shared keywords fill what a family's own
    keywords leave unsaid: ``subsample`` and ``seed`` (rank's and entropy's sample; probe's split
    seed), ``threshold`` (entropy's and neurons' firing threshold), ``entropy_alpha`` (entropy's
    Rényi order; it adds entropy when not named); ``also``: names added. ``subsample`` None: each
    family's own default, but no sample for rank when ``families`` is None (as `stats` always did)."""
    from actgeom.core.analysis import family_options

    chosen = _chosen(DEFAULT_FAMILIES if families is None else families)
    for name in (*also, *(["entropy"] if entropy_alpha is not None else [])):
        chosen.setdefault(name, None)
    unknown = [name for name in chosen if name not in STATS_FAMILIES]
    if unknown:
        raise OptionError("families", unknown[0], f"is not one of {', '.join(STATS_FAMILIES)}")
    shared = {"subsample": 0 if subsample is None and families is None else subsample, "seed": seed,
              "threshold": threshold, "alpha": entropy_alpha}
    made = {}
    for name, given in chosen.items():
        if given is not None and not isinstance(given, dict):
            made[name] = given  # an options object: as given
            continue
        fields = family_options(name).__dataclass_fields__
        made[name] = family_options(name, {key: value for key, value in shared.items() if key in fields} | (given or {}))
    return made


def _chosen(families) -> dict:
    """{name: options or None} from a comma string, a list of names or a dict."""
    if isinstance(families, str):
        families = [name.strip() for name in families.split(",") if name.strip()]
    return dict(families) if isinstance(families, dict) else dict.fromkeys(families)


def partial_statistics(path, spec: DumpSpec, options: PassOptions, families: dict, *, threshold: float = 0.0,
                       every_logvar: bool = False, progress: Progress | None = None) -> PartialStatistics:
    """One pass per layer keeping the union of what the ``families`` {name: options} need for this
    dump (core/analysis.py specs_for), so that their `--stats` runs find it, and the unit activity
    above ``threshold`` that the summary counts (units ever active). ``every_logvar``: also Σ exp(x)
    of every layer, what the deprecated `stats --neurons` kept for any `neurons --logvar`."""
    from actgeom.core.analysis import facts_of, specs_for
    from actgeom.core.state.accumulators import UnitMomentsSpec, UnitsSpec, union
    from actgeom.core.state.groups import check_groups
    from actgeom.core.state.partial import provenance

    with Dump(path, spec) as opened:
        specs = specs_for(families, facts_of(opened))
        if "units" not in specs or not specs["units"].activity:  # the summary counts the units ever active
            specs = union([*specs.values(), UnitsSpec(threshold=threshold)])
        if every_logvar:
            specs = union([*specs.values(), UnitMomentsSpec(exp_sums=True)])
        if options.grouping is not None:
            check_groups(opened, specs, options)
        found = accumulate(opened, specs=specs, options=options, progress=progress)
        meta = provenance(opened, options) | {"options": options_record(options)}
    return PartialStatistics(found, meta, inputs=[path])


def stats(path, *, layers=None, labels=None, weight=None, bias=None, predictions=None, offsets=None,
          allow_incomplete=False, nonfinite="error", tokens="all", products="float64", rows=None, row_offset=0,
          families=None, subsample=None, seed=0, threshold=0.0, entropy_alpha=None, neurons=False, ci_groups=0,
          ci_seed=0, save_stats=None, progress: Progress | None = None) -> PartialStatistics:
    """Partial statistics of one dump, or of its rows ``rows=(start, stop)`` (one shard of a job
    array), keeping what the ``families`` need (see :func:`stats_families`; default collapse and
    rank) so that their ``stats=`` runs find it; ``row_offset``: the global row number of this file's
    first row when it is one shard file of a larger dump; ``ci_groups`` G > 0: kept per jackknife
    group (hashed with ``ci_seed``), so that ``stats=`` serves ``ci=True`` with the same G and seed.
    ``neurons=True`` (deprecated: name "neurons" in ``families``) also keeps Σ exp(x) for any
    ``logvar``. ``save_stats``: also written there (checked before the pass)."""
    if neurons:
        warnings.warn("stats(neurons=True) is deprecated: name 'neurons' in families", DeprecationWarning, stacklevel=2)
    check_outputs({"save_stats": save_stats}, [path])
    chosen = stats_families(families, also=("neurons",) if neurons else (), subsample=subsample, seed=seed,
                            threshold=threshold, entropy_alpha=entropy_alpha)
    spec = DumpSpec(layers=_names(layers), labels=labels, weight=weight, bias=bias, predictions=predictions,
                    offsets=offsets, allow_incomplete=allow_incomplete)
    options = PassOptions(nonfinite=nonfinite, tokens=tokens, products=products,
                          row_range=None if rows is None else tuple(rows), row_offset=row_offset, ci_groups=ci_groups,
                          ci_seed=ci_seed)
    found = partial_statistics(path, spec, options, chosen, threshold=threshold, every_logvar=neurons, progress=progress)
    if save_stats is not None:
        found.save(save_stats)
    return found


def merge(parts, *, save_stats=None) -> PartialStatistics:
    """Merge partial statistics of disjoint rows of one dump (`actgeom merge`): files written by
    `actgeom stats --save-stats` or :meth:`PartialStatistics.save`, or :class:`PartialStatistics`
    objects; refused, naming both, when they describe other dumps, overlap or differ in pass options."""
    from actgeom.core.state.partial import load_partial, merge_partials

    files = [part for part in parts if not isinstance(part, PartialStatistics)]
    check_outputs({"save_stats": save_stats}, files)
    loaded = [(f"part {i + 1} (in memory)", part.layers, part.meta) if isinstance(part, PartialStatistics)
              else (str(part), *load_partial(part)) for i, part in enumerate(parts)]
    merged, meta = merge_partials(loaded)
    meta["parts"] = [name for name, _, _ in loaded]
    found = PartialStatistics(merged, meta, inputs=files)
    if save_stats is not None:
        found.save(save_stats)
    return found
