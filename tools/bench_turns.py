"""The cost of multi-turn rollouts: time per policy-generated token, K turns against one.

    .venv/bin/python tools/bench_turns.py [--turns 3 --batch 8 --prompt 128 --new-tokens 128 --feedback 48]
        [--layers 4 --hidden 256 --heads 8 --kv-heads 2 --ffn 688 --vocab 4096] [--rounds 3] [--threads 1]

A native ChatGLM with random weights; no stop tokens, so every answer has --new-tokens tokens.
The single-turn rollout answers B prompts of --prompt tokens once. The K-turn rollout runs the
training loop's `solver_ppo.ppo.episode.play` on the same prompts: after each answer a feedback message
of --feedback tokens is appended and every episode answers again, each turn one batched
`generate`. As in training, the KV cache carries over between turns (`ContextCache`: a turn
reads only the feedback); for comparison, the K-turn rollout that reads the whole context again
every turn. Scoring is left out (it runs in the evaluator pool, beside generation). Rounds
alternate the three so that load from other processes hits them alike; the best round counts.
Target: seconds per policy token, K turns (cache carried over) / 1 turn <= 1.3.

Prints a table; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.models.config import SamplingConfig  # noqa: E402
from solver_ppo.models.generation import ContextCache, generate  # noqa: E402
from solver_ppo.ppo.episode import Episode, Reply, Verdict, play  # noqa: E402
from tools.bench_generation import PAD, models, random_prompts  # noqa: E402


def rollout_seconds(model, prompts: list[list[int]], turns: int, new_tokens: int, feedback: list[int],
                    reuse: bool) -> tuple[float, int]:
    """(wall seconds, policy tokens) of one rollout of `turns` answers per prompt; `reuse`: the KV
    cache carries over between turns."""
    sampling = SamplingConfig(max_new_tokens=new_tokens, do_sample=False)
    episodes = [Episode(i, p) for i, p in enumerate(prompts)]
    run = ContextCache().generate if reuse else generate

    def sample(contexts):
        gen = run(model, contexts, pad_token_id=PAD, stop_token_ids=[], sampling=sampling)
        return [Reply(row.tolist(), "", False) for row in gen.responses]

    def score(replies, problems):
        return lambda: [Verdict(0.0, False, "optimal", "") for _ in replies]

    start = time.perf_counter()
    with torch.no_grad():
        play(episodes, turns=turns, end="turns", max_new_tokens=new_tokens, max_context_tokens=None,
             sample=sample, score=score, feedback_ids=lambda text, last: feedback)
    elapsed = time.perf_counter() - start
    return elapsed, sum(sum(e.policy_mask) for e in episodes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--feedback", type=int, default=48, help="tokens of each feedback message")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=688)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.turns < 2:
        parser.error(f"--turns must be at least 2 (it is compared with 1), got {args.turns}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    glm, _ = models(args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.vocab, torch.float32, "cpu")
    prompts = random_prompts(args.batch, args.prompt, args.vocab)
    feedback = random_prompts(1, args.feedback, args.vocab, seed=1)[0]
    rollout_seconds(glm, prompts, 2, 4, feedback, reuse=True)  # warm-up

    runs = {"1 turn": (1, False), f"{args.turns} turns, cache carried over": (args.turns, True),
            f"{args.turns} turns, context read again": (args.turns, False)}
    best, tokens = dict.fromkeys(runs, float("inf")), {}
    for _ in range(args.rounds):
        for name, (turns, reuse) in runs.items():
            seconds, tokens[name] = rollout_seconds(glm, prompts, turns, args.new_tokens, feedback, reuse)
            best[name] = min(best[name], seconds / tokens[name])
    single, carried, reread = best.values()
    print(f"native ChatGLM {args.layers} layers, hidden {args.hidden}, batch {args.batch}, prompt {args.prompt}, "
          f"{args.new_tokens} new tokens per turn, feedback {args.feedback} tokens, {args.threads} thread(s), "
          f"best of {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print(f"{'rollout':<40} {'policy tokens':>14} {'ms per policy token':>20} {'vs 1 turn':>10}")
    for name in runs:
        print(f"{name:<40} {tokens[name]:>14} {1000 * best[name]:>20.3f} {best[name] / single:>9.2f}x")
    print(f"ratio {args.turns} turns (cache carried over) / 1 turn: {carried / single:.2f}x (target <= 1.30)")
    print(json.dumps({"turns": args.turns, "ms_per_token_single": round(1000 * single, 4),
                      "ms_per_token_multi": round(1000 * carried, 4), "ratio": round(carried / single, 3),
                      "ratio_context_read_again": round(reread / single, 3),
                      "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new_tokens,
                      "feedback": args.feedback, "load_average": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
