"""`entropy` as a library call: one pass per layer (unit activity, Σ uuᵀ, a seeded sample),
then dataset entropy, DSE/DSMI, SAE effective features, neuron activity, attention entropy."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core.dump import Dump, DumpSpec, LayerInfo
from actgeom.core.engine import LayerStats, PassOptions, Progress
from actgeom.core.engine import options_record as pass_record
from actgeom.core.entropy import (
    EntropyOptions,
    attention_entropy,
    dataset_entropy,
    diffusion_spectral_entropy,
    dsmi,
    neuron_activity,
    sae_effective_features,
)
from actgeom.core.errors import InvalidInputError
from actgeom.core.partial import statistics_for
from actgeom.core.summary import nonfinite_notes

KERNEL_NEAR_IDENTITY = 0.01  # off-diagonal share of K's mass below this: σ is small for the data, DSE ≈ log₂ N


def entropy_dump(dump: str | Path | Dump, spec: DumpSpec | None = None, options: EntropyOptions = EntropyOptions(),
                 pass_options: PassOptions = PassOptions(), progress: Progress | None = None,
                 precomputed: dict | None = None) -> dict:
    """Every entropy metric for every selected layer and attention dataset of one dump.

    ``precomputed``: statistics by layer (``load_partial(...)[0]``) made by `stats
    --entropy-alpha` (so they hold Σuuᵀ or the sequence entropies), used instead of a pass."""
    if not isinstance(dump, Dump):
        with Dump(dump, spec) as opened:
            return entropy_dump(opened, options=options, pass_options=pass_options, progress=progress,
                                precomputed=precomputed)
    token_level = dump.offsets_path is not None  # sequences: Skean et al.'s per-sequence conventions
    pass_options = replace(pass_options, reservoir=options.subsample, seed=options.seed, units="all",
                           class_moments=False, direction_scatter=not token_level, threshold=options.threshold or 0.0,
                           sequence_alpha=options.alpha if token_level else None)
    stats = statistics_for(dump, precomputed, options=pass_options, progress=progress)
    if precomputed is not None:
        _check_precomputed(stats, options, token_level)
    explicit = options.threshold is not None or precomputed is not None
    layers = [_layer(dump, layer, stats[layer.name], options, explicit) for layer in dump.layers]
    for path in dump.attention_paths:
        values = attention_entropy(dump.attention_blocks(path), eps=options.eps, normalized=options.normalized)
        layers.append({"layer": path, "n_rows": None, "n_units": None, "metrics": values, "unavailable": {},
                       "nonfinite": nonfinite_notes(values)})
    return {"tool": "actgeom", "version": __version__, "command": "entropy", "file": str(dump.path),
            "checkpoint": dump.attrs.get("checkpoint"), "step": dump.attrs.get("step"),
            "options": asdict(options), "pass": pass_record(pass_options), "layers": layers}


def _check_precomputed(stats: dict[str, LayerStats], options: EntropyOptions, token_level: bool) -> None:
    """Statistics from a file must hold what this dump's entropies need, made the same way."""
    for name, layer_stats in stats.items():
        if token_level and (layer_stats.sequences is None or layer_stats.sequences.alpha != options.alpha):
            raise InvalidInputError(f"the statistics of layer '{name}' hold no sequence entropies of order "
                                    f"{options.alpha}; make them with `actgeom stats --entropy-alpha {options.alpha}`")
        if not token_level and layer_stats.directions is None:
            raise InvalidInputError(f"the statistics of layer '{name}' hold no Σuuᵀ of normalised rows; make them "
                                    "with `actgeom stats --entropy-alpha 1`")
        if options.threshold is not None and options.threshold != layer_stats.units.threshold:
            raise InvalidInputError(f"the statistics of layer '{name}' count units above {layer_stats.units.threshold}, "
                                    f"not --threshold {options.threshold}")


def _layer(dump: Dump, layer: LayerInfo, stats: LayerStats, options: EntropyOptions, explicit: bool) -> dict:
    values, missing, warnings, counts = {}, {}, [], {}
    if stats.sequences is not None:
        sequences = stats.sequences.results()
        values["dataset_entropy"], values["prompt_entropy"] = sequences.pop("dataset_entropy"), sequences.pop("prompt_entropy")
        counts = sequences
    else:
        values["dataset_entropy"] = dataset_entropy(stats.directions.matrix(), alpha=options.alpha)
        missing["prompt_entropy"] = "needs sequence offsets (--offsets): a token-level dump"
    _, labels, sample = stats.reservoir.sample()
    sample = sample.astype(np.float64)
    if sample.shape[0] >= 2:
        values |= diffusion_spectral_entropy(sample, sigma=options.sigma, t=options.t)
        if values["dse_offdiag_fraction"] < KERNEL_NEAR_IDENTITY:
            warnings.append(f"the DSE kernel is close to the identity ({values['dse_offdiag_fraction']:.2g} of its mass "
                            "off the diagonal): "
                            f"σ = {options.sigma} is small next to the median distance "
                            f"{values['dse_median_distance']:.3g}, so DSE ≈ log₂ N")
        if dump.labels_path is not None:
            values["dsmi"] = dsmi(sample, labels, sigma=options.sigma, t=options.t, repeats=options.dsmi_repeats,
                                  seed=options.seed)
        else:
            missing["dsmi"] = "needs labels (--labels)"
    values |= sae_effective_features(stats.units, layer_width=options.layer_width)
    relu = str(layer.attrs.get("activation", "")).lower() == "relu"
    if not explicit and not relu:
        reason = (f"layer '{layer.name}' is not marked ReLU (attribute activation); give --threshold for "
                  "the value a unit must exceed to count as active")
        for name in ("dead_fraction", "firing_entropy"):
            missing[name] = reason
        activity = neuron_activity(stats.units, tau=options.tau)
        values |= {k: v for k, v in activity.items() if k not in missing}
    else:
        values |= neuron_activity(stats.units, tau=options.tau)
    return {"layer": layer.name, "n_rows": stats.n_rows, "n_units": layer.n_units, "dtype": layer.logical_dtype,
            "threshold": stats.units.threshold if explicit or relu else None,
            "sample_rows": int(sample.shape[0]), "sample_seed": options.seed, "warnings": warnings, **counts,
            "metrics": values, "unavailable": missing,
            "nonfinite": nonfinite_notes(values)}
