"""`actgeom report`: rendering (page, figures, summary, results) of one report document.

The document is a plain JSON-ready dict made by ``data.gather`` (every family of each file in
the engine's one pass, as ``actgeom.core.api.run``); rendering depends only on its shape::

    {"tool", "version", "command": "report", "created" (ISO date),
     "elapsed_s" (from the command's start to the page assembled), "drawing_s" (the figures' part),
     "options": {family: {...}} for the families run (collapse, rank, entropy, neurons, probe; "ood" with --ood),
     "pass": {...},
     "metrics_info": {name: {"family", "ideal", "range", "direction", "source", "log_scale"}},
     "files": [{"file", "label" (as every command labels the file), "checkpoint", "step", "model",
                "separation_law": {"rho", "r2", "n_layers"} | None,
                "layers": [{"layer", "kind": "layer" | "attention", "n_rows", "n_units", "dtype",
                            "metrics": {name: value}, "unavailable": {name: reason},
                            "nonfinite": {name: "inf" | "nan"}, "notes": [str],
                            "details": {"spectrum", "spectrum_raw", "noise_floor", "noise_floor_raw", "fit_range",
                                        "firing_rate", "class_ids", "class_mean_cosine", "duality_cosine", ...},
                            "neurons": {"score", "units": {score: [per unit]}, "top_units", ...},
                            "probe": {"n_train", "n_test", ...},
                            "intervals": {name: {"se", "ci_low", "ci_high", "bias"}}, "intervals_unavailable",
                            "baseline": {name: {"baseline", "difference", ...}}, "baseline_unavailable"}],
                "sampling_unit": "row" | "sequence", "baseline_file", "baseline_paired" (with --baseline),
                "ood" (with --ood, cli/report/ood.py): {"set", "test", "fit_split",
                        "layers": [{"layer", "n_fit_rows", "n_test_rows", "n_ood_rows", "metrics", "unavailable"}],
                        "histograms": {score: {"layer", "edges", "id", "ood", "n_id", "n_ood"}}}}],
     "inference": {"ci": {"method", "groups", "seed", "level"} | None, "baseline": [paths] | None},
     "direction_cosines_across_files": [{"layer", "files", "cosine"}]}  (with probe)

Files are in checkpoint order. Rendering reads ``options.entropy.subsample``/``seed`` (the DSE
sample stated on the page), ``options.entropy.normalized`` (the attention colour-bar label),
``options.rank.center`` (which spectrum to draw) and ``options.neurons.score``/``cutoff``; a
figure whose family is not in ``options`` is absent, and says so. With ``inference.ci`` the
over-training and across-depth figures draw error bars and the tables show value ± half-width;
with baselines, a grey line per metric, a band where the baseline has its own interval
(``uncertainty.py``). With ``options.ood`` the page has an OOD section (``figures_ood.py``, ``page_ood.py``).
"""

REPORT_SUBSAMPLE = 2_000  # DSE/DSMI cost N³: the report's default sample (the entropy command's is 10 000)
FAMILIES = ("collapse", "rank", "entropy", "neurons", "probe")  # the report's, in page order; default: all
