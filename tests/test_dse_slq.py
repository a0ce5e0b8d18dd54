"""--dse-method slq: stochastic Lanczos quadrature against the exact DSE on small kernels, within
its own error estimate; seeded; the option reaches the output and the CLI (issue 27, goal 4)."""

from __future__ import annotations

import numpy as np
import pytest

from actgeom.core.base.errors import OptionError
from actgeom.core.base.options import EntropyOptions
from actgeom.core.metrics.diffusion import diffusion_spectral_entropy, diffusion_spectral_entropy_slq


def _clusters(n: int, seed: int) -> np.ndarray:
    """Ten Gaussian clusters in 32 dimensions, ~8 apart within a class at σ = 10: K far from I."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((10, 32))[rng.integers(0, 10, n)] * 3 + rng.standard_normal((n, 32)) * 1.2


def _tokens(n: int, seed: int) -> np.ndarray:
    """Token-like rows: a decaying spectrum, sequences of 32 correlated rows, three massive dimensions."""
    rng = np.random.default_rng(seed)
    scales = 1.5 / np.sqrt(1 + np.arange(128) / 8)
    sequences = rng.standard_normal((n // 32 + 1, 1, 128)) * scales * 0.8
    x = (sequences + rng.standard_normal((n // 32 + 1, 32, 128)) * scales).reshape(-1, 128)[:n]
    x[:, [3, 77, 100]] = rng.normal(90, 4, (n, 3))
    return x


@pytest.mark.parametrize("make", [_clusters, _tokens, lambda n, s: np.random.default_rng(s).standard_normal((n, 48))])
def test_slq_is_within_its_error_of_the_exact_dse(make):
    X = make(1000, 1)
    exact = diffusion_spectral_entropy(X, sigma=10.0, t=1.0)
    slq = diffusion_spectral_entropy_slq(X, sigma=10.0, t=1.0, seed=3)
    assert 0 < slq["dse_error"] < 1e-3 * exact["dse"]
    assert abs(slq["dse"] - exact["dse"]) <= slq["dse_error"]
    for name in ("dse_offdiag_mass", "dse_offdiag_fraction"):
        assert slq[name] == pytest.approx(exact[name], rel=1e-5)
    assert slq["dse_rows"] == 1000


def test_slq_at_another_diffusion_time_estimates_z_too():
    X = _clusters(1000, 2)
    exact = diffusion_spectral_entropy(X, sigma=10.0, t=3.0)["dse"]
    slq = diffusion_spectral_entropy_slq(X, sigma=10.0, t=3.0, seed=0)
    assert abs(slq["dse"] - exact) <= slq["dse_error"] < 1e-3 * exact


def test_slq_is_seeded():
    X = _tokens(600, 0)
    first, again = (diffusion_spectral_entropy_slq(X, sigma=10.0, t=1.0, seed=5) for _ in range(2))
    other = diffusion_spectral_entropy_slq(X, sigma=10.0, t=1.0, seed=6)
    assert first == pytest.approx(again, rel=0, abs=0, nan_ok=True)
    assert other["dse"] != first["dse"]


def test_dse_method_option_is_checked_and_recorded():
    with pytest.raises(OptionError, match="dse_method"):
        EntropyOptions(dse_method="lanczos")
    assert EntropyOptions().dse_method == "exact"


def test_the_entropy_command_takes_dse_method(tmp_path):
    """--dse-method slq reaches the family: dse_error reported and the method recorded in the options;
    exact (the default) reports no dse_error at all, and DSE as before."""
    import json

    from conftest import write_dump
    from typer.testing import CliRunner

    from actgeom.cli.app import app

    path = write_dump(tmp_path / "d.h5", {"h": _clusters(400, 0)})
    outputs = {}
    for method in ("exact", "slq"):
        done = CliRunner().invoke(app, ["entropy", path, "--dse-method", method, "--threshold", "0", "--format", "json"])
        assert done.exit_code == 0, done.output
        outputs[method] = json.loads(done.stdout)
    exact, slq = ({e["layer"]: e for e in d["files"][0]["layers"]}["h"] for d in (outputs["exact"], outputs["slq"]))
    assert outputs["slq"]["options"]["entropy"]["dse_method"] == "slq"
    assert outputs["exact"]["options"]["entropy"]["dse_method"] == "exact"
    assert "dse_error" not in exact["metrics"] and "dse_error" not in exact.get("unavailable", {})
    assert "dse_error" in slq["metrics"]
    assert abs(slq["metrics"]["dse"] - exact["metrics"]["dse"]) <= slq["metrics"]["dse_error"]
