"""Figures to inline SVG (and SVG + PDF files), and the page assembled from the document."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import signal
import threading
import time
import traceback
from itertools import zip_longest
from pathlib import Path

from actgeom.cli.report import figures as f
from actgeom.cli.report import figures_layers as g
from actgeom.cli.report import figures_units as u
from actgeom.cli.report.page import build_page
from actgeom.core.errors import ActgeomError, OutputError
from actgeom.core.outputs import atomic_path, write_output
from actgeom.core.threads import usable_cpus

# (id, section, caption, drawing function, the family it needs or None), in page order
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
    also the --figures SVG file. With two usable CPUs, a forked child draws every other figure
    (drawing is pure-Python matplotlib, one CPU per process: the figures take about half the time)."""
    def one(index: int) -> tuple[str, str, str, str, dict]:
        return _draw_one(FIGURES[index], document, figures_dir, inputs)

    indices = range(len(FIGURES))
    if usable_cpus() < 2 or threading.active_count() > 1:  # fork only a single-threaded process (no Dask client)
        return [one(index) for index in indices]
    child = _Forked(lambda: [one(index) for index in indices[1::2]])
    try:
        mine = [one(index) for index in indices[::2]]
        theirs = child.result()
    finally:
        child.stop()
    return [figure for pair in zip_longest(mine, theirs) for figure in pair if figure is not None]


def _draw_one(entry, document: dict, figures_dir: Path | None, inputs) -> tuple[str, str, str, str, dict]:
    fig_id, section, caption, function, family = entry
    figure = function(document) if family is None or family in document["options"] else \
        f"the {family} family was not computed (--families)"
    if isinstance(figure, str):
        return fig_id, section, f"{caption.split('.')[0]}: not drawn — {figure}.", "", {}
    svg = figure_svg(figure, fig_id)
    if figures_dir is not None:
        _save(figure, svg, figures_dir / fig_id, inputs)
    return fig_id, section, caption, inline_svg(svg, fig_id), getattr(figure, "unavailable", {})


class _Forked:
    """``work()`` run in a forked child; its result (or its error) comes back pickled through a pipe."""

    def __init__(self, work):
        read, write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller's code
            os.close(read)
            status = 1
            try:
                payload = ("ok", work())
                status = 0
            except ActgeomError as exc:  # re-raised by the parent as the same kind of error, same message
                payload = ("error", type(exc), str(exc))
            except KeyboardInterrupt:
                payload = ("interrupted",)
            except BaseException:  # a bug: the parent shows the child's traceback
                payload = ("bug", traceback.format_exc())
            try:
                with os.fdopen(write, "wb") as pipe:
                    pickle.dump(payload, pipe)
            finally:
                os._exit(status)
        os.close(write)
        self.pipe = os.fdopen(read, "rb")

    def result(self):
        try:
            outcome = pickle.load(self.pipe)
        except EOFError:
            raise RuntimeError("the child process drawing figures ended without a result") from None
        if outcome[0] == "interrupted":
            raise KeyboardInterrupt
        if outcome[0] == "ok":
            return outcome[1]
        if outcome[0] == "error":
            error = outcome[1].__new__(outcome[1])
            Exception.__init__(error, outcome[2])
            raise error
        raise RuntimeError(f"drawing figures in a child process failed:\n{outcome[1]}")

    def stop(self) -> None:
        """Wait for the child; interrupt it first if it has not sent its result (the parent failed or was interrupted)."""
        self.pipe.close()
        with contextlib.suppress(ProcessLookupError):
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                os.kill(self.pid, signal.SIGINT)
                os.waitpid(self.pid, 0)


def _save(figure, svg: str, stem: Path, inputs) -> None:
    """The figure as SVG (its drawing for the page) and PDF files (each written atomically), in a
    directory made for the first one."""
    try:
        stem.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {stem.parent}: {exc.strerror or exc}") from None
    write_output(stem.with_suffix(".svg"), svg, inputs, option="--figures")
    with atomic_path(stem.with_suffix(".pdf"), inputs, option="--figures") as tmp:
        figure.savefig(tmp, format="pdf", metadata={"Creator": None})


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
