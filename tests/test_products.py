"""`--products float32`: the documented faster product path for float16/bfloat16 layers.

Each block's D×D product in float32 (ssyrk), added to float64 totals. Its error is measured
here against the float64 path on hostile 16-bit data (an offset far above the spread, the
collapsed regime, bfloat16) and bounded by PRODUCTS_FLOAT32_RTOL; elsewhere it is refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import class_data, write_dump
from scipy.linalg import blas

import actgeom
from actgeom.core.base.errors import OptionError
from actgeom.core.base.stats import BlockProducts

# Measured worst relative difference to the float64 path: 9e-7 (sample_data/, VCI), 1e-6
# (dataset entropy of rows 50 σ from the origin). The bound leaves a decade of room and stays
# two decades below float16 storage noise (2^-11 ≈ 4.9e-4 per value).
PRODUCTS_FLOAT32_RTOL = 1e-5
NEAR_ZERO = 1e-9  # metrics whose value is ~0 (an ETF's cosine deviation) are compared absolutely
FAMILIES = ("collapse", "rank", "entropy")


def _numbers(result) -> dict:
    return {(layer["layer"], name): value for file in result.to_dict()["files"] for layer in file["layers"]
            for name, value in layer["metrics"].items() if isinstance(value, float) and np.isfinite(value)}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("offset, spread", [(0.0, 1.0), (300.0, 1.0), (0.0, 1e-3)],
                         ids=["plain", "offset 300", "collapsed"])
def test_float32_products_stay_within_their_documented_error(tmp_path, rng, dtype, offset, spread):
    means = 3 * rng.standard_normal((4, 24))
    y = np.arange(3000) % 4
    X = offset + means[y] + spread * rng.standard_normal((3000, 24))
    path = write_dump(tmp_path / "d.h5", {"h": X, "relu": np.maximum(X - offset, 0)}, dtype=dtype, labels=y,
                      chunk_rows=256)
    options = {"entropy": {"subsample": 300}}
    exact = _numbers(actgeom.analyze(path, families=FAMILIES, options=options))
    fast = _numbers(actgeom.analyze(path, families=FAMILIES, options=options, products="float32"))
    assert exact.keys() == fast.keys() and len(exact) > 60
    for key, value in exact.items():
        assert fast[key] == pytest.approx(value, rel=PRODUCTS_FLOAT32_RTOL, abs=NEAR_ZERO), key


def test_a_float32_block_product_adds_to_the_float64_upper_triangle(rng):
    z = rng.standard_normal((500, 40)).astype(np.float16).astype(np.float64)
    exact = np.zeros((40, 40), order="F")
    blas.dsyrk(1.0, z.T, beta=1.0, c=exact, trans=0, overwrite_c=1)
    total = np.zeros((40, 40), order="F")
    products = BlockProducts(40, "float32")
    products.add(total, z[:300])
    products.add(total, z[300:])
    upper = np.triu_indices(40)
    assert np.allclose(total[upper], exact[upper], rtol=0, atol=1e-5 * np.abs(exact).max())
    assert not np.array_equal(total[upper], exact[upper])  # it is the float32 path, not the exact one


def test_float32_products_are_refused_for_wider_layers(tmp_path, rng, cli):
    X, y = class_data(rng, [10, 10], 3)
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype="float32", labels=y)
    with pytest.raises(OptionError, match=r"products='float32' is for float16/bfloat16 layers.*layer 'h' .* is float32"):
        actgeom.collapse(path, products="float32")
    code, out, err = cli("collapse", path, "--products", "float32")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("Error: --products 'float32' is for float16/bfloat16 layers") and "layer 'h'" in err


def test_the_products_are_recorded_and_statistics_must_match_them(tmp_path, rng, cli):
    X, y = class_data(rng, [40, 40], 6)
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype="float16", labels=y)
    code, out, err = cli("rank", path, "--products", "float32", "-f", "json")
    assert code == 0, err
    assert json.loads(out)["pass"]["products"] == "float32"
    stats = tmp_path / "s.npz"
    code, _, err = cli("stats", path, "--save-stats", stats)
    assert code == 0, err
    code, _, err = cli("collapse", path, "--stats", stats, "--products", "float32")
    assert code != 0 and "products" in err and "Traceback" not in err, err
