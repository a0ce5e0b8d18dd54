"""What is in a dump: layers, rows, labels, classifier, predictions, sequences (no activations read)."""

from __future__ import annotations

import numpy as np

from actgeom.core.dump import Dump

_LABEL_BLOCK = 1 << 20  # labels are counted in blocks: memory O(classes), not O(rows)


def describe(dump: Dump) -> dict:
    """A JSON-ready description of an open dump."""
    return {
        "file": str(dump.path),
        "format": "actgeom-dump v1" if dump.is_actgeom else "foreign",
        "n_rows": dump.n_rows,
        "attrs": dump.attrs,
        "layers": [
            {"name": layer.name, "path": layer.path, "n_rows": layer.n_rows, "n_units": layer.n_units,
             "dtype": layer.logical_dtype, "storage_dtype": layer.storage_dtype, "chunk_rows": layer.chunk_rows,
             "compression": layer.compression,
             "size_mib": round(layer.n_rows * layer.n_units * np.dtype(layer.storage_dtype).itemsize / 2**20, 3),
             "attrs": layer.attrs}
            for layer in dump.layers
        ],
        "labels": _labels(dump),
        "classifier": _classifier(dump),
        "predictions": None if dump.predictions_path is None else {"path": dump.predictions_path},
        "sequences": _sequences(dump),
    }


def _labels(dump: Dump) -> dict | None:
    if dump.labels_path is None:
        return None
    counts = np.zeros(0, dtype=np.int64)
    n_unlabeled = 0
    for start in range(0, dump.n_rows, _LABEL_BLOCK):
        y = dump.labels(start, min(start + _LABEL_BLOCK, dump.n_rows))
        n_unlabeled += int((y < 0).sum())
        block = np.bincount(y[y >= 0])
        if block.size > counts.size:
            counts = np.pad(counts, (0, block.size - counts.size))
        counts[: block.size] += block
    present = counts[counts > 0]
    names = dump.label_names()
    return {
        "path": dump.labels_path,
        "n_classes": max(int(counts.size), len(names or [])),
        "n_classes_present": int(present.size),
        "n_unlabeled": n_unlabeled,
        "count_min": int(present.min()) if present.size else None,
        "count_median": float(np.median(present)) if present.size else None,
        "count_max": int(present.max()) if present.size else None,
        "label_names": names,
    }


def _classifier(dump: Dump) -> dict | None:
    if dump.weight_path is None:
        return None
    weight, _ = dump.classifier()
    return {"weight": dump.weight_path, "bias": dump.bias_path, "n_classes": int(weight.shape[0]),
            "n_units": int(weight.shape[1]), "layer": dump.classifier_layer}


def _sequences(dump: Dump) -> dict | None:
    offsets = dump.offsets()
    if offsets is None:
        return None
    lengths = np.diff(offsets)
    return {"path": dump.offsets_path, "n_sequences": int(lengths.size),
            "length_min": int(lengths.min()) if lengths.size else None,
            "length_median": float(np.median(lengths)) if lengths.size else None,
            "length_max": int(lengths.max()) if lengths.size else None}
