"""Every engine adapter scores with the user's settings, given each documented way:
`scorer.configure`, $SOLVER_PPO_EVAL_CONFIG, and veRL's `reward_kwargs.eval_config` (and its
Interaction's `eval_config`): the reward functions and the multi-turn steps (veRL's Interaction,
OpenRLHF's agent) alike.

The settings are all non-default (a relative tolerance, other weights, a small code output limit)
and the answers are chosen so that each setting changes their reward: an adapter that ignored one
would give the default reward. Code answers (pyscipopt, gurobipy) run through the real sandbox."""

from __future__ import annotations

import asyncio

import pytest

from solver_ppo.evaluation import EvaluationConfig, score_answer
from solver_ppo.integrations import openrlhf, scorer, trl, verl

SETTINGS = """evaluation:
  workers: 2
  match: {kind: relative, tolerance: 0.05}
  weights: {format: 0.3, solved: 0.3, answer: 0.4}
  code: {output_kb: 4}
"""
# each answer's optimum and label: 10.3 against 10 matches only with the 5 % relative tolerance
ANSWERS = [
    ("```lp\nMaximize\n obj: x\nSubject To\n c: x <= 10.3\nEnd\n```", 10),
    ("```python\nimport pyscipopt\nm = pyscipopt.Model()\nx = m.addVar('x', ub=10.3)\nm.setObjective(x, 'maximize')\nm.optimize()\n```", 10),
    # a wrong optimum: format and solved only, so the weights set its reward
    ("```python\nimport pyscipopt\nm = pyscipopt.Model()\nx = m.addVar('x', ub=7)\nm.setObjective(x, 'maximize')\nm.optimize()\n```", 10),
    # 8 KB of output before the model: killed past the 4 KB limit, scored normally by default
    ("```python\nimport gurobipy as gp\nfrom gurobipy import GRB\nprint('.' * 8192)\nm = gp.Model()\nx = m.addVar(ub=10, name='x')\n"
     "m.setObjective(x, GRB.MAXIMIZE)\nm.optimize()\n```", 10),
]
TEXTS = [a for a, _ in ANSWERS]
ADAPTERS = ["verl interaction", "openrlhf agent", "trl", "trl async", "verl", "verl batch", "openrlhf"]
LABELS = [label for _, label in ANSWERS]


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The path of the settings file, and `score`'s rewards under those settings (and the defaults')."""
    path = tmp_path_factory.mktemp("settings") / "eval.yaml"
    path.write_text(SETTINGS)
    config = scorer.load_evaluation_config(path)
    custom = [score_answer(a, scorer.reference_from_label(label), config).reward for a, label in ANSWERS]
    default = [score_answer(a, scorer.reference_from_label(label), EvaluationConfig()).reward for a, label in ANSWERS]
    assert all(c != d for c, d in zip(custom, default)), (custom, default)  # each answer shows its setting
    return path, custom


@pytest.fixture
def fresh_scorer(monkeypatch):
    """A process scorer with no settings yet (as in a new engine process); its pool stopped after."""
    scorer.shutdown()
    monkeypatch.setattr(scorer, "_config", None)
    monkeypatch.setattr(verl, "_applied", set())
    monkeypatch.delenv(scorer.CONFIG_ENV, raising=False)
    yield
    scorer.shutdown()


def interaction_rewards(interaction: verl.SolverInteraction) -> list[float]:
    """veRL's multi-turn Interaction: each answer's turn reward."""

    async def one(text, label):
        instance = await interaction.start_interaction(ground_truth=label)
        _, _, reward, _ = await interaction.generate_response(instance, [{"role": "assistant", "content": text}])
        return reward

    return [asyncio.run(one(t, label)) for t, label in ANSWERS]


def every_adapter() -> dict[str, list[float]]:
    interaction = verl.SolverInteraction({"max_turns": 1})  # first: the multi-turn adapters turn feedback on before the pool starts
    prompts = ["Q: "] * len(TEXTS)
    return {
        "verl interaction": interaction_rewards(interaction),
        "openrlhf agent": [asyncio.run(openrlhf.agent_func({"label": label, "action_text": t}))["scores"] for t, label in ANSWERS],
        "trl": trl.solver_reward(prompts=prompts, completions=TEXTS, answer=LABELS),
        "trl async": asyncio.run(trl.solver_reward_async(prompts=prompts, completions=[[{"role": "assistant", "content": t}] for t in TEXTS],
                                                         answer=LABELS)),
        "verl": [verl.compute_score("opt", t, label)["score"] for t, label in ANSWERS],
        "verl batch": [e["score"] for e in verl.compute_score_batch(["opt"] * len(TEXTS), TEXTS, LABELS)],
        "openrlhf": openrlhf.reward_func([p + t + "</s>" for p, t in zip(prompts, TEXTS)], prompts, LABELS)["rewards"],
    }


@pytest.mark.slow
def test_settings_given_to_configure(expected, fresh_scorer):
    path, custom = expected
    scorer.configure(path)
    assert every_adapter() == dict.fromkeys(ADAPTERS, custom)


@pytest.mark.slow
def test_settings_from_the_environment(expected, fresh_scorer, monkeypatch):
    path, custom = expected
    monkeypatch.setenv(scorer.CONFIG_ENV, str(path))
    assert every_adapter() == dict.fromkeys(ADAPTERS, custom)


@pytest.mark.slow
def test_settings_from_verl_reward_kwargs(expected, fresh_scorer):
    path, custom = expected
    kwargs = {"eval_config": str(path)}  # what veRL passes from reward.custom_reward_function.reward_kwargs
    got = [verl.compute_score("opt", TEXTS[0], LABELS[0], None, **kwargs)["score"]]
    got.append(asyncio.run(verl.compute_score_async("opt", TEXTS[1], LABELS[1], None, **kwargs))["score"])
    got += [e["score"] for e in verl.compute_score_batch(["opt"] * 2, TEXTS[2:], LABELS[2:], None, **kwargs)]
    assert got == custom


@pytest.mark.slow
def test_settings_from_verl_interaction_config(expected, fresh_scorer):
    path, custom = expected
    assert interaction_rewards(verl.SolverInteraction({"max_turns": 1, "eval_config": str(path)})) == custom
