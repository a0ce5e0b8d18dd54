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


class OptionError(UsageError):
    """An option has a value that is not allowed. The message names the option as a Python
    keyword (``fit_range=(5, 2) ...``); the command line names it as a flag (``--fit-range``)."""

    def __init__(self, option: str, value, problem: str):
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"{option}={value!r} {problem}" if value is not None else f"{option}= {problem}")

    def for_cli(self) -> str:
        flag = f"--{self.option.replace('_', '-')}"
        if self.value is None:
            return f"{flag} {self.problem}"
        value = ":".join(map(str, self.value)) if isinstance(self.value, tuple) else self.value
        return f"{flag} '{value}' {self.problem}"


class OutputError(ActgeomError):
    """An output file could not be written (disk full, I/O error): nothing partial is left."""

    exit_code = 1


class DataWarning(UserWarning):
    """Data that actgeom set aside instead of refusing (e.g. a guessed label dataset that does not
    fit); the command line shows it as one `Warning: ...` line on stderr."""
