"""`solver-ppo <command> ...` (or `python -m app <command> ...`): one entry point for every command.

Each command lives beside the code it drives, in a module with `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so the evaluation
commands never pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from solver_ppo.errors import LaunchError, UserError, user_message

LAUNCH_REFUSAL_GRACE_S = 10  # how long the other processes of a refused launch wait for the first to speak

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "evaluate-model": ("solver_ppo.evaluation.cli_evaluate_model", "solve LP/MPS model files with SCIP, one JSON line each"),
    "graph-distance": ("solver_ppo.evaluation.cli_graph_distance", "structural distance between two models (or pairs from a TSV)"),
    "score": ("solver_ppo.evaluation.cli_score", "score a file of answers against a file of problems"),
    "quickstart": ("solver_ppo.quickstart", "the CPU demo: PPO from the SFT starter, then SFT vs SFT + PPO on held-out problems"),
    "train": ("solver_ppo.ppo.cli_train", "PPO against the solver score: train [CONFIG] key=value ..."),
    "eval": ("solver_ppo.eval_policy", "pass@1 of a model on a dataset, scored by the evaluation system"),
    "sft": ("solver_ppo.sft.cli", "supervised warm start on question -> reference model pairs: sft [CONFIG] key=value ..."),
    "export": ("solver_ppo.models.cli_export", "merge LoRA into the base and write an official-format checkpoint"),
    "make-data": ("solver_ppo.data.cli_make_data", "generate synthetic modeling problems with reference models and optima"),
    "convert": ("solver_ppo.data.cli_convert", "write a problems file in veRL's parquet, TRL's or OpenRLHF's JSONL, prompts built as here"),
    "serve-reward": ("solver_ppo.integrations.server", "the evaluation system as an HTTP reward (OpenRLHF's /get_reward, /score, /health, /metrics)"),
    "config-reference": ("solver_ppo.config_reference", "every config key with its default, allowed values and meaning (Markdown)"),
}

# name -> examples shown at the end of the command's --help ({prog}: how the program was invoked)
EXAMPLES: dict[str, str] = {
    "evaluate-model": """\
  {prog} evaluate-model model.lp other.mps answer.py   # status, objective and solve time of each file
  {prog} evaluate-model big.mps --time-limit 60 --wall-limit 90""",
    "graph-distance": """\
  {prog} graph-distance answer.lp reference.lp     # 0: the same model up to renaming
  {prog} graph-distance --pairs pairs.tsv           # one JSON line per pair""",
    "score": """\
  {prog} score --data app/evaluation/samples/problems.jsonl --answers app/evaluation/samples/answers.jsonl
  {prog} score --data problems.jsonl --answers answers.jsonl --match relative --tolerance 0.05 --out scored.jsonl""",
    "quickstart": """\
  {prog} quickstart                                 # 5 to 9 minutes on 2 CPU cores
  {prog} quickstart --answer-format pyscipopt       # the same with code answers, run in the sandbox
  {prog} quickstart ppo.lr=5e-5 --out logs/quickstart-lr5e-5""",
    "train": """\
  {prog} train configs/chatglm3_6b_lora.yaml model.path=/models/chatglm3-6b data.train=train.jsonl
  {prog} train configs/quickstart.yaml ppo.lr=5e-5 trainer.max_steps=20 --print-config""",
    "eval": """\
  {prog} eval --model checkpoints/quickstart-sft --data logs/quickstart/data/heldout.jsonl
  {prog} eval --model /models/chatglm3-6b --adapter logs/chatglm3_6b_lora/version_0 --data OptiBench.json \\
      --match relative --tolerance 0.05 --out optibench.jsonl""",
    "sft": """\
  {prog} sft configs/quickstart_sft.yaml output_dir=checkpoints/my-sft
  {prog} sft configs/quickstart_sft.yaml sft.max_steps=200 --print-config""",
    "export": """\
  {prog} export --model /models/chatglm3-6b --adapter logs/chatglm3_6b_lora/version_0 --out /models/chatglm3-6b-ppo""",
    "make-data": """\
  {prog} make-data --out data/synthetic --train 2000 --heldout 200 --seed 0
  {prog} make-data --out data/flipped --train 9000 --teacher-flip 0.6   # SFT demonstrations with a teacher's error""",
    "convert": """\
  {prog} convert app/evaluation/samples/problems.jsonl --to openrlhf --out prompts.jsonl
  {prog} convert OptiBench.json --to verl --out optibench.parquet --instruction pyscipopt   # needs pyarrow (veRL has it)
  {prog} convert heldout.jsonl --to trl --out trl.jsonl --model checkpoints/quickstart-sft   # its prompt settings""",
    "serve-reward": """\
  {prog} serve-reward --port 8000 --workers 4      # OpenRLHF: --remote_rm_url http://127.0.0.1:8000/get_reward
  {prog} serve-reward --host 0.0.0.0 --token-file token.txt --config configs/quickstart.yaml   # the evaluation: section""",
    "config-reference": """\
  {prog} config-reference > docs/config.md""",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return f"solver-ppo {installed_version('solver-ppo')}"
    except PackageNotFoundError:
        return "solver-ppo (version unknown: not installed; run bash tools/setup.sh)"


def build_parser(prog: str = "python -m app") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="PPO for math-modeling language models, with a solver as the reward.",
        epilog=f"run '{prog} COMMAND --help' for a command's options and examples",
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str, prog: str = "python -m app") -> argparse.ArgumentParser:
    """The parser of one command: its module's arguments, its help line, its examples at the end."""
    module_name, help_text = COMMANDS[name]
    parser = argparse.ArgumentParser(
        prog=f"{prog} {name}", description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + EXAMPLES[name].format(prog=prog) if name in EXAMPLES else None,
    )
    importlib.import_module(module_name).add_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m app") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser(prog).print_help()
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{name}'{hint}; run '{prog} --help' for the list", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    args = command_parser(name, prog).parse_intermixed_args(rest)  # options may come between key=value overrides
    try:
        code = int(module.run(args) or 0)
    except UserError as err:
        from solver_ppo.data.prompts import first_process

        if first_process() or not isinstance(err, LaunchError):
            print(f"error: {user_message(err)}", file=sys.stderr)
        else:  # a launcher stops every process once one exits: leaving first could cut the first one off
            time.sleep(LAUNCH_REFUSAL_GRACE_S)  # before it says why; bounded for launchers that wait instead
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    leave_process_group()
    return code


def add_config_arguments(parser: argparse.ArgumentParser, example_config: str, example_overrides: str) -> None:
    """The arguments of a command that runs from a config (`train`, `sft`): CONFIG, key=value ..., --print-config."""
    parser.add_argument("config", nargs="?", help=f"YAML config (e.g. {example_config})")
    parser.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example_overrides}")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (defaults, the YAML, the overrides) as YAML and exit")


def config_from_args(args: argparse.Namespace, schema_cls):
    """The config the command runs with: schema defaults <- CONFIG <- overrides, ranges checked. With
    --print-config it is printed as YAML instead and None is returned (no model or data file is read)."""
    from omegaconf import OmegaConf

    from solver_ppo.config import check_values, load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config:  # only overrides were given
        config, overrides = None, [config, *overrides]
    cfg = load_config(config, overrides, schema_cls=schema_cls)
    check_values(cfg)
    if not args.print_config:
        return cfg
    print(OmegaConf.to_yaml(OmegaConf.structured(cfg)), end="")
    return None


def entry() -> None:
    """The `solver-ppo` console script."""
    sys.exit(main(prog="solver-ppo"))


def leave_process_group() -> None:
    """After a command that ran as one rank of several (`train`, `sft` under torchrun, `fabric run`
    or the Trainer's launcher), leave the group before exiting (`solver_ppo.distributed`). Only checked
    when the command imported torch: the evaluation commands never do."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        from solver_ppo.distributed import leave_process_group as leave

        leave()
