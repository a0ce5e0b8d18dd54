"""Write docs/metrics.md from the metric registries, so the reference cannot drift from the code.

    python docs/generate_metrics.py          # rewrite docs/metrics.md
    python docs/generate_metrics.py --check  # exit 1 if docs/metrics.md is out of date (a test runs this)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from actgeom.core.analysis import REGISTRIES

OUT = Path(__file__).with_name("metrics.md")

INTRO = """\
# actgeom metric reference

Every number actgeom reports, with its definition, ideal value, range, which way is better, the
transformations of the rows it is invariant to, what it needs, its source, and the test that checks
it against a closed form or a slow in-memory reference. This page is generated from the metric
registries (`python docs/generate_metrics.py`); a test fails when it differs from the code.

Notation. X is one layer's rows (N × D), y the labels in [0, C), n_c the class counts, μ_c the class
means, μ_G the global mean (by default the mean of the class means), m_c = μ_c − μ_G, M̃ the matrix of
the m_c, W (C × D) and b the classifier. Σ_W = (1/N) Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ is the
pooled within-class covariance, Σ_B = (1/C) Σ_c m_c m_cᵀ the between-class covariance. λ are the
eigenvalues of the covariance (or of the raw second moment), σ = √λ. Logs are natural unless the
metric says bits.

Conventions that hold everywhere:
- Everything accumulates in float64, whatever the storage dtype; second moments are accumulated on
  rows shifted by a per-class reference and corrected once at the end (never E[xxᵀ] − μμᵀ).
- Eigenvalues at rounding level (≤ n·eps·λ_max, the accuracy of a float64 eigensolver) count as 0,
  so a dead unit contributes σ = 0, not ~1e-8·σ_max.
- Every option that changes a number is recorded in the output (`options`, `pass`), and so is the
  seed and size of every sample.
- "invariant to" lists the transformations of the rows that leave the number unchanged at the
  default options: scale x → s·x, rotation x → Qx, shift x → x + t, affine x → Ax + t (with the
  classifier transformed along, W → WA⁻¹, b → b − WA⁻¹t, so that the network's logits stay the same).
  tests/test_registry.py checks every declaration over several seeds.
- A metric that cannot be computed for a layer is listed under `unavailable` with the reason (no
  labels, no classifier, too few sampled rows, a spectrum at the noise floor, ...), never as a number.
  A metric is either a value or unavailable, never both, and appears once per layer in every format.
- Degenerate layers (every row the same vector, every value 0, one row, one row per class) give a
  finite value only where the definition gives one — the numerical rank of a zero spectrum is 0, the
  mean cosine of identical rows 1, NC1 of classes that are single points 0 (perfect collapse) — and
  otherwise are unavailable with the reason: a zero spectrum has no ratios of eigenvalues (erank,
  stable rank, participation ratio, k_p, IsoScore, RankMe: "all rows are identical: the covariance
  spectrum is 0"); one row has no covariance; coincident class means (Σ_B = 0) leave NC1, its
  quotient, separation fuzziness, NC2 and NC3 of the means undefined, VCI too when the rows are also
  identical (Σ_T = 0); one row per class leaves within-class variability (NC1, CDNV, VCI) undefined;
  a layer of zeros has no directions (dataset entropy, mean cosine) and no mass over units (SAE
  effective features, effective units). Each function's docstring states its rule.
"""

FAMILY_TEXT = {
    "collapse": """\
## Neural collapse (`actgeom collapse`)

From one pass: class counts, class means and the pooled within-class scatter (and per-class squared
deviations). NC4 needs the final class means and therefore a second pass, made only when the dump has
a decision source (stored predictions, else argmax(Wx + b), else argmax(Wx); `--nc4-decision`).
Classes with fewer than `--min-count` rows are dropped from every metric and counted. Pairwise
metrics (CDNV, equiangularity, max-angle, GNC2) are computed in tiles of classes, so no C × C matrix
is formed. With two layers or more, He & Su's separation law ln D_l = a + l·ln ρ is fitted across
layers (ρ, R² per file). Presets reproduce publications: `papyan` (μ_G of class means, top-k Σ_B⁺,
NC1 without /C), `zhu` (μ_G of rows, pseudo-inverse, /C), `linguistic` (NC4 against argmax Wx).
""",
    "rank": """\
## Spectrum and effective dimension (`actgeom rank`)

From one pass: the moments of all rows (labels are not used), Σ x/‖x‖ over rows, and a seeded sample
(the same rows in every layer). The eigenvalues of the covariance and of the raw second moment are
computed once per layer; `--center/--no-center` chooses which one erank, stable rank, participation
ratio, numerical rank, k_p and α-ReQ use (RankMe is reported three ways). Float16/bfloat16 storage
adds noise at about 1e-8/1e-6 of λ_1: eigenvalues below that floor count for the numerical rank only
if `--rtol` says so, and an α-ReQ fit range reaching the floor is refused with the reason.
""",
    "entropy": """\
## Entropy and neuron activity (`actgeom entropy`)

From one pass: per-unit activity (count above the threshold, Σx, Σ|x|), Σ uuᵀ of the L2-normalised
rows (token-level dumps: per-sequence entropies and Σ vvᵀ of sequence vectors, from blocks that end at
sequence boundaries), and a seeded sample for DSE/DSMI (whose kernel costs N² memory and N³ time:
10 000 rows by default, 2 000 in `report`). The threshold for "active" is 0 for layers marked ReLU and
must be given (`--threshold`) otherwise; dead fraction and firing entropy are unavailable without it.
`--dse-method slq` estimates DSE without the N³ eigendecomposition: H = log₂ Z − (t/Z)·tr(K^t log₂ K),
Z = tr K^t, both traces by stochastic Lanczos quadrature (128 leading Ritz vectors deflated, 32 seeded
Rademacher probes with control variates), in float32; `dse_error` is the half-width of a 95 % interval
for its error (benchmarks/RESULTS.md: ≤ 3.3e-4 relative at N = 10 000). Exact stays the default.
Attention entropy reads `/attention/<layer>` (sequences × heads × queries × keys).
""",
    "neurons": """\
## Units (`actgeom neurons`)

From one pass: per-unit central sums up to the fourth (merged with Pébay's formulas, exact under
offsets), count above the threshold and Σ|x|, class means (with labels), Σ max(x, 0) per token id and
unit (with /rows/token_id: a V × D table), and per-position sums (with /rows/position or sequence
offsets; positions ≥ `--max-position` pooled). Every unit's scores (moments, firing rate, dormant
score, class selectivity, probeless score, token concentration, position η², VAE activity and KL) are
in the JSON; the metrics below summarise a layer. "Selective", "token detector" and "positional" mean
a score ≥ `--cutoff` (0.5). The VAE metrics are reported on the `--mu` layer; the KL needs `--logvar`.
The ranked units (`top_units`, by `--score`, default kurtosis) are those that fire on ≥ `--min-support`
rows (default max(10, 0.1 % of N)), each with its `firing_rows`; the others are counted
(`units_below_support`): one row gives any unit kurtosis ≈ N, selectivity 1 and token concentration 1.
Without a threshold every unit is ranked (`support_unavailable` says why). `top_classes`: up to 3
classes of largest class-conditional mean above the unit's lowest class mean (a ReLU unit: the classes
it fired on).
""",
    "probe": """\
## Linear probes and concept directions (`actgeom probe`)

Rows are split by a seeded hash of their sampling unit (`--split-by`, METRICS.md §7): by default the
whole sequence on token-level dumps (each row's sequence named by the global row number of its first
token, from the sequence offsets: the tokens of one sentence are never on both sides) and the global
row number on sample-level dumps; or `/rows/sample_id`. A row is a test row when its unit's key is
below `--test-fraction`·2⁶⁴, the same rows in every layer, chunking and shard; the row control task
and `--shrinkage auto`'s validation rows hash the same unit, and each layer's `probe.split_by` records it.
One pass keeps the class moments of the train rows only; the probes follow in closed form (LDA with
shrinkage s, default 0.1 or `auto` on a validation quarter of the train rows; ridge on one-hot
targets, λ relative to tr S_T/D; nearest class mean) and the shared second pass scores the test rows.
`--control token|row` adds Hewitt & Liang's control task. The direction is μ₊ − μ₋ of two classes
(`--positive/--negative`); the file lists the cosines of consecutive layers' directions, the
document those of the same layer in consecutive files.
""",
    "compare": """\
## Similarity between representations (`actgeom compare`)

Two files' aligned rows (row i of both is the same input: ids must match, else equal row counts and
alignment assumed). One pass over every compared layer of every file: per block, each layer's own
shifted moments (Σx, Σxxᵀ, Σ‖x‖², Σ‖x‖²x, Σ‖x‖⁴) once, and each layer pair's cross-moments (Σxyᵀ,
Σ‖x‖²y, Σ‖y‖²x, Σ‖x‖²‖y‖²) once; every measure but RSA and mutual k-NN is an exact function of them.
RSA and mutual k-NN use a seeded row sample, the same rows in every file. Results are matrices:
rows = A (the first file's layers, or the reference), columns = B; PWCCA and unit_best_corr are
asymmetric (A from the row). Σ^(−1/2) is taken on the numerical range (eigenvalues above the storage
noise of the coarser dtype). "invariant to" means a transformation of either side's rows.
""",
    "ood": """\
## Out-of-distribution scores (`actgeom ood`)

A model fitted on the in-distribution (ID) fit rows of one dump scores every row of an ID test dump
(`--test`, or with `--fit-split q` the held-out rows of the fit dump: a seeded hash of each sampling
unit — the row, or the whole sequence on token-level dumps — with seed + 1, below q·2⁶⁴) and of each
OOD dump; every score is "higher = more in-distribution". Fit, in one pass over the fit rows: class
means μ_c, the pooled within-class covariance Σ_W = S_W/N and the total covariance Σ_T about the
global mean μ_G (pseudo-inverses on the numerical range, as scikit-learn's EmpiricalCovariance), a
seeded sample (`--knn-sample`, default 10 000) and the classifier ℓ(x) = Wx + b. Each score then
gives, per OOD set, the four measures below, named `<score>_<measure>`; each OOD set is its own file
entry of the document (`fit_file`, `test_file`). `--scores PATH` (.jsonl/.csv/.npz) writes every
scored row's scores.

**Conventions, checked against the authors' code** (haoqiwang/vim `benchmark.py`, the NECO authors'
`test_all_ood.py`, deeplearning-wisc/knn-ood `run_cifar.py`/`run_imagenet.py`, OpenOOD's
postprocessors and `evaluators/metrics.py`):

- Mahalanobis and relative Mahalanobis: as OpenOOD's `mds`/`rmds` (tied covariance of the
  class-centred rows divided by N; the background model about the global mean), without Lee et
  al.'s input preprocessing and feature ensemble; in float64 (OpenOOD: float32).
- Energy: T · logsumexp(ℓ/T) (Liu et al.'s negated energy). MSP, MaxLogit: as OpenOOD.
- ViM: o = −W⁺b, the residual space = eigenvectors of E[(x − o)(x − o)ᵀ] (EmpiricalCovariance with
  `assume_centered=True`) beyond the top d; d by the authors' rule (D ≥ 2048: 1000, D ≥ 768: 512,
  else D/2; OpenOOD's config uses 256). **Differs:** the authors take α = mean max-logit / mean
  residual norm over every training feature they load (for ImageNet a random 200 000-image subset,
  which also gives their subspace); here the subspace uses every fit row, and α the seeded sample of
  `--knn-sample` fit rows, so the fit dump is read once. α is a ratio of two means: its sampling
  error is about the relative standard error of those means (≈ 1 % at 10 000 rows).
- NECO: scikit-learn's StandardScaler then PCA on the fit rows, ‖first d components‖ / ‖standardised
  row‖, as the authors' code (their ResNet branch); `neco_max_logit` is that ratio × max-logit, the
  score their code reports for ViT, Swin and DeiT. **Differs:** for DeiT and Swin their denominator is
  the raw feature's norm; here always the standardised row's. d (`--neco-dim`) is a required input
  of their script; the default here is ViM's rule.
- kNN: rows L2-normalised (the authors add 1e-10 to the norm), the score is the negated *squared*
  distance to the k-th nearest normalised fit row, as faiss' IndexFlatL2 returns it in their code.
  **Differs:** the fit rows are a seeded sample of `--knn-sample` rows (their ImageNet script samples
  a share α of the training set too); k defaults to 50 (their CIFAR value, with 50 000 training
  rows; ImageNet: k = 1000 on 1.28 M rows). The k-th neighbour among a sample of m of N rows is about
  the (k·N/m)-th among all rows, so keep k/m the ratio the authors' k/N had: e.g. k = 10 for 10 000
  sampled CIFAR rows, or raise `--knn-sample`.
- Measures: AUROC as `roc_auc_score` (ID positive; ties ½); AUPR-In/AUPR-Out as
  `average_precision_score` (step sums; ViM's and OpenOOD's code integrate `precision_recall_curve`
  with trapezoids, which differs slightly); FPR95 = fpr[argmax(tpr ≥ 0.95)] of `roc_curve` with ID
  positive — the share of OOD rows accepted when 95 % of ID rows are, as in the ViM, NECO and kNN
  papers. **OpenOOD v1.5 differs:** it takes OOD as positive, i.e. reports the share of ID rows
  rejected when 95 % of OOD rows are caught.
- NC5 (NECO, eq. 5): mean over ID classes of |cos(μ_OOD − μ_G, μ_c − μ_G)|, μ_OOD the OOD rows' mean.

With `--ci`, the jackknife groups are drawn in the fit dump and in each scored dump (its own rows or
whole sequences); replicate g is the model refitted on the fit statistics without group g, scoring
the test and OOD rows outside group g, so the interval covers the noise of fitting on finite ID rows
and of evaluating on finite ID test and OOD sets; there is no permutation null (for AUROC it would
be the Mann–Whitney test of ID vs OOD labels).
""",
}

# After the families: what every metric gains with --ci (and, later, --null and --baseline).
INFERENCE = """\
## Uncertainty and nulls (`--ci`)

A value computed from a finite dump is an estimate: another draw of inputs would give another
value. `--ci` (API: `ci=True`) gives every scalar metric an interval from the same single pass.

**Groups.** Each sampling unit — a row of a sample-level dump, a whole sequence of a token-level
dump (its tokens are not independent) — falls in group g = splitmix64(unit, seed) mod G, with G =
`--ci-groups` (default 20) and the seed `--ci-seed` (default 0). The unit's number is its global row
(the global row of the sequence's first token), so a row's group is the same for any chunking,
`--rows` shard, `merge` order and `--backend dask`. The pass keeps every statistic once per group;
the total is their merge, and the statistics without group g are the merge of the other groups'
— exactly the statistics of the rows outside the group (tests/test_intervals.py).

**Delete-a-group jackknife** (Efron & Tibshirani 1993, §11.5). Each metric θ is evaluated on the
total (θ̂) and, through the same function, on each leave-one-group-out statistic (θ₋g):

| field | definition |
|---|---|
| `se` | √((G−1)/G · Σ_g (θ₋g − θ̄)²), θ̄ = mean of the θ₋g |
| `ci_low`, `ci_high` | θ̂ ∓ t_{G−1, 0.975} · se (a 95 % interval) |
| `bias` | (G−1)(θ̄ − θ̂), the jackknife estimate of the bias of θ̂ |

The document records the method, G, the seed and the level under `inference.ci`, and each file
its `sampling_unit`. A metric with no interval says why under the layer's `intervals_unavailable`
(a count or size; DSE beyond 1 000 sample rows). Sample-based metrics (TwoNN, MLE, DSE, …)
use a sample per group: the sample without group g is the seeded sample of the rows outside it.

**Assumptions.** The groups are exchangeable: sampling units are independent draws (rows of an
i.i.d. evaluation set; whole sequences of a corpus). The interval describes the sampling noise of
the inputs, not the randomness of training (use `--baseline` runs of other seeds for that).

**Permutation nulls** (`--null K`, API `null=K`, seed `--null-seed`; Phipson & Smyth 2010). Would a
network whose activations carry no information about the labels show the same value? Every
label-dependent metric of `collapse` and `neurons` is evaluated, through the same function, under K
seeded permutations of the labels over the sampling units (rows; whole sequences of a token-level
dump, whose labels must then be constant within each sequence). Only the class counts and class sums
depend on the labels, so the same pass keeps them per permutation (K × C × D, never a second D × D
product): unit u takes the label of unit π_k(u) = F⁻¹((F(u) + b_k) mod L), where F is one keyed
bijection (a Feistel network) of the L labelled units and b_k a seeded shift, distinct and never 0.
The K permutations are thus draws from a group — the cyclic shifts of the units in F's pseudo-random
order — which is what makes (1 + #)/(K + 1) an exact p-value (Hemerik & Goeman 2018, *Exact testing
with random permutations*); each costs an addition and a look-up per row. They are the same for any
chunking, `--rows` shard, `merge` order and backend; the permuted
within-class scatter is exact from the total moments, S_W = S_T − Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ
(tests/test_nulls.py). The probe's metrics (with a fixed `--shrinkage`) get a null too: its split
keeps the train rows' class sums under the same permutations, the probes are refitted on each
permuted train split and score the test rows against their permuted labels in the one shared second
pass (K refits of O(D³) per layer and K scorings per test row; tests/test_probe_null.py). Each
layer's `nulls` gives, per metric:

| field | definition |
|---|---|
| `null_mean`, `null_sd` | mean and standard deviation (ddof 1) of the K permuted values θ_k |
| `z` | (θ̂ − null_mean) / null_sd (None when null_sd is 0) |
| `p_value` | (1 + #{k: θ_k at least as extreme as θ̂}) / (K + 1); at least 1/(K + 1) |
| `permutations` | K |

"At least as extreme" follows the metric's direction: θ_k ≥ θ̂ for "higher", θ_k ≤ θ̂ for "lower",
\\|θ_k − null_mean\\| ≥ \\|θ̂ − null_mean\\| for "neither" (two-sided).

`nulls_unavailable` says why a label-dependent metric has none (NC4 needs the network's decisions
on a second pass; the probe with `--shrinkage auto` would re-choose s per permutation; a metric the labels enter only
through the class counts does not change). Metrics that do not depend on labels have no null.
`neurons` also gives every unit a permutation `p_value` of its class selectivity and its
Benjamini–Hochberg `q_value` (over the units with a selectivity), and `selective_unit_fraction_fdr`:
the share of units with q ≤ `--fdr` (default 0.05). With D units BH can call j units at q only when
1/(K + 1) ≤ q·j/D: take K ≥ D/(q·j). The document records `inference.null` = {method, permutations,
seed}. **Assumption:** under the null the labels are exchangeable across sampling units.

**Second-pass metrics** (the probe's scores, NC4). With `--ci` the one shared second pass also
scores each row with the G leave-one-group-out models — the probes fitted on the train rows outside
group g (every candidate of `--shrinkage auto`), NC4's nearest class mean without group g — each fed
only the rows outside g: so the probe leaves the group out of its train and its test rows. The
network's decisions are read once per block. Time ≈ (G + 1) × the second pass's scoring; memory
holds G extra copies of the fitted models (C × D each). DSE and DSMI re-solve their kernels once
per group: their intervals are computed up to 1 000 sample rows (`--subsample`); beyond, they are
unavailable with the `--subsample` that makes them feasible.

**Baselines** (`--baseline DUMP`, API `baseline=`). The same families and options (so the same
jackknife groups) on a control run — a randomly initialised model, shuffled inputs, another seed —
one dump for every analysed file, or one per file in order; layers are matched by name. Each layer
gains `baseline` {metric: `baseline` (its value), `difference` θ̂ − θ̂_b, and with `--ci`
`difference_se` = √(se² + se_b²) (independent samples), `difference_ci_low`/`_high` = difference ∓
t_{G−1,0.975}·difference_se, `excludes_zero`}; `baseline_unavailable` says why a metric has none;
each file records `baseline_file`, the document `inference.baseline`. When the baseline holds the
same inputs as the file (a random-init checkpoint of the same evaluation set), the two are not
independent: a paired jackknife would be narrower for metrics that move together (measured on
sample_data, vci: 0.0042 paired vs 0.0076 independent); the interval given is conservative.

**compare** (`actgeom compare --ci --null K`, API `compare(..., ci=True, null=K)`). The sampling unit is
the aligned row (the sequence of file A on token-level dumps, files being aligned row by row); the
pass keeps every layer's moments and every pair's cross moments per group, and each cell's measures
are re-evaluated on the G leave-one-group-out passes (exactly the moments of the rows outside the
group, tests/test_compare_ci.py). RSA and mutual k-NN use the seeded row sample without the group's
rows (their RDM is the whole sample's, restricted). Each cell gains `intervals` /
`intervals_unavailable`. With `--null K`, `cka_linear`, `cka_debiased`, `rsa_spearman`, `rsa_pearson`
and `mutual_knn` get `nulls` (null_mean, null_sd, z, p_value, permutations, and `sample_value`, the
statistic the null is compared with) from K seeded shuffles of B's sampled rows (H₀: which row of B
goes with which row of A does not matter). CKA is tested on the sample (its null distribution
depends on the number of rows), so `sample_value` is CKA of the sampled rows, not the cell's value
over all rows. RSA shuffles only the rows usable in both layers (not constant). Cost: the null is
K × m² per measure (m sampled rows); the intervals re-evaluate every measure G times.

**Calibration** (benchmarks/bench_calibration.py; numbers in benchmarks/RESULTS.md). On Gaussian
mixtures whose population values are known in closed form (C = 4 classes of ~2 000 rows, D = 8), the
95 % intervals of nc1, nc1_quotient, cdnv, mean_energy_fraction and lda_accuracy held the population
value in 94–96.5 % of 200 datasets; under random labels nc1's permutation p-values were uniform (KS
p = 0.89), with planted classes all 1/(K + 1). The interval is centred on θ̂ and measures its spread,
not its bias. A ratio of estimated traces (nc1, nc1_quotient, cdnv) is biased low by O(D/n_c): the
noise of each estimated class mean adds ≈ Tr Σ_W/n_c to ‖m_c‖². With ~100 rows per class at D = 64
the bias was 3–6 se and the intervals covered 0–22 %. **When `bias` is not small against `se`, do not
trust the interval** (θ̂ − bias recovers most of it). The probe's `bias` is no correction: accuracy is
not a smooth function of the train rows.
"""

FAMILY_ORDER = ("collapse", "rank", "entropy", "neurons", "probe", "compare", "ood")


def _number(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:g}"


def _row(metric) -> str:
    low, high = metric.range
    checked = f"`{metric.test}`" if metric.test else f"exempt: {metric.exempt}"
    cells = [f"`{metric.name}`", metric.formula, _number(metric.ideal), f"[{_number(low)}, {_number(high)}]",
             metric.direction, ", ".join(sorted(metric.invariant)) or "—", ", ".join(metric.needs) or "—",
             metric.source, checked]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def render() -> str:
    parts = [INTRO]
    for name in sorted(REGISTRIES, key=lambda n: FAMILY_ORDER.index(n) if n in FAMILY_ORDER else len(FAMILY_ORDER)):
        parts.append(FAMILY_TEXT.get(name, f"## {name}\n"))
        parts.append("| metric | definition | ideal | range | better | invariant to | needs | source | checked by |\n"
                     "|---|---|---|---|---|---|---|---|---|")
        parts.append("\n".join(_row(metric) for metric in REGISTRIES[name].values()) + "\n")
    parts.append(INFERENCE)
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            sys.stderr.write(f"{OUT} is out of date: run python docs/generate_metrics.py\n")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
