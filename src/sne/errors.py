"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SneError(Exception):
    """A problem with the user's input (file, value, option) that the user can fix."""
