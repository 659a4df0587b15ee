"""The engine adapters (app/integrations): each gives exactly the reward `solver-ppo score` writes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from solver_ppo.errors import UserError
from solver_ppo.integrations import openrlhf, scorer, trl, verl

SAMPLES = Path(__file__).resolve().parents[1] / "app" / "evaluation" / "samples"


@pytest.fixture(scope="module")
def samples():
    problems = [json.loads(line) for line in (SAMPLES / "problems.jsonl").read_text().splitlines()]
    answers = [json.loads(line)["answer"] for line in (SAMPLES / "answers.jsonl").read_text().splitlines()]
    out = subprocess.run([sys.executable, "-m", "app", "score", "--data", str(SAMPLES / "problems.jsonl"), "--answers", str(SAMPLES / "answers.jsonl")],
                         capture_output=True, text=True, check=True).stdout
    rewards = [json.loads(line)["reward"] for line in out.splitlines()]
    assert len(rewards) == len(problems) == 12 and 0.0 < sum(rewards) < 12.0  # a mix of good and bad answers
    yield problems, answers, rewards
    scorer.shutdown()


def _label(p: dict) -> str:
    return json.dumps({"answer": p.get("answer"), "reference_model": p.get("reference_model")})


def test_trl_reward_equals_score(samples):
    problems, answers, rewards = samples
    metrics, extra = {}, {}
    got = trl.solver_reward(prompts=[p["question"] for p in problems], completions=answers, completion_ids=None,
                            answer=[p.get("answer") for p in problems], reference_model=[p.get("reference_model") for p in problems],
                            log_metric=metrics.__setitem__, log_extra=extra.__setitem__, trainer_state=None)
    assert got == rewards
    assert metrics["solver/accuracy"] == pytest.approx(5 / 12)  # 5 of the 12 sample answers match their optimum
    assert len(extra["solver_status"]) == 12 and extra["solver_status"][0] == "optimal"
    # conversational completions, the async form, and a row without a reference (None: TRL skips it)
    chat = [[{"role": "assistant", "content": a}] for a in answers[:3]] + [[{"role": "assistant", "content": "x"}]]
    got = asyncio.run(trl.solver_reward_async(prompts=[[{"role": "user", "content": "q"}]] * 4, completions=chat,
                                              answer=[p.get("answer") for p in problems[:3]] + [None],
                                              reference_model=[p.get("reference_model") for p in problems[:3]] + [None]))
    assert got == rewards[:3] + [None]


def test_verl_forms_equal_score(samples):
    problems, answers, rewards = samples
    one = [verl.compute_score("optimization", answers[0], _label(problems[0])), asyncio.run(verl.compute_score_async("optimization", answers[1], _label(problems[1])))]
    batch = verl.compute_score_batch(["optimization"] * 12, answers, [p.get("answer") for p in problems],
                                     [{"reference_model": p.get("reference_model")} for p in problems])
    assert [e["score"] for e in one] == rewards[:2]
    assert [e["score"] for e in batch] == rewards
    assert {frozenset(e) for e in batch} == {frozenset({"score", "format", "solved", "answer", "graph", "has_graph", "acc", "labelled"})}


GROUPS = ["p1"] * 3 + ["p2"] * 3  # two prompts' completions: 11 twice and 10, infeasible twice and 11
GOOD_11 = "```lp\nMaximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd\n```"
TEN = GOOD_11.replace("3 x + 2 y", "2 x + 4 y")
NONE_FEASIBLE = "```lp\nMaximize\n obj: x\nSubject To\n low: x >= 4\n high: x <= 3\nEnd\n```"
VOTED = [1.0, 1.0, 0.3 / 0.8, 1.0, 1.0, 0.3 / 0.8]  # against each prompt's label: the plurality (11; infeasible)


def test_engines_without_answers_vote_per_prompt(samples):
    completions = [GOOD_11, GOOD_11, TEN, NONE_FEASIBLE, NONE_FEASIBLE, GOOD_11]
    metrics = {}
    got = trl.solver_reward(prompts=GROUPS, completions=completions, log_metric=metrics.__setitem__)
    assert got == pytest.approx(VOTED) and metrics["solver/labelled"] == 1.0
    chat = [[{"role": "user", "content": g}] for g in GROUPS]
    assert asyncio.run(trl.solver_reward_async(prompts=chat, completions=completions)) == pytest.approx(VOTED)
    batch = verl.compute_score_batch(["optimization"] * 6, completions, [None] * 6, [{"index": g} for g in GROUPS])
    assert [e["score"] for e in batch] == pytest.approx(VOTED) and {e["labelled"] for e in batch} == {1.0}
    with pytest.raises(ValueError, match=r"needs extra_info\['index'\].*rows \[0, 1, 2, 3, 4\] have none"):
        verl.compute_score_batch(["optimization"] * 6, completions, [None] * 6, [{}] * 6)


@pytest.fixture
def votes_on():
    scorer.shutdown()
    scorer.configure(labels="votes")
    yield
    scorer.shutdown()
    scorer.configure()


def test_votes_mode_ignores_answers_and_per_row_forms_refuse_it(votes_on):
    completions = [GOOD_11, GOOD_11, TEN, NONE_FEASIBLE, NONE_FEASIBLE, GOOD_11]
    wrong_answers = ["3"] * 6  # never read for the reward
    assert trl.solver_reward(prompts=GROUPS, completions=completions, answer=wrong_answers) == pytest.approx(VOTED)
    batch = verl.compute_score_batch(["optimization"] * 6, completions, wrong_answers, [{"index": g} for g in GROUPS])
    assert [e["score"] for e in batch] == pytest.approx(VOTED)
    with pytest.raises(UserError, match="veRL's compute_score scores one answer at a time, but evaluation.labels=votes"):
        verl.compute_score("optimization", GOOD_11, "11")
    with pytest.raises(UserError, match="OpenRLHF's reward_func scores one answer at a time"):
        openrlhf.reward_func([GOOD_11], [""], ["11"])


def test_openrlhf_reward_func_equals_score(samples):
    problems, answers, rewards = samples
    prompts = [f"<|user|>{p['question']}\n<|assistant|>" for p in problems]
    out = openrlhf.reward_func([pr + a + "</s><pad><pad>" for pr, a in zip(prompts, answers)], prompts, [_label(p) for p in problems])
    assert out["rewards"] == out["scores"] == rewards
    assert set(out["extra_logs"]) == {"solver_format", "solver_solved", "solver_answer", "solver_accuracy"}
    assert openrlhf.response_of("A prompt\nQ:  answer", "A prompt\nQ: ") == " answer"
    assert openrlhf.response_of("A promt\nQ: answer", "A prompt\nQ:") == " answer"  # detokenized prompt differs: cut after its last line


def test_labels():
    assert scorer.reference_from_label(12).value == 12.0
    assert scorer.reference_from_label("Infeasible").infeasible
    ref = scorer.reference_from_label('{"answer": "1,234.5", "reference_model": "Minimize\\n obj: x\\nEnd"}')
    assert ref.value == 1234.5 and ref.model_text.startswith("Minimize")
    with pytest.raises(UserError, match="unknown keys \\['optimum'\\]"):
        scorer.reference_from_label({"optimum": 3})
    with pytest.raises(UserError, match="not a number or 'infeasible'"):
        scorer.reference_from_label("twelve")
    with pytest.raises(UserError, match="neither an answer nor a reference_model"):
        scorer.reference_from_label(None)


def test_settings_from_yaml_and_kwargs(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  path: x\nevaluation:\n  workers: 3\n  match: {kind: relative, tolerance: 0.05}\n")
    config = scorer.load_evaluation_config(path, limits={"time_limit_s": 2.0})
    assert (config.workers, config.match.kind, config.match.tolerance, config.limits.time_limit_s) == (3, "relative", 0.05, 2.0)
    with pytest.raises(UserError, match="unknown config key 'evaluation.wrokers'"):
        scorer.load_evaluation_config(wrokers=3)
    with pytest.raises(UserError, match="evaluation.workers=0 is outside its allowed range"):
        scorer.load_evaluation_config(workers=0)


def test_integrations_import_no_torch():
    code = ("import sys, solver_ppo.integrations.trl, solver_ppo.integrations.verl, solver_ppo.integrations.openrlhf, solver_ppo.integrations.server; "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'peft') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.fixture
def feedback_on():
    scorer.shutdown()
    scorer.configure(feedback=True)
    yield
    scorer.shutdown()
    scorer.configure()


INFEASIBLE = "Maximize\n obj: x\nSubject To\n low: x >= 4\n high: x <= 3\nEnd"
GOOD = "Maximize\n obj: 3 x + 2 y\nSubject To\n c1: x + y <= 4\n c2: x + 3 y <= 6\nBounds\n x <= 3\nEnd"  # optimum 11


def test_multi_turn_feedback(feedback_on):
    """TRL's environment tool, veRL's Interaction and OpenRLHF's agent step: the feedback message,
    turn scores equal to `score`'s, and the end of the episode once the answer matches."""
    env = trl.SolverEnvironment()
    env.reset(prompt="p", answer="11")
    assert "cannot all hold (an irreducible infeasible subset): low, high" in env.check_model(INFEASIBLE)
    assert "Objective value: 11." in env.check_model("import pyscipopt\nm = pyscipopt.Model()\nx = m.addVar(ub=3)\ny = m.addVar(ub=1)\n"
                                                     "m.setObjective(3*x + 2*y, 'maximize')\nm.optimize()")

    interaction = verl.SolverInteraction({"name": "solver", "max_turns": 3})

    async def episode():
        iid = await interaction.start_interaction(ground_truth="11")
        first = await interaction.generate_response(iid, [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"```lp\n{INFEASIBLE}\n```"}])
        second = await interaction.generate_response(iid, [{"role": "assistant", "content": f"```lp\n{GOOD}\n```"}])
        score = await interaction.calculate_score(iid)
        await interaction.finalize_interaction(iid)
        return first, second, score

    first, second, score = asyncio.run(episode())
    assert first[0] is False and "Solver status: infeasible" in first[1] and first[2] == scorer.score_rows([f"```lp\n{INFEASIBLE}\n```"], [scorer.reference_from_label(11)])[0]["reward"]
    assert second[0] is True and second[2] == score == 1.0

    step = asyncio.run(openrlhf.agent_func({"label": "11", "action_text": f"```lp\n{INFEASIBLE}\n```", "observation_text": "q"}))
    assert step["done"] is False and "infeasible" in step["environment_feedback"] and step["rewards"].item() == first[2]
    step2 = asyncio.run(openrlhf.agent_func({"label": "11", "action_text": f"```lp\n{GOOD}\n```", "turn": 1, "previous_reward": step["scores"]}))
    assert step2["done"] is True and step["rewards"].item() + step2["rewards"].item() == pytest.approx(1.0)  # the steps sum to the last answer's reward


def test_a_process_that_never_shuts_the_pool_down_still_exits():
    """The pool's stream loop must not hold the interpreter at exit (an executor thread would)."""
    code = ("from solver_ppo.integrations.trl import solver_reward; "
            "print(solver_reward(prompts=['q'], completions=['```lp\\nMaximize\\n obj: x\\nSubject To\\n c: x <= 2\\nEnd\\n```'], answer=['2']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "[1.0]"), out.stderr[-500:]
