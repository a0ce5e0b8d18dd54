"""Corrupted dumps for the property-based tests (tests/test_fuzz.py, benchmarks/fuzz_long.py).

A valid small dump is written, then one or more mutations from :data:`MUTATIONS` damage it
(truncation, flipped bytes, datasets and attributes deleted, retyped, reshaped or refilled);
:func:`check_command` runs a command on the result through the CLI and checks the contract:
exit code 0, 2 or 3; no traceback; no output file where the command failed; no temporary
file left; the input byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import h5py
import numpy as np
from hypothesis import strategies as st
from typer.testing import CliRunner

from actgeom.cli.app import app
from actgeom.core.dump import DumpWriter

COMMANDS = {
    "info": [],
    "collapse": [],
    "rank": ["--subsample", "20"],
    "entropy": ["--subsample", "20", "--threshold", "0"],
    "stats": ["--save-stats", "{out_npz}"],
    "neurons": [],
    "probe": [],
    "compare": ["{path}"],  # the dump against itself
    "report": ["--results", "{out_npz}.json", "--subsample", "20"],
}
ALLOWED_EXIT_CODES = {0, 2, 3}

DATASETS = ["activations/h1", "activations/h2", "rows/label", "rows/prediction", "classifier/weight",
            "classifier/bias", "sequences/offsets", "attention/l0"]
ROOT_ATTRS = ["format", "format_version", "complete", "n_rows", "model", "checkpoint", "step", "level"]


def write_valid(path: Path, seed: int, *, token_level: bool) -> None:
    """A small valid dump: 2 layers, labels, predictions, classifier (and sequences + attention)."""
    rng = np.random.default_rng(seed)
    n_rows, n_classes = 24, 3
    y = np.arange(n_rows) % n_classes
    means = 3 * rng.standard_normal((n_classes, 4))
    h1 = means[y] + rng.standard_normal((n_rows, 4))
    h2 = np.maximum(h1[:, :3], 0)
    with DumpWriter(path, layers={"h1": 4, "h2": 3}, dtype="float32", model="fuzz",
                    level="token" if token_level else "sample") as writer:
        writer.append({"h1": h1, "h2": h2}, labels=y, prediction=(y + (np.arange(n_rows) % 7 == 0)) % n_classes)
        writer.set_classifier(rng.standard_normal((n_classes, 3)), rng.standard_normal(n_classes), layer="h2")
    if token_level:
        with h5py.File(path, "r+") as f:
            f["sequences/offsets"] = np.array([0, 6, 12, 18, 24], dtype=np.int64)
            logits = rng.standard_normal((4, 2, 6, 6))
            causal = np.tril(np.ones((6, 6), dtype=bool))
            e = np.where(causal, np.exp(logits), 0.0)
            f["attention/l0"] = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


# -- mutations: each takes (path, draw) and damages the file in place ----------------------------
def _truncate(path: Path, draw) -> str:
    size = path.stat().st_size
    keep = draw(st.integers(0, size - 1))
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    return f"truncate to {keep} of {size} bytes"


def _flip_bytes(path: Path, draw) -> str:
    data = bytearray(path.read_bytes())
    n = draw(st.integers(1, 16))
    places = [draw(st.integers(0, len(data) - 1)) for _ in range(n)]
    for place in places:
        data[place] = draw(st.integers(0, 255))
    path.write_bytes(bytes(data))
    return f"flip bytes at {places}"


def _delete_dataset(path: Path, draw) -> str:
    name = draw(st.sampled_from(DATASETS))
    with h5py.File(path, "r+") as f:
        if name in f:
            del f[name]
    return f"delete {name}"


_REPLACEMENTS = {
    "int": lambda shape: np.zeros(shape, dtype=np.int32),
    "uint8": lambda shape: np.full(shape, 255, dtype=np.uint8),
    "bool": lambda shape: np.ones(shape, dtype=bool),
    "float16": lambda shape: np.ones(shape, dtype=np.float16),
    "float64-nan": lambda shape: np.full(shape, np.nan),
    "float64-inf": lambda shape: np.full(shape, -np.inf),
    "float64-huge": lambda shape: np.full(shape, 1e300),
    "negative": lambda shape: np.full(shape, -5, dtype=np.int64),
    "big-int": lambda shape: np.full(shape, 10**12, dtype=np.int64),
    "bytes": lambda shape: np.full(shape, b"x", dtype="S3"),
}


def _shape_variant(shape: tuple, draw) -> tuple:
    choice = draw(st.sampled_from(["same", "scalar", "empty", "1-D", "3-D", "transposed", "longer", "shorter"]))
    if choice == "scalar":
        return ()
    if choice == "empty":
        return (0,) + tuple(shape[1:])
    if choice == "1-D":
        return (int(np.prod(shape)) or 1,)
    if choice == "3-D":
        return (*shape, 2)
    if choice == "transposed":
        return tuple(reversed(shape))
    if choice in ("longer", "shorter") and shape:
        return (max(shape[0] + (5 if choice == "longer" else -5), 0), *shape[1:])
    return tuple(shape)


def _retype_dataset(path: Path, draw) -> str:
    name = draw(st.sampled_from(DATASETS))
    kind = draw(st.sampled_from(sorted(_REPLACEMENTS)))
    with h5py.File(path, "r+") as f:
        if name not in f:
            return f"retype {name}: absent"
        shape = _shape_variant(f[name].shape, draw)
        attrs = dict(f[name].attrs)
        del f[name]
        f[name] = _REPLACEMENTS[kind](shape)
        f[name].attrs.update(attrs)
    return f"retype {name} as {kind} {shape}"


def _refill_values(path: Path, draw) -> str:
    """Keep shape and dtype, change some values to hostile ones."""
    name = draw(st.sampled_from(DATASETS))
    with h5py.File(path, "r+") as f:
        if name not in f or f[name].size == 0:
            return f"refill {name}: absent"
        ds = f[name]
        values = ds[()]
        flat = values.reshape(-1)
        index = draw(st.integers(0, flat.size - 1))
        if values.dtype.kind == "f":
            flat[index] = draw(st.sampled_from([np.nan, np.inf, -1.0, 1e38, 0.0, 2.0]))
        else:
            flat[index] = draw(st.sampled_from([-7, -1, 0, 3, 99, 2**31 - 1]))
        ds[...] = values
    return f"refill {name}[{index}]"


def _delete_attribute(path: Path, draw) -> str:
    key = draw(st.sampled_from(ROOT_ATTRS + ["logical_dtype", "layer", "label_names"]))
    with h5py.File(path, "r+") as f:
        for obj in [f, *[f[d] for d in DATASETS if d in f], *[f[g] for g in ("classifier",) if g in f]]:
            if key in obj.attrs:
                del obj.attrs[key]
    return f"delete attribute {key}"


_ATTRIBUTE_VALUES = [
    "actgeom-dump", "", "\x1b[2Jevil", -1, 0, 2, 10**9, 2.5, True, False, np.arange(3), np.zeros(3000),
    np.array([b"a", b"b"]), "bfloat16", "h1", "nope", "[\"a\", 1, null]", "not json",
]


def _retype_attribute(path: Path, draw) -> str:
    key = draw(st.sampled_from(ROOT_ATTRS + ["logical_dtype", "layer", "label_names"]))
    value = draw(st.sampled_from(range(len(_ATTRIBUTE_VALUES))))
    with h5py.File(path, "r+") as f:
        where = f
        if key == "logical_dtype" and "activations/h1" in f:
            where = f["activations/h1"]
        elif key == "layer" and "classifier" in f:
            where = f["classifier"]
        elif key == "label_names" and "rows/label" in f:
            where = f["rows/label"]
        where.attrs[key] = _ATTRIBUTE_VALUES[value]
    return f"set attribute {key}={_ATTRIBUTE_VALUES[value]!r:.40}"


MUTATIONS = {
    "truncate": _truncate, "flip_bytes": _flip_bytes, "delete_dataset": _delete_dataset,
    "retype_dataset": _retype_dataset, "refill_values": _refill_values, "delete_attribute": _delete_attribute,
    "retype_attribute": _retype_attribute,
}


# A mutation may fail: the file is already too broken for h5py to edit, or a value does not fit
# the dtype an earlier mutation gave the dataset. The step is then recorded as skipped.
_EDIT_FAILURES = (OSError, KeyError, ValueError, TypeError, OverflowError)


@st.composite
def corrupted_dump(draw, directory: Path):
    """(path, description): a valid dump damaged by 1–3 mutations (file-level ones last)."""
    path = directory / "dump.h5"
    for stale in directory.iterdir():
        stale.unlink()
    write_valid(path, draw(st.integers(0, 3)), token_level=draw(st.booleans()))
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1, max_size=3))
    names.sort(key=lambda name: name in ("truncate", "flip_bytes"))  # h5py cannot reopen a broken file
    steps = []
    for name in names:
        try:
            steps.append(MUTATIONS[name](path, draw))
        except _EDIT_FAILURES as exc:
            steps.append(f"{name}: skipped ({type(exc).__name__})")
    return path, "; ".join(steps)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_command(runner: CliRunner, command: str, path: Path, description: str) -> int:
    """Run one command on a (corrupted) dump and assert the safety contract; return its exit code."""
    before = digest(path)
    out_json, out_npz = path.parent / "out.json", path.parent / "out.npz"
    out_npz_json = path.parent / "out.npz.json"
    args = [command, str(path), *[a.format(out_npz=out_npz, path=path) for a in COMMANDS[command]], "-o", str(out_json)]
    result = runner.invoke(app, args)
    context = f"actgeom {' '.join(args)} after {description}"
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"{context}: {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code in ALLOWED_EXIT_CODES, f"{context}: exit {result.exit_code}: {result.stderr}"
    assert "Traceback" not in result.stderr, f"{context}: {result.stderr}"
    if result.exit_code != 0:  # progress lines may come first (a slow machine): then exactly one error line
        lines = [line for line in result.stderr.splitlines() if not line.startswith("actgeom: ")]
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{context}: {result.stderr!r}"
        assert not any(p.exists() for p in (out_json, out_npz, out_npz_json)), f"{context}: an output was left after a failure"
    assert digest(path) == before, f"{context}: the input changed"
    left = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert not left, f"{context}: temporary files left: {left}"
    for output in (out_json, out_npz, out_npz_json):
        output.unlink(missing_ok=True)
    return result.exit_code
