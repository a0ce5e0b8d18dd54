"""actgeom.core: reading dumps and computing statistics; no printing, no CLI imports."""

from importlib.metadata import PackageNotFoundError, version

from actgeom.core.errors import ActgeomError, InvalidInputError, UsageError

try:
    __version__ = version("actgeom")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "unknown"

__all__ = ["__version__", "ActgeomError", "InvalidInputError", "UsageError"]
