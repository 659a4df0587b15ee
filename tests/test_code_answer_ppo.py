"""PPO steps whose answers are solver-library code, scored through the real sandbox.

A random tiny model writes no program, so the sampler is replaced by a forced one: for each
prompt it answers with the reference model as pulp code (`make-data --answer-format pulp`'s
demonstration) in the first copy and with a wrong program in the second. Everything after
sampling is the real train loop: the scorer's worker pool runs each program in the sandbox,
captures its model at `prob.solve()`, solves it with SCIP, and PPO updates the tiny policy on
the forced tokens with those rewards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from solver_ppo.config import load_config
from solver_ppo.data.code_answers import code_answer
from solver_ppo.data.synthetic import generate
from solver_ppo.models.loading import load_tokenizer

from builders import scripted_generation
from test_ppo_train import overrides, run_dir, scalars

pytestmark = pytest.mark.slow


def wrong_program(reference_model: str) -> str:
    """The reference as pulp code with its limits written as requirements: another model (an
    unbounded maximization, or an infeasible one where the variables are binary)."""
    return code_answer(reference_model, "pulp").replace("<= rhs", ">= rhs")


LEAD = "The model, in pulp:\n"  # text before the block, free of the KL penalty under ppo.kl.partial


def forced_generate(tokenizer, items):
    """A PolicyWithValue.generate that answers each prompt with code: right in the first copy of
    a prompt, wrong in the second."""
    seen: dict[str, int] = {}

    def generate(self, prompts, sampling, generator=None, use_cache=True, keep_logprobs=False, context_cache=None):
        assert not keep_logprobs
        texts = []
        for prompt in prompts:
            text = tokenizer.decode(prompt)
            item = next(i for i in items if i.question in text)
            copy = seen[item.id] = seen.get(item.id, -1) + 1
            program = code_answer(item.reference_model, "pulp") if copy % 2 == 0 else wrong_program(item.reference_model)
            texts.append(LEAD + program)
        return scripted_generation(self, tokenizer, prompts, texts)

    return generate


def test_ppo_trains_on_code_answers_scored_in_the_sandbox(tiny_chatglm_dir, tmp_path, monkeypatch):
    from solver_ppo.models.policy import PolicyWithValue
    from solver_ppo.ppo.train import train

    items = [item for item in generate(8, seed=11, infeasible_fraction=0.0) if item.sense == "maximize"][:2]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item.to_json()) + "\n" for item in items))
    tokenizer = load_tokenizer(Path(tiny_chatglm_dir), trust_remote_code=False)
    # the tokenizer must carry a program through unchanged (indentation included)
    program = code_answer(items[0].reference_model, "pulp")
    assert tokenizer.decode(tokenizer.encode(program, add_special_tokens=False)) == program
    monkeypatch.setattr(PolicyWithValue, "generate", forced_generate(tokenizer, items))

    cfg = load_config(None, overrides(tiny_chatglm_dir, data, tmp_path, **{
        "data.instruction": "pulp", "ppo.advantage": "rloo", "ppo.kl.partial": True,
        "trainer.checkpoint_every": 0, "data.max_prompt_tokens": 4096}))
    start = time.perf_counter()
    module, _ = train(cfg)
    assert module.iteration == 2 and time.perf_counter() - start < 300

    rollout = module.last_rollout
    rights, wrongs = rollout.breakdowns[0::2], rollout.breakdowns[1::2]
    for b in rights:  # the reference as code: captured, solved, matched, graph distance 0
        assert b["status"] == "optimal" and b["answer"] == 1.0 and b["graph"] == pytest.approx(1.0), b
    for b in wrongs:  # limits written as requirements: captured and read, but another model
        assert b["format"] == 1.0 and b["answer"] == 0.0 and b["graph"] < 1.0 and b["reason"], b
    assert (rollout.scores[0::2] == 1.0).all() and (rollout.scores[1::2] < 0.5).all()
    # partial KL starts at the ```python block: the lead sentence before it is not penalized
    lead = len(tokenizer.encode(LEAD, add_special_tokens=False))
    assert (rollout.kl_mask[:, : lead - 1] == 0).all()
    assert torch.equal(rollout.kl_mask[:, lead + 1 :], rollout.response_mask[:, lead + 1 :])
    logged = scalars(run_dir(tmp_path))
    assert logged["solver/format_rate"] == [1.0, 1.0]
    assert logged["solver/accuracy"] == [0.5, 0.5]
