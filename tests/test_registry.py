"""Common tests over every metric registry (scikit-learn's test_common.py is the model)."""

from __future__ import annotations

import ast
import glob
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import class_data, write_dump

import actgeom
from actgeom.core.analysis import REGISTRIES
from actgeom.core.dump import DumpWriter

ROOT = Path(__file__).parent.parent
METRICS = [metric for registry in REGISTRIES.values() for metric in registry.values()]
SEEDS = [0, 1, 2]
# An exact invariance leaves a number unchanged up to rounding: eigensolvers and pairwise sums of
# transformed float64 data agree to ~1e-12 relative; 1e-8 leaves room for conditioning of C−1 < D.
INVARIANCE_RTOL = 1e-8
INVARIANCE_ATOL = 1e-10


def _test_functions() -> dict[str, str]:
    """Source of every test function, by "tests/file.py::name"."""
    found = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found[f"tests/{path.name}::{node.name}"] = ast.get_source_segment(text, node)
    return found


TESTS = _test_functions()
REFERENCES = "".join(Path(p).read_text() for p in glob.glob(str(ROOT / "tests" / "reference*.py")))


def test_names_are_unique_across_families():
    names = [metric.name for metric in METRICS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_every_metric_is_defined_sourced_and_checked(metric):
    assert metric.formula and metric.source, "every metric has a one-line definition and a source"
    assert metric.compute.__doc__ and len(metric.compute.__doc__.strip()) > 20, "its function documents the formula"
    assert bool(metric.test) != bool(metric.exempt), "a test that checks it, or a stated exemption"
    if metric.test:
        assert metric.test in TESTS, f"{metric.test} does not exist"
        body = TESTS[metric.test]
        # by name, or through assert_metrics_close, which fails when a computed metric has no reference value
        looks = metric.name in body or "assert_metrics_close" in body
        assert looks, f"{metric.test} does not look at {metric.name}"
    else:
        assert metric.diagnostic, "only diagnostic numbers (counts, sizes) may go without a check"


def test_the_metric_reference_is_generated_from_the_registries():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "generate_metrics.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    text = (ROOT / "docs" / "metrics.md").read_text()
    for metric in METRICS:
        assert f"| `{metric.name}` |" in text


def test_the_readme_lists_every_metric_and_links_the_reference():
    readme = (ROOT / "README.md").read_text()
    missing = [metric.name for metric in METRICS if f"`{metric.name}`" not in readme]
    assert not missing, f"README.md does not list {missing}"
    assert "docs/metrics.md" in readme


def _transformed(X, W, b, kind: str, rng):
    """Rows and classifier after a transformation, the classifier moved along (logits unchanged)."""
    D = X.shape[1]
    A, t, s = np.eye(D), np.zeros(D), 1.0
    if kind == "scale":
        s = 3.7
    elif kind == "rotation":
        A = np.linalg.qr(rng.standard_normal((D, D)))[0]
    elif kind == "shift":
        t = 25.0 * rng.standard_normal(D)
    else:  # affine
        A, t = rng.standard_normal((D, D)) + 2.0 * np.eye(D), 5.0 * rng.standard_normal(D)
    A_inv = np.linalg.inv(A)
    if kind == "scale":
        return s * X, W, b
    return X @ A.T + t, W @ A_inv, b - W @ A_inv @ t


def _write(path, X, y, W, b, predictions):
    with DumpWriter(path, layers={"h": X.shape[1]}, dtype="float64") as writer:
        writer.append({"h": X}, labels=y, prediction=predictions)
        writer.set_classifier(W, b, layer="h")
    return path


@pytest.mark.parametrize("seed", SEEDS)
def test_declared_invariances_hold(tmp_path, seed):
    """Every metric keeps its value under each transformation it declares, over several seeds
    (non-negative rows, so that activity metrics are meaningful; threshold 0)."""
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [60, 45, 30, 50], 7, offset=2.0, spread=1.5)
    X = np.abs(X)
    W, b = rng.standard_normal((4, 7)), rng.standard_normal(4)
    predictions = rng.integers(0, 4, y.size)
    options = {"entropy": {"threshold": 0.0, "subsample": 120, "sigma": 4.0}, "rank": {"subsample": 120}}
    base = actgeom.analyze(_write(tmp_path / "base.h5", X, y, W, b, predictions), options=options).files()
    checked = 0
    for kind in ("scale", "rotation", "shift", "affine"):
        Xt, Wt, bt = _transformed(X, W, b, kind, rng)
        got = actgeom.analyze(_write(tmp_path / f"{kind}.h5", Xt, y, Wt, bt, predictions), options=options).files()
        for metric in METRICS:
            if kind in metric.invariant and metric.name in base[0]["layers"][0]["metrics"]:
                before, after = base[0]["layers"][0]["metrics"][metric.name], got[0]["layers"][0]["metrics"][metric.name]
                assert after == pytest.approx(before, rel=INVARIANCE_RTOL, abs=INVARIANCE_ATOL), (metric.name, kind)
                checked += 1
    assert checked > 100  # the loop did compare (so the test can fail)


def test_a_false_invariance_would_be_caught(tmp_path, rng):
    """The check above can fail: shifts change mean_cosine, which does not declare them."""
    X, y = class_data(rng, [40, 40], 5, offset=1.0)
    a = actgeom.rank(write_dump(tmp_path / "a.h5", {"h": X}, labels=y)).metric("mean_cosine")
    b = actgeom.rank(write_dump(tmp_path / "b.h5", {"h": X + 10.0}, labels=y)).metric("mean_cosine")
    assert "shift" not in REGISTRIES["rank"]["mean_cosine"].invariant
    assert b != pytest.approx(a, rel=INVARIANCE_RTOL)


def test_every_metric_is_finite_on_sample_data():
    """Real activations: every metric whose needs are met is a finite number."""
    paths = sorted(glob.glob(str(ROOT / "sample_data" / "*.h5")))
    result = actgeom.analyze(paths, options={"entropy": {"subsample": 500}})
    for file in result.files():
        for layer in file["layers"]:
            assert not layer["nonfinite"], (file["file"], layer["layer"], layer["nonfinite"])
            for name, value in layer["metrics"].items():
                values = value if isinstance(value, list) else [value]
                assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), name
    computed = {name for file in result.files() for layer in file["layers"] for name in layer["metrics"]}
    # what sample_data cannot give: no SAE width, no token-level sequences, no attention; dse_error: slq only
    unavailable = {"superposition_ratio", "prompt_entropy", "attention_entropy", "attention_entropy_per_head", "dse_error"}
    assert {m.name for m in METRICS if m.family in ("collapse", "rank", "entropy")} - computed == unavailable

