"""The rank family: total moments, Σ x/‖x‖ and a seeded sample in one pass; spectra once per layer."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.intrinsic import distinct_rows, nearest_distances
from actgeom.core.metrics.spectrum import REGISTRY, STORAGE_RTOL, RankInputs, RankOptions, layer_spectra, total_moments
from actgeom.core.state.accumulators import MomentsSpec, SampleSpec, UnitsSpec


def needs(options: RankOptions, facts: DumpFacts) -> list:
    specs = [MomentsSpec(by_class=False), UnitsSpec(activity=False)]
    return specs + ([SampleSpec(size=options.subsample, seed=options.seed)] if options.subsample else [])


def layer(ctx: LayerContext, options: RankOptions) -> LayerRecord:
    total = ctx.stats.get("moments").total
    rtol = options.rtol if options.rtol is not None else STORAGE_RTOL[ctx.dtype]
    spectra = layer_spectra(total, rtol=rtol, max_eigs=options.max_eigs)
    mean, covariance = total_moments(total)
    units = ctx.stats.get("units")
    sample, n_duplicates, distances = np.zeros((0, ctx.n_units)), 0, None
    missing = {}
    if options.subsample and ctx.stats.get("sample") is not None:
        _, _, sample = ctx.stats.get("sample").sample(options.subsample)
        rows, n_duplicates = distinct_rows(sample.astype(np.float64))
        if rows.shape[0] > options.mle_k:
            distances = nearest_distances(rows, options.mle_k)
    else:
        missing["sample"] = "no sample of rows (--subsample 0)"
    inputs = RankInputs(spectra=spectra, mean=mean, covariance_trace=float(np.trace(covariance)),
                        unit_vector_sum=units.unit_vector_sum, n_direction_rows=units.n_rows - units.n_zero_rows,
                        distances=distances)
    values, unavailable = evaluate(REGISTRY, inputs, options, missing)
    chosen = inputs.chosen(options)
    fields = {"spectrum": "covariance (centred)" if options.center else "second moment (uncentred)",
              "n_eigenvalues": int(chosen.eigenvalues.size), "noise_rtol": rtol, "noise_floor": chosen.floor,
              "n_below_noise_floor": int((chosen.eigenvalues <= chosen.floor).sum()),
              "sample_rows": int(sample.shape[0]), "sample_duplicates_dropped": n_duplicates,
              "sample_seed": options.seed}
    details = {}
    if ctx.details:
        details = {"spectrum": spectra["centred"].eigenvalues.tolist(), "spectrum_raw": spectra["raw"].eigenvalues.tolist(),
                   "noise_floor": spectra["centred"].floor, "noise_floor_raw": spectra["raw"].floor,
                   "fit_range": list(options.fit_range)}
    return LayerRecord(metrics=values, unavailable=unavailable, fields=fields, details=details)


FAMILY = Family(name="rank", options_class=RankOptions, metrics=REGISTRY, needs=needs, layer=layer)
