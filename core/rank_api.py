"""`rank` as a library call: one pass per layer, the spectra, every METRICS.md §2 metric."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.engine import LayerStats, PassOptions, Progress
from actgeom.core.engine import options_record as pass_record
from actgeom.core.intrinsic import distinct_rows, mle, nearest_distances, twonn
from actgeom.core.partial import statistics_for
from actgeom.core.spectrum import STORAGE_RTOL, RankOptions, Spectrum, layer_spectra, mean_cosine, spectral_metrics
from actgeom.core.summary import nonfinite_notes


def rank_dump(dump: str | Path | Dump, spec: DumpSpec | None = None, options: RankOptions = RankOptions(),
              pass_options: PassOptions = PassOptions(), progress: Progress | None = None,
              precomputed: dict | None = None) -> tuple[dict, dict]:
    """Every rank metric for every selected layer → (JSON-ready report, spectra by layer).

    ``precomputed``: statistics by layer (``load_partial(...)[0]``, e.g. merged shards, with a
    sample for TwoNN/MLE) to use instead of a pass."""
    if not isinstance(dump, Dump):
        with Dump(dump, spec) as opened:
            return rank_dump(opened, options=options, pass_options=pass_options, progress=progress,
                             precomputed=precomputed)
    pass_options = replace(pass_options, reservoir=options.subsample, seed=options.seed, use_labels=False,
                           units="directions")
    stats = statistics_for(dump, precomputed, options=pass_options, progress=progress)
    layers, spectra = [], {}
    for layer in dump.layers:
        report, spectra[layer.name] = layer_report(stats[layer.name], options)
        layers.append(report)
    return {"tool": "actgeom", "version": __version__, "command": "rank", "file": str(dump.path),
            "checkpoint": dump.attrs.get("checkpoint"), "step": dump.attrs.get("step"),
            "options": asdict(options), "pass": pass_record(pass_options), "layers": layers}, spectra


def layer_report(stats: LayerStats, options: RankOptions) -> tuple[dict, dict[str, Spectrum]]:
    """The rank metrics of one layer's statistics, and its spectra."""
    rtol = options.rtol if options.rtol is not None else STORAGE_RTOL[stats.dtype]
    spectra = layer_spectra(stats.classes.finalize(), rtol=rtol, max_eigs=options.max_eigs)
    values, missing = spectral_metrics(spectra, options)
    units = stats.units
    values["mean_cosine"] = mean_cosine(units.unit_vector_sum, units.n_rows - units.n_zero_rows)
    _, _, sample = stats.reservoir.sample()
    rows, n_duplicates = distinct_rows(sample.astype(np.float64))
    if rows.shape[0] > options.mle_k:
        distances = nearest_distances(rows, options.mle_k)
        values["twonn_id"], values["mle_id"] = twonn(distances[:, :2]), mle(distances, k=options.mle_k)
    else:
        missing["twonn_id"] = missing["mle_id"] = (f"{rows.shape[0]} distinct sampled rows; the nearest-neighbour "
                                                   f"estimates need more than k = {options.mle_k}")
    chosen = spectra["centred" if options.center else "raw"]
    return {
        "layer": stats.layer, "n_rows": stats.n_rows, "n_units": stats.n_units, "dtype": stats.dtype,
        "n_nonfinite_dropped": stats.n_nonfinite, "spectrum": "covariance (centred)" if options.center else
        "second moment (uncentred)", "n_eigenvalues": int(chosen.eigenvalues.size),
        "noise_rtol": rtol, "noise_floor": chosen.floor,
        "n_below_noise_floor": int((chosen.eigenvalues <= chosen.floor).sum()),
        "sample_rows": int(sample.shape[0]), "sample_duplicates_dropped": n_duplicates, "sample_seed": options.seed,
        "metrics": values, "nonfinite": nonfinite_notes(values),
        "unavailable": missing,
    }, spectra
