"""What is in a dump: layers, rows, labels, classifier, predictions, sequences, attention (no
activations read); in a foreign file whose layers cannot be told apart, which datasets could be layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.dump.hdf5 import list_datasets
from actgeom.core.dump.reader import NoLayersError

_LABEL_BLOCK = 1 << 20  # labels are counted in blocks: memory O(classes), not O(rows)


def info_document(path: str | Path, spec: DumpSpec = DumpSpec(), *, listing_ok: bool = True) -> dict:
    """What `actgeom info` prints for one file: :func:`describe` of the dump, or, when its layers
    cannot be told apart and ``listing_ok`` (no --layers given), every dataset and whether it could
    be a layer (``format`` "foreign", ``layers_unclear`` saying why)."""
    try:
        with Dump(path, spec) as opened:
            return describe(opened)
    except NoLayersError as exc:
        if not listing_ok:
            raise
        return {"file": str(path), "format": "foreign", "n_rows": None, "layers": [], "datasets": list_datasets(path),
                "layers_unclear": str(exc)}


def describe(dump: Dump) -> dict:
    """A JSON-ready description of an open dump."""
    return {
        "file": str(dump.path),
        "format": "actgeom-dump v1" if dump.is_actgeom else "foreign",
        "n_rows": dump.n_rows,
        "attrs": dump.attrs,
        "layers": [
            {"layer": layer.name, "path": layer.path, "n_rows": layer.n_rows, "n_units": layer.n_units,
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
        "attention": [dump.dataset_summary(path) for path in dump.attention_paths],  # path, shape (S, H, T, T), dtype
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
