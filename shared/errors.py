"""The base of every error a user can fix; the CLI prints these as one line and exits with `exit_code`."""


class LnptError(Exception):
    """A problem with input, configuration, files or peers that the message explains."""

    exit_code = 2
