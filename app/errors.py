"""The one error type that the command line turns into a single clear line (exit code 2)."""


class UserError(Exception):
    """Bad input from the user (a path, an argument, a config key, a file's content).

    The message must name the problem and what to do about it; the CLI prints it without a
    traceback.
    """
