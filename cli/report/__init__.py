"""`actgeom report`: rendering (page, figures, summary, results) of one report document.

The document is a plain JSON-ready dict; nothing here depends on how it was made (today
``data.gather``, tomorrow the one-pass engine). Its shape::

    {"tool", "version", "command": "report", "created" (ISO date), "elapsed_s",
     "options": {"collapse": {...}, "rank": {...}, "entropy": {...}}, "pass": {...},
     "metrics_info": {name: {"family", "ideal", "range", "direction", "source", "log_scale"}},
     "files": [{"file", "checkpoint", "step", "model", "separation_law": {"rho", "r2", "n_layers"} | None,
                "layers": [{"layer", "kind": "layer" | "attention", "n_rows", "n_units", "dtype",
                            "metrics": {name: value}, "unavailable": {name: reason},
                            "nonfinite": {name: "inf" | "nan"}, "notes": [str],
                            "details": {"spectrum", "noise_floor", "fit_range", "firing_rate",
                                        "class_ids", "class_mean_cosine", "duality_cosine"}}]}]}

Files are in checkpoint order. Rendering reads ``options.entropy.subsample``/``seed`` (the DSE
sample stated on the page) and ``options.entropy.normalized`` (the attention colour-bar label).
"""

REPORT_SUBSAMPLE = 2_000  # DSE/DSMI cost N³: the report's default sample (the entropy command's is 10 000)
