"""The one evaluator pool of a process, shared by every engine adapter and the reward server.

An engine calls its reward function thousands of times; forking workers or re-reading settings per
call would cost more than scoring. The pool starts on the first call, with the settings given to
`configure` (or read from the YAML file named by $SOLVER_PPO_EVAL_CONFIG, or the defaults), and
serves every later call of any adapter in this process. Rewards are exactly the `reward` of the
rows `solver-ppo score` writes for the same answers and settings.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from solver_ppo.errors import UserError
from solver_ppo.evaluation.cli_score import result_row
from solver_ppo.evaluation.config import EvaluationConfig
from solver_ppo.evaluation.pool import EvaluatorPool, ScoreStream
from solver_ppo.evaluation.reward import Reference, ScoreResult
from solver_ppo.evaluation.votes import label_groups

CONFIG_ENV = "SOLVER_PPO_EVAL_CONFIG"  # a YAML file with the `evaluation:` settings, for engines that load the reward by path

_lock = threading.Lock()
_config: EvaluationConfig | None = None
_pool: EvaluatorPool | None = None
_stream: ScoreStream | None = None


@dataclass
class _Section:  # the schema of an `evaluation:` section on its own (a training YAML holds more)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


def load_evaluation_config(path: str | Path | None = None, **overrides) -> EvaluationConfig:
    """Defaults <- the `evaluation:` section of a YAML file (a training config, or a file holding
    only that section) <- keyword overrides (`workers=4`, `match={"kind": "relative"}`), checked
    against the same ranges as training."""
    from solver_ppo.config import check_values, read_yaml  # the training config's ranges (solver_ppo.config imports no torch)

    schema = OmegaConf.structured(_Section)
    merged = schema
    if path is not None:
        path = Path(path)
        loaded = OmegaConf.to_container(read_yaml(path, "evaluation config file"))
        section = loaded.get("evaluation", loaded) if isinstance(loaded, dict) else loaded
        merged = _merge(schema, merged, section, str(path))
    if overrides:
        merged = _merge(schema, merged, overrides, "keyword arguments")
    config = OmegaConf.to_object(merged)
    check_values(config)
    return config.evaluation


def _merge(schema, merged, section, source: str):
    from solver_ppo.config import _explain

    if not isinstance(section, dict):
        raise UserError(f"{source}: expected a mapping of evaluation settings, got {type(section).__name__}")
    try:
        return OmegaConf.merge(merged, {"evaluation": section})
    except OmegaConfBaseException as err:
        raise _explain(err, schema, source) from None


def configure(config: str | Path | EvaluationConfig | None = None, **overrides) -> EvaluationConfig:
    """Set this process's evaluation settings (a YAML path or an EvaluationConfig, plus keyword
    overrides). Call before the first reward; afterwards only the same settings are accepted."""
    global _config
    if isinstance(config, EvaluationConfig):
        if overrides:
            raise UserError("configure: give an EvaluationConfig or keyword overrides, not both")
        wanted = config
    else:
        wanted = load_evaluation_config(config, **overrides)
    with _lock:
        if _stream is not None and wanted != _config:
            raise UserError("configure: the evaluator pool already runs with other settings; configure before the first reward")
        _config = wanted
    return wanted


def settings() -> EvaluationConfig:
    """This process's settings: those given to `configure`, else $SOLVER_PPO_EVAL_CONFIG's, else the defaults."""
    global _config
    with _lock:
        if _config is None:
            path = os.environ.get(CONFIG_ENV)
            _config = load_evaluation_config(path or None)
        return _config


def require_feedback() -> None:
    """The multi-turn adapters show the solver's feedback, which needs `evaluation.feedback` on
    while scoring: turned on here, before the pool starts (the rewards stay the same)."""
    global _config
    config = settings()
    with _lock:
        if config.feedback:
            return
        if _stream is not None:
            raise UserError("the evaluator pool already runs without evaluation.feedback; configure(feedback=True) before the first reward")
        _config = replace(config, feedback=True)


def stream() -> ScoreStream:
    """The process's stream into its evaluator pool, both started on first use and stopped at
    exit. Every call of every adapter (and every request of the reward server) puts its answers
    here, so concurrent callers (veRL's reward loop, OpenRLHF's threads) share all the workers."""
    global _pool, _stream
    config = settings()
    with _lock:
        if _stream is None:
            _pool = EvaluatorPool(config)
            _stream = _pool.stream()
            atexit.register(shutdown)
        return _stream


def workers_replaced() -> int:
    """Workers the pool killed (past a deadline) or found dead, and replaced."""
    return _pool.replaced if _pool is not None else 0


def shutdown() -> None:
    """Let the answers already put finish, then stop the pool (a later reward starts a new one)."""
    global _pool, _stream
    with _lock:
        pool, _pool, _stream = _pool, None, None
    if pool is not None:
        pool.close()  # closes its stream first, letting the answers already put finish


def reference_from_label(label, reference_model: str | None = None) -> Reference:
    """A label or ground truth: the answer (a number, "infeasible", a numeric string) or a JSON
    object (or dict) with `answer` and optionally `reference_model`."""
    if isinstance(label, str) and label.lstrip().startswith("{"):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as err:
            raise UserError(f"label {label[:80]!r} starts like a JSON object but is not one ({err.msg})") from None
    if isinstance(label, dict):
        unknown = set(label) - {"answer", "reference_model"}
        if unknown:
            raise UserError(f"label has unknown keys {sorted(unknown)}; use 'answer' and optionally 'reference_model'")
        reference_model = label.get("reference_model", reference_model)
        label = label.get("answer")
    if label is None and reference_model is None:
        raise UserError("label has neither an answer nor a reference_model; give the problem's optimum or 'infeasible'")
    try:
        return Reference.from_answer(label, reference_model)
    except ValueError as err:
        raise UserError(f"label: {err}") from None


def _put(answers: list[str], references: list[Reference]) -> list[Future]:
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    into = stream()
    futures = [Future() for _ in answers]
    for answer, reference, future in zip(answers, references, futures):
        into.put(answer, reference, future.set_result)
    return futures


def score_results(answers: list[str], references: list[Reference]) -> list[ScoreResult]:
    """Blocking; the answers go to the pool's workers in parallel."""
    return [future.result() for future in _put(answers, references)]


async def score_results_async(answers: list[str], references: list[Reference]) -> list[ScoreResult]:
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in _put(answers, references))))


def score_rows(answers: list[str], references: list[Reference]) -> list[dict]:
    """The rows `score` writes for these answers (less the id)."""
    return [result_row(r) for r in score_results(answers, references)]


async def score_rows_async(answers: list[str], references: list[Reference]) -> list[dict]:
    return [result_row(r) for r in await score_results_async(answers, references)]


def _voted_rows(results: list[ScoreResult], groups: list) -> list[dict]:
    rescored, votes = label_groups(results, groups, settings())
    return [{**result_row(r), "label": None if votes[g].label is None else votes[g].label.expected}
            for r, g in zip(rescored, groups)]


def vote_rows(answers: list[str], groups: list) -> list[dict]:
    """Label-free rows: `groups[i]` names answer i's problem; the answers of one problem vote its
    label (app/evaluation/votes.py) and each row is `score --labels votes`'s for that answer."""
    return _voted_rows(score_results(answers, [Reference() for _ in answers]), groups)


async def vote_rows_async(answers: list[str], groups: list) -> list[dict]:
    return _voted_rows(await score_results_async(answers, [Reference() for _ in answers]), groups)


def per_sample_votes_error(api: str) -> UserError:
    """evaluation.labels=votes where an API sees one answer at a time: it cannot see a group."""
    return UserError(f"{api} scores one answer at a time, but evaluation.labels=votes labels a problem by the votes of "
                     "all its answers: use a batch form that sees a prompt's answers together (TRL's solver_reward, "
                     "veRL's compute_score_batch, the reward server), or evaluation.labels=reference")
