"""The one error type that the command line turns into a single clear line (exit code 2)."""

import re


class UserError(Exception):
    """Bad input from the user (a path, an argument, a config key, a file's content).

    The message must name the problem and what to do about it; the CLI prints it without a
    traceback.
    """


class LaunchError(UserError):
    """A refusal that every process of a launched run (torchrun, fabric run, SLURM) raises alike:
    the first process says it, the others exit with the same code in silence."""


def user_message(err: UserError) -> str:
    """The error's own one-line message.

    A UserError raised inside a DataLoader worker process is re-raised in the main process with
    the worker's traceback wrapped around it ("Caught UserError in DataLoader worker process 0.
    Original Traceback ..."); its last line holds the original message.
    """
    text = str(err).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]  # "solver_ppo.data.formats.BadRecord: data.jsonl:2: not valid JSON ..."
    match = re.fullmatch(r"[\w.]+: (.*)", last)
    return match.group(1) if match else last
