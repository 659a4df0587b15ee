"""Two-turn rollouts of the real PPOModule on the tiny ChatGLM, scored by a script:

- with `ppo.logprobs_from_sampling` (the quick-start configs set it) the per-token log-probs and
  values the sampling loop kept for every turn equal a separate full scoring pass of the same
  episode, column for column; the same numbers shifted by the feedback's length do not;
- with `rollout.end=done` an episode whose second answer has no model is scored with the first
  answer's score minus `rollout.turn_cost`, and the second answer's tokens are trained on, in
  training and in `eval --end done`.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

import pytest
import torch

from solver_ppo.config import load_config
from solver_ppo.data.formats import iter_problems
from solver_ppo.data.synthetic import generate
from solver_ppo.ppo import losses
from solver_ppo.ppo.scoring import RolloutScorer, RolloutScores

from test_ppo_train import overrides


class ScriptedTurns(RolloutScorer):
    """Scores by turn: each turn's (score, status) for every answer, feedback from the status."""

    def __init__(self, turns: list[tuple[float, str]]):
        self.turns, self.calls = turns, 0

    def begin(self, responses, problems):
        score, status = self.turns[self.calls]
        self.calls += 1
        n = len(responses)
        self.scored = RolloutScores(scores=[score] * n, breakdowns=[{"status": status}] * n, matched=[False] * n,
                                    feedback=[f"Solver status: {status}."] * n)

    def finish(self, module):
        return self.scored

    def validate(self, responses, problems):
        raise AssertionError("no data.val here")

    def record_validation(self, results, standing, turns_taken):
        raise AssertionError("no data.val here")


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(item.to_json()) + "\n" for item in generate(2, seed=3)))
    return path


def two_turn_rollout(tiny_chatglm_dir, problems_file, tmp_path, scorer: RolloutScorer, **extra):
    """The module and one scored rollout of 2 problems x 2 samples, 2 turns, outside a Trainer
    (one rank: the cross-rank agreements are the identity)."""
    from solver_ppo.models.loading import load_model
    from solver_ppo.models.policy import build_policy
    from solver_ppo.ppo.module import PPOModule

    settings = {"rollout.turns": 2, "rollout.end": "turns", "sampling.temperature": 0.7, "sampling.max_new_tokens": 6, **extra}
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **settings))
    torch.manual_seed(0)
    loaded = load_model(cfg.model)
    module = PPOModule(cfg, loaded, build_policy(loaded, cfg.model))
    module._scorer = lambda: scorer
    module._on_any_rank = lambda flag: flag
    module._min_across_ranks = lambda n: n
    problems = list(itertools.islice(iter_problems(problems_file), 2))
    rollout = module.sample_and_score(problems, torch.Generator().manual_seed(0), defaultdict(float))
    return module, rollout


def feedback_lengths(rollout) -> list[int]:
    return [e.turns[1].start - e.turns[0].end for e in rollout.episodes]


def test_sampling_logprobs_and_values_of_every_turn_equal_a_full_scoring_pass(tiny_chatglm_dir, problems_file, tmp_path):
    scorer = ScriptedTurns([(0.25, "infeasible"), (1.0, "optimal")])
    module, rollout = two_turn_rollout(tiny_chatglm_dir, problems_file, tmp_path, scorer, **{"ppo.logprobs_from_sampling": True})
    assert all(len(e.turns) == 2 for e in rollout.episodes) and min(feedback_lengths(rollout)) > 0
    full_logprobs, full_values, _ = module.policy.score_rollout(rollout.sequences, rollout.attention_mask, rollout.prompt_length,
                                                                module._temperature, chunk_size=2)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.old_logprobs[mask], full_logprobs[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(rollout.values[mask], full_values[mask], atol=1e-4, rtol=0)
    for e, row in zip(rollout.episodes, range(len(rollout))):  # each turn's own columns, not only the whole row
        for turn, logprobs in zip(e.turns, e.logprobs):
            torch.testing.assert_close(logprobs, full_logprobs[row, turn.start : turn.end], atol=1e-4, rtol=0)

    # a second turn placed as if there were no feedback between the answers (shifted left by its length) differs
    shifted = torch.zeros_like(rollout.old_logprobs)
    for row, e in enumerate(rollout.episodes):
        gap = e.turns[1].start - e.turns[0].end
        for turn, logprobs in zip(e.turns, e.logprobs):
            start = turn.start - (gap if turn is e.turns[1] else 0)
            shifted[row, start : start + len(logprobs)] = logprobs
    assert not torch.allclose(shifted[mask], full_logprobs[mask], atol=1e-4, rtol=0)


def test_done_episodes_score_the_standing_answer_less_the_turn_cost_and_train_on_the_done_reply(tiny_chatglm_dir, problems_file, tmp_path):
    scorer = ScriptedTurns([(0.75, "infeasible"), (0.0, "no_model")])
    module, rollout = two_turn_rollout(tiny_chatglm_dir, problems_file, tmp_path, scorer, **{
        "rollout.end": "done", "rollout.turn_cost": 0.125, "ppo.kl.coef": 0.05})
    assert [e.end for e in rollout.episodes] == ["done"] * 4
    assert all(e.turns[1].stands and e.final.status == "infeasible" for e in rollout.episodes)
    assert rollout.scores.tolist() == [0.75 - 0.125] * 4

    module.compute_advantages(rollout)
    mask = rollout.response_mask.bool()
    for row, e in enumerate(rollout.episodes):
        done = e.turns[1]
        assert mask[row, done.start : done.end].all()  # the done reply's tokens are the policy's
        expected_last = 0.625 - module.kl_ctl.value * rollout.kl[row, done.end - 1]
        torch.testing.assert_close(rollout.rewards[row, done.end - 1], expected_last)  # the score on its last token
        assert (rollout.advantages[row, done.start : done.end] != 0).all()
    # the policy loss has a gradient on every token of the done replies
    logp = rollout.old_logprobs.clone().requires_grad_()
    loss, _ = losses.policy_loss(logp, rollout.old_logprobs, rollout.advantages, rollout.response_mask, 0.2, 0.2)
    loss.backward()
    for row, e in enumerate(rollout.episodes):
        assert (logp.grad[row, e.turns[1].start : e.turns[1].end] != 0).all()


def test_eval_end_done_keeps_the_previous_answer_and_stops(tiny_chatglm_dir, tmp_path, monkeypatch, capsys):
    """`eval --end done`: turn 1 a wrong model (solved, another optimum), turn 2 no model: the row
    keeps turn 1's result, ends `done`, and turn 3 is never sampled."""
    from solver_ppo import eval_policy
    from solver_ppo.cli import main

    items = [item for item in generate(12, seed=5, infeasible_fraction=0.0) if " >= " in item.reference_model][:2]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    real, calls = eval_policy.replies, []

    def scripted(loaded, model, prompts, sampling, generator=None, context_cache=None):
        out = real(loaded, model, prompts, sampling, generator, context_cache)
        calls.append(len(prompts))
        for reply, item in zip(out, items):
            reply.text = f"```lp\n{item.reference_model.replace(' >= ', ' <= ')}\n```" if len(calls) == 1 else "I am done."
        return out

    monkeypatch.setattr(eval_policy, "replies", scripted)
    out = tmp_path / "rows.jsonl"
    assert main(["eval", "--model", str(tiny_chatglm_dir), "--data", str(data), "--turns", "3", "--end", "done",
                 "--max-new-tokens", "4", "--workers", "1", "--system-prompt", "", "--instruction", "", "--out", str(out)]) == 0
    assert calls == [2, 2]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        first, second = row["turns"]
        assert row["ended_by"] == "done" and second["stands"] and second["response"] == "I am done."
        # the standing verdict after turn 2 is turn 1's, and it is the row's result
        assert (second["status"], second["reward"]) == (first["status"], first["reward"]) == (row["status"], row["reward"])
        assert row["status"] == "optimal" and 0 < row["reward"] < 1 and not row["matched"]
