"""actgeom: the geometry of neural-network representations, from activation dumps or arrays.

>>> import actgeom
>>> result = actgeom.collapse("sample_data/digits_mlp_epoch1500.h5", layers="hidden3")  # doctest: +SKIP
>>> result.metric("nc1")  # doctest: +SKIP
0.41191...

Every command is a function, its keywords the command line's options in snake_case:
:func:`collapse`, :func:`rank`, :func:`entropy`, :func:`neurons`, :func:`probe`, :func:`analyze` (several families,
one pass per layer) and :func:`report` (every family over checkpoints; the HTML page with ``output=``)
return a :class:`Result` (``to_dict()``, ``records()``, ``to_pandas()``, ``metric()``);
:func:`compare` (layers × layers of two files, or checkpoint × checkpoint, one pass over their
aligned rows) returns one whose ``matrix(metric)`` has rows = A, columns = B; :func:`ood` (a model
fitted on one dump, the rows of others scored) one with a file entry per OOD set; :func:`info` returns
the description of a dump, :func:`extract` writes a dump and returns what it wrote, :func:`stats` and
:func:`merge` return :class:`PartialStatistics` (``save()``, ``to_dict()``).
:class:`Statistics` takes arrays batch by batch, no dump needed; :func:`capture` hooks a PyTorch
model. This package is the directory core/public/ of the repository.

The functions and classes are imported on first use (numpy, scipy and h5py take ~0.5 s to load),
so that ``import actgeom`` and the command line's ``--help`` start at once.
"""

import os
import signal
import sys


def _stop_at_once(signum, frame) -> None:
    """Ctrl-C while the `actgeom` program starts: nothing is written yet, so it ends at once. Installed
    first thing of the package the program imports, before any slow import (pathlib, typer, rich);
    the command line (cli/app.py) turns it into a KeyboardInterrupt while a command runs."""
    os.write(2, b"interrupted\n")
    os._exit(130)


if os.path.basename(sys.argv[0]) == "actgeom" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _stop_at_once)  # the `actgeom` program only: not a Python that imports us

# OpenBLAS's idle threads spin for 2²⁸ cycles (~0.1 s) after each multi-threaded call before they sleep,
# which keeps the second core from the block reader and from the permutations' second thread between
# a pass's products; 2⁴ cycles: they sleep at once (a pass 10–30 % faster: benchmarks/RESULTS.md,
# "Session 11"). OpenBLAS reads it when it loads, so it holds for the `actgeom` program and for
# scripts that import actgeom before numpy; a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import importlib  # noqa: E402 (after the handler)

from actgeom.core import __version__  # noqa: E402
from actgeom.core.base.errors import ActgeomError, InvalidInputError, OptionError, UsageError

_WHERE = {  # name → the module that defines it
    **dict.fromkeys(["analyze", "collapse", "compare", "entropy", "neurons", "ood", "probe", "rank"], "actgeom.core.api"),
    **dict.fromkeys(["extract", "info", "merge", "stats", "PartialStatistics"], "actgeom.core.api_files"),
    "report": "actgeom._report",
    "Statistics": "actgeom.core.statistics",
    "capture": "actgeom.core.capture", "Dump": "actgeom.core.dump", "DumpWriter": "actgeom.core.dump",
    "Result": "actgeom.core.base.result",
}

__all__ = ["__version__", "ActgeomError", "Dump", "DumpWriter", "InvalidInputError", "OptionError", "PartialStatistics",
           "Result", "Statistics", "UsageError", "analyze", "capture", "collapse", "compare", "entropy", "extract", "info",
           "merge", "neurons", "ood", "probe", "rank", "report", "stats"]


def __getattr__(name: str):
    """``actgeom.collapse`` etc.: imported from its module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'actgeom' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
