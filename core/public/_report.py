"""``actgeom.report``: the report's document from Python, and its page when asked for.

The document is the data of the page — every family on every layer of every checkpoint, files in
checkpoint order — made by the same code as `actgeom report` (``actgeom.cli.report.data.gather``:
core.api.run per checkpoint). The page is output: drawing it needs matplotlib and the page builder
of ``actgeom.cli.report``, so they are imported only when ``output`` is given. This function lives
in the public package, not in core, because core never depends on the command line's code.
"""

from __future__ import annotations

import json
from pathlib import Path

from actgeom.core.base.options import CI_GROUPS


def report(paths, output=None, *, families=None, options: dict | None = None, layers=None, labels=None, weight=None,
           bias=None, predictions=None, offsets=None, attention=None, allow_incomplete=False, nonfinite="error",
           tokens="all", products="float64", figures=None, cache=None, progress=None, backend=None, ci=False,
           ci_groups=CI_GROUPS, ci_seed=0, baseline=None):
    """Every family on every layer of every checkpoint (`actgeom report`) → a :class:`Result` whose
    document is what ``--results report.json`` holds; with ``output`` the HTML page is written there
    too (atomically), and with ``figures`` each figure as SVG and PDF in that directory.

    ``families``: the report's families to run (default: collapse, rank, entropy, neurons, probe);
    ``options``: {family: dict of its keyword options}, the rest as the command's defaults (the
    entropy sample is the report's 2 000 rows unless ``{"entropy": {"subsample": ...}}``);
    ``cache``, ``backend``, ``ci``, ``ci_groups``, ``ci_seed``, ``baseline``: as :func:`actgeom.analyze`'s
    (with ``ci`` the page draws error bars; with ``baseline`` a grey line per metric).
    """
    from actgeom.cli.report import FAMILIES, REPORT_SUBSAMPLE
    from actgeom.cli.report.data import ReportOptions, gather, parse_families
    from actgeom.core.api import family_options
    from actgeom.core.backends import open_backend
    from actgeom.core.base.errors import UsageError
    from actgeom.core.base.outputs import check_outputs, write_output
    from actgeom.core.base.result import Result
    from actgeom.core.dump import DumpSpec
    from actgeom.core.state.engine import PassOptions

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    check_outputs({"output": output}, paths + [Path(p) for p in ([baseline] if isinstance(baseline, (str, Path))
                                                                 else baseline or [])])
    if figures is not None and Path(figures).exists() and not Path(figures).is_dir():
        raise UsageError(f"figures={str(figures)!r} is a file; give a directory")
    given = options or {}
    chosen = {name: family_options(name, given.get(name)) for name in FAMILIES if name != "entropy"}
    chosen["entropy"] = family_options("entropy", {"subsample": REPORT_SUBSAMPLE} | (given.get("entropy") or {}))
    layers = [layers] if isinstance(layers, str) else list(layers or ())
    if layers:  # the VAE layers are read too, as `neurons` does
        layers += [name for name in (chosen["neurons"].mu, chosen["neurons"].logvar) if name and name not in layers]
    spec = DumpSpec(layers=tuple(layers), labels=labels, weight=weight,
                    bias=bias, predictions=predictions, offsets=offsets, attention=attention,
                    allow_incomplete=allow_incomplete)
    passes = PassOptions(nonfinite=nonfinite, tokens=tokens, products=products, ci_groups=ci_groups if ci else 0,
                         ci_seed=ci_seed)
    run = ReportOptions(**chosen, passes=passes, families=parse_families(",".join(families or FAMILIES)))
    with open_backend(backend) as executor:  # one cluster for every checkpoint
        document = _json_ready(gather(paths, spec, run, progress, cache, backend=executor, baseline=baseline))
    if output is not None:
        from actgeom.cli.report.render import render_page  # matplotlib: only for the page

        if figures is not None:
            Path(figures).mkdir(exist_ok=True)
        write_output(output, render_page(document, None if figures is None else Path(figures), inputs=paths), paths,
                     option="output")
    return Result(document)


def _json_ready(document: dict) -> dict:
    """The document as the command renders and writes it: plain JSON values (numpy unwrapped,
    tuples as lists), non-finite numbers as None."""
    plain = lambda value: value.tolist() if hasattr(value, "tolist") else str(value)  # noqa: E731  (numpy, Path)
    return json.loads(json.dumps(document, default=plain), parse_constant=lambda _: None)
