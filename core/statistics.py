"""Statistics fed from memory batch by batch (e.g. during training), with any family's metrics
from them: the same accumulators and metric functions as a pass over a dump, without the dump."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from actgeom.core.analysis import FAMILIES, family_options, layer_entry, metrics_info, specs_for
from actgeom.core.base.errors import OptionError
from actgeom.core.base.result import Result, document_header
from actgeom.core.families.protocol import DumpFacts, LayerContext
from actgeom.core.state.engine import LayerStats, PassOptions, feed, new_layer_stats


class Statistics:
    """One-pass statistics fed from memory, batch by batch (numpy arrays, or anything with
    ``__array__`` such as torch tensors), for any family's metrics without a dump — e.g. during
    training.

    >>> import numpy as np, actgeom
    >>> stats = actgeom.Statistics({"h": 3}, families=("rank",))
    >>> stats.update({"h": np.eye(3)})
    >>> stats.update({"h": np.eye(3)})
    >>> round(stats.metrics().metric("participation_ratio"), 6)
    2.0
    """

    def __init__(self, layers: dict[str, int], *, families=("collapse", "rank", "entropy"), options: dict | None = None,
                 weight=None, bias=None):
        self.families = {name: family_options(name, (options or {}).get(name)) for name in families}
        self.specs = specs_for(self.families, DumpFacts(has_labels=True))
        self.specs.pop("sequences", None)  # whole sequences come only from dumps with offsets
        self.stats = {name: _memory_layer(name, int(width), self.specs) for name, width in layers.items()}
        self.classifier = None if weight is None else (_float64(weight), None if bias is None else _float64(bias))
        self.n_rows = 0

    def update(self, activations: dict, labels=None) -> None:
        """Add one batch: {layer: (n, D) array}, labels (n,) class indices (-1 = none) or None."""
        unknown = set(activations) - set(self.stats)
        if unknown:
            raise OptionError("activations", sorted(unknown)[0], f"is not a layer; layers: {', '.join(self.stats)}")
        batch = None
        for name, values in activations.items():
            X = _float64(values)
            if X.ndim != 2 or X.shape[1] != self.stats[name].n_units or (batch is not None and X.shape[0] != batch):
                raise OptionError("activations", name, f"must be (n, {self.stats[name].n_units}) like every layer of "
                                                       f"the batch; got {X.shape}")
            batch = X.shape[0]
            y = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
            if y is not None and y.shape[0] != batch:
                raise OptionError("labels", y.shape[0], f"must have one label per row ({batch})")
            feed(self.stats[name], X, y, np.arange(self.n_rows, self.n_rows + batch))
        self.n_rows += batch or 0

    def metrics(self, families: Iterable[str] | None = None) -> Result:
        """The metrics of every layer from the rows fed so far."""
        chosen = {name: self.families[name] for name in (families or self.families)}
        layers, records = [], {name: [] for name in chosen}
        for name, stats in self.stats.items():
            ctx = LayerContext(name=name, n_units=stats.n_units, dtype="float64", attrs={}, stats=stats,
                               pass_options=PassOptions(), classifier=self.classifier, layers=self.stats)
            layers.append(layer_entry(ctx, chosen, records))
        entry = {"file": None, "checkpoint": None, "step": None, "model": None, "layers": layers}
        for name, options in chosen.items():
            if FAMILIES[name].file_record is not None:
                entry |= FAMILIES[name].file_record(records[name], options)
        document = document_header("statistics", options=chosen, pass_record={})
        return Result(document | {"statistics": None, "metrics_info": metrics_info(chosen), "files": [entry]})


def _memory_layer(name: str, width: int, specs: dict) -> LayerStats:
    from actgeom.core.dump import LayerInfo

    info = LayerInfo(name=name, path=name, n_rows=0, n_units=width, storage_dtype="float64", logical_dtype="float64",
                     chunk_rows=None, compression=None)
    return new_layer_stats(info, specs)


def _float64(values) -> np.ndarray:
    """float64 rows from numpy arrays or tensors (torch bfloat16 has no numpy dtype: widen it first)."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu()
        if str(values.dtype) == "torch.bfloat16":
            values = values.float()
    return np.asarray(values, dtype=np.float64)
