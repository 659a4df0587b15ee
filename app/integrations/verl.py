"""veRL: the solver reward as `custom_reward_function` (naive or batch reward manager) and an
Interaction for multi-turn rollouts.

    reward.custom_reward_function.path=$(python -c 'import solver_ppo.integrations.verl as m; print(m.__file__)')
    reward.custom_reward_function.name=compute_score_async     (veRL 0.9's reward loop; or compute_score)
    (compute_score_batch: the batch reward manager's form)

A row's `reward_model.ground_truth` is the answer (a number, "infeasible") or a JSON object with
`answer` and optionally `reference_model`; `extra_info.reference_model` is read too. Evaluation
settings: `reward.custom_reward_function.reward_kwargs.eval_config=PATH` (a YAML file with an
`evaluation:` section) or $SOLVER_PPO_EVAL_CONFIG. `score` is exactly the `reward` of the row
`solver-ppo score` writes; the other keys are the same for every row so veRL can average them.

Label-free (`evaluation.labels: votes`, or a batch without any ground truth): only
`compute_score_batch` can see a prompt's rows together. The rows of one prompt are recognised by
`extra_info["index"]` (veRL's data preprocessing writes each problem's index there, and rollout
copies keep it); they vote the prompt's label (app/evaluation/votes.py). The per-row forms refuse
this mode with a clear error.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.integrations import scorer

try:  # veRL's base class where veRL is installed; the methods below are all its rollout calls
    from verl.interactions.base import BaseInteraction
except ImportError:
    BaseInteraction = object


def _reference(ground_truth, extra_info):
    model = extra_info.get("reference_model") if isinstance(extra_info, dict) else None
    return scorer.reference_from_label(ground_truth, model)


_applied: set[str] = set()  # eval_config files already given to the scorer: read once, not per call


def _configure(eval_config) -> None:
    if eval_config is not None and str(eval_config) not in _applied:
        scorer.configure(eval_config)
        _applied.add(str(eval_config))


def _entry(row: dict) -> dict[str, Any]:
    """Fixed keys for every row: veRL collects each key into one list per batch."""
    terms = row["breakdown"]
    return {
        "score": row["reward"],
        "format": terms["format"],
        "solved": terms["solved"],
        "answer": terms["answer"],
        "graph": terms.get("graph", 0.0),  # 0 where the problem has no reference model (has_graph says which)
        "has_graph": float("graph" in terms),
        "acc": float(row["matched"]),
        "labelled": float(row.get("label") is not None) if "label" in row else 1.0,  # votes: its prompt's votes made a label
    }


def _check_per_row(api: str) -> None:
    if scorer.settings().labels == "votes":
        raise scorer.per_sample_votes_error(f"veRL's {api}")


def compute_score(data_source, solution_str, ground_truth, extra_info=None, eval_config=None, **kwargs) -> dict[str, Any]:
    """One answer (veRL's naive reward manager calls this once per response)."""
    _configure(eval_config)
    _check_per_row("compute_score")
    [row] = scorer.score_rows([solution_str], [_reference(ground_truth, extra_info)])
    return _entry(row)


async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None, eval_config=None, **kwargs) -> dict[str, Any]:
    """`compute_score` for veRL's reward loop, which awaits a coroutine function instead of
    running it in a thread: concurrent rows share the pool's workers."""
    _configure(eval_config)
    _check_per_row("compute_score_async")
    [row] = await scorer.score_rows_async([solution_str], [_reference(ground_truth, extra_info)])
    return _entry(row)


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos=None, eval_config=None, **kwargs) -> list[dict[str, Any]]:
    """A whole batch at once (veRL's batch reward manager): the answers go to the pool's workers in parallel."""
    _configure(eval_config)
    extra_infos = extra_infos if extra_infos is not None else [None] * len(solution_strs)
    if scorer.settings().labels == "votes" or all(g is None or g == "" for g in ground_truths):
        return [_entry(row) for row in scorer.vote_rows(list(solution_strs), _prompt_indices(extra_infos))]
    refs = [_reference(g, e) for g, e in zip(ground_truths, extra_infos, strict=True)]
    return [_entry(row) for row in scorer.score_rows(list(solution_strs), refs)]


def _prompt_indices(extra_infos) -> list:
    """votes: each row's prompt, `extra_info["index"]` (the rows of one prompt share it)."""
    indices = [info.get("index") if isinstance(info, dict) else None for info in extra_infos]
    missing = [k for k, index in enumerate(indices) if index is None]
    if missing:
        raise ValueError(f"compute_score_batch: label-free scoring needs extra_info['index'] (the prompt's index, which "
                         f"the rows of one prompt share) on every row; rows {missing[:5]} have none")
    return indices


class SolverInteraction(BaseInteraction):
    """Multi-turn feedback for veRL's rollouts: after each assistant turn the solver's verdict on
    it comes back as the next user turn, until it matches or `max_turns` answers were scored.

    Interaction config (veRL's interaction YAML):
        - name: solver
          class_name: solver_ppo.integrations.verl.SolverInteraction
          config: {max_turns: 3, eval_config: null}
    The dataset's `interaction_kwargs` give `ground_truth` (as the reward's ground truth).
    The turn score is that answer's reward, exactly `score`'s.
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.name = config.get("name", "solver")
        self.max_turns = int(config.get("max_turns", 3))
        if self.max_turns < 1:
            raise ValueError(f"SolverInteraction: max_turns must be at least 1, got {self.max_turns}")
        _configure(config.get("eval_config"))
        scorer.require_feedback()
        self._instances: dict[str, dict[str, Any]] = {}

    async def start_interaction(self, instance_id: str | None = None, ground_truth=None, reference_model: str | None = None, **kwargs) -> str:
        instance_id = instance_id or str(uuid4())
        self._instances[instance_id] = {"reference": scorer.reference_from_label(ground_truth, reference_model), "turns": 0, "reward": 0.0}
        return instance_id

    async def generate_response(self, instance_id: str, messages: list[dict[str, Any]], **kwargs) -> tuple[bool, str, float, dict[str, Any]]:
        state = self._instances[instance_id]
        answer = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"), "")
        [result] = await scorer.score_results_async([answer], [state["reference"]])
        row = scorer.result_row(result)
        state["turns"] += 1
        state["reward"] = row["reward"]
        terminate = row["matched"] or state["turns"] >= self.max_turns
        return terminate, feedback_message(result), row["reward"], {"status": row["status"], "turn": state["turns"]}

    async def calculate_score(self, instance_id: str | None = None, **kwargs) -> float:
        """The reward of the last scored answer."""
        return self._instances[instance_id]["reward"] if instance_id in self._instances else 0.0

    async def finalize_interaction(self, instance_id: str | None = None, **kwargs) -> None:
        self._instances.pop(instance_id, None)
