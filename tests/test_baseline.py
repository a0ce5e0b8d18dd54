"""Baseline dumps (#24 item 3): every metric beside the same metric of a control run, matched by
layer name, with the difference, its independent-samples jackknife interval and whether it excludes 0."""

from __future__ import annotations

import glob
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import class_data, write_dump

import actgeom
from actgeom.core import analysis
from actgeom.core.base.errors import OptionError
from actgeom.core.metrics.uncertainty import t_quantile

ROOT = Path(__file__).parent.parent
G = 8  # jackknife groups: few, so the tests stay fast


@pytest.fixture
def dumps(tmp_path, rng):
    """A trained-looking dump (separated classes, with predictions), a random one of the same layers
    (no predictions: NC4 unavailable there) and one whose layers have other names."""
    X, y = class_data(rng, [60, 50, 70, 40], 8, offset=2.0, separation=4.0)
    trained = write_dump(tmp_path / "trained.h5", {"a": X, "b": np.tanh(X[:, :5])}, labels=y, chunk_rows=32,
                         prediction=y)
    Z = rng.standard_normal((y.size, 8))
    random = write_dump(tmp_path / "random.h5", {"a": Z, "b": np.tanh(Z[:, :5])}, labels=rng.permutation(y), chunk_rows=32)
    other = write_dump(tmp_path / "other.h5", {"x": Z, "y": Z[:, :5]}, labels=y, chunk_rows=32)
    return {"trained": trained, "random": random, "other": other}


def _layers(result) -> list[dict]:
    return [layer for file in result.to_dict()["files"] for layer in file["layers"]]


def test_difference_and_se_equal_hand_computation_from_the_two_runs(dumps):
    file = actgeom.collapse(dumps["trained"], ci=True, ci_groups=G)
    base = actgeom.collapse(dumps["random"], ci=True, ci_groups=G)
    both = actgeom.collapse(dumps["trained"], ci=True, ci_groups=G, baseline=dumps["random"])
    t = t_quantile(G)
    checked = 0
    for mine, theirs, got in zip(_layers(file), _layers(base), _layers(both)):
        assert got["layer"] == mine["layer"] == theirs["layer"]
        assert got["metrics"] == mine["metrics"]  # the file's own numbers are untouched
        for metric, entry in got["baseline"].items():
            assert entry["baseline"] == theirs["metrics"][metric]
            assert entry["difference"] == mine["metrics"][metric] - theirs["metrics"][metric]
            if metric not in mine["intervals"] or metric not in theirs["intervals"]:
                assert set(entry) == {"baseline", "difference"}, metric
                continue
            se = math.sqrt(mine["intervals"][metric]["se"] ** 2 + theirs["intervals"][metric]["se"] ** 2)
            assert entry["difference_se"] == pytest.approx(se, rel=1e-12)
            assert entry["difference_ci_low"] == pytest.approx(entry["difference"] - t * se, rel=1e-12, abs=1e-15)
            assert entry["difference_ci_high"] == pytest.approx(entry["difference"] + t * se, rel=1e-12, abs=1e-15)
            assert entry["excludes_zero"] == (entry["difference_ci_low"] > 0 or entry["difference_ci_high"] < 0)
            checked += 1
    assert checked > 20
    vci = _layers(both)[0]["baseline"]["vci"]
    assert vci["difference"] < 0 and vci["excludes_zero"]  # separated classes vs random: far below the baseline


def test_a_baseline_identical_to_the_file_gives_zero_with_a_zero_paired_interval(dumps):
    result = actgeom.collapse(dumps["trained"], ci=True, ci_groups=G, baseline=dumps["trained"])
    document = result.to_dict()
    assert document["inference"]["baseline"] == [dumps["trained"]]
    assert document["files"][0]["baseline_file"] == dumps["trained"] and document["files"][0]["baseline_paired"]
    for layer in _layers(result):
        assert layer["baseline"] and "replicates" not in layer
        for metric, entry in layer["baseline"].items():
            assert entry["difference"] == 0.0, metric
            if "difference_se" in entry:  # the same rows on both sides: every θ₋g − θ_b,₋g is 0
                assert entry["difference_method"] == "paired" and entry["difference_se"] == 0.0
                assert entry["baseline_se"] == layer["intervals"][metric]["se"]
                assert entry["baseline_ci_low"] == layer["intervals"][metric]["ci_low"]
                assert entry["excludes_zero"] is False


def test_a_paired_difference_is_the_jackknife_of_the_per_group_differences(tmp_path, rng, dumps):
    """The same inputs through two networks: the paired se equals the jackknife formula applied to the
    differences of the metric computed directly on each side's rows outside each group."""
    from actgeom.core.metrics.uncertainty import jackknife
    from actgeom.core.state.groups import Grouping

    X, y = class_data(rng, [60, 50, 70, 40], 8, offset=2.0, separation=4.0)
    Z = np.tanh(X @ rng.standard_normal((8, 8)) / 3) + 0.3 * rng.standard_normal(X.shape)
    mine = write_dump(tmp_path / "mine.h5", {"a": X}, labels=y, chunk_rows=32)
    theirs = write_dump(tmp_path / "theirs.h5", {"a": Z}, labels=y, chunk_rows=32)
    got = actgeom.collapse(mine, ci=True, ci_groups=G, baseline=theirs).to_dict()["files"][0]
    assert got["baseline_paired"] is True
    group = Grouping(G, 0).of(np.arange(y.size))
    left_out = []
    for g in range(G):
        outside = group != g
        a = write_dump(tmp_path / f"a{g}.h5", {"a": X[outside]}, labels=y[outside])
        b = write_dump(tmp_path / f"b{g}.h5", {"a": Z[outside]}, labels=y[outside])
        left_out.append((_layers(actgeom.collapse(a))[0]["metrics"], _layers(actgeom.collapse(b))[0]["metrics"]))
    checked = 0
    for metric, entry in got["layers"][0]["baseline"].items():
        if "difference_se" not in entry:
            continue
        assert entry["difference_method"] == "paired"
        expected = jackknife(entry["difference"], [a[metric] - b[metric] for a, b in left_out])
        assert entry["difference_se"] == pytest.approx(expected["se"], rel=1e-10, abs=1e-14), metric
        assert entry["difference_ci_low"] == pytest.approx(expected["ci_low"], rel=1e-10, abs=1e-14), metric
        checked += 1
    assert checked >= 5


def test_a_baseline_of_other_rows_falls_back_to_independent(dumps):
    file = actgeom.collapse(dumps["trained"], ci=True, ci_groups=G, baseline=dumps["random"]).to_dict()["files"][0]
    assert file["baseline_paired"] is False  # the random dump's labels are a permutation: other units
    assert {entry.get("difference_method") for entry in file["layers"][0]["baseline"].values()} == {"independent"}


def test_diagnostic_metrics_get_no_difference(dumps):
    layer = _layers(actgeom.collapse(dumps["trained"], ci=True, ci_groups=G, baseline=dumps["random"]))[0]
    from actgeom.core.analysis import REGISTRIES

    diagnostic = {name for name, metric in REGISTRIES["collapse"].items() if metric.diagnostic}
    assert diagnostic & set(layer["metrics"]) and not diagnostic & set(layer["baseline"])


def test_without_intervals_only_the_baseline_and_the_difference(dumps):
    result = actgeom.rank(dumps["trained"], baseline=[dumps["random"]])
    for layer in _layers(result):
        assert layer["baseline"] and all(set(entry) == {"baseline", "difference"} for entry in layer["baseline"].values())
    assert actgeom.rank(dumps["trained"]).to_dict()["inference"]["baseline"] is None


def test_a_metric_the_baseline_lacks_is_listed_with_its_reason(dumps):
    layer = _layers(actgeom.collapse(dumps["trained"], baseline=dumps["random"]))[0]
    assert "nc4_mismatch" in layer["metrics"] and "nc4_mismatch" not in layer["baseline"]
    assert layer["baseline_unavailable"]["nc4_mismatch"].startswith("unavailable in the baseline: ")


def test_one_baseline_per_file_paired_in_order(dumps):
    result = actgeom.collapse([dumps["trained"], dumps["random"]], baseline=[dumps["random"], dumps["trained"]])
    files = result.to_dict()["files"]
    assert [f["baseline_file"] for f in files] == [dumps["random"], dumps["trained"]]
    forward = files[0]["layers"][0]["baseline"]["nc1"]["difference"]
    backward = files[1]["layers"][0]["baseline"]["nc1"]["difference"]
    assert forward == -backward != 0
    assert result.to_dict()["inference"]["baseline"] == [dumps["random"], dumps["trained"]]


def test_a_baseline_count_that_fits_neither_form_is_refused(dumps):
    paths = [dumps["trained"], dumps["random"], dumps["trained"]]
    with pytest.raises(OptionError, match=r"^baseline= takes one dump for every file or one per file in order: 2 given "
                                          r"for 3 files$") as caught:
        actgeom.collapse(paths, baseline=[dumps["random"], dumps["trained"]])
    assert caught.value.for_cli().startswith("--baseline takes one dump")


def test_a_baseline_without_a_layer_of_the_file_is_refused_before_any_pass(dumps, monkeypatch):
    monkeypatch.setattr(analysis, "analyze_dump", lambda *a, **k: pytest.fail("a pass ran"))
    with pytest.raises(OptionError, match=r"has no layer 'a' \(a layer of .*trained\.h5\); its layers: x, y$"):
        actgeom.collapse(dumps["trained"], baseline=dumps["other"])
    with pytest.raises(OptionError, match=r"^baseline='.*other\.h5' cannot be read as the files are: "
                                          r"no dataset matches --layers 'b'"):
        actgeom.collapse(dumps["trained"], layers="b", baseline=dumps["other"])


def test_a_shared_baseline_is_analysed_once_and_an_analysed_file_is_reused(dumps, monkeypatch):
    seen = []
    original = analysis.analyze_dump

    def counting(dump, *args, **kwargs):
        seen.append(dump.path.name)
        return original(dump, *args, **kwargs)

    monkeypatch.setattr(analysis, "analyze_dump", counting)
    result = actgeom.collapse([dumps["trained"], dumps["trained"]], baseline=dumps["random"])
    assert seen == ["trained.h5", "trained.h5", "random.h5"]
    assert result.to_dict()["inference"]["baseline"] == [dumps["random"]]  # each baseline once
    seen.clear()
    actgeom.collapse([dumps["trained"], dumps["random"]], baseline=dumps["random"])
    assert seen == ["trained.h5", "random.h5"]


@pytest.mark.parametrize("command", ["rank", "entropy", "neurons", "probe", "analyze"])
def test_every_analysis_function_takes_a_baseline(dumps, command):
    result = getattr(actgeom, command)(dumps["trained"], baseline=dumps["random"])
    document = result.to_dict()
    assert document["inference"]["baseline"] == [dumps["random"]]
    assert document["files"][0]["baseline_file"] == dumps["random"]
    assert any(layer["baseline"] for layer in document["files"][0]["layers"])


def test_the_readme_dead_salmon_example_prints_what_the_readme_shows(monkeypatch, capsys):
    """The README's baseline workflow on sample_data, run as it is: its output block is what it prints."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Is it more than noise?", 1)[1].split("\n## ", 1)[0]
    code, shown = re.search(r"```python\n(.*?)```\n\n```\n(.*?)```", section, re.S).groups()
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out == shown


def test_a_file_analysed_from_a_statistics_file_is_not_its_own_baseline(dumps, tmp_path):
    """Statistics of part of the rows (partial_ok) describe other rows than the dump: the baseline,
    though the same path, is analysed from the dump itself."""
    part = tmp_path / "part.npz"
    actgeom.stats(dumps["trained"], rows=(0, 120), save_stats=part)
    whole = actgeom.collapse(dumps["trained"])
    result = actgeom.collapse(dumps["trained"], stats=part, partial_ok=True, baseline=dumps["trained"])
    for layer, full in zip(_layers(result), _layers(whole)):
        assert layer["baseline"]["nc1"]["baseline"] == full["metrics"]["nc1"]
        assert layer["baseline"]["nc1"]["difference"] != 0


def test_the_readme_dead_salmon_command_prints_the_rows_the_readme_shows(cli, monkeypatch):
    """The README's `collapse --ci --baseline` command (run in-process): every row of its excerpt is a row it prints."""
    section = (ROOT / "README.md").read_text().split("## Is it more than noise?", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"```bash\nactgeom (collapse .*)\n```", section).group(1).split()
    shown = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith(("| option", "| `"))]
    monkeypatch.chdir(ROOT)
    args = [name for arg in command for name in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
    code, out, err = cli(*args, "--quiet")
    assert code == 0, err
    printed = set(out.splitlines())
    assert len(shown) >= 6 and [line for line in shown if line not in printed] == []
