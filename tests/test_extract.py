"""actgeom extract: every input format round-trips exactly; selections equal numpy references;
a failed or killed extract leaves nothing; --append resumes to the uninterrupted result."""

from __future__ import annotations

import doctest
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import actgeom.core.candidates as candidates_module
import actgeom.core.extract as extract_module
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.dump.hdf5 import decode_bfloat16
from actgeom.core.dump.writer import encode_bfloat16

try:
    import torch
except ImportError:  # the torch tests skip; CI installs the extra so they run there
    torch = None
try:
    import pyarrow as pa
    import pyarrow.ipc  # noqa: F401 (pa.ipc)
except ImportError:
    pa = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs the torch extra")
needs_arrow = pytest.mark.skipif(pa is None, reason="needs the arrow extra")

LENGTHS = [5, 1, 0, 7, 3, 4, 2, 6]  # sequence lengths, one empty
MEAN_TOLERANCE = 0.0  # float64 sums of the same rows in the same order: the pooled mean is exact
POOLED_RTOL = 1e-15  # numpy's mean may sum in another order than reduceat: a last-bit difference at most


def offsets_of(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def read(path) -> dict:
    """Everything in a dump: activations as stored (bfloat16 as bits), row vectors, offsets, attrs."""
    with h5py.File(path, "r") as f:
        found = {name: f[name][()] for name in ("rows/label", "rows/token_id", "rows/position", "sequences/offsets")
                 if name in f}
        layers = []
        f["activations"].visititems(lambda name, obj: layers.append(name) if isinstance(obj, h5py.Dataset) else None)
        found |= {f"activations/{k}": f["activations"][k][()] for k in layers}
        found["dtypes"] = {k: f["activations"][k].attrs.get("logical_dtype", str(f["activations"][k].dtype))
                           for k in layers}
        found["attrs"] = dict(f.attrs)
    return found


def same_dump(a, b) -> None:
    ra, rb = read(a), read(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        if key == "attrs":
            assert ra[key]["n_rows"] == rb[key]["n_rows"] and ra[key]["level"] == rb[key]["level"]
        elif key == "dtypes":
            assert ra[key] == rb[key]
        else:
            np.testing.assert_array_equal(ra[key], rb[key], err_msg=key)


def leftovers(directory: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def write_safetensors(path, tensors: dict[str, tuple[np.ndarray, str]]) -> str:
    """The safetensors layout by hand: 8-byte header length, JSON header, raw little-endian bytes."""
    header, blobs, at = {}, [], 0
    for name, (array, dtype) in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return str(path)


@pytest.fixture
def tokens(rng):
    """Token rows of 8 sequences (one empty): 2 layers, labels per row, positions."""
    n = sum(LENGTHS)
    return {"a": rng.standard_normal((n, 6)).astype(np.float32), "b": rng.standard_normal((n, 3)).astype(np.float32),
            "labels": rng.integers(0, 3, n), "offsets": offsets_of(LENGTHS)}


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_npy_round_trip_is_exact(cli, tmp_path, rng, dtype):
    X = rng.standard_normal((50, 7)).astype(dtype)
    np.save(tmp_path / "feats.npy", X)
    code, _, err = cli("extract", tmp_path / "feats.npy", "-o", tmp_path / "out.h5")
    assert code == 0, err
    with Dump(tmp_path / "out.h5") as d:
        assert d.layers[0].name == "feats" and d.layers[0].storage_dtype == dtype
        np.testing.assert_array_equal(d.read_rows("feats"), X)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_round_trip_with_labels(cli, tmp_path, tokens, save):
    save(tmp_path / "acts.npz", a=tokens["a"], b=tokens["b"], labels=tokens["labels"], offsets=tokens["offsets"])
    code, _, err = cli("extract", tmp_path / "acts.npz", "-o", tmp_path / "out.h5")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/a"], tokens["a"])
    np.testing.assert_array_equal(out["activations/b"], tokens["b"])
    np.testing.assert_array_equal(out["rows/label"], tokens["labels"])
    np.testing.assert_array_equal(out["sequences/offsets"], offsets_of([n for n in LENGTHS if n]))
    assert out["attrs"]["level"] == "token"


def test_compressed_npz_reads_backwards_too(tmp_path, rng):
    """A compressed member is read forward; asking for earlier rows re-opens it."""
    from actgeom.core.dump.sources import open_source

    X = rng.standard_normal((100, 4))
    np.savez_compressed(tmp_path / "x.npz", x=X)
    with open_source(tmp_path / "x.npz") as source:
        np.testing.assert_array_equal(source.rows("x", 60, 90), X[60:90])
        np.testing.assert_array_equal(source.rows("x", 10, 20), X[10:20])


def all_bfloat16_bits() -> np.ndarray:
    """Every one of the 65 536 bfloat16 bit patterns (NaNs, infs, subnormals, ±0), as 4096 × 16."""
    return np.arange(1 << 16, dtype=np.uint16).reshape(4096, 16)


def test_bfloat16_encoding_is_the_identity_on_every_bit_pattern():
    bits = all_bfloat16_bits()
    np.testing.assert_array_equal(encode_bfloat16(decode_bfloat16(bits)), bits)


def test_safetensors_round_trip_keeps_every_bfloat16_bit(cli, tmp_path, rng):
    bits = all_bfloat16_bits()
    X = rng.standard_normal((4096, 5)).astype(np.float16)
    write_safetensors(tmp_path / "acts.safetensors", {"resid": (bits, "BF16"), "mlp": (X, "F16"),
                                                      "labels": (np.arange(4096) % 4, "I64")})
    code, _, err = cli("extract", tmp_path / "acts.safetensors", "-o", tmp_path / "bf.h5", "--layers", "resid")
    assert code == 0, err
    out = read(tmp_path / "bf.h5")
    assert out["dtypes"] == {"resid": "bfloat16"}
    np.testing.assert_array_equal(out["activations/resid"], bits)
    np.testing.assert_array_equal(out["rows/label"], np.arange(4096) % 4)
    code, _, err = cli("extract", tmp_path / "acts.safetensors", "-o", tmp_path / "f16.h5", "--layers", "mlp")
    np.testing.assert_array_equal(read(tmp_path / "f16.h5")["activations/mlp"], X)


def test_safetensors_3d_tensors_are_token_rows(cli, tmp_path, rng):
    X = rng.standard_normal((4, 5, 3)).astype(np.float32)  # (sequences, tokens, units)
    write_safetensors(tmp_path / "c.safetensors", {"h": (X, "F32"), "labels": (np.arange(4), "I64")})
    code, _, err = cli("extract", tmp_path / "c.safetensors", "-o", tmp_path / "out.h5", "--tokens", "last")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/h"], X[:, -1])
    np.testing.assert_array_equal(out["rows/label"], np.arange(4))  # one label per sequence


@needs_torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_torch_file_round_trip_every_dtype(cli, tmp_path, rng, dtype):
    values = torch.tensor(rng.standard_normal((30, 4, 8)), dtype=getattr(torch, dtype))
    torch.save({"blocks": {"0": values}, "labels": torch.arange(30) % 3}, tmp_path / "cache.pt")
    code, _, err = cli("extract", tmp_path / "cache.pt", "-o", tmp_path / "out.h5")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    assert out["dtypes"] == {"blocks.0": dtype}
    flat = values.reshape(-1, 8)
    expected = flat.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else flat.numpy()
    np.testing.assert_array_equal(out["activations/blocks.0"], expected)
    np.testing.assert_array_equal(out["rows/label"], np.repeat(np.arange(30) % 3, 4))
    np.testing.assert_array_equal(out["sequences/offsets"], np.arange(0, 121, 4))


@needs_torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_dump_writer_takes_torch_tensors_of_every_dtype(tmp_path, rng, dtype):
    values = torch.tensor(rng.standard_normal((20, 6)), dtype=getattr(torch, dtype))
    with DumpWriter(tmp_path / "t.h5", layers={"x": 6}, dtype=dtype) as writer:
        writer.append({"x": values[:7]}, labels=torch.arange(7))
        writer.append({"x": values[7:]}, labels=torch.arange(7, 20))
    with Dump(tmp_path / "t.h5") as d:
        np.testing.assert_array_equal(d.read_rows("x"), values.float().numpy() if dtype == "bfloat16" else values.numpy())
        np.testing.assert_array_equal(d.labels(), np.arange(20))


@needs_arrow
@pytest.mark.parametrize("fixed", [False, True])  # datasets' Array2D storage: nested lists, variable or fixed size
def test_arrow_cache_round_trip(cli, tmp_path, rng, fixed):
    """A SAELens-style datasets cache: shards of records, a (context, d_in) column per hook + token_ids."""
    context, d_in, records = 4, 5, 6
    X = rng.standard_normal((2 * records, context, d_in)).astype(np.float32)
    ids = rng.integers(0, 1000, (2 * records, context))
    cache = tmp_path / "cache"
    cache.mkdir()
    for shard in range(2):
        part = slice(shard * records, (shard + 1) * records)
        kind = pa.list_(pa.list_(pa.float32(), d_in), context) if fixed else pa.list_(pa.list_(pa.float32()))
        table = pa.table({"blocks.3.hook_resid_post": pa.array(X[part].tolist(), type=kind),
                          "token_ids": pa.array(ids[part].tolist(), type=pa.list_(pa.int32()))})
        with pa.ipc.new_stream(str(cache / f"data-{shard:05d}-of-00002.arrow"), table.schema) as writer:
            writer.write_table(table, max_chunksize=4)
    (cache / "state.json").write_text("{}")
    code, _, err = cli("extract", cache, "-o", tmp_path / "out.h5")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/blocks.3.hook_resid_post"], X.reshape(-1, d_in))
    np.testing.assert_array_equal(out["rows/token_id"], ids.reshape(-1))
    np.testing.assert_array_equal(out["sequences/offsets"], np.arange(0, 2 * records * context + 1, context))


def test_neurox_round_trip(cli, tmp_path, rng):
    """NeuroX: one dataset per sentence (layers, tokens, units) and a sentence_to_index JSON."""
    sentences = [rng.standard_normal((3, n, 4)).astype(np.float32) for n in (2, 5, 1, 3)]
    with h5py.File(tmp_path / "nx.hdf5", "w") as f:
        for i, s in enumerate(sentences):
            f.create_dataset(str(i), data=s)
        f.create_dataset("sentence_to_index", data=json.dumps({f"sentence {i}": str(i) for i in range(4)}))
    code, _, err = cli("extract", tmp_path / "nx.hdf5", "-o", tmp_path / "out.h5", "--layers", "layer_[02]")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    assert sorted(out["dtypes"]) == ["layer_0", "layer_2"]
    np.testing.assert_array_equal(out["activations/layer_2"], np.concatenate([s[2] for s in sentences]))
    np.testing.assert_array_equal(out["sequences/offsets"], offsets_of([2, 5, 1, 3]))


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_foreign_hdf5_with_data_options_and_dtype_conversion(cli, tmp_path, rng, compression):
    X = rng.standard_normal((40, 5))
    y = rng.integers(0, 4, 40)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["feats/fc1"], f["feats/fc2"], f["meta/y"] = X, X * 2, y
    code, _, err = cli("extract", tmp_path / "f.h5", "-o", tmp_path / "out.h5", "--layers", "feats/*",
                       "--labels", "meta/y", "--dtype", "float32", "--compression", compression)
    assert code == 0, err
    with Dump(tmp_path / "out.h5") as d:
        assert [l.name for l in d.layers] == ["feats/fc1", "feats/fc2"] and d.layers[0].compression == compression
        np.testing.assert_array_equal(d.read_rows("feats/fc2"), (X * 2).astype(np.float32))
        np.testing.assert_array_equal(d.labels(), y)
    runs = json.loads(read(tmp_path / "out.h5")["attrs"]["extract_runs"])
    assert runs[0]["sources"][0]["size"] == (tmp_path / "f.h5").stat().st_size and runs[0]["tool"].startswith("actgeom")


def test_several_sources_concatenate_and_mixed_dtypes_widen(cli, tmp_path, rng):
    A, B = rng.standard_normal((10, 3)).astype(np.float16), rng.standard_normal((7, 3)).astype(np.float32)
    np.save(tmp_path / "x1.npy", A)
    np.savez(tmp_path / "x2.npz", x1=B)  # the same layer name
    code, _, err = cli("extract", tmp_path / "x1.npy", tmp_path / "x2.npz", "-o", tmp_path / "out.h5")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    assert out["dtypes"] == {"x1": "float32"}
    np.testing.assert_array_equal(out["activations/x1"], np.concatenate([A.astype(np.float32), B]))


@pytest.mark.parametrize("dtype, big, expected", [("float16", 7e4, 2), ("bfloat16", 3.4e38, 2), ("float32", 1e39, 2)])
def test_narrowing_counts_values_that_overflow_to_inf(cli, tmp_path, rng, dtype, big, expected):
    X = rng.standard_normal((20, 3))
    X[3, 1], X[9, 0], X[5, 2] = big, -big, np.inf  # the inf was not an overflow
    np.save(tmp_path / "x.npy", X)
    code, _, err = cli("extract", tmp_path / "x.npy", "-o", tmp_path / "out.h5", "--dtype", dtype)
    assert code == 0 and f"warning: {expected} values of layer 'x' overflowed to inf" in err
    assert json.loads(read(tmp_path / "out.h5")["attrs"]["extract_runs"])[0]["overflow_to_inf"] == {"x": expected}


# -- selections -------------------------------------------------------------------------------------
def reference_tokens(X, lengths, tokens):
    """The numpy reference: per sequence, in order, empty sequences contribute nothing."""
    off = offsets_of(lengths)
    pieces = [X[off[s] : off[s + 1]] for s in range(len(lengths)) if lengths[s]]
    if tokens == "first":
        return np.stack([p[0] for p in pieces])
    if tokens == "last":
        return np.stack([p[-1] for p in pieces])
    if tokens == "mean":
        return np.stack([p.astype(np.float64).mean(axis=0) for p in pieces])
    k = int(tokens.split(":")[1])
    return np.concatenate([p[k:] for p in pieces])


@pytest.mark.parametrize("block_bytes", [8 << 20, 8 * 6 * 4])  # one block; blocks of about 4 rows
@pytest.mark.parametrize("tokens", ["first", "last", "mean", "from:1", "from:3"])
def test_token_selections_equal_the_numpy_reference(cli, tmp_path, tokens, monkeypatch, block_bytes):
    data = tokens_data()
    monkeypatch.setattr(candidates_module, "BLOCK_BYTES", block_bytes)
    np.savez(tmp_path / "t.npz", a=data["a"], labels=data["labels"], offsets=data["offsets"])
    code, _, err = cli("extract", tmp_path / "t.npz", "-o", tmp_path / "out.h5", "--tokens", tokens,
                       "--dtype", "float64")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    expected = reference_tokens(data["a"], LENGTHS, tokens)
    np.testing.assert_allclose(out["activations/a"], expected, rtol=MEAN_TOLERANCE, atol=0)
    if tokens == "mean":  # a sequence's label survives only where its rows agree
        ref = [np.unique(data["labels"][s:e]) for s, e in zip(data["offsets"][:-1], data["offsets"][1:]) if e > s]
        np.testing.assert_array_equal(out["rows/label"], [r[0] if r.size == 1 else -1 for r in ref])
    if tokens.startswith("from"):
        k = int(tokens[5:])
        kept = [max(n - k, 0) for n in LENGTHS]
        np.testing.assert_array_equal(out["sequences/offsets"], offsets_of([n for n in kept if n]))
        assert out["attrs"]["level"] == "token"
    else:
        assert out["attrs"]["level"] == "sample" and "sequences/offsets" not in out


def tokens_data():
    rng = np.random.default_rng(7)
    n = sum(LENGTHS)
    labels = rng.integers(0, 2, n)
    labels[:5] = 1  # the first sequence shares one label
    return {"a": rng.standard_normal((n, 6)).astype(np.float32), "labels": labels, "offsets": offsets_of(LENGTHS)}


def test_from_k_without_offsets_uses_positions(cli, tmp_path, rng):
    positions = np.concatenate([np.arange(n) for n in LENGTHS])
    X = rng.standard_normal((positions.size, 2))
    np.savez(tmp_path / "p.npz", x=X, positions=positions)
    code, _, err = cli("extract", tmp_path / "p.npz", "-o", tmp_path / "out.h5", "--tokens", "from:2")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/x"], X[positions >= 2])
    np.testing.assert_array_equal(out["rows/position"], positions[positions >= 2])


def test_rows_and_classes(cli, tmp_path, rng):
    X, y = rng.standard_normal((100, 3)), rng.integers(0, 5, 100)
    np.savez(tmp_path / "d.npz", x=X, y=y)
    code, _, err = cli("extract", tmp_path / "d.npz", "-o", tmp_path / "out.h5", "--rows", "20:70", "--classes", "1,3")
    assert code == 0, err
    keep = np.zeros(100, bool)
    keep[20:70] = True
    keep &= np.isin(y, [1, 3])
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/x"], X[keep])
    np.testing.assert_array_equal(out["rows/label"], y[keep])


def sampled_rows(cli, tmp_path, name, *options):
    code, _, err = cli("extract", tmp_path / "d.npz", "-o", tmp_path / name, *options)
    assert code == 0, err
    return read(tmp_path / name)


@pytest.fixture
def labelled(tmp_path, rng):
    """1000 rows whose first unit is the row number (so a sample's rows name themselves)."""
    y = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    rng.shuffle(y)
    X = np.column_stack([np.arange(1000), rng.standard_normal(1000)])
    np.savez(tmp_path / "d.npz", x=X, y=y)
    return X, y


def test_sample_is_seeded_reproducible_ordered_and_block_size_free(cli, tmp_path, labelled, monkeypatch):
    X, _ = labelled
    first = sampled_rows(cli, tmp_path, "s1.h5", "--sample", "100", "--seed", "3")["activations/x"]
    again = sampled_rows(cli, tmp_path, "s2.h5", "--sample", "100", "--seed", "3")["activations/x"]
    other = sampled_rows(cli, tmp_path, "s3.h5", "--sample", "100", "--seed", "4")["activations/x"]
    monkeypatch.setattr(candidates_module, "BLOCK_BYTES", 16 * 37)  # blocks of 37 rows
    small_blocks = sampled_rows(cli, tmp_path, "s4.h5", "--sample", "100", "--seed", "3")["activations/x"]
    assert first.shape == (100, 2)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, small_blocks)
    assert not np.array_equal(first, other)
    rows = first[:, 0].astype(int)
    assert np.all(np.diff(rows) > 0)  # input order
    np.testing.assert_array_equal(first, X[rows])
    from actgeom.core.base.sample import row_keys  # the sample is the 100 smallest keys
    np.testing.assert_array_equal(rows, np.sort(np.argsort(row_keys(0, 1000, 3))[:100]))


def test_stratified_sample_has_the_class_proportions(cli, tmp_path, labelled):
    X, y = labelled
    out = sampled_rows(cli, tmp_path, "s.h5", "--sample", "101", "--stratify", "--seed", "9")
    counts = np.bincount(out["rows/label"], minlength=4)
    # 101 · (0.5, 0.3, 0.15, 0.05) = 50.5, 30.3, 15.15, 5.05 → floors 50, 30, 15, 5 + the largest remainder (class 0)
    np.testing.assert_array_equal(counts, [51, 30, 15, 5])
    rows = out["activations/x"][:, 0].astype(int)
    np.testing.assert_array_equal(y[rows], out["rows/label"])
    again = sampled_rows(cli, tmp_path, "s2.h5", "--sample", "101", "--stratify", "--seed", "9")
    np.testing.assert_array_equal(out["activations/x"], again["activations/x"])
    other = sampled_rows(cli, tmp_path, "s3.h5", "--sample", "101", "--stratify", "--seed", "10")
    assert not np.array_equal(out["activations/x"], other["activations/x"])


def test_extract_doctests():
    result = doctest.testmod(extract_module)
    assert result.attempted > 0 and result.failed == 0


# -- failures leave nothing; --append resumes --------------------------------------------------------
def test_an_exception_mid_write_leaves_nothing(cli, tmp_path, rng, monkeypatch):
    np.save(tmp_path / "x.npy", rng.standard_normal((1000, 8)))
    monkeypatch.setattr(candidates_module, "BLOCK_BYTES", 8 * 8 * 100)
    calls = []
    original = DumpWriter.append

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DumpWriter, "append", failing)
    with pytest.raises(RuntimeError):
        cli("extract", tmp_path / "x.npy", "-o", tmp_path / "out.h5")
    assert leftovers(tmp_path, {"x.npy"}) == []


KILLED_RUN = """
import sys, time, pathlib
import actgeom.core.candidates as candidates_module
from actgeom.core.dump import DumpWriter
candidates_module.BLOCK_BYTES = 8 * 8 * 50
original = DumpWriter.append
def slow(self, *args, **kwargs):
    original(self, *args, **kwargs)
    pathlib.Path(sys.argv[1]).touch()  # rows are being written: the parent may kill now
    time.sleep(0.2)
DumpWriter.append = slow
from actgeom.cli.app import app
app(sys.argv[2:])
"""


def killed_extract(tmp_path, *args) -> None:
    """Run an extract in a subprocess and SIGKILL it while it writes rows."""
    marker = tmp_path / "writing"
    marker.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(marker), "extract", *map(str, args)],
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_killed_extract_leaves_nothing_at_out_and_append_resumes(cli, tmp_path, rng):
    parts = []
    for i, n in enumerate([300, 200, 400]):
        lengths = rng.integers(1, 9, n // 4)
        x = rng.standard_normal((int(lengths.sum()), 8))
        np.savez(tmp_path / f"p{i}.npz", h=x, labels=rng.integers(0, 3, x.shape[0]), offsets=offsets_of(lengths))
        parts.append(tmp_path / f"p{i}.npz")
    options = ("--tokens", "from:1", "--classes", "0,2", "--dtype", "float32")
    code, _, err = cli("extract", *parts, "-o", tmp_path / "full.h5", *options)
    assert code == 0, err

    killed_extract(tmp_path, *parts, "-o", tmp_path / "out.h5", *options)
    assert not (tmp_path / "out.h5").exists()

    code, _, err = cli("extract", *parts[:2], "-o", tmp_path / "out.h5", *options)  # the first two sources
    assert code == 0, err
    before = (tmp_path / "out.h5").read_bytes()
    killed_extract(tmp_path, *parts, "-o", tmp_path / "out.h5", *options, "--append")
    assert (tmp_path / "out.h5").read_bytes() == before  # a killed --append leaves the dump as it was
    code, _, err = cli("extract", *parts, "-o", tmp_path / "out.h5", *options, "--append")
    assert code == 0, err
    same_dump(tmp_path / "out.h5", tmp_path / "full.h5")
    code, _, err = cli("extract", *parts, "-o", tmp_path / "out.h5", *options, "--append")  # nothing left to add
    assert code == 0 and "wrote 0 rows" in err
    same_dump(tmp_path / "out.h5", tmp_path / "full.h5")
    for name in temp_files(tmp_path):  # SIGKILL cannot clean up its temporary file: it is beside OUT, never OUT
        assert name.startswith(".out.h5.") or name.startswith(".full.h5.")


def test_append_of_new_sources_adds_their_rows(cli, tmp_path, rng):
    A, B = rng.standard_normal((10, 3)), rng.standard_normal((6, 3))
    np.save(tmp_path / "a.npy", A)
    np.savez(tmp_path / "b.npz", a=B)
    assert cli("extract", tmp_path / "a.npy", "-o", tmp_path / "out.h5")[0] == 0
    code, _, err = cli("extract", tmp_path / "b.npz", "-o", tmp_path / "out.h5", "--append")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/a"], np.concatenate([A, B]))
    assert len(json.loads(out["attrs"]["extract_runs"])) == 2


# -- bad input: one line, exit code, nothing written ---------------------------------------------------
def fails(cli, tmp_path, code, message, *args, keep):
    result, out, err = cli("extract", *args)
    assert result == code, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert leftovers(tmp_path, keep) == []


def test_non_activation_file(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    fails(cli, tmp_path, 3, "notes.txt is not an activation file actgeom can read; formats: HDF5",
          tmp_path / "notes.txt", "-o", tmp_path / "o.h5", keep={"notes.txt"})
    np.save(tmp_path / "ints.npy", np.arange(10).reshape(5, 2))
    fails(cli, tmp_path, 3, "found no floating-point activations in", tmp_path / "ints.npy", "-o", tmp_path / "o.h5",
          keep={"notes.txt", "ints.npy"})
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    fails(cli, tmp_path, 3, "is not a safetensors file", tmp_path / "bad.safetensors", "-o", tmp_path / "o.h5",
          keep={"notes.txt", "ints.npy", "bad.safetensors"})


@pytest.mark.parametrize("suffix, module, hint", [(".pt", "torch", "actgeom[torch]"), (".arrow", "pyarrow", "actgeom[arrow]")])
def test_missing_optional_dependency(cli, tmp_path, monkeypatch, suffix, module, hint):
    (tmp_path / f"x{suffix}").write_bytes(b"0" * 16)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    fails(cli, tmp_path, 3, hint, tmp_path / f"x{suffix}", "-o", tmp_path / "o.h5", keep={f"x{suffix}"})


@needs_torch
def test_pt_with_arbitrary_objects_is_refused_unpickled(cli, tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path("pwned").touch, ())

    torch.save({"h": torch.zeros(3, 2), "evil": Payload()}, tmp_path / "evil.pt")
    fails(cli, tmp_path, 3, "evil.pt is not a file of tensors", tmp_path / "evil.pt", "-o", tmp_path / "o.h5",
          keep={"evil.pt"})
    assert not Path("pwned").exists()


def test_mismatched_shapes_across_sources(cli, tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.standard_normal((5, 3)))
    np.savez(tmp_path / "b.npz", a=rng.standard_normal((5, 4)))
    np.savez(tmp_path / "c.npz", a=rng.standard_normal((5, 3)), y=np.arange(5))
    keep = {"a.npy", "b.npz", "c.npz"}
    fails(cli, tmp_path, 3, "b.npz has layers a (4) but", tmp_path / "a.npy", tmp_path / "b.npz", "-o", tmp_path / "o.h5",
          keep=keep)
    fails(cli, tmp_path, 3, "c.npz has labels but", tmp_path / "a.npy", tmp_path / "c.npz", "-o", tmp_path / "o.h5",
          keep=keep)


def test_usage_errors(cli, tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.standard_normal((5, 3)))
    keep = {"a.npy"}
    out = tmp_path / "o.h5"
    fails(cli, tmp_path, 2, "--tokens 'middle' is not one of", tmp_path / "a.npy", "-o", out, "--tokens", "middle", keep=keep)
    fails(cli, tmp_path, 2, "--stratify needs --sample", tmp_path / "a.npy", "-o", out, "--stratify", keep=keep)
    fails(cli, tmp_path, 2, "--rows '5' is not a row range", tmp_path / "a.npy", "-o", out, "--rows", "5", keep=keep)
    fails(cli, tmp_path, 2, "Invalid value for '--dtype'", tmp_path / "a.npy", "-o", out, "--dtype", "int8", keep=keep)
    fails(cli, tmp_path, 2, "refusing to overwrite an input", tmp_path / "a.npy", "-o", tmp_path / "a.npy", keep=keep)
    fails(cli, tmp_path, 3, "--tokens last needs sequence offsets", tmp_path / "a.npy", "-o", out, "--tokens", "last",
          keep=keep)
    fails(cli, tmp_path, 3, "--classes needs labels", tmp_path / "a.npy", "-o", out, "--classes", "1", keep=keep)
    fails(cli, tmp_path, 3, "--stratify needs labels", tmp_path / "a.npy", "-o", out, "--sample", "2", "--stratify", keep=keep)
    fails(cli, tmp_path, 3, "--append needs an existing dump", tmp_path / "a.npy", "-o", out, "--append", keep=keep)
    assert cli("extract", tmp_path / "a.npy", "-o", out)[0] == 0
    before = out.read_bytes()
    keep = {"a.npy", "o.h5"}
    fails(cli, tmp_path, 3, "layer 'a' is (3 units, float64) in the dump but (3 units, float16)", tmp_path / "a.npy",
          "-o", out, "--append", "--dtype", "float16", keep=keep)
    np.savez(tmp_path / "b.npz", b=rng.standard_normal((5, 3)))
    fails(cli, tmp_path, 3, "the dump has layers ['a'], the new rows ['b']", tmp_path / "b.npz", "-o", out, "--append",
          keep=keep | {"b.npz"})
    assert out.read_bytes() == before


def test_labels_and_offsets_options_name_arrays_of_any_container(cli, tmp_path, rng):
    X, target = rng.standard_normal((12, 3)), rng.integers(0, 4, 12)
    np.savez(tmp_path / "d.npz", x=X, target=target, bounds=np.array([0, 5, 12]))
    code, _, err = cli("extract", tmp_path / "d.npz", "-o", tmp_path / "out.h5", "--labels", "target", "--offsets", "bounds",
                       "--tokens", "last")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/x"], X[[4, 11]])
    np.testing.assert_array_equal(out["rows/label"], target[[4, 11]])
    fails(cli, tmp_path, 3, "no array 'y2' in", tmp_path / "d.npz", "-o", tmp_path / "o.h5", "--labels", "y2",
          keep={"d.npz", "out.h5"})


def test_output_through_a_symlink_writes_the_target(cli, tmp_path, rng):
    np.save(tmp_path / "a.npy", rng.standard_normal((5, 3)))
    np.savez(tmp_path / "b.npz", a=rng.standard_normal((5, 3)))
    (tmp_path / "real").mkdir()
    (tmp_path / "link.h5").symlink_to(tmp_path / "real" / "dump.h5")
    assert cli("extract", tmp_path / "a.npy", "-o", tmp_path / "real" / "dump.h5")[0] == 0
    code, _, err = cli("extract", tmp_path / "b.npz", "-o", tmp_path / "link.h5", "--append")
    assert code == 0, err
    assert (tmp_path / "link.h5").is_symlink() and read(tmp_path / "real" / "dump.h5")["attrs"]["n_rows"] == 10


def test_streamed_offsets_are_stored_in_large_chunks(tmp_path):
    """One HDF5 chunk per boundary would make every later read of the offsets slow and large."""
    with DumpWriter(tmp_path / "t.h5", layers={"x": 2}, level="token") as writer:
        for _ in range(3):
            writer.append({"x": np.zeros((6, 2))})
            writer.add_sequences([2, 4])
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert f["sequences/offsets"].chunks[0] >= 4096
        np.testing.assert_array_equal(f["sequences/offsets"][()], [0, 2, 6, 8, 12, 14, 18])



def test_an_actgeom_dump_keeps_its_classifier_predictions_label_names_and_identity(cli, tmp_path, rng):
    X, y, pred = rng.standard_normal((40, 4)), rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    W, b = rng.standard_normal((3, 4)), rng.standard_normal(3)
    with DumpWriter(tmp_path / "in.h5", layers={"fc": 4, "head_in": 4}, dtype="float64",
                    label_names=["cat", "dog", "eel"], model="mlp", checkpoint="epoch3", step=3) as writer:
        writer.append({"fc": X * 2, "head_in": X}, labels=y, prediction=pred)
        writer.set_classifier(W, b, layer="head_in")
    code, _, err = cli("extract", tmp_path / "in.h5", "-o", tmp_path / "out.h5", "--sample", "10", "--seed", "2")
    assert code == 0, err
    with Dump(tmp_path / "out.h5") as d:
        rows = np.flatnonzero(np.isin(X[:, 0], d.read_rows("head_in")[:, 0]))
        assert rows.size == 10
        np.testing.assert_array_equal(d.predictions(), pred[rows])
        np.testing.assert_array_equal(d.labels(), y[rows])
        assert d.label_names() == ["cat", "dog", "eel"] and d.classifier_layer == "head_in"
        assert (d.attrs["model"], d.attrs["checkpoint"], d.attrs["step"]) == ("mlp", "epoch3", 3)
        weight, bias = d.classifier()
        np.testing.assert_array_equal(weight, W)
        np.testing.assert_array_equal(bias, b)


def test_the_rows_of_an_incomplete_dump_with_allow_incomplete(cli, tmp_path, rng):
    X = rng.standard_normal((30, 3))
    with DumpWriter(tmp_path / "in.h5", layers={"a": 3, "b": 3}, dtype="float64") as writer:
        writer.append({"a": X, "b": X})
    with h5py.File(tmp_path / "in.h5", "r+") as f:  # a writer that stopped after growing layer a further
        f.attrs["complete"] = False
        f["activations/a"].resize(35, axis=0)
    fails(cli, tmp_path, 3, "incomplete dump", tmp_path / "in.h5", "-o", tmp_path / "out.h5", keep={"in.h5"})
    code, _, err = cli("extract", tmp_path / "in.h5", "-o", tmp_path / "out.h5", "--allow-incomplete")
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    np.testing.assert_array_equal(out["activations/a"], X)
    assert out["attrs"]["complete"]


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("tokens", ["all", "last", "mean"])
def test_an_attention_mask_leaves_padding_out(cli, tmp_path, rng, left, tokens):
    """A padded batch cache (S, T, D) with its attention mask: only real tokens are rows."""
    S, T = 5, 6
    lengths = np.array([6, 3, 1, 4, 2])
    mask = np.arange(T)[None, :] < lengths[:, None]
    if left:
        mask = mask[:, ::-1]
    X, ids = rng.standard_normal((S, T, 3)), rng.integers(1, 100, (S, T))
    ids[~mask] = 0
    np.savez(tmp_path / "cache.npz", resid=X, attention_mask=mask.astype(np.int64), input_ids=ids, labels=np.arange(S))
    code, _, err = cli("extract", tmp_path / "cache.npz", "-o", tmp_path / "out.h5", "--tokens", tokens)
    assert code == 0, err
    out = read(tmp_path / "out.h5")
    real = [X[s][mask[s]] for s in range(S)]
    expected = {"all": np.concatenate(real), "last": np.stack([r[-1] for r in real]),
                "mean": np.stack([r.mean(axis=0) for r in real])}[tokens]
    np.testing.assert_allclose(out["activations/resid"], expected, rtol=POOLED_RTOL)
    if tokens == "all":
        np.testing.assert_array_equal(out["rows/token_id"], ids[mask])  # no padding id
        np.testing.assert_array_equal(out["sequences/offsets"], offsets_of(lengths))
        np.testing.assert_array_equal(out["rows/label"], np.repeat(np.arange(S), lengths))
    else:
        np.testing.assert_array_equal(out["rows/label"], np.arange(S))
