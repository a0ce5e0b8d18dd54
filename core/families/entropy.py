"""The entropy family: unit activity, Σ uuᵀ (or per-sequence entropies) and a seeded sample in
one pass; dataset entropy, DSE/DSMI, SAE effective features, neuron activity; attention entropy."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.errors import OptionError
from actgeom.core.base.registry import evaluate
from actgeom.core.dump.validate import memory_bytes as machine_memory_bytes
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord, threshold_problem
from actgeom.core.metrics.diffusion import KERNEL_NEAR_IDENTITY
from actgeom.core.metrics.entropy import (
    ATTENTION_METRICS,
    LAYER_METRICS,
    REGISTRY,
    EntropyInputs,
    EntropyOptions,
)
from actgeom.core.state.accumulators import DirectionsSpec, SampleSpec, SequencesSpec, UnitsSpec

KERNEL_COPIES = 2  # DSE's n × n kernel and the eigensolver's copy of it (DSMI's per-class kernels are smaller)
# DSE/DSMI intervals re-solve the n × n kernels once per jackknife group: feasible up to this many sample
# rows (DSE + DSMI at 1 000 rows: ~0.6 s on a loaded 2-core machine, × G = 20 per layer; at 1 797 rows
# 2.6 s, × 20 × 9 layer-checkpoints of sample_data made `report --ci` take many minutes; 10 000 rows ~2 min each).
INTERVAL_KERNEL_ROWS = 1_000


def needs(options: EntropyOptions, facts: DumpFacts) -> list:
    rows = SequencesSpec(alpha=options.alpha) if facts.token_level else DirectionsSpec()
    return [UnitsSpec(threshold=options.threshold or 0.0), SampleSpec(size=options.subsample, seed=options.seed), rows]


def _check_kernel_memory(n_rows: int, subsample: int) -> None:
    """Refuse a sample whose kernels (KERNEL_COPIES × 8 bytes × n²) exceed this machine's memory."""
    need, have = KERNEL_COPIES * 8 * n_rows**2, machine_memory_bytes()
    if need > have:
        raise OptionError("subsample", subsample, f"makes DSE/DSMI kernels of {n_rows} × {n_rows} rows: {_size(need)} "
                          f"({KERNEL_COPIES} × 8 bytes × n²), more than this machine's {_size(have)}; give a smaller --subsample")


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.3g} GiB" if n_bytes >= 2**30 else f"{n_bytes:.3g} bytes"


def layer(ctx: LayerContext, options: EntropyOptions) -> LayerRecord:
    units = ctx.stats.get("units")
    sequences = ctx.stats.get("sequences")
    results = None if sequences is None else sequences.results()
    directions = ctx.stats.get("directions")
    _, labels, sample = ctx.stats.get("sample").sample(options.subsample)
    _check_kernel_memory(sample.shape[0], options.subsample)
    inputs = EntropyInputs(units=units, sample=sample.astype(np.float64), sample_labels=labels,
                           direction_scatter=None if directions is None else directions.matrix(),
                           sequences=results, layer_width=options.layer_width)
    missing = {}
    if results is None:
        missing["offsets"] = "needs sequence offsets (--offsets): a token-level dump"
    if ctx.dump is not None and ctx.dump.labels_path is None:
        missing["labels"] = "needs labels (--labels)"
    if options.layer_width is None:
        missing["layer_width"] = "needs the width of the layer the SAE encodes (--layer-width)"
    if no_threshold := threshold_problem(ctx, options.threshold):
        missing["threshold"] = no_threshold
    if ctx.replicate and sample.shape[0] > INTERVAL_KERNEL_ROWS:
        missing["sample"] = (f"an interval re-solves the {sample.shape[0]}-row DSE kernel once per jackknife group, "
                             f"too slow; --subsample {INTERVAL_KERNEL_ROWS} (or fewer) makes it feasible")
    values, unavailable = evaluate(LAYER_METRICS, inputs, options, missing)
    notes = []
    if values.get("dse_offdiag_fraction", 1.0) < KERNEL_NEAR_IDENTITY:
        notes.append(f"the DSE kernel is close to the identity ({values['dse_offdiag_fraction']:.2g} of its mass "
                     f"off the diagonal): σ = {options.sigma} is small next to the median distance "
                     f"{values['dse_median_distance']:.3g}, so DSE ≈ log₂ N")
    fields = {"threshold": None if no_threshold else units.threshold, "sample_rows": int(sample.shape[0]),
              "sample_seed": options.seed}
    if results is not None:
        fields |= {k: v for k, v in results.items() if k not in ("dataset_entropy", "prompt_entropy")}
    details = {}
    if ctx.details:
        details = {"firing_rate": (units.n_active / max(units.n_rows, 1)).tolist() if "threshold" not in missing else None}
    return LayerRecord(metrics=values, unavailable=unavailable, notes=notes, fields=fields, details=details)


def attention(dump, options: EntropyOptions) -> list[dict]:
    """One entry per attention dataset of the dump (kind "attention")."""
    entries = []
    for path in dump.attention_paths:
        values, unavailable = evaluate(ATTENTION_METRICS, dump.attention_blocks(path), options, {})
        entries.append({"layer": path, "kind": "attention", "n_rows": None, "n_units": None, "dtype": None,
                        "metrics": values, "unavailable": unavailable, "notes": [], "details": {}})
    return entries


FAMILY = Family(name="entropy", options_class=EntropyOptions, metrics=REGISTRY, needs=needs, layer=layer)
