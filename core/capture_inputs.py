"""The examples `actgeom capture` feeds a model: text lines or records, or tensors, with their labels.

Text: a .txt file holds one example per line (blank lines are skipped); a .jsonl file one JSON
object per line and a .json file a list of them, the text in ``text_field`` and the label, when
asked, in ``label_field``. Tables (pyarrow, the ``arrow`` extra): a directory written by
``datasets.Dataset.save_to_disk`` (its ``data-*.arrow`` files in the order of state.json), one
.arrow file (IPC stream or file) or a .parquet file, with the same fields as columns; a ``datasets``
ClassLabel column keeps its codes and names. Tensors: a .npy array or a .pt tensor (loaded with ``weights_only``)
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
from actgeom.core.dump.source import first_line

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
TABLE_SUFFIXES = (".arrow", ".parquet")
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
    """The examples of a .txt, .jsonl or .json file, or of an Arrow table (see the module's docstring)."""
    if Path(path).is_dir() or Path(path).suffix.lower() in TABLE_SUFFIXES:
        return read_table(Path(path), text_field, label_field)
    path = _existing(path, "--text")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise UsageError(f"--text: {path} is not one of {', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)} "
                         "or a datasets directory (save_to_disk)")
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


def read_table(path: Path, text_field: str = "text", label_field: str | None = None) -> Examples:
    """The examples of a ``datasets`` directory, an .arrow or a .parquet file: rows in file order, then row order."""
    if not path.exists():
        raise InvalidInputError(f"--text: no such file or directory: {path}")
    try:
        import pyarrow as pa
    except ImportError:
        raise InvalidInputError(f"--text: {path} is an Arrow table; reading it needs pyarrow: "
                                "pip install 'actgeom[arrow]'") from None
    files, info = _table_files(path)
    if not files:  # save_to_disk of an empty dataset lists no data file
        raise InvalidInputError(f"--text: {path} holds no examples")
    tables = [_read_table_file(pa, file) for file in files]
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise InvalidInputError(f"--text: the files of {path} have different columns ({first_line(exc)})") from None
    features = _features(info if info is not None else _schema_info(table.schema))
    texts = _text_column(table, text_field, path)
    if not texts:
        raise InvalidInputError(f"--text: {path} holds no examples")
    codes, names = (None, None) if label_field is None else _label_column(table, label_field, features, path)
    records = [file_record(file) for file in files]
    if path.is_dir() and info is not None:
        records.append(file_record(path / "dataset_info.json"))  # ClassLabel names: a changed file changes the dump
    return Examples(texts=texts, labels=codes, label_names=names, files=records)


def _table_files(path: Path) -> tuple[list[Path], dict | None]:
    """The data files of ``path`` in order and the ``datasets`` info of a directory (None: none written)."""
    if not path.is_dir():
        return [path], None
    if (path / "dataset_dict.json").is_file():
        splits = _json((path / "dataset_dict.json").read_text(encoding="utf-8"), path / "dataset_dict.json", "the file")
        splits = splits.get("splits", []) if isinstance(splits, dict) else []
        raise UsageError(f"--text: {path} is a DatasetDict; give one split's directory: "
                         f"{', '.join(str(path / split) for split in splits)}")
    state = path / "state.json"
    if not state.is_file():
        raise InvalidInputError(f"--text: {path} is not a datasets directory (no state.json; Dataset.save_to_disk writes one)")
    loaded = _json(state.read_text(encoding="utf-8"), state, "the file")
    entries = loaded.get("_data_files") if isinstance(loaded, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
        raise InvalidInputError(f"--text: {state} has no list of data files ('_data_files')")
    files = [path / entry["filename"] for entry in entries]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise InvalidInputError(f"--text: {path} lacks the data files its state.json lists: {', '.join(missing)}")
    info_path = path / "dataset_info.json"
    info = _json(info_path.read_text(encoding="utf-8"), info_path, "the file") if info_path.is_file() else None
    return files, info if isinstance(info, dict) else None


def _read_table_file(pa, file: Path):
    """One file as a pyarrow Table: Parquet, or Arrow IPC in the stream format (datasets) or the file format."""
    if file.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInputError(f"--text: {file} is not a Parquet file ({first_line(exc)})") from None
    import pyarrow.ipc as ipc

    try:
        with pa.OSFile(str(file)) as source:  # read into memory: nothing stays open or mapped
            return ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError):
        pass
    try:
        with pa.OSFile(str(file)) as source:
            return ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"--text: {file} is not an Arrow IPC stream or file ({first_line(exc)})") from None


def _schema_info(schema) -> dict | None:
    """The ``datasets`` info an Arrow/Parquet schema carries (key b"huggingface": {"info": {"features": ...}})."""
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        loaded = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        return None
    return loaded.get("info") if isinstance(loaded, dict) else None


def _features(info: dict | None) -> dict:
    features = info.get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else {}


def _column(table, name: str, option: str, path: Path):
    if name not in table.column_names:
        raise InvalidInputError(f"{option}: {path} has no column '{name}'; it has: {', '.join(table.column_names)}")
    return table.column(name)


def _text_column(table, text_field: str, path: Path) -> list[str]:
    """The strings of column ``text_field``; another type or a missing value (null) is refused."""
    import pyarrow as pa

    column = _column(table, text_field, "--text-field", path)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise InvalidInputError(f"--text-field: column '{text_field}' of {path} holds {column.type}, not strings")
    if column.null_count:
        row = column.is_null().to_pylist().index(True)
        raise InvalidInputError(f"--text-field: row {row} of {path} has no text (null in column '{text_field}')")
    return column.to_pylist()


def _label_column(table, label_field: str, features: dict, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Codes and names: a ClassLabel column's codes with its names (-1: no label, as in datasets); else as .jsonl."""
    values = _column(table, label_field, "--label-field", path).to_pylist()
    feature = features.get(label_field)
    if not (isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list)):
        return encode_labels(values)
    names = [str(name) for name in feature["names"]]
    bad = [v for v in values if not isinstance(v, int) or not -1 <= v < len(names)]
    if bad:
        raise InvalidInputError(f"--label-field: ClassLabel column '{label_field}' of {path} holds {bad[0]}, "
                                f"outside -1..{len(names) - 1} (its {len(names)} names)")
    return np.asarray(values, dtype=np.int64), names
