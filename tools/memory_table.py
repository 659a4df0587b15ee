"""The card table of docs/training.md: estimated peak GPU memory of a PPO step (app/models/memory.py).

    .venv/bin/python tools/memory_table.py [--prompt-tokens 1024]

Rows: each GPU config's defaults and the settings that change the peak most (sampling.max_new_tokens,
model.lora.merge_for_sampling, ppo.prompts_per_step, ppo.minibatch_size); per rank for the 4-GPU config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solver_ppo.config import load_config  # noqa: E402
from solver_ppo.models.chatglm import CHATGLM3_6B, GLM4_9B_CHAT  # noqa: E402
from solver_ppo.models.memory import ModelShape, StepSettings, card_table, step_settings  # noqa: E402

CONFIGS = [("configs/chatglm3_6b_lora.yaml", CHATGLM3_6B), ("configs/chatglm3_6b_lora_4gpu.yaml", CHATGLM3_6B),
           ("configs/glm4_9b_lora.yaml", GLM4_9B_CHAT)]  # fmt: skip
VARIANTS = [  # overrides of each config's settings; one that leaves the defaults as they are is not shown
    [],
    ["sampling.max_new_tokens=768"],
    ["model.lora.merge_for_sampling=true"],
    ["model.lora.merge_for_sampling=false"],
    ["model.lora.merge_for_sampling=false", "ppo.prompts_per_step=8", "ppo.minibatch_size=2"],
]


def settings_of(path: str, overrides: list[str], prompt_tokens: int | None = None) -> StepSettings:
    return step_settings(load_config(ROOT / path, ["model.path=x", "data.train=x", *overrides]), prompt_tokens)


def rows(prompt_tokens: int | None) -> list[tuple[str, ModelShape, StepSettings]]:
    out = []
    for path, config in CONFIGS:
        defaults = settings_of(path, [], prompt_tokens)
        for overrides in VARIANTS:
            settings = settings_of(path, overrides, prompt_tokens)
            if overrides and settings == defaults:
                continue
            label = f"`{Path(path).stem}` " + (" ".join(o.split(".")[-1] for o in overrides) or "(defaults)")
            out.append((label, ModelShape.from_config(config), settings))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=None,
                        help="longest prompt (default: each config's data.max_prompt_tokens)")
    args = parser.parse_args(argv)
    print(card_table(rows(args.prompt_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
