"""PPO math as pure functions over masked tensors.

Shapes: B rows (responses), T response tokens. `mask` is 1 on the policy's own tokens and 0 on
padding (responses are right-padded) and, in multi-turn episodes, on the feedback tokens between
two answers: every term below reads only masked-in positions. No state, nothing but torch: every function here is
checked against hand-computed numbers in tests/test_ppo_losses.py.
"""

from __future__ import annotations

import torch

Stats = dict[str, torch.Tensor]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them, or along `dim`).

    An empty mask gives 0 rather than NaN, so a row without tokens cannot poison a batch mean.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (scalar); Bessel's n/(n-1) when `unbiased` and n > 1."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding comes out as 0.

    `shift_mean=False` keeps the original mean (only rescales), as used for rewards.
    """
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


# ---- KL estimators per token, from samples of the policy (Schulman, "Approximating KL") ----


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log p/q: unbiased, high variance, can be negative per token."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """0.5 (log p/q)^2: biased, low variance, never negative."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """q/p - 1 - log q/p: unbiased and never negative."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1 - log_ratio


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token KL(policy || reference) by the named estimator; (B, T) -> (B, T)."""
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator '{kind}' (one of {', '.join(KL_ESTIMATORS)})")
    return KL_ESTIMATORS[kind](logp, ref_logp)


# ---- rewards and advantages ----


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B,) index of each row's last masked position; a row without one is an error."""
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"rows {rows} have no response tokens; every response needs at least one (e.g. its EOS)")
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), positions, -1).max(-1).values


def token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    kl_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards (B, T): -beta * kl on response tokens, plus each row's score on its last one.

    scores (B,), kl (B, T), mask (B, T). With `kl_mask` (B, T) the penalty falls only where it
    is 1 ("partial KL": the reasoning before the model block is not penalized).
    """
    penalized = mask if kl_mask is None else mask * kl_mask
    rewards = -beta * kl * penalized.to(kl.dtype)
    last = last_token_index(mask)  # (B,)
    return rewards.scatter_add(1, last[:, None], scores.to(rewards.dtype)[:, None])


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation by a reverse scan over T; returns (advantages, returns), (B, T) each.

    The scan steps over masked positions: the next step of a policy token is the row's next
    masked-in token, so a multi-turn row's feedback tokens (mask 0 between two answers) pass the
    advantage of the later answer back to the earlier one unchanged. Past a row's end the value
    counts as 0 and nothing flows back, so right padding never leaks into real tokens.
    returns = advantages + values.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # A at the next policy token
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)  # V at the next policy token
    for t in reversed(range(T)):
        here = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = torch.where(here, delta + gamma * lam * running, running)
        advantages[:, t] = running * mask[:, t]
        next_value = torch.where(here, values[:, t], next_value)
    return advantages, (advantages + values) * mask


def leave_one_out_advantages(sequence_rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: each sample's reward minus the mean reward of the other samples of its prompt; (B,) -> (B,).

    Rows come in consecutive groups of `group_size` samples of one prompt. The baseline needs no
    value model and is unbiased (it does not depend on the sample it is subtracted from).
    """
    B = sequence_rewards.shape[0]
    if group_size < 2 or B % group_size:
        raise ValueError(f"leave-one-out needs groups of >= 2 samples that divide the batch; got {B} rows in groups of {group_size}")
    r = sequence_rewards.view(B // group_size, group_size)  # (G, k)
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)  # (G, k)
    return (r - baseline).flatten()


def group_advantages(sequence_rewards: torch.Tensor, group_size: int, scale: str, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each sample's reward minus its group's mean, divided by a std; (B,) -> (B,).

    scale: "group" divides by the std of the sample's own group (GRPO), "batch" by the std of all
    B rewards (a hard prompt's small differences are not blown up), "none" not at all (Dr. GRPO:
    dividing by the group std weights prompts by how little their answers differ). Stds are
    unbiased; a group whose samples all score the same gets advantage 0.
    """
    B = sequence_rewards.shape[0]
    if group_size < 2 or B % group_size:
        raise ValueError(f"group advantages need groups of >= 2 samples that divide the batch; got {B} rows in groups of {group_size}")
    r = sequence_rewards.view(B // group_size, group_size)  # (G, k)
    centered = r - r.mean(-1, keepdim=True)  # (G, k)
    if scale == "group":
        centered = centered / (r.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        centered = centered / (sequence_rewards.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown reward scaling '{scale}' (one of group, batch, none)")
    return centered.flatten()


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} over each row's masked-in tokens (B, T): masked positions (padding,
    a multi-turn row's feedback tokens) add nothing and are not a step of the discount."""
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)  # G at the next token
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t] > 0, rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return returns * mask


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """REINFORCE++: the per-token rewards (KL penalty on every token, score on the last) summed to
    the end of the response, then whitened over every token of the batch; (B, T) -> (B, T).
    The batch statistics are the baseline: no value model, no groups needed."""
    return masked_whiten(discounted_returns(rewards, mask, gamma), mask)


def informative_groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (G,) bool: groups whose samples do not all score the same. The others have zero
    group-relative advantage everywhere and only dilute the batch (DAPO's dynamic sampling)."""
    r = scores.view(-1, group_size)  # (G, k)
    return (r != r[:, :1]).any(-1)


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment, (B,) lengths -> (B,) rewards <= 0: nothing up to
    max_length - buffer tokens, then linearly down to -penalty at max_length."""
    over = (lengths.float() - (max_length - buffer)).clamp(min=0)
    return -penalty * (over / buffer).clamp(max=1)


# ---- losses ----


def log_ratios(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log(pi / pi_old) per token, (B, T).

    level "token": each token's own (PPO, GRPO). "sequence" (GSPO): every token of a row carries
    the row's mean log-ratio, so exp of it is the geometric mean of the token ratios; in the
    token-level form of the GSPO paper, sg[mean] + logp - sg[logp], whose value is the mean and
    whose gradient is each token's own d logp.
    """
    token = logp - old_logp
    if level == "token":
        return token
    if level == "sequence":
        sequence = masked_mean(token, mask, dim=-1)  # (B,)
        return sequence.detach()[:, None] + logp - logp.detach()
    raise ValueError(f"unknown ratio level '{level}' (one of token, sequence)")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str, max_length: int | None = None) -> torch.Tensor:
    """A (B, T) per-token loss to a scalar.

    "token_mean": mean over all tokens of the batch (DAPO; every token weighs the same).
    "sequence_mean": mean over rows of each row's token mean (original GRPO; a long answer's
    tokens weigh less). "constant_length": token sum / (B * max_length) (Dr. GRPO; no length bias).
    """
    if aggregation == "token_mean":
        return masked_mean(per_token, mask)
    if aggregation == "sequence_mean":
        return masked_mean(per_token, mask, dim=-1).mean()
    if aggregation == "constant_length":
        if not max_length:
            raise ValueError("constant_length aggregation needs max_length")
        return (per_token * mask.to(per_token.dtype)).sum() / (per_token.shape[0] * max_length)
    raise ValueError(f"unknown loss aggregation '{aggregation}' (one of token_mean, sequence_mean, constant_length)")



def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    estimator: str,
    aggregation: str,
    max_length: int | None = None,
    kl_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(policy || reference) as a loss term (GRPO), inputs (B, T): the per-token estimate,
    zero where `kl_mask` is 0 (partial KL), aggregated like the policy loss over `mask`."""
    penalized = mask if kl_mask is None else mask * kl_mask
    return aggregate(kl_estimate(logp, ref_logp, estimator) * penalized, mask, aggregation, max_length)


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of the k3 estimate of KL(old || new) from tokens sampled by the old policy."""
    log_ratio = logp - old_logp
    return masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    ratio_level: str = "token",
    aggregation: str = "token_mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, Stats]:
    """Clipped surrogate, ratio clamped to [1 - clip_low, 1 + clip_high]; all inputs (B, T).
    Ratios per `ratio_level` (`log_ratios`), the per-token losses reduced per `aggregation`.

    stats (detached): clip_fraction (tokens where the clipped term is the active one),
    approx_kl (k3, see `approx_kl`), ratio_mean.
    """
    ratio = torch.exp(log_ratios(logp, old_logp, mask, ratio_level))
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation, max_length)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(logp.dtype), mask),
            "approx_kl": approx_kl(logp, old_logp, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, Stats]:
    """0.5 * max((v - R)^2, (v_clipped - R)^2), v_clipped within ±clip of the old value; inputs (B, T)."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped_err > unclipped_err).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T): entropy of softmax(logits), computed in float32 at least."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def masked_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy over the masked positions (scalar)."""
    return masked_mean(entropy_from_logits(logits), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over masked tokens (scalar).

    When the returns do not vary, it is 1 for a perfect fit and 0 otherwise (sklearn's convention).
    """
    var_returns = masked_var(returns, mask)
    var_residual = masked_var(returns - values, mask)
    if var_returns == 0:
        return torch.ones_like(var_returns) if var_residual == 0 else torch.zeros_like(var_returns)
    return 1 - var_residual / var_returns
