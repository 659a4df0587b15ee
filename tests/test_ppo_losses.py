"""The PPO math against numbers computed by hand or by plain Python loops."""

import math

import pytest
import torch

from solver_ppo.ppo import losses

# Two rows, the second right-padded after 2 tokens. The padded entries hold junk that must not matter.
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 100.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_masked_mean_all_and_per_row():
    assert losses.masked_mean(X, MASK).item() == pytest.approx(16 / 5)
    assert losses.masked_mean(X, MASK, dim=1).tolist() == pytest.approx([2.0, 5.0])
    assert losses.masked_mean(X, torch.zeros_like(MASK)).item() == 0.0


def test_masked_var_biased_and_unbiased():
    # values 1, 2, 3, 4, 6: mean 3.2, squared deviations 4.84 + 1.44 + 0.04 + 0.64 + 7.84 = 14.8
    assert losses.masked_var(X, MASK, unbiased=False).item() == pytest.approx(14.8 / 5)
    assert losses.masked_var(X, MASK, unbiased=True).item() == pytest.approx(14.8 / 4)
    one = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert losses.masked_var(X, one).item() == 0.0


def test_masked_whiten():
    white = losses.masked_whiten(X, MASK)
    std = math.sqrt(14.8 / 4 + 1e-8)
    expected = [[(1 - 3.2) / std, (2 - 3.2) / std, (3 - 3.2) / std], [(4 - 3.2) / std, (6 - 3.2) / std, 0.0]]
    assert white.tolist() == [pytest.approx(row) for row in expected]
    kept_mean = losses.masked_whiten(X, MASK, shift_mean=False)
    assert kept_mean[0, 0].item() == pytest.approx((1 - 3.2) / std + 3.2)
    assert kept_mean[1, 2].item() == 0.0


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.5, -1.0])
    # differences logp - ref: 0.5 and -1.0
    assert losses.kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert losses.kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]
    assert losses.kl_estimate(logp, ref, "k3").tolist() == pytest.approx(k3)
    with pytest.raises(ValueError, match="k4"):
        losses.kl_estimate(logp, ref, "k4")


def test_token_rewards_full_and_partial_kl():
    scores = torch.tensor([1.0, 0.5])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    rewards = losses.token_rewards(scores, kl, MASK, beta=0.1)
    assert rewards.tolist() == [
        pytest.approx([-0.01, -0.02, -0.03 + 1.0]),
        pytest.approx([-0.04, -0.05 + 0.5, 0.0]),
    ]
    kl_mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    partial = losses.token_rewards(scores, kl, MASK, beta=0.1, kl_mask=kl_mask)
    assert partial.tolist() == [pytest.approx([0.0, -0.02, 0.97]), pytest.approx([0.0, 0.5, 0.0])]


def test_token_rewards_rejects_empty_row():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        losses.token_rewards(torch.ones(2), torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]), 0.1)


def reference_gae(rewards, values, lengths, gamma, lam):
    """Plain-Python GAE over each row's real tokens, the value after the last token being 0."""
    out = []
    for r, v, n in zip(rewards, values, lengths):
        adv = [0.0] * len(r)
        running = 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            adv[t] = running
        out.append(adv)
    return out


def test_gae_by_hand():
    # one row, two tokens, gamma = 1, lam = 0.5:
    # delta_1 = 1 + 0 - 0.5 = 0.5 -> A_1 = 0.5; delta_0 = 0 + 0.5 - 0.2 = 0.3 -> A_0 = 0.3 + 0.5 * 0.5 = 0.55
    adv, ret = losses.gae(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.5]]), torch.ones(1, 2), 1.0, 0.5)
    assert adv.tolist() == [pytest.approx([0.55, 0.5])]
    assert ret.tolist() == [pytest.approx([0.75, 1.0])]


def test_gae_matches_loop_and_ignores_padding():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 5, generator=gen)
    values = torch.randn(3, 5, generator=gen)
    lengths = [5, 3, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = reference_gae(rewards.tolist(), values.tolist(), lengths, 0.9, 0.8)
    for row, exp_row, n in zip(adv.tolist(), expected, lengths):
        assert row == pytest.approx(exp_row, abs=1e-6)
        assert row[n:] == [0.0] * (5 - n)
    assert ret[mask.bool()].tolist() == pytest.approx((adv + values)[mask.bool()].tolist())
    # junk in the padded slots changes nothing
    junk = mask == 0
    adv2, ret2 = losses.gae(rewards.masked_fill(junk, 50.0), values.masked_fill(junk, -7.0), mask, 0.9, 0.8)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_leave_one_out_advantages_by_hand():
    # two prompts, three samples each: sample minus the mean of the other two
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.2])
    adv = losses.leave_one_out_advantages(rewards, group_size=3)
    assert adv.tolist() == pytest.approx([0.75, -0.75, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    with pytest.raises(ValueError, match="6 rows in groups of 4"):
        losses.leave_one_out_advantages(rewards, group_size=4)
    with pytest.raises(ValueError, match="groups of 1"):
        losses.leave_one_out_advantages(rewards, group_size=1)


def test_policy_loss_clips_separately_low_and_high():
    # ratios exp(0.5)=1.6487 (A>0: clipped at 1.2), exp(-0.5)=0.6065 (A<0: clipped at 0.9), 1.0 (A>0), padded
    logp = torch.tensor([[0.5, -0.5, 0.0, 3.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = losses.policy_loss(logp, old, adv, mask, clip_low=0.1, clip_high=0.2)
    r = [math.exp(0.5), math.exp(-0.5), 1.0]
    # per token max(-A r, -A clip(r)): -1*1.2 = -1.2 (vs -1.6487), max(2*0.6065, 2*0.9) = 1.8, -3
    assert loss.item() == pytest.approx((-1.2 + 1.8 - 3.0) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    assert stats["ratio_mean"].item() == pytest.approx(sum(r) / 3)
    k3 = [x - 1 - math.log(x) for x in r]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 3)
    assert losses.approx_kl(logp, old, mask).item() == pytest.approx(sum(k3) / 3)


def test_policy_loss_gradient_is_zero_where_clipped():
    logp = torch.tensor([[0.5, 0.0]], requires_grad=True)
    loss, _ = losses.policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2, 0.2)
    loss.backward()
    assert logp.grad.tolist() == [pytest.approx([0.0, -0.5])]  # d(-r/2)/dlogp = -r/2 at r = 1


def test_value_loss_clipping():
    values = torch.tensor([[1.0, 0.0, 0.5, 9.0]])
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, stats = losses.value_loss(values, old, returns, mask, clip=0.2)
    # token 0: v=1 -> clipped 0.2; errors (1-2)^2 = 1, (0.2-2)^2 = 3.24 -> 3.24 (clipped active)
    # token 1: v=0 -> clipped 0; both 1 -> 1
    # token 2: v=0.5 -> clipped 0.2; errors 2.25, 1.44 -> 2.25 (unclipped active)
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0 + 2.25) / 3)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]]])
    ent = losses.entropy_from_logits(logits)
    assert ent.tolist() == [pytest.approx([math.log(4), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))])]
    assert losses.entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32
    mask = torch.tensor([[1.0, 0.0]])
    assert losses.masked_entropy(logits, mask).item() == pytest.approx(math.log(4))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert losses.explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    values = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # residuals 0, 1, 2 (var 1), returns var 1 -> 0
    assert losses.explained_variance(values, returns, mask).item() == pytest.approx(0.0)
    values = torch.tensor([[1.5, 2.0, 2.5, 0.0]])
    # residuals -0.5, 0, 0.5: var 0.25 -> 1 - 0.25
    assert losses.explained_variance(values, returns, mask).item() == pytest.approx(0.75)
    flat = torch.ones(1, 4)
    assert losses.explained_variance(flat, flat, mask).item() == 1.0
    assert losses.explained_variance(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), flat, mask).item() == 0.0


def test_group_advantages_by_hand_for_each_scaling():
    # two prompts, three samples each; the second group all alike
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.2])
    # group 1: mean 0.5, centered (0.5, -0.5, 0), unbiased std sqrt((0.25 + 0.25) / 2) = 0.5
    assert losses.group_advantages(rewards, 3, "group").tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 0.0, 0.0], abs=1e-5)
    assert losses.group_advantages(rewards, 3, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0, 0.0, 0.0], abs=1e-6)
    # batch: mean 0.35, squared deviations .4225 + .1225 + .0225 * 4 = .635, unbiased std sqrt(.635 / 5)
    std = math.sqrt(0.635 / 5)
    expected = [0.5 / std, -0.5 / std, 0.0, 0.0, 0.0, 0.0]
    assert losses.group_advantages(rewards, 3, "batch").tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="6 rows in groups of 4"):
        losses.group_advantages(rewards, 4, "group")
    with pytest.raises(ValueError, match="'sum'"):
        losses.group_advantages(rewards, 3, "sum")


def test_discounted_returns_and_reinforce_pp_by_hand():
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.5, 2.0, 100.0]])
    # gamma 0.5: row 0: G2 = 1, G1 = -0.1 + 0.5 = 0.4, G0 = 0 + 0.2 = 0.2; row 1: G1 = 2, G0 = 0.5 + 1 = 1.5
    returns = losses.discounted_returns(rewards, MASK, 0.5)
    assert returns.tolist() == [pytest.approx([0.2, 0.4, 1.0]), pytest.approx([1.5, 2.0, 0.0])]
    # REINFORCE++ whitens those five returns together: mean 1.02, unbiased std over the batch
    values = [0.2, 0.4, 1.0, 1.5, 2.0]
    mean = sum(values) / 5
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    adv = losses.reinforce_pp_advantages(rewards, MASK, 0.5)
    assert adv.tolist() == [pytest.approx([(v - mean) / std for v in values[:3]], abs=1e-6),
                            pytest.approx([(values[3] - mean) / std, (values[4] - mean) / std, 0.0], abs=1e-6)]


def test_informative_groups_and_overlong_penalty():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.3, 0.3, 0.3])
    assert losses.informative_groups(scores, 3).tolist() == [False, True, False]
    # max 10 tokens, the last 4 penalized: free up to 6, then linearly to -0.5 at 10
    lengths = torch.tensor([5, 6, 8, 10])
    assert losses.overlong_penalty(lengths, 10, 4, 0.5).tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5])


def test_aggregations_by_hand():
    # X's masked entries: row 0 (1, 2, 3), row 1 (4, 6)
    assert losses.aggregate(X, MASK, "token_mean").item() == pytest.approx(16 / 5)
    assert losses.aggregate(X, MASK, "sequence_mean").item() == pytest.approx((2.0 + 5.0) / 2)
    assert losses.aggregate(X, MASK, "constant_length", max_length=4).item() == pytest.approx(16 / (2 * 4))
    with pytest.raises(ValueError, match="one of token_mean"):
        losses.aggregate(X, MASK, "mean")


def test_sequence_ratio_is_the_geometric_mean_with_the_gspo_gradient():
    logp = torch.tensor([[0.1, 0.5, 7.0], [-0.2, 0.0, 0.0]], requires_grad=True)
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    log_ratio = losses.log_ratios(logp, old, mask, "sequence")
    # row 0: mean of (0.1, 0.5) = 0.3 on every token; row 1: mean of (-0.2, 0, 0)
    assert log_ratio.tolist()[0][:2] == pytest.approx([0.3, 0.3])
    assert log_ratio.tolist()[1] == pytest.approx([-0.2 / 3] * 3)
    adv = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    loss, stats = losses.policy_loss(logp, old, adv, mask, 0.5, 0.5, "sequence", "sequence_mean")
    s0, s1 = math.exp(0.3), math.exp(-0.2 / 3)
    assert loss.item() == pytest.approx((-2 * s0 + s1) / 2)
    assert stats["ratio_mean"].item() == pytest.approx((2 * s0 + 3 * s1) / 5)
    loss.backward()
    # GSPO's sequence objective -A_i * s_i, averaged over rows, differentiated by hand:
    # d/dlogp_t = -A_i * s_i / |y_i| / 2 on each of row i's tokens
    assert logp.grad.tolist() == [pytest.approx([-2 * s0 / 2 / 2] * 2 + [0.0]), pytest.approx([s1 / 3 / 2] * 3)]
    # clipped at the sequence level: a ratio of exp(0.3) > 1.2 with A > 0 gets no gradient on any token
    logp.grad = None
    loss, stats = losses.policy_loss(logp, old, adv, mask, 0.2, 0.2, "sequence", "sequence_mean")
    loss.backward()
    assert logp.grad[0].tolist() == [0.0, 0.0, 0.0]
    assert stats["clip_fraction"].item() == pytest.approx(2 / 5)


def test_kl_loss_term_with_partial_kl_by_hand():
    logp = torch.tensor([[-1.0, -2.0, -1.0], [-0.5, -0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-0.5, -1.5, 0.0]])
    # k3 per token, rho = logp - ref: e^-rho - 1 + rho
    k3 = lambda rho: math.exp(-rho) - 1 + rho  # noqa: E731
    row0, row1 = [k3(0.5), k3(-1.0), 0.0], [0.0, k3(1.0)]
    assert losses.kl_loss(logp, ref, MASK, "k3", "token_mean").item() == pytest.approx(sum(row0 + row1) / 5)
    assert losses.kl_loss(logp, ref, MASK, "k3", "sequence_mean").item() == pytest.approx((sum(row0) / 3 + sum(row1) / 2) / 2)
    # partial KL: only the tokens from the model block on (row 0 from its second token, row 1 none)
    kl_mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    partial = losses.kl_loss(logp, ref, MASK, "k3", "token_mean", kl_mask=kl_mask)
    assert partial.item() == pytest.approx(k3(-1.0) / 5)
    partial.backward()  # d/dlogp of e^-rho - 1 + rho = 1 - e^-rho, on the penalized token only
    assert logp.grad.tolist() == [pytest.approx([0.0, (1 - math.exp(1.0)) / 5, 0.0]), pytest.approx([0.0, 0.0, 0.0])]
