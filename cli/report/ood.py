"""The report's OOD section data (``report --ood``): each checkpoint's dump is the in-distribution
(ID) fit dump of core's ood family, scored against its own OOD dump (issue #26).

A sweep's checkpoints are different networks, so each needs its own OOD dump (the OOD rows through
that checkpoint): ``--ood`` gives one per checkpoint dump, paired in the order the dumps are given
(as ``--baseline``), and ``--ood-test`` likewise the held-out ID rows; without ``--ood-test`` a
seeded share ``--fit-split`` of each checkpoint dump's rows is held out as its ID test rows.

Each checkpoint's file entry gains ``"ood"`` (shape in ``cli/report/__init__.py``): per layer the
set's metrics (AUROC, AUPR-In, AUPR-Out, FPR95 per score, NC5; with --ci their intervals) and, per score, the histograms of
the ID test and OOD rows' scores at the layer where that score's AUROC is highest — counts on
shared bin edges, so the page needs no per-row data and ``--results`` stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actgeom.core import api
from actgeom.core.base.errors import OptionError
from actgeom.core.base.options import OodOptions
from actgeom.core.families import ood as ood_family

DEFAULT_FIT_SPLIT = 0.3  # without --ood-test: the share of each checkpoint's rows held out as ID test rows
BINS = 40  # histogram bins per score
CLIP = 0.5  # percent of the pooled scores cut off at each end of the histogram's range (the bins are the bulk's)


@dataclass(frozen=True)
class OodPlan:
    """What ``report --ood`` scores: per checkpoint dump (as given) its OOD dump and ID test dump
    (None: ``options.fit_split`` of the checkpoint's rows); ``options`` the ood family's others."""

    ood: dict[Path, Path]
    test: dict[Path, Path | None]
    options: OodOptions


def plan(paths: list[Path], ood: list[Path] | None, ood_test: list[Path] | None, fit_split: float | None,
         seed: int) -> OodPlan | None:
    """--ood/--ood-test/--fit-split checked against the dumps (one line each): None without --ood."""
    if not ood:
        for name, value in (("ood_test", ood_test), ("fit_split", fit_split)):
            if value is not None and value != []:
                raise OptionError(name, value if name == "fit_split" else str(value[0]),
                                  "is an option of --ood: give --ood too")
        return None
    paths = [Path(p) for p in paths]
    oods = _per_dump("ood", ood, paths)
    if ood_test and fit_split is not None:
        raise OptionError("fit_split", fit_split, "holds out ID test rows of each dump; --ood-test gives them: choose one")
    tests = _per_dump("ood_test", ood_test, paths) if ood_test else [None] * len(paths)
    given = [("ood", path, other) for path, other in zip(paths, oods)] + [("ood_test", path, other)
                                                                          for path, other in zip(paths, tests)]
    for option, path, other in given:
        if other is not None and other.resolve() == path.resolve():
            raise OptionError(option, str(other),
                              f"is the checkpoint dump {path} itself: OOD and ID test rows come from other dumps")
    options = OodOptions(fit_split=None if ood_test else (DEFAULT_FIT_SPLIT if fit_split is None else fit_split), seed=seed,
                         test=str(tests[0]) if ood_test else None)
    return OodPlan(dict(zip(paths, oods)), dict(zip(paths, tests)), options)


def _per_dump(name: str, given: list[Path], paths: list[Path]) -> list[Path]:
    """One dump per checkpoint dump, paired in order; one for a single checkpoint dump."""
    if len(given) != len(paths):
        each = "one dump" if len(paths) == 1 else f"one dump per checkpoint ({len(paths)}), paired with them in order"
        raise OptionError(name, None, f"takes {each}: {len(given)} given (a checkpoint's OOD and ID test rows "
                                      "must go through that checkpoint's network)")
    return [Path(p) for p in given]


def score(path: Path, ood_plan: OodPlan, spec, passes, progress=None, backend=None) -> tuple[dict, dict]:
    """The checkpoint dump ``path`` scored against its OOD dump (core.api.run of the ood family, one
    pass over the fit rows and one over each scored dump per layer): (its file entry's ``"ood"``,
    the ood metrics' metrics_info)."""
    from dataclasses import replace

    test = ood_plan.test[path]
    options = replace(ood_plan.options, ood=(str(ood_plan.ood[path]),), test=None if test is None else str(test))
    grouped = replace(passes, null=0)  # --ci: the ood family's own intervals; it has no permutation null
    if grouped.ci_groups:
        ood_family.check_memory([path], options, grouped.ci_groups)
    raw = api.run("ood", [path], {"ood": options}, spec=replace(spec, predictions=None, attention=None),
                  pass_options=grouped, details=True, progress=progress, backend=backend).to_dict()
    return condense(raw["files"][0], options), raw["metrics_info"]


def condense(entry: dict, options: OodOptions) -> dict:
    """A raw ood file entry (details with every scored row) → the report's ``"ood"`` of that file."""
    set_path = options.ood[0]
    layers = []
    for layer in entry["layers"]:
        found = layer["ood"]["sets"][set_path]
        layers.append({"layer": layer["layer"], "n_fit_rows": layer["ood"]["n_fit_rows"],
                       "n_test_rows": layer["ood"]["n_test_rows"], "n_ood_rows": found["n_rows"],
                       "metrics": found["metrics"], "unavailable": found["unavailable"],
                       "intervals": found.get("intervals", {}), "intervals_unavailable": found.get("intervals_unavailable", {})})
    return {"set": set_path, "test": options.test, "fit_split": options.fit_split, "layers": layers,
            "histograms": histograms(entry, layers)}


def score_names(layers: list[dict]) -> list[str]:
    """The scores with an AUROC somewhere, in the registry's order (msp, max_logit, ..., knn)."""
    names: list[str] = []
    for layer in layers:
        names += [name[:-len("_auroc")] for name in [*layer["metrics"], *layer["unavailable"]]
                  if name.endswith("_auroc") and name[:-len("_auroc")] not in names]
    return names


def best_layer(layers: list[dict], name: str) -> str | None:
    """The layer where score ``name``'s AUROC is highest (the first of ties); None when none has it."""
    found = [(layer["metrics"][f"{name}_auroc"], -i, layer["layer"]) for i, layer in enumerate(layers)
             if layer["metrics"].get(f"{name}_auroc") is not None]
    return max(found)[2] if found else None


def histograms(entry: dict, layers: list[dict]) -> dict[str, dict]:
    """{score: {"layer" (its best), "edges", "id", "ood" (counts), "n_id", "n_ood"}}: BINS bins spanning the
    pooled scores between their CLIP and 100 − CLIP percentiles, the scores beyond counted in the end
    bins (so the counts add up to the rows)."""
    found = {}
    for name in score_names(layers):
        best = best_layer(layers, name)
        if best is None:
            continue
        raw = next(layer for layer in entry["layers"] if layer["layer"] == best)["details"]["ood_scores"]
        id_scores, ood_scores = ([np.asarray(part["scores"][name], dtype=np.float64) for part in raw if part["role"] == role]
                                 for role in ("id_test", "ood"))
        id_scores, ood_scores = np.concatenate(id_scores), np.concatenate(ood_scores)
        pooled = np.concatenate([id_scores, ood_scores])
        pooled = pooled[np.isfinite(pooled)]
        low, high = np.percentile(pooled, [CLIP, 100 - CLIP])
        if not high > low:
            low, high = low - 0.5, high + 0.5
        edges = np.linspace(low, high, BINS + 1)
        found[name] = {"layer": best, "edges": edges.tolist(), "id": _counts(id_scores, edges), "ood": _counts(ood_scores, edges),
                       "n_id": int(np.isfinite(id_scores).sum()), "n_ood": int(np.isfinite(ood_scores).sum())}
    return found


def _counts(values: np.ndarray, edges: np.ndarray) -> list[int]:
    """Counts of the finite ``values`` per bin, those beyond the edges in the end bins."""
    values = np.clip(values[np.isfinite(values)], edges[0], edges[-1])
    return np.histogram(values, bins=edges)[0].astype(int).tolist()


def document_options(ood_plan: OodPlan) -> dict:
    """The options block of the page and --results: the pairs and the ood family's conventions."""
    from dataclasses import asdict

    values = asdict(ood_plan.options)
    return values | {"ood": [str(p) for p in ood_plan.ood.values()], "test": [None if p is None else str(p) for p in
                                                                             ood_plan.test.values()]}
