"""Multi-turn episodes: the policy answers, reads the evaluation's feedback on its answer, and
answers again (`rollout.turns`).

After the prompt, an episode's tokens alternate between the policy's answers and feedback
messages (the chat format's observation message, or a user message). Only the policy's own
tokens are trained on: `policy_mask` is 1 on them and 0 on feedback tokens, which are context
only (never sampled, out of every loss term). The Rollout that PPO trains on is one row per
episode: left-padded prompt, then every answer and feedback message in order, right-padded;
its `response_mask` is the policy mask.

`play` runs a batch of episodes turn by turn, the answers of all unfinished episodes of a turn
in one generation batch; training, validation and `eval --turns` all use it. An episode ends
after `turns` answers, or earlier by `end` (solved: an error-free solve; done: an answer
without a model, whose previous model stands), or when the next turn could grow its context
past `max_context_tokens`. Its score is that of its last standing answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

ENDS = ("turns", "solved", "done")


@dataclass
class Reply:
    """One sampled answer: its tokens (stop token included) and what sampling knows about them."""

    tokens: list[int]
    text: str
    truncated: bool  # cut off at sampling.max_new_tokens before a stop token
    logprobs: torch.Tensor | None = None  # (n,) with logprobs_from_sampling
    values: torch.Tensor | None = None  # (n,) value head at sampling time, with logprobs_from_sampling


@dataclass
class Verdict:
    """The evaluation of one answer, as the episode needs it."""

    score: float  # reward in [0, 1]
    matched: bool  # the objective matches the reference (accuracy)
    status: str  # solver status, or no_model | parse_error | ...
    feedback: str  # what the policy reads next turn (never depends on the reference)
    breakdown: dict = field(default_factory=dict)  # reward terms, status, reason
    result: Any = None  # the evaluation's ScoreResult, where the scorer has one


@dataclass
class Turn:
    start: int  # the answer's first token, as an index into Episode.tokens
    end: int  # one past its last token
    text: str
    truncated: bool
    verdict: Verdict | None = None  # the standing answer's verdict after this turn
    stands: bool = False  # end=done: an answer without a model; the previous verdict stands


@dataclass
class Episode:
    problem: Any  # solver_ppo.data.formats.Problem
    prompt: list[int]  # the first prompt's ids in the chat format, generation prompt included
    tokens: list[int] = field(default_factory=list)  # (n,) answers and feedback messages after the prompt
    policy_mask: list[bool] = field(default_factory=list)  # (n,) True on the policy's own tokens
    logprobs: list[torch.Tensor] = field(default_factory=list)  # per answer, with logprobs_from_sampling
    values: list[torch.Tensor] = field(default_factory=list)  # per answer, with logprobs_from_sampling
    turns: list[Turn] = field(default_factory=list)
    end: str | None = None  # why it ended: turns | solved | done | context; None while it runs

    @property
    def context(self) -> list[int]:
        return self.prompt + self.tokens

    @property
    def final(self) -> Verdict:
        return self.turns[-1].verdict

    def answer(self, reply: Reply) -> None:
        start = len(self.tokens)
        self.tokens += reply.tokens
        self.policy_mask += [True] * len(reply.tokens)
        if reply.logprobs is not None:
            self.logprobs.append(reply.logprobs)
            self.values.append(reply.values)
        self.turns.append(Turn(start, len(self.tokens), reply.text, reply.truncated))

    def observe(self, feedback_ids: list[int]) -> None:
        self.tokens += feedback_ids
        self.policy_mask += [False] * len(feedback_ids)


def judge(episode: Episode, verdict: Verdict, end: str) -> None:
    """Attach the verdict of the episode's latest answer; with end=done an answer without a model
    after the first leaves the previous verdict standing (the policy said it is done)."""
    turn = episode.turns[-1]
    if end == "done" and len(episode.turns) > 1 and verdict.status == "no_model":
        turn.verdict, turn.stands = episode.turns[-2].verdict, True
    else:
        turn.verdict = verdict


def finished_by(episode: Episode, turns: int, end: str) -> str | None:
    """Why the episode ends after its latest answer, or None when it goes on."""
    turn = episode.turns[-1]
    if end == "done" and turn.stands:
        return "done"
    if end == "solved" and turn.verdict.status == "optimal":
        return "solved"
    if len(episode.turns) >= turns:
        return "turns"
    return None


def play(
    episodes: list[Episode],
    *,
    turns: int,
    end: str,
    max_new_tokens: int,
    max_context_tokens: int | None,
    sample: Callable[[list[list[int]]], list[Reply]],
    score: Callable[[list[Reply], list], Callable[[], list[Verdict]]],
    feedback_ids: Callable[[str, int], list[int]],
    any_alive: Callable[[bool], bool] = bool,
    overlap: Callable[[], None] | None = None,
) -> int:
    """Run `episodes` to their end; returns the number of turns played.

    sample(contexts) answers a batch of token contexts; score(replies, problems) starts evaluating
    the answers and returns the wait for their verdicts; feedback_ids(text, last_answer_token) is
    the feedback message as tokens, with the prompt for the next answer. `overlap` runs while the
    answers of turn `turns` are scored (every token of every episode is known by then).
    `any_alive(flag)`: whether any rank still has an unfinished episode; under DDP every rank
    plays as many turns, with an empty batch once its own episodes have ended, because sampling
    and scoring may hold collectives.
    """
    if end not in ENDS:
        raise ValueError(f"unknown episode end '{end}' (one of {', '.join(ENDS)})")
    played = 0
    for turn in range(turns):
        alive = [e for e in episodes if e.end is None]
        if not any_alive(bool(alive)):
            break
        played += 1
        replies = sample([e.context for e in alive])
        for episode, reply in zip(alive, replies):
            episode.answer(reply)
        wait = score(replies, [e.problem for e in alive])
        if overlap is not None and turn == turns - 1:
            overlap()
        for episode, verdict in zip(alive, wait()):
            judge(episode, verdict, end)
            episode.end = finished_by(episode, turns, end)
            if episode.end is not None:
                continue
            ids = feedback_ids(verdict.feedback, episode.tokens[-1])
            if max_context_tokens is not None and len(episode.context) + len(ids) + max_new_tokens > max_context_tokens:
                episode.end = "context"
            else:
                episode.observe(ids)
    return played


def standing_matches(episodes: list[Episode], turns: int) -> list[list[bool]]:
    """(E, turns): whether each episode's standing answer after turn t matches the reference; an
    episode that ended earlier keeps its last answer."""
    return [[e.turns[min(t, len(e.turns)) - 1].verdict.matched for t in range(1, turns + 1)] for e in episodes]


def episode_tensors(
    episodes: list[Episode], pad_token_id: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor | int | None]:
    """The rows of a Rollout: sequences and attention mask (B, P + R), prompt length P, the policy
    mask (B, R), and the sampling loop's log-probs and values (B, R) where it kept them."""
    B = len(episodes)
    P = max(len(e.prompt) for e in episodes)
    R = max(len(e.tokens) for e in episodes)
    sequences = torch.full((B, P + R), pad_token_id, dtype=torch.long)
    attention = torch.zeros((B, P + R), dtype=torch.long)
    policy_mask = torch.zeros((B, R), dtype=torch.float32)
    kept = all(e.logprobs for e in episodes)
    if kept:  # zeros on feedback tokens and padding, which no loss term reads
        logprobs = torch.zeros((B, R), dtype=episodes[0].logprobs[0].dtype)
        values = torch.zeros((B, R), dtype=episodes[0].values[0].dtype)
    else:
        logprobs = values = None
    for i, e in enumerate(episodes):
        n = len(e.tokens)
        sequences[i, P - len(e.prompt) : P] = torch.tensor(e.prompt, dtype=torch.long)
        sequences[i, P : P + n] = torch.tensor(e.tokens, dtype=torch.long)
        attention[i, P - len(e.prompt) : P + n] = 1
        policy_mask[i, :n] = torch.tensor(e.policy_mask, dtype=torch.float32)
        if kept:
            for turn, lp, v in zip(e.turns, e.logprobs, e.values):
                logprobs[i, turn.start : turn.end] = lp.cpu()
                values[i, turn.start : turn.end] = v.cpu()
    to = lambda t: t.to(device) if t is not None else None  # noqa: E731
    return {"sequences": to(sequences), "attention_mask": to(attention), "prompt_length": P,
            "response_mask": to(policy_mask), "old_logprobs": to(logprobs), "values": to(values)}
