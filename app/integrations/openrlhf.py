"""OpenRLHF (0.11): the solver reward as the `.py` file of `--remote_rm_url`, and an agent for
`--agent_func_path` that gives the solver's feedback after each turn.

    --remote_rm_url $(python -c 'import solver_ppo.integrations.openrlhf as m; print(m.__file__)') --label_key answer
    --agent_func_path <the same file>        (multi-turn; AgentExecutor below)

or the same reward over HTTP: `solver-ppo serve-reward` and `--remote_rm_url http://HOST:PORT/get_reward`.
A label is the answer (a number, "infeasible") or a JSON object with `answer` and optionally
`reference_model`. A query is prompt + response (decoded with special tokens); the response is
what follows the prompt. Rewards are exactly the `reward` of the rows `solver-ppo score` writes.
Evaluation settings: $SOLVER_PPO_EVAL_CONFIG (OpenRLHF passes no arguments to these).
"""

from __future__ import annotations

import os
import re

import numpy as np

from solver_ppo.evaluation.feedback import feedback_message
from solver_ppo.integrations import scorer

AGENT_TURNS = int(os.environ.get("SOLVER_PPO_AGENT_TURNS", "3"))  # answers scored per agent rollout


# end-of-sequence and padding markers that OpenRLHF's decode (skip_special_tokens=False) leaves at the end
_TRAILING_SPECIAL = re.compile(r"(?:\s*(?:<\|[^|<>\s]{1,40}\|>|</s>|<eos>|<pad>|<\|endoftext\|>))+\s*$")


def response_of(query: str, prompt: str) -> str:
    """The response part of a query (prompt + response), without trailing special tokens."""
    if query.startswith(prompt):
        response = query[len(prompt):]
    else:  # detokenizing the prompt's ids may not give its text back exactly: cut after its last line
        tail = prompt.rstrip().rsplit("\n", 1)[-1]
        at = query.rfind(tail) if tail else -1
        response = query[at + len(tail):] if at >= 0 else query
    return _TRAILING_SPECIAL.sub("", response)


def rewards_payload(rows: list[dict]) -> dict:
    """OpenRLHF's reward reply: `rewards` (the advantage input), `scores` (logged, used by
    dynamic filtering) and `extra_logs` (one list per key, logged as means)."""
    rewards = [row["reward"] for row in rows]
    return {
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": {
            "solver_format": [row["breakdown"]["format"] for row in rows],
            "solver_solved": [row["breakdown"]["solved"] for row in rows],
            "solver_answer": [row["breakdown"]["answer"] for row in rows],
            "solver_accuracy": [float(row["matched"]) for row in rows],
        },
    }


def reward_func(queries: list[str], prompts: list[str], labels: list, **kwargs) -> dict:
    """Called by OpenRLHF's single-turn executor (in a thread) with one or more queries."""
    if not len(queries) == len(prompts) == len(labels):
        raise ValueError(f"reward_func: {len(queries)} queries, {len(prompts)} prompts and {len(labels)} labels; they must be as many")
    if scorer.settings().labels == "votes":  # its executor calls it per sample: a group is never seen whole
        raise scorer.per_sample_votes_error("OpenRLHF's reward_func")
    refs = [scorer.reference_from_label(label) for label in labels]
    return rewards_payload(scorer.score_rows([response_of(q, p) for q, p in zip(queries, prompts)], refs))


async def agent_func(states: dict) -> dict:
    """One agent step: score the turn's answer, reply with the solver's feedback, stop once it
    matches or after AGENT_TURNS answers. Step rewards are differences of successive scores, so
    OpenRLHF's sum over the steps is the last answer's reward (exactly `score`'s)."""
    if scorer.settings().labels == "votes":
        raise scorer.per_sample_votes_error("OpenRLHF's agent_func")
    reference = scorer.reference_from_label(states["label"])
    [result] = await scorer.score_results_async([states["action_text"]], [reference])
    row = scorer.result_row(result)
    turn = states.get("turn", 0) + 1
    done = row["matched"] or turn >= AGENT_TURNS
    feedback = "" if done else f"\n{feedback_message(result)}\n"
    return {
        "rewards": np.float64(row["reward"] - states.get("previous_reward", 0.0)),
        "scores": row["reward"],
        "environment_feedback": feedback,
        "done": done,
        "extra_logs": {"solver_turns": float(turn), "solver_accuracy": float(row["matched"])},
        "turn": turn,
    }


def __getattr__(name: str):
    """`AgentExecutor`, built on OpenRLHF's own executor when OpenRLHF loads this file (importing
    OpenRLHF imports torch, so it happens only there)."""
    if name != "AgentExecutor":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor

    class SolverAgent(AgentInstanceBase):
        def __init__(self, *args, **kwargs):
            scorer.require_feedback()
            self.turn = 0
            self.reward = 0.0

        async def step(self, states: dict, **kwargs) -> dict:
            out = await agent_func({**states, "turn": self.turn, "previous_reward": self.reward})
            self.turn, self.reward = out.pop("turn"), out["scores"]
            return out

    class AgentExecutor(MultiTurnAgentExecutor):
        def __init__(self):
            super().__init__(SolverAgent)

    globals()["AgentExecutor"] = AgentExecutor
    return AgentExecutor
