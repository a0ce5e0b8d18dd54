"""The orchestration every command shares: the families, what a dump offers them (facts), the
statistics they need (specs), one pass per layer, each layer's context and second-pass consumers,
the file records and the document (:func:`run`).

core/api.py is the public face over this module; the backends (core/backends/) import this module,
never the api, so the floors stay acyclic: api → backends → analysis → families → metrics.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core import baseline as baselines
from actgeom.core.base import stages
from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.outputs import atomic_output
from actgeom.core.base.registry import Metric
from actgeom.core.base.result import Result, document_header, nonfinite_notes
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.families import collapse as collapse_family
from actgeom.core.families import entropy as entropy_family
from actgeom.core.families import neurons as neurons_family
from actgeom.core.families import ood as ood_family
from actgeom.core.families import probe as probe_family
from actgeom.core.families import rank as rank_family
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.inference import intervals
from actgeom.core.metrics import compare as compare_metrics
from actgeom.core.metrics import uncertainty
from actgeom.core.metrics.collapse import resolve_options as collapse_options
from actgeom.core.metrics.spectrum import resolve_options as rank_options
from actgeom.core.nulls import null_specs, nulls
from actgeom.core.state.accumulators import Spec, union
from actgeom.core.state.engine import LayerStats, PassOptions, Progress, accumulate, options_record, second_pass
from actgeom.core.state.groups import check_groups, sampling_unit
from actgeom.core.state.partial import check_provenance, load_partial

FAMILIES: dict[str, Family] = {family.name: family for family in
                               (collapse_family.FAMILY, rank_family.FAMILY, entropy_family.FAMILY,
                                neurons_family.FAMILY, probe_family.FAMILY, ood_family.FAMILY)}
# Every registry of metrics by family name: the single-dump families' and compare's, whose joint
# pass over aligned rows of two files is no Family (core/compare/): metrics_info, the docs, the report.
REGISTRIES: dict[str, dict[str, Metric]] = {name: family.metrics for name, family in FAMILIES.items()} | {
    "compare": compare_metrics.REGISTRY}
OPTIONS: dict[str, type] = {name: family.options_class for name, family in FAMILIES.items()} | {
    "compare": compare_metrics.CompareOptions}  # every family's options class, compare's too (family_options)


def metrics_info(families: Iterable[str]) -> dict:
    """Every metric of the families (or compare): family, ideal, range, direction, invariances, source."""
    return {name: metric.info() for family in families for name, metric in REGISTRIES[family].items()}


def facts_of(dump: Dump) -> DumpFacts:
    return DumpFacts(token_level=dump.offsets_path is not None, has_labels=dump.labels_path is not None,
                     has_predictions=dump.predictions_path is not None, row_vectors=dump.row_vector_names())


def specs_for(families: dict, facts: DumpFacts, pass_options: PassOptions | None = None) -> dict[str, Spec]:
    """The union of what the families need: one accumulator per statistic (with ``pass_options``
    asking for nulls, the class sums under its label permutations too)."""
    specs = union(spec for name, options in families.items() for spec in FAMILIES[name].needs(options, facts))
    return specs if pass_options is None else specs | null_specs(families, facts, pass_options)


def analyze_dump(dump: Dump, families: dict, *, pass_options: PassOptions = PassOptions(),
                 progress: Progress | None = None, precomputed: dict[str, LayerStats] | None = None,
                 details: bool = False, backend=None) -> dict:
    """The file record of one dump for the families {name: options}: one pass per layer (or the
    ``precomputed`` statistics, checked to hold what the families need), then one shared second
    pass for the layers whose families need one (NC4). ``backend``: who runs the passes (None: this
    process; a core.backends executor: tasks over row ranges, e.g. on a Dask cluster)."""
    specs = specs_for(families, facts_of(dump), pass_options)
    if pass_options.grouping is not None:
        check_groups(dump, specs, pass_options)
    if precomputed is not None:
        stats = _checked(dump, precomputed, specs)
    elif backend is not None:
        stats = backend.accumulate(dump, specs, pass_options, progress)
    else:
        stats = accumulate(dump, specs=specs, options=pass_options, progress=progress)
    classifier = dump.classifier()
    layers = []
    records: dict[str, list[LayerRecord]] = {name: [] for name in families}
    for layer in dump.layers:
        ctx = layer_context(dump, layer.name, stats, pass_options, classifier, details=details)
        consumers = second_pass_consumers(ctx, families)
        own = {name: consumer for name, consumer in consumers.items() if getattr(consumer, "own_dump", True)}
        if own and backend is not None:
            backend.second_pass(dump, layer, families, stats[layer.name], own, pass_options, progress)
        elif own:
            second_pass(dump, layer, list(own.values()), pass_options, progress)
        for consumer in consumers.values():
            for label, path in getattr(consumer, "dumps", {}).items():
                other_dump_pass(path, layer.name, layer.n_units, consumer.reading(label), pass_options, progress)
        ctx.second = consumers
        stage = getattr(progress, "stage", None)  # long steps after the pass (DSE, pairwise tiles), announced
        with stages.listening(None if stage is None else functools.partial(stage, layer.name)):
            layers.append(layer_entry(ctx, families, records))
    entry = {"file": str(dump.path), "checkpoint": dump.attrs.get("checkpoint"), "step": dump.attrs.get("step"),
             "model": dump.attrs.get("model"), "layers": layers}
    if pass_options.grouping is not None:
        entry["sampling_unit"] = sampling_unit(dump)
    for name, options in families.items():
        if FAMILIES[name].file_record is not None:
            entry |= FAMILIES[name].file_record(records[name], options)
    if "entropy" in families:
        layers += [a | {"nonfinite": nonfinite_notes(a["metrics"])} for a in entropy_family.attention(dump, families["entropy"])]
    return entry


def layer_context(dump: Dump, name: str, stats: dict[str, LayerStats], pass_options: PassOptions, classifier,
                  details: bool = False) -> LayerContext:
    """What the families see of one layer: its statistics, the dump, the classifier when it reads this layer."""
    layer = dump.layer(name)
    ctx = LayerContext(name=layer.name, n_units=layer.n_units, dtype=layer.logical_dtype, attrs=layer.attrs,
                       stats=stats[layer.name], pass_options=pass_options, dump=dump, details=details, layers=stats)
    if classifier is not None and dump.classifier_layer == layer.name:
        ctx.classifier = classifier
    elif classifier is not None:
        reads = f"layer '{dump.classifier_layer}'" if dump.classifier_layer else "a layer not selected by --layers"
        ctx.classifier_problem = f"the classifier ({dump.weight_path}) reads {reads}, not this one"
    return ctx


def other_dump_pass(path, name: str, n_units: int, consumer, pass_options: PassOptions, progress: Progress | None) -> None:
    """One pass over layer ``name`` of another dump (e.g. an OOD set scored by a model fitted on this
    one), its rows selected as this pass selects rows (--tokens, --nonfinite), fed to ``consumer``."""
    with Dump(path, DumpSpec(layers=(name,), allow_incomplete=False)) as other:
        layer = other.layer(name)
        if layer.n_units != n_units:
            raise InvalidInputError(f"layer '{name}' has {layer.n_units} units in {path} but {n_units} in the dump "
                                    "it is compared with")
        second_pass(other, layer, [consumer], PassOptions(nonfinite=pass_options.nonfinite, tokens=pass_options.tokens),
                    progress)


def second_pass_consumers(ctx: LayerContext, families: dict) -> dict:
    """The consumers of a layer's shared second pass, by family (empty: no second pass)."""
    consumers = {}
    for name, options in families.items():
        if FAMILIES[name].second_pass is not None:
            consumer = FAMILIES[name].second_pass(ctx, options)
            if consumer is not None:
                consumers[name] = consumer
    return consumers


def layer_entry(ctx: LayerContext, families: dict, records: dict) -> dict:
    """One layer's entry: what every family found, in one metrics/unavailable/notes block, and
    each family's own fields under its name."""
    stats = ctx.stats
    entry = {"layer": ctx.name, "kind": "layer", "n_rows": stats.n_rows, "n_units": ctx.n_units, "dtype": ctx.dtype,
             "n_nonfinite_dropped": stats.n_nonfinite, "metrics": {}, "unavailable": {}, "notes": []}
    details, made = {}, {}
    for name, options in families.items():
        record = made[name] = FAMILIES[name].layer(ctx, options)
        records[name].append(record)
        entry["metrics"] |= record.metrics
        entry["unavailable"] |= record.unavailable
        entry["notes"] += record.notes
        entry[name] = record.fields
        details |= record.details
    entry["nonfinite"] = nonfinite_notes(entry["metrics"])
    if ctx.stats.groups is not None:
        entry["intervals"], entry["intervals_unavailable"], entry["replicates"] = intervals(
            ctx, {name: (FAMILIES[name], options) for name, options in families.items()}, made)
    if ctx.pass_options.null:
        entry["nulls"], entry["nulls_unavailable"] = nulls(
            ctx, {name: (FAMILIES[name], options) for name, options in families.items()}, made)
    if ctx.details:
        entry["details"] = details
    return entry


def _checked(dump: Dump, precomputed: dict[str, LayerStats], specs: dict[str, Spec]) -> dict[str, LayerStats]:
    """Statistics from a file, refused unless they hold every layer with what the families need."""
    missing = [layer.name for layer in dump.layers if layer.name not in precomputed]
    if missing:
        raise InvalidInputError(f"the statistics file has no layer '{missing[0]}' of {dump.path}; "
                                f"it has: {', '.join(precomputed) or '(none)'}")
    chosen = {}
    for layer in dump.layers:
        stats = precomputed[layer.name]
        if stats.n_units != layer.n_units:
            raise InvalidInputError(f"layer '{layer.name}' has {layer.n_units} units in {dump.path} but "
                                    f"{stats.n_units} in the statistics file")
        for slot, spec in specs.items():
            have = stats.specs.get(slot)
            if have is None or not have.covers(spec):
                kept = "no such statistic" if have is None else have.describe()
                raise InvalidInputError(f"the statistics of layer '{layer.name}' hold {kept}; this analysis needs "
                                        f"{spec.describe()}: make them with `actgeom stats` and matching options")
        chosen[layer.name] = stats
    return chosen


def run(command: str, paths: Iterable, families: dict, *, spec: DumpSpec = DumpSpec(),
        pass_options: PassOptions = PassOptions(), stats: str | Path | None = None, progress: Progress | None = None,
        details: bool = False, cache: str | Path | None = None, partial_ok: bool = False, backend=None,
        baseline=None, baseline_memo: dict | None = None) -> Result:
    """Analyse every dump of ``paths`` with ``families`` → the :class:`Result` every command renders.

    ``cache``: a directory keeping each file's results under a key made of the file's identity
    (absolute path, size, modification time, a hash of its attributes, layer shapes and dtypes)
    and every option; a run reads only the dumps whose key has no valid entry.

    ``backend``: None (this process) or a backend opened by ``core.backends.open_backend``.

    ``baseline``: a dump (the baseline of every file) or a list (one per file, in order) analysed
    with the same families and options and compared layer by layer (core/baseline.py);
    ``baseline_memo``: {resolved path: file record} kept by a caller across runs of the same options."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    pairs = baselines.paired(paths, baseline)
    if pairs is not None:
        baselines.check_layers(paths, pairs, spec)
    precomputed, provenance, used = None, None, None
    if stats is not None:
        if len(paths) != 1:
            raise OptionError("stats", None, f"describes one dump; {len(paths)} were given")
        precomputed, provenance = load_partial(stats)
    started = time.perf_counter()
    files = []
    cached = {}  # path → its cache entry, when read while queueing the tasks
    if backend is not None and precomputed is None:  # every file's tasks queued before the first is awaited
        for path in paths:
            with Dump(path, spec) as dump:
                key = None if cache is None else _cache_key(dump, spec, families, pass_options, details)
                cached[path] = None if key is None else _cached(Path(cache), key)
                if cached[path] is None:
                    backend.submit(dump, specs_for(families, facts_of(dump), pass_options), pass_options)
    for path in paths:
        if cached.get(path) is not None:  # a cache hit: no need to open the file again
            files.append(cached[path])
            continue
        with Dump(path, spec) as dump:
            if provenance is not None:
                used = check_provenance(stats, provenance, dump, pass_options, partial_ok=partial_ok,
                                        by_label=set(families) != {"rank"})
            files.append(_analysed(dump, families, spec=spec, pass_options=pass_options, progress=progress,
                                   precomputed=precomputed, details=details, cache=cache, backend=backend))
    if pairs is not None:
        memo = {} if baseline_memo is None else baseline_memo
        if stats is None:  # a baseline that is also an analysed file: its record (not when made from a statistics file)
            for path, entry in zip(paths, files):
                memo.setdefault(path.resolve(), entry)
        analyse = functools.partial(_analysed_path, families=families, spec=spec, pass_options=pass_options,
                                    progress=progress, details=details, cache=cache, backend=backend)
        groups = None if pass_options.grouping is None else pass_options.grouping.groups
        diagnostic = frozenset(name for family in families for name, metric in REGISTRIES[family].items()
                               if metric.diagnostic)
        baselines.attach(files, pairs, analyse, groups, memo, diagnostic, spec if stats is None else None)
    files = [without_replicates(file) for file in files]
    document = document_header(command, started=started, options=families,
                               pass_record=options_record(pass_options) | {"backend": backend_record(backend)})
    used_baselines = None if pairs is None else list(dict.fromkeys(str(p) for p in pairs))  # each once, in order
    inference = inference_record(pass_options) | {"baseline": used_baselines}
    document |= {"statistics": used, "inference": inference, "metrics_info": metrics_info(families), "files": files}
    return Result(document)


def without_replicates(file: dict) -> dict:
    """A file record without its layers' leave-one-group-out values (``replicates``: kept in the
    records a baseline's paired difference reads, :func:`layer_entry`, not in the document)."""
    if not any("replicates" in layer for layer in file["layers"]):
        return file
    return file | {"layers": [{key: value for key, value in layer.items() if key != "replicates"}
                              for layer in file["layers"]]}


def _analysed(dump: Dump, families: dict, *, spec: DumpSpec, pass_options: PassOptions, progress: Progress | None,
              details: bool, cache: str | Path | None, backend, precomputed: dict | None = None) -> dict:
    """The file record of ``dump``: from the ``cache`` directory when it holds a valid one, else
    analysed (:func:`analyze_dump`) and stored there."""
    key = None if cache is None else _cache_key(dump, spec, families, pass_options, details)
    entry = None if key is None else _cached(Path(cache), key)
    if entry is None:
        entry = analyze_dump(dump, families, pass_options=pass_options, progress=progress, precomputed=precomputed,
                             details=details, backend=backend)
        if key is not None:
            _store(Path(cache), key, entry)
    return entry


def _analysed_path(path: Path, families: dict, *, spec: DumpSpec, **options) -> dict:
    """The file record of the dump at ``path`` (a baseline), as :func:`_analysed`."""
    with Dump(path, spec) as dump:
        return _analysed(dump, families, spec=spec, **options)


def directions_across_files(document: dict, *, keep: bool, other_details: bool = False) -> dict:
    """The document of a probe run made with ``details``, given ``direction_cosines_across_files``
    (per layer, the cosine between the concept directions of consecutive files); each layer's
    direction kept, as a list, only when ``keep``; its other details only with ``other_details``
    (the report's figures read them)."""
    document["direction_cosines_across_files"] = probe_family.across_files(document["files"])
    for file in document["files"]:
        for layer in file["layers"]:
            kept = layer.pop("details", {})
            details = {key: value for key, value in kept.items() if key != "direction"} if other_details else {}
            if keep and kept.get("direction") is not None:
                details["direction"] = np.asarray(kept["direction"]).tolist()
            if details or other_details:
                layer["details"] = details
    return document


def inference_record(pass_options: PassOptions) -> dict:
    """How the document's intervals and nulls were made (``ci``, ``null`` None: none)."""
    grouping = pass_options.grouping
    return uncertainty.inference_record(0 if grouping is None else grouping.groups, 0 if grouping is None else grouping.seed,
                                        pass_options.null, pass_options.null_seed)


def backend_record(executor) -> dict:
    """Who ran the passes, recorded with the pass options: {"name": "local"}, or the Dask backend's
    scheduler address (None: a cluster started on this machine) and its number of workers."""
    if executor is None:
        return {"name": "local"}
    return {"name": executor.options.name, "scheduler": executor.options.scheduler, "workers": executor.n_workers}


def _cache_key(dump: Dump, spec: DumpSpec, families: dict, pass_options: PassOptions, details: bool) -> str:
    status = os.stat(dump.path)
    identity = {"path": str(Path(dump.path).resolve()), "size": status.st_size, "mtime_ns": status.st_mtime_ns,
                "attrs": dump.attrs,
                "layers": [(layer.path, layer.n_rows, layer.n_units, layer.storage_dtype) for layer in dump.layers],
                "spec": asdict(spec), "families": {name: asdict(o) for name, o in families.items()},
                "pass": options_record(pass_options), "details": details, "version": __version__}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _cached(directory: Path, key: str) -> dict | None:
    """The cached file record under ``key``, or None when absent, stale or unreadable."""
    try:
        held = json.loads((directory / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return held.get("entry") if isinstance(held, dict) and held.get("key") == key else None


def _store(directory: Path, key: str, entry: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_output(directory / f"{key}.json", text=True, option="cache") as handle:
        json.dump({"key": key, "entry": entry}, handle, default=_plain)


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def family_options(name: str, given=None):
    """A family's options object from None (defaults), a dict of keywords, or an options object."""
    if name not in OPTIONS:
        raise OptionError("families", name, f"is not one of {', '.join(OPTIONS)}")
    if given is None or isinstance(given, dict):
        given = {key: value for key, value in (given or {}).items() if value is not None}
        if name in ("collapse", "rank"):  # presets: explicit options win over them
            resolve = collapse_options if name == "collapse" else rank_options
            return resolve(given.pop("preset", None), **_known(OPTIONS[name], name, given))
        return OPTIONS[name](**_known(OPTIONS[name], name, given))
    return given


def _known(options_class, family: str, given: dict) -> dict:
    """``given``, refused with one line when a keyword is not an option of the family."""
    fields = [name for name in options_class.__dataclass_fields__ if name != "preset"]
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise OptionError(unknown[0], given[unknown[0]], f"is not a {family} option; they are: {', '.join(fields)}")
    return given
