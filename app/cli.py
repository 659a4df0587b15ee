"""`python -m app <command> ...`: one entry point for every command.

Each command lives beside the code it drives, in a module with `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so the evaluation
commands never pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from app.errors import UserError, user_message

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate-model": ("app.evaluation.cli_evaluate_model", "solve LP/MPS model files with SCIP, one JSON line each"),
    "graph-distance": ("app.evaluation.cli_graph_distance", "structural distance between two models (or pairs from a TSV)"),
    "score": ("app.evaluation.cli_score", "score a file of answers against a file of problems"),
    "quickstart": ("app.quickstart", "the CPU demo: PPO from the SFT starter, then SFT vs SFT + PPO on held-out problems"),
    "train": ("app.ppo.cli_train", "PPO against the solver score: train [CONFIG] key=value ..."),
    "eval": ("app.eval_policy", "pass@1 of a model on a dataset, scored by the evaluation system"),
    "sft": ("app.sft.cli", "supervised warm start on question -> reference model pairs: sft [CONFIG] key=value ..."),
    "export": ("app.models.cli_export", "merge LoRA into the base and write an official-format checkpoint"),
    "make-data": ("app.data.cli_make_data", "generate synthetic modeling problems with reference models and optima"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{name}'{hint}; run 'python -m app --help' for the list", file=sys.stderr)
        return 2
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m app {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        code = int(module.run(args) or 0)
    except UserError as err:
        print(f"error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    leave_process_group()
    return code


def leave_process_group() -> None:
    """After a command that ran as one rank of several (`train`, `sft` under torchrun, `fabric run`
    or the Trainer's launcher), leave the group before exiting (`app.distributed`). Only checked
    when the command imported torch: the evaluation commands never do."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        from app.distributed import leave_process_group as leave

        leave()
