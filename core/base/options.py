"""The options of every family: their choices, defaults and checks, and nothing heavy.

Dataclasses and tuples only (no numpy), so that the command line can show every choice and
default in ``--help`` without importing the computations; the family modules (collapse,
spectrum, entropy, neurons, probe, compare) use them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from actgeom.core.base.errors import OptionError

NONFINITE_POLICIES = ("error", "drop")  # of the pass (core/state/engine.py PassOptions)
PRODUCTS = ("float64", "float32")  # how the D×D product of each block is computed (PassOptions.products)
# stored dtypes of a dump (core/dump/writer.py; bfloat16 as its raw bits) and HDF5 compressions
STORAGE_DTYPES = ("float16", "float32", "float64", "bfloat16")
COMPRESSION = (None, "lzf", "gzip")
SEEDS = 2**64  # a seed keys rows by splitmix64 (core/base/sample.py): an unsigned 64-bit integer
CI_GROUPS = 20  # jackknife groups of sampling units by default (core/state/groups.py; --ci-groups)


def check_seed(seed: int, option: str = "seed") -> None:
    """A seed is an integer 0 ≤ seed < 2⁶⁴ (a negative one has no unsigned 64-bit value)."""
    if not 0 <= seed < SEEDS:
        raise OptionError(option, seed, "must be an integer from 0 to 2⁶⁴ − 1")


# -- collapse ----------------------------------------------------------------------------------

GLOBAL_MEANS = ("class", "sample")
NC1_INVERSES = ("topk", "pinv")
NC4_DECISIONS = ("auto", "predictions", "logits", "logits-nobias")


@dataclass(frozen=True)
class CollapseOptions:
    """Every convention that changes a collapse number (docs/metrics.md); recorded in the output."""

    min_count: int = 1  # classes with fewer rows are dropped from every metric
    global_mean: str = "class"  # μ_G: mean of class means ("class") or of rows ("sample")
    nc1_inverse: str = "topk"  # Σ_B⁺ from the top min(C−1, D) eigenpairs, or a pseudo-inverse
    divide_by_c: bool = True  # nc1 = Tr(Σ_W Σ_B⁺)/C; False: the Papyan notebook form
    nc4_decision: str = "auto"  # predictions, else argmax(Wx+b), else argmax(Wx)
    per_class: bool = False  # also report n_c, ‖m_c‖, ‖w_c‖, v_c per class
    preset: str | None = None

    def __post_init__(self) -> None:
        for name, valid in (("global_mean", GLOBAL_MEANS), ("nc1_inverse", NC1_INVERSES),
                            ("nc4_decision", NC4_DECISIONS)):
            if getattr(self, name) not in valid:
                raise OptionError(name, getattr(self, name), f"is not one of {', '.join(valid)}")
        if self.min_count < 1:
            raise OptionError("min_count", self.min_count, "must be ≥ 1")


# Each preset reproduces one publication's conventions (docs/metrics.md, "Neural collapse": presets).
COLLAPSE_PRESETS: dict[str, dict] = {
    "papyan": {"global_mean": "class", "nc1_inverse": "topk", "divide_by_c": False},
    "zhu": {"global_mean": "sample", "nc1_inverse": "pinv", "divide_by_c": True},
    "linguistic": {"nc4_decision": "logits-nobias"},
}


# -- rank ----------------------------------------------------------------------------------------

# Relative size, in λ, of the noise that storing activations adds (docs/metrics.md): eigenvalues
# below rtol·λ_1 are indistinguishable from storage noise. float64/float32: a few ulps of λ_1.
STORAGE_RTOL = {"float16": 1e-8, "bfloat16": 1e-6, "float32": 1e-11, "float64": 1e-14}


@dataclass(frozen=True)
class RankOptions:
    """Every convention that changes a rank number; recorded in the output."""

    center: bool = True  # spectrum of the covariance (True) or of the raw second moment
    max_eigs: int | None = None  # keep only the largest eigenvalues (the tracing preset: 2048)
    eps: float = 1e-7  # RankMe's ε (Garrido et al.)
    fit_range: tuple[int, int] = (12, 100)  # α-ReQ ranks, 1-based, inclusive
    ge: bool = False  # k_p: Σ_{i≤k} λ_i/Σλ ≥ p instead of > p
    rtol: float | None = None  # numerical rank tolerance; None: by input dtype (STORAGE_RTOL)
    subsample: int = 2_000  # rows for TwoNN / MLE (their k-NN costs ~n²·D: 10 000 rows at D = 1024 take 2 s)
    seed: int = 0
    mle_k: int = 20
    preset: str | None = None

    def __post_init__(self) -> None:
        start, stop = self.fit_range
        if not 1 <= start < stop:
            raise OptionError("fit_range", tuple(self.fit_range), "must be two ranks 1 ≤ start < stop")
        if self.max_eigs is not None and self.max_eigs < 1:
            raise OptionError("max_eigs", self.max_eigs, "must be ≥ 1")
        for name in ("subsample", "eps"):
            if getattr(self, name) < 0:
                raise OptionError(name, getattr(self, name), "must be ≥ 0")
        check_seed(self.seed)


RANK_PRESETS: dict[str, dict] = {
    "garrido": {"center": False, "eps": 1e-7},  # RankMe as published: raw singular values
    "tracing": {"center": True, "max_eigs": 2048},  # Li et al. 2025 / reptrix: centred λ, top 2048
}


# -- entropy -------------------------------------------------------------------------------------

DSE_METHODS = ("exact", "slq")


@dataclass(frozen=True)
class EntropyOptions:
    """Every convention that changes an entropy number; recorded in the output."""

    alpha: float = 1.0  # Rényi order of the dataset entropy
    sigma: float = 10.0  # DSE kernel width, absolute (as published)
    t: float = 1.0  # DSE diffusion time
    subsample: int = 10_000  # rows for DSE / DSMI
    seed: int = 0
    dsmi_repeats: int = 5
    threshold: float | None = None  # "active" = value > threshold; None: 0 for ReLU layers, else required
    tau: float = 0.025  # dormant threshold on normalised mean |a|
    layer_width: int | None = None  # SAE: the width of the layer the SAE encodes (superposition ratio)
    eps: float = 0.0  # attention: log(A + eps) (Zhai et al.'s code uses 1e-6); 0 = the definition
    normalized: bool = False  # attention entropy divided by log(#valid keys)
    dse_method: str = "exact"  # "exact": every eigenvalue of K; "slq": stochastic Lanczos quadrature, seeded by seed

    def __post_init__(self) -> None:
        if self.dse_method not in DSE_METHODS:
            raise OptionError("dse_method", self.dse_method, f"must be one of {', '.join(DSE_METHODS)}")
        if self.alpha <= 0:
            raise OptionError("alpha", self.alpha, "must be > 0")
        for name in ("sigma", "t"):
            if getattr(self, name) <= 0:
                raise OptionError(name, getattr(self, name), "must be > 0")
        if self.subsample < 2:
            raise OptionError("subsample", self.subsample, "must be ≥ 2")
        if self.tau < 0:
            raise OptionError("tau", self.tau, "must be ≥ 0")
        check_seed(self.seed)


# -- neurons -------------------------------------------------------------------------------------

# per-unit scores a ranking may use; every one is "higher = more of it"
SCORES = ("kurtosis", "skewness", "mean", "std", "min", "max", "firing_rate", "dormant_score", "class_selectivity",
          "probeless_score", "token_concentration", "position_eta2", "vae_kl")


@dataclass(frozen=True)
class NeuronsOptions:
    """Every convention that changes a unit-level number; recorded in the output."""

    top: int = 10  # units in the ranked list of each layer
    score: str = "kurtosis"  # the per-unit score that ranks them (descending)
    min_support: int | None = None  # a ranked unit fires on ≥ this many rows; None: max(10, 0.1 % of the rows)
    threshold: float | None = None  # "fires" = value > threshold; None: 0 for ReLU layers, else required
    tau: float = 0.025  # dormant when dormant_score ≤ tau (ReDo)
    cutoff: float = 0.5  # selective / token detector / positional when the score ≥ cutoff
    max_position: int = 512  # positions ≥ this are pooled into one for position_eta2
    mu: str | None = None  # the layer of a VAE's posterior means
    logvar: str | None = None  # the layer of its posterior log-variances
    delta: float = 0.01  # active latent: Var_x(μ_u) > delta (Burda et al. 2016)
    collapsed_kl: float = 0.01  # collapsed latent: mean KL(q(z_u|x) ‖ N(0, 1)) < this, in nats
    fdr: float = 0.05  # selective at false discovery rate q: BH q-value of the unit's permutation p-value ≤ fdr

    def __post_init__(self) -> None:
        if self.top < 1:
            raise OptionError("top", self.top, "must be ≥ 1")
        if self.score not in SCORES:
            raise OptionError("score", self.score, f"is not one of {', '.join(SCORES)}")
        if self.tau < 0:
            raise OptionError("tau", self.tau, "must be ≥ 0")
        if self.min_support is not None and self.min_support < 0:
            raise OptionError("min_support", self.min_support, "must be ≥ 0 (rows a ranked unit fires on)")
        if not 0 < self.cutoff <= 1:
            raise OptionError("cutoff", self.cutoff, "must be in (0, 1]: it is compared with shares and ratios")
        if self.max_position < 1:
            raise OptionError("max_position", self.max_position, "must be ≥ 1")
        if not 0 < self.fdr < 1:
            raise OptionError("fdr", self.fdr, "must be in (0, 1): a false discovery rate")
        if self.logvar is not None and self.mu is None:
            raise OptionError("logvar", self.logvar, "needs --mu: the layer of the posterior means of the same latents")
        if self.mu is not None and self.mu == self.logvar:
            raise OptionError("logvar", self.logvar, "names the same layer as --mu")
        for name in ("delta", "collapsed_kl"):
            if getattr(self, name) < 0:
                raise OptionError(name, getattr(self, name), "must be ≥ 0")


# -- probe ---------------------------------------------------------------------------------------

# the sampling unit the split hashes (docs/metrics.md, "Linear probes and concept directions");
# auto: the sequence on token-level dumps, else the row
SPLIT_BY = ("auto", "row", "sequence", "sample_id")
CONTROLS = ("token", "row")
# s = 0.1 keeps Σ_s positive definite whatever the rank of Σ_W (dead units, D > n, anisotropic
# language-model layers) with condition number ≤ 1 + 9·D, and costs almost no accuracy on
# well-conditioned layers (README: measured on sample_data/).
DEFAULT_SHRINKAGE = 0.1
DEFAULT_RIDGE_LAMBDA = 0.1
# --shrinkage auto: the s of this grid with the best validation accuracy (ties: the larger s).
# s = 0 is left out: a singular Σ_W would need a D×D SVD per fit.
SHRINKAGE_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 0.9)


@dataclass(frozen=True)
class ProbeOptions:
    """Everything that changes a probe number (docs/metrics.md, "Linear probes and concept
    directions"); recorded in the output."""

    test_fraction: float = 0.2  # share of the units (split_by) held out, by seeded hash; 0: directions only
    seed: int = 0  # of the split (and, + 1, of the control task)
    split_by: str = "auto"  # the unit hashed: the row, the sequence, /rows/sample_id; auto: sequence if token-level
    shrinkage: float | str = DEFAULT_SHRINKAGE  # s of Σ_s, or "auto": chosen on a validation split of the train rows
    ridge_lambda: float = DEFAULT_RIDGE_LAMBDA  # λ relative to tr S_T / D
    control: str | None = None  # "token" (Hewitt & Liang, /rows/token_id) or "row" (hash bucket of the split's unit)
    positive: str | None = None  # the direction's classes: index or label name (default: the two classes)
    negative: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise OptionError("test_fraction", self.test_fraction, "must be in [0, 1)")
        check_seed(self.seed)
        if self.shrinkage != "auto" and not (isinstance(self.shrinkage, (int, float)) and 0 <= self.shrinkage <= 1):
            raise OptionError("shrinkage", self.shrinkage, "must be a number in [0, 1] or auto")
        if not self.ridge_lambda >= 0:
            raise OptionError("ridge_lambda", self.ridge_lambda, "must be ≥ 0")
        if self.split_by not in SPLIT_BY:
            raise OptionError("split_by", self.split_by, f"is not one of {', '.join(SPLIT_BY)}")
        if self.control is not None and self.control not in CONTROLS:
            raise OptionError("control", self.control, f"is not one of {', '.join(CONTROLS)}")
        if (self.positive is None) != (self.negative is None):
            given = "positive" if self.negative is None else "negative"
            raise OptionError(given, getattr(self, given), "needs its pair (--positive and --negative)")
        if self.positive is not None and str(self.positive) == str(self.negative):
            raise OptionError("negative", self.negative, "must differ from --positive")

    @property
    def shrinkages(self) -> tuple[float, ...]:
        """The candidate values of s: the grid for "auto", else the one given."""
        return SHRINKAGE_GRID if self.shrinkage == "auto" else (float(self.shrinkage),)


# -- compare -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompareOptions:
    """Every convention that changes a compare number; recorded in the output."""

    alpha: float = 1.0  # shape_distance's partial whitening: 1 = orthogonal Procrustes, 0 = CCA
    svcca_keep: float = 0.99  # SVCCA keeps the top PCs explaining this fraction of each side's variance
    subsample: int = 2_000  # rows shared by both files for RSA and mutual k-NN
    seed: int = 0
    knn_k: int = 10  # mutual k-NN's k (Huh et al. 2024)
    unit_threshold: float = 0.5  # unit_best_corr: fraction of A's units whose best correlation exceeds this
    units: bool = False  # also list, per unit of A, its best-correlated unit of B

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise OptionError("alpha", self.alpha, "must be in [0, 1] (1 = Procrustes, 0 = CCA)")
        if not 0 < self.svcca_keep <= 1:
            raise OptionError("svcca_keep", self.svcca_keep, "must be a fraction of variance in (0, 1]")
        if self.subsample < 0:
            raise OptionError("subsample", self.subsample, "must be ≥ 0")
        check_seed(self.seed)
        if self.knn_k < 1:
            raise OptionError("knn_k", self.knn_k, "must be ≥ 1")
        if not -1 <= self.unit_threshold <= 1:
            raise OptionError("unit_threshold", self.unit_threshold, "must be a correlation in [-1, 1]")


# -- ood -----------------------------------------------------------------------------------------

OOD_SCORES = ("msp", "max_logit", "energy", "mahalanobis", "relative_mahalanobis", "vim", "neco", "neco_max_logit", "knn")


@dataclass(frozen=True)
class OodOptions:
    """Every convention that changes an ood number (docs/metrics.md, "Out-of-distribution scores"); recorded in the output. The
    dumps: ``test`` holds the ID rows scored as in-distribution, ``ood`` one dump per OOD set."""

    test: str | None = None
    ood: tuple[str, ...] = ()
    temperature: float = 1.0  # energy's T
    vim_dim: int | None = None  # ViM's principal dimension d; None: its authors' rule (D ≥ 2048: 1000, ≥ 768: 512, else D/2)
    neco_dim: int | None = None  # NECO's principal dimension d; None: ViM's rule
    knn_k: int = 50  # kNN's k (Sun et al. 2022, CIFAR)
    knn_sample: int = 10_000  # ID fit rows kept (seeded) for kNN and ViM's α
    seed: int = 0
    fit_split: float | None = None  # no ``test``: this share of the fit dump's units (seeded hash) held out as ID test rows

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise OptionError("temperature", self.temperature, "must be > 0 (energy divides the logits by it)")
        for name in ("vim_dim", "neco_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be ≥ 1")
        if self.knn_k < 1:
            raise OptionError("knn_k", self.knn_k, "must be ≥ 1")
        if self.knn_sample < 1:
            raise OptionError("knn_sample", self.knn_sample, "must be ≥ 1")
        if self.fit_split is not None and not (0 < self.fit_split < 1 and self.test is None):
            raise OptionError("fit_split", self.fit_split, "must be in (0, 1), and only without --test")
        check_seed(self.seed)
