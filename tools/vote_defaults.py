"""How good the votes' labels are, per setting of evaluation.votes: the data behind its defaults.

    .venv/bin/python tools/vote_defaults.py --model checkpoints/quickstart-sft --limit 200 --k 8
    .venv/bin/python tools/vote_defaults.py --model checkpoints/quickstart-sft-pyscipopt --max-new-tokens 384 --limit 100

Samples k answers per problem (the quick start's PPO prompts, problems new to the starter, at its
sampling temperature), scores them with no reference, and for each (share, min_votes) reports the
share of groups that get a label, how often that label is the true answer, and how often the
reward's answer credit agrees with the credit against the true answer. Beside them: a single
sample's accuracy, and the plurality of every answer that states an objective, accepted or not
(what a vote without the solver's disposal would give).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from solver_ppo.data.formats import iter_problems  # noqa: E402
from solver_ppo.data.prompts import build_messages  # noqa: E402
from solver_ppo.eval_policy import answer, load_trained  # noqa: E402
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference  # noqa: E402
from solver_ppo.evaluation.config import VoteRule  # noqa: E402
from solver_ppo.evaluation.votes import label_groups, reward_against, same_answer  # noqa: E402
from solver_ppo.models.config import SamplingConfig  # noqa: E402
from solver_ppo.quickstart import STARTER_PROBLEMS, make_data  # noqa: E402


def undisposed_plurality(results, match) -> Reference | None:
    """The most frequent objective or infeasibility among all solved answers (no disposal rule), ties: none."""
    votes = [Reference(None, True) if r.status == "infeasible" else Reference(r.objective)
             for r in results if r.status == "infeasible" or (r.status == "optimal" and r.objective is not None)]
    if not votes:
        return None
    support = [sum(same_answer(v, w, match) for v in votes) for w in votes]
    best = max(range(len(votes)), key=support.__getitem__)
    if any(n == support[best] and not same_answer(w, votes[best], match) for w, n in zip(votes, support)):
        return None
    return votes[best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="problems with answers (default: the quick start's PPO prompts, seed 0)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = args.data
    if data is None:
        data = str(make_data(Path(tempfile.mkdtemp()), args.limit, 1, 0, "easy", STARTER_PROBLEMS)[0])
    problems = list(itertools.islice(iter_problems(data), args.limit))
    loaded, model = load_trained(args.model)
    k = args.k
    prompts = [loaded.chat.encode_prompt(loaded.tokenizer, build_messages(p, "", "")) for p in problems for _ in range(k)]
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, do_sample=True)
    generator = torch.Generator().manual_seed(args.seed)
    responses = []
    for start in range(0, len(prompts), 64):
        responses += answer(loaded, model, prompts[start : start + 64], sampling, generator)
    config = EvaluationConfig(workers=args.workers)
    with EvaluatorPool(config) as pool:
        results = pool.score_many([(text, Reference()) for text in responses])
    truths = [Reference.from_answer(p.answer) for p in problems]
    groups = [i // k for i in range(len(results))]
    single = sum(reward_against(r, truths[g], config).matched for r, g in zip(results, groups)) / len(results)
    statuses = Counter(r.status for r in results)
    print(f"{len(problems)} problems x {k} samples (T={args.temperature}) of {args.model}: single-sample accuracy "
          f"{single:.3f}; statuses " + ", ".join(f"{s} {n}" for s, n in statuses.most_common()))
    undisposed = [undisposed_plurality(results[g * k : (g + 1) * k], config.match) for g in range(len(problems))]
    right = sum(u is not None and same_answer(u, t, config.match) for u, t in zip(undisposed, truths))
    print(f"plurality of every solved answer (no disposal): {sum(u is not None for u in undisposed)} groups labelled, "
          f"{right} right ({right / len(problems):.3f} of all groups)")
    print("\n| share | min votes | labelled groups | label accuracy | right labels / all groups | reward agreement |")
    print("|---|---|---|---|---|---|")
    for share, min_votes in itertools.product((0.3, 0.5, 0.6), (1, 2, 3, 4)):
        config.votes = VoteRule(share=share, min_votes=min_votes)
        rescored, votes = label_groups(results, groups, config)
        labelled = [g for g, v in votes.items() if v.label is not None]
        right = sum(same_answer(votes[g].label, truths[g], config.match) for g in labelled)
        agree = sum(r.matched == reward_against(r0, truths[g], config).matched
                    for r, r0, g in zip(rescored, results, groups)) / len(results)
        accuracy = f"{right / len(labelled):.3f}" if labelled else "—"
        print(f"| {share} | {min_votes} | {len(labelled)} ({len(labelled) / len(problems):.3f}) | {accuracy} | "
              f"{right / len(problems):.3f} | {agree:.3f} |")


if __name__ == "__main__":
    main()
