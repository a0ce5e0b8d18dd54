"""Compare: similarity between layers of two or more files, from one joint pass over their aligned
rows (docs/metrics.md, "Similarity between representations").

Not a single-dump family (core/families/protocol.py describes one dump's pass per layer): its pass
accumulates the cross-moments of pairs of layers of different files (core/state/compare_pass.py).
It shares the rest with the families: its registry (core/metrics/compare.py REGISTRY, reaching
metrics_info, the docs and the report through core/analysis.py REGISTRIES), its options
(core/base/options.py CompareOptions, core/analysis.py family_options), the document header and
tidy records (core/base/result.py), the inference record and the jackknife (core/metrics/
uncertainty.py).

- comparison.py: the plans (which layer of which file is compared with which), the run, the result;
- cells.py: each compared pair's measures, jackknife intervals and permutation nulls.
"""

from actgeom.core.compare.cells import Inference
from actgeom.core.compare.comparison import CompareResult, run

__all__ = ["CompareResult", "Inference", "run"]
