"""`actgeom report`: exit codes, the page's numbers against --results and each family's own
command, a self-contained page with every promised figure, atomic output, the browser check."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import Cli, class_data, write_dump

import actgeom
from actgeom.cli.report.data import checkpoint_order

ROOT = Path(__file__).parent.parent
SAMPLES = sorted(str(p) for p in (ROOT / "sample_data").glob("*.h5"))
PROMISED = ("fig-training", "fig-depth", "fig-spectra", "fig-class-cosine", "fig-duality", "fig-activity",
            "fig-neurons", "fig-probe-depth", "fig-probe-training")
FAMILY_COMMANDS = (("collapse",), ("rank",), ("entropy", "--subsample", "2000"),  # the report's DSE sample
                   ("neurons",), ("probe",))
# The report's rank metrics come from the class moments it shares with collapse (Σ_T = Σ_W + Σ_B),
# the rank command's from total moments: the same eigenvalues up to float64 rounding, which √λ turns
# into ≤ 1.3e-12 relative in rankme on sample_data (tests/test_api.py's COMBINED_RTOL says why). Every
# other family's numbers are bit-identical, but for entropy's DSE/DSMI: their kernel of ≥ 1 024 rows is
# solved on as many BLAS threads as there are idle CPUs at that moment (core/base/threads.py), and LAPACK's
# eigenvalues differ in the last bits between thread counts (4e-15 relative measured on sample_data).
COMMAND_RTOL = {"collapse": 0.0, "rank": 1e-11, "entropy": 1e-12, "neurons": 0.0, "probe": 0.0}


class Page(HTMLParser):
    """Every element's attributes, the numeric cells, the figures (ids with an <svg> inside), the text."""

    def __init__(self, text: str):
        super().__init__()
        self.elements, self.cells, self.figures, self.text = [], [], set(), []
        self._figure, self._cell = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.elements.append((tag, attrs))
        if tag == "figure":
            self._figure = attrs.get("id")
        if tag == "svg" and self._figure:
            self.figures.add(self._figure)
        if tag == "td" and "data-metric" in attrs:
            self._cell = attrs | {"text": ""}

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def sample_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    code, stdout, stderr = Cli()("report", *SAMPLES, "-o", out / "report.html", "--results", out / "report.json",
                                 "--figures", out / "figures", "--format", "md")
    assert code == 0, stderr
    html = (out / "report.html").read_text()
    return {"dir": out, "stdout": stdout, "html": html, "page": Page(html),
            "results": json.loads((out / "report.json").read_text())}


def test_sample_data_report_and_summary(sample_report):
    results, stdout = sample_report["results"], sample_report["stdout"]
    assert [entry["step"] for entry in results["files"]] == [0, 30, 100, 300, 1500]
    assert str(sample_report["dir"] / "report.html") in stdout
    rows = [line for line in stdout.splitlines() if line.startswith("| epoch")]
    assert len(rows) == 5 * 3  # checkpoint × layer
    assert "| checkpoint | layer | nc1 | cdnv | nc4_mismatch | vci | rankme | erank | alpha_req |" in stdout


def test_collapse_emerges_over_the_five_checkpoints(sample_report):
    def series(name):
        return [next(l for l in e["layers"] if l["layer"] == "hidden3")["metrics"][name]
                for e in sample_report["results"]["files"]]
    for name in ("nc1", "cdnv", "vci", "nc4_mismatch", "separation_fuzziness"):
        values = series(name)
        assert all(a > b for a, b in zip(values, values[1:])), (name, values)


def test_every_number_on_the_page_equals_the_results_and_its_own_command(sample_report):
    results = sample_report["results"]
    cells = sample_report["page"].cells
    by_key = {}
    for index, entry in enumerate(results["files"]):
        for layer in entry["layers"]:
            for name, value in layer["metrics"].items():
                by_key[(str(index), layer["layer"], name)] = value
    numeric = [cell for cell in cells if "data-value" in cell]
    assert len(numeric) == sum(value is not None for value in by_key.values()) > 500
    for cell in numeric:
        value = json.loads(cell["data-value"])
        assert value == by_key[(cell["data-file"], cell["data-layer"], cell["data-metric"])]
        assert cell["text"] == _shown(value)
    files = [entry["file"] for entry in results["files"]]
    compared = 0
    for command in FAMILY_COMMANDS:
        printed = Cli().json(*command, *SAMPLES)
        rtol = COMMAND_RTOL[command[0]]
        for report in printed["files"]:
            index = str(files.index(report["file"]))
            for layer in report["layers"]:
                for name, value in layer["metrics"].items():
                    ours = by_key[(index, layer["layer"], name)]
                    assert ours == value or (rtol and ours == pytest.approx(value, rel=rtol, abs=0)), \
                        (command, report["file"], layer["layer"], name, ours, value)
                    assert _shown(ours) == _shown(value)  # what the page and the command's table print
                    compared += 1
                for name, reason in layer["unavailable"].items():
                    cell = next(c for c in cells if (c["data-file"], c["data-layer"], c["data-metric"])
                                == (index, layer["layer"], name))
                    assert "data-value" not in cell and cell["title"] == reason
    assert compared == len(by_key)


def _shown(value) -> str:
    return ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in (value if isinstance(value, list) else [value]))


def test_page_loads_nothing_from_the_network(sample_report):
    html, page = sample_report["html"], sample_report["page"]
    assert not any(tag == "script" for tag, _ in page.elements)
    for tag, attrs in page.elements:
        for key in ("src", "href", "xlink:href", "srcset", "data", "action"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, key, value)
    assert "@import" not in html and "url(" not in html.replace("url(#", "")
    assert "http://" not in html and "https://" not in html  # no external URL anywhere, not even a namespace


def test_every_promised_figure_is_on_the_page_and_in_the_figures_directory(sample_report):
    page, figures = sample_report["page"], sample_report["dir"] / "figures"
    assert set(PROMISED) <= page.figures
    ids = [attrs["id"] for _, attrs in page.elements if "id" in attrs]
    assert "fig-attention-absent" in ids  # the sample dumps hold no attention: the page says so
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"
    for fig_id in PROMISED:
        assert (figures / f"{fig_id}.pdf").read_bytes().startswith(b"%PDF")
        assert "<svg" in (figures / f"{fig_id}.svg").read_text()
    text = " ".join(page.text)
    assert "50 most frequent classes" in text


def test_options_and_provenance_are_on_the_page(sample_report):
    page, results = sample_report["page"], sample_report["results"]
    text = " ".join(page.text)
    assert results["version"] in text and results["created"] in text and "mlp-64-128-128-64-10" in text
    tables = {attrs["id"] for tag, attrs in page.elements if tag == "table" and "id" in attrs}
    assert {"files", "layers", "options-collapse", "options-rank", "options-entropy", "options-neurons",
            "options-probe", "options-pass", "top-units"} <= tables
    for family, values in list(results["options"].items()) + [("pass", results["pass"])]:
        for key in values:
            assert key in text, (family, key)
    assert results["options"]["entropy"]["subsample"] == 2000 and "2000" in text
    for entry in results["files"]:
        assert entry["file"] in text
    for unit_count, dtype in ((128, "float16"), (64, "float16")):
        assert str(unit_count) in text and dtype in text


def _small_dump(path, rng, step: int | None = None, attention: bool = False) -> str:
    X, y = class_data(rng, [30, 30, 30], 12)
    write_dump(path, {"a": X, "b": np.maximum(X, 0.0)}, labels=y)
    with h5py.File(path, "a") as f:
        if step is not None:
            f.attrs["step"] = step
        f["activations/b"].attrs["activation"] = "relu"
        if attention:
            logits = rng.standard_normal((4, 3, 5, 5))
            f["attention/block0"] = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
            f["attention/block1"] = np.full((4, 3, 5, 5), 0.2)
    return str(path)


def test_checkpoints_by_step_else_natural_file_name_order(tmp_path, rng):
    paths = [Path(_small_dump(tmp_path / name, rng, step)) for name, step in
             (("ckpt_10.h5", 5), ("ckpt_2.h5", 50), ("ckpt_1.h5", 500))]
    assert [p.name for p in checkpoint_order(paths)] == ["ckpt_10.h5", "ckpt_2.h5", "ckpt_1.h5"]
    with h5py.File(paths[0], "a") as f:
        f.attrs["step"] = -1  # one dump without a step: file names decide
    assert [p.name for p in checkpoint_order(paths)] == ["ckpt_1.h5", "ckpt_2.h5", "ckpt_10.h5"]


def test_attention_heatmap_and_tidy_results(cli, tmp_path, rng):
    dump = _small_dump(tmp_path / "att.h5", rng, step=3, attention=True)
    for suffix in (".jsonl", ".csv"):
        code, _, err = cli("report", dump, "-o", tmp_path / "r.html", "--results", tmp_path / f"r{suffix}")
        assert code == 0, err
    page = Page((tmp_path / "r.html").read_text())
    assert "fig-attention" in page.figures
    per_head = [c for c in page.cells if c["data-metric"] == "attention_entropy_per_head"
                and c["data-layer"] == "attention/block1"]
    assert json.loads(per_head[0]["data-value"]) == pytest.approx([math.log(5)] * 3, rel=1e-12)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(records) == len(rows) and {"file", "layer", "metric", "value", "note"} <= set(rows[0])
    nc1 = next(r for r in records if r["layer"] == "b" and r["metric"] == "nc1")
    assert nc1["value"] == json.loads(next(c["data-value"] for c in page.cells
                                           if (c["data-layer"], c["data-metric"]) == ("b", "nc1")))
    assert all(r["value"] is None and r["note"] for r in records if r["metric"] == "prompt_entropy")


@pytest.mark.parametrize("case", ["missing dump", "not hdf5", "bad layer", "output is input", "no directory",
                                  "results suffix", "bad option", "bad family"])
def test_bad_input_is_one_line_and_leaves_no_report(cli, tmp_path, rng, case):
    good = _small_dump(tmp_path / "good.h5", rng, step=1)
    (tmp_path / "junk.h5").write_text("not hdf5")
    out = tmp_path / "report.html"
    args, expected = {
        "missing dump": ([good, tmp_path / "absent.h5", "-o", out], 3),
        "not hdf5": ([good, tmp_path / "junk.h5", "-o", out], 3),
        "bad layer": ([good, "-l", "nope*", "-o", out], 3),
        "output is input": ([good, "-o", good], 2),
        "no directory": ([good, "-o", tmp_path / "absent" / "r.html"], 2),
        "results suffix": ([good, "-o", out, "--results", tmp_path / "r.txt"], 2),
        "bad option": ([good, "-o", out, "--nc1-inverse", "bogus"], 2),
        "bad family": ([good, "-o", out, "--families", "collapse,neuron"], 2),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = cli("report", *args)
    assert code == expected, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no temporary file


def test_a_failing_run_keeps_the_previous_report(cli, tmp_path, rng):
    good = _small_dump(tmp_path / "good.h5", rng, step=1)
    out = tmp_path / "report.html"
    out.write_text("previous")
    bad = tmp_path / "bad.h5"
    write_dump(bad, {"a": np.full((10, 12), np.nan), "b": np.zeros((10, 12))}, labels=np.zeros(10, dtype=int))
    code, _, stderr = cli("report", good, bad, "-o", out)
    assert code == 3 and "NaN" in stderr
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5", "good.h5", "report.html"]


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not on PATH (apt-get install chromium; .ci/run tries to)")
@pytest.mark.parametrize("which", ["sample_report", "ci_report"])
def test_headless_chromium_renders_the_page_without_console_errors(request, which, tmp_path):
    """The page (and the page of a --ci --baseline run) loads in Chromium with no console message."""
    png = tmp_path / "report.png"
    page = request.getfixturevalue(which)["dir"] / ("report.html" if which == "sample_report" else "r.html")
    run = subprocess.run([sys.executable, str(ROOT / "docs" / "render_report.py"), "--report", str(page), "--out", str(png)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 100_000  # plots, not a blank page


def test_names_from_the_dump_are_escaped(cli, tmp_path, rng):
    path = _small_dump(tmp_path / "hostile.h5", rng, step=1)
    hostile = '<img src="x" onerror="alert(1)"> & --> "quoted"'
    with h5py.File(path, "a") as f:
        f.attrs["model"] = hostile
        f.attrs["checkpoint"] = "<script>alert(2)<\\script>"
        f.move("activations/a", "activations/<b>a</b> --><i>x")  # "/" nests a group: the layer is "<b>a</b> --><i>x"
    code, _, err = cli("report", path, "-o", tmp_path / "r.html")
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    page = Page(html)
    assert not {tag for tag, _ in page.elements} & {"script", "img", "i"}
    text = "".join(page.text)
    assert hostile in text and "<script>alert(2)<\\script>" in text and "<b>a</b> --><i>x" in text


@pytest.mark.parametrize("checkpoint", [2, 0, 1.5], ids=["int", "zero", "float"])
def test_a_numeric_checkpoint_attribute_is_shown(cli, tmp_path, rng, checkpoint):  # found by fuzz_long
    path = _small_dump(tmp_path / "n.h5", rng, step=1)
    with h5py.File(path, "a") as f:
        f.attrs["checkpoint"] = checkpoint
    code, out, err = cli("report", path, "-o", tmp_path / "r.html", "--format", "md")
    assert code == 0, err
    assert "| n |" in out  # the label is the file's, as every command's
    assert f"<td>{checkpoint}</td>" in (tmp_path / "r.html").read_text()


def test_report_cache_rereads_only_a_new_checkpoint(cli, tmp_path, count_reads):
    """--cache: four checkpoints, then a fifth; the second run reads only the fifth dump."""
    first = [shutil.copy(path, tmp_path / Path(path).name) for path in SAMPLES]
    reads = count_reads.files
    common = ("--layers", "hidden3", "--subsample", "200", "--cache", tmp_path / "cache")
    code, _, err = cli("report", *first[:4], "-o", tmp_path / "a.html", *common)
    assert code == 0, err
    assert set(reads) == {Path(p).name for p in first[:4]}
    reads.clear()
    code, _, err = cli("report", *first, "-o", tmp_path / "b.html", *common)
    assert code == 0, err
    assert set(reads) == {Path(first[4]).name}


def test_nc4_mismatch_is_drawn_on_a_log_axis(sample_report):
    """NC4 falls from 0.88 to 0.012 on hidden3 over the sample run: its panel has a log axis."""
    from actgeom.cli.report.figures import fig_training

    results = sample_report["results"]
    assert results["metrics_info"]["nc4_mismatch"]["log_scale"] is True
    axes = [ax for ax in fig_training(results).axes if ax.get_title().startswith("NC4 mismatch")]
    assert len(axes) == 1 and axes[0].get_yscale() == "log"


def test_families_choose_what_is_computed_and_drawn(cli, tmp_path, rng):
    """--families neurons,probe: only their options, metrics and figures; the other figures say why."""
    dumps = [_small_dump(tmp_path / f"c{step}.h5", rng, step) for step in (1, 2)]
    code, stdout, err = cli("report", *dumps, "-o", tmp_path / "r.html", "--results", tmp_path / "r.json",
                            "--families", "probe,neurons", "--positive", "2", "--negative", "0", "--format", "md")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    assert list(results["options"]) == ["neurons", "probe"]
    assert {info["family"] for info in results["metrics_info"].values()} == {"neurons", "probe"}
    page = Page((tmp_path / "r.html").read_text())
    assert {"fig-neurons", "fig-probe-depth", "fig-probe-training", "fig-training", "fig-depth"} <= page.figures
    ids = {attrs["id"] for _, attrs in page.elements if "id" in attrs}
    assert {"fig-spectra-absent", "fig-class-cosine-absent", "fig-activity-absent"} <= ids
    assert "the rank family was not computed (--families)" in " ".join(page.text)
    assert "nc1" not in stdout and "lda_accuracy" in stdout and "DSE/DSMI" not in stdout
    probe = Cli().json("probe", *dumps, "--positive", "2", "--negative", "0")
    assert results["direction_cosines_across_files"] == probe["direction_cosines_across_files"]
    assert all(entry["cosine"] is not None for entry in results["direction_cosines_across_files"])
    assert all("direction" not in layer["details"] for entry in results["files"] for layer in entry["layers"])


def test_probe_without_labels_says_why(cli, tmp_path, rng):
    """A dump without labels: the probe cannot run; the JSON and the page give the reason."""
    path = write_dump(tmp_path / "nolabels.h5", {"a": rng.standard_normal((60, 8))})
    code, _, err = cli("report", path, "-o", tmp_path / "r.html", "--results", tmp_path / "r.json",
                       "--families", "probe", "--quiet")
    assert code == 0, err
    layer = json.loads((tmp_path / "r.json").read_text())["files"][0]["layers"][0]
    reason = layer["unavailable"]["lda_accuracy"]
    assert "no labels (give --labels)" in reason and not layer["metrics"].get("lda_accuracy")
    page = Page((tmp_path / "r.html").read_text())
    assert "fig-probe-depth" not in page.figures
    assert any(reason in text for text in page.text)


@pytest.mark.parametrize("families, passes", [("collapse,rank,entropy,neurons,probe", 2),
                                              ("collapse,rank,entropy,neurons", 1)])
def test_every_family_in_one_pass_per_layer(cli, tmp_path, rng, count_reads, families, passes):
    """All five families: one read of every block of every layer, plus the one second pass that
    probe scoring (and NC4, with a decision source) share; without probe, one read."""
    path = _small_dump(tmp_path / "d.h5", rng, step=1)
    code, _, err = cli("report", path, "-o", tmp_path / "r.html", "--subsample", "50", "--families", families, "-q")
    assert code == 0, err
    from actgeom.core.dump import Dump

    with Dump(path) as dump:
        blocks = {layer.name: -(-dump.n_rows // dump.block_rows(layer)) for layer in dump.layers}
    assert dict(count_reads) == {name: passes * n for name, n in blocks.items()}


def test_spectra_figure_draws_the_spectrum_the_rank_metrics_used(tmp_path, rng):
    """--no-center: the eigenvalues of the raw second moment are drawn (and their noise floor)."""
    from actgeom.cli.output import jsonable
    from actgeom.cli.report.data import ReportOptions, gather
    from actgeom.cli.report.figures_layers import fig_spectra
    from actgeom.core.dump import DumpSpec
    from actgeom.core.metrics.spectrum import RankOptions

    path = _small_dump(tmp_path / "d.h5", rng, step=1)
    for center, key in ((True, "spectrum"), (False, "spectrum_raw")):
        options = ReportOptions(rank=RankOptions(center=center), families=("rank",))
        document = jsonable(gather([Path(path)], DumpSpec(), options))
        axes = fig_spectra(document).axes
        for ax, layer in zip(axes, document["files"][0]["layers"]):
            lam = np.asarray(layer["details"][key])
            assert np.array_equal(ax.lines[0].get_ydata(), lam[lam > 0]), (center, layer["layer"])
        raw, centred = (np.asarray(document["files"][0]["layers"][0]["details"][k]) for k in ("spectrum_raw", "spectrum"))
        assert not np.allclose(raw, centred)  # the two differ on this data: the test can fail


# -- issue 22: the page's figures, summary, labels and timing ----------------------------------

def _document(tmp_path, rng, steps=(0, 10, 1000), families=("collapse", "entropy", "neurons", "probe"), layers=()):
    """A report document of small dumps, one per step (made in-process: fast)."""
    from actgeom.cli.output import jsonable
    from actgeom.cli.report.data import ReportOptions, gather
    from actgeom.core.dump import DumpSpec

    paths = [Path(_small_dump(tmp_path / f"run_epoch{step:04d}.h5", rng, step)) for step in steps]
    for path, step in zip(paths, steps):
        with h5py.File(path, "a") as f:
            f.attrs["checkpoint"] = f"epoch{step}"  # as sample_data: the attribute differs from the file name
    options = ReportOptions(families=families)
    return jsonable(gather(paths, DumpSpec(layers=tuple(layers)), options))


def test_training_panels_share_x_limits_and_keep_the_end_markers_inside(tmp_path, rng):
    """Every over-training panel has the same x range, with room left of step 0 and right of the
    last step (panels with an ideal line used to get a gap; the last markers were clipped)."""
    from actgeom.cli.report.figures import fig_training

    figure = fig_training(_document(tmp_path, rng))
    limits = {ax.get_xlim() for ax in figure.axes if ax.lines}
    assert len(limits) == 1, limits
    (left, right), = limits
    assert left < 0 and right > 1000


def test_probe_accuracy_axis_follows_the_accuracies(tmp_path, rng):
    """Accuracies near 1 on a 0–1 axis hide 0.96 vs 0.99: the axis spans the accuracies."""
    from actgeom.cli.report.figures_units import fig_probe_depth

    document = _document(tmp_path, rng)
    accuracies = [layer["metrics"]["lda_accuracy"] for entry in document["files"] for layer in entry["layers"]]
    assert min(accuracies) > 0.6
    figure = fig_probe_depth(document)
    ax = next(ax for ax in figure.axes if ax.get_title().startswith("LDA"))
    bottom, top = ax.get_ylim()
    assert bottom > 0.5 and top - bottom < 0.5
    assert "chance 0.333: below the axis" in ax.get_title()  # three classes; the legend has no dashed entry
    assert "chance 1/C" not in [text.get_text() for text in figure.legends[0].get_texts()]


def test_unavailable_metrics_are_a_list_not_panels(tmp_path, rng):
    """A metric unavailable on every layer gets no panel; the page lists it with its reason."""
    from actgeom.cli.report.figures import fig_training
    from actgeom.cli.report.render import render_page

    document = _document(tmp_path, rng, families=("entropy",), layers=("a",))  # 'a' is not ReLU: no dead fraction
    figure = fig_training(document)
    assert not [ax for ax in figure.axes if ax.get_title().startswith("dead fraction")]
    page = Page(render_page(document))
    items = [attrs for tag, attrs in page.elements if attrs.get("id") == "fig-training-unavailable"]
    assert items and "dead fraction" in " ".join(page.text)


def test_one_checkpoint_draws_no_over_training_panels(tmp_path, rng):
    """One checkpoint: nothing changes over training; the across-depth figures show its values."""
    from actgeom.cli.report.figures import fig_depth, fig_training
    from actgeom.cli.report.figures_units import fig_probe_training

    document = _document(tmp_path, rng, steps=(5,))
    assert isinstance(fig_training(document), str) and isinstance(fig_probe_training(document), str)
    assert not isinstance(fig_depth(document), str)


def test_metric_table_keeps_its_names_in_view_and_reasons_are_grouped(tmp_path, rng):
    """The metric name column is sticky; a reason shared by every checkpoint is said once, not
    as a list of every checkpoint:layer."""
    from actgeom.cli.report.page import build_page

    document = _document(tmp_path, rng)
    html = build_page(document, [])
    assert re.search(r"#metrics [^{]*(td|th):first-child[^{]*\{[^}]*position: sticky", html)
    reasons = html[html.index('id="reasons"'):]
    reasons = reasons[:reasons.index("</ul>")]
    labels = [entry["label"] for entry in document["files"]]
    assert "every checkpoint" in reasons
    assert not any(f"{label}:" in reasons for label in labels), reasons


def test_report_labels_checkpoints_as_the_other_commands(cli, tmp_path, rng):
    """The report's checkpoint labels are the file-name labels every other command prints
    (epoch0000, not the `checkpoint` attribute epoch0)."""
    paths = [_small_dump(tmp_path / f"run_epoch{step:04d}.h5", rng, step) for step in (0, 30)]
    for path, step in zip(paths, (0, 30)):
        with h5py.File(path, "a") as f:
            f.attrs["checkpoint"] = f"epoch{step}"
    code, out, err = cli("report", *paths, "-o", tmp_path / "r.html", "--families", "collapse", "-f", "md", "-q")
    assert code == 0, err
    code, collapse_out, err = cli("collapse", *paths, "-f", "md")
    assert code == 0, err
    assert "| epoch0000:a |" in collapse_out or "epoch0000:a" in collapse_out
    assert "| epoch0000 | a |" in out and "| epoch0 |" not in out
    assert ">epoch0030<" in (tmp_path / "r.html").read_text()


def test_summary_off_a_terminal_is_not_wrapped_and_explains_the_dashes(cli, tmp_path, rng):
    """stdout a file: every summary row on one line (no fold at 80 or 160 columns); "—" cells carry
    a footnote number and the footnote says why."""
    X, y = class_data(rng, [30, 30, 30], 12)
    long_name = "encoder.layers.11.feed_forward.intermediate_activation_after_gelu"
    path = write_dump(tmp_path / "d.h5", {long_name: X}, labels=y)
    code, out, err = cli("report", path, "-o", tmp_path / "r.html", "--families", "collapse,rank,probe", "-q")
    assert code == 0, err
    row = next(line for line in out.splitlines() if long_name in line)
    assert "—" in row and "(1)" in row
    assert re.search(r"^\s*\(1\) \S", out, re.M)


def test_elapsed_includes_the_figures(cli, tmp_path, rng):
    path = _small_dump(tmp_path / "d.h5", rng, step=1)
    code, _, err = cli("report", path, "-o", tmp_path / "r.html", "--results", tmp_path / "r.json",
                       "--families", "collapse", "-q")
    assert code == 0, err
    results = json.loads((tmp_path / "r.json").read_text())
    assert 0 < results["drawing_s"] < results["elapsed_s"]
    assert "figures" in " ".join(Page((tmp_path / "r.html").read_text()).text)


def test_each_figure_is_drawn_once_without_mathtext(tmp_path, rng, monkeypatch):
    """Figure time: one draw per SVG (a layout engine draws twice), no mathtext tick labels (its
    parser costs more than the rest of a panel)."""
    from matplotlib.figure import Figure

    from actgeom.cli.report.figures import fig_training
    from actgeom.cli.report.render import to_svg

    figure = fig_training(_document(tmp_path, rng, families=("collapse",)))
    draws = []
    original = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: draws.append(1) or original(self, renderer))
    to_svg(figure, "fig-training")
    assert len(draws) == 1
    labels = [label.get_text() for ax in figure.axes for label in ax.get_yticklabels() + ax.get_xticklabels()]
    assert labels and not any("$" in label for label in labels)


def test_unit_score_violins_have_readable_ticks_and_the_legend_covers_no_violin(tmp_path, rng):
    """The kurtosis violin's symlog tick labels do not overlap; titles and legend stay inside the
    figure and off the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from actgeom.cli.output import jsonable
    from actgeom.cli.report.data import ReportOptions, gather
    from actgeom.core.dump import DumpSpec

    X, y = class_data(rng, [100, 100, 100], 24, offset=20.0, separation=1.0)  # positive: selectivity defined
    X[:, :4] = 0.0
    X[rng.integers(0, 300, 4), np.arange(4)] = 5.0  # units firing once (kurtosis ≈ 300) beside ≈ 0.3 typical
    path = write_dump(tmp_path / "d.h5", {"spiky": X, "dense": X[:, ::-1] * 2}, labels=y)
    document = jsonable(gather([Path(path)], DumpSpec(), ReportOptions(families=("neurons",))))
    from actgeom.cli.report.figures_units import fig_neurons

    figure = fig_neurons(document)
    assert any(ax.get_yscale() == "symlog" for ax in figure.axes)
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)  # lays the text out
    page = figure.bbox
    for ax in figure.axes:
        boxes = sorted((label.get_window_extent(renderer) for label in ax.get_yticklabels() if label.get_text()),
                       key=lambda box: box.y0)
        assert all(low.y1 <= high.y0 for low, high in zip(boxes, boxes[1:])), ax.get_title()
        title = ax.title.get_window_extent(renderer)
        assert page.x0 <= title.x0 and title.x1 <= page.x1, ax.get_title()
        for legend in figure.legends + [ax.get_legend()]:
            if legend is not None:
                assert not legend.get_window_extent(renderer).overlaps(ax.bbox)


def test_slanted_layer_names_stay_inside_the_figure(tmp_path, rng):
    """Long layer names are slanted; the first column's reach left of its panel (the figure keeps room)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from actgeom.cli.output import jsonable
    from actgeom.cli.report.data import ReportOptions, gather
    from actgeom.cli.report.figures import fig_depth
    from actgeom.core.dump import DumpSpec

    X, y = class_data(rng, [30, 30, 30], 8)
    layers = {f"encoder.layer.{i}.output.dense": np.maximum(X * (i + 1), 0.0) for i in range(4)}
    path = write_dump(tmp_path / "d.h5", layers, labels=y)
    figure = fig_depth(jsonable(gather([Path(path)], DumpSpec(), ReportOptions(families=("collapse", "rank")))))
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    for ax in figure.axes:
        for label in ax.get_xticklabels():
            box = label.get_window_extent(renderer)
            assert figure.bbox.x0 <= box.x0 and box.y0 >= figure.bbox.y0, label.get_text()


def test_a_flat_series_gets_no_offset_text_under_the_title():
    """A metric equal on every layer to 1e-11 (RankMe of scaled copies) was labelled “1e-11+1.01e1”
    at the top of its axis, over the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from actgeom.cli.report.figures import _grid

    figure, (ax,) = _grid(1)
    ax.plot([1, 2, 3], [11.0118591, 11.0118591 + 1e-11, 11.0118591])
    figure.draw(FigureCanvasAgg(figure).get_renderer())
    assert not ax.yaxis.get_offset_text().get_text()


def test_top_units_follow_the_minimum_support_and_show_it(cli, tmp_path, rng):
    """report --min-support is neurons' --min-support: the same ranked units, the rule in the title, firing rows shown."""
    dumps = [_small_dump(tmp_path / f"c{step}.h5", rng, step) for step in (1, 2)]
    code, _, err = cli("report", *dumps, "-o", tmp_path / "r.html", "--results", tmp_path / "r.json",
                       "--families", "neurons", "--layers", "b", "--min-support", "40")
    assert code == 0, err
    ranked = json.loads((tmp_path / "r.json").read_text())["files"][-1]["layers"][0]["neurons"]
    command = Cli().json("neurons", dumps[-1], "--layers", "b", "--min-support", "40")["files"][0]["layers"][0]["neurons"]
    assert ranked["min_support"] == 40 and ranked["top_units"] == command["top_units"]
    assert all(unit["firing_rows"] >= 40 for unit in ranked["top_units"])
    page = (tmp_path / "r.html").read_text()
    assert "among units firing on ≥ 40 rows (--min-support)" in page and "<th>firing_rows</th>" in page


# where names clash, (family, its command's name) of the report's option (README: `actgeom report`)
PREFIXED = {"collapse_preset": ("collapse", "preset"), "rank_preset": ("rank", "preset"), "rank_eps": ("rank", "eps"),
            "rank_subsample": ("rank", "subsample"), "entropy_eps": ("entropy", "eps"),
            "subsample": ("entropy", "subsample")}
# one value for several families, so declared by the report: rank's, entropy's and probe's --seed;
# entropy's and neurons' --threshold and --tau
SHARED_BY_FAMILIES = {"seed", "threshold", "tau"}


def test_report_options_are_the_family_commands_own():
    """Every family option of `report` is its command's declaration: the same names, help text, shown
    default and default (but the DSE sample: 2 000 rows, not 10 000), so that the two cannot drift apart.
    Options of every command (--layers, --format, ...) are the report's own."""
    import typer.main

    from actgeom.cli.app import app
    from actgeom.cli.report import FAMILIES, REPORT_SUBSAMPLE

    commands = typer.main.get_command(app).commands
    params = {name: {param.name: param for param in commands[name].params} for name in ("report", *FAMILIES)}
    compared = {}
    for name, param in params["report"].items():
        family, own = PREFIXED.get(name, (None, name))
        owners = [family] if family else [f for f in FAMILIES if own in params[f]]
        if not owners or len(owners) == len(FAMILIES) or name in SHARED_BY_FAMILIES:
            continue
        for theirs in (params[owner][own] for owner in owners):
            assert (param.help, param.show_default) == (theirs.help, theirs.show_default), name
            assert param.secondary_opts == theirs.secondary_opts, name
            assert param.default == theirs.default or name == "subsample", name
            mine = [f"--{name}".replace("_", "-")] if name in PREFIXED else theirs.opts
            assert (param.opts, theirs.opts[0]) == (mine, f"--{own}".replace("_", "-")), name  # retitled, not renamed
        compared[name] = owners
    assert params["report"]["subsample"].default == REPORT_SUBSAMPLE
    assert set(PREFIXED) <= set(compared) and {"min_count", "center", "alpha", "top", "split_by"} <= set(compared)


def test_figures_drawn_in_two_processes_equal_those_drawn_in_one(tmp_path, rng, monkeypatch):
    """With two usable CPUs a forked child draws every other figure: the same page, in the same order,
    the same --figures files."""
    from actgeom.cli.report import render

    document = _document(tmp_path, rng)
    monkeypatch.setattr(render, "_may_fork", lambda: False)
    out = tmp_path / "out"
    out.mkdir()
    alone = render.draw(document, out / "alone")
    drawn_by = tmp_path / "pids"
    drawn_by.mkdir()
    figures = [entry for entry in render.FIGURES if entry[4] != "ood"]  # (no --ood: no OOD section)
    for index, (fig_id, section, caption, function, family) in enumerate(figures):
        def noting(document, function=function, index=index):
            (drawn_by / f"{index}.{os.getpid()}").touch()
            return function(document)
        figures[index] = (fig_id, section, caption, noting, family)
    monkeypatch.setattr(render, "FIGURES", tuple(figures))
    monkeypatch.setattr(render, "_may_fork", lambda: True)
    assert render.draw(document, out / "forked") == alone and len(alone) == len(figures)
    pids = {int(index): int(pid) for index, pid in (name.split(".") for name in os.listdir(drawn_by))}
    assert {pid for index, pid in pids.items() if index % 2 == 0} == {os.getpid()}
    assert os.getpid() not in {pid for index, pid in pids.items() if index % 2 == 1}
    assert sorted(os.listdir(out / "forked")) == sorted(os.listdir(out / "alone"))
    assert sorted(os.listdir(out)) == ["alone", "forked"]  # no staging directory left


def _failing_figures(render, monkeypatch, failing: int, function):
    figures = list(render.FIGURES)
    figures[failing] = (*figures[failing][:3], function, None)
    monkeypatch.setattr(render, "FIGURES", tuple(figures))
    monkeypatch.setattr(render, "_may_fork", lambda: True)


@pytest.mark.parametrize("failing", [0, 1], ids=["in the parent", "in the child"])
def test_a_figure_that_fails_in_either_process_is_its_error_and_leaves_no_figure(tmp_path, rng, monkeypatch, failing):
    """An actgeom error keeps its kind, message and fields across the fork; a bug in the child
    shows the child's traceback; Ctrl-C in either is an interruption; no --figures file is left."""
    from actgeom.cli.report import render
    from actgeom.core.base.errors import OptionError, OutputError

    def full_disk(document):
        raise OutputError("cannot write figures/x.svg: No space left on device")

    def bad_option(document):
        raise OptionError("cutoff", 2.0, "must be in [0, 1]")

    def bug(document):
        return 1 / 0

    def ctrl_c(document):
        raise KeyboardInterrupt

    document = _document(tmp_path, rng)
    out = tmp_path / "out"
    out.mkdir()
    for function, expected, message in ((full_disk, OutputError, "No space left"), (bad_option, OptionError, "cutoff"),
                                        (bug, (ZeroDivisionError, RuntimeError), "division by zero"),
                                        (ctrl_c, KeyboardInterrupt, None)):
        _failing_figures(render, monkeypatch, failing, function)
        with pytest.raises(expected, match=message) as raised:
            render.draw(document, out / "figures")
        if function is bad_option:
            assert raised.value.for_cli() == "--cutoff '2.0' must be in [0, 1]"
        assert os.listdir(out) == [], "a figure or the staging directory was left"


def test_a_subsample_beyond_the_rows_is_said_as_entropy_says_it(cli, tmp_path, rng):
    """report --subsample (DSE/DSMI's) larger than the rows uses every row and says so, as `entropy` does."""
    path = _small_dump(tmp_path / "d.h5", rng, step=1)
    code, _, err = cli("report", path, "-o", tmp_path / "r.html", "--families", "entropy", "--subsample", "5000", "-q")
    assert code == 0, err
    assert "--subsample 5000 is more than the 90 rows: every row is used" in err
    code, _, err = cli("report", path, "-o", tmp_path / "r.html", "--families", "entropy", "-q")
    assert code == 0 and "--subsample" not in err, err  # the default is not the user's


# -- uncertainty: --ci error bars and ±, --baseline lines and bands (#24) ---------------------------------------

CI_GROUPS = 10


def _training_run(folder: Path, rng, steps=(0, 10, 100)) -> list[str]:
    """Checkpoints whose classes separate more at each step (collapse changes over training)."""
    paths = []
    for k, step in enumerate(steps):
        X, y = class_data(rng, [40, 40, 40], 12, separation=1.0 + k)
        path = write_dump(folder / f"ckpt_{step}.h5", {"a": X, "b": np.maximum(X, 0.0)}, labels=y)
        with h5py.File(path, "a") as f:
            f.attrs["step"] = step
            f["activations/b"].attrs["activation"] = "relu"
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory):
    """A --ci --baseline report of three checkpoints (the first one the baseline of every one)."""
    out = tmp_path_factory.mktemp("ci_report")
    paths = _training_run(out, np.random.default_rng(7))
    code, stdout, stderr = Cli()("report", *paths, "--ci", "--ci-groups", str(CI_GROUPS), "--baseline", paths[0],
                                 "--families", "collapse,rank,probe", "-o", out / "r.html", "--results", out / "r.json",
                                 "--format", "md", "-q")
    assert code == 0, stderr
    html = (out / "r.html").read_text()
    return {"dir": out, "paths": paths, "stdout": stdout, "html": html, "page": Page(html),
            "results": json.loads((out / "r.json").read_text())}


def _bars(figure, gid: str) -> list[tuple[float, float, float]]:
    """(x, low, high) of each error bar an artist with ``gid`` draws."""
    found = [artist for ax in figure.axes for artist in ax.get_children() if artist.get_gid() == gid]
    return [(a[0], a[1], b[1]) for artist in found for a, b in artist.get_segments()]


def _expected_bars(document: dict, cells, name: str, x) -> list[tuple[float, float, float]]:
    from actgeom.cli.report.uncertainty import bounds

    return [(x[k], *bounds(entry, layer, name)) for k, (entry, layer) in enumerate(cells)
            if np.isfinite(bounds(entry, layer, name)).all()]


def test_ci_bars_are_each_metrics_interval_on_every_training_and_depth_plot(ci_report):
    """Every point of the over-training, across-depth and probe plots that has an interval gets one bar
    from ci_low to ci_high (exactly the document's numbers), in the line's colour; the SVG carries them."""
    from actgeom.cli.report import figures, figures_units

    document = ci_report["results"]
    layers, files = ["a", "b"], document["files"]
    steps = np.array([entry["step"] for entry in files], dtype=float)
    depth = np.arange(1.0, len(layers) + 1)
    drawn = 0
    for function, by_layer in ((figures.fig_training, True), (figures.fig_depth, False),
                               (figures_units.fig_probe_training, True), (figures_units.fig_probe_depth, False)):
        figure = function(document)
        names = {artist.get_gid().split("-")[1] for ax in figure.axes for artist in ax.get_children()
                 if (artist.get_gid() or "").startswith("ci-")}
        assert {"nc1", "cdnv", "lda_accuracy"} & names, function.__name__
        for name in names:
            series = [[(e, layer) for e in files] for layer in layers] if by_layer else \
                [[(e, layer) for layer in layers] for e in files]
            for i, cells in enumerate(series):
                expected = _expected_bars(document, cells, name, steps if by_layer else depth)
                bars = np.array(_bars(figure, f"ci-{name}-{i}")).reshape(-1, 3)
                assert bars.shape == (len(expected), 3), (function.__name__, name)
                np.testing.assert_allclose(bars, np.array(expected).reshape(-1, 3), rtol=1e-12, atol=0)
                drawn += len(expected)
    assert drawn > 100
    html = ci_report["html"]
    for figure_id, name in (("fig-training", "nc1"), ("fig-depth", "cdnv"), ("fig-probe-depth", "lda_accuracy")):
        assert f'id="{figure_id}-ci-{name}-0"' in html  # the bars are in the page's SVG
    legend = [text.get_text() for text in figures.fig_training(document).legends[0].get_texts()]
    assert legend[-2:] == ["95% jackknife interval", "baseline (grey band: its interval)"]


def test_a_point_without_an_interval_gets_no_bar(ci_report):
    from actgeom.cli.report import figures

    document = json.loads(json.dumps(ci_report["results"]))
    middle = next(layer for layer in document["files"][1]["layers"] if layer["layer"] == "a")
    del middle["intervals"]["nc1"]
    bars = _bars(figures.fig_training(document), "ci-nc1-0")
    assert [x for x, _, _ in bars] == [0.0, 100.0]  # the step-10 point has none


def test_ci_tables_show_value_plus_minus_half_width(ci_report):
    """Each cell of a metric with an interval shows value ± half-width as the CLI table does, and
    carries the bounds; the summary on stdout too; the note says what the bars are."""
    from actgeom.cli.cells import plus_minus

    document, page = ci_report["results"], ci_report["page"]
    intervals = {(str(i), layer["layer"], name): (layer["metrics"][name], interval)
                 for i, entry in enumerate(document["files"]) for layer in entry["layers"]
                 for name, interval in layer["intervals"].items()}
    with_bounds = [cell for cell in page.cells if "data-ci-low" in cell]
    assert len(with_bounds) == len(intervals) > 100
    for cell in with_bounds:
        value, interval = intervals[(cell["data-file"], cell["data-layer"], cell["data-metric"])]
        assert json.loads(cell["data-ci-low"]) == interval["ci_low"]
        assert json.loads(cell["data-ci-high"]) == interval["ci_high"]
        shown = plus_minus(value, interval)
        assert " ± " in shown and (cell["text"] == shown or cell["text"].startswith(shown + "Δ baseline"))
    nc1 = intervals[("2", "a", "nc1")]
    assert f" {plus_minus(*nc1)} " in ci_report["stdout"]  # the summary's cell
    note = next(attrs for tag, attrs in page.elements if attrs.get("id") == "inference-note")
    text = "".join(page.text)
    assert note is not None and f"delete-a-group jackknife over {CI_GROUPS} groups of rows (seed 0)" in text
    caption = f"Error bars: 95% intervals: delete-a-group jackknife over {CI_GROUPS} groups of rows (seed 0); a point"
    assert text.count(caption) == 4  # training, depth, probe depth and probe training
    records = [json.loads(line) for line in (_results_jsonl(ci_report)).splitlines()]
    row = next(r for r in records if (r["step"], r["layer"], r["metric"]) == (100, "a", "nc1"))
    assert (row["ci_low"], row["ci_high"], row["ci_groups"]) == (nc1[1]["ci_low"], nc1[1]["ci_high"], CI_GROUPS)


def _results_jsonl(report: dict) -> str:
    from actgeom.cli.report.summary import records

    return "\n".join(json.dumps(row) for row in records(report["results"]))


def test_baseline_line_and_band_on_every_plot(ci_report):
    """--baseline: the baseline's value as a grey line on each metric's panel; its band is the
    baseline checkpoint's own interval; the table says value − baseline."""
    from actgeom.cli.report import figures

    document = ci_report["results"]
    first = document["files"][0]
    assert document["inference"]["baseline"] == [ci_report["paths"][0]]
    figure = figures.fig_training(document)
    for i, layer in enumerate(("a", "b")):
        line = next(a for ax in figure.axes for a in ax.get_children() if a.get_gid() == f"baseline-nc1-{i}")
        record = next(r for r in first["layers"] if r["layer"] == layer)
        assert list(line.get_ydata()) == [record["metrics"]["nc1"]] * 3
        band = next(a for ax in figure.axes for a in ax.get_children() if a.get_gid() == f"baseline-nc1-{i}-band")
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(record["intervals"]["nc1"]["ci_low"], rel=1e-12)
        assert max(ys) == pytest.approx(record["intervals"]["nc1"]["ci_high"], rel=1e-12)
    depth = figures.fig_depth(document)
    shared = [a.get_gid() for ax in depth.axes for a in ax.get_children() if (a.get_gid() or "").startswith("baseline-nc1-")]
    assert shared == ["baseline-nc1-0", "baseline-nc1-0-band"]  # one baseline for every checkpoint: drawn once
    assert 'id="fig-training-baseline-nc1-0-band"' in ci_report["html"]
    cell = next(c for c in ci_report["page"].cells if (c["data-file"], c["data-layer"], c["data-metric"]) == ("2", "a", "nc1"))
    assert json.loads(cell["data-baseline"]) == next(r for r in first["layers"] if r["layer"] == "a")["metrics"]["nc1"]
    assert "Δ baseline" in cell["text"]


def test_a_run_without_ci_has_no_bars_no_plus_minus_no_note(sample_report):
    html, page = sample_report["html"], sample_report["page"]
    assert "±" not in html and "data-ci-low" not in html and "inference-note" not in html and "Error bars" not in html
    assert not re.search(r'id="fig-[a-z-]+-(ci|baseline)-', html)
    from actgeom.cli.report.summary import records

    assert list(records(sample_report["results"])[0]) == ["file", "checkpoint", "step", "layer", "kind", "n_rows",
                                                         "n_units", "metric", "value", "note"]
    assert all("Δ" not in cell["text"] for cell in page.cells)


def test_baselines_pair_with_the_dumps_in_the_given_order(cli, tmp_path, rng):
    """One baseline per dump, in the order the dumps were given, though the report orders them by step."""
    run = _training_run(tmp_path, rng, steps=(5, 50))
    (tmp_path / "c").mkdir()
    controls = _training_run(tmp_path / "c", rng, steps=(0, 1))
    late_first = [run[1], run[0]]
    code, _, err = cli("report", *late_first, "--baseline", controls[1], "--baseline", controls[0], "--families",
                       "collapse", "-o", tmp_path / "r.html", "--results", tmp_path / "r.json", "-q")
    assert code == 0, err
    files = json.loads((tmp_path / "r.json").read_text())["files"]
    assert [(entry["file"], entry["baseline_file"]) for entry in files] == [(run[0], controls[0]), (run[1], controls[1])]
    code, _, err = cli("report", *run, "--baseline", controls[0], "--baseline", controls[1], "--baseline", controls[0],
                       "--families", "collapse", "-o", tmp_path / "r2.html", "-q")
    assert code != 0 and "--baseline" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r2.html").exists()
    code, _, err = cli("report", *run, "--ci-groups", "5", "--families", "collapse", "-o", tmp_path / "r3.html", "-q")
    assert code != 0 and "--ci-groups is an option of --ci" in err, err


def test_the_python_report_takes_ci_and_baseline(tmp_path, rng):
    """actgeom.report(ci=, ci_groups=, ci_seed=, baseline=): the intervals and differences of actgeom.collapse."""
    import actgeom

    paths = _training_run(tmp_path, rng, steps=(1, 2))
    options = dict(ci=True, ci_groups=6, ci_seed=3, baseline=paths[0])
    report = actgeom.report(paths, families=["collapse"], **options).to_dict()
    alone = actgeom.collapse(paths, **options).to_dict()
    assert report["inference"]["ci"] == alone["inference"]["ci"] and report["inference"]["ci"]["groups"] == 6
    for ours, theirs in zip(report["files"], alone["files"]):
        for mine, other in zip(ours["layers"], theirs["layers"]):
            assert mine["intervals"]["nc1"] == other["intervals"]["nc1"]
            assert mine["baseline"]["nc1"] == other["baseline"]["nc1"]


def test_report_null_shows_each_p_value_of_the_command(tmp_path, rng, cli):
    """--null K: the page's metric cells carry the permutation p-values `collapse --null` gives."""
    paths = _training_run(tmp_path, rng, steps=(0, 10))
    code, _, stderr = cli("report", *paths, "--null", "19", "--null-seed", "3", "--families", "collapse,probe",
                          "-o", tmp_path / "r.html", "-q")
    assert code == 0, stderr
    html = (tmp_path / "r.html").read_text()
    checked = 0
    for index, path in enumerate(paths):
        for family in (actgeom.collapse, actgeom.probe):
            for layer in family(path, null=19, null_seed=3).files()[0]["layers"]:
                for metric, null in layer["nulls"].items():
                    cell = re.search(rf'<td class="num" data-file="{index}" data-layer="{layer["layer"]}" '
                                     rf'data-metric="{metric}" [^>]*data-p-value="([^"]+)"', html)
                    assert cell is not None, (path, layer["layer"], metric)
                    assert float(cell.group(1)) == null["p_value"]
                    checked += 1
    assert checked >= 8 and "no permutation null" in html  # NC4 or the like says why
