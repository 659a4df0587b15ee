"""How often a policy's samples contain a right answer: pass@k next to greedy accuracy.

    .venv/bin/python tools/pass_at_k.py --model checkpoints/quickstart-sft --data logs/quickstart/data/heldout.jsonl \
        --limit 100 --k 8 --temperatures 1.0 0.7 0 [--adapter logs/quickstart/version_0/trainable.pt]

PPO can only raise greedy accuracy towards what the samples already reach, so this is the
ceiling to compare a recipe against. Per temperature: mean sample accuracy, pass@k (some sample
right), the share of prompts with mixed samples (some right, some wrong: the ones a per-prompt
baseline learns from), format rate and mean reward. Prompts as the quick start renders them.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.data.formats import iter_problems  # noqa: E402
from solver_ppo.data.prompts import build_messages  # noqa: E402
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference  # noqa: E402
from solver_ppo.eval_policy import answer, load_trained  # noqa: E402
from solver_ppo.models.config import SamplingConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", help="a PPO run's trainable.pt on top of --model")
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.0])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    loaded, model = load_trained(args.model, adapter=args.adapter)
    problems = list(itertools.islice(iter_problems(args.data), args.limit))
    k = args.k
    prompts = [loaded.chat.encode_prompt(loaded.tokenizer, build_messages(p, "", "")) for p in problems for _ in range(k)]
    refs = [Reference.from_answer(p.answer, p.reference_model) for p in problems for _ in range(k)]
    print(f"{'T':>4} {'sample acc':>10} {'pass@' + str(k):>8} {'mixed':>6} {'format':>7} {'reward':>7}")
    with EvaluatorPool(EvaluationConfig()) as pool:
        for temperature in args.temperatures:
            sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=temperature or 1.0,
                                      do_sample=temperature > 0)
            generator = torch.Generator().manual_seed(args.seed)
            responses = []
            for start in range(0, len(prompts), 64):
                responses += answer(loaded, model, prompts[start : start + 64], sampling, generator)
            results = pool.score_many(list(zip(responses, refs)))
            right = torch.tensor([r.matched for r in results], dtype=torch.float).view(-1, k)
            per_prompt = right.mean(1)
            mixed = ((per_prompt > 0) & (per_prompt < 1)).float().mean()
            fmt = sum(r.breakdown["format"] for r in results) / len(results)
            reward = sum(r.reward for r in results) / len(results)
            print(f"{temperature:4.1f} {right.mean():10.3f} {right.max(1).values.mean():8.3f} {mixed:6.3f} {fmt:7.3f} {reward:7.3f}")


if __name__ == "__main__":
    main()
