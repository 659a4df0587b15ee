"""`solver-ppo convert DATA --to verl|trl|openrlhf --out FILE`: a problems file in an engine's own format.

Any file `eval` reads (project JSONL, SIRL/ORLM, MAMO, OptiBench) becomes what the engine's
trainer reads, with the prompt built by this project's template (`build_messages`: system turn,
question, answer-format instruction) and the label in the form the adapters read back
(`solver_ppo.integrations.scorer.reference_from_label`):

- verl:     RL parquet, one row per problem: data_source, prompt (chat messages), ability,
            reward_model {style: rule, ground_truth}, extra_info {id, index, reference_model,
            interaction_kwargs} (the last for `SolverInteraction` in multi-turn rollouts)
- trl:      JSONL that `datasets.load_dataset("json", ...)` reads: prompt (chat messages), answer,
            reference_model; GRPOTrainer passes answer and reference_model to `solver_reward`
- openrlhf: JSONL: prompt (chat messages), label (the answer, or a JSON object with answer and
            reference_model); train with --input_key prompt --label_key label --apply_chat_template

A problem with neither an answer nor a reference model has nothing to score and is left out
(counted). veRL's parquet needs pyarrow, which veRL installs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from solver_ppo.data.formats import FORMATS, Problem, iter_problems
from solver_ppo.data.prompts import PromptSettings, build_messages, prompt_settings_for, read_prompt_settings
from solver_ppo.errors import UserError
from solver_ppo.paths import writable_dir

ENGINES = ("verl", "trl", "openrlhf")
ABILITY = "optimization-modeling"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="problems: JSONL (project, SIRL/ORLM, MAMO) or OptiBench JSON")
    parser.add_argument("--to", required=True, choices=ENGINES, help="the engine whose format to write")
    parser.add_argument("--out", required=True, help="output file (.parquet for verl, .jsonl for trl and openrlhf)")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="dataset format (default: detected per record)")
    parser.add_argument("--model", default=None,
                        help="a checkpoint or run directory whose prompt_settings.json gives the system prompt and "
                             "instruction (what the policy was trained with); flags below override it")
    parser.add_argument("--system-prompt", default=None, help="system prompt ('' for none; default: the built-in)")
    parser.add_argument("--instruction", default=None,
                        help="answer-format instruction: '' for none, a preset (lp, pyscipopt, gurobipy, ...) or text "
                             "(default: the built-in LP one)")
    parser.add_argument("--data-source", default=None, help="veRL's data_source column (default: the file's name)")


def label(problem: Problem) -> str:
    """The label an adapter reads: the answer as written, or a JSON object when there is a reference model."""
    if problem.reference_model is None:
        return problem.answer
    return json.dumps({"answer": problem.answer, "reference_model": problem.reference_model})


def engine_row(problem: Problem, index: int, engine: str, messages: list[dict], data_source: str) -> dict:
    if engine == "trl":
        return {"prompt": messages, "answer": problem.answer, "reference_model": problem.reference_model}
    if engine == "openrlhf":
        return {"prompt": messages, "label": label(problem)}
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": {"id": problem.id, "index": index, "reference_model": problem.reference_model,
                       "interaction_kwargs": {"name": "solver", "ground_truth": label(problem)}},
    }


def _write_parquet(rows: list[dict], out: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("--to verl writes parquet, which needs pyarrow: `pip install pyarrow` "
                        "(veRL's environment has it)") from None
    pq.write_table(pa.Table.from_pylist(rows), out)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    writable_dir(out.parent if str(out.parent) else Path("."), f"--out {out}")
    trained = read_prompt_settings(args.model) if args.model else None
    if args.model and trained is None:
        raise UserError(f"--model {args.model}: no prompt_settings.json there; give --system-prompt/--instruction instead")
    settings: PromptSettings = prompt_settings_for(
        trained, f"--model {args.model}", {"system_prompt": args.system_prompt, "instruction": args.instruction},
        {"system_prompt": "--system-prompt", "instruction": "--instruction"})
    data_source = args.data_source or Path(args.data).stem
    rows, unscorable = [], 0
    for problem in iter_problems(args.data, args.format):
        if not problem.scorable:
            unscorable += 1
            continue
        messages = build_messages(problem, settings.system_prompt, settings.instruction)
        rows.append(engine_row(problem, len(rows), args.to, messages, data_source))
    if not rows:
        raise UserError(f"{args.data}: no problem with an answer or a reference model to write")
    if args.to == "verl":
        _write_parquet(rows, out)
    else:
        with out.open("w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    left_out = f"; {unscorable} without an answer or reference model left out" if unscorable else ""
    print(f"wrote {len(rows)} problems for {args.to} to {out}{left_out}")
    return 0
