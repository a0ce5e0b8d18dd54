"""The report's document: every family on every layer of every checkpoint (core.api.run with
``details=True``: one pass per layer, plus NC4's), files in checkpoint order.

Nothing else in ``cli/report`` knows how the document was made; its shape is described in
``cli/report/__init__.py``. This module only orders the dumps, labels the progress per file,
and adds what spans checkpoints (the probe's direction cosines between consecutive ones).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from actgeom.cli.report import FAMILIES, REPORT_SUBSAMPLE
from actgeom.cli.report import ood as ood_section
from actgeom.core import api
from actgeom.core import baseline as baselines
from actgeom.core.analysis import directions_across_files
from actgeom.core.base.errors import OptionError
from actgeom.core.base.labels import file_labels
from actgeom.core.base.options import NeuronsOptions, ProbeOptions
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.dump.layout import natural_key
from actgeom.core.metrics.collapse import CollapseOptions
from actgeom.core.metrics.entropy import EntropyOptions
from actgeom.core.metrics.spectrum import RankOptions
from actgeom.core.state.engine import PassOptions, Progress


@dataclass(frozen=True)
class ReportOptions:
    """The options of every family, and of the pass, that the report runs with."""

    collapse: CollapseOptions = CollapseOptions()
    rank: RankOptions = RankOptions()
    entropy: EntropyOptions = EntropyOptions(subsample=REPORT_SUBSAMPLE)
    neurons: NeuronsOptions = NeuronsOptions()
    probe: ProbeOptions = ProbeOptions()
    passes: PassOptions = PassOptions()
    families: tuple[str, ...] = FAMILIES  # which of them run
    ood: ood_section.OodPlan | None = None  # --ood: each checkpoint scored against its OOD dump (cli/report/ood.py)


def parse_families(text: str) -> tuple[str, ...]:
    """--families: a comma list of the report's families, in page order; refused naming the valid ones."""
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    for name in chosen:
        if name not in FAMILIES:
            raise OptionError("families", name, f"is not a family of the report; choose from {','.join(FAMILIES)}")
    if not chosen:
        raise OptionError("families", text, f"names no family; choose from {','.join(FAMILIES)}")
    return tuple(name for name in FAMILIES if name in chosen)


def _step(value) -> int | None:
    """A dump's `step` attribute, None when absent (or -1, the writer's "no step")."""
    return value if isinstance(value, int) and value >= 0 else None


def checkpoint_order(paths: list[Path]) -> list[Path]:
    """By the dumps' `step` attribute when every dump has one, else natural file-name order."""
    steps = {}
    for path in paths:
        with Dump(path, DumpSpec(allow_incomplete=True)) as opened:
            steps[path] = _step(opened.attrs.get("step"))
    by_name = sorted(paths, key=lambda p: (natural_key(p.name), str(p)))
    if all(step is not None for step in steps.values()):
        return sorted(by_name, key=lambda p: steps[p])
    return by_name


def gather(paths: list[Path], spec: DumpSpec, options: ReportOptions = ReportOptions(),
           progress: Progress | None = None, cache: Path | None = None, backend=None, baseline=None) -> dict:
    """The report document of the dumps (checkpoints ordered), every family on every layer;
    ``cache``: a directory keeping each dump's results (core.api.run), so a re-run reads only the
    dumps that are new or changed; ``backend``: who runs the passes (core.api.run); ``baseline``:
    one dump for every checkpoint or one per dump of ``paths`` in their given order (core.api.run's),
    each analysed once (a baseline that is a checkpoint: its own record). With ``options.ood``, each
    file entry gains ``"ood"``: the checkpoint scored against its OOD dump (cli/report/ood.py)."""
    started = time.perf_counter()
    families = {name: getattr(options, name) for name in options.families}
    paths = [Path(p) for p in paths]
    pairs = baselines.paired(paths, baseline)
    if pairs is not None:  # before any pass: every checkpoint's baseline has its layers
        baselines.check_layers(paths, pairs, spec)
    base_of, memo = dict(zip(paths, pairs or [None] * len(paths))), {}
    document = None
    for path in checkpoint_order(paths):
        one = api.run("report", [path], families, spec=spec, pass_options=options.passes, details=True,
                      progress=_labelled(progress, path), cache=cache, backend=backend, baseline=base_of[path],
                      baseline_memo=memo).to_dict()
        if options.ood is not None:
            one["files"][0]["ood"], info = ood_section.score(path, options.ood, spec, options.passes,
                                                             _labelled(progress, path), backend)
            one["metrics_info"] |= info
            one["options"]["ood"] = ood_section.document_options(options.ood)
        if document is None:
            document = one
        else:
            document["files"] += one["files"]
            used = (document["inference"].get("baseline") or []) + (one["inference"].get("baseline") or [])
            document["inference"]["baseline"] = list(dict.fromkeys(used)) or None
    labels = file_labels([entry["file"] for entry in document["files"]])  # as every command's columns
    for entry, label in zip(document["files"], labels):
        entry["step"] = _step(entry.get("step"))
        entry["label"] = label
    if "probe" in families:  # the direction vectors give their cosines: D numbers per layer the page never shows
        directions_across_files(document, keep=False, other_details=True)
    document["elapsed_s"] = time.perf_counter() - started
    return document


def _labelled(progress: Progress | None, path: Path) -> Progress | None:
    """The progress of one dump: its layers named with the file."""
    if progress is None:
        return None

    def labelled(layer: str, done: int, total: int) -> None:
        progress(f"{path.name} · {layer}", done, total)

    stage = getattr(progress, "stage", None)
    if stage is not None:
        labelled.stage = lambda layer, text, seconds: stage(f"{path.name} · {layer}", text, seconds)
    return labelled
