"""Batched sampling with our own decode loop (not transformers' `.generate`).

Why our own: PPO needs the response tokens *and* masks laid out the same way the scorer reads
them, reproducible sampling from one `torch.Generator`, and a loop that does not depend on
transformers' cache internals (the native ChatGLM owns its cache). The loop works with any
causal LM whose forward takes `input_ids, attention_mask, position_ids, past_key_values,
use_cache` and returns `.logits` (B, T, V) and `.past_key_values`.

Layout: prompts are left-padded to (B, P); the response block (B, R) follows. Position ids are
`attention_mask.cumsum(-1) - 1` clamped at 0 at every forward, so a row's first real token is
at position 0 whatever its padding — the same convention `PolicyWithValue` scores with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from solver_ppo.models.config import SamplingConfig


@dataclass
class Generation:
    sequences: torch.Tensor  # (B, P+R) long: left-padded prompt, then response (pad after stop)
    attention_mask: torch.Tensor  # (B, P+R) long: 1 on real prompt tokens and response tokens
    prompt_length: int  # P: the response of every row starts at this column
    response_mask: torch.Tensor  # (B, R) bool: generated tokens up to and including the stop token
    response_lengths: torch.Tensor  # (B,) long
    tokens_per_second: float  # generated (unmasked) tokens / elapsed_s
    elapsed_s: float
    # with `keep_logprobs`: what the sampling pass already knows about each response token
    logprobs: torch.Tensor | None = None  # (B, R) fp32 log p(token) at the sampling temperature, unfiltered
    hidden: torch.Tensor | None = None  # (B, R, H) the LM head's input at the column that predicted the token
    # the model's cache after the last step: every column of `sequences` but the last (a later call
    # that continues these rows feeds that column first; see `ContextCache`)
    past: Any = None

    @property
    def responses(self) -> torch.Tensor:
        """(B, R) the response block."""
        return self.sequences[:, self.prompt_length :]

    def texts(self, tokenizer) -> list[str]:
        """(B,) the responses as text: each row's generated tokens, special tokens dropped."""
        return [
            tokenizer.decode(row[mask].tolist(), skip_special_tokens=True)
            for row, mask in zip(self.responses, self.response_mask.bool())
        ]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids: 0 at each row's first real token, counting only real tokens."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@contextmanager
def head_on_columns(model: torch.nn.Module, start: int, stop: int | None, seq_len: int | None = None) -> Iterator[dict]:
    """Within the block, the LM head sees only hidden columns [start:stop) of its (B, T, H) input.

    The logits of other columns are never made: (B, T, V) is the largest activation of a causal
    LM. A forward pre-hook on `get_output_embeddings()` does the slicing, so it works for any
    model that applies its head to batch-first hidden states (HF causal LMs, the native ChatGLM).
    Yields a dict whose "hidden" entry is the sliced head input after the forward. `seq_len`:
    the T the caller expects, checked so a seq-first model fails loudly instead of mis-slicing.
    """
    kept: dict[str, torch.Tensor] = {}

    def slice_input(_head: torch.nn.Module, args: tuple) -> tuple:
        h = args[0]
        if seq_len is not None and h.shape[1] != seq_len:
            raise ValueError(f"LM head input has shape {tuple(h.shape)}, expected batch-first (B, {seq_len}, hidden)")
        # contiguous: on the CPU, bf16 F.linear of a strided (B, R, H) slice takes a path ~200x slower
        # (30 s instead of 0.12 s for 4 rows at chatglm3-6b's 65,024 x 4,096 head)
        kept["hidden"] = h[:, start:stop].contiguous()
        return (kept["hidden"], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(slice_input)
    try:
        yield kept
    finally:
        handle.remove()


def left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids (B, P), attention_mask (B, P)), padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError(f"every prompt needs at least one token (got lengths {[len(p) for p in prompts]})")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(device), mask.to(device)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(B, V) logits -> (B, V) with temperature applied and filtered entries set to -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling (got {temperature}); use do_sample=False for greedy")
    logits = logits / temperature
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[:, 0] = False  # even at top_p=0, where the test above drops it too
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _next_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position -> (B,) token ids."""
    logits = logits.float()
    if not sampling.do_sample:
        return logits.argmax(-1)
    probs = filter_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p).softmax(-1)
    return sample_categorical(probs, generator)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) probabilities (rows need not sum to 1) -> (B,) one draw per row, by inverse CDF.

    One uniform per row and a binary search in the float64 cumulative sum: ~0.7 ms for (16, 32k)
    on one CPU thread, where `torch.multinomial` takes ~20 ms. The first index whose cumulative
    sum exceeds u·total is never a zero-probability token; u <= 1 - 2^-53 keeps u·total below the
    total in float64, so the index stays in range.
    """
    cdf = probs.double().cumsum(-1)  # (B, V)
    u = torch.rand((cdf.size(0), 1), generator=generator, device=probs.device, dtype=torch.float64)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]] | tuple[torch.Tensor, torch.Tensor],
    *,
    pad_token_id: int,
    stop_token_ids: list[int],
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    keep_logprobs: bool = False,
    done: Callable[[torch.Tensor], bool] | None = None,
    past: tuple[Any, torch.Tensor] | None = None,
) -> Generation:
    """Sample up to `sampling.max_new_tokens` tokens per prompt; a row ends at its first stop token.

    `use_cache=False` re-runs the whole sequence every step (the benchmark's baseline).
    `keep_logprobs`: also return each token's log-prob (logits / temperature, before top-k/top-p,
    as a full scoring pass computes it) and the hidden state that predicted it, so PPO can skip its
    own policy pass. The model's train/eval mode is left as the caller set it.
    `done(finished)`: whether to stop before the next step, given the (B,) rows finished so far
    (default: all of them are). A model whose every forward is a collective passes one that asks
    every rank, so that all ranks take the same number of steps.
    `prompts` may come padded already, as (input_ids, attention_mask) (B, P) each.
    `past`: (the model's cache, its attention mask (B, C)) of C columns that come before
    `prompts`, which then hold only each row's new tokens (`ContextCache`); the returned
    sequences and masks cover the new columns only.
    """
    device = next(model.parameters()).device
    if isinstance(prompts, tuple):
        input_ids, attention_mask = (t.to(device) for t in prompts)
    else:
        input_ids, attention_mask = left_pad(prompts, pad_token_id, device)  # (B, P)
    B, P = input_ids.shape
    stop = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []  # R tensors of (B,)
    alive: list[torch.Tensor] = []  # R tensors of (B,) bool: the token is part of the response
    logprobs: list[torch.Tensor] = []  # R tensors of (B,), with keep_logprobs
    hidden: list[torch.Tensor] = []  # R tensors of (B, 1, H), with keep_logprobs
    temperature = sampling.temperature if sampling.do_sample else 1.0

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    past, cached_mask = past if past is not None else (None, attention_mask[:, :0])  # (B, C)
    if past is not None and not use_cache:
        raise ValueError("a cache to continue from needs use_cache=True")
    step_ids, seq_ids, seq_mask = input_ids, input_ids, attention_mask
    for _ in range(sampling.max_new_tokens):
        positions = positions_from_mask(torch.cat([cached_mask, seq_mask], dim=1))[:, cached_mask.size(1) :]  # (B, T)
        with head_on_columns(model, -1, None) as kept:  # logits of the last column only
            if use_cache:
                out = model(
                    input_ids=step_ids,
                    attention_mask=torch.cat([cached_mask, seq_mask], dim=1),
                    position_ids=positions[:, -step_ids.size(1) :],
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
            else:
                out = model(input_ids=seq_ids, attention_mask=seq_mask, position_ids=positions, use_cache=False)
        logits = out.logits[:, -1, :]  # (B, V)
        token = _next_token(logits, sampling, generator)  # (B,)
        token = token.masked_fill(finished, pad_token_id)
        if keep_logprobs:
            logprobs.append((logits.float() / temperature).log_softmax(-1).gather(-1, token[:, None]).squeeze(-1))
            hidden.append(kept["hidden"].clone())  # (B, 1, H); a view would keep the prefill's (B, P, H) alive
        tokens.append(token)
        alive.append(~finished)
        finished = finished | torch.isin(token, stop)
        step_ids = token[:, None]  # (B, 1)
        seq_ids = torch.cat([seq_ids, step_ids], dim=1)
        seq_mask = torch.cat([seq_mask, alive[-1][:, None].long()], dim=1)
        if done(finished) if done is not None else bool(finished.all()):
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start

    if tokens:
        response_mask = torch.stack(alive, dim=1)  # (B, R)
    else:
        response_mask = torch.zeros((B, 0), dtype=torch.bool, device=device)
    lengths = response_mask.long().sum(-1)
    generated = int(lengths.sum())
    return Generation(
        sequences=seq_ids,
        attention_mask=seq_mask,
        prompt_length=P,
        response_mask=response_mask,
        response_lengths=lengths,
        tokens_per_second=generated / elapsed if elapsed > 0 else float("inf"),
        elapsed_s=elapsed,
        logprobs=torch.stack(logprobs, dim=1) if logprobs else None,  # (B, R)
        hidden=torch.cat(hidden, dim=1) if hidden else None,  # (B, R, H)
        past=(past, torch.cat([cached_mask, seq_mask[:, :-1]], dim=1)) if use_cache and tokens else None,
    )


def select_rows(past: Any, rows: torch.Tensor) -> Any:
    """The cache of the given batch rows: the native ChatGLM's KVCache, transformers' DynamicCache
    (reordered in place) or the legacy tuples of (B, ...) tensors."""
    if isinstance(past, torch.Tensor):
        return past.index_select(0, rows.to(past.device))
    if hasattr(past, "index_select"):
        return past.index_select(rows)
    if hasattr(past, "reorder_cache"):
        past.reorder_cache(rows)
        return past
    return type(past)(select_rows(p, rows) for p in past)


class ContextCache:
    """Answers to contexts that extend the contexts of the previous call (a multi-turn rollout:
    context = earlier context + the answer + feedback) without reading the earlier context again.

    The previous call's cache holds every column but the last sampled token; a row that goes on
    feeds that column and its new tokens (the feedback message), left-padded as a block, and the
    decode continues. Rows need not be contiguous in the cache: padding columns between two
    turns are masked out and positions count only real tokens, as in any left-padded batch. Rows
    of the previous call that are not continued are dropped from the cache. A call whose contexts
    do not all extend a previous row starts afresh.
    """

    def __init__(self):
        self.rows: list[list[int]] = []  # per row of the cache: the context it has read, then its answer
        self.state: Generation | None = None

    def generate(self, model: torch.nn.Module, contexts: list[list[int]], *, pad_token_id: int, **kwargs) -> Generation:
        previous = self._continued(contexts)
        if previous is None:
            gen = generate(model, contexts, pad_token_id=pad_token_id, **kwargs)
        else:
            state, index = self.state, torch.tensor(previous, device=self.state.sequences.device)
            past, past_mask = state.past
            last = state.sequences[:, -1:].index_select(0, index)  # (B, 1) the column not yet in the cache
            last_mask = state.attention_mask[:, -1:].index_select(0, index)
            new = [context[len(self.rows[j]) :] for context, j in zip(contexts, previous)]
            ids, mask = left_pad(new, pad_token_id, last.device)  # (B, N) the feedback, left-padded
            block = (torch.cat([last, ids], dim=1), torch.cat([last_mask, mask], dim=1))  # (B, 1 + N)
            cached = (select_rows(past, index), past_mask.index_select(0, index))
            gen = generate(model, block, pad_token_id=pad_token_id, past=cached, **kwargs)
        self.state = gen
        self.rows = [context + row[mask].tolist() for context, row, mask in
                     zip(contexts, gen.responses, gen.response_mask.bool())]
        return gen

    def _continued(self, contexts: list[list[int]]) -> list[int] | None:
        """For each context, the previous row it extends (in order), or None if one extends none."""
        if self.state is None or self.state.past is None:
            return None
        out, j = [], 0
        for context in contexts:
            while j < len(self.rows) and context[: len(self.rows[j])] != self.rows[j]:
                j += 1
            if j == len(self.rows) or len(context) == len(self.rows[j]):
                return None
            out.append(j)
            j += 1
        return out

    def clear(self) -> None:
        self.rows, self.state = [], None
