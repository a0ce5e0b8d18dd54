"""`actgeom ood --ci` (#26 with #24): twin g of the OOD model is the model refitted without group g
of the fit rows, scoring the rows outside group g of each scored dump (each dump grouped by its own
rows, or whole sequences). Each twin's metrics equal the ood command on dumps written without the
group's units; the intervals are their jackknife; --backend dask gives the local numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dask import HAS_DASK, _dask, cluster  # noqa: F401  (cluster: the Dask tests' LocalCluster fixture)
from typer.testing import CliRunner

from actgeom.cli.app import app
from actgeom.core import api
from actgeom.core.analysis import facts_of, family_options, layer_context, other_dump_pass, second_pass_consumers, specs_for
from actgeom.core.backends import open_backend
from actgeom.core.base.errors import OptionError
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.families import ood as ood_family
from actgeom.core.metrics.uncertainty import jackknife
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.groups import Grouping

G, SEED = 4, 3
MODEL = dict(knn_sample=10_000, knn_k=5, vim_dim=3, neco_dim=2)  # the sample holds every fit row: the same on any subset


def _write(path, X, y=None, classifier=None, offsets=None) -> str:
    with DumpWriter(path, layers={"h": X.shape[1]}, dtype="float64", model="test", chunk_bytes=23 * X.shape[1] * 8,
                    level="token" if offsets is not None else "sample") as writer:
        writer.append({"h": X}, **({} if y is None else {"labels": y}))
        if classifier is not None:
            writer.set_classifier(*classifier, layer="h")
        if offsets is not None:
            writer.set_offsets(offsets)
    return str(path)


def _data(rng, n_fit=240, n_test=70, n_ood=50, C=3, D=5) -> dict:
    centres = 3 * rng.standard_normal((C, D))
    y = rng.integers(0, C, n_fit)
    y_test = rng.integers(0, C, n_test)
    return {"fit": (centres[y] + rng.standard_normal((n_fit, D)) + 20.0, y),
            "test": (centres[y_test] + rng.standard_normal((n_test, D)) + 20.0, None),
            "ood": (2.5 * rng.standard_normal((n_ood, D)) + 20.0, None),
            "classifier": (rng.standard_normal((C, D)), rng.standard_normal(C))}


def _dumps(root, data: dict, keep: dict | None = None, suffix: str = "") -> dict:
    """The fit (with the classifier), test and OOD dumps of ``data``, each only its rows ``keep[name]``."""
    paths = {}
    for name in ("fit", "test", "ood"):
        X, y = data[name]
        rows = np.arange(X.shape[0]) if keep is None else keep[name]
        paths[name] = _write(root / f"{name}{suffix}.h5", X[rows], None if y is None else y[rows],
                             data["classifier"] if name == "fit" else None)
    return paths


def _layer(result) -> dict:
    return result.to_dict()["files"][0]["layers"][0]


def _without(data: dict, g: int) -> dict:
    """Each dump's rows outside group g of its own row numbers."""
    return {name: np.flatnonzero(Grouping(G, SEED).of(np.arange(data[name][0].shape[0])) != g) for name in ("fit", "test", "ood")}


def _twins(paths: dict, **options) -> list[dict]:
    """{metric: value} of each twin of the OOD consumer, made as the command makes them (one pass,
    one pass over each scored dump)."""
    families = {"ood": family_options("ood", dict(test=paths["test"], ood=(paths["ood"],), **options))}
    pass_options = PassOptions(ci_groups=G, ci_seed=SEED, block_rows=17)
    with Dump(paths["fit"]) as dump:
        stats = accumulate(dump, specs=specs_for(families, facts_of(dump)), options=pass_options)
        ctx = layer_context(dump, "h", stats, pass_options, dump.classifier())
        consumer = second_pass_consumers(ctx, families)["ood"]
        for label, path in consumer.dumps.items():
            other_dump_pass(path, "h", ctx.n_units, consumer.reading(label), pass_options, None)
        return [ood_family.set_metrics(consumer.leave_out(g), ctx, families["ood"])[paths["ood"]]["metrics"]
                for g in range(G)]


def _assert_intervals(layer: dict, direct: list[dict]) -> None:
    """The layer's intervals are the jackknife of the commands on the dumps without each group."""
    assert layer["intervals_unavailable"] == {} and layer["intervals"].keys() == layer["metrics"].keys()
    for metric, value in layer["metrics"].items():
        expected = jackknife(value, [record["metrics"][metric] for record in direct])
        assert layer["intervals"][metric] == pytest.approx(expected, rel=1e-10, abs=1e-12), metric


def test_each_twin_equals_the_command_on_dumps_without_the_group(tmp_path):
    data = _data(np.random.default_rng(1))
    paths = _dumps(tmp_path, data)
    twins = _twins(paths, **MODEL)
    direct = []
    for g in range(G):
        kept = _dumps(tmp_path, data, _without(data, g), suffix=f"_without{g}")
        direct.append(_layer(api.ood(kept["fit"], test=kept["test"], ood=[kept["ood"]], **MODEL)))
        assert twins[g].keys() == direct[g]["metrics"].keys() and len(twins[g]) == 37
        for metric, value in direct[g]["metrics"].items():
            assert twins[g][metric] == pytest.approx(value, rel=1e-10, abs=1e-12), (g, metric)
    layer = _layer(api.ood(paths["fit"], test=paths["test"], ood=[paths["ood"]], ci=True, ci_groups=G, ci_seed=SEED, **MODEL))
    _assert_intervals(layer, direct)
    assert layer["intervals"]["mahalanobis_auroc"]["se"] > 0 and layer["intervals"]["nc5"]["se"] > 0


def test_fit_split_twins_leave_the_group_out_of_fit_and_held_out_rows(tmp_path):
    """With --fit-split the held-out rows are rows of the fit dump, grouped with its other rows."""
    data = _data(np.random.default_rng(2), n_fit=300)
    paths = _dumps(tmp_path, data)
    layer = _layer(api.ood(paths["fit"], fit_split=0.3, ood=[paths["ood"]], ci=True, ci_groups=G, ci_seed=SEED,
                           scores=tmp_path / "scores.npz", **MODEL))
    scored = np.load(tmp_path / "scores.npz")
    held = np.isin(np.arange(300), scored["row"][scored["role"] == "id_test"])
    assert 50 < held.sum() < 130
    direct = []
    for g in range(G):
        outside = _without(data, g)
        fit_rows = outside["fit"][~held[outside["fit"]]]
        test_rows = outside["fit"][held[outside["fit"]]]
        split = {"fit": (data["fit"][0][fit_rows], data["fit"][1][fit_rows]), "test": (data["fit"][0][test_rows], None),
                 "ood": (data["ood"][0][outside["ood"]], None), "classifier": data["classifier"]}
        kept = _dumps(tmp_path, split, suffix=f"_split{g}")
        direct.append(_layer(api.ood(kept["fit"], test=kept["test"], ood=[kept["ood"]], **MODEL)))
    _assert_intervals(layer, direct)


def _sequences(rng, n_sequences: int, D: int, centre=None):
    lengths = rng.integers(2, 7, n_sequences)
    offsets = np.r_[0, np.cumsum(lengths)]
    X = rng.standard_normal((int(offsets[-1]), D)) + (0.0 if centre is None else centre)
    return X, offsets


def _whole_sequences(X, offsets, g: int, y=None):
    """The rows and offsets of the sequences outside group g (a sequence's unit: its first row)."""
    lengths = np.diff(offsets)
    group = Grouping(G, SEED).of(offsets[:-1])
    rows = np.repeat(group, lengths) != g
    kept = np.r_[0, np.cumsum(lengths[group != g])]
    return X[rows], None if y is None else y[rows], kept


def test_token_level_groups_are_whole_sequences_of_each_dump(tmp_path):
    rng = np.random.default_rng(3)
    C, D = 3, 4
    W, b = rng.standard_normal((C, D)), rng.standard_normal(C)
    fit_X, fit_offsets = _sequences(rng, 50, D)
    fit_y = np.repeat(rng.integers(0, C, 50), np.diff(fit_offsets))  # a sequence's class on all its tokens
    fit_X += 2.0 * np.eye(C, D)[fit_y]
    dumps = {"fit": (fit_X, fit_y, fit_offsets), "test": (*_sequences(rng, 20, D, 0.5), None),
             "ood": (*_sequences(rng, 20, D, 1.5), None)}
    dumps["test"] = (dumps["test"][0], None, dumps["test"][1])
    dumps["ood"] = (dumps["ood"][0], None, dumps["ood"][1])

    def write(suffix: str, g: int | None) -> dict:
        paths = {}
        for name, (X, y, offsets) in dumps.items():
            if g is not None:
                X, y, offsets = _whole_sequences(X, offsets, g, y)
            paths[name] = _write(tmp_path / f"{name}{suffix}.h5", X, y, (W, b) if name == "fit" else None, offsets)
        return paths

    paths = write("", None)
    result = api.ood(paths["fit"], test=paths["test"], ood=[paths["ood"]], ci=True, ci_groups=G, ci_seed=SEED, **MODEL)
    assert result.to_dict()["files"][0]["sampling_unit"] == "sequence"
    direct = [_layer(api.ood(**_arguments(write(f"_without{g}", g)), **MODEL)) for g in range(G)]
    _assert_intervals(_layer(result), direct)


def _arguments(paths: dict) -> dict:
    return {"paths": paths["fit"], "test": paths["test"], "ood": [paths["ood"]]}


def test_a_twin_without_a_class_says_why_its_metrics_have_no_interval(tmp_path):
    """Class 1's fit rows all in group 0: without it one class is left, no Mahalanobis model."""
    data = _data(np.random.default_rng(4), C=2)
    X, _ = data["fit"]
    group = Grouping(G, SEED).of(np.arange(X.shape[0]))
    data["fit"] = (X, np.where(group == 0, np.arange(X.shape[0]) % 2, 0))
    paths = _dumps(tmp_path, data)
    layer = _layer(api.ood(paths["fit"], test=paths["test"], ood=[paths["ood"]], ci=True, ci_groups=G, ci_seed=SEED, **MODEL))
    for metric in ("mahalanobis_auroc", "relative_mahalanobis_fpr95", "nc5"):
        assert metric in layer["metrics"] and metric not in layer["intervals"]
        assert layer["intervals_unavailable"][metric].startswith("no value without jackknife group 0: needs labels of at least 2")
    assert "knn_auroc" in layer["intervals"] and "energy_auroc" in layer["intervals"]


def test_the_interval_fields_in_every_format_and_one_line_errors(tmp_path):
    paths = _dumps(tmp_path, _data(np.random.default_rng(5)))
    base = ["ood", paths["fit"], "--test", paths["test"], "--ood", paths["ood"], "--knn-sample", "1000", "-q"]
    runner = CliRunner()
    outputs = {fmt: runner.invoke(app, [*base, "--ci", "--ci-groups", str(G), "-f", fmt]) for fmt in ("json", "jsonl", "csv")}
    assert all(out.exit_code == 0 for out in outputs.values()), {fmt: out.output[-300:] for fmt, out in outputs.items()}
    layer = json.loads(outputs["json"].stdout)["files"][0]["layers"][0]
    assert {"se", "ci_low", "ci_high"} <= layer["intervals"]["energy_auroc"].keys()
    row = json.loads(outputs["jsonl"].stdout.splitlines()[0])
    assert {"se", "ci_low", "ci_high"} <= row.keys()
    header = outputs["csv"].stdout.splitlines()[0].split(",")
    assert {"se", "ci_low", "ci_high"} <= set(header)
    for wrong, says in ((["--ci", "--ci-groups", "1"], "--ci-groups '1' must be ≥ 2"),
                        (["--ci-groups", "3"], "--ci-groups is an option of --ci")):
        out = runner.invoke(app, [*base, *wrong])
        assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1 and says in out.output, out.output


def test_too_many_copies_of_the_scores_are_refused_before_the_pass(tmp_path, monkeypatch):
    paths = _dumps(tmp_path, _data(np.random.default_rng(6)))
    each = (70 + 50) * (len(ood_family.SCORES) + 1) * 8  # one copy of the scored rows' scores
    monkeypatch.setattr(ood_family, "memory_bytes", lambda: 6 * each)
    reads = []
    monkeypatch.setattr(ood_family, "fit", lambda *a, **k: reads.append(1))  # no pass may fit a model
    refused = r"ci_groups=8 keeps every scored row's scores 8 \+ 1 times.*--ci-groups 5 would fit"
    with pytest.raises(OptionError, match=refused):
        api.ood(paths["fit"], test=paths["test"], ood=[paths["ood"]], ci=True, ci_groups=8)
    assert reads == []


@pytest.mark.skipif(not HAS_DASK, reason="the dask extra is not installed (pip install '.[dask]')")
@pytest.mark.timeout(300)
def test_ood_ci_on_dask_equals_a_local_run(tmp_path, cluster):  # noqa: F811
    """The fit dump's passes (and --fit-split's held-out scoring, with every twin's part) as tasks;
    the other dumps scored in this process: the local numbers and intervals."""
    paths = _dumps(tmp_path, _data(np.random.default_rng(7), n_fit=400))
    for kind in ({"test": paths["test"]}, {"fit_split": 0.3}):
        arguments = dict(ood=[paths["ood"]], ci=True, ci_groups=G, ci_seed=SEED, **kind, **MODEL)
        local = _layer(api.ood(paths["fit"], **arguments))
        with open_backend(_dask(cluster)) as backend:
            remote = _layer(api.ood(paths["fit"], backend=backend, **arguments))
        assert remote["n_test_rows"] == local["n_test_rows"] and remote["unavailable"] == local["unavailable"]
        assert remote["metrics"] == pytest.approx(local["metrics"], rel=1e-10, abs=1e-12), kind
        assert remote["intervals"].keys() == local["intervals"].keys() and len(local["intervals"]) == 37
        for metric, interval in local["intervals"].items():
            assert remote["intervals"][metric] == pytest.approx(interval, rel=1e-10, abs=1e-12), (kind, metric)
