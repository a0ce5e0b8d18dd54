"""Reading and writing dumps: exact decoding, layer discovery and order, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_dump, write_h5

from actgeom.core.base.errors import InvalidInputError, UsageError
from actgeom.core.dump import Dump, DumpSpec, DumpWriter
from actgeom.core.dump.hdf5 import decode_bfloat16
from actgeom.core.dump.writer import encode_bfloat16


def test_bfloat16_decodes_exactly(tmp_path):
    bits = np.arange(0, 1 << 16, dtype=np.uint16)  # every bfloat16 value, NaNs included
    decoded = decode_bfloat16(bits)
    finite = np.isfinite(decoded)
    # a bfloat16 is the top half of a float32: the low 16 bits of the decoded value are zero
    assert np.all(decoded.view(np.uint32)[finite] & 0xFFFF == 0)
    np.testing.assert_array_equal(encode_bfloat16(decoded[finite]), bits[finite])
    assert decode_bfloat16(np.array([0x3F80, 0xC000], dtype=np.uint16)).tolist() == [1.0, -2.0]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_round_trip_every_dtype(tmp_path, rng, dtype):
    X = rng.standard_normal((50, 6))
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, chunk_rows=7, batch=13)
    with Dump(path) as dump:
        got = dump.read_rows("h")
        assert dump.layers[0].logical_dtype == dtype
    expected = decode_bfloat16(encode_bfloat16(X)) if dtype == "bfloat16" else X.astype(dtype)
    np.testing.assert_array_equal(got, expected)


def test_layers_in_natural_order_and_globs(tmp_path, rng):
    layers = {f"layer_{i}": rng.standard_normal((5, 2)) for i in (10, 2, 1)}
    path = write_dump(tmp_path / "d.h5", layers)
    with Dump(path) as dump:
        assert [layer.name for layer in dump.layers] == ["layer_1", "layer_2", "layer_10"]
    with Dump(path, DumpSpec(layers=("layer_1*",))) as dump:
        assert [layer.name for layer in dump.layers] == ["layer_1", "layer_10"]


def test_foreign_file_discovered_by_convention(tmp_path, rng):
    path = write_h5(tmp_path / "f.h5", {"feats/a": rng.standard_normal((8, 3)), "feats/b": rng.standard_normal((8, 4)),
                                        "y": np.arange(8) % 2})
    with Dump(path) as dump:
        assert [layer.path for layer in dump.layers] == ["feats/a", "feats/b"]
        assert dump.labels_path == "y" and not dump.is_actgeom
        np.testing.assert_array_equal(dump.labels(), np.arange(8) % 2)


def test_foreign_file_with_ambiguous_layers_asks_for_layers(tmp_path, rng):
    path = write_h5(tmp_path / "f.h5", {"a": rng.standard_normal((8, 3)), "b": rng.standard_normal((9, 3))})
    with pytest.raises(InvalidInputError, match="cannot tell which datasets .* are layers .* --layers"):
        Dump(path)


def test_writer_leaves_nothing_behind_on_error(tmp_path, rng):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with DumpWriter(target, layers={"h": 3}) as writer:
            writer.append({"h": rng.standard_normal((4, 3))})
            raise RuntimeError("crash in the middle of a dump")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_inconsistent_batches(tmp_path, rng):
    with DumpWriter(tmp_path / "out.h5", layers={"h": 3, "g": 2}) as writer:
        with pytest.raises(UsageError, match="every layer"):
            writer.append({"h": rng.standard_normal((4, 3))})
        with pytest.raises(UsageError, match="different row counts"):
            writer.append({"h": rng.standard_normal((4, 3)), "g": rng.standard_normal((5, 2))})
        writer.append({"h": rng.standard_normal((4, 3)), "g": rng.standard_normal((4, 2))}, labels=[0, 1, 0, 1])
        with pytest.raises(UsageError, match="same row vectors"):
            writer.append({"h": rng.standard_normal((1, 3)), "g": rng.standard_normal((1, 2))})
    with Dump(tmp_path / "out.h5") as dump:
        assert dump.n_rows == 4 and dump.attrs["complete"] is True and dump.attrs["n_rows"] == 4


def test_writer_stores_provenance_classifier_and_sequences(tmp_path, rng):
    path = tmp_path / "tok.h5"
    with DumpWriter(path, layers={"h": 4}, level="token", model="gpt-tiny", checkpoint="c1", step=7,
                    label_names=["a", "b"]) as writer:
        writer.append({"h": rng.standard_normal((6, 4))}, labels=[0, 1, 0, 1, 1, -1], position=[0, 1, 2, 0, 1, 2],
                      token_id=[5, 6, 7, 5, 6, 7], sample_id=np.arange(6))
        writer.set_offsets([0, 3, 6])
        writer.set_classifier(rng.standard_normal((2, 4)), np.zeros(2), layer="h")
    with Dump(path) as dump:
        assert dump.attrs["model"] == "gpt-tiny" and dump.attrs["step"] == 7 and dump.attrs["level"] == "token"
        assert dump.attrs["created_by"].startswith("actgeom")
        assert dump.label_names() == ["a", "b"]
        assert dump.offsets().tolist() == [0, 3, 6]
        weight, bias = dump.classifier()
        assert weight.shape == (2, 4) and bias.tolist() == [0.0, 0.0] and dump.classifier_layer == "h"


def test_incomplete_dump_readable_when_allowed(tmp_path, rng):
    path = write_h5(tmp_path / "d.h5", {"activations/h": rng.standard_normal((5, 2))},
                    attrs={"format": "actgeom-dump", "format_version": 1, "complete": False})
    with pytest.raises(InvalidInputError, match="incomplete"):
        Dump(path)
    with Dump(path, DumpSpec(allow_incomplete=True)) as dump:
        assert dump.n_rows == 5
