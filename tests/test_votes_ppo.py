"""PPO trained label-free (evaluation.labels=votes) on LP and on code answers.

A random tiny model writes no model, so its sampler is replaced by a forced one: for each prompt,
two copies answer with the reference model and the third with another model. Everything after
sampling is the real train loop: the scorer's worker pool solves each answer with no reference,
the group's accepted models vote, and each answer is rewarded against the voted label. The
problems' answers are only watched: removing them from the data changes neither the rewards nor
the trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from solver_ppo.callbacks.solver_reward import SolverReward
from solver_ppo.config import load_config
from solver_ppo.data.code_answers import code_answer
from solver_ppo.data.synthetic import generate
from solver_ppo.evaluation import EvaluationConfig
from solver_ppo.models.loading import load_tokenizer

from builders import scripted_generation
from test_ppo_train import overrides, run_dir, scalars

pytestmark = pytest.mark.slow

OTHER_LP = "```lp\nMaximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n```"
W = EvaluationConfig().weights
VERDICT_ONLY = (W.format + W.solved) / (W.format + W.solved + W.answer)


def forced_generate(tokenizer, answers: dict[str, list[str]]):
    """A PolicyWithValue.generate that answers copy c of the prompt holding question q with answers[q][c % 3]."""
    seen: dict[str, int] = {}

    def generate(self, prompts, sampling, generator=None, use_cache=True, keep_logprobs=False, context_cache=None):
        texts = []
        for prompt in prompts:
            text = tokenizer.decode(prompt)
            question = next(q for q in answers if q in text)
            copy = seen[question] = seen.get(question, -1) + 1
            texts.append(answers[question][copy % 3])
        return scripted_generation(self, tokenizer, prompts, texts)

    return generate


def votes_run(model_dir, data: Path, root: Path, **extra):
    from solver_ppo.ppo.train import train

    cfg = load_config(None, overrides(model_dir, data, root, **{
        "evaluation.labels": "votes", "ppo.samples_per_prompt": 3, "ppo.minibatch_size": 3, "ppo.advantage": "rloo",
        "trainer.checkpoint_every": 0, **extra}))
    module, _ = train(cfg)
    return module, torch.load(run_dir(root) / "trainable.pt", weights_only=True)["state_dict"]


def test_votes_reward_the_plurality_and_never_read_the_answers(tiny_chatglm_dir, tmp_path, monkeypatch):
    from solver_ppo.models.policy import PolicyWithValue

    items = generate(2, seed=5, infeasible_fraction=0.0)
    answers = {i.question: [f"```lp\n{i.reference_model}\n```"] * 2 + [OTHER_LP] for i in items}
    tokenizer = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    full, bare = tmp_path / "full.jsonl", tmp_path / "bare.jsonl"
    full.write_text("".join(json.dumps(i.to_json()) + "\n" for i in items))
    bare.write_text("".join(json.dumps({"id": i.id, "question": i.question}) + "\n" for i in items))

    monkeypatch.setattr(PolicyWithValue, "generate", forced_generate(tokenizer, answers))
    module, weights = votes_run(tiny_chatglm_dir, full, tmp_path / "full")
    rollout = module.last_rollout
    assert rollout.scores.tolist() == pytest.approx([1.0, 1.0, VERDICT_ONLY] * 2)
    labels = [b["label"] for b in rollout.breakdowns]
    assert labels == pytest.approx([float(p.answer) for p in rollout.problems], rel=1e-4)
    logged = scalars(run_dir(tmp_path / "full"))
    assert logged["votes/labelled"] == [1.0, 1.0] and logged["votes/label_accuracy"] == [1.0, 1.0]
    assert logged["votes/reward_agreement"] == [1.0, 1.0]
    assert logged["solver/accuracy"] == pytest.approx([2 / 3, 2 / 3])  # against the true answers
    assert logged["solver/reward"] == pytest.approx([(2 + VERDICT_ONLY) / 3] * 2)

    monkeypatch.setattr(PolicyWithValue, "generate", forced_generate(tokenizer, answers))
    bare_module, bare_weights = votes_run(tiny_chatglm_dir, bare, tmp_path / "bare")
    assert bare_module.last_rollout.scores.tolist() == rollout.scores.tolist()
    assert weights.keys() == bare_weights.keys() and any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)
    for key in weights:
        assert torch.equal(weights[key], bare_weights[key]), key
    logged = scalars(run_dir(tmp_path / "bare"))
    assert logged["votes/labelled"] == [1.0, 1.0]
    assert "votes/label_accuracy" not in logged and "solver/accuracy" not in logged  # nothing to watch them against


def test_votes_on_code_answers_captured_in_the_sandbox(tiny_chatglm_dir, tmp_path, monkeypatch):
    from solver_ppo.models.policy import PolicyWithValue

    items = [item for item in generate(8, seed=11, infeasible_fraction=0.0) if item.sense == "maximize"][:2]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    # the right program twice, and the reference with its limits written as requirements (another model)
    answers = {i.question: [code_answer(i.reference_model, "pulp")] * 2
               + [code_answer(i.reference_model, "pulp").replace("<= rhs", ">= rhs")] for i in items}
    tokenizer = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    monkeypatch.setattr(PolicyWithValue, "generate", forced_generate(tokenizer, answers))
    module, _ = votes_run(tiny_chatglm_dir, data, tmp_path, **{"data.instruction": "pulp", "data.max_prompt_tokens": 4096,
                                                               "trainer.max_steps": 1})
    rollout = module.last_rollout
    assert [b["status"] for b in rollout.breakdowns][0::3] == ["optimal", "optimal"]
    assert rollout.scores[0::3].tolist() == rollout.scores[1::3].tolist() == [1.0, 1.0]
    assert (rollout.scores[2::3] < 0.5).all()
    assert [b["label"] for b in rollout.breakdowns][0::3] == pytest.approx([float(i.answer) for i in items], rel=1e-4)
    logged = scalars(run_dir(tmp_path))
    assert logged["votes/label_accuracy"] == [1.0] and logged["solver/accuracy"] == pytest.approx([2 / 3])


class SecondTurnVotes(SolverReward):
    """2-turn episodes scored by the real scorer on scripted answers: no model first, then
    answers[question][copy] (the copy: the episode's place in its group of 3)."""

    def __init__(self, config, answers: dict[str, list[str]]):
        super().__init__(config)
        self.answers, self.calls = answers, 0

    def begin(self, responses, problems):
        turn, self.calls = self.calls % 2, self.calls + 1
        texts = [self.answers[p.question][i % 3] if turn else "no idea yet" for i, p in enumerate(problems)]
        super().begin(texts, problems)


def test_two_turn_episodes_vote_with_their_last_answer(tiny_chatglm_dir, tmp_path, monkeypatch):
    from solver_ppo.ppo import train as train_mod

    items = generate(2, seed=5, infeasible_fraction=0.0)
    answers = {i.question: [f"```lp\n{i.reference_model}\n```"] * 2 + [OTHER_LP] for i in items}
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in items))
    monkeypatch.setattr(train_mod, "SolverReward", lambda config: SecondTurnVotes(config, answers))
    module, _ = votes_run(tiny_chatglm_dir, data, tmp_path, **{"rollout.turns": 2, "rollout.end": "turns",
                                                               "rollout.turn_cost": 0.125, "trainer.max_steps": 1})
    rollout = module.last_rollout
    assert [len(e.turns) for e in rollout.episodes] == [2] * 6
    assert rollout.scores.tolist() == pytest.approx([0.875, 0.875, VERDICT_ONLY - 0.125] * 2)
    assert scalars(run_dir(tmp_path))["votes/label_accuracy"] == [1.0]
