"""The Rollout record: everything one PPO iteration knows about its sampled responses.

Shapes: B rows, S = P + R columns of `sequences` (left-padded prompts of length P, then
right-padded responses of length R). Per-token tensors cover the response part only (B, R).
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
    problems: list  # (B,) app.data.formats.Problem: id, question, answer, reference_model
    responses: list[str]  # (B,) decoded response texts
    sequences: torch.Tensor  # (B, S) prompt + response token ids
    attention_mask: torch.Tensor  # (B, S)
    prompt_length: int  # P: responses start at this column
    response_mask: torch.Tensor  # (B, R) 1 on generated tokens up to and including the stop token
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
    returns: torch.Tensor | None = None  # (B, R) GAE targets of the value head; None with RLOO advantages

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


def partial_kl_mask(response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: Decoder) -> torch.Tensor:
    """(B, R) float mask: 1 from the token where the model block starts to the end of each response.

    The reasoning before the block is free of the KL penalty. A response without a model block
    is penalized on every token: otherwise leaving out the block would be a way to escape the
    KL term.
    """
    out = torch.zeros(response_mask.shape, dtype=torch.float32)
    lengths = response_mask.bool().sum(-1).tolist()
    for row, (ids, n) in enumerate(zip(response_ids.tolist(), lengths)):
        ids = ids[:n]  # responses are right-padded
        match = MODEL_BLOCK_START.search(tokenizer.decode(ids))
        start = first_token_at(ids, match.start(), tokenizer) if match else 0
        out[row, start:n] = 1.0
    return out.to(response_mask.device)
