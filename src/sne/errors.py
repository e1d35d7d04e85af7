"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class SneError(Exception):
    """A problem with the user's input (file, value, option) that the user can fix."""


class CannotRead(SneError):
    """An encoder cannot take these networks (another architecture than the one it is built for, a
    layer kind it does not read): a limitation of the method, which benchmarks record as a result."""


def one_line(error: BaseException) -> str:
    """An exception's message squeezed onto one line (user errors are printed as one line)."""
    return " ".join(str(error).split()) or type(error).__name__
