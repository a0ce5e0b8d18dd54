"""actgeom.core: reading dumps and computing statistics; no printing, no CLI imports."""

from actgeom.core.base.errors import ActgeomError, InvalidInputError, UsageError

# The one place the version is written: pyproject.toml reads it from here (tool.setuptools.dynamic),
# so that no start-up pays for importlib.metadata (~30 ms).
__version__ = "0.1.0"

__all__ = ["__version__", "ActgeomError", "InvalidInputError", "UsageError"]
