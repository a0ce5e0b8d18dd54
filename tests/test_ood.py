"""`actgeom ood` (the ood family): streamed fit and scoring passes equal an in-memory reference,
one pass per dump, real held-out digits, and one-line errors."""

from __future__ import annotations

import glob
from pathlib import Path

import h5py
import numpy as np
import pytest

from actgeom.core import api
from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.stats import ClassMoments, pooled
from actgeom.core.dump import DumpWriter
from actgeom.core.metrics import ood

metrics = pytest.importorskip("sklearn.metrics")
ROOT = Path(__file__).parent.parent


def _write(path, X, y=None, classifier=None, chunk_rows=None):
    with DumpWriter(path, layers={"h": X.shape[1]}, dtype="float64", model="test",
                    chunk_bytes=(chunk_rows or 256) * X.shape[1] * 8) as writer:
        writer.append({"h": X}, **({} if y is None else {"labels": y}))
        if classifier is not None:
            writer.set_classifier(*classifier, layer="h")
    return str(path)


@pytest.fixture
def dumps(tmp_path):
    rng = np.random.default_rng(11)
    C, D = 3, 6
    centres = 4 * rng.standard_normal((C, D))
    y = rng.integers(0, C, 300)
    X = centres[y] + rng.standard_normal((300, D)) + 50.0
    W, b = rng.standard_normal((C, D)), rng.standard_normal(C)
    y_test = rng.integers(0, C, 80)
    test = centres[y_test] + rng.standard_normal((80, D)) + 50.0
    far = rng.standard_normal((60, D)) * 3 + 50.0
    return {"fit": _write(tmp_path / "fit.h5", X, y, (W, b), chunk_rows=23), "test": _write(tmp_path / "test.h5", test),
            "ood": _write(tmp_path / "ood.h5", far), "arrays": (X, y, W, b, test, far)}


def test_scores_and_measures_equal_an_in_memory_reference(dumps):
    every_metric = (
        "msp_auroc", "msp_aupr_in", "msp_aupr_out", "msp_fpr95", "max_logit_auroc", "max_logit_aupr_in", "max_logit_aupr_out",
        "max_logit_fpr95", "energy_auroc", "energy_aupr_in", "energy_aupr_out", "energy_fpr95", "mahalanobis_auroc",
        "mahalanobis_aupr_in", "mahalanobis_aupr_out", "mahalanobis_fpr95", "relative_mahalanobis_auroc",
        "relative_mahalanobis_aupr_in", "relative_mahalanobis_aupr_out", "relative_mahalanobis_fpr95", "vim_auroc",
        "vim_aupr_in", "vim_aupr_out", "vim_fpr95", "neco_auroc", "neco_aupr_in", "neco_aupr_out", "neco_fpr95",
        "neco_max_logit_auroc", "neco_max_logit_aupr_in", "neco_max_logit_aupr_out", "neco_max_logit_fpr95", "knn_auroc",
        "knn_aupr_in", "knn_aupr_out", "knn_fpr95", "nc5")
    X, y, W, b, test, far = dumps["arrays"]
    got = api.ood(dumps["fit"], test=dumps["test"], ood=[dumps["ood"]], knn_sample=1000, knn_k=5, vim_dim=3,
                  neco_dim=2).to_dict()
    layer = got["files"][0]["layers"][0]
    assert got["files"][0]["file"] == dumps["ood"] and got["files"][0]["fit_file"] == dumps["fit"]
    assert sorted(layer["metrics"]) == sorted(every_metric) and layer["unavailable"] == {}
    moments = ClassMoments(X.shape[1])
    moments.update(X, y)  # in memory, one block
    classes = moments.finalize()
    model = ood.fit(classes, pooled(classes), weight=W, bias=b, vim_dim=3, neco_dim=2, knn_sample=X, knn_k=5)
    logits = X @ W.T + b  # ViM's α over every fit row (the sample holds them all)
    model = ood.OodModel(**{**model.__dict__, "vim_alpha": logits.max(axis=1).mean()
                            / ood.vim_residual_norms(model, X).mean()})
    id_scores, ood_scores = ood.scores(model, test), ood.scores(model, far)
    for score in id_scores:
        truth = np.r_[np.ones(len(test)), np.zeros(len(far))]
        s = np.r_[id_scores[score], ood_scores[score]]
        fpr, tpr, _ = metrics.roc_curve(truth, s)
        expected = {"auroc": metrics.roc_auc_score(truth, s), "aupr_in": metrics.average_precision_score(truth, s),
                    "aupr_out": metrics.average_precision_score(1 - truth, -s), "fpr95": fpr[np.argmax(tpr >= 0.95)]}
        for measure, value in expected.items():
            assert layer["metrics"][f"{score}_{measure}"] == pytest.approx(value, rel=1e-9, abs=1e-12), (score, measure)
    centred = classes.means - X.mean(axis=0)
    direction = far.mean(axis=0) - X.mean(axis=0)
    cosines = centred @ direction / (np.linalg.norm(centred, axis=1) * np.linalg.norm(direction))
    assert layer["metrics"]["nc5"] == pytest.approx(np.abs(cosines).mean(), rel=1e-9)


def test_one_pass_over_the_fit_dump_and_one_over_each_scored_dump(dumps, count_reads):
    api.ood(dumps["fit"], test=dumps["test"], ood=[dumps["ood"]])
    assert count_reads.files == {"fit.h5": 1, "test.h5": 1, "ood.h5": 1}  # each dump fits in one block


def test_without_classifier_or_labels_the_scores_that_need_them_say_why(tmp_path, dumps):
    X, y, W, b, test, far = dumps["arrays"]
    bare = _write(tmp_path / "bare.h5", X)
    layer = api.ood(bare, test=dumps["test"], ood=dumps["ood"]).to_dict()["files"][0]["layers"][0]
    assert "classifier" in layer["unavailable"]["msp_auroc"] and "labels" in layer["unavailable"]["mahalanobis_auroc"]
    assert {"neco_auroc", "knn_auroc"} <= set(layer["metrics"])


def _digits(tmp_path, epoch: str) -> dict:
    """sample_data's digits MLP at one epoch: fit = even rows of digits 0–7, test = odd rows, OOD = digits 8 and 9."""
    with h5py.File(ROOT / "sample_data" / f"digits_mlp_epoch{epoch}.h5") as f:
        X, y = f["activations/hidden3"][:].astype(np.float64), f["rows/label"][:]
        W, b = f["classifier/weight"][:], f["classifier/bias"][:]
    even = np.arange(y.size) % 2 == 0
    return {"fit": _write(tmp_path / f"fit{epoch}.h5", X[(y < 8) & even], y[(y < 8) & even], (W[:8], b[:8])),
            "test": _write(tmp_path / f"test{epoch}.h5", X[(y < 8) & ~even]),
            "ood": _write(tmp_path / f"ood{epoch}.h5", X[y >= 8])}


def test_held_out_digits_are_told_apart_better_after_training(tmp_path):
    epochs = sorted(Path(p).stem[-4:] for p in glob.glob(str(ROOT / "sample_data" / "digits_mlp_epoch*.h5")))
    auroc = {}
    for epoch in (epochs[0], epochs[-1]):
        paths = _digits(tmp_path, epoch)
        found = api.ood(paths["fit"], test=paths["test"], ood=paths["ood"]).to_dict()["files"][0]["layers"][0]["metrics"]
        auroc[epoch] = {name: value for name, value in found.items() if name.endswith("_auroc")}
        print(epoch, {name: round(value, 3) for name, value in auroc[epoch].items()})
    last, first = auroc[epochs[-1]], auroc[epochs[0]]
    assert last["mahalanobis_auroc"] > 0.5 and last["energy_auroc"] > 0.5
    assert last["mahalanobis_auroc"] > first["mahalanobis_auroc"] and last["energy_auroc"] > first["energy_auroc"]


def test_bad_inputs_are_one_line_errors(tmp_path, dumps, cli):
    X, y, W, b, test, far = dumps["arrays"]
    narrow = _write(tmp_path / "narrow.h5", far[:, :4])
    with pytest.raises(InvalidInputError, match="4 units in .*narrow.h5 but 6"):
        api.ood(dumps["fit"], test=dumps["test"], ood=narrow)
    with DumpWriter(tmp_path / "other.h5", layers={"g": 6}, dtype="float64") as writer:
        writer.append({"g": far})
    with pytest.raises(InvalidInputError, match="'h'"):
        api.ood(dumps["fit"], test=dumps["test"], ood=str(tmp_path / "other.h5"))
    with pytest.raises(OptionError, match="temperature"):
        api.ood(dumps["fit"], test=dumps["test"], ood=dumps["ood"], temperature=0)
    code, _, err = cli("ood", dumps["fit"], "--test", dumps["test"], "--ood", narrow, "-o", str(tmp_path / "out.json"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "narrow.h5" in err, err
    assert not (tmp_path / "out.json").exists()


def _write_sequences(path, X, y, lengths, classifier):
    with DumpWriter(path, layers={"h": X.shape[1]}, dtype="float64", model="test", chunk_bytes=17 * X.shape[1] * 8) as writer:
        writer.append({"h": X}, labels=y)
        writer.set_offsets(np.r_[0, np.cumsum(lengths)])
        writer.set_classifier(*classifier, layer="h")
    return str(path)


def _same_metrics(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("token_level", [False, True])
def test_fit_split_equals_the_analysis_of_two_dumps_written_from_the_split_rows(tmp_path, dumps, count_reads, token_level):
    X, y, W, b, test, far = dumps["arrays"]
    q, seed = 0.3, 4
    if token_level:  # whole sentences held out: every token of a sequence on one side
        lengths = np.random.default_rng(2).integers(1, 9, 200)
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), X.shape[0])]
        lengths = np.r_[lengths, X.shape[0] - lengths.sum()]
        starts = np.repeat(np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        whole = _write_sequences(tmp_path / "whole.h5", X, y, lengths, (W, b))
    else:
        starts = np.arange(X.shape[0])
        whole = _write(tmp_path / "whole.h5", X, y, (W, b), chunk_rows=29)
    held = ood.held_out(starts, seed, q)
    assert 0 < held.sum() < X.shape[0]
    fit = _write(tmp_path / "fit_rows.h5", X[~held], y[~held], (W, b), chunk_rows=41)
    test_rows = _write(tmp_path / "test_rows.h5", X[held])
    options = dict(ood=[dumps["ood"]], knn_sample=1000, knn_k=5, vim_dim=3, neco_dim=2, seed=seed)  # the sample: every fit row
    count_reads.files.clear()
    split = api.ood(whole, fit_split=q, **options).to_dict()["files"][0]
    assert count_reads.files == {"whole.h5": 2, "ood.h5": 1}  # the fit pass, then the held-out rows with the second pass
    apart = api.ood(fit, test=test_rows, **options).to_dict()["files"][0]
    got, expected = split["layers"][0], apart["layers"][0]
    assert (got["n_fit_rows"], got["n_test_rows"]) == (int((~held).sum()), int(held.sum())) == (
        expected["n_fit_rows"], expected["n_test_rows"])
    assert split["test_file"] == whole and got["unavailable"] == {}
    _same_metrics(got["metrics"], expected["metrics"])


def test_fit_split_and_test_together_or_neither_is_a_one_line_error(dumps, cli):
    with pytest.raises(OptionError, match="fit_split"):
        api.ood(dumps["fit"], test=dumps["test"], ood=dumps["ood"], fit_split=0.2)
    with pytest.raises(OptionError, match="fit_split"):
        api.ood(dumps["fit"], ood=dumps["ood"], fit_split=1.0)
    with pytest.raises(OptionError, match="test"):
        api.ood(dumps["fit"], ood=dumps["ood"])
    code, _, err = cli("ood", dumps["fit"], "--ood", dumps["ood"])
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--test" in err, err


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".jsonl"])
def test_scores_file_holds_every_scored_row(tmp_path, dumps, suffix):
    import pandas as pd

    X, y, W, b, test, far = dumps["arrays"]
    path = tmp_path / f"scores{suffix}"
    result = api.ood(dumps["fit"], test=dumps["test"], ood=dumps["ood"], knn_k=5, scores=path).to_dict()
    metrics_found = result["files"][0]["layers"][0]["metrics"]
    assert "details" not in result["files"][0]["layers"][0]
    if suffix == ".npz":
        with np.load(path) as f:
            table = pd.DataFrame({key: f[key] for key in f.files})
    else:
        table = pd.read_csv(path) if suffix == ".csv" else pd.read_json(path, lines=True)
    assert len(table) == len(test) + len(far)
    for role, dump, n in (("id_test", dumps["test"], len(test)), ("ood", dumps["ood"], len(far))):
        part = table[table.role == role]
        assert (part.dump == dump).all() and (part.fit_dump == dumps["fit"]).all() and (part.layer == "h").all()
        assert part.row.tolist() == list(range(n))
    truth = (table.role == "id_test").to_numpy()
    for score in ("mahalanobis", "energy", "knn", "neco_max_logit"):
        assert metrics.roc_auc_score(truth, table[score].to_numpy()) == pytest.approx(metrics_found[f"{score}_auroc"], rel=1e-12)


def test_scores_file_is_refused_over_an_input_or_without_a_known_suffix(tmp_path, dumps, cli):
    with pytest.raises(OptionError, match="scores"):
        api.ood(dumps["fit"], test=dumps["test"], ood=dumps["ood"], scores=tmp_path / "scores.txt")
    code, _, err = cli("ood", dumps["fit"], "--test", dumps["test"], "--ood", dumps["ood"], "--scores", dumps["ood"])
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "scores.txt").exists()


def test_fit_split_statistics_of_shards_merged_through_the_saved_form_equal_one_pass(dumps):
    from actgeom.core.dump import Dump
    from actgeom.core.state.accumulators import FitSplitSpec
    from actgeom.core.state.engine import PassOptions, accumulate
    from actgeom.core.state.partial import stats_arrays, stats_from_arrays

    X, y, W, b, test, far = dumps["arrays"]
    spec = {"fitsplit": FitSplitSpec(test_fraction=0.3, seed=4, sample_size=50)}
    with Dump(dumps["fit"]) as dump:
        whole = accumulate(dump, specs=spec, options=PassOptions(block_rows=1000))["h"].get("fitsplit")
        shards = [accumulate(dump, specs=spec, options=PassOptions(row_range=r, block_rows=29), check=False)["h"]
                  for r in ((150, 300), (0, 150))]
    merged = shards[0]
    merged.merge(stats_from_arrays(stats_arrays({"h": shards[1]}))[0]["h"])
    merged = merged.get("fitsplit")
    kept = ~ood.held_out(np.arange(X.shape[0]), 4, 0.3)
    assert whole.n_held_out == merged.n_held_out == int((~kept).sum())
    for got in (whole, merged):
        np.testing.assert_allclose(got.moments.total.means[0], X[kept].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got.moments.classes.within_scatter, merged.moments.classes.within_scatter, rtol=1e-10)
        assert set(got.sample.index) <= set(np.flatnonzero(kept)) and got.sample.n_rows == 50
    np.testing.assert_array_equal(np.sort(whole.sample.index), np.sort(merged.sample.index))


def test_a_scored_set_without_rows_is_a_one_line_error(tmp_path, dumps, cli):
    X, y, W, b, test, far = dumps["arrays"]
    small = _write(tmp_path / "small.h5", X[:20], y[:20], (W, b))
    with pytest.raises(InvalidInputError, match="--fit-split 0.001 .*held out none"):
        api.ood(small, fit_split=0.001, ood=dumps["ood"])
    code, _, err = cli("ood", small, "--fit-split", "0.001", "--ood", dumps["ood"], "-o", str(tmp_path / "out.json"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "held out none" in err, err
    assert not (tmp_path / "out.json").exists()
