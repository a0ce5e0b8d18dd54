"""The exceptions actgeom raises for problems with its input.

Every user mistake (a missing file or dataset, a malformed dump, an invalid option value)
raises a subclass of :class:`ActgeomError`. The command line turns these into a one-line
``Error: ...`` message and the exit code stored on the class; anything else is a bug.
"""


class ActgeomError(Exception):
    """Base class of all errors caused by the input rather than by actgeom itself."""

    exit_code = 3


class InvalidInputError(ActgeomError):
    """A file, dataset or value in the input does not match what actgeom can read."""

    exit_code = 3


class UsageError(ActgeomError):
    """An option or argument has a value that is not allowed."""

    exit_code = 2
