"""The library face: one pass for several families, the Result views, Statistics from arrays."""

from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import class_data, write_dump

import actgeom
from actgeom.core.base.errors import OptionError, UsageError
from actgeom.core.dump import Dump, DumpWriter

ROOT = Path(__file__).parent.parent
# Combined vs separate passes: the same statistics, except that rank's total moments come from
# class moments plus the unlabelled rest instead of one class. The eigenvalues agree to ~3e-16·λ_max
# (what a float64 eigensolver promises), but rankme and erank take √λ: on the smallest kept eigenvalue
# of a rank-deficient layer that is ~4e-8 relative (sample_data epoch 30, hidden3: 50 of 64 non-zero),
# and rankme moved by 1.3e-12 with OpenBLAS 0.3.31. The other families' statistics are the same
# either way: their metrics agree to ~1e-13.
COMBINED_RTOL = {"collapse": 1e-12, "rank": 1e-11, "entropy": 1e-12}


def _synthetic(tmp_path, rng, *, predictions: bool):
    X, y = class_data(rng, [80, 60, 70, 40], 10, offset=5.0)
    extra = {"prediction": rng.integers(0, 4, y.size)} if predictions else {}
    return write_dump(tmp_path / "d.h5", {"a": np.abs(X), "b": np.abs(X[:, :6]) ** 1.5}, labels=y, chunk_rows=32,
                      **extra)


def _blocks(path) -> int:
    with Dump(path) as dump:
        layer = dump.layers[0]
        return -(-dump.n_rows // dump.block_rows(layer))


@pytest.mark.parametrize("predictions", [False, True])
def test_three_families_read_each_layer_once(tmp_path, rng, count_reads, predictions):
    """collapse + rank + entropy together: one read of every block of every layer (plus NC4's
    second pass when there is a decision source), and the numbers of the separate commands."""
    path = _synthetic(tmp_path, rng, predictions=predictions)
    options = {"entropy": {"threshold": 0.0, "subsample": 200}}
    combined = actgeom.analyze(path, options=options).files()[0]
    passes = 2 if predictions else 1
    assert count_reads == {"a": passes * _blocks(path), "b": passes * _blocks(path)}
    separate = {
        "collapse": actgeom.collapse(path), "rank": actgeom.rank(path),
        "entropy": actgeom.entropy(path, threshold=0.0, subsample=200),
    }
    for name, result in separate.items():
        for mine, theirs in zip(combined["layers"], result.files()[0]["layers"], strict=True):
            for metric, value in theirs["metrics"].items():
                assert mine["metrics"][metric] == pytest.approx(value, rel=COMBINED_RTOL[name], abs=1e-15), (name, metric)
            assert {k: v for k, v in mine["unavailable"].items() if k in theirs["unavailable"]} == theirs["unavailable"]


def test_sample_data_combined_equals_separate():
    paths = sorted(glob.glob(str(ROOT / "sample_data" / "*.h5")))
    combined = actgeom.analyze(paths, options={"entropy": {"subsample": 300}}).records()
    separate = {"collapse": actgeom.collapse(paths).records(), "rank": actgeom.rank(paths).records(),
                "entropy": actgeom.entropy(paths, subsample=300).records()}
    by_key = {(r["file"], r["layer"], r["metric"]): r["value"] for r in combined}
    assert len(by_key) == sum(len(records) for records in separate.values())
    for family, records in separate.items():
        for record in records:
            got = by_key[(record["file"], record["layer"], record["metric"])]
            if record["value"] is None or isinstance(record["value"], list):
                assert got == record["value"], record["metric"]
            else:
                assert got == pytest.approx(record["value"], rel=COMBINED_RTOL[family], abs=1e-15), record["metric"]


def test_readme_python_example_runs():
    """The README's Python block, run as it is (from the repository root)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import actgeom\n.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        exec(compile(block, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert namespace["table"].shape[0] > 0


def test_to_pandas_has_one_row_per_file_layer_metric():
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra; CI installs it")
    paths = sorted(glob.glob(str(ROOT / "sample_data" / "*.h5")))[:2]
    result = actgeom.collapse(paths)
    frame = result.to_pandas()
    n_metrics = len(actgeom.core.api.FAMILIES["collapse"].metrics)
    assert len(frame) == 2 * 3 * n_metrics
    assert not frame.duplicated(["file", "layer", "metric"]).any()
    assert set(frame.columns) == {"file", "checkpoint", "step", "layer", "family", "metric", "value", "note"}
    assert isinstance(frame, pd.DataFrame)


def test_python_errors_name_keywords_not_flags():
    with pytest.raises(OptionError, match=r"^fit_range=\(100, 12\) must be two ranks"):
        actgeom.rank(ROOT / "sample_data" / "digits_mlp_epoch0000.h5", fit_range=(100, 12))
    with pytest.raises(OptionError, match="families='probes' is not one of"):
        actgeom.analyze(ROOT / "sample_data" / "digits_mlp_epoch0000.h5", families=["probes"])


def test_statistics_from_arrays_equal_the_dump(tmp_path, rng):
    """Batches of arrays fed to Statistics give what a dump of the same rows gives."""
    X, y = class_data(rng, [50, 70, 30], 8, offset=2.0)
    X = np.abs(X)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    stats = actgeom.Statistics({"h": 8}, options={"entropy": {"threshold": 0.0, "subsample": 100}})
    for start in range(0, y.size, 37):
        stats.update({"h": X[start:start + 37]}, labels=y[start:start + 37])
    got = stats.metrics().files()[0]["layers"][0]["metrics"]
    expected = actgeom.analyze(path, options={"entropy": {"threshold": 0.0, "subsample": 100}}).files()[0]["layers"][0]
    for name, value in expected["metrics"].items():
        if name != "nc4_mismatch":  # NC4 needs a second pass over the rows: a dump
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
    assert "nc4_mismatch" not in got


def test_statistics_takes_torch_bfloat16():
    torch = pytest.importorskip("torch", reason="torch is an optional extra")
    values = torch.randn(20, 4).to(torch.bfloat16)
    stats = actgeom.Statistics({"h": 4}, families=("rank",))
    stats.update({"h": values})
    expected = values.float().numpy().astype(np.float64)
    assert stats.metrics().metric("participation_ratio") == pytest.approx(_participation_ratio(expected), rel=1e-12)


def _participation_ratio(X):
    lam = np.linalg.eigvalsh(np.cov(X.T, bias=True))
    return lam.sum() ** 2 / (lam**2).sum()


def test_cache_reads_only_new_or_changed_dumps(tmp_path, rng, count_reads):
    """Five checkpoints cached; adding a sixth re-reads only it; a changed option, a touched file or
    a corrupt entry is recomputed, never used."""
    reads = count_reads.files
    paths = []
    for i in range(6):
        X, y = class_data(rng, [30, 30, 30], 5, offset=float(i))
        paths.append(write_dump(tmp_path / f"ckpt{i}.h5", {"h": X}, labels=y, prediction=y))
    cache = tmp_path / "cache"
    first = actgeom.analyze(paths[:5], cache=cache).files()
    assert set(reads) == {f"ckpt{i}.h5" for i in range(5)}
    reads.clear()
    again = actgeom.analyze(paths, cache=cache).files()
    assert set(reads) == {"ckpt5.h5"}
    assert [f["layers"][0]["metrics"] for f in again[:5]] == [f["layers"][0]["metrics"] for f in first]
    reads.clear()
    actgeom.analyze(paths[:1], cache=cache, options={"collapse": {"min_count": 2}})
    assert set(reads) == {"ckpt0.h5"}  # another option: another key
    for entry in cache.glob("*.json"):
        entry.write_text("{ not json")
    reads.clear()
    assert actgeom.analyze(paths[1:2], cache=cache).files()[0]["layers"][0]["metrics"] == first[1]["layers"][0]["metrics"]
    assert set(reads) == {"ckpt1.h5"}


def test_metric_refuses_a_name_that_is_no_metric_and_gives_none_for_an_unavailable_one():
    """A typo raises naming the valid metrics (it used to give None, like a missing value); a
    metric that has no value on this layer is None, its reason in the layer's ``unavailable``."""
    result = actgeom.collapse(ROOT / "sample_data" / "digits_mlp_epoch1500.h5", layers="hidden1")
    layer = result.files()[0]["layers"][0]
    assert result.metric("nc1") == layer["metrics"]["nc1"] and isinstance(result.metric("nc1"), float)
    with pytest.raises(UsageError, match=r"^metric 'nc_1' is not one of layer 'hidden1''s metrics: .*\bnc1\b"):
        result.metric("nc_1", layer="hidden1")
    with pytest.raises(UsageError, match=r"^metric 'rankme' is not one of"):
        result.metric("rankme")  # a metric, but of a family this result did not compute
    assert "nc3_self_duality" in layer["unavailable"]  # the classifier reads hidden3
    assert result.metric("nc3_self_duality") is None


# -- info: the same key as every other document, attention listed, -q accepted (#22 item 16) ------

def _with_attention(tmp_path, rng) -> str:
    path = write_dump(tmp_path / "a.h5", {"h": rng.standard_normal((6, 3))}, labels=np.arange(6) % 2)
    probabilities = np.full((2, 2, 3, 3), 1 / 3, dtype=np.float32)
    with DumpWriter(path, layers={"h": 3}, append=True, dtype="float64") as writer:
        writer.append_attention("enc.0", probabilities)
    return path


def test_info_names_layers_layer_lists_attention_and_takes_quiet(cli, tmp_path, rng):
    path = _with_attention(tmp_path, rng)
    code, out, err = cli("info", path, "-q", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert [layer["layer"] for layer in doc["layers"]] == ["h"] and "name" not in doc["layers"][0]
    assert doc["attention"] == [{"path": "attention/enc.0", "shape": [2, 2, 3, 3], "dtype": "float64"}]
    code, out, _ = cli("info", path, "--format", "table", "--quiet")
    assert code == 0 and "attention/enc.0 (2×2×3×3, float64)" in out
    code, out, _ = cli("info", path, "--format", "csv")
    assert out.startswith("layer,path")


def test_dump_writer_names_the_row_vector_of_the_wrong_length(tmp_path):
    """Not "layers and row vectors have different row counts: [3, 4]" (#22 item 15)."""
    with pytest.raises(UsageError, match=r"^row vector 'labels' has 3 rows; the batch's layers have 4$"):
        with actgeom.DumpWriter(tmp_path / "d.h5", layers={"h": 2}) as writer:
            writer.append({"h": np.ones((4, 2))}, labels=[0, 1, 2])
    with pytest.raises(UsageError, match=r"^the batch's layers have different row counts: \{'a': 4, 'b': 3\}$"):
        with actgeom.DumpWriter(tmp_path / "d.h5", layers={"a": 2, "b": 2}) as writer:
            writer.append({"a": np.ones((4, 2)), "b": np.ones((3, 2))})
    assert list(tmp_path.iterdir()) == []


# -- every command is a function of `import actgeom` (#22 item 14) --------------------------------

LATE = ROOT / "sample_data" / "digits_mlp_epoch1500.h5"


def test_every_command_is_a_function_of_import_actgeom():
    from actgeom.cli.app import app

    commands = sorted(command.name for command in app.registered_commands)
    assert len(commands) >= 11  # info … report when this was written: an empty list cannot pass unseen
    assert [name for name in commands if not callable(getattr(actgeom, name, None))] == []
    assert [name for name in commands if name not in actgeom.__all__] == []


def test_info_function_is_the_commands_document(cli):
    assert actgeom.info(LATE) == cli.json("info", LATE)
    several = actgeom.info([LATE, LATE], layers="hidden3")
    assert [len(f["layers"]) for f in several["files"]] == [1, 1] and several["version"] == actgeom.__version__


def test_extract_function_writes_what_the_command_writes(cli, tmp_path):
    summary = actgeom.extract(LATE, tmp_path / "api.h5", layers="hidden3", sample=100, seed=1, stratify=True)
    assert (summary["n_rows_written"], summary["layers"]) == (100, ["hidden3"])
    code, _, err = cli("extract", LATE, "-o", tmp_path / "cli.h5", "--layers", "hidden3", "--sample", "100", "--seed", "1",
                       "--stratify")
    assert code == 0, err
    with Dump(tmp_path / "api.h5") as a, Dump(tmp_path / "cli.h5") as b:
        np.testing.assert_array_equal(a.read_rows("hidden3"), b.read_rows("hidden3"))
        np.testing.assert_array_equal(a.labels(), b.labels())


def test_stats_and_merge_functions_give_the_statistics_of_one_pass(tmp_path):
    halves = [actgeom.stats(LATE, rows=rows, layers="hidden3") for rows in ((0, 900), (900, 1797))]
    merged = actgeom.merge(halves, save_stats=tmp_path / "all.npz")
    assert merged.to_dict()["rows"] == [[0, 1797]] and [layer["n_rows"] for layer in merged.to_dict()["layers"]] == [1797]
    direct = actgeom.collapse(LATE, layers="hidden3").metric("nc1")
    assert actgeom.collapse(LATE, layers="hidden3", stats=tmp_path / "all.npz").metric("nc1") == pytest.approx(direct, rel=1e-12)
    halves[0].save(tmp_path / "first.npz")
    with pytest.raises(actgeom.InvalidInputError, match="overlap: rows would count twice"):
        actgeom.merge([tmp_path / "first.npz", halves[0]])


def test_report_function_returns_the_document_and_writes_the_page_only_when_asked(tmp_path):
    result = actgeom.report(LATE, families=["collapse"], layers="hidden3", cache=tmp_path / "cache")
    assert result.document["command"] == "report" and list(result.document["options"]) == ["collapse"]
    assert result.metric("nc1", layer="hidden3") == pytest.approx(actgeom.collapse(LATE, layers="hidden3").metric("nc1"),
                                                                   rel=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no page without output=
    again = actgeom.report(LATE, tmp_path / "r.html", families=["collapse"], layers="hidden3", cache=tmp_path / "cache")
    page = (tmp_path / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "hidden3" in page and again.to_dict()["files"] == result.to_dict()["files"]
