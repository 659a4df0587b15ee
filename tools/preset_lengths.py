"""How long each instruction preset is, in characters and in a checkpoint's tokens: what
`data.max_prompt_tokens` (and `sft.max_length`) must hold before any question.

    .venv/bin/python tools/preset_lengths.py --model checkpoints/quickstart-sft [--data FILE]

Per preset, with the default system prompt and without one: the prompt's fixed part (system
prompt, instruction, chat format) in tokens of the checkpoint's tokenizer and chat format, and
with `--data`, the p50 / p95 / max prompt length of the first 1,000 questions of that file.
`train` and `sft` make the same measurement before the model loads and refuse a limit that
cannot hold the fixed part.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.data.formats import iter_problems  # noqa: E402
from solver_ppo.data.limits import PREFLIGHT_RECORDS, percentile  # noqa: E402
from solver_ppo.data.prompts import (  # noqa: E402
    DEFAULT_SYSTEM_PROMPT, INSTRUCTION_PRESETS, build_messages, fixed_prompt_tokens, instruction_text)
from solver_ppo.models.config import ModelConfig  # noqa: E402
from solver_ppo.models.loading import load_prompt_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (its tokenizer and chat format are used)")
    parser.add_argument("--family", default="chatglm", choices=["chatglm", "remote", "auto"])
    parser.add_argument("--data", help="problems whose prompt lengths to show beside each preset")
    args = parser.parse_args()
    tokenizer, chat = load_prompt_encoder(ModelConfig(family=args.family, path=args.model))
    encode = lambda messages: chat.encode_prompt(tokenizer, messages)  # noqa: E731
    problems = list(itertools.islice(iter_problems(args.data), PREFLIGHT_RECORDS)) if args.data else []
    header = "| preset | characters | tokens, default system prompt | tokens, no system prompt |"
    if problems:
        header += " prompts of --data (default system prompt): p50 / p95 / max |"
    print(f"{args.model} ({chat.name}); default system prompt: {len(DEFAULT_SYSTEM_PROMPT)} characters\n")
    print(header)
    print("|---" * header.count(" | ") + "|---|")
    for preset in ("", *INSTRUCTION_PRESETS):
        row = [preset or "(none)", f"{len(instruction_text(preset)):,}",
               f"{fixed_prompt_tokens(encode, None, preset):,}", f"{fixed_prompt_tokens(encode, '', preset):,}"]
        if problems:
            lengths = [len(encode(build_messages(p, None, preset))) for p in problems]
            row.append(f"{percentile(lengths, 50):,} / {percentile(lengths, 95):,} / {max(lengths):,}")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
