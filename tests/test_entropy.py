"""Entropy metrics: closed forms, slow references, the sample's reproducibility."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from conftest import assert_metrics_close, class_data, every, run_family, write_dump

from actgeom.core.base.row_stats import UnitStats
from actgeom.core.dump import Dump
from actgeom.core.metrics.diffusion import diffusion_spectral_entropy
from actgeom.core.metrics.entropy import (
    EntropyOptions,
    attention_entropy,
    dataset_entropy,
    neuron_activity,
    renyi_entropy,
    sae_effective_features,
)
from actgeom.core.state.engine import PassOptions, accumulate

# The streamed statistics are float64 sums; the entropies are smooth functions of them.
ENTROPY_RTOL = 1e-8


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_flat_spectrum_of_k_has_entropy_log_k(alpha):
    assert renyi_entropy(np.r_[np.full(6, 2.5), np.zeros(4)], alpha) == pytest.approx(math.log(6), rel=1e-12)


def _dse_reference(X, sigma, t):
    """DSE the slow, obvious way: explicit distance, kernel and diagonal matrices."""
    n = X.shape[0]
    d2 = np.array([[np.sum((X[i] - X[j]) ** 2) for j in range(n)] for i in range(n)])
    G = np.exp(-d2 / (2 * sigma**2))
    Dm = np.diag(1 / np.sqrt(G.sum(axis=1)))
    lam = np.linalg.eigvalsh(Dm @ G @ Dm)
    p = np.abs(lam) ** t / (np.abs(lam) ** t).sum() + 2.22e-16
    return -(p * np.log2(p)).sum()


def test_dse_matches_the_reference_and_its_limits(rng):
    X = rng.standard_normal((60, 4)) * 3
    result = diffusion_spectral_entropy(X, sigma=2.0, t=2.0)
    assert result["dse"] == pytest.approx(_dse_reference(X, 2.0, 2.0), rel=1e-9)
    pairs = np.linalg.norm(X[:, None] - X[None], axis=2)[np.triu_indices(60, 1)]
    # distances through the Gram matrix (‖a‖² + ‖b‖² − 2a·b) keep ~8 of 16 digits after the √
    assert result["dse_median_distance"] == pytest.approx(np.median(pairs), rel=1e-6)
    assert diffusion_spectral_entropy(X, sigma=1e-3, t=1.0)["dse"] == pytest.approx(math.log2(60), rel=1e-9)  # K = I
    assert diffusion_spectral_entropy(X, sigma=1e7, t=1.0)["dse"] == pytest.approx(0.0, abs=1e-6)  # one cluster
    two = np.r_[rng.standard_normal((30, 3)), 1e3 + rng.standard_normal((30, 3))]
    assert diffusion_spectral_entropy(two, sigma=3.0, t=200)["dse"] == pytest.approx(1.0, abs=1e-3)  # two clusters


def test_attention_entropy_closed_forms():
    T = 8
    uniform = np.full((2, 3, T, T), 1.0 / T)
    one_hot = np.zeros((2, 3, T, T))
    one_hot[..., 0] = 1.0
    u = attention_entropy(iter([uniform]), eps=0.0, normalized=False)
    assert u["attention_entropy"] == pytest.approx(math.log(T))
    assert u["attention_entropy_per_head"] == pytest.approx([math.log(T)] * 3)
    assert attention_entropy(iter([one_hot]), eps=0.0, normalized=False)["attention_entropy"] == 0.0
    assert attention_entropy(iter([uniform]), eps=0.0, normalized=True)["attention_entropy"] == pytest.approx(1.0)
    causal = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # uniform over the allowed keys
    c = attention_entropy(iter([causal[None, None]]), eps=0.0, normalized=False)
    assert c["attention_entropy"] == pytest.approx(np.mean(np.log(np.arange(1, T + 1))))


def _units(rows: np.ndarray, threshold=0.0) -> UnitStats:
    units = UnitStats(rows.shape[1], threshold)
    units.update(rows)
    return units


def test_sae_effective_features_closed_forms(rng):
    F = 5
    rows = np.zeros((40, 12))
    rows[:, :F] = 2.0  # equal mass on F latents, none on the rest
    assert sae_effective_features(_units(rows))["sae_effective_features"] == pytest.approx(F, rel=1e-6)
    one = np.zeros((40, 12))
    one[:, 3] = rng.random(40) + 0.1
    assert sae_effective_features(_units(one), layer_width=4) == pytest.approx(
        {"sae_effective_features": 1.0, "superposition_ratio": 0.25}, rel=1e-6)


def test_a_unit_that_never_fires_is_dead_exactly(rng):
    rows = np.maximum(rng.standard_normal((500, 10)), 0)
    rows[:, 7] = 0.0
    rows[:, 2] = np.minimum(rows[:, 2], 0.3)  # fires, but never above 0.3
    activity = neuron_activity(_units(rows, threshold=0.3), tau=0.025)
    assert activity["dead_fraction"] == pytest.approx(2 / 10)


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_streamed_entropies_match_in_memory_references(tmp_path, rng, dtype):
    X, y = class_data(rng, [90, 60, 50], 16, offset=0.5)
    X = np.maximum(X, 0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, labels=y, chunk_rows=int(rng.integers(3, 60)))
    with h5py.File(path, "a") as f:
        f["activations/h"].attrs["activation"] = "relu"
    with Dump(path) as dump:
        stored = dump.read_rows("h").astype(np.float64)
    report = run_family("entropy", path, options=EntropyOptions(sigma=5.0, subsample=1000, tau=0.5),
                          pass_options=PassOptions(block_rows=int(rng.integers(1, 50))))
    m = report["layers"][0]["metrics"]
    U = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    gram = np.linalg.eigvalsh(U @ U.T)  # the N×N side
    assert m["dataset_entropy"] == pytest.approx(renyi_entropy(gram, 1.0), rel=1e-9)  # Gram side = D×D side
    mean_abs = np.abs(stored).mean(axis=0)
    q = mean_abs / mean_abs.sum()
    fire = (stored > 0).mean(axis=0)
    binary = -np.where(fire > 0, fire * np.log(np.where(fire > 0, fire, 1)), 0) - \
        np.where(fire < 1, (1 - fire) * np.log(np.where(fire < 1, 1 - fire, 1)), 0)
    expected = {"dead_fraction": np.mean(fire == 0), "dormant_fraction": np.mean(mean_abs / mean_abs.mean() <= 0.5),
                "firing_entropy": binary.mean(), "effective_units": np.exp(-(q[q > 0] * np.log(q[q > 0])).sum()),
                "dse": _dse_reference(stored, 5.0, 1.0),  # the sample holds every row here
                "sae_effective_features": _sae_reference(mean_abs),
                "dsmi": _dsmi_reference(stored, y, 5.0, 1.0, repeats=5, seed=0),
                "dataset_entropy": renyi_entropy(gram, 1.0)}
    assert_metrics_close(m, expected, rtol=ENTROPY_RTOL)


def _sae_reference(mean_abs):
    p = mean_abs / mean_abs.sum() + 1e-10
    p = p / p.sum()
    return np.exp(-(p * np.log(p)).sum())


def _dsmi_reference(X, y, sigma, t, *, repeats, seed):
    """Σ_c (n_c/N)(mean DSE of random size-n_c subsets − DSE of class c), same seeded subsets."""
    rng = np.random.default_rng(seed)
    total = 0.0
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        random = np.mean([_dse_reference(X[rng.choice(y.size, rows.size, replace=False)], sigma, t) for _ in range(repeats)])
        total += rows.size / y.size * (random - _dse_reference(X[rows], sigma, t))
    return total


def test_attention_entropy_read_from_the_dump(tmp_path, rng):
    logits = rng.standard_normal((7, 3, 5, 5))
    A = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((10, 2))})
    with h5py.File(path, "a") as f:
        f["attention/block0"] = A
    report = run_family("entropy", path, options=EntropyOptions(subsample=10, threshold=0.0))
    entry = next(layer for layer in report["layers"] if layer["layer"] == "attention/block0")
    per_row = -(A * np.log(A)).sum(axis=-1)  # (S, H, T)
    assert entry["metrics"]["attention_entropy_per_head"] == pytest.approx(list(per_row.mean(axis=(0, 2))), rel=1e-12)
    assert entry["metrics"]["attention_entropy"] == pytest.approx(per_row.mean(), rel=1e-12)


def test_dataset_entropy_gram_side_equals_scatter_side(rng):
    X = rng.standard_normal((50, 8))
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    for alpha in (0.5, 1.0, 2.0):
        assert dataset_entropy(U.T @ U, alpha=alpha) == pytest.approx(renyi_entropy(np.linalg.eigvalsh(U @ U.T), alpha),
                                                                      abs=1e-9)


def test_same_seed_same_sample_across_layers_and_runs(tmp_path, rng):
    X = rng.standard_normal((3000, 6))
    path = write_dump(tmp_path / "d.h5", {"a": X, "b": X[:, :2] ** 2}, chunk_rows=100)
    with Dump(path) as dump:
        runs = [accumulate(dump, specs=every(reservoir=500, seed=9), options=PassOptions(block_rows=b)) for b in (64, 1000)]
    indices = [run[layer].get("sample").sample()[0] for run in runs for layer in ("a", "b")]
    assert all(np.array_equal(indices[0], other) for other in indices[1:])


def test_entropy_needs_a_threshold_for_layers_not_marked_relu(tmp_path, rng):
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((50, 4))})
    layer = run_family("entropy", path, options=EntropyOptions(subsample=50))["layers"][0]
    assert "--threshold" in layer["unavailable"]["dead_fraction"]
    assert "dead_fraction" in run_family("entropy", path,
                                         options=EntropyOptions(subsample=50, threshold=0.1))["layers"][0]["metrics"]


def test_entropy_cli_on_sample_data(cli):
    from pathlib import Path

    sample = Path(__file__).parent.parent / "sample_data" / "digits_mlp_epoch1500.h5"
    doc = cli.json("entropy", sample, "--layers", "hidden3", "--subsample", "500")
    layer = doc["files"][0]["layers"][0]
    assert layer["entropy"]["sample_rows"] == 500 and 0 <= layer["metrics"]["dead_fraction"] <= 1
    assert layer["metrics"]["dsmi"] > 0  # classes are separated in the trained network
    code, _, err = cli("entropy", sample, "--alpha", "0")
    assert code == 2 and err == "Error: --alpha '0.0' must be > 0\n"


def _sequence_reference(X, offsets, alpha):
    prompts, vectors, single = [], [], 0
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b - a < 2:
            single += 1
            continue
        Z = X[a:b] - X[a:b].mean(axis=0)
        Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        prompts.append(renyi_entropy(np.linalg.eigvalsh(Z @ Z.T), alpha))  # the T×T Gram, always
        vectors.append(Z.mean(axis=0))
    V = np.array(vectors)
    return np.mean(prompts), renyi_entropy(np.linalg.eigvalsh(V @ V.T), alpha), single  # the S×S Gram


@pytest.mark.parametrize("dtype", ["float64", "float16"])
@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_sequence_entropies_match_the_reference(tmp_path, rng, dtype, alpha):
    from actgeom.core.dump import DumpWriter

    lengths = np.r_[rng.integers(1, 12, size=60), 40]  # 1-token sequences, and one longer than a block
    offsets = np.r_[0, np.cumsum(lengths)]
    X = rng.standard_normal((int(offsets[-1]), 6)) + 2.0
    path = tmp_path / "tok.h5"
    with DumpWriter(path, layers={"h": 6}, dtype=dtype, level="token", chunk_bytes=6 * 2 * 13) as writer:
        writer.append({"h": X})
        writer.set_offsets(offsets)
    with Dump(path) as dump:
        stored = dump.read_rows("h").astype(np.float64)
    report = run_family("entropy", path, options=EntropyOptions(alpha=alpha, subsample=50, threshold=0.0),
                          pass_options=PassOptions(block_rows=int(rng.integers(8, 30))))
    layer = report["layers"][0]
    prompt, dataset, single = _sequence_reference(stored, offsets, alpha)
    assert layer["metrics"]["prompt_entropy"] == pytest.approx(prompt, rel=ENTROPY_RTOL)
    assert layer["metrics"]["dataset_entropy"] == pytest.approx(dataset, rel=ENTROPY_RTOL)
    assert layer["entropy"]["n_single_token_sequences_skipped"] == single and layer["entropy"]["n_sequences"] == 61 - single


def test_sequence_blocks_end_at_boundaries():
    from actgeom.core.state.engine import sequence_blocks

    offsets = np.array([0, 3, 5, 30, 31, 40])
    bounds = sequence_blocks(offsets, 0, 40, 8)
    assert bounds == [(0, 5), (5, 30), (30, 31), (31, 40)]
    assert sequence_blocks(offsets, 4, 35, 100) == [(4, 35)]  # cut sequences keep the part inside


def test_sae_epsilon_on_a_million_dead_latents():
    """One latent carries all the mass, 10⁶ − 1 carry none: F depends on ε = 1e-10 visibly
    (Dε = 1e-4 of the mass), and equals exp(H) of the ε-smoothed distribution."""
    D = 1_000_000
    units = UnitStats(D)
    units.n_rows, units.sum_abs = 1, np.zeros(D)
    units.sum_abs[0] = 5.0
    p = np.full(D, 1e-10)
    p[0] += 1.0
    p /= p.sum()
    expected = math.exp(-(p * np.log(p)).sum())
    assert sae_effective_features(units)["sae_effective_features"] == pytest.approx(expected, rel=1e-12)


def test_a_unit_exactly_at_tau_is_dormant(rng):
    """Mean |a| of 1, 2, 2, 3: the first unit's score is exactly 1/2 = τ, and s ≤ τ counts it."""
    units = _units(np.array([[1.0, 2.0, 2.0, 3.0], [-1.0, 2.0, -2.0, 3.0]]))
    assert neuron_activity(units, tau=0.5)["dormant_fraction"] == 0.25


@pytest.mark.parametrize("n", [2, 3, 4, 57, 600, 700])  # 700: above the sampled bracket's threshold
def test_median_distance_is_exact_without_a_copy(rng, n):
    """The bracketed selection equals the median of the upper triangle (ties included)."""
    from actgeom.core.metrics.diffusion import _median_offdiagonal

    X = np.round(rng.standard_normal((n, 3)), 1)  # rounded: many equal distances
    squared = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=-1)
    expected = np.sqrt(np.median(squared[np.triu_indices(n, 1)]))
    assert _median_offdiagonal(squared) == expected


def test_sequences_of_identical_tokens_are_skipped_not_nan(tmp_path):
    """Issue 22 item 3: a constant token-level layer gave prompt entropy NaN (null, no reason)."""
    from actgeom.core.dump import DumpWriter

    with DumpWriter(tmp_path / "t.h5", layers={"c": 4}, dtype="float64", level="token") as writer:
        writer.append({"c": np.full((12, 4), 1.5)})
        writer.set_offsets(np.array([0, 3, 7, 8, 12]))
    layer = run_family("entropy", tmp_path / "t.h5")["layers"][0]
    assert layer["entropy"]["n_single_token_sequences_skipped"] == 4
    assert "no sequence of 2 or more finite, not identical tokens" == layer["unavailable"]["prompt_entropy"]
    assert "dataset entropy needs 2" in layer["unavailable"]["dataset_entropy"]
