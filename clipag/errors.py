"""The one exception type that reaches the user as a single line."""


class ClipagError(Exception):
    """A problem with the user's input or environment, printed as one line (exit code 2)."""
