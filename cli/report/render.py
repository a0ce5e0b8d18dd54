"""Figures to inline SVG (and SVG + PDF files), and the page assembled from the document."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
from itertools import zip_longest
from pathlib import Path

from actgeom.cli.report import figures as f
from actgeom.cli.report import figures_layers as g
from actgeom.cli.report import figures_ood as d
from actgeom.cli.report import figures_units as u
from actgeom.cli.report import uncertainty
from actgeom.cli.report.page import build_page
from actgeom.core.base.errors import ActgeomError, OutputError
from actgeom.core.base.outputs import check_output
from actgeom.core.base.threads import usable_cpus

OOD_SECTION = "Out-of-distribution"
# (id, section, caption, drawing function, the family it needs or None), in page order; the ood
# figures only with --ood (the page has no OOD section otherwise)
FIGURES = (
    ("fig-training", "Over training", "Headline metrics against the training step, one line per layer. Dashed: the "
     "metric's ideal value; log axes where a metric spans decades; ↓/↑ marks which way is better.", f.fig_training, None),
    ("fig-depth", "Across depth", "The same metrics layer by layer, one line per checkpoint. Dotted on separation "
     "fuzziness: the He–Su separation law ln D_l = a + l·ln ρ fitted per checkpoint (ρ < 1: each layer separates "
     "the classes by a constant factor; R² near 1: the law holds).", f.fig_depth, None),
    ("fig-spectra", "Eigenspectra", "Eigenvalues of each layer's covariance (of its raw second moment with --no-center: "
     "the spectrum the rank metrics used) against their rank (log–log) at the first and last checkpoint. Shaded: the "
     "ranks of the α-ReQ power-law fit; dotted: the storage-noise floor (eigenvalues below it are indistinguishable "
     "from the rounding of the stored activations).", g.fig_spectra, "rank"),
    ("fig-class-cosine", "Classes at the last checkpoint", "Cosines between the centred class means m_c = μ_c − μ_G "
     "(the 50 most frequent classes when there are more). Collapse to a simplex ETF makes every off-diagonal "
     "cosine −1/(C−1).", g.fig_class_cosine, "collapse"),
    ("fig-duality", "Classes at the last checkpoint", "Classifier–mean duality (NC3): cos(w_c, m_c) for each class "
     "(the 50 most frequent when there are more), for the layer the classifier reads.", g.fig_duality, "collapse"),
    ("fig-activity", "Neuron activity", "Dead units (never above the activity threshold) and dormant units (ReDo score "
     "≤ τ) per layer at the last checkpoint, and the distribution of per-unit firing rates at the first and last "
     "checkpoint.", g.fig_activity, "entropy"),
    ("fig-neurons", "Neuron activity", "The distribution over units, per layer at the last checkpoint, of the class "
     "selectivity index (μ_max − μ_rest)/(μ_max + μ_rest) over class-conditional means (dashed: --cutoff; units "
     "above it count as selective) and of the score that ranks the units (--score). The top units are listed "
     "under “Every metric”.", u.fig_neurons, "neurons"),
    ("fig-attention", "Neuron activity", "Attention entropy per head and attention layer at the last checkpoint.",
     g.fig_attention, "entropy"),
    ("fig-probe-depth", "Linear probes", "Test accuracy of the linear probes fitted in closed form on the train rows "
     "(LDA with shrinkage, ridge on one-hot targets, nearest class mean) layer by layer, one line per checkpoint. "
     "Each axis spans its accuracies; dashed: chance, 1/C, when it falls on the axis (else the title gives it).",
     u.fig_probe_depth, "probe"),
    ("fig-probe-training", "Linear probes", "The same accuracies against the training step, one line per layer "
     "(dashed: chance); last panel: the cosine of each layer's concept direction μ₊ − μ₋ with the previous "
     "checkpoint's (two classes, or --positive/--negative).", u.fig_probe_training, "probe"),
    ("fig-ood-depth", OOD_SECTION, "AUROC of each OOD score (ID test rows positive, OOD rows negative) layer by layer, "
     "one panel per checkpoint: each checkpoint's dump is the in-distribution fit dump, scored against its own OOD "
     "dump (--ood). Dashed: chance.", d.fig_ood_depth, "ood"),
    ("fig-ood-nc5", OOD_SECTION, "NC5 (Ben Ammar et al. 2024): the mean |cosine| between the OOD rows' centred mean and "
     "each centred ID class mean, layer by layer, one line per checkpoint; 0: the OOD mean is orthogonal to every "
     "class mean.", d.fig_ood_nc5, "ood"),
    ("fig-ood-histograms", OOD_SECTION, "At the last checkpoint, each score's distribution over the ID test rows and the "
     "OOD rows at the layer where its AUROC is highest (densities; the 0.5 % of pooled scores at each end are counted "
     "in the end bins).", d.fig_ood_histograms, "ood"),
)


def figure_svg(figure, salt: str) -> str:
    """The figure as a standalone SVG document: drawn once, text as paths, ids salted."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        figure.savefig(buffer, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    return buffer.getvalue()


def inline_svg(svg: str, salt: str) -> str:
    """Inline SVG of a figure's SVG document: no XML prolog, DOCTYPE, metadata or namespace URLs;
    ids unique to this figure (``salt``) so several figures can share one page."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    # glyph and clip ids repeat from figure to figure: make them this figure's own
    svg = re.sub(r'(\bid="|href="#|url\(#)([^"#)]+)', rf"\g<1>{salt}-\g<2>", svg)
    width = re.search(r'<svg[^>]*?\swidth="([0-9.]+)pt"', svg)
    svg = re.sub(r'<svg([^>]*?)\s+width="[^"]*"\s+height="[^"]*"', r'<svg\1', svg, count=1)
    if width:  # shrink with the window, never grow past the drawn size
        svg = svg.replace("<svg", f'<svg style="max-width: {float(width.group(1)):.0f}pt"', 1)
    return svg.replace("<svg", f'<svg role="img" aria-label="{salt}"', 1)


def to_svg(figure, salt: str) -> str:
    """Inline SVG of a figure (figure_svg, then inline_svg)."""
    return inline_svg(figure_svg(figure, salt), salt)


def draw(document: dict, figures_dir: Path | None = None, inputs=()) -> list[tuple[str, str, str, str, dict]]:
    """Every figure of the page: (id, section, caption, inline SVG or "", {panel: why it is not
    drawn}) — absent figures say why in their caption. Each figure is drawn once: the page's SVG is
    also the --figures SVG file. The --figures files are drawn into a hidden directory beside
    ``figures_dir`` and moved into it only once every figure is drawn: a run that fails or is
    interrupted leaves none of its figures."""
    staged = None if figures_dir is None else _Staged(figures_dir, inputs)
    try:
        drawn = _draw_all(document, staged)
        if staged is not None:
            staged.publish()
    finally:
        if staged is not None:
            staged.discard()
    return drawn


def _draw_all(document: dict, staged: "_Staged | None") -> list[tuple[str, str, str, str, dict]]:
    """With two usable CPUs, a forked child draws every other figure (drawing is pure-Python
    matplotlib, one CPU per process: the figures take about half the time)."""
    shown = [entry for entry in FIGURES if entry[4] != "ood" or "ood" in document["options"]]

    def one(index: int) -> tuple[str, str, str, str, dict]:
        return _draw_one(shown[index], document, staged)

    indices = range(len(shown))
    if not _may_fork():
        return [one(index) for index in indices]
    with _Forked(lambda: [one(index) for index in indices[1::2]]) as child:
        mine = [one(index) for index in indices[::2]]
        theirs = child.result()
    return [figure for pair in zip_longest(mine, theirs) for figure in pair if figure is not None]


def _may_fork() -> bool:
    """A second CPU, and no thread but this one (a Dask client's threads are not forked)."""
    return usable_cpus() >= 2 and threading.active_count() == 1


def _draw_one(entry, document: dict, staged: "_Staged | None") -> tuple[str, str, str, str, dict]:
    fig_id, section, caption, function, family = entry
    figure = function(document) if family is None or family in document["options"] else \
        f"the {family} family was not computed (--families)"
    if isinstance(figure, str):
        return fig_id, section, f"{caption.split('.')[0]}: not drawn — {figure}.", "", {}
    svg = figure_svg(figure, fig_id)
    if staged is not None:
        try:
            (staged.directory / f"{fig_id}.svg").write_text(svg, encoding="utf-8")
            figure.savefig(staged.directory / f"{fig_id}.pdf", format="pdf", metadata={"Creator": None})
        except OSError as exc:
            raise OutputError(f"cannot write {staged.final / fig_id}.svg/.pdf: {exc.strerror or exc}") from None
    return fig_id, section, caption + _uncertainty_caption(document, figure), inline_svg(svg, fig_id), \
        getattr(figure, "unavailable", {})


def _uncertainty_caption(document: dict, figure) -> str:
    """What the figure's error bars and grey lines are (a figure drawing them sets its ``uncertainty``: (bars, baseline))."""
    bars, band = getattr(figure, "uncertainty", (False, False))
    words = uncertainty.interval_words(document)
    return ((f" Error bars: {words}; a point without one has none." if bars and words else "")
            + (" Grey dash-dotted: the same metric on the baseline dump (band: its interval, where known)." if band else ""))


class _Staged:
    """The --figures files of one run: drawn into ``.DIR.XXXX.tmp`` beside DIR, moved into DIR
    (made if it does not exist) by :meth:`publish`, removed with the hidden directory otherwise."""

    def __init__(self, final: Path, inputs):
        self.final, self.inputs = Path(final), inputs
        try:
            self.directory = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=self.final.parent))
        except OSError as exc:
            raise OutputError(f"cannot write {self.final}: {exc.strerror or exc}") from None

    def publish(self) -> None:
        try:
            self.final.mkdir(exist_ok=True)
            for staged in sorted(self.directory.iterdir()):
                os.replace(staged, check_output(self.final / staged.name, self.inputs, option="--figures"))
        except OSError as exc:
            raise OutputError(f"cannot write {self.final}: {exc.strerror or exc}") from None

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class _Forked:
    """``work()`` run in a forked child, as a context: its result (or its error) comes back
    pickled through a pipe; leaving the context stops and reaps the child whatever happened."""

    def __init__(self, work):
        read, write = os.pipe()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # no Ctrl-C between fork and owning the child
        self.pid = os.fork()
        if self.pid == 0:
            self._child(work, read, write, mask)  # never returns
        os.close(write)
        self.pipe, self.received = os.fdopen(read, "rb"), False
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C that came meanwhile is raised here
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _child(work, read: int, write: int, mask) -> None:
        status = 1
        try:
            os.close(read)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            try:
                payload = ("ok", work())
                status = 0
            except KeyboardInterrupt:
                payload = ("interrupted",)
            except ActgeomError as exc:  # the same kind of error, message and fields in the parent
                payload = ("error", type(exc), str(exc), vars(exc))
            except BaseException:  # a bug: the parent shows the child's traceback
                payload = ("bug", traceback.format_exc())
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the result is sent whole, or not at all
            with os.fdopen(write, "wb") as pipe:
                pickle.dump(payload, pipe)
        finally:
            os._exit(status)  # never into the caller's code: no second "interrupted", no exit handlers

    def __enter__(self) -> "_Forked":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def result(self):
        try:
            outcome = pickle.load(self.pipe)
        except EOFError:
            raise RuntimeError("the child process drawing figures ended without a result") from None
        self.received = True
        if outcome[0] == "interrupted":
            raise KeyboardInterrupt
        if outcome[0] == "error":
            kind, message, fields = outcome[1:]
            error = kind.__new__(kind)
            Exception.__init__(error, message)
            error.__dict__.update(fields)
            raise error
        if outcome[0] == "bug":
            raise RuntimeError(f"drawing figures in a child process failed:\n{outcome[1]}")
        return outcome[1]

    def stop(self) -> None:
        """Interrupt the child unless it sent its result; close the pipe (a child still writing
        gets EPIPE and exits); reap it."""
        if not self.received:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
        self.pipe.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def render_page(document: dict, figures_dir: Path | None = None, inputs=(), started: float | None = None) -> str:
    """The HTML page of a (JSON-ready) document; each figure also goes to ``figures_dir`` when given.
    Sets the document's ``drawing_s`` (the figures' time) and, given ``started`` (the command's
    time.perf_counter() at its start), its ``elapsed_s``: everything up to the assembled page."""
    before = time.perf_counter()
    figures = draw(document, figures_dir, inputs)
    document["drawing_s"] = time.perf_counter() - before
    if started is not None:
        document["elapsed_s"] = time.perf_counter() - started
    return build_page(document, figures)
