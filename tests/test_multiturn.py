"""Multi-turn episodes (`rollout.turns`): the policy reads the evaluation's feedback and answers again.

What is checked: the episode loop (ends, context limit, turn statistics), that feedback tokens
reach no loss term (perturbing their logits and values changes neither the loss nor a gradient),
that every estimator trains on 2-turn episodes, a real PPO run whose second turn (a pulp program
and an LP) is scored through the real pool and sandbox, and `eval --turns 2` on a tiny model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from solver_ppo.config import load_config
from solver_ppo.data.code_answers import code_answer
from solver_ppo.data.prompts import answer_text
from solver_ppo.data.synthetic import DONE_REPLY, generate
from solver_ppo.evaluation.turns import turn_statistics
from solver_ppo.ppo import losses
from solver_ppo.ppo.episode import Episode, Reply, Verdict, play, standing_matches
from solver_ppo.ppo.rollout import Rollout
from solver_ppo.ppo.scoring import RolloutScorer, RolloutScores

from builders import scripted_generation
from test_ppo_train import overrides, run_dir, scalars


# ---- the episode loop, without a model --------------------------------------------------------


def scripted_play(statuses: dict[str, list[str]], turns: int, end: str, max_context_tokens: int | None = None):
    """Episodes whose answers have the given statuses turn by turn; every answer is 3 tokens and
    every feedback message 2; returns the episodes and the batch sizes each turn sampled."""
    episodes = [Episode(name, [7] * 4) for name in statuses]
    batches = []

    def sample(contexts):
        batches.append(len(contexts))
        return [Reply([1, 2, 3], f"answer {len(c)}", False) for c in contexts]

    def score(replies, problems):
        verdicts = []
        for name in problems:
            turn = sum(1 for e in episodes if e.problem == name for _ in e.turns) - 1
            status = statuses[name][turn]
            verdicts.append(Verdict(float(status == "optimal"), status == "optimal", status, f"fb {status}"))
        return lambda: verdicts

    played = play(episodes, turns=turns, end=end, max_new_tokens=3, max_context_tokens=max_context_tokens,
                  sample=sample, score=score, feedback_ids=lambda text, last: [9, 9])
    return episodes, batches, played


def test_episodes_end_by_turns_solve_done_or_context():
    statuses = {"a": ["optimal", "optimal", "optimal"], "b": ["infeasible", "optimal", "optimal"],
                "c": ["no_model", "no_model", "infeasible"]}
    episodes, batches, played = scripted_play(statuses, turns=3, end="turns")
    assert played == 3 and batches == [3, 3, 3] and [e.end for e in episodes] == ["turns"] * 3
    a = episodes[0]
    # prompt 4, then answer 3 + feedback 2, answer 3 + feedback 2, answer 3: no feedback after the last
    assert a.tokens == [1, 2, 3, 9, 9] * 2 + [1, 2, 3]
    assert a.policy_mask == [True] * 3 + [False] * 2 + [True] * 3 + [False] * 2 + [True] * 3

    episodes, batches, _ = scripted_play(statuses, turns=3, end="solved")
    assert batches == [3, 2, 1]  # only unfinished episodes are answered, together
    assert [len(e.turns) for e in episodes] == [1, 2, 3] and [e.end for e in episodes] == ["solved", "solved", "turns"]
    assert standing_matches(episodes, 3) == [[True, True, True], [False, True, True], [False, False, False]]

    # done: an answer without a model after the first leaves the previous verdict standing
    episodes, _, _ = scripted_play({"x": ["infeasible", "no_model", "optimal"]}, turns=3, end="done")
    x = episodes[0]
    assert x.end == "done" and len(x.turns) == 2 and x.turns[1].stands and x.final.status == "infeasible"

    # context: 4 + 3 answered, + 2 feedback + 3 more would be 12 > 11: the episode ends cleanly
    episodes, batches, _ = scripted_play(statuses, turns=3, end="turns", max_context_tokens=11)
    assert batches == [3] and all(e.end == "context" and len(e.tokens) == 3 for e in episodes)


def test_turn_statistics_count_fixes_and_breaks():
    standing = [[False, True, True], [True, False, True], [True, True, True], [False, False, False]]
    stats = turn_statistics(standing, [3, 3, 1, 3])
    assert stats["acc@1"] == 0.5 and stats["acc@2"] == 0.5 and stats["acc@3"] == 0.75
    assert (stats["fixed@2"], stats["broke@2"], stats["fixed@3"], stats["broke@3"]) == (1, 1, 1, 0)
    assert stats["mean_turns"] == 2.5


# ---- the update: feedback tokens are context only ----------------------------------------------


def test_gae_and_returns_step_over_feedback_tokens():
    """A row with feedback tokens between its answers gets the advantages of the same row with
    the feedback cut out: feedback is not a step of the scan."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.float32)
    rewards, values = torch.randn(2, 8), torch.randn(2, 8)
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    disc = losses.discounted_returns(rewards, mask, gamma=0.9)
    for row in range(2):
        keep = mask[row].bool()
        a, r = losses.gae(rewards[row, keep][None], values[row, keep][None], torch.ones(1, int(keep.sum())), 0.9, 0.8)
        assert torch.allclose(adv[row, keep], a[0]) and torch.allclose(ret[row, keep], r[0])
        d = losses.discounted_returns(rewards[row, keep][None], torch.ones(1, int(keep.sum())), 0.9)
        assert torch.allclose(disc[row, keep], d[0])
        assert (adv[row, ~keep] == 0).all() and (disc[row, ~keep] == 0).all()


def test_feedback_tokens_change_neither_the_loss_nor_a_gradient(tiny_chatglm_dir, tmp_path):
    """Policy loss (token ratios), entropy bonus, KL loss term and value loss over a 2-turn row:
    noise on the logits and values of its feedback tokens changes nothing; on a policy token it does."""
    from solver_ppo.models.loading import load_model
    from solver_ppo.models.policy import build_policy
    from solver_ppo.ppo.module import PPOModule

    cfg = load_config(None, overrides(tiny_chatglm_dir, tmp_path / "unused.jsonl", tmp_path, **{
        "ppo.entropy_coef": 0.1, "ppo.kl.placement": "loss", "ppo.kl.estimator": "k3", "ppo.kl.coef": 0.5}))
    torch.manual_seed(0)
    loaded = load_model(cfg.model)
    module = PPOModule(cfg, loaded, build_policy(loaded, cfg.model))
    P, R, B = 5, 12, 2
    sequences = torch.randint(5, 200, (B, P + R))
    mask = torch.zeros(B, R)
    mask[:, 0:4] = 1  # answer 1
    mask[:, 8:11] = 1  # answer 2 (columns 4-7: feedback; 11: padding)
    rand = lambda: torch.randn(B, R)  # noqa: E731
    mb = Rollout(problems=[None] * B, responses=["", ""], sequences=sequences, attention_mask=torch.ones(B, P + R, dtype=torch.long),
                 prompt_length=P, response_mask=mask, truncated=torch.zeros(B, dtype=torch.bool), old_logprobs=rand() - 3,
                 ref_logprobs=rand() - 3, values=rand(), advantages=rand() * mask, returns=rand())

    def loss_and_grads(noise_at: int | None) -> tuple[float, list[torch.Tensor]]:
        handles = []
        if noise_at is not None:
            def logits_noise(_m, _i, out):  # the head's (B, R, V) output: column t predicts response token t
                out = out.clone()
                out[:, noise_at] += 5 * torch.randn_like(out[:, noise_at])
                return out

            def value_noise(_m, _i, out):  # (B, R)
                out = out.clone()
                out[:, noise_at] += 3.0
                return out

            handles = [module.policy.causal_lm.get_output_embeddings().register_forward_hook(logits_noise),
                       module.policy.value_head.register_forward_hook(value_noise)]
        module.policy.zero_grad(set_to_none=True)
        loss, _ = module.minibatch_loss(mb)
        loss.backward()
        for h in handles:
            h.remove()
        grads = [p.grad.clone() for p in module.policy.parameters() if p.grad is not None]
        return float(loss), grads

    clean, clean_grads = loss_and_grads(None)
    for column in (4, 5, 7, 11):  # feedback tokens and padding
        noisy, noisy_grads = loss_and_grads(column)
        assert noisy == clean
        assert all(torch.equal(a, b) for a, b in zip(clean_grads, noisy_grads))
    assert loss_and_grads(9)[0] != clean  # a token of the second answer counts


# ---- training on 2-turn episodes ------------------------------------------------------------


class TurnScorer(RolloutScorer):
    """Scores by turn and sample: the first answer of every episode 0.25 (status infeasible, so
    its episode goes on), the second 1 in the first sample of a group and 0 in the others."""

    def __init__(self, group_size: int):
        self.k, self.calls = group_size, 0

    def begin(self, responses, problems):
        turn, self.calls = self.calls % 2, self.calls + 1
        self.n = len(responses)
        if turn == 0:
            self.scored = RolloutScores(scores=[0.25] * self.n, breakdowns=[{"status": "infeasible"}] * self.n,
                                        matched=[False] * self.n, feedback=["Solver status: infeasible."] * self.n)
        else:
            right = [i % self.k == 0 for i in range(self.n)]
            self.scored = RolloutScores(scores=[float(r) for r in right], breakdowns=[{"status": "optimal"}] * self.n,
                                        matched=right, feedback=["Objective value: 3."] * self.n)

    def finish(self, module):
        return self.scored

    def validate(self, responses, problems):
        raise AssertionError("no data.val in this run")

    def record_validation(self, results, standing, turns_taken):
        raise AssertionError("no data.val in this run")


def train_with(cfg, scorer):
    from solver_ppo.ppo import train as train_mod

    original = train_mod.SolverReward
    train_mod.SolverReward = lambda config: scorer
    try:
        return train_mod.train(cfg)
    finally:
        train_mod.SolverReward = original


ESTIMATORS = {
    "gae": {},
    "rloo": {"ppo.advantage": "rloo"},
    "grpo": {"ppo.advantage": "grpo", "ppo.whiten_advantages": False, "ppo.kl.placement": "loss", "ppo.kl.estimator": "k3"},
    "dr_grpo": {"ppo.advantage": "grpo", "ppo.scale_rewards": "none", "ppo.loss_aggregation": "constant_length"},
    "gspo": {"ppo.advantage": "grpo", "ppo.ratio": "sequence", "ppo.loss_aggregation": "sequence_mean"},
    "reinforce_pp": {"ppo.advantage": "reinforce_pp", "ppo.kl.partial": True},
}


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(item.to_json()) + "\n" for item in generate(8, seed=3)))
    return path


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_each_estimator_trains_on_two_turn_episodes(name, tiny_chatglm_dir, problems_file, tmp_path):
    extra = {**ESTIMATORS[name], "rollout.turns": 2, "rollout.end": "turns", "rollout.turn_cost": 0.125, "trainer.max_steps": 1,
             "trainer.checkpoint_every": 0, "ppo.epochs": 1}
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **extra))
    module, _ = train_with(cfg, TurnScorer(cfg.ppo.samples_per_prompt))
    rollout, tokenizer = module.last_rollout, module.tokenizer
    mask = rollout.response_mask
    for row, episode in enumerate(rollout.episodes):
        first, second = episode.turns
        assert episode.end == "turns" and first.verdict.status == "infeasible" and second.start > first.end
        # between the answers: the feedback on the first as an observation message (whose role token
        # the answer may have written itself, as its stop token), outside the mask
        between = rollout.sequences[row, rollout.prompt_length + first.end - 1 : rollout.prompt_length + second.start]
        text = tokenizer.decode(between.tolist(), skip_special_tokens=False)
        assert text.endswith("<|observation|>\nSolver status: infeasible.<|assistant|>"), text
        assert (mask[row, first.end : second.start] == 0).all()
        assert (mask[row, first.start : first.end] == 1).all() and (mask[row, second.start : second.end] == 1).all()
        assert (rollout.advantages[row][mask[row] == 0] == 0).all()
    # the score of the last answer, less the cost of the second turn
    assert rollout.scores.tolist() == [0.875, -0.125, 0.875, -0.125]
    if name in ("rloo", "grpo", "dr_grpo", "gspo"):  # one advantage on every token of both answers
        per_row = rollout.advantages.sum(-1) / mask.sum(-1)
        assert torch.allclose(rollout.advantages, per_row[:, None] * mask, atol=1e-6)
        assert (per_row[0::2] > 0).all() and (per_row[1::2] < 0).all()
    logged = scalars(run_dir(tmp_path))
    assert logged["turns/acc@1"] == [0.0] and logged["turns/acc@2"] == [0.5] and logged["turns/fixed@2"] == [0.5]
    assert logged["turns/mean_turns"] == [2.0] and logged["train/policy_tokens"] == [float(mask.sum())]
    assert any(float(v.abs().max()) > 0 for k, v in module.policy.trainable_state_dict().items() if "lora_B" in k)


def test_a_training_run_whose_episodes_reach_the_context_limit_ends_them_cleanly(tiny_chatglm_dir, tmp_path):
    """rollout.turns=3 under rollout.max_context_tokens set so that a second answer always fits and a
    third never does: every episode ends by the context limit after two answers, within the limit,
    without feedback after its last answer, and the run trains on those rows and logs it."""
    from solver_ppo.data.formats import iter_problems
    from solver_ppo.data.prompts import build_messages
    from solver_ppo.models.chat import chat_format_for
    from solver_ppo.models.loading import load_tokenizer

    item = generate(1, seed=3)[0].to_json()  # one problem four times: every prompt has the same length
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({**item, "id": f"p{i}"}) + "\n" for i in range(4)))
    tokenizer = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    chat = chat_format_for("auto", tokenizer)
    problem = next(iter_problems(data))
    settings = {"rollout.turns": 3, "rollout.end": "turns", "sampling.max_new_tokens": 8, "trainer.checkpoint_every": 0,
                "ppo.epochs": 1}
    d = load_config(None, overrides(tiny_chatglm_dir, data, tmp_path, **settings)).data
    P = len(chat.encode_prompt(tokenizer, build_messages(problem, d.system_prompt, d.instruction)))
    F = len(chat.encode_feedback(tokenizer, "Solver status: infeasible."))  # TurnScorer's first-turn feedback
    N = 8  # sampling.max_new_tokens
    # An answer is 1 to N tokens (a stop token included); a feedback message F, or F - 1 after an
    # answer that wrote its <|observation|> role token itself. A second answer always fits:
    # P + N + F + N <= limit; a third never does: P + 1 + (F - 1) + 1 + (F - 1) + N > limit.
    limit = P + 2 * F + N - 2
    assert F >= N + 2
    cfg = load_config(None, overrides(tiny_chatglm_dir, data, tmp_path, **settings, **{"rollout.max_context_tokens": limit}))
    module, _ = train_with(cfg, TurnScorer(cfg.ppo.samples_per_prompt))
    assert module.iteration == 2
    rollout = module.last_rollout
    for row, episode in enumerate(rollout.episodes):
        assert len(episode.prompt) == P and episode.end == "context" and len(episode.turns) == 2
        assert len(episode.context) <= limit
        assert episode.turns[-1].end == len(episode.tokens)  # the last answer closes the row: no feedback after it
        assert rollout.response_mask[row].sum() == episode.turns[0].end - episode.turns[0].start + (
            episode.turns[1].end - episode.turns[1].start)
    assert rollout.scores.tolist() == [1.0, 0.0, 1.0, 0.0]  # the second answer's score stands
    logged = scalars(run_dir(tmp_path))
    assert logged["turns/mean_turns"] == [2.0, 2.0] and logged["turns/context_ends"] == [1.0, 1.0]
    assert logged["turns/acc@3"] == logged["turns/acc@2"] == [0.5, 0.5]
    assert len(logged["train/policy_loss"]) == 2 and all(math.isfinite(v) for v in logged["train/policy_loss"])
    assert any(float(v.abs().max()) > 0 for k, v in module.policy.trainable_state_dict().items() if "lora_B" in k)


# ---- the real pool and sandbox score the second turn -----------------------------------------


def forced_turns(tokenizer, items):
    """A PolicyWithValue.generate whose first answer has no model, whose second is the reference
    (as a pulp program in the first sample of a prompt, as an LP in the second), and whose third,
    after the feedback on a solved model, is the done reply: the second model stands."""

    def generate(self, prompts, sampling, generator=None, use_cache=True, keep_logprobs=False, context_cache=None):
        texts, seen = [], {}
        for prompt in prompts:
            text = tokenizer.decode(prompt)
            item = next(i for i in items if i.question in text)
            copy = seen[item.id] = seen.get(item.id, -1) + 1
            if "Solver status" not in text:  # first turn: no feedback in the context yet
                texts.append("I am not sure yet.")
            elif "Objective value" in text:  # the second model solved: it stands
                texts.append(DONE_REPLY)
            else:
                texts.append(code_answer(item.reference_model, "pulp") if copy == 0 else answer_text(item))
        return scripted_generation(self, tokenizer, prompts, texts, elapsed_s=1.0)

    return generate


@pytest.mark.slow
def test_second_turn_scored_through_the_real_pool_and_sandbox(tiny_chatglm_dir, tmp_path, monkeypatch):
    from solver_ppo.models.loading import load_tokenizer
    from solver_ppo.models.policy import PolicyWithValue
    from solver_ppo.ppo.train import train

    items = [item for item in generate(8, seed=11, infeasible_fraction=0.0) if item.sense == "maximize"][:2]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    tokenizer = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    monkeypatch.setattr(PolicyWithValue, "generate", forced_turns(tokenizer, items))
    cfg = load_config(None, overrides(tiny_chatglm_dir, data, tmp_path, **{
        "rollout.turns": 3, "rollout.end": "done", "ppo.advantage": "rloo", "trainer.max_steps": 1,
        "trainer.checkpoint_every": 0, "data.max_prompt_tokens": 4096, "ppo.epochs": 1}))
    module, _ = train(cfg)
    assert cfg.evaluation.feedback  # turned on by rollout.turns > 1
    rollout = module.last_rollout
    for episode in rollout.episodes:
        first, second, third = episode.turns
        assert episode.end == "done" and third.stands and third.verdict is second.verdict
        assert first.verdict.status == "no_model"
        assert first.verdict.feedback.startswith("Solver status: no_model")
        assert second.verdict.status == "optimal" and second.verdict.matched
        # what the policy read is the real feedback on the solved model, never the reference's answer
        assert "Objective value" in second.verdict.feedback and "Nonzero variables" in second.verdict.feedback
    assert [e.final.breakdown["format"] for e in rollout.episodes] == [1.0] * 4
    assert "```python" in rollout.episodes[0].turns[1].text and "```lp" in rollout.episodes[1].turns[1].text
    logged = scalars(run_dir(tmp_path))
    assert logged["turns/acc@1"] == [0.0] and logged["turns/acc@2"] == [1.0] and logged["turns/acc@3"] == [1.0]
    assert logged["turns/mean_turns"] == [3.0]
    # the logged solver metrics are the standing answers', not the done replies' (which have no model)
    assert logged["solver/accuracy"] == [1.0] and logged["solver/format_rate"] == [1.0]
    assert logged["solver/reward"] == [pytest.approx(float(rollout.scores.mean()))]


# ---- eval --turns -----------------------------------------------------------------------------


def test_eval_turns_reports_accuracy_after_each_turn(tiny_chatglm_dir, tmp_path, monkeypatch, capsys):
    """The tiny model answers for real (no model: every turn no_model, its feedback in the next
    context); then with its answers replaced by a flipped model at turn 1 and the reference at
    turn 2, acc@1 = 0, acc@2 = 1 and turn 2 fixed every answer."""
    from solver_ppo import eval_policy
    from solver_ppo.cli import main

    items = [item for item in generate(12, seed=5, infeasible_fraction=0.0) if " >= " in item.reference_model][:3]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    args = ["eval", "--model", str(tiny_chatglm_dir), "--data", str(data), "--turns", "2", "--end", "turns", "--max-new-tokens", "6",
            "--workers", "1", "--system-prompt", "", "--instruction", ""]
    assert main([*args, "--out", str(tmp_path / "random.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "random.jsonl").read_text().splitlines()]
    assert [len(r["turns"]) for r in rows] == [2, 2, 2] and all(r["ended_by"] == "turns" for r in rows)
    assert all(t["feedback"].startswith("Solver status: ") for r in rows for t in r["turns"])
    assert all(r["expected"] == pytest.approx(float(i.answer)) for r, i in zip(rows, items))

    real, calls = eval_policy.replies, []

    def scripted(loaded, model, prompts, sampling, generator=None, context_cache=None):
        out = real(loaded, model, prompts, sampling, generator, context_cache)
        turn = len(calls)
        calls.append(prompts)
        for reply, item in zip(out, items):
            model_text = item.reference_model if turn else item.reference_model.replace(" >= ", " <= ")
            reply.text = f"```lp\n{model_text}\n```"
        return out

    monkeypatch.setattr(eval_policy, "replies", scripted)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "scripted.jsonl")]) == 0
    table = capsys.readouterr().out
    assert "| 1 | 0.000 | — | — |" in table and "| 2 | 1.000 | 3 | 0 |" in table and "mean turns: 2.00" in table
    rows = [json.loads(line) for line in (tmp_path / "scripted.jsonl").read_text().splitlines()]
    assert all(r["matched"] and not r["turns"][0]["matched"] for r in rows)
    # the second turn's context holds the first answer and the feedback on it
    assert all(len(second) > len(first) for first, second in zip(*calls))



def test_revision_headroom_sorts_first_answers_by_what_their_feedback_shows(tiny_chatglm_dir, tmp_path, monkeypatch, capsys):
    """tools/revision_headroom.py on real `eval --turns 2` rows: first answers right, with every
    requirement flipped (every variable 0), with one right-hand side miscopied (a nonzero optimum)
    and without a model; all revised to the reference. Only the flipped and the model-less ones
    count as exposed, and the miscopied one is told apart from the reference by a number."""
    import importlib.util

    from solver_ppo import eval_policy
    from solver_ppo.cli import main

    tool = Path(__file__).resolve().parents[1] / "tools" / "revision_headroom.py"
    spec = importlib.util.spec_from_file_location("revision_headroom", tool)
    headroom = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headroom)
    items = [i for i in generate(40, seed=5, infeasible_fraction=0.0) if i.family == "diet"][:4]
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))

    def miscopied(model: str) -> str:
        head, rhs = model.split(" >= ", 1)[0], model.split(" >= ", 1)[1].split("\n", 1)
        return f"{head} >= {float(rhs[0]) + 50:g}\n{rhs[1]}"

    first = [items[0].reference_model, items[1].reference_model.replace(" >= ", " <= "), miscopied(items[2].reference_model),
             None]
    real, calls = eval_policy.replies, []

    def scripted(loaded, model, prompts, sampling, generator=None, context_cache=None):
        out = real(loaded, model, prompts, sampling, generator, context_cache)
        turn = len(calls)
        calls.append(prompts)
        for reply, item, text in zip(out, items, first):
            text = item.reference_model if turn else text
            reply.text = "no idea" if text is None else f"```lp\n{text}\n```"
        return out

    monkeypatch.setattr(eval_policy, "replies", scripted)
    rows = tmp_path / "rows.jsonl"
    assert main(["eval", "--model", str(tiny_chatglm_dir), "--data", str(data), "--turns", "2", "--end", "turns",
                 "--max-new-tokens", "4", "--workers", "1", "--system-prompt", "", "--instruction", "",
                 "--out", str(rows)]) == 0
    # eval prints the same counts for the first turn (solver_ppo.evaluation.summary.exposure)
    assert "| first answer | 4 | 3 | 2 | 0.667 | 1 | every variable 0 1, no_model 1 |" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["revision_headroom.py", str(rows), "--data", str(data)])
    assert headroom.main() == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[-1]) == {"problems": 4, "accuracy_first": 0.25, "exposed_wrong": 2,
                                                "revision_ceiling_points": 50.0, "fixed": 3, "unexposed_wrong": 1}
    assert "| wrong, every variable 0 | 1 | 0.250 | 0 | 1 | 0 | 0 |" in out
    assert "| wrong, nonzero optimum | 1 | 0.250 | 0 | 1 | 0 | 0 |" in out
    assert "| a number differs (objective, coefficient or right-hand side) | 1 |" in out
    assert "not compared" not in out

    # three turns: a model revised at turn 2 and kept at turn 3 (a done reply) counts as revised
    def turn(matched, exposed=None, stands=False):
        return {"response": "", "status": "optimal", "matched": matched, "exposed": exposed, "stands": stands}

    three = [{"id": items[0].id, "matched": True, "turns": [turn(False, True), turn(True), turn(True, stands=True)]},
             {"id": items[1].id, "matched": True, "turns": [turn(True), turn(True, stands=True), turn(True, stands=True)]}]
    rows.write_text("".join(json.dumps(row) + "\n" for row in three))
    assert headroom.main() == 0
    out = capsys.readouterr().out
    assert "| right | 1 | 0.500 | 1 | 0 | 0 | 0 |" in out
    assert "| wrong, every variable 0 | 1 | 0.500 | 0 | 1 | 0 | 0 |" in out  # said done at turn 3, fixed at turn 2

# ---- the KV cache carries over between turns ----------------------------------------------------


@pytest.mark.parametrize("family", ["chatglm", "llama"])
def test_a_turn_continues_from_the_cache_as_a_fresh_pass_over_the_whole_context(family, tiny_chatglm_dir):
    """ContextCache reads only each row's new tokens (its feedback), for the rows that go on; the
    answers and their log-probs are those of a fresh generate over the whole context."""
    from solver_ppo.models.config import ModelConfig, SamplingConfig
    from solver_ppo.models.generation import ContextCache, generate as fresh
    from solver_ppo.models.loading import load_model
    from tests.builders import tiny_llama

    if family == "chatglm":
        model = load_model(ModelConfig(family="chatglm", path=str(tiny_chatglm_dir))).model.eval()
    else:
        model = tiny_llama()
    vocab = model.get_output_embeddings().weight.shape[0]
    stop = [5]  # a row that writes it ends early: its cache then holds masked padding after the answer
    kw = {"pad_token_id": 0, "stop_token_ids": stop, "sampling": SamplingConfig(max_new_tokens=6, do_sample=False),
          "keep_logprobs": True}
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randint(6, vocab, (n,), generator=g).tolist() for n in (5, 9, 3)]
    cache = ContextCache()
    with torch.no_grad():
        first = cache.generate(model, contexts, **kw)
        replies = [row[mask].tolist() for row, mask in zip(first.responses, first.response_mask.bool())]
        for turn in range(2):  # rows 0 and 2 go on with feedback of different lengths, then row 2 alone
            keep = [0, 2] if turn == 0 else [1]
            feedback = [torch.randint(6, vocab, (n,), generator=g).tolist() for n in (4, 7)][: len(keep)]
            contexts = [contexts[i] + replies[i] + feedback[k] for k, i in enumerate(keep)]
            continued = cache.generate(model, contexts, **kw)
            whole = fresh(model, contexts, **kw)
            assert torch.equal(continued.responses, whole.responses)
            assert torch.equal(continued.response_mask, whole.response_mask)
            m = whole.response_mask
            assert torch.allclose(continued.logprobs[m], whole.logprobs[m], atol=1e-4)
            replies = [row[mask].tolist() for row, mask in zip(continued.responses, continued.response_mask.bool())]
    assert cache.rows and cache.rows[0][: len(contexts[0])] == contexts[0]


def test_feedback_message_tokens_in_each_chat_format(tiny_chatglm_dir):
    """ChatGLM3: an <|observation|> message (whose role token an answer may already have written),
    then the generation prompt; plain: a user message, through the chat template where there is one."""
    from transformers import LlamaTokenizer

    from solver_ppo.errors import UserError
    from solver_ppo.models.chat import chat_format_for
    from solver_ppo.models.loading import load_tokenizer

    glm = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    chat = chat_format_for("chatglm3", glm)
    obs, assistant = chat.special_ids["<|observation|>"], chat.special_ids["<|assistant|>"]
    enc = lambda tok, text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    body = enc(glm, "\n") + enc(glm, "Solver status: infeasible.")
    assert chat.encode_feedback(glm, "Solver status: infeasible.", after=glm.eos_token_id) == [obs, *body, assistant]
    assert chat.encode_feedback(glm, "Solver status: infeasible.", after=obs) == [*body, assistant]

    llama = LlamaTokenizer(vocab_file=str(tiny_chatglm_dir / "tokenizer.model"), legacy=False)
    plain = chat_format_for("plain", llama)
    assert plain.encode_feedback(llama, "status: optimal") == enc(llama, "\nUser: status: optimal\nAssistant:")
    llama.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                           "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert plain.encode_feedback(llama, "status: optimal") == enc(llama, "[user]status: optimal[assistant]")
    llama.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
    with pytest.raises(UserError, match="renders a conversation differently once it goes on"):
        plain.encode_feedback(llama, "status: optimal")
