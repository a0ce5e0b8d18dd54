"""Every metric of every family on sample_data/, as recorded in tests/data/sample_metrics.json.

tests/test_sample_metrics.py compares today's values with the recorded ones, so that a change
made for speed (or anything else) cannot move a number silently. Re-record only deliberately,
when a change of a value is intended and explained in the commit:

    python tests/sample_metrics.py      # rewrites tests/data/sample_metrics.json
"""

from __future__ import annotations

import json
from pathlib import Path

import actgeom

ROOT = Path(__file__).parent.parent
RECORDED = Path(__file__).parent / "data" / "sample_metrics.json"
SAMPLES = sorted((ROOT / "sample_data").glob("*.h5"))
LAST = ROOT / "sample_data" / "digits_mlp_epoch1500.h5"
EARLY = ROOT / "sample_data" / "digits_mlp_epoch0030.h5"
# DSE/DSMI with the default sample (all 1 797 rows) take ~3 s per layer: the defaults on one layer,
# a 500-row sample on every layer of every file (the streamed entropies do not depend on it).
ENTROPY_SAMPLE = 500
ENTROPY_LAYER = "hidden3"
COMPARE_SAMPLE = 500  # RSA and mutual k-NN rows: the default 2 000 takes ~7 s


def runs() -> dict[str, list]:
    """Run (the command it equals; defaults unless named) → its records, each [file, layer, metric,
    value, note], files by name only."""
    results = {
        "collapse": actgeom.collapse(SAMPLES),
        "rank": actgeom.rank(SAMPLES),
        "entropy": actgeom.entropy([LAST], layers=[ENTROPY_LAYER]),
        f"entropy --subsample {ENTROPY_SAMPLE}": actgeom.entropy(SAMPLES, subsample=ENTROPY_SAMPLE),
        "neurons": actgeom.neurons(SAMPLES),
        "probe": actgeom.probe(SAMPLES),
        f"compare --subsample {COMPARE_SAMPLE}": actgeom.compare([EARLY, LAST], subsample=COMPARE_SAMPLE),
    }
    return {name: [_record(row) for row in result.records()] for name, result in results.items()}


def _record(row: dict) -> list:
    if "file_a" in row:  # compare: a pair of layers
        where = [f"{Path(row['file_a']).name}:{row['layer_a']}", f"{Path(row['file_b']).name}:{row['layer_b']}"]
    else:
        where = [Path(row["file"]).name, row["layer"]]
    return [*where, row["metric"], row["value"], row["note"]]


def environment() -> dict:
    """The numerical libraries the values come from: another BLAS build rounds differently."""
    import numpy
    import scipy

    def blas(module) -> str:
        return module.show_config(mode="dicts")["Build Dependencies"]["blas"].get("version", "?")

    return {"numpy": f"{numpy.__version__} (BLAS {blas(numpy)})", "scipy": f"{scipy.__version__} (BLAS {blas(scipy)})"}


def main() -> None:
    document = {"note": "recorded by tests/sample_metrics.py; compared by tests/test_sample_metrics.py",
                "version": actgeom.__version__, "environment": environment(), "runs": runs()}
    RECORDED.parent.mkdir(exist_ok=True)
    # allow_nan=False: a non-finite value is recorded as None with its note, never as NaN
    RECORDED.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    print(f"wrote {RECORDED} ({sum(len(rows) for rows in document['runs'].values())} values)")


if __name__ == "__main__":
    main()
