"""The examples `actgeom capture` feeds a model: text lines or records, or tensors, with their labels.

Text: a .txt file holds one example per line (blank lines are skipped); a .jsonl file one JSON
object per line and a .json file a list of them, the text in ``text_field`` and the label, when
asked, in ``label_field``. Tensors: a .npy array or a .pt tensor (loaded with ``weights_only``)
whose first axis is the examples; labels from a .npy array or a text file of one label per line.
String labels become codes 0..C-1 in sorted order, their names kept for the dump.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError, UsageError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
TENSOR_SUFFIXES = (".npy", ".pt", ".pth")
HASH_BLOCK = 1 << 20


@dataclass
class Examples:
    """The inputs in order: ``texts`` (text models) or ``tensors`` (N, ...); labels as codes."""

    texts: list[str] | None = None
    tensors: np.ndarray | None = None
    labels: np.ndarray | None = None
    label_names: list[str] | None = None
    files: list[dict] = field(default_factory=list)  # provenance of each file read

    def __len__(self) -> int:
        return len(self.texts) if self.texts is not None else len(self.tensors)


def file_record(path: Path) -> dict:
    """Path, size, modification time and SHA-256 of an input file (a resumed run checks the hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    stat = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}


def _existing(path: Path, option: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{option}: no such file: {path}")
    return path


def read_text(path: Path, text_field: str = "text", label_field: str | None = None) -> Examples:
    """The examples of a .txt, .jsonl or .json file (see the module's docstring)."""
    path = _existing(path, "--text")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise UsageError(f"--text: {path} is not one of {', '.join(TEXT_SUFFIXES)}")
    raw = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        if label_field is not None:
            raise UsageError("--label-field needs a .jsonl or .json file; a .txt file has no fields")
        texts, labels = [line for line in raw.splitlines() if line.strip()], None
    else:
        texts, labels = _records(path, raw, suffix, text_field, label_field)
    if not texts:
        raise InvalidInputError(f"--text: {path} holds no examples")
    codes, names = encode_labels(labels) if labels is not None else (None, None)
    return Examples(texts=texts, labels=codes, label_names=names, files=[file_record(path)])


def _records(path: Path, raw: str, suffix: str, text_field: str, label_field: str | None):
    """Texts and labels of JSON records; a record without the field is named by its line/index."""
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                records.append((f"line {number}", _json(line, path, f"line {number}")))
    else:
        loaded = _json(raw, path, "the file")
        if not isinstance(loaded, list):
            raise InvalidInputError(f"--text: {path} must hold a JSON list of records; it holds a {type(loaded).__name__}")
        records = [(f"record {i}", record) for i, record in enumerate(loaded)]
    texts, labels = [], []
    for where, record in records:
        if not isinstance(record, dict) or text_field not in record:
            fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise InvalidInputError(f"--text-field: {where} of {path} has no field '{text_field}'; it has: {fields}")
        texts.append(str(record[text_field]))
        if label_field is not None:
            if label_field not in record:
                raise InvalidInputError(f"--label-field: {where} of {path} has no field '{label_field}'; "
                                        f"it has: {', '.join(record)}")
            labels.append(record[label_field])
    return texts, (labels if label_field is not None else None)


def _json(text: str, path: Path, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"--text: {where} of {path} is not JSON ({exc.msg})") from None


def encode_labels(values: list) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; any other labels as codes 0..C-1 of their sorted names."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64), None
    names = sorted({str(v) for v in values})
    index = {name: code for code, name in enumerate(names)}
    return np.asarray([index[str(v)] for v in values], dtype=np.int64), names


def read_tensors(path: Path, labels_path: Path | None = None) -> Examples:
    """The examples of a .npy array or a .pt tensor (first axis: examples), with labels from ``labels_path``."""
    path = _existing(path, "--inputs")
    suffix = path.suffix.lower()
    if suffix not in TENSOR_SUFFIXES:
        raise UsageError(f"--inputs: {path} is not one of {', '.join(TENSOR_SUFFIXES)}")
    if suffix == ".npy":
        try:
            tensors = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InvalidInputError(f"--inputs: {path} is not a plain .npy array ({exc})") from None
    else:
        import torch

        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, torch.Tensor):
            raise InvalidInputError(f"--inputs: {path} holds a {type(loaded).__name__}, not one tensor")
        tensors = loaded
    if tensors.ndim == 0 or len(tensors) == 0:
        raise InvalidInputError(f"--inputs: {path} holds no examples")
    examples = Examples(tensors=tensors, files=[file_record(path)])
    if labels_path is not None:
        examples.labels, examples.label_names = read_labels(labels_path, len(examples))
        examples.files.append(file_record(Path(labels_path)))
    return examples


def read_labels(path: Path, n: int) -> tuple[np.ndarray, list[str] | None]:
    """Labels of ``n`` examples: a .npy vector, or a text file with one label per line."""
    path = _existing(path, "--labels")
    if path.suffix.lower() == ".npy":
        values = np.load(path, allow_pickle=False).ravel().tolist()
    else:
        values = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        values = [int(v) if v.lstrip("-").isdigit() else v for v in values]
    if len(values) != n:
        raise InvalidInputError(f"--labels: {path} holds {len(values)} labels for {n} examples")
    return encode_labels(values)
