"""The Rollout record: everything one PPO iteration knows about its sampled responses.

Shapes: B rows, S = P + R columns of `sequences` (left-padded prompts of length P, then
right-padded responses of length R). Per-token tensors cover the response part only (B, R).
A row is one episode (app/ppo/episode.py): with `rollout.turns` > 1 its response part holds
every answer and the feedback messages between them, and `response_mask` is 1 on the policy's
own tokens only.
The record is filled in stages: generation, then log-probs/values, then scores, then
advantages; fields of later stages start as None.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class Rollout:
    problems: list  # (B,) solver_ppo.data.formats.Problem: id, question, answer, reference_model
    responses: list[str]  # (B,) decoded response texts
    sequences: torch.Tensor  # (B, S) prompt + response token ids
    attention_mask: torch.Tensor  # (B, S)
    prompt_length: int  # P: responses start at this column
    response_mask: torch.Tensor  # (B, R) 1 on the policy's tokens (each answer up to and including its stop token)
    truncated: torch.Tensor | None = None  # (B,) bool: the last answer was cut off at sampling.max_new_tokens
    tokens_per_second: float = 0.0  # generation throughput of this rollout
    old_logprobs: torch.Tensor | None = None  # (B, R) policy log-probs at sampling time
    ref_logprobs: torch.Tensor | None = None  # (B, R) reference (adapter off) log-probs
    values: torch.Tensor | None = None  # (B, R) value head at sampling time
    scores: torch.Tensor | None = None  # (B,) solver score in [0, 1]
    breakdowns: list[dict] = field(default_factory=list)  # (B,) reward terms, status, reason
    kl: torch.Tensor | None = None  # (B, R) per-token KL estimate (policy vs reference)
    kl_mask: torch.Tensor | None = None  # (B, R) 1 where the KL penalty applies (partial KL), None: everywhere
    rewards: torch.Tensor | None = None  # (B, R) -beta*KL, plus the score on the last token
    advantages: torch.Tensor | None = None  # (B, R)
    returns: torch.Tensor | None = None  # (B, R) GAE targets of the value head; None with the other advantages
    episodes: list = field(default_factory=list)  # (B,) solver_ppo.ppo.episode.Episode: turns, verdicts, feedback

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def ids(self) -> list[str]:
        return [problem.id for problem in self.problems]

    def _map(self, tensor_fn, list_fn) -> Rollout:
        changes: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                changes[f.name] = tensor_fn(value)
            elif isinstance(value, list) and value:  # an empty list (breakdowns not yet filled) stays empty
                changes[f.name] = list_fn(value)
        return dataclasses.replace(self, **changes)

    def to(self, device: torch.device | str) -> Rollout:
        return self._map(lambda t: t.to(device), lambda items: items)

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows in `index` (1-D), in that order."""
        rows = index.tolist()
        return self._map(lambda t: t[index.to(t.device)], lambda items: [items[i] for i in rows])

    def minibatches(self, size: int, generator: torch.Generator | None = None) -> Iterator[Rollout]:
        """One epoch: a shuffled partition of the rows into minibatches of `size` (the last may be smaller)."""
        if size <= 0:
            raise ValueError(f"minibatch size must be positive, got {size}")
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), size):
            yield self.select(order[start : start + size])


def concat_rollouts(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """The rows of several rollouts of the same stage in one record (dynamic sampling's rounds).

    Prompt blocks are left-padded and response blocks right-padded to the widest; per-token
    tensors are right-padded with 0. Positions come from the attention mask, so the extra
    padding changes no log-prob.
    """
    if len(rollouts) == 1:
        return rollouts[0]
    P = max(r.prompt_length for r in rollouts)
    R = max(r.response_mask.shape[1] for r in rollouts)

    def widen(r: Rollout, t: torch.Tensor, pad: int) -> torch.Tensor:  # (B, P_r + R_r) -> (B, P + R)
        prompt, response = t[:, : r.prompt_length], t[:, r.prompt_length :]
        left, right = P - r.prompt_length, R - response.shape[1]
        return torch.cat([torch.nn.functional.pad(prompt, (left, 0), value=pad),
                          torch.nn.functional.pad(response, (0, right), value=pad)], dim=1)

    changes: dict[str, Any] = {"prompt_length": P, "sequences": torch.cat([widen(r, r.sequences, pad_token_id) for r in rollouts]),
                               "attention_mask": torch.cat([widen(r, r.attention_mask, 0) for r in rollouts]),
                               "tokens_per_second": sum(r.tokens_per_second for r in rollouts) / len(rollouts)}
    for f in dataclasses.fields(Rollout):
        values = [getattr(r, f.name) for r in rollouts]
        if f.name in changes or values[0] is None:
            continue
        if isinstance(values[0], list):
            changes[f.name] = [item for value in values for item in value]
        elif values[0].dim() == 2:  # (B, R) per response token
            changes[f.name] = torch.cat([torch.nn.functional.pad(v, (0, R - v.shape[1])) for v in values])
        else:  # (B,) per row
            changes[f.name] = torch.cat(values)
    return dataclasses.replace(rollouts[0], **changes)


def truncated_rows(response_ids: torch.Tensor, response_mask: torch.Tensor, stop_token_ids: list[int]) -> torch.Tensor:
    """(B, R) ids and mask -> (B,) bool: the row's last token is not a stop token (it ran out of length)."""
    last = response_mask.long().sum(-1).clamp(min=1) - 1  # (B,)
    last_ids = response_ids.gather(1, last[:, None]).squeeze(1)
    stop = torch.tensor(stop_token_ids, device=response_ids.device)
    return ~torch.isin(last_ids, stop)


# Where the model of an answer begins: a ```lp / ```mps fence, a <model> tag, or a code answer's
# ```python fence or <python> tag.
MODEL_BLOCK_START = re.compile(r"```[ \t]*(?:lp|mps|python|py)\b|<model>|<python>", re.IGNORECASE)


class Decoder(Protocol):
    def decode(self, token_ids: list[int]) -> str: ...


def first_token_at(token_ids: list[int], offset: int, tokenizer: Decoder) -> int:
    """Index of the token whose text covers character `offset` of decode(token_ids).

    Binary search for the shortest prefix whose decoded text is longer than `offset`
    (decoded length grows with the prefix), so a row costs O(log n) decodes.
    """
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(token_ids[:mid])) > offset:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def answer_spans(mask_row: list[float]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s in a row of the response mask: the row's answers."""
    spans, start = [], None
    for i, m in enumerate([*mask_row, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    return spans


def partial_kl_mask(response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: Decoder) -> torch.Tensor:
    """(B, R) float mask: 1 from the token where the model block starts to the end of each answer
    (each run of the response mask: a multi-turn row has one per turn).

    The reasoning before the block is free of the KL penalty. An answer without a model block
    is penalized on every token: otherwise leaving out the block would be a way to escape the
    KL term.
    """
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    for row, (ids, mask_row) in enumerate(zip(response_ids.tolist(), response_mask.tolist())):
        for begin, end in answer_spans(mask_row):
            answer = ids[begin:end]
            match = MODEL_BLOCK_START.search(tokenizer.decode(answer))
            start = first_token_at(answer, match.start(), tokenizer) if match else 0
            out[row, begin + start : end] = 1.0
    return out.to(response_mask.device)
