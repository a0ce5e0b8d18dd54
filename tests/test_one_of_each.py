"""Issue 23, "one of each": logic the core needs in several places is written once, and each copy's
callers get the numbers the one definition gives."""

from __future__ import annotations

import numpy as np
import pytest

from actgeom.core.base.stats import ClassStats, pooled


def _class_stats(X: np.ndarray, y: np.ndarray, k: int) -> ClassStats:
    counts = np.bincount(y, minlength=k)
    means = np.stack([X[y == c].mean(axis=0) for c in range(k)])
    dev = X - means[y]
    return ClassStats(counts=counts, means=means, within_scatter=dev.T @ dev,
                      sq_dev=np.bincount(y, weights=(dev**2).sum(axis=1), minlength=k))


def test_pooled_is_the_total_of_every_row_of_every_group(rng):
    """Total moments from class moments (rank's spectrum, the accumulators' total with the unlabelled
    rows, the probe's S_T): one function, equal to the moments of the rows."""
    X, y = rng.normal(size=(60, 4)) + 100.0, rng.integers(0, 3, 60)
    labelled = _class_stats(X[:40], y[:40], 3)
    rest = _class_stats(X[40:], np.zeros(20, dtype=np.int64), 1)
    total = pooled(labelled, rest)
    dev = X - X.mean(axis=0)
    assert total.counts.tolist() == [60]
    np.testing.assert_allclose(total.means[0], X.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(total.within_scatter, dev.T @ dev, rtol=1e-10)
    np.testing.assert_allclose(total.sq_dev, [(dev**2).sum()], rtol=1e-10)
    np.testing.assert_allclose(pooled(labelled).within_scatter, _scatter(X[:40]), rtol=1e-10)


def _scatter(X: np.ndarray) -> np.ndarray:
    dev = X - X.mean(axis=0)
    return dev.T @ dev


def test_one_total_moments_function():
    import actgeom.core.metrics.probesplit as probesplit
    import actgeom.core.state.accumulators as accumulators
    assert not hasattr(accumulators, "total_of") and not hasattr(probesplit, "total_scatter")


def test_one_tiled_argmax_for_nc4_and_the_probes(rng, monkeypatch):
    """NC4's nearest class mean and the probes' predictions use one tiled argmax: the argmax of the
    full score matrix (the first class on ties), whatever the tile size."""
    import actgeom.core.base.stats as stats
    import actgeom.core.metrics.probe as probe
    import actgeom.core.state.collapse_pass as collapse_pass
    assert collapse_pass.argmax_tiled is stats.argmax_tiled and probe.argmax_tiled is stats.argmax_tiled
    X, rows, offsets = rng.normal(size=(50, 3)), rng.normal(size=(7, 3)), rng.normal(size=7)
    rows[5], offsets[5] = rows[2], offsets[2]  # a tie: class 2 wins
    expected = np.argmax(X @ rows.T + offsets, axis=1)
    for tile_bytes in (1, 8 * 50 * 3, 1 << 20):
        monkeypatch.setattr(stats, "_TILE_BYTES", tile_bytes)
        np.testing.assert_array_equal(stats.argmax_tiled(X, rows, offsets), expected)


def test_one_prefixed():
    """The arrays of one part of a saved whole (partial statistics, compare moments) are picked by one
    function, accumulators.base.prefixed."""
    from pathlib import Path
    root = Path(__file__).parent.parent
    copies = [str(p.relative_to(root)) for p in sorted((root / "core").rglob("*.py")) if "key[len(" in p.read_text()]
    assert copies == ["core/state/accumulators/base.py"]


def test_dead_and_dormant_fractions_are_computed_once(rng):
    """entropy's dead_fraction/dormant_fraction and neurons' dead_unit_fraction/dormant_unit_fraction:
    two families' names for one computation (core/metrics/neurons.py), equal numbers."""
    import actgeom.core.metrics.entropy as entropy
    import actgeom.core.metrics.neurons as neurons
    from actgeom.core.base.row_stats import UnitStats
    assert entropy.dead_fraction is neurons.dead_fraction and entropy.dormant_fraction is neurons.dormant_fraction
    units = UnitStats(3, threshold=0.0)
    X = np.abs(rng.normal(size=(20, 3))) * [1.0, 0.01, 1.0]
    X[:, 2] = -1.0  # never above 0: dead
    units.update(X)
    activity = entropy.neuron_activity(units, tau=0.05)
    scores = neurons.dormant_scores(units.sum_abs, units.n_rows)
    assert activity["dead_fraction"] == neurons.dead_fraction(neurons.firing_rates(units.n_active, units.n_rows)) == 1 / 3
    assert activity["dormant_fraction"] == neurons.dormant_fraction(scores, 0.05) == 1 / 3


def test_tidy_records_of_a_layer_and_of_a_compare_cell_are_built_once():
    """Result.records (file × layer × metric) and CompareResult.records (cell × metric) both call
    result.tidy_rows: values, then unavailable metrics (value None, the reason as note), non-finite
    values noted."""
    from actgeom.core.base.result import Result
    from actgeom.core.compare import CompareResult
    record = {"metrics": {"a": 1.0, "b": float("nan")}, "unavailable": {"c": "why"}, "nonfinite": {"b": "nan"}}
    document = {"command": "x", "metrics_info": {"a": {"family": "f"}, "b": {"family": "f"}, "c": {"family": "g"}},
                "files": [{"file": "d.h5", "checkpoint": None, "step": 3, "layers": [{"layer": "h"} | record]}]}
    rows = Result(document).records()
    assert [(r["family"], r["metric"], r["note"]) for r in rows] == [("f", "a", None), ("f", "b", "nan"), ("g", "c", "why")]
    assert rows[2]["value"] is None
    assert list(rows[0]) == ["file", "checkpoint", "step", "layer", "family", "metric", "value", "note"]
    cell = {"file_a": "a.h5", "layer_a": "h", "file_b": "b.h5", "layer_b": "h"} | record
    rows = CompareResult({"pairs": [cell]}).records()
    assert [list(r) for r in rows] == [list(CompareResult.columns)] * 3
    assert [(r["metric"], r["value"] == 1.0, r["note"]) for r in rows] == [("a", True, None), ("b", False, "nan"),
                                                                         ("c", False, "why")]


def test_one_loop_collects_each_replicates_values_or_why_not():
    """The intervals (core/inference.py), the permutation nulls (core/nulls.py) and compare's
    intervals (core/compare/cells.py) gather each replicate's values through uncertainty.collect:
    a finite value is kept, anything else drops the metric with the replicate's reason."""
    from pathlib import Path

    from actgeom.core.metrics.uncertainty import collect, finite

    values, reasons = {"a": [1.0], "b": [2.0], "c": [3.0], "d": [4.0]}, {}
    collect(values, reasons, {"a": np.float64(1.5), "b": float("nan"), "c": True}, {"d": "needs two classes"},
            "without jackknife group 3", "its value is not finite without one group")
    assert values == {"a": [1.0, 1.5]}
    assert reasons == {"b": "no value without jackknife group 3: its value is not finite without one group",
                       "c": "no value without jackknife group 3: its value is not finite without one group",
                       "d": "no value without jackknife group 3: needs two classes"}
    assert finite(2) and finite(np.float64(0.5)) and not finite(None) and not finite([1.0]) and not finite(False)
    core = Path(__file__).resolve().parents[1] / "core"
    for module in ("inference.py", "nulls.py", "compare/cells.py", "baseline.py"):
        source = (core / module).read_text(encoding="utf-8")
        assert "def _finite" not in source and ("collect(" in source or module == "baseline.py"), module


def test_the_report_uses_the_one_tidy_records_and_the_one_across_files_step():
    """cli/report/summary.records is core/base/result.layer_records with the report's layer fields;
    cli/report/data.py takes the probe's across-files cosines from analysis.directions_across_files,
    keeping the other details its figures read."""
    from pathlib import Path

    import actgeom.cli.report.data as data
    import actgeom.cli.report.summary as summary
    from actgeom.core import analysis

    assert data.directions_across_files is analysis.directions_across_files
    assert "tidy_rows" not in Path(summary.__file__).read_text(encoding="utf-8")
    layer = {"layer": "h", "kind": "layer", "n_rows": 9, "n_units": 2, "metrics": {"a": 1.0}, "unavailable": {"b": "why"}}
    document = {"files": [{"file": "x.h5", "checkpoint": None, "step": 3, "layers": [layer]}], "metrics_info": {}}
    assert summary.records(document) == [
        {"file": "x.h5", "checkpoint": None, "step": 3, "layer": "h", "kind": "layer", "n_rows": 9, "n_units": 2,
         "metric": "a", "value": 1.0, "note": None},
        {"file": "x.h5", "checkpoint": None, "step": 3, "layer": "h", "kind": "layer", "n_rows": 9, "n_units": 2,
         "metric": "b", "value": None, "note": "why"}]
    files = [{"file": f, "layers": [{"layer": "h", "details": {"direction": np.array(d), "spectrum": [1.0]}}]}
             for f, d in (("a", [1.0, 0.0]), ("b", [1.0, 1.0]))]
    kept = analysis.directions_across_files({"files": files}, keep=False, other_details=True)
    assert kept["direction_cosines_across_files"][0]["cosine"] == pytest.approx(2**-0.5, rel=1e-15)
    assert [layer["details"] for file in kept["files"] for layer in file["layers"]] == [{"spectrum": [1.0]}] * 2
