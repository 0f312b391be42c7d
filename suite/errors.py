"""The one exception type for user mistakes.

A bad name, parameter, file or config raises ``UserError`` with a single line that
says what was wrong and what is allowed; the CLI prints it and exits with code 2,
without a traceback. Anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in what the user asked for (name, parameter, file, config)."""
