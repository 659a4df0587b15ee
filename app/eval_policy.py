"""`python -m app eval --model DIR --data FILE`: pass@1 of a policy with the evaluation system.

Greedy answers for every problem of a dataset (any supported format), each scored by the
SCIP worker pool; prints the summary table and writes per-item results with their reasons and
the expected answer each was scored against. On a terminal a progress bar shows the running accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from app.errors import UserError


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
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument("--match", default="abs_rel", choices=["abs_rel", "relative"])
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--workers", type=positive_int, default=2, help="SCIP worker processes")
    parser.add_argument("--out", help="write one JSON line per problem here")
    parser.add_argument("--system-prompt", default=None, help="system prompt ('' for none; default: the training default)")
    parser.add_argument("--instruction", default=None, help="answer-format instruction ('' for none; default: the built-in)")


def load_trained(model_dir: str, family: str = "chatglm", adapter: str | None = None):
    """(LoadedModel, the causal LM in eval mode): the base model, or with `adapter` (a run's
    trainable.pt) the policy as trained, with the LoRA shape recorded in that file."""
    from app.models.config import LoraSettings, ModelConfig
    from app.models.loading import load_model
    from app.models.policy import build_policy, read_trainable

    cfg = ModelConfig(family=family, path=model_dir)
    loaded = load_model(cfg)
    model = loaded.model
    if adapter is not None:
        saved_lora = read_trainable(adapter)["lora"]
        cfg.lora = LoraSettings(**saved_lora) if saved_lora else LoraSettings(enabled=False)
        policy = build_policy(loaded, cfg)
        policy.load_trainable(adapter)
        model = policy.causal_lm
    return loaded, model.eval()


def answer(loaded, model, prompts: list[list[int]], sampling, generator=None) -> list[str]:
    """The model's answers (text) to encoded prompts, with the chat format's pad and stop tokens."""
    import torch

    from app.models.generation import generate

    with torch.no_grad():
        gen = generate(model, prompts, pad_token_id=loaded.chat.pad_token_id, stop_token_ids=loaded.chat.stop_token_ids,
                       sampling=sampling, generator=generator)
    return gen.texts(loaded.tokenizer)


def evaluate_policy(
    model_dir: str, data: str, *, family: str = "chatglm", adapter: str | None = None, fmt: str = "auto",
    limit: int | None = None, batch_size: int = 8, max_new_tokens: int = 512, evaluation=None,
    out: str | None = None, system_prompt: str | None = None, instruction: str | None = None,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy pass@1 on `data`; returns (summary, per-item rows). With `out`, each row is written
    there as soon as it is scored, so an interrupted evaluation keeps what it did."""
    import itertools

    from app.data.formats import iter_problems
    from app.data.prompts import build_messages
    from app.evaluation import EvaluationConfig, EvaluatorPool, Reference, summarize
    from app.models.config import SamplingConfig
    from app.paths import writable_dir
    from app.progress import progress_bar

    if out:
        writable_dir(Path(out).parent, f"--out {out}")
    loaded, model = load_trained(model_dir, family, adapter)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=False)
    evaluation = evaluation or EvaluationConfig()
    problems = list(itertools.islice(iter_problems(data, fmt), limit))
    if not problems:
        raise UserError(f"{data}: no problems to evaluate")
    rows: list[dict] = []
    scored = []
    with (EvaluatorPool(evaluation) as pool, open(out or os.devnull, "w") as out_file,
          progress_bar(total=len(problems), desc="eval", unit="problem") as bar):
        for start in range(0, len(problems), batch_size):
            batch = problems[start : start + batch_size]
            prompts = [loaded.chat.encode_prompt(loaded.tokenizer, build_messages(p, system_prompt, instruction)) for p in batch]
            responses = answer(loaded, model, prompts, sampling)
            results = pool.score_many(
                [(text, Reference.from_answer(p.answer, p.reference_model)) for text, p in zip(responses, batch)]
            )
            scored += results
            for problem, response, result in zip(batch, responses, results):
                rows.append({"id": problem.id, "response": response, **asdict(result)})
                out_file.write(json.dumps(rows[-1]) + "\n")
            out_file.flush()
            bar.update(len(batch))
            bar.set_postfix(accuracy=f"{sum(r.matched for r in scored) / len(scored):.3f}")
    return summarize(scored), rows


def run(args: argparse.Namespace) -> int:
    from app.evaluation import EvaluationConfig, format_summary_table
    from app.evaluation.config import MatchRule

    evaluation = EvaluationConfig(match=MatchRule(kind=args.match, tolerance=args.tolerance), workers=args.workers)
    summary, _ = evaluate_policy(
        args.model, args.data, family=args.family, adapter=args.adapter, fmt=args.format, limit=args.limit,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, evaluation=evaluation, out=args.out,
        system_prompt=args.system_prompt, instruction=args.instruction,
    )
    print(format_summary_table({"pass@1": summary}))
    return 0
