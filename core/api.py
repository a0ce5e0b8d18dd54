"""The library face of actgeom: any set of metric families over dumps, in one pass per layer.

>>> import actgeom
>>> result = actgeom.collapse(["sample_data/digits_mlp_epoch1500.h5"], layers=["hidden3"])  # doctest: +SKIP
>>> result.metric("nc1")  # doctest: +SKIP

Keyword names are the command-line options in snake_case (``--fit-range`` → ``fit_range=``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from actgeom.core import analysis
from actgeom.core import compare as comparison
from actgeom.core.analysis import FAMILIES, family_options
from actgeom.core.backends import open_backend
from actgeom.core.base.errors import OptionError
from actgeom.core.base.result import Result
from actgeom.core.dump import DumpSpec
from actgeom.core.families import ood as ood_family
from actgeom.core.metrics.collapse import resolve_options as collapse_options
from actgeom.core.metrics.spectrum import resolve_options as rank_options
from actgeom.core.state.engine import PassOptions, Progress
from actgeom.core.state.groups import DEFAULT_GROUPS, Grouping

__all__ = ["FAMILIES", "analyze", "collapse", "compare", "entropy", "family_options", "neurons", "ood", "probe", "rank", "run"]


def run(command: str, paths: Iterable, families: dict, *, spec: DumpSpec = DumpSpec(),
        pass_options: PassOptions = PassOptions(), stats: str | Path | None = None, progress: Progress | None = None,
        details: bool = False, cache: str | Path | None = None, partial_ok: bool = False, backend=None,
        baseline=None, baseline_memo: dict | None = None) -> Result:
    """Analyse every dump of ``paths`` with ``families`` ({name: options object}) → the :class:`Result`
    every command renders (core/analysis.py's ``run``).

    ``cache``: a directory keeping each file's results under a key made of the file's identity
    (absolute path, size, modification time, a hash of its attributes, layer shapes and dtypes)
    and every option; a run reads only the dumps whose key has no valid entry.

    ``backend``: None (this process), :class:`BackendOptions` (e.g. ``BackendOptions("dask",
    workers=4)``: opened for this run), or a backend opened by :func:`open_backend`.

    ``baseline``: a dump, or a list of dumps (one for every file, or one per file in order): the same
    families on a control run (a random initialisation, shuffled inputs, another seed), matched by
    layer name; each layer gains ``baseline`` {metric: baseline, difference and, with ``ci``, the
    difference's interval} (docs/metrics.md, "Uncertainty and nulls"). ``baseline_memo``: a dict
    kept across runs of the same options, so a shared baseline is analysed once."""
    with open_backend(backend) as executor:
        return analysis.run(command, paths, families, spec=spec, pass_options=pass_options, stats=stats,
                            progress=progress, details=details, cache=cache, partial_ok=partial_ok, backend=executor,
                            baseline=baseline, baseline_memo=baseline_memo)


# -- the public functions ------------------------------------------------------------------------------

def _data(layers=None, labels=None, weight=None, bias=None, predictions=None, offsets=None, attention=None,
          allow_incomplete=False, nonfinite="error", tokens="all", products="float64", *, ci=False,
          ci_groups=DEFAULT_GROUPS, ci_seed=0, null=0, null_seed=0) -> tuple[DumpSpec, PassOptions]:
    """The dump spec and pass options of the shared keywords; ``ci``: jackknife intervals from
    ``ci_groups`` groups of sampling units hashed with ``ci_seed``; ``null`` K > 0: permutation nulls
    of the label-dependent metrics from K label permutations seeded with ``null_seed`` (whole
    sequences on token-level dumps) (docs/metrics.md, "Uncertainty and nulls")."""
    if ci:
        Grouping(ci_groups, ci_seed)  # ci=True with ci_groups 0 or 1 is refused, not silently without intervals
    spec = DumpSpec(layers=tuple([layers] if isinstance(layers, str) else layers or ()), labels=labels, weight=weight,
                    bias=bias, predictions=predictions, offsets=offsets, attention=attention,
                    allow_incomplete=allow_incomplete)
    return spec, PassOptions(nonfinite=nonfinite, tokens=tokens, products=products, ci_groups=ci_groups if ci else 0,
                             ci_seed=ci_seed, null=null, null_seed=null_seed)


def collapse(paths, *, layers=None, labels=None, weight=None, bias=None, predictions=None, offsets=None,
             allow_incomplete=False, nonfinite="error", tokens="all", products="float64", stats=None, partial_ok=False,
             preset=None, min_count=None, global_mean=None, nc1_inverse=None, divide_by_c=None, nc4_decision=None, per_class=None,
             ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0, null=0, null_seed=0, baseline=None,
             progress: Progress | None = None, backend=None) -> Result:
    """Neural-collapse metrics (docs/metrics.md, "Neural collapse") of every selected layer of every dump."""
    spec, pass_options = _data(layers, labels, weight, bias, predictions, offsets, None, allow_incomplete, nonfinite, tokens,
                               products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    options = collapse_options(preset, min_count=min_count, global_mean=global_mean, nc1_inverse=nc1_inverse,
                               divide_by_c=divide_by_c, nc4_decision=nc4_decision, per_class=per_class)
    return run("collapse", paths, {"collapse": options}, spec=spec, backend=backend, pass_options=pass_options, stats=stats,
               partial_ok=partial_ok, progress=progress, baseline=baseline)


def rank(paths, *, layers=None, offsets=None, allow_incomplete=False, nonfinite="error", tokens="all", products="float64",
         stats=None, partial_ok=False, preset=None, center=None, max_eigs=None, eps=None, fit_range=None, ge=None, rtol=None,
         subsample=None, seed=None, details=False, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0, null=0, null_seed=0,
         baseline=None, progress: Progress | None = None, backend=None) -> Result:
    """Spectrum and effective-dimension metrics of every selected layer (docs/metrics.md, "Spectrum and
    effective dimension")."""
    spec, pass_options = _data(layers, None, None, None, None, offsets, None, allow_incomplete, nonfinite, tokens, products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    options = rank_options(preset, center=center, max_eigs=max_eigs, eps=eps, fit_range=fit_range, ge=ge, rtol=rtol,
                           subsample=subsample, seed=seed)
    return run("rank", paths, {"rank": options}, spec=spec, backend=backend, pass_options=pass_options, stats=stats,
               progress=progress, details=details, partial_ok=partial_ok, baseline=baseline)


def entropy(paths, *, layers=None, labels=None, offsets=None, attention=None, allow_incomplete=False, nonfinite="error",
            tokens="all", products="float64", stats=None, partial_ok=False, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0,
            null=0, null_seed=0, baseline=None, progress: Progress | None = None, backend=None,
            **options) -> Result:
    """Entropies and neuron activity (docs/metrics.md, "Entropy and neuron activity"); ``options`` are
    EntropyOptions fields (alpha, sigma, t, subsample, seed, dsmi_repeats, threshold, tau, layer_width, eps,
    normalized, dse_method: "exact" or "slq", stochastic Lanczos quadrature with its own error estimate)."""
    spec, pass_options = _data(layers, labels, None, None, None, offsets, attention, allow_incomplete, nonfinite, tokens,
                               products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    return run("entropy", paths, {"entropy": family_options("entropy", options)}, spec=spec, backend=backend,
               pass_options=pass_options, stats=stats, partial_ok=partial_ok, progress=progress, baseline=baseline)


def analyze(paths, *, families=("collapse", "rank", "entropy"), options: dict | None = None, layers=None, labels=None,
            weight=None, bias=None, predictions=None, offsets=None, attention=None, allow_incomplete=False,
            nonfinite="error", tokens="all", products="float64", stats=None, partial_ok=False, details=False, cache=None,
            ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0, null=0, null_seed=0, baseline=None,
            progress: Progress | None = None, backend=None) -> Result:
    """Several families at once, one pass per layer. ``options``: {family: options object or dict
    of its keyword options}; a family not named there uses its defaults."""
    spec, pass_options = _data(layers, labels, weight, bias, predictions, offsets, attention, allow_incomplete,
                               nonfinite, tokens, products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    chosen = {name: family_options(name, (options or {}).get(name)) for name in families}
    return run("analyze", paths, chosen, spec=spec, backend=backend, pass_options=pass_options, stats=stats, progress=progress,
               details=details, cache=cache, partial_ok=partial_ok, baseline=baseline)


def neurons(paths, *, layers=None, labels=None, offsets=None, allow_incomplete=False, nonfinite="error", tokens="all",
            products="float64", stats=None, details=False, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0,
            null=0, null_seed=0, baseline=None, progress: Progress | None = None, backend=None, **options) -> Result:
    """Unit-level scores and summaries (docs/metrics.md, "Units") of every selected layer: every unit's
    moments, firing rate, dormant score, class selectivity, probeless score, token concentration,
    position η², VAE activity and KL, and the top units by ``score``. ``options`` are
    NeuronsOptions fields (top, score, threshold, tau, cutoff, max_position, mu, logvar, delta,
    collapsed_kl, fdr); with ``null`` K > 0 every unit's class selectivity gets a permutation
    p-value and a BH q-value, and ``selective_unit_fraction_fdr`` counts the units with q ≤ ``fdr``;
    the ``mu`` and ``logvar`` layers are read too when ``layers`` leaves them out."""
    chosen = family_options("neurons", options)
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        layers += [name for name in (chosen.mu, chosen.logvar) if name is not None and name not in layers]
    spec, pass_options = _data(layers, labels, None, None, None, offsets, None, allow_incomplete, nonfinite, tokens, products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    return run("neurons", paths, {"neurons": chosen}, spec=spec, backend=backend, pass_options=pass_options, stats=stats,
               progress=progress, details=details, baseline=baseline)


def probe(paths, *, layers=None, labels=None, offsets=None, allow_incomplete=False, nonfinite="error", tokens="all",
          products="float64", test_fraction=None, seed=None, split_by=None, shrinkage=None, ridge_lambda=None, control=None,
          positive=None, negative=None, details=False, stats=None, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0,
          null=0, null_seed=0, baseline=None, progress: Progress | None = None, backend=None) -> Result:
    """Linear probes and concept directions of every selected layer (docs/metrics.md, "Linear probes
    and concept directions").

    Beside the per-layer metrics, each file has ``direction_cosines`` (consecutive layers) and the
    document ``direction_cosines_across_files``: per layer, the cosine between the directions of
    consecutive files (checkpoints, base vs tuned). ``details=True`` keeps each layer's direction
    vector in ``layer["details"]["direction"]`` (for --save-directions). ``stats``: a partial-statistics
    file holding the split's train moments (e.g. shards' ``accumulate(..., specs=[SplitSpec(...)])``
    saved and merged); the test rows are still scored from the dump."""
    spec, pass_options = _data(layers, labels, None, None, None, offsets, None, allow_incomplete, nonfinite, tokens, products,
                               ci=ci, ci_groups=ci_groups, ci_seed=ci_seed, null=null, null_seed=null_seed)
    options = family_options("probe", dict(test_fraction=test_fraction, seed=seed, split_by=split_by, shrinkage=shrinkage,
                                  ridge_lambda=ridge_lambda, control=control, positive=positive, negative=negative))
    result = run("probe", paths, {"probe": options}, spec=spec, backend=backend, pass_options=pass_options, stats=stats,
                 progress=progress, details=True, baseline=baseline)
    analysis.directions_across_files(result.to_dict(), keep=details)
    return result


# -- compare: two or more files at once (its own pass over aligned rows) ----------------------------


def compare(paths, *, layers=None, layers_b=None, reference=None, ids=None, allow_incomplete=False, nonfinite="error",
            max_memory="4GiB", block_rows=None, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0, null=0, null_seed=0,
            progress: Progress | None = None, backend=None, **options) -> comparison.CompareResult:
    """Similarity between layers of two files, or one layer across files (docs/metrics.md), in one
    pass over their aligned rows; ``options`` are CompareOptions fields (alpha, svcca_keep,
    subsample, seed, knn_k, unit_threshold, units; None = default). ``result.matrix("cka_linear")``:
    rows = A, columns = B. ``backend``: as :func:`run`'s (the pass as tasks over row ranges).
    ``ci``: every cell's measures get jackknife intervals from ``ci_groups`` groups of aligned rows
    (whole sequences on token-level dumps) hashed with ``ci_seed``; ``null`` K > 0: CKA, RSA and
    mutual k-NN get permutation p-values from K shuffles of B's sampled rows seeded with ``null_seed``
    (docs/metrics.md, "Uncertainty and nulls")."""
    chosen = family_options("compare", options)
    inference = comparison.Inference(groups=ci_groups if ci else 0, ci_seed=ci_seed, null=null, null_seed=null_seed)
    as_tuple = lambda given: tuple([given] if isinstance(given, str) else given or ())  # noqa: E731
    with open_backend(backend) as executor:
        result = comparison.run(paths, layers=as_tuple(layers), layers_b=as_tuple(layers_b), reference=reference,
                                    ids=ids, options=chosen, allow_incomplete=allow_incomplete, nonfinite=nonfinite,
                                    max_memory=max_memory, block_rows=block_rows, inference=inference, progress=progress,
                                    backend=executor)
        result.document["pass"]["backend"] = analysis.backend_record(executor)
    return result


# -- ood: a model fitted on one dump, rows of others scored --------------------------------------------

def ood(paths, *, test=None, ood, layers=None, labels=None, weight=None, bias=None, offsets=None, allow_incomplete=False,
        nonfinite="error", tokens="all", products="float64", temperature=None, vim_dim=None, neco_dim=None, knn_k=None,
        knn_sample=None, seed=None, fit_split=None, scores=None, ci=False, ci_groups=DEFAULT_GROUPS, ci_seed=0,
        progress: Progress | None = None, backend=None) -> Result:
    """Post-hoc out-of-distribution scores (docs/metrics.md, "Out-of-distribution scores"): per layer, a model fitted
    on the rows of each dump of ``paths`` (the ID fit rows: class moments, total moments, a seeded
    sample, the classifier), then one pass over the ID ``test`` dump — or, with ``fit_split=q`` and
    no ``test``, over the fit dump for its held-out share q of sampling units — and over each ``ood``
    dump, scoring every row. The result has one file entry per (fit dump, OOD set): AUROC, AUPR-In,
    AUPR-Out and FPR95 of every score, and NC5. ``scores``: a .jsonl/.csv/.npz file getting every
    scored row's scores (dump, row, layer, each score). ``ci``: every metric's jackknife interval
    from ``ci_groups`` groups of sampling units hashed with ``ci_seed`` in the fit dump and in each
    scored dump (the model refitted without each group, scoring the rows outside it). ``backend``: as
    :func:`run`'s (the fit dump's passes as tasks; the other dumps are scored in this process)."""
    spec, pass_options = _data(layers, labels, weight, bias, None, offsets, None, allow_incomplete, nonfinite, tokens,
                               products, ci=ci, ci_groups=ci_groups, ci_seed=ci_seed)
    sets = [ood] if isinstance(ood, (str, Path)) else list(ood)
    if test is None and fit_split is None:
        raise OptionError("test", None, "is needed: the dump of held-out ID rows (or fit_split=q: a share of the fit dump)")
    options = family_options("ood", dict(test=None if test is None else str(test), ood=tuple(str(path) for path in sets),
                                         temperature=temperature, vim_dim=vim_dim, neco_dim=neco_dim, knn_k=knn_k,
                                         knn_sample=knn_sample, seed=seed, fit_split=fit_split))
    inputs = [*([paths] if isinstance(paths, (str, Path)) else paths), *([] if test is None else [test]), *sets]
    if scores is not None:
        ood_family.check_scores_path(scores, inputs)
    if ci:
        ood_family.check_memory([paths] if isinstance(paths, (str, Path)) else list(paths), options, ci_groups)
    result = run("ood", paths, {"ood": options}, spec=spec, pass_options=pass_options, progress=progress,
                 details=scores is not None, backend=backend)
    if scores is not None:
        ood_family.write_scores(scores, result.to_dict(), inputs)
    return Result(ood_family.per_set(result.to_dict()))
