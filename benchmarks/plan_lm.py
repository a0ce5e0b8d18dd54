"""Per-row costs at a language-model width and the job-size estimates built on them (issue #27, goal 5).

``plan_child`` (run by ``bench_lm.py --plan`` in a fresh process) measures on the LM dump:
  read     h5py reads of whole chunks of bfloat16 rows (s per row, one thread: the engine's reader);
  decode   bfloat16 bits → float64 (s per row, one thread: the reader does it too);
  p64/p32  the D×D product of a block into the float64 total (core.base.stats.BlockProducts, the
           engine's call), float64 and float32, on one BLAS thread and on every core;
  classes  ClassMoments.update without the product (class gather, shift, sums, squared norms; one
           thread) with the dump's labels over C classes;
  eig      one eigvalsh of a D×D float64 matrix (every core; 1 thread too);
  add      bytes per second of `a += b` on float64 (a merge's arithmetic).
``print_plan`` turns them into the estimates of benchmarks/PLANNING.md; the hardware figures it
assumes (node cores, parallel efficiency, disk and network bandwidth, GPU rates) are the constants
below, named in its output.
"""

from __future__ import annotations

import time

import numpy as np

NODE_CORES = 64
EFFICIENCY = 0.7  # a D = 4096 dsyrk on many cores reaches ~70 % of cores × one core's rate (assumption)
DISK_GBPS = 2.0  # one node's read bandwidth (local NVMe or a parallel file system's share), GB/s (assumption)
LINK_GBPS = 1.25  # 10 Gb/s Ethernet between Dask nodes, GB/s (assumption; 100 Gb/s InfiniBand: 12.5)
PCIE_GBPS = 25.0  # host → GPU, PCIe 4 ×16 (assumption; PCIe 5: ~50)
# Dense matmul rates (vendor datasheets: A100 SXM 80 GB, H100 SXM), TFLOP/s, float64 (tensor cores) and float32
# (plain FP32, not TF32: TF32 rounds inputs to 10 mantissa bits; shifted rows are not exact in it); 70 % reached.
GPUS = {"A100": (19.5, 19.5), "H100": (67.0, 67.0)}
GPU_EFFICIENCY = 0.7
PRODUCTS = {"collapse": 1, "rank": 1, "report": 2}  # D×D products per row of each command's pass (floor1, floor1x2)


def _per_row(seconds: float, rows: int) -> float:
    return seconds / max(rows, 1)


def _read_costs(ds, rows: int) -> dict:
    """Seconds per row of the chunk reads and of the bfloat16 → float64 decode, one thread."""
    block, n_units = ds.chunks[0], ds.shape[1]
    raw = np.empty((block, n_units), dtype=np.uint16)
    bits = np.empty((block, n_units), dtype=np.uint32)
    X = np.empty((block, n_units))
    read = decode = 0.0
    for a in range(0, rows, block):
        m = min(block, rows - a)
        t0 = time.perf_counter()
        ds.read_direct(raw, np.s_[a : a + m], np.s_[0:m])
        t1 = time.perf_counter()
        np.left_shift(raw[:m], 16, out=bits[:m], dtype=np.uint32)
        np.copyto(X[:m], bits[:m].view(np.float32))
        decode += time.perf_counter() - t1
        read += t1 - t0
    return {"read": _per_row(read, rows), "decode": _per_row(decode, rows), "block": block}


def _product_costs(X: np.ndarray, repeats: int) -> dict:
    """Seconds per row of BlockProducts.add (float64 / float32), on 1 BLAS thread and on every core."""
    from threadpoolctl import threadpool_limits

    from actgeom.core.base.stats import BlockProducts

    n_units = X.shape[1]
    scatter = np.zeros((n_units, n_units), order="F")
    costs = {}
    for products in ("float64", "float32"):
        acc = BlockProducts(n_units, products)
        acc.add(scatter, X)  # warm (buffers, threads)
        for threads, name in ((None, "all"), (1, "1")):
            with threadpool_limits(threads):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    acc.add(scatter, X)
                costs[f"p{products[5:]}_{name}"] = _per_row(time.perf_counter() - t0, repeats * X.shape[0])
    return costs


def _class_costs(X: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Seconds per row of ClassMoments.update without the product, after every class has been seen once."""
    from actgeom.core.base.stats import ClassMoments

    acc = ClassMoments(X.shape[1], scatter=False)
    block = X.shape[0]
    for a in range(0, n_classes, block):  # every class seen once: its state allocated, its reference set
        acc.update(X[: min(block, n_classes - a)], np.arange(a, min(a + block, n_classes)))
    t0 = time.perf_counter()
    for a in range(0, labels.size - block + 1, block):
        acc.update(X, labels[a : a + block] % n_classes)
    rows = (labels.size // block) * block
    return {"classes": _per_row(time.perf_counter() - t0, rows), "class_state_bytes": acc.sums.nbytes + acc.ref.nbytes}


def _per_layer_costs(n_units: int) -> dict:
    """One D×D eigvalsh (every core and 1 thread) and float64 `a += b` bandwidth."""
    from scipy.linalg import eigh
    from threadpoolctl import threadpool_limits

    A = np.random.default_rng(0).standard_normal((n_units, n_units))
    A = A @ A.T
    costs = {}
    for threads, name in ((None, "eig_all"), (1, "eig_1")):
        with threadpool_limits(threads):
            t0 = time.perf_counter()
            eigh(A, eigvals_only=True, overwrite_a=False, check_finite=False)
            costs[name] = time.perf_counter() - t0
    B = np.ones_like(A)
    t0 = time.perf_counter()
    for _ in range(5):
        A += B
    costs["add_bytes_per_s"] = 5 * A.nbytes / (time.perf_counter() - t0)
    return costs


def plan_child(path: str, n_classes: int) -> dict:
    """Every measured cost on the dump at ``path`` (its first ≤ 20 000 rows)."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f["activations/layer"]
        rows = min(20_000, ds.shape[0])
        ds.read_direct(np.empty((rows, ds.shape[1]), dtype=np.uint16), np.s_[:rows], np.s_[:rows])  # page cache
        costs = _read_costs(ds, rows)
        raw = ds[: costs["block"]]
        labels = f["rows/label"][:rows]
    X = (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    costs |= _product_costs(X, repeats=max(4, 2_000 // X.shape[0]))
    costs |= _class_costs(X, labels, n_classes)
    return costs | _per_layer_costs(X.shape[1]) | {"units": X.shape[1]}


def node_seconds(c: dict, n_rows: float, products: int, cores: int, workers: int, kind: str = "64") -> float:
    """One node, ``workers`` engine processes (Dask's local cluster; 1 = the plain command) sharing
    ``cores``: each worker's reader thread does read + decode while its main thread does the class
    sums and its share of the products; the slower of the two sets the pace:
        T = N / W × max(read + decode, classes + k · p_1 / (cores / W · η))
    never below the disk: N · 2 D bytes / DISK_GBPS."""
    reader = c["read"] + c["decode"]
    main = c["classes"] + products * c[f"p{kind}_1"] / (cores / workers * EFFICIENCY)
    disk = n_rows * 2 * c["units"] / (DISK_GBPS * 1e9)
    return max(n_rows / workers * max(reader, main), disk)


def merge_seconds(c: dict, n_classes: int, nodes: int, groups: int = 1, products: int = 1) -> tuple[float, float]:
    """A binary merge tree over ``nodes`` partial states of one layer: log2(nodes) levels, each sending
    one state over the link and adding it. State = groups × (products packed D×D halves + the class
    references and sums 2 C D), float64. Returns (seconds, state bytes)."""
    d = c["units"]
    state = groups * 8 * (products * d * (d + 1) / 2 + 2 * n_classes * d)
    levels = int(np.ceil(np.log2(max(nodes, 1))))
    return levels * (state / (LINK_GBPS * 1e9) + state / c["add_bytes_per_s"]), state


def gpu_seconds(c: dict, n_rows: float, products: int, rate_tflops: float) -> float:
    """The pass with the products on a GPU (torch X.T @ X: 2 D² flops per row, no triangle), the
    reads and decode still on the host, rows sent as bfloat16 over PCIe; the slowest stage sets the pace."""
    d = c["units"]
    gpu = n_rows * products * 2 * d * d / (rate_tflops * 1e12 * GPU_EFFICIENCY)
    host = n_rows * c["read"]  # decode on the GPU: only the reads stay on the host (one thread)
    pcie = n_rows * 2 * d / (PCIE_GBPS * 1e9)
    disk = n_rows * 2 * d / (DISK_GBPS * 1e9)
    return max(gpu, host, pcie, disk)


def print_plan(c: dict, n_units: int, n_classes: int, n_rows: float) -> None:
    """The measured costs, then every command's estimate for ``n_rows`` rows (PLANNING.md's tables)."""
    us = {k: v * 1e6 for k, v in c.items() if k in ("read", "decode", "classes", "p64_1", "p64_all", "p32_1", "p32_all")}
    print("per-row costs, µs: " + ", ".join(f"{k} {v:.2f}" for k, v in us.items()))
    print(f"per layer: eigvalsh D={n_units}: {c['eig_all']:.1f} s (every core), {c['eig_1']:.1f} s (1 thread); "
          f"float64 add {c['add_bytes_per_s'] / 1e9:.1f} GB/s; class state (ref + sums) at C={n_classes}: "
          f"{c['class_state_bytes'] / 2**30:.2f} GiB")
    print(f"\nestimates for N = {n_rows:.3g} rows, D = {n_units}, C = {n_classes} (assumptions: {NODE_CORES}-core nodes, "
          f"BLAS efficiency {EFFICIENCY}, disk {DISK_GBPS} GB/s per node, link {LINK_GBPS} GB/s, PCIe {PCIE_GBPS} GB/s, "
          f"GPU efficiency {GPU_EFFICIENCY})")
    print(f"{'command':9s} {'k':>2s} {'1 proc':>9s} {'8 workers':>10s} {'+f32 8w':>9s} {'16 nodes':>9s} {'merge':>7s} "
          + " ".join(f"{g + ' ' + p:>10s}" for g in GPUS for p in ("f64", "f32")))
    eig = c["eig_1"] / (NODE_CORES * EFFICIENCY)  # one eigensolve per layer: ≤ a few on a 64-core node
    for command, k in PRODUCTS.items():
        one = node_seconds(c, n_rows, k, NODE_CORES, 1) + eig
        eight = node_seconds(c, n_rows, k, NODE_CORES, 8) + eig
        fast = node_seconds(c, n_rows, k, NODE_CORES, 8, kind="32") + eig
        merge, _ = merge_seconds(c, n_classes, 16, products=k)
        sixteen = node_seconds(c, n_rows / 16, k, NODE_CORES, 8) + merge + eig
        gpu = [gpu_seconds(c, n_rows, k, rates[i]) + eig for rates in GPUS.values() for i in (0, 1)]
        print(f"{command:9s} {k:2d} {one:9.0f} {eight:10.0f} {fast:9.0f} {sixteen:9.0f} {merge:7.1f} "
              + " ".join(f"{g:10.0f}" for g in gpu))
    merge, state = merge_seconds(c, n_classes, 16, groups=20)
    print(f"(seconds.) --ci with 20 groups: each partial state {state / 2**30:.1f} GiB, the 16-node merge {merge:.0f} s")
