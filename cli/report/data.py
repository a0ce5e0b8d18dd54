"""TEMPORARY: the report's document from today's three family passes (collapse, rank, entropy).

The one-pass multi-family engine (``actgeom.analyze``) will replace :func:`gather` and
:data:`METRICS_INFO` (by the family registries); nothing else in ``cli/report`` knows how the
document was made. The document's shape is described in ``cli/report/__init__.py``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from actgeom.core import __version__
from actgeom.core.collapse import CollapseOptions, kept_classes
from actgeom.core.collapse_api import collapse_dump
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.dump.reader import natural_key
from actgeom.core.engine import PassOptions, Progress, accumulate
from actgeom.core.engine import options_record as pass_record
from actgeom.core.entropy import EntropyOptions
from actgeom.core.entropy_api import entropy_dump
from actgeom.core.rank_api import rank_dump
from actgeom.core.spectrum import RankOptions

MAX_CLASSES_SHOWN = 50  # class-mean cosine heatmaps and duality bars: the most frequent classes
REPORT_SUBSAMPLE = 2_000  # DSE/DSMI cost N³: the report's default sample (the entropy command's is 10 000)

# name → family, ideal, range, direction, source, log_scale (may use a log axis when it spans decades)
METRICS_INFO = {
    "nc1": {"family": "collapse", "ideal": 0.0, "range": [0.0, None], "direction": "lower",
            "source": "Papyan et al. 2020", "log_scale": True},
    "cdnv": {"family": "collapse", "ideal": 0.0, "range": [0.0, None], "direction": "lower",
             "source": "Galanti et al. 2022", "log_scale": True},
    "nc4_mismatch": {"family": "collapse", "ideal": 0.0, "range": [0.0, 1.0], "direction": "lower",
                     "source": "Papyan et al. 2020", "log_scale": True},
    "vci": {"family": "collapse", "ideal": 0.0, "range": [0.0, 1.0], "direction": "lower",
            "source": "Xu & Liu 2023", "log_scale": False},
    "separation_fuzziness": {"family": "collapse", "ideal": 0.0, "range": [0.0, None], "direction": "lower",
                             "source": "He & Su 2023", "log_scale": True},
    "rankme": {"family": "rank", "ideal": None, "range": [1.0, None], "direction": "higher",
               "source": "Garrido et al. 2023", "log_scale": False},
    "erank": {"family": "rank", "ideal": None, "range": [1.0, None], "direction": "neither",
              "source": "Roy & Vetterli 2007", "log_scale": False},
    "alpha_req": {"family": "rank", "ideal": 1.0, "range": [None, None], "direction": "neither",
                  "source": "Agrawal et al. 2022", "log_scale": False},
    "mean_cosine": {"family": "rank", "ideal": 0.0, "range": [-1.0, 1.0], "direction": "lower",
                    "source": "Ethayarajh 2019", "log_scale": False},
    "dataset_entropy": {"family": "entropy", "ideal": None, "range": [0.0, None], "direction": "neither",
                        "source": "Giraldo et al. 2015; Skean et al. 2025", "log_scale": False},
    "dead_fraction": {"family": "entropy", "ideal": 0.0, "range": [0.0, 1.0], "direction": "lower",
                      "source": "Voita et al. 2024", "log_scale": False},
    "dormant_fraction": {"family": "entropy", "ideal": 0.0, "range": [0.0, 1.0], "direction": "lower",
                         "source": "Sokar et al. 2023", "log_scale": False},
    "attention_entropy": {"family": "entropy", "ideal": None, "range": [0.0, None], "direction": "neither",
                          "source": "Zhai et al. 2023", "log_scale": False},
}


@dataclass(frozen=True)
class ReportOptions:
    """The options of every family, and of the pass, that the report runs with."""

    collapse: CollapseOptions = CollapseOptions()
    rank: RankOptions = RankOptions()
    entropy: EntropyOptions = EntropyOptions(subsample=REPORT_SUBSAMPLE)
    passes: PassOptions = PassOptions()


def checkpoint_order(paths: list[Path]) -> list[Path]:
    """By the dumps' `step` attribute when every dump has one (≥ 0), else natural file-name order."""
    steps = {}
    for path in paths:
        with Dump(path, DumpSpec(allow_incomplete=True)) as opened:
            step = opened.attrs.get("step")
        steps[path] = step if isinstance(step, int) and step >= 0 else None
    by_name = sorted(paths, key=lambda p: (natural_key(p.name), str(p)))
    if all(step is not None for step in steps.values()):
        return sorted(by_name, key=lambda p: steps[p])
    return by_name


def gather(paths: list[Path], spec: DumpSpec, options: ReportOptions = ReportOptions(),
           progress: Progress | None = None) -> dict:
    """The report document of the dumps (checkpoints ordered), every family on every layer."""
    started = time.perf_counter()
    files = []
    for path in checkpoint_order([Path(p) for p in paths]):
        with Dump(path, spec) as dump:
            files.append(_file_entry(dump, options, _labelled(progress, path)))
    return {
        "tool": "actgeom", "version": __version__, "command": "report",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - started,
        "options": {"collapse": asdict(options.collapse), "rank": asdict(options.rank),
                    "entropy": asdict(options.entropy)},
        "pass": pass_record(options.passes),
        "metrics_info": METRICS_INFO,
        "files": files,
    }


def _labelled(progress: Progress | None, path: Path) -> Progress | None:
    if progress is None:
        return None
    return lambda layer, done, total: progress(f"{path.name} · {layer}", done, total)


def _file_entry(dump: Dump, options: ReportOptions, progress: Progress | None) -> dict:
    base = options.passes
    class_pass = replace(base, reservoir=0, units="none")  # what collapse_dump runs
    class_stats = accumulate(dump, options=class_pass, progress=progress)
    collapse = collapse_dump(dump, options=options.collapse, pass_options=base, progress=progress,
                             precomputed=class_stats)
    threshold = options.entropy.threshold or 0.0
    # rank_dump's own pass, with per-unit activity counted too (it changes no rank number)
    unit_pass = replace(base, reservoir=options.rank.subsample, seed=options.rank.seed, use_labels=False,
                        units="all", threshold=threshold)
    unit_stats = accumulate(dump, options=unit_pass, progress=progress)
    rank, spectra = rank_dump(dump, options=options.rank, pass_options=base, progress=progress, precomputed=unit_stats)
    entropy = entropy_dump(dump, options=options.entropy, pass_options=base, progress=progress)
    classifier = dump.classifier()
    layers = []
    for c, r, e in zip(collapse["layers"], rank["layers"], entropy["layers"]):
        name = c["layer"]
        chosen = spectra[name]["centred" if options.rank.center else "raw"]
        units = unit_stats[name].units
        fed = classifier if classifier is not None and dump.classifier_layer == name else None
        layers.append({
            "layer": name, "kind": "layer", "n_rows": r["n_rows"], "n_units": r["n_units"], "dtype": r["dtype"],
            "metrics": c["metrics"] | r["metrics"] | e["metrics"],
            "unavailable": c["unavailable"] | r["unavailable"] | e["unavailable"],
            "nonfinite": c["nonfinite"] | r["nonfinite"] | e["nonfinite"],
            "notes": e.get("warnings", []),
            "details": {
                "spectrum": chosen.eigenvalues.tolist(), "noise_floor": chosen.floor,
                "fit_range": list(options.rank.fit_range),
                "firing_rate": (units.n_active / max(units.n_rows, 1)).tolist() if e.get("threshold") is not None
                else None,
            } | _class_details(class_stats[name].classes.finalize(), options.collapse, fed),
        })
    for e in entropy["layers"][len(collapse["layers"]):]:  # /attention/<layer> datasets come last
        layers.append({"layer": e["layer"], "kind": "attention", "n_rows": None, "n_units": None, "dtype": None,
                       "metrics": e["metrics"], "unavailable": e["unavailable"], "nonfinite": e["nonfinite"],
                       "notes": [], "details": {}})
    step = dump.attrs.get("step")
    return {"file": str(dump.path), "checkpoint": dump.attrs.get("checkpoint") or None,
            "step": step if isinstance(step, int) and step >= 0 else None, "model": dump.attrs.get("model") or None,
            "separation_law": collapse["separation_law"], "layers": layers}


def _class_details(stats, options: CollapseOptions, classifier) -> dict:
    """Cosines between the centred means of the most frequent kept classes, and cos(w_c, m_c)."""
    kept = kept_classes(stats.counts, options.min_count)
    if kept.size < 2:
        return {"class_ids": None, "class_mean_cosine": None, "duality_cosine": None}
    counts = stats.counts[kept].astype(np.float64)
    means = stats.means[kept]
    centre = means.mean(axis=0) if options.global_mean == "class" else counts @ means / counts.sum()
    frequent = np.sort(np.argsort(-counts, kind="stable")[:MAX_CLASSES_SHOWN])
    m = means[frequent] - centre
    unit = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    duality = None
    if classifier is not None and classifier[0].shape[0] >= stats.counts.size:
        w = classifier[0][kept[frequent]]
        norms = np.linalg.norm(w, axis=1) * np.linalg.norm(m, axis=1)
        duality = np.einsum("ij,ij->i", w, m) / np.where(norms > 0, norms, np.nan)
        duality = duality.tolist()
    return {"class_ids": kept[frequent].tolist(), "class_mean_cosine": (unit @ unit.T).tolist(),
            "duality_cosine": duality}
