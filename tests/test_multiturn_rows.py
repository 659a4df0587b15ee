"""Where the score, the KL and the losses land in a multi-turn row (app/ppo/losses.py).

A two-answer row's mask has zeros in the middle (the feedback between the answers) as well as at
the end (padding). Every function must read such a row as the same row with the feedback cut out:
the score sits on the last token of the last answer, the KL penalty falls on answer tokens only
(with partial KL: from each answer's model block on), and no loss or gradient moves when the
feedback columns' inputs change, for every ratio level and loss aggregation.
"""

from __future__ import annotations

import pytest
import torch

from solver_ppo.ppo import losses
from solver_ppo.ppo.rollout import partial_kl_mask

# two rows of 10 response columns: row 0 answers in 0-2 and 6-8 (feedback 3-5, padding 9);
# row 1 answers in 0-3 and 5-6 (feedback 4, padding 7-9)
MASK = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 0, 1, 1, 0, 0, 0]], dtype=torch.float32)
FEEDBACK = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
LAST_OF_LAST_ANSWER = [8, 6]


def cut_feedback(x: torch.Tensor, mask: torch.Tensor = MASK) -> torch.Tensor:
    """The same rows with every masked-out column moved behind the answers (left-aligned answers,
    zeros after): what a single-answer row of the same tokens looks like."""
    out = torch.zeros_like(x)
    for row in range(x.shape[0]):
        kept = x[row][mask[row].bool()]
        out[row, : len(kept)] = kept
    return out


def on_answers(x: torch.Tensor, mask: torch.Tensor = MASK) -> list[list[float]]:
    return [x[row][mask[row].bool()].tolist() for row in range(x.shape[0])]


def noisy_off_answers(x: torch.Tensor, scale: float = 7.0) -> torch.Tensor:
    """`x` with large noise on every feedback and padding column (the answers' columns unchanged)."""
    return torch.where(MASK.bool(), x, x + scale * torch.randn_like(x))


def test_the_score_lands_on_the_last_token_of_the_last_answer():
    scores, kl = torch.tensor([0.75, 0.5]), torch.rand(2, 10)
    rewards = losses.token_rewards(scores, kl * MASK, MASK, beta=0.1)
    for row, last in enumerate(LAST_OF_LAST_ANSWER):
        expected = -0.1 * kl[row] * MASK[row]
        expected[last] += scores[row]
        torch.testing.assert_close(rewards[row], expected)
    assert (rewards[FEEDBACK] == 0).all()  # no feedback token carries a penalty or the score
    # an estimate computed on feedback columns too (not masked first) still stays off them
    assert (losses.token_rewards(scores, kl, MASK, beta=0.1)[FEEDBACK] == 0).all()


def test_the_score_would_land_on_feedback_if_the_mask_ended_the_row_there():
    """The check above can fail: a mask that forgets the second answer puts the score on the first one's end."""
    first_only = MASK.clone()
    first_only[0, 6:] = 0
    rewards = losses.token_rewards(torch.tensor([1.0, 1.0]), torch.zeros(2, 10), first_only, beta=0.0)
    assert rewards[0].nonzero().flatten().tolist() == [2] != [LAST_OF_LAST_ANSWER[0]]


class Pieces:
    """A decoder over a fixed list of text pieces (token id = index)."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, token_ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in token_ids)


def test_partial_kl_starts_at_each_answers_model_block():
    pieces = ["Think", ".", "```lp\n", "Min", "```", "<fb>", "fix", "<fb/>", "So", "```lp\n", "x", "```", "<pad>"]
    tok = Pieces(pieces)
    # row 0: answer "Think. ```lp Min ```" (0-4), feedback (5-7), answer "So ```lp x ```" (8-11), padding (12)
    # row 1: answer without a block (0-1), feedback (2), answer with the block at its start (3-5)
    ids = torch.tensor([list(range(13)), [0, 1, 5, 9, 10, 11, 12, 12, 12, 12, 12, 12, 12]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    kl_mask = partial_kl_mask(ids, mask, tok)
    assert kl_mask.tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0], [1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]
    kl = torch.rand(2, 13) + 0.1
    rewards = losses.token_rewards(torch.tensor([0.5, 0.25]), kl, mask, beta=1.0, kl_mask=kl_mask)
    penalized = rewards.clone()
    penalized[0, 11] -= 0.5
    penalized[1, 5] -= 0.25
    assert ((penalized < 0) == kl_mask.bool()).all()  # the penalty falls exactly on each answer's block
    # as a loss term (GRPO's placement) too: only the blocks' estimates count
    logp, ref = torch.randn(2, 13), torch.randn(2, 13)
    term = losses.kl_loss(logp, ref, mask, "k3", "token_mean", kl_mask=kl_mask)
    by_hand = (losses.kl_k3(logp, ref) * kl_mask).sum() / mask.sum()
    torch.testing.assert_close(term, by_hand)


def test_every_estimator_reads_a_two_answer_row_as_the_answers_alone():
    torch.manual_seed(0)
    scores, kl, values = torch.tensor([0.75, 0.25]), torch.rand(2, 10), torch.randn(2, 10)
    cut_mask = cut_feedback(MASK)
    rewards = losses.token_rewards(scores, kl * MASK, MASK, beta=0.2)
    cut_rewards = losses.token_rewards(scores, cut_feedback(kl * MASK), cut_mask, beta=0.2)
    assert on_answers(rewards) == on_answers(cut_rewards, cut_mask)
    estimators = {
        "gae": lambda r, v, m: losses.gae(r, v, m, gamma=0.95, lam=0.9)[0],
        "gae returns": lambda r, v, m: losses.gae(r, v, m, gamma=0.95, lam=0.9)[1],
        "reinforce_pp": lambda r, v, m: losses.reinforce_pp_advantages(r, m, gamma=0.95),
        "discounted": lambda r, v, m: losses.discounted_returns(r, m, gamma=0.95),
        "whitened": lambda r, v, m: losses.masked_whiten(r, m),
        # RLOO and GRPO: one advantage per row (from the row's summed reward), on its answer tokens
        "rloo": lambda r, v, m: losses.leave_one_out_advantages(r.sum(-1), 2)[:, None] * m,
        "grpo": lambda r, v, m: losses.group_advantages(r.sum(-1), 2, "group")[:, None] * m,
    }
    for name, estimator in estimators.items():
        two_answer = estimator(noisy_off_answers(rewards) * MASK, noisy_off_answers(values), MASK)
        alone = estimator(cut_rewards, cut_feedback(values), cut_mask)
        torch.testing.assert_close(torch.tensor(on_answers(two_answer)[0]), torch.tensor(on_answers(alone, cut_mask)[0]),
                                   msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(torch.tensor(on_answers(two_answer)[1]), torch.tensor(on_answers(alone, cut_mask)[1]),
                                   msg=lambda m, name=name: f"{name}: {m}")
        assert (two_answer[~MASK.bool()] == 0).all(), name


def test_the_equivalence_check_sees_an_estimator_that_steps_over_feedback():
    """The check above can fail: GAE run as if the feedback tokens were steps gives other advantages."""
    torch.manual_seed(0)
    rewards, values = losses.token_rewards(torch.tensor([1.0, 1.0]), torch.zeros(2, 10), MASK, 0.0), torch.randn(2, 10)
    no_gaps = (torch.arange(10) <= torch.tensor(LAST_OF_LAST_ANSWER)[:, None]).float()  # feedback counted as steps
    stepped = losses.gae(rewards, values * MASK, no_gaps, 0.95, 0.9)[0]
    proper = losses.gae(rewards, values, MASK, 0.95, 0.9)[0]
    assert not torch.allclose(stepped[MASK.bool()], proper[MASK.bool()])


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "constant_length"])
def test_feedback_columns_move_no_loss_and_no_gradient(ratio, aggregation):
    """Policy loss (each ratio level and aggregation), KL loss term and value loss: noise on the
    feedback and padding columns of every input changes neither the loss nor d loss / d input;
    the same noise on one answer token does. Equal also to the row with the feedback cut out."""
    torch.manual_seed(1)
    old_logp, ref_logp = torch.randn(2, 10) - 2, torch.randn(2, 10) - 2
    logp = old_logp + 0.05 * torch.randn(2, 10)  # ratios near 1: inside the clip range
    advantages, values, old_values, returns = torch.randn(2, 10), torch.randn(2, 10), torch.randn(2, 10), torch.randn(2, 10)
    agg = {"aggregation": aggregation, "max_length": 12}

    def loss_and_grads(lp, olp, rlp, adv, v, ov, ret, mask=MASK):
        lp, v = lp.clone().requires_grad_(), v.clone().requires_grad_()
        pg, _ = losses.policy_loss(lp, olp, adv, mask, 0.2, 0.28, ratio, **agg)
        kl = losses.kl_loss(lp, rlp, mask, "k3", **agg)
        vl, _ = losses.value_loss(v, ov, ret, mask, 0.2)
        total = pg + 0.1 * kl + 0.5 * vl
        total.backward()
        return torch.stack([pg.detach(), kl.detach(), vl.detach()]), lp.grad, v.grad

    inputs = (logp, old_logp, ref_logp, advantages, values, old_values, returns)
    clean, clean_lp_grad, clean_v_grad = loss_and_grads(*inputs)
    noisy, noisy_lp_grad, noisy_v_grad = loss_and_grads(*(noisy_off_answers(x) for x in inputs))
    torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(noisy_lp_grad, clean_lp_grad, rtol=0, atol=1e-7)
    torch.testing.assert_close(noisy_v_grad, clean_v_grad, rtol=0, atol=1e-7)
    assert (clean_lp_grad[~MASK.bool()] == 0).all() and (clean_v_grad[~MASK.bool()] == 0).all()

    cut, cut_lp_grad, _ = loss_and_grads(*(cut_feedback(x) for x in inputs), mask=cut_feedback(MASK))
    torch.testing.assert_close(cut, clean, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(on_answers(cut_lp_grad, cut_feedback(MASK))[0]),
                               torch.tensor(on_answers(clean_lp_grad)[0]), rtol=0, atol=1e-7)

    answer_token = logp.clone()
    answer_token[0, 7] += 0.1  # a token of row 0's second answer
    moved, _, _ = loss_and_grads(answer_token, *inputs[1:])
    assert moved[0] != clean[0] and moved[1] != clean[1]


def test_the_sequence_ratio_is_the_mean_over_both_answers_only():
    """GSPO: every answer token of a two-answer row carries the mean log-ratio of its answer tokens."""
    torch.manual_seed(2)
    logp, old_logp = torch.randn(2, 10), torch.randn(2, 10)
    ratio = losses.log_ratios(noisy_off_answers(logp), old_logp, MASK, "sequence")
    for row in range(2):
        kept = MASK[row].bool()
        mean = (logp[row, kept] - old_logp[row, kept]).mean()
        torch.testing.assert_close(ratio[row, kept], mean.expand(int(kept.sum())))
