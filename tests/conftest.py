"""Shared fixtures: small seeded dumps written in tmp_path, and a CLI runner."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from actgeom.cli.app import app
from actgeom.core.analysis import analyze_dump, family_options
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.state.accumulators import MomentsSpec, SampleSpec, UnitsSpec
from actgeom.core.state.engine import PassOptions

# Streamed vs in-memory float64: both exact to ~1e-13 in well-conditioned metrics; 1e-8 leaves room
# for ill-conditioned ones (pseudo-inverses, small eigenvalues of offset data).
METRIC_RTOL = 1e-8


def assert_metrics_close(got: dict, expected: dict, rtol: float = METRIC_RTOL, atol: float = 1e-12):
    """Every computed metric has a reference value and matches it (diagnostic counts excepted), so a
    metric added to a registry without a reference makes this fail."""
    from actgeom.core.analysis import REGISTRIES

    registered = {name: metric for registry in REGISTRIES.values() for name, metric in registry.items()}
    unchecked = {name for name in got if name in registered and not registered[name].diagnostic} - set(expected)
    assert not unchecked, f"no reference value for {sorted(unchecked)}"
    for name, value in expected.items():
        assert name in got, name
        assert got[name] == pytest.approx(value, rel=rtol, abs=atol), name


def every(reservoir: int = 0, seed: int = 0, threshold: float = 0.0) -> list:
    """The statistics `actgeom stats` keeps: class moments (+ unlabelled rows), unit statistics,
    and a seeded sample of ``reservoir`` rows."""
    return [MomentsSpec(by_class=True, all_rows=True), UnitsSpec(threshold=threshold)] + \
        ([SampleSpec(size=reservoir, seed=seed)] if reservoir else [])


def run_family(family: str, path, options=None, pass_options: PassOptions = PassOptions(), details: bool = False) -> dict:
    """One dump's record (file → layers → metrics) for one family, as every command computes it."""
    with Dump(path) as dump:
        return analyze_dump(dump, {family: options or family_options(family)}, pass_options=pass_options, details=details)


def class_data(rng: np.random.Generator, counts: list[int], n_units: int, *, offset: float = 0.0,
               spread: float = 1.0, separation: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Rows around class means (offset + separation·N(0,1)), with spread·N(0,1) noise, shuffled."""
    means = offset + separation * rng.standard_normal((len(counts), n_units))
    y = np.repeat(np.arange(len(counts)), counts)
    X = means[y] + spread * rng.standard_normal((y.size, n_units))
    order = rng.permutation(y.size)
    return X[order], y[order]


def write_dump(path, layers: dict[str, np.ndarray], *, dtype: str = "float64", labels=None, chunk_rows=None,
               batch: int | None = None, **row_vectors) -> str:
    """Write an actgeom dump; ``chunk_rows`` sets the HDF5 chunk height, ``batch`` the append size."""
    n_rows = next(iter(layers.values())).shape[0]
    widths = {name: X.shape[1] for name, X in layers.items()}
    itemsize = 2 if dtype in ("float16", "bfloat16") else np.dtype(dtype).itemsize
    chunk_bytes = (chunk_rows or 256) * max(widths.values()) * itemsize
    batch = batch or n_rows
    with DumpWriter(path, layers=widths, dtype=dtype, chunk_bytes=chunk_bytes, model="test") as writer:
        for start in range(0, n_rows, batch):
            stop = min(start + batch, n_rows)
            rows = {k: np.asarray(v)[start:stop] for k, v in row_vectors.items()}
            if labels is not None:
                rows["labels"] = np.asarray(labels)[start:stop]
            writer.append({name: X[start:stop] for name, X in layers.items()}, **rows)
    return str(path)


def write_h5(path, datasets: dict[str, np.ndarray], attrs: dict | None = None, dataset_attrs: dict | None = None) -> str:
    """Write a plain (foreign) HDF5 file: {path: array}, root attrs, {path: {attr: value}}."""
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
        f.attrs.update(attrs or {})
        for name, extra in (dataset_attrs or {}).items():
            f[name].attrs.update(extra)
    return str(path)


class Cli:
    """Runs the real app in-process; returns (exit code, stdout, stderr)."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str):
        result = self.runner.invoke(app, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    def json(self, *args: str):
        code, out, err = self(*args, "--format", "json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


class Reads(dict):
    """Block reads counted per layer name; ``files`` counts them per file name."""

    def __init__(self):
        super().__init__()
        self.files: dict[str, int] = {}


@pytest.fixture
def count_reads(monkeypatch) -> Reads:
    """Counts every read of rows (they all go through Dump.read_raw), per layer and per file."""
    from pathlib import Path

    reads = Reads()
    original = Dump.read_raw

    def counting(self, layer, start, stop, out):
        reads[layer.name] = reads.get(layer.name, 0) + 1
        reads.files[Path(self.path).name] = reads.files.get(Path(self.path).name, 0) + 1
        return original(self, layer, start, stop, out)

    monkeypatch.setattr(Dump, "read_raw", counting)
    return reads

