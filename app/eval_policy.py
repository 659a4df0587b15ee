"""`python -m app eval --model DIR --data FILE`: pass@1 of a policy with the evaluation system.

Greedy answers for every problem of a dataset (any supported format), each scored by the
SCIP worker pool; prints the summary table and writes per-item results with their reasons and
the expected answer each was scored against. On a terminal a progress bar shows the running accuracy.

With `--turns K` each answer's evaluation feedback is shown to the policy, which answers again
(up to K answers, `--end` says when an episode stops, as `rollout.end` in training): the table
gives accuracy after each turn (acc@1 ... acc@K), how many answers each turn fixed and broke, and
the mean number of turns, then the revision headroom of the first answers (the wrong ones whose
verdict exposes them, the most revising can fix); each row carries its turns with their feedback.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from solver_ppo.errors import UserError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse reports the flag and the value otherwise)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--data", required=True, help="problems: JSONL (project, SIRL/ORLM, MAMO) or OptiBench JSON")
    parser.add_argument("--family", default="chatglm", choices=["chatglm", "remote", "auto"])
    parser.add_argument("--adapter", help="trainable weights written by `train` (trainable.pt) to apply on the model")
    parser.add_argument("--format", default="auto", help="dataset format: auto | project | sirl | mamo | optibench")
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=1536,
                        help="longest answer (default 1536, as the GPU configs sample: the field's code answers run to "
                             "1,100-1,500 tokens); generation stops earlier once every answer has ended")
    parser.add_argument("--match", default="abs_rel", choices=["abs_rel", "relative"])
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--workers", type=positive_int, default=2, help="SCIP worker processes")
    parser.add_argument("--out", help="write one JSON line per problem here")
    parser.add_argument("--system-prompt", default=None,
                        help="system prompt ('' for none; default: the one the model was trained with, else the built-in)")
    parser.add_argument("--instruction", default=None,
                        help="answer-format instruction: '' for none, a preset (lp, pyscipopt, ...) or text; default: "
                             "the one the model was trained with (prompt_settings.json), else the built-in LP one")
    parser.add_argument("--turns", type=positive_int, default=1,
                        help="answers per problem: after each, the policy reads the evaluation's feedback and answers "
                             "again (default 1)")
    parser.add_argument("--end", default="solved", choices=["solved", "turns", "done"],
                        help="with --turns: when a problem's episode ends before its last turn: at an error-free solve "
                             "(solved, the default, as rollout.end), never (turns), at an answer without a model, whose "
                             "previous model stands (done)")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy answers; above 0: answers sampled at this temperature (top-p and "
                             "top-k off), as training samples them (the quick start's sampling.temperature: 0.7), "
                             "where a small model's slips show that greedy decoding hides")
    parser.add_argument("--seed", type=int, default=0, help="with --temperature: the sampling seed (the same seed, the same answers)")


def load_trained(model_dir: str, family: str = "chatglm", adapter: str | None = None, chat_format: str = "auto"):
    """(LoadedModel, the causal LM in eval mode): the base model, or with `adapter` (a run's
    trainable.pt) the policy as trained, with the LoRA shape recorded in that file."""
    from solver_ppo.models.config import LoraSettings, ModelConfig
    from solver_ppo.models.loading import load_model
    from solver_ppo.models.policy import build_policy, read_trainable

    cfg = ModelConfig(family=family, path=model_dir, chat_format=chat_format)
    loaded = load_model(cfg)
    model = loaded.model
    if adapter is not None:
        saved_lora = read_trainable(adapter)["lora"]
        cfg.lora = LoraSettings(**saved_lora) if saved_lora else LoraSettings(enabled=False)
        policy = build_policy(loaded, cfg)
        policy.load_trainable(adapter)
        model = policy.causal_lm
    return loaded, model.eval()


def trained_prompt_settings(model_dir: str, adapter: str | None = None):
    """The prompt settings stored with what is evaluated: beside `adapter` (a run directory or its
    trainable.pt) when given and there, else in the model directory; None if neither has them."""
    from solver_ppo.data.prompts import read_prompt_settings

    if adapter is not None:
        run_dir = Path(adapter) if Path(adapter).is_dir() else Path(adapter).parent
        if (settings := read_prompt_settings(run_dir)) is not None:
            return settings
    return read_prompt_settings(model_dir)


def answer(loaded, model, prompts: list[list[int]], sampling, generator=None) -> list[str]:
    """The model's answers (text) to encoded prompts, with the chat format's pad and stop tokens."""
    return [reply.text for reply in replies(loaded, model, prompts, sampling, generator)]


def replies(loaded, model, prompts: list[list[int]], sampling, generator=None, context_cache=None):
    """The model's answers to encoded prompts (solver_ppo.ppo.episode.Reply: tokens, text, truncated);
    with a `ContextCache`, prompts that extend its previous call's are read from where it stopped."""
    import torch

    from solver_ppo.models.generation import generate
    from solver_ppo.ppo.episode import Reply
    from solver_ppo.ppo.rollout import truncated_rows

    run = generate if context_cache is None else context_cache.generate
    with torch.no_grad():
        gen = run(model, prompts, pad_token_id=loaded.chat.pad_token_id, stop_token_ids=loaded.chat.stop_token_ids,
                  sampling=sampling, generator=generator)
    texts = gen.texts(loaded.tokenizer)
    truncated = truncated_rows(gen.responses, gen.response_mask, loaded.chat.stop_token_ids).tolist()
    return [Reply(row[mask].tolist(), text, cut) for row, mask, text, cut in
            zip(gen.responses, gen.response_mask.bool(), texts, truncated)]


def evaluate_policy(
    model_dir: str, data: str, *, family: str = "chatglm", adapter: str | None = None, fmt: str = "auto",
    limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 1536, evaluation=None,
    out: str | None = None, system_prompt: str | None = None, instruction: str | None = None,
    turns: int = 1, end: str = "solved", temperature: float = 0.0, seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Greedy answers on `data` (sampled at `temperature` from `seed` when it is above 0), `turns`
    per problem at most; returns (summary of the last answers, per-item rows). The summary has
    "first_headroom" (the first answers' `solver_ppo.evaluation.summary.headroom`: the wrong ones
    their verdict exposes, and the silent ones); with turns > 1 also "first" (the summary of the
    first answers) and "turns" (`solver_ppo.evaluation.turns.turn_statistics`). With `out`, each row is written there as soon
    as it is scored, so an interrupted evaluation keeps what it did."""
    import dataclasses
    import itertools

    import torch

    from solver_ppo.data.formats import iter_problems
    from solver_ppo.data.prompts import build_messages, prompt_settings_for
    from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, feedback_message, summarize
    from solver_ppo.evaluation.summary import exposed, headroom
    from solver_ppo.evaluation.turns import turn_statistics
    from solver_ppo.models.config import SamplingConfig
    from solver_ppo.models.generation import ContextCache
    from solver_ppo.paths import writable_dir
    from solver_ppo.ppo.episode import Episode, Verdict, play, standing_matches
    from solver_ppo.progress import progress_bar

    if temperature < 0:
        raise UserError(f"--temperature must be 0 (greedy) or more, got {temperature}")
    if out:
        writable_dir(Path(out).parent, f"--out {out}")
    trained_with = trained_prompt_settings(model_dir, adapter)
    settings = prompt_settings_for(trained_with, adapter or model_dir,
                                   {"system_prompt": system_prompt, "instruction": instruction, "chat_format": "auto"},
                                   {"system_prompt": "--system-prompt", "instruction": "--instruction"})
    system_prompt, instruction = settings.system_prompt, settings.instruction
    loaded, model = load_trained(model_dir, family, adapter, settings.chat_format)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=temperature or 1.0)
    generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
    evaluation = evaluation or EvaluationConfig()
    if turns > 1:  # the policy reads what the evaluation found (objective, values, infeasible subset)
        evaluation = dataclasses.replace(evaluation, feedback=True)
    problems = list(itertools.islice(iter_problems(data, fmt), limit))
    if not problems:
        raise UserError(f"{data}: no problems to evaluate")
    rows: list[dict] = []
    episodes: list[Episode] = []
    with (EvaluatorPool(evaluation) as pool, open(out or os.devnull, "w") as out_file,
          progress_bar(total=len(problems), desc="eval", unit="problem") as bar):

        def score(answers, batch):
            results = pool.score_many(
                [(a.text, Reference.from_answer(p.answer, p.reference_model)) for a, p in zip(answers, batch)]
            )
            verdicts = [Verdict(r.reward, r.matched, r.status, feedback_message(r), result=r) for r in results]
            return lambda: verdicts

        for start in range(0, len(problems), batch_size):
            batch = [Episode(p, loaded.chat.encode_prompt(loaded.tokenizer, build_messages(p, system_prompt,
                                                                                          instruction)))
                     for p in problems[start : start + batch_size]]
            cache = ContextCache() if turns > 1 else None
            play(batch, turns=turns, end=end, max_new_tokens=max_new_tokens, max_context_tokens=None,
                 sample=lambda contexts: replies(loaded, model, contexts, sampling, generator, cache), score=score,
                 feedback_ids=lambda text, last: loaded.chat.encode_feedback(loaded.tokenizer, text, last))
            episodes += batch
            for e in batch:
                rows.append({"id": e.problem.id, "response": e.turns[-1].text, **asdict(e.final.result)})
                if turns > 1:
                    rows[-1]["turns"] = [{"response": t.text, "status": t.verdict.status, "matched": t.verdict.matched,
                                          "reward": t.verdict.score, "feedback": t.verdict.feedback, "stands": t.stands,
                                          "exposed": exposed(t.verdict.result)}
                                         for t in e.turns]
                    rows[-1]["ended_by"] = e.end
                out_file.write(json.dumps(rows[-1]) + "\n")
            out_file.flush()
            bar.set_postfix(accuracy=f"{sum(e.final.matched for e in episodes) / len(episodes):.3f}", refresh=False)
            bar.update(len(batch))
    summary: dict = summarize([e.final.result for e in episodes])
    firsts = [e.turns[0].verdict.result for e in episodes]
    summary["first_headroom"] = headroom(firsts)
    if turns > 1:
        summary["first"] = summarize(firsts)
        summary["turns"] = turn_statistics(standing_matches(episodes, turns), [len(e.turns) for e in episodes])
    return summary, rows


def run(args: argparse.Namespace) -> int:
    from solver_ppo.evaluation import EvaluationConfig, format_summary_table
    from solver_ppo.evaluation.config import MatchRule
    from solver_ppo.evaluation.summary import format_headroom_table
    from solver_ppo.evaluation.turns import format_turn_table

    evaluation = EvaluationConfig(match=MatchRule(kind=args.match, tolerance=args.tolerance), workers=args.workers)
    summary, _ = evaluate_policy(
        args.model, args.data, family=args.family, adapter=args.adapter, fmt=args.format, limit=args.limit,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, evaluation=evaluation, out=args.out,
        system_prompt=args.system_prompt, instruction=args.instruction, turns=args.turns, end=args.end,
        temperature=args.temperature, seed=args.seed,
    )
    if args.turns == 1:
        print(format_summary_table({"pass@1": summary}))
        return 0
    print(format_summary_table({"first answer": summary["first"], f"last answer (up to {args.turns} turns)": summary}))
    print()
    print(format_turn_table(summary["turns"]))
    print("\nRevision headroom of the first answers: the wrong ones their own verdict exposes, and the silent ones:\n")
    print(format_headroom_table({"first answer": summary["first_headroom"]}))
    return 0
