"""`report --ood` (issue #26): the OOD section — AUROC across depth per score, NC5, the ID vs OOD score
histograms at each score's best layer, the tables — on sample_data's digits MLP with digits 8 and 9
held out as OOD (the dumps made by `actgeom extract`, as `actgeom ood --help` shows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import Cli
from test_report import Page

ROOT = Path(__file__).parent.parent
EPOCHS = ("0030", "1500")


@pytest.fixture(scope="module")
def ood_report(tmp_path_factory):
    """Two checkpoints: digits 0–7 in distribution (30 % held out by --fit-split), 8 and 9 out."""
    out, cli = tmp_path_factory.mktemp("ood_report"), Cli()
    ids, oods = [], []
    for epoch in EPOCHS:
        source = ROOT / "sample_data" / f"digits_mlp_epoch{epoch}.h5"
        for name, classes, made in (("id", "0,1,2,3,4,5,6,7", ids), ("ood", "8,9", oods)):
            code, _, err = cli("extract", source, "-o", out / f"{name}_{epoch}.h5", "--classes", classes)
            assert code == 0, err
            made.append(out / f"{name}_{epoch}.h5")
    args = [a for path in oods for a in ("--ood", path)]
    code, stdout, err = cli("report", *ids, *args, "--families", "collapse", "-o", out / "r.html", "--results",
                            out / "r.json", "-q")
    assert code == 0, err
    html = (out / "r.html").read_text()
    return {"dir": out, "ids": ids, "oods": oods, "html": html, "page": Page(html),
            "results": json.loads((out / "r.json").read_text())}


def test_ood_numbers_are_the_ood_commands(ood_report):
    """Each checkpoint's OOD block is `actgeom ood CHECKPOINT --fit-split 0.3 --ood ITS_OOD` (core.api.ood), exactly."""
    from actgeom.core import api

    document = ood_report["results"]
    assert document["options"]["ood"]["fit_split"] == 0.3
    for entry, path, ood in zip(document["files"], ood_report["ids"], ood_report["oods"]):
        assert entry["file"] == str(path) and entry["ood"]["set"] == str(ood)
        alone = api.ood(path, ood=ood, fit_split=0.3).to_dict()["files"][0]
        for mine, theirs in zip(entry["ood"]["layers"], alone["layers"]):
            assert mine["layer"] == theirs["layer"]
            assert mine["metrics"] == theirs["metrics"] and mine["unavailable"] == theirs["unavailable"]
            assert (mine["n_test_rows"], mine["n_ood_rows"]) == (theirs["n_test_rows"], theirs["n_ood_rows"])
    last = document["files"][-1]["ood"]["layers"]
    hidden3 = next(layer for layer in last if layer["layer"] == "hidden3")["metrics"]
    assert hidden3["mahalanobis_auroc"] > 0.5 and hidden3["energy_auroc"] > 0.5


def test_the_tables_hold_the_documents_numbers(ood_report):
    document, page = ood_report["results"], ood_report["page"]
    names = {name for entry in document["files"] for layer in entry["ood"]["layers"] for name in layer["metrics"]}
    cells = [cell for cell in page.cells if "data-value" in cell and cell["data-metric"] in names]
    in_table = {id(cell) for cell in cells}
    expected = 0
    for index, entry in enumerate(document["files"]):
        for layer in entry["ood"]["layers"]:
            for name, value in layer["metrics"].items():
                found = [c for c in cells if (c["data-file"], c["data-layer"], c["data-metric"]) == (str(index),
                                                                                                  layer["layer"], name)]
                if name.endswith("_auroc") or name == "nc5" or index == len(document["files"]) - 1:
                    assert found and all(json.loads(c["data-value"]) == value for c in found), (index, name)
                    expected += len(found)
    assert expected == len(in_table) > 50
    assert 'id="ood-auroc"' in ood_report["html"] and 'id="ood-last"' in ood_report["html"]
    assert "Out-of-distribution" in ood_report["html"]


def test_figures_draw_the_documents_numbers(ood_report):
    """AUROC lines per checkpoint × score, NC5 per checkpoint, and the histograms at each score's best
    layer of the last checkpoint: counts adding up to the scored rows, the layer the argmax of AUROC."""
    from actgeom.cli.report import figures_ood

    document = ood_report["results"]
    layers = ["hidden1", "hidden2", "hidden3"]
    figure = figures_ood.fig_ood_depth(document)
    lines = {a.get_gid(): a for ax in figure.axes for a in ax.get_lines() if a.get_gid()}
    for entry in document["files"]:
        for name in ("mahalanobis", "knn"):
            drawn = lines[f"ood-auroc-{entry['label']}-{name}"].get_ydata()
            by_layer = {r["layer"]: r["metrics"] for r in entry["ood"]["layers"]}
            want = [by_layer[layer][f"{name}_auroc"] for layer in layers]
            np.testing.assert_array_equal(drawn, want)
    nc5 = figures_ood.fig_ood_nc5(document)
    line = next(a for a in nc5.axes[0].get_lines() if a.get_gid() == f"ood-nc5-{document['files'][0]['label']}")
    np.testing.assert_array_equal(line.get_ydata(), [r["metrics"]["nc5"] for r in document["files"][0]["ood"]["layers"]])
    last = document["files"][-1]["ood"]
    assert {"mahalanobis", "energy", "knn", "vim", "neco"} <= set(last["histograms"])
    for name, part in last["histograms"].items():
        aurocs = {r["layer"]: r["metrics"].get(f"{name}_auroc") for r in last["layers"]}
        assert aurocs[part["layer"]] == max(v for v in aurocs.values() if v is not None)
        record = next(r for r in last["layers"] if r["layer"] == part["layer"])
        assert sum(part["id"]) == part["n_id"] == record["n_test_rows"]
        assert sum(part["ood"]) == part["n_ood"] == record["n_ood_rows"]
        assert len(part["edges"]) == len(part["id"]) + 1
    assert figures_ood.fig_ood_histograms(document).axes
    for figure_id in ("fig-ood-depth", "fig-ood-nc5", "fig-ood-histograms"):
        assert figure_id in ood_report["page"].figures


def test_the_histograms_are_the_rows_scores(ood_report, tmp_path):
    """The histogram counts are those of the per-row scores `actgeom ood --scores` writes."""
    from actgeom.core import api

    document = ood_report["results"]
    entry = document["files"][-1]
    part = entry["ood"]["histograms"]["mahalanobis"]
    api.ood(ood_report["ids"][-1], ood=ood_report["oods"][-1], fit_split=0.3, layers=[part["layer"]],
            scores=tmp_path / "s.npz")
    rows = np.load(tmp_path / "s.npz")
    edges = np.asarray(part["edges"])
    for role, counts in (("id_test", part["id"]), ("ood", part["ood"])):
        values = np.clip(rows["mahalanobis"][rows["role"] == role], edges[0], edges[-1])
        assert np.histogram(values, bins=edges)[0].tolist() == counts


def test_without_ood_there_is_no_section(ood_report, tmp_path):
    from actgeom.cli.report.render import render_page

    document = json.loads(json.dumps(ood_report["results"]))
    del document["options"]["ood"]
    for entry in document["files"]:
        del entry["ood"]
    page = render_page(document)
    assert "Out-of-distribution" not in page and "fig-ood" not in page and 'id="ood-auroc"' not in page


@pytest.mark.parametrize("case", ["two for one", "one for two", "test and split", "split without ood", "ood is the dump"])
def test_mismatched_ood_options_are_one_line(ood_report, tmp_path, case):
    ids, oods = ood_report["ids"], ood_report["oods"]
    args = {"two for one": [ids[0], "--ood", oods[0], "--ood", oods[1]],
            "one for two": [*ids, "--ood", oods[0]],
            "test and split": [ids[0], "--ood", oods[0], "--ood-test", ids[1], "--fit-split", "0.2"],
            "split without ood": [ids[0], "--fit-split", "0.2"],
            "ood is the dump": [ids[0], "--ood", ids[0]]}[case]
    code, _, err = Cli()("report", *args, "--families", "collapse", "-o", tmp_path / "r.html", "-q")
    assert code != 0 and len(err.strip().splitlines()) == 1 and ("--ood" in err or "--fit-split" in err), err
    assert "Traceback" not in err and not (tmp_path / "r.html").exists()


def test_ood_test_dumps_pair_in_order(ood_report, tmp_path):
    """--ood-test: the held-out ID rows of each dump (here: the other checkpoint's rows, for the pairing only)."""
    ids, oods = ood_report["ids"], ood_report["oods"]
    code, _, err = Cli()("report", *ids, "--ood", oods[0], "--ood", oods[1], "--ood-test", oods[1], "--ood-test", oods[0],
                         "--families", "collapse", "-o", tmp_path / "r.html", "--results", tmp_path / "r.json", "-q")
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    assert [entry["ood"]["test"] for entry in document["files"]] == [str(oods[1]), str(oods[0])]
    assert document["options"]["ood"]["fit_split"] is None


def test_ood_with_ci_draws_and_tabulates_the_ood_commands_intervals(ood_report, tmp_path):
    """report --ood --ci: every OOD metric's interval is `actgeom ood --ci`'s, drawn as error bars
    across depth and shown as value ± half-width (bounds exact) in the tables."""
    from actgeom.cli.report import figures_ood
    from actgeom.core import api

    ids, oods = ood_report["ids"][-1:], ood_report["oods"][-1:]
    code, _, err = Cli()("report", *ids, "--ood", oods[0], "--ci", "--ci-groups", "5", "--families", "collapse",
                         "-o", tmp_path / "r.html", "--results", tmp_path / "r.json", "-q")
    assert code == 0, err
    document = json.loads((tmp_path / "r.json").read_text())
    html = (tmp_path / "r.html").read_text()
    alone = api.ood(ids[0], ood=oods[0], fit_split=0.3, ci=True, ci_groups=5).to_dict()["files"][0]
    entry = document["files"][0]
    checked = 0
    for mine, theirs in zip(entry["ood"]["layers"], alone["layers"]):
        assert mine["intervals"] and mine["intervals"] == theirs["intervals"]
        for metric in ("mahalanobis_auroc", "nc5"):
            value, low = json.dumps(mine["metrics"][metric]), json.dumps(mine["intervals"][metric]["ci_low"])
            assert f'data-metric="{metric}" data-value="{value}" data-ci-low="{low}"' in html
            checked += 1
    assert checked == 6
    figure = figures_ood.fig_ood_depth(document)
    bars = [a for ax in figure.axes for a in ax.get_children() if a.get_gid() == f"ood-auroc-ci-{entry['label']}-mahalanobis"]
    segments = bars[0].get_segments()
    want = [(r["intervals"]["mahalanobis_auroc"]["ci_low"], r["intervals"]["mahalanobis_auroc"]["ci_high"])
            for r in entry["ood"]["layers"]]
    np.testing.assert_allclose([(s[0][1], s[1][1]) for s in segments], want)
    from actgeom.cli.report.uncertainty import interval_words
    words = interval_words(document, short=True)
    for fig in (figure, figures_ood.fig_ood_nc5(document)):  # the legend and the caption say what the bars are
        assert words in [text.get_text() for text in fig.legends[0].get_texts()] and fig.uncertainty == (True, False)
    assert html.count(f"Error bars: {interval_words(document)}") >= 2 + 1  # the two OOD figures and the family's
