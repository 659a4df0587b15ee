"""Real DDP and FSDP2 with 2 CPU processes (gloo), launched by the Trainer's own launcher (PPO,
and SFT under DDP at the end).

Rank 0 is handed correct answers and rank 1 garbage, so the solver metrics differ per rank: the
logged values must be the cross-rank means, and after the PPO updates both ranks must hold
identical trainable weights. Validation runs on shards of different sizes (a collective inside a
validation step would hang there).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solver_ppo.data.synthetic import generate
from tests.builders import answer_token_loss, free_port

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from lightning.pytorch import Callback
    from solver_ppo.config import load_config
    from solver_ppo.data.prompts import answer_text
    from solver_ppo.ppo import train as train_mod
    from solver_ppo.callbacks.solver_reward import SolverReward

    out = sys.argv[1]

    class RankAnswers(SolverReward):
        # rank 0 answers with the reference model, rank 1 with garbage
        def begin(self, responses, problems):
            rank = self._rank
            responses = [answer_text(p) if rank == 0 else "no idea" for p in problems]
            super().begin(responses, problems)

        def setup(self, trainer, pl_module, stage):
            self._rank = trainer.global_rank
            self.val_items = 0
            super().setup(trainer, pl_module, stage)

        def validate(self, responses, problems):
            self.val_items += len(problems)
            responses = [answer_text(p) if self._rank == 0 else "no idea" for p in problems]
            return super().validate(responses, problems)

    class MixedAnswers(SolverReward):
        # the first sample of a group right and the others wrong, except in groups whose problem
        # number plus rank is a multiple of 3: all right on rank 0, all wrong on rank 1 (no signal,
        # and different problems on each rank)
        def setup(self, trainer, pl_module, stage):
            self._rank, self._k, self.val_items = trainer.global_rank, pl_module.cfg.ppo.samples_per_prompt, 0
            super().setup(trainer, pl_module, stage)

        def begin(self, responses, problems):
            alike = [(int(p.id.rsplit("-", 1)[-1]) + self._rank) % 3 == 0 for p in problems]
            right = [self._rank == 0 if same else i % self._k == 0 for i, same in enumerate(alike)]
            super().begin([answer_text(p) if r else "no idea" for p, r in zip(problems, right)], problems)

    class TurnAnswers(SolverReward):
        # 2-turn episodes that end at a solve: on rank 0 every first answer solves (the reference in
        # the first sample of a group, a wrong model in the others), so its episodes end after one
        # turn; on rank 1 no first answer has a model and the second is the reference in the first
        # sample only, so its episodes take two turns: rank 0 plays the second turn with no episode
        def setup(self, trainer, pl_module, stage):
            self._rank, self._k, self._calls, self.val_items = trainer.global_rank, pl_module.cfg.ppo.samples_per_prompt, 0, 0
            super().setup(trainer, pl_module, stage)

        def begin(self, responses, problems):
            turn, self._calls = self._calls % 2, self._calls + 1
            wrong = "```lp\\nmaximize\\n obj: x\\nsubject to\\n c: x <= 1\\nend\\n```"
            if self._rank == 0:
                answers = [answer_text(p) if i % self._k == 0 else wrong for i, p in enumerate(problems)]
            else:
                answers = [answer_text(p) if turn and i % self._k == 0 else "no idea" for i, p in enumerate(problems)]
            super().begin(answers, problems)

    class Dump(Callback):
        def on_train_end(self, trainer, module):
            rank = trainer.global_rank
            torch.save({k: v.cpu() for k, v in module.policy.trainable_state_dict().items()}, f"{out}/rank{rank}.pt")
            with open(f"{out}/rank{rank}.json", "w") as f:
                scorer = next(cb for cb in trainer.callbacks if isinstance(cb, SolverReward))
                val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
                # the part of the LM's weights this rank holds: 1.0 unless sharded
                held = [(p.to_local().numel() if hasattr(p, "to_local") else p.numel(), p.numel())
                        for p in module.policy.causal_lm.parameters()]
                json.dump({"scores": module.last_rollout.scores.tolist(), "metrics": module.last_solver_metrics,
                           "turns": [len(e.turns) for e in module.last_rollout.episodes],
                           "world": trainer.world_size, "rank": rank, "val": val, "val_items": getattr(scorer, "val_items", 0),
                           "early_stopped": float(trainer.callback_metrics.get("train/early_stopped", -1.0)),
                           "held_fraction": sum(h for h, _ in held) / sum(n for _, n in held)}, f)

    train_mod.SolverReward = {"mixed": MixedAnswers, "turns": TurnAnswers}.get(os.environ.get("ANSWERS"), RankAnswers)
    cfg = load_config(None, sys.argv[2:])
    train_mod.train(cfg, extra_callbacks=[Dump()])
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_identical_weights_and_reduced_metrics(tiny_chatglm_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    with open(data, "w") as f:
        for item in generate(8, seed=5, infeasible_fraction=0.0):
            f.write(json.dumps(item.to_json()) + "\n")
    val = tmp_path / "val.jsonl"  # 5 problems: rank 0 gets 3 (2 batches), rank 1 gets 2 (1 batch)
    with open(val, "w") as f:
        for item in generate(5, seed=6, infeasible_fraction=0.0):
            f.write(json.dumps(item.to_json()) + "\n")
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    args = [
        f"model.path={tiny_chatglm_dir}", f"data.train={data}", "data.system_prompt=", "data.instruction=",
        "data.max_prompt_tokens=2048", "sampling.max_new_tokens=8", "ppo.prompts_per_step=2", "ppo.minibatch_size=2",
        "ppo.lr=1e-2", "evaluation.workers=1", "trainer.max_steps=2", "trainer.checkpoint_every=0",
        "trainer.devices=2", "trainer.strategy=ddp", f"trainer.root_dir={tmp_path / 'logs'}",
        "trainer.enable_progress_bar=false", "trainer.cpu_threads=1", f"data.val={val}", "trainer.val_every=1",
    ]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() and r0
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    assert any(float(v.abs().max()) > 0 for k, v in r0.items() if "lora_B" in k), "no update happened"

    m0, m1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert m0["world"] == 2
    assert min(m0["scores"]) > 0.9 and max(m1["scores"]) == 0.0  # the two ranks really saw different answers
    for metrics in (m0["metrics"], m1["metrics"]):
        assert metrics["accuracy"] == pytest.approx(0.5)
        assert metrics["format_rate"] == pytest.approx(0.5)
        expected = (sum(m0["scores"]) + sum(m1["scores"])) / (len(m0["scores"]) + len(m1["scores"]))
        assert metrics["reward"] == pytest.approx(expected, abs=1e-6)
    # validation on uneven shards does not hang, and its metrics are the mean over all 5 problems
    assert (m0["val_items"], m1["val_items"]) == (2 * 3, 2 * 2)  # two validation passes
    assert m0["val"]["val/accuracy"] == pytest.approx(3 / 5)
    assert m0["val"]["val/format_rate"] == pytest.approx(3 / 5)


@pytest.mark.slow
def test_ddp_ranks_with_different_numbers_of_usable_prompts_train_in_step(tiny_chatglm_dir, tmp_path):
    """Rank 1 (records 1, 3, 5, 7) skips its over-long prompt, rank 0 has all its prompts: in that
    step rank 0 must leave out as many, or its extra backward passes would wait forever for rank
    1's all-reduce. The approx-KL early stop is taken by both ranks together for the same reason."""
    items = [item.to_json() for item in generate(8, seed=7, infeasible_fraction=0.0)]
    items[1]["question"] = " ".join([items[1]["question"]] * 30)  # in one of rank 1's two batches
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    args = [
        f"model.path={tiny_chatglm_dir}", f"data.train={data}", "data.system_prompt=", "data.instruction=",
        "data.max_prompt_tokens=2048", "data.shuffle_buffer=1", "sampling.max_new_tokens=8",
        "ppo.prompts_per_step=2", "ppo.samples_per_prompt=2", "ppo.minibatch_size=1", "ppo.epochs=2",
        "ppo.max_approx_kl=1e-6", "ppo.lr=1e-2", "evaluation.workers=1", "trainer.max_steps=2",
        "trainer.checkpoint_every=0", "trainer.devices=2", "trainer.strategy=ddp", f"trainer.root_dir={tmp_path / 'logs'}",
        "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
    ]
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
    assert proc.stdout.count("rank 0: 1 problems left out so every rank trains on 1") == 1, proc.stdout[-2000:]
    # rank 1 summarizes its own skipped problem at the end, in one line (the pre-flight line before it)
    assert proc.stdout.count("rank 1: 1 prompts in steps 1-2 ") == 1 and "(first: train-00001)" in proc.stdout
    assert "prompt of" not in proc.stdout
    m0, m1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(m0["scores"]) == len(m1["scores"])
    assert m0["early_stopped"] == m1["early_stopped"] == 1.0  # ppo.max_approx_kl=1e-6 stopped the epochs


def fsdp2_args(model_dir, data: Path, lora: bool, checkpoint_every: int) -> list[str]:
    return [
        f"model.path={model_dir}", f"model.lora.enabled={str(lora).lower()}", f"data.train={data}", "data.system_prompt=",
        "data.instruction=", "data.max_prompt_tokens=2048", "sampling.max_new_tokens=12", "ppo.prompts_per_step=2",
        "ppo.minibatch_size=2", "ppo.lr=1e-2", "evaluation.workers=1", f"trainer.checkpoint_every={checkpoint_every}",
        "trainer.devices=2", "trainer.strategy=fsdp2", "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
    ]


def run_two_ranks(
    tmp_path: Path, run: str, args: list[str], held_fraction: float = 0.5, env: dict | None = None
) -> tuple[dict, list[dict]]:
    """SCRIPT on 2 CPU ranks with `args`; checks that the ranks agree and hold `held_fraction` of
    the LM each (fsdp2: half); returns the trainable weights and each rank's numbers."""
    out = tmp_path / run
    out.mkdir()
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(out), *args, f"trainer.root_dir={out / 'logs'}"], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    weights = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    numbers = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), (run, key)
    assert numbers[0]["world"] == 2 and numbers[0]["held_fraction"] == pytest.approx(held_fraction, abs=0.01), numbers[0]
    return weights[0], numbers


@pytest.mark.slow
def test_fsdp2_shards_the_lora_policy_and_resumes_exactly(tiny_chatglm_dir, tmp_path):
    """trainer.strategy=fsdp2: each rank holds half of the LM; after PPO steps both ranks hold the
    same weights; the checkpoint has the trainable weights only; 2 steps + resume = 3 straight."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(12, seed=8, infeasible_fraction=0.0)))
    common = fsdp2_args(tiny_chatglm_dir, data, lora=True, checkpoint_every=1)
    straight, _ = run_two_ranks(tmp_path, "straight", [*common, "trainer.max_steps=3"])
    assert any(float(v.abs().max()) > 0 for k, v in straight.items() if "lora_B" in k), "no update happened"
    first, _ = run_two_ranks(tmp_path, "first", [*common, "trainer.max_steps=2"])
    last = tmp_path / "first" / "logs" / "ppo" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)["state_dict"]
    assert {k.removeprefix("policy.") for k in saved} == set(first)  # LoRA + value head, not the frozen base
    resumed, _ = run_two_ranks(tmp_path, "resumed", [*common, "trainer.max_steps=3", f"resume={last}"])
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


# The estimators beside PPO with GAE (the tests above) and RLOO (the launch-line test below), with
# the settings docs/algorithms.md gives for each, at test size; GRPO trains label-free (by votes).
ESTIMATORS = {
    "grpo_votes": ["ppo.advantage=grpo", "ppo.whiten_advantages=false", "ppo.loss_aggregation=sequence_mean",
                   "ppo.kl.placement=loss", "ppo.kl.estimator=k3", "ppo.kl.coef=0.04", "evaluation.labels=votes",
                   "evaluation.votes.min_votes=1"],
    "dr_grpo": ["ppo.advantage=grpo", "ppo.scale_rewards=none", "ppo.whiten_advantages=false",
                "ppo.loss_aggregation=constant_length", "ppo.kl.coef=0"],
    "dapo": ["ppo.advantage=grpo", "ppo.whiten_advantages=false", "ppo.loss_aggregation=token_mean",
             "ppo.clip_high=0.28", "ppo.dynamic_sampling_rounds=2", "ppo.overlong_buffer=4", "ppo.kl.coef=0"],
    "reinforce_pp": ["ppo.advantage=reinforce_pp", "ppo.kl.estimator=k2", "ppo.kl.coef=0.01"],
    "gspo": ["ppo.advantage=grpo", "ppo.whiten_advantages=false", "ppo.ratio=sequence",
             "ppo.loss_aggregation=sequence_mean", "ppo.clip_low=3e-4", "ppo.clip_high=4e-4", "ppo.kl.coef=0"],
}

# Resuming restores the same state for every group estimator (adapter, optimizer, KL controller, data
# position, RNG); these two also carry what the others do not: the KL as a loss term with labels from
# votes, and dynamic sampling's extra draws. PPO with GAE resumes in the FSDP2 test above.
RESUMED = ("grpo_votes", "dapo")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_each_estimator_trains_in_step_on_two_ddp_ranks_and_resumes_exactly(estimator, tiny_chatglm_dir, tmp_path):
    """Every estimator under DDP: both ranks end with the same weights, and (RESUMED) the run's
    checkpoint after 2 steps + resume 1 = the 3 straight steps, bit for bit. The ranks' scores differ, and with dynamic sampling (dapo) each
    rank drops other prompts (MixedAnswers) yet both step together."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(12, seed=8, infeasible_fraction=0.0)))
    common = [
        f"model.path={tiny_chatglm_dir}", f"data.train={data}", "data.system_prompt=", "data.instruction=",
        "data.max_prompt_tokens=2048", "sampling.max_new_tokens=8", "ppo.prompts_per_step=2", "ppo.samples_per_prompt=2",
        "ppo.minibatch_size=2", "ppo.lr=1e-2", "evaluation.workers=1", "trainer.checkpoint_every=1",
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
        *ESTIMATORS[estimator],
    ]
    env = {"ANSWERS": "mixed"}
    straight, numbers = run_two_ranks(tmp_path, "straight", [*common, "trainer.max_steps=3"], held_fraction=1.0, env=env)
    assert any(float(v.abs().max()) > 0 for k, v in straight.items() if "lora_B" in k), "no update happened"
    assert len(numbers[0]["scores"]) == len(numbers[1]["scores"]) > 0
    if estimator == "grpo_votes":  # each group voted on its own rank: a right answer (or two) labels it, rightly
        for n in numbers:
            assert n["metrics"]["label_accuracy"] == n["metrics"]["reward_agreement"] == 1.0, n["metrics"]
            assert set(n["scores"]) <= {0.0, 1.0}, n["scores"]
    if estimator not in RESUMED:
        return
    second = tmp_path / "straight" / "logs" / "ppo" / "version_0" / "checkpoints" / "iter-000002.ckpt"
    resumed, _ = run_two_ranks(tmp_path, "resumed", [*common, "trainer.max_steps=3", f"resume={second}"],
                               held_fraction=1.0, env=env)
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


@pytest.mark.slow
def test_two_turn_episodes_that_end_at_different_turns_per_rank_train_in_step_and_resume_exactly(tiny_chatglm_dir, tmp_path):
    """rollout.turns=2, rollout.end=solved under DDP: rank 0's episodes all end after one turn,
    rank 1's after two (TurnAnswers); rank 0 plays the second turn with an empty batch, so the
    scorer's cross-rank reductions pair up. Both ranks end with the same weights, and 2 steps +
    resume 1 = the 3 straight steps, bit for bit."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(12, seed=8, infeasible_fraction=0.0)))
    common = [
        f"model.path={tiny_chatglm_dir}", f"data.train={data}", "data.system_prompt=", "data.instruction=",
        "data.max_prompt_tokens=2048", "sampling.max_new_tokens=8", "ppo.prompts_per_step=2", "ppo.samples_per_prompt=2",
        "ppo.minibatch_size=2", "ppo.lr=1e-2", "evaluation.workers=1", "trainer.checkpoint_every=1",
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
        "ppo.advantage=grpo", "rollout.turns=2", "rollout.end=solved", "rollout.turn_cost=0.1",
    ]
    env = {"ANSWERS": "turns"}
    straight, numbers = run_two_ranks(tmp_path, "straight", [*common, "trainer.max_steps=3"], held_fraction=1.0, env=env)
    assert numbers[0]["turns"] == [1, 1, 1, 1] and numbers[1]["turns"] == [2, 2, 2, 2]
    assert numbers[1]["scores"] == pytest.approx([0.9, -0.1, 0.9, -0.1])
    assert any(float(v.abs().max()) > 0 for k, v in straight.items() if "lora_B" in k), "no update happened"
    second = tmp_path / "straight" / "logs" / "ppo" / "version_0" / "checkpoints" / "iter-000002.ckpt"
    resumed, _ = run_two_ranks(tmp_path, "resumed", [*common, "trainer.max_steps=3", f"resume={second}"],
                               held_fraction=1.0, env=env)
    for key in straight:
        assert torch.equal(resumed[key], straight[key]), key


@pytest.mark.slow
def test_two_turn_episodes_under_fsdp2_sampling_block_by_block(tiny_chatglm_dir, tmp_path):
    """The episodes of the DDP test above under fsdp2 with trainer.fsdp2_gather_for_sampling=false,
    where every decoding step is a collective: rank 0, whose episodes all ended after one turn,
    answers a stand-in prompt while rank 1 plays the second turn. Both ranks hold half of the LM
    and end with the same weights."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(8, seed=8, infeasible_fraction=0.0)))
    args = [*fsdp2_args(tiny_chatglm_dir, data, lora=True, checkpoint_every=0), "ppo.samples_per_prompt=2",
            "trainer.max_steps=2", "trainer.fsdp2_gather_for_sampling=false", "ppo.advantage=grpo", "rollout.turns=2",
            "rollout.end=solved", "rollout.turn_cost=0.1"]
    trained, numbers = run_two_ranks(tmp_path, "fsdp2_turns", args, env={"ANSWERS": "turns"})
    assert numbers[0]["turns"] == [1, 1, 1, 1] and numbers[1]["turns"] == [2, 2, 2, 2]
    assert numbers[1]["scores"] == pytest.approx([0.9, -0.1, 0.9, -0.1])
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k), "no update happened"


@pytest.mark.slow
@pytest.mark.parametrize("gather", [True, False], ids=["gather-once", "block-by-block"])
def test_fsdp2_full_fine_tuning_with_validation(gather, tiny_chatglm_dir, tmp_path):
    """Full fine-tuning (the frozen reference copy sharded too) trains in step on both ranks.
    Validation: both ranks read the same batches of 4 (5 problems: 4, then 1) and answer every
    other problem; rank 1 answers a stand-in, unscored, for the last batch. The same with
    sampling block by block (trainer.fsdp2_gather_for_sampling=false), where every decoding step
    is a collective."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(8, seed=9, infeasible_fraction=0.0)))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(5, seed=6, infeasible_fraction=0.0)))
    args = [*fsdp2_args(tiny_chatglm_dir, data, lora=False, checkpoint_every=0), "trainer.max_steps=2",
            f"data.val={val}", "trainer.val_every=1", f"trainer.fsdp2_gather_for_sampling={str(gather).lower()}"]
    trained, (numbers, numbers1) = run_two_ranks(tmp_path, "full", args)
    start = load_file(Path(tiny_chatglm_dir) / "model.safetensors")
    names = {k: k.removeprefix("model.") for k in trained}  # PolicyWithValue's name -> the checkpoint's
    changed = [k for k, v in trained.items() if names[k] in start and not torch.equal(v, start[names[k]])]
    assert changed, "no LM weight changed"
    assert numbers["metrics"]["accuracy"] == pytest.approx(0.5)  # rank 0 right, rank 1 garbage, reduced
    assert (numbers["val_items"], numbers1["val_items"]) == (2 * 3, 2 * 2)  # two validation passes
    assert numbers["val"]["val/accuracy"] == pytest.approx(3 / 5)  # rank 0's 3 right of all 5


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "lora"), [("ddp", False), ("fsdp2", False), ("fsdp2", True)])
def test_sft_on_two_ranks_survives_a_rank_without_usable_problems_and_reduces_val_loss(
    strategy, lora, tiny_chatglm_dir, tmp_path
):
    """SFT on 2 CPU ranks. Rank 1's first batch (record 1, batch size 1) is too long: rank 0 has an
    example, so the step is taken and rank 1 joins its all-reduce with a zero loss. The 5
    validation problems split 3 / 2 between the ranks (DDP: by shard; fsdp2: every rank reads each batch and scores its slice, a stand-in forward when it has none); sft/val_loss is
    the token mean over all 5, synced once per pass. With fsdp2 the written model is gathered from
    the shards (with LoRA, then merged): its loss is what the last pass logged."""
    items = [item.to_json() for item in generate(8, seed=11, infeasible_fraction=0.0)]
    items[1]["question"] = " ".join([items[1]["question"]] * 30)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(5, seed=12, infeasible_fraction=0.0)))
    out, logs = tmp_path / "sft_model", tmp_path / "logs"
    script = tmp_path / "sft_run.py"
    script.write_text(
        "import sys\nfrom solver_ppo.config import SFTConfig, load_config\nfrom solver_ppo.sft.cli import train_sft\n"
        "train_sft(load_config(None, sys.argv[1:], schema_cls=SFTConfig))\n"
    )
    args = [
        f"model.path={tiny_chatglm_dir}", f"output_dir={out}", f"data.train={data}", f"data.val={val}",
        "trainer.val_every=2", "data.system_prompt=", "data.instruction=", "data.shuffle_buffer=1",
        "sft.max_steps=4", "sft.batch_size=1", "sft.max_length=2048", "sft.lr=3e-3", "sft.warmup_steps=0",
        "sft.lr_schedule=constant", f"model.lora.enabled={str(lora).lower()}", f"trainer.root_dir={logs}",
        "trainer.enable_progress_bar=false", "trainer.cpu_threads=1", "trainer.devices=2", f"trainer.strategy={strategy}",
    ]
    proc = subprocess.run(
        [sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    events = EventAccumulator(str(next((logs / "sft").glob("version_*"))))
    events.Reload()
    logged = [e.value for e in events.Scalars("sft/val_loss")]
    assert len(logged) == 2
    assert logged[1] == pytest.approx(answer_token_loss(out, val, None, None), abs=1e-4)  # all 5, final weights


def readme_launch_line(launcher: str) -> list[str]:
    """The README's own line that starts with `launcher` (its "Several GPUs" block), as words."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith(launcher + " ")]
    assert len(lines) == 1, f"README.md has {len(lines)} lines starting with {launcher!r}"
    return shlex.split(lines[0].split("#")[0])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fabric run"])
def test_the_readmes_launch_lines_train_on_two_cpu_processes(launcher, tiny_chatglm_dir, tmp_path):
    """The README's `torchrun --nproc_per_node 4 -m app train configs/chatglm3_6b_lora_4gpu.yaml
    model.path=... data.train=...` and `fabric run --devices 4 app/__main__.py train ...` lines,
    run as written with 2 processes instead of 4 on the CPU, the `...` filled in, and sizes and
    length overridden after them (as a user would): one run directory written by rank 0, both
    ranks in one process group, the config's LoRA trained (the weights' equality across ranks is
    test_ddp_two_cpu_ranks_identical_weights_and_reduced_metrics's)."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(8, seed=5, infeasible_fraction=0.0)))
    filled = {"model.path=...": f"model.path={tiny_chatglm_dir}", "data.train=...": f"data.train={data}"}
    words = readme_launch_line(launcher)
    assert "configs/chatglm3_6b_lora_4gpu.yaml" in words and set(filled) <= set(words)
    command = []
    for k, word in enumerate(words):
        if word == "4" and words[k - 1] in ("--nproc_per_node", "--devices"):
            word = "2"
        command.append(filled.get(word, word))
    port = ["--master-port", str(free_port())] if launcher == "torchrun" else ["--accelerator", "cpu", "--main-port", str(free_port())]
    n = len(launcher.split())
    command = [str(Path(sys.executable).parent / command[0]), *command[1:n], *port, *command[n:]]
    command += [
        "model.chat_format=auto", "data.max_prompt_tokens=2048", "sampling.max_new_tokens=8", "ppo.prompts_per_step=1",
        "ppo.minibatch_size=1", "ppo.epochs=1", "evaluation.workers=1", "trainer.max_steps=2", "trainer.checkpoint_every=1",
        "trainer.accelerator=cpu", "trainer.devices=2", f"trainer.root_dir={tmp_path / 'logs'}",
        "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
    ]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("logs and checkpoints:") == 1  # rank 0 only
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    runs = tmp_path / "logs" / "chatglm3_6b_lora_4gpu"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    checkpoint = torch.load(runs / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["ppo"]["iteration"] == 2
    trained = torch.load(runs / "version_0" / "trainable.pt", weights_only=True)["state_dict"]
    assert any(float(v.float().abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "fabric run"])
def test_a_launcher_that_started_more_processes_than_the_config_says_is_refused(launcher, tiny_chatglm_dir, tmp_path):
    """torchrun --nproc_per_node 2 (or fabric run --devices 2) with trainer.devices=1: not two runs
    that each think they are rank 0, but one line naming both numbers, and no log directory."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(i.to_json()) + "\n" for i in generate(4, seed=5)))
    bin_dir = Path(sys.executable).parent
    port = str(free_port())
    launch = {"torchrun": [str(bin_dir / "torchrun"), "--nproc_per_node", "2", "--master-port", port, "-m", "app"],
              "fabric run": [str(bin_dir / "fabric"), "run", "--accelerator", "cpu", "--devices", "2", "--main-port", port,
                             "app/__main__.py"]}
    proc = subprocess.run(
        [*launch[launcher], "train", str(ROOT / "configs" / "quickstart.yaml"), f"model.path={tiny_chatglm_dir}",
         f"data.train={data}", f"trainer.root_dir={tmp_path / 'logs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    message = (f"error: {launcher} started 2 processes, but trainer.devices x trainer.num_nodes = 1 x 1 = 1: set "
               "trainer.devices=2 trainer.num_nodes=1")
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]  # said once, by the first process
    assert not (tmp_path / "logs" / "quickstart").exists()
