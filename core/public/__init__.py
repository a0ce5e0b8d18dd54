"""actgeom: the geometry of neural-network representations, from activation dumps or arrays.

>>> import actgeom
>>> result = actgeom.collapse("sample_data/digits_mlp_epoch1500.h5", layers="hidden3")  # doctest: +SKIP
>>> result.metric("nc1")  # doctest: +SKIP
0.41191...

Functions: :func:`collapse`, :func:`rank`, :func:`entropy`, :func:`neurons`, :func:`probe`, :func:`analyze` (several families,
one pass per layer) return a :class:`Result` (``to_dict()``, ``records()``, ``to_pandas()``);
:func:`compare` (layers × layers of two files, or checkpoint × checkpoint, one pass over their
aligned rows) returns one whose ``matrix(metric)`` has rows = A, columns = B;
:class:`Statistics` takes arrays batch by batch, no dump needed. Keyword names are the command
line's options in snake_case. This package is the directory core/public/ of the repository.
"""

from actgeom.core import __version__
from actgeom.core.api import Statistics, analyze, collapse, compare, entropy, neurons, probe, rank
from actgeom.core.capture import capture
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.errors import ActgeomError, InvalidInputError, OptionError, UsageError
from actgeom.core.result import Result

__all__ = ["__version__", "ActgeomError", "Dump", "DumpWriter", "InvalidInputError", "OptionError", "Result",
           "Statistics", "UsageError", "analyze", "capture", "collapse", "compare", "entropy", "neurons", "probe", "rank"]
