"""A few plain numbers that describe one layer's pass (not metrics: a check of what was read)."""

from __future__ import annotations

import numpy as np

from actgeom.core.state.engine import LayerStats


def pass_summary(stats: LayerStats) -> dict:
    """Rows read/dropped/unlabelled, classes, units ever active, and the variance split.

    within_variance = Tr Σ_W and total_variance = Tr Σ_T over the labelled rows (Σ_T about the
    sample mean, so total = within + Σ_c (n_c/N)‖μ_c − x̄‖²).
    """
    moments = stats.get("moments")  # None: the families asked for no moments (e.g. `stats --families probe`)
    classes = None if moments is None else moments.classes if moments.classes is not None else moments.total
    n = 0 if classes is None else classes.n
    present = np.zeros(0, dtype=bool) if classes is None else classes.counts > 0
    if n:
        grand = classes.counts @ classes.means / n
        between = float(classes.counts[present] @ ((classes.means[present] - grand) ** 2).sum(axis=1)) / n
        within = float(np.trace(classes.within_scatter)) / n if classes.within_scatter is not None else float("nan")
    else:
        within = between = float("nan")
    units = stats.get("units")
    sample = stats.get("sample")
    return {
        "layer": stats.layer,
        "n_rows": stats.n_rows,
        "n_units": stats.n_units,
        "dtype": stats.dtype,
        "n_nonfinite_dropped": stats.n_nonfinite,
        "n_unlabeled": stats.n_unlabeled,
        "n_classes_present": int(present.sum()),
        "n_units_ever_active": None if units is None or not units.activity else int((units.n_active > 0).sum()),
        "within_variance": within,
        "total_variance": within + between,
        "sample_rows": 0 if sample is None else sample.n_rows,
    }
