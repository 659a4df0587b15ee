"""PPO end to end: real Trainer, real tiny ChatGLM, real SCIP worker pool.

Runs are kept tiny (2 prompts, 8 new tokens) so that each takes seconds; what is asserted is that
the pieces connect and that the numbers are right: checkpoints hold only trainable weights,
resume after kill -9 reproduces the uninterrupted run bit for bit, non-finite rewards never
reach the weights, a broken reward pool scores zero and training goes on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from solver_ppo.config import load_config
from solver_ppo.errors import UserError
from solver_ppo.data.synthetic import generate
from solver_ppo.ppo.scoring import RolloutScorer, RolloutScores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    with open(path, "w") as f:
        for item in generate(12, seed=3):
            f.write(json.dumps(item.to_json()) + "\n")
    return path


def overrides(model_dir: Path, data: Path, root: Path, **extra) -> list[str]:
    base = {
        "model.path": model_dir,
        "data.train": data,
        "data.system_prompt": "",
        "data.instruction": "",
        "data.shuffle_buffer": 4,
        "data.max_prompt_tokens": 2048,
        "sampling.max_new_tokens": 8,
        "ppo.prompts_per_step": 2,
        "ppo.samples_per_prompt": 2,
        "ppo.minibatch_size": 2,
        "ppo.epochs": 2,
        "ppo.lr": 1e-2,  # large, so that two iterations visibly move the adapter
        "evaluation.workers": 1,
        "trainer.max_steps": 2,
        "trainer.checkpoint_every": 1,
        "trainer.root_dir": root,
        "trainer.enable_progress_bar": False,
        "trainer.cpu_threads": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_dir(root: Path, name: str = "ppo") -> Path:
    versions = sorted((root / name).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1]


def scalars(run: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_logs_metrics_and_checkpoints_only_trainable_weights(tiny_chatglm_dir, problems_file, tmp_path):
    from solver_ppo.ppo.train import train

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path))
    module, trainer = train(cfg)
    assert module.iteration == 2

    run = run_dir(tmp_path)
    logged = scalars(run)
    for tag in ["solver/reward", "solver/accuracy", "solver/solved_rate", "solver/format_rate", "train/kl",
                "train/entropy", "train/approx_kl", "train/clip_fraction", "train/value_loss", "train/policy_loss",
                "train/explained_variance", "train/response_length", "train/generation_tokens_per_s",
                "time/generate", "time/update"]:
        assert len(logged[tag]) == 2, tag
    # A random tiny model writes no LP: the solver scores it 0 with its reason.
    assert logged["solver/format_rate"] == [0.0, 0.0]
    assert all(b["reason"] for b in module.last_rollout.breakdowns)

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k or "value_head" in k for k in keys), keys[:5]
    assert ckpt["ppo"]["iteration"] == 2
    assert (run / "checkpoints" / "iter-000001.ckpt").is_file()
    lora_b = [v for k, v in ckpt["state_dict"].items() if "lora_B" in k]
    assert any(float(v.abs().max()) > 0 for v in lora_b), "the adapter did not move (lora_B starts at zero)"
    assert (run / "trainable.pt").is_file()


def test_rloo_advantages_train_the_policy_and_leave_the_value_head_alone(tiny_chatglm_dir, problems_file, tmp_path):
    from solver_ppo.ppo.train import train

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{"ppo.advantage": "rloo"}))
    module, _ = train(cfg)
    rollout = module.last_rollout
    assert rollout.returns is None
    # one advantage per response on all its tokens, summing to zero over each prompt's pair (before whitening)
    per_row = rollout.advantages.sum(-1) / rollout.response_mask.sum(-1)
    assert torch.allclose(rollout.advantages, per_row[:, None] * rollout.response_mask, atol=1e-6)
    # each row: its reward (score - beta * KL) minus its partner's, then whitened over the batch's tokens
    from solver_ppo.ppo import losses

    total = rollout.scores - module.kl_ctl.value * rollout.kl.sum(-1)
    pairs = total.view(-1, 2)
    expected = torch.stack([pairs[:, 0] - pairs[:, 1], pairs[:, 1] - pairs[:, 0]], -1).flatten()
    expected = losses.masked_whiten(expected[:, None] * rollout.response_mask, rollout.response_mask)
    assert torch.allclose(rollout.advantages, expected, atol=1e-5)
    logged = scalars(run_dir(tmp_path))
    assert "train/value_loss" not in logged and len(logged["train/policy_loss"]) == 2
    head = module.policy.value_head.proj
    assert float(head.bias.abs().max()) == 0.0  # starts at zero and gets no gradient without a value loss


def test_logprobs_from_sampling_train_like_a_separate_policy_pass(tiny_chatglm_dir, problems_file, tmp_path):
    """The same seeds sample the same answers; the kept old log-probs and values equal a scoring
    pass's, so the two runs end with the same weights (fp32 rounding apart)."""
    from solver_ppo.ppo.train import train

    modules = {}
    for keep in (False, True):
        root = tmp_path / str(keep)
        extra = {"ppo.logprobs_from_sampling": keep, "trainer.checkpoint_every": 0, "sampling.temperature": 0.7}
        modules[keep], _ = train(load_config(None, overrides(tiny_chatglm_dir, problems_file, root, **extra)))
    a, b = modules[False].last_rollout, modules[True].last_rollout
    assert torch.equal(a.sequences, b.sequences) and a.responses == b.responses
    mask = a.response_mask.bool()
    for name, atol in (("old_logprobs", 1e-4), ("values", 1e-4), ("ref_logprobs", 1e-4), ("advantages", 1e-3)):  # whitened: O(1)
        torch.testing.assert_close(getattr(b, name)[mask], getattr(a, name)[mask], atol=atol, rtol=0,
                                   msg=lambda m, name=name: f"{name}: {m}")
    weights = {keep: m.policy.trainable_state_dict() for keep, m in modules.items()}
    moved = max(float(v.abs().max()) for k, v in weights[True].items() if "lora_B" in k)
    apart = max(float((weights[True][k] - v).abs().max()) for k, v in weights[False].items())
    # Adam at lr 1e-2 moves each weight by ~1e-2 per step; rounding-level gradient differences stay far below
    assert moved > 1e-2 and apart < 1e-3, (moved, apart)


def test_bf16_true_precision_trains_lora_and_value_head(tiny_chatglm_dir, problems_file, tmp_path):
    """trainer.precision=bf16-true (what the real-model configs use) casts the whole module, value
    head included; PPO with GAE still trains both, and values come out as fp32."""
    from solver_ppo.cli import main

    args = overrides(tiny_chatglm_dir, problems_file, tmp_path, **{
        "model.dtype": "bfloat16", "trainer.precision": "bf16-true", "ppo.advantage": "gae"})  # fmt: skip
    assert main(["train", *args]) == 0
    trained = torch.load(run_dir(tmp_path) / "trainable.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in trained.values()} == {torch.bfloat16}
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)
    assert float(trained["value_head.proj.bias"].float().abs().max()) > 0  # starts at 0: the value loss moved it
    assert all(math.isfinite(x) for x in scalars(run_dir(tmp_path))["train/value_loss"])


GPU_CONFIGS = ["chatglm3_6b_lora", "chatglm3_6b_lora_4gpu", "glm4_9b_lora"]


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_each_shipped_gpu_config_trains_on_the_tiny_model(name, tiny_chatglm_dir, problems_file, tmp_path):
    """Every setting of the real-model configs (bf16-true, gradient checkpointing, LoRA dropout,
    grad accumulation, value_lr, partial and adaptive KL) on the CPU, each seen to take effect:
    only the model, the device, the sizes and the run length are overridden."""
    from solver_ppo.ppo.train import train

    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml") if not p.stem.startswith("quickstart")) == GPU_CONFIGS
    args = [
        f"model.path={tiny_chatglm_dir}", "model.chat_format=auto", f"data.train={problems_file}",
        "data.max_prompt_tokens=2048", "sampling.max_new_tokens=8", "ppo.prompts_per_step=2", "ppo.minibatch_size=1",
        "evaluation.workers=1", "trainer.max_steps=2", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.strategy=auto", f"trainer.root_dir={tmp_path}", "trainer.enable_progress_bar=false", "trainer.cpu_threads=1",
    ]
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", args)
    module, trainer = train(cfg)
    ppo, logged = cfg.ppo, scalars(run_dir(tmp_path, name))
    trained = torch.load(run_dir(tmp_path, name) / "trainable.pt", weights_only=True)["state_dict"]
    assert any(float(v.float().abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)
    # grad_accum: 4 rows of one minibatch each make ceil(4 / grad_accum) optimizer steps per epoch
    assert logged["train/early_stopped"] == [0.0, 0.0]
    assert trainer.global_step == cfg.trainer.max_steps * ppo.epochs * math.ceil(4 / ppo.grad_accum)
    # value_lr: the value head's parameter group, scheduled like the policy's
    policy_group, value_group = trainer.optimizers[0].param_groups
    assert value_group["lr"] / policy_group["lr"] == pytest.approx((ppo.value_lr or ppo.lr) / ppo.lr)
    # adaptive KL: beta moved off its starting value; partial KL: a mask over the answers' model blocks
    assert ppo.kl.controller == "adaptive" and all(beta != ppo.kl.coef for beta in logged["train/kl_coef"])
    assert ppo.kl.partial and module.last_rollout.kl_mask is not None
    # LoRA dropout on every adapted layer
    rates = {m.p for n, m in module.policy.named_modules() if "lora_dropout" in n and isinstance(m, torch.nn.Dropout)}
    assert rates == {cfg.model.lora.dropout} == {0.05}


def test_the_approx_kl_stop_ends_the_ppo_epochs_at_an_optimizer_step(tiny_chatglm_dir, problems_file, tmp_path):
    """ppo.max_approx_kl: once the policy has moved past it, the step's remaining epochs are left
    out; the check comes where an optimizer step was due (never dropping accumulated gradients)."""
    from solver_ppo.ppo.train import train

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{
        "ppo.max_approx_kl": 1e-9, "ppo.minibatch_size": 1, "ppo.grad_accum": 2, "trainer.checkpoint_every": 0}))
    _, trainer = train(cfg)
    logged = scalars(run_dir(tmp_path))
    assert logged["train/early_stopped"] == [1.0, 1.0]
    # 4 rows, 2 minibatches per step: the first step's minibatches are scored before any update
    # (approx KL 0), the second step's after one: the stop comes there, 2 steps of the 4 possible
    assert trainer.global_step == 2 * 2
    assert all(kl > 1e-9 for kl in logged["train/approx_kl"])


@pytest.mark.parametrize(("settings", "message"), [
    (["ppo.advantage=rloo", "ppo.samples_per_prompt=1"], "ppo.advantage=rloo compares the samples of a prompt"),
    (["ppo.advantage=grpo", "ppo.samples_per_prompt=1"], "ppo.advantage=grpo compares the samples of a prompt"),
    (["ppo.dynamic_sampling_rounds=2", "ppo.samples_per_prompt=1"], "ppo.dynamic_sampling_rounds drops prompts"),
    (["evaluation.labels=votes", "ppo.samples_per_prompt=1"],
     "evaluation.labels=votes labels a prompt by the votes of its samples: set ppo.samples_per_prompt >= 2 (it is 1)"),
    (["evaluation.labels=jury"], "evaluation.labels='jury' is not one of reference, votes"),
    (["ppo.overlong_buffer=9"], "ppo.overlong_buffer=9 is longer than sampling.max_new_tokens=8"),
    (["ppo.advantage=a2c"], "ppo.advantage='a2c' is not one of gae, rloo, grpo, reinforce_pp"),
    (["ppo.kl.placement=logits"], "ppo.kl.placement='logits' is not one of reward, loss"),
])
def test_settings_the_estimators_cannot_work_with_are_refused(settings, message, tiny_chatglm_dir, problems_file,
                                                              tmp_path, capsys):
    from solver_ppo.cli import main

    assert main(["train", *overrides(tiny_chatglm_dir, problems_file, tmp_path), *settings]) == 2
    assert message in capsys.readouterr().err


def test_validation_scores_greedy_answers_every_val_every_steps(tiny_chatglm_dir, problems_file, tmp_path):
    from solver_ppo.ppo.train import train

    from solver_ppo.data.prompts import answer_text
    from solver_ppo.ppo import train as train_mod
    from solver_ppo.callbacks.solver_reward import SolverReward

    class FirstAnswerRight(SolverReward):
        """Records the greedy answers it is handed; the first val problem's is swapped for the reference model."""

        seen: list = []

        def validate(self, responses, problems):
            self.seen.extend(responses)
            swapped = [answer_text(p) if p.id == first_id else r for r, p in zip(responses, problems)]
            return super().validate(swapped, problems)

    val = tmp_path / "val.jsonl"
    val.write_text("".join(problems_file.read_text().splitlines(keepends=True)[:3]))
    first_id = json.loads(val.read_text().splitlines()[0])["id"]
    extra = {"data.val": val, "trainer.val_every": 1, "trainer.max_steps": 2, "data.shuffle_buffer": 0}
    original = train_mod.SolverReward
    train_mod.SolverReward = FirstAnswerRight
    try:
        module, trainer = train_mod.train(load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **extra)))
    finally:
        train_mod.SolverReward = original
    logged = scalars(run_dir(tmp_path))
    for tag in ("val/accuracy", "val/format_rate", "val/reward", "val/solved_rate"):
        assert len(logged[tag]) == 2, tag
    # the random tiny model writes no LP: only the swapped-in reference answer of 3 is right
    assert logged["val/accuracy"] == pytest.approx([1 / 3, 1 / 3])
    assert logged["val/format_rate"] == pytest.approx([1 / 3, 1 / 3])
    # what was scored after the last step is the final policy's greedy answer to each val problem
    assert len(FirstAnswerRight.seen) == 2 * 3  # two passes over the 3 val problems
    problems = [json.loads(line) for line in val.read_text().splitlines()]
    from solver_ppo.data.formats import Problem

    prompts = [module.chat.encode_prompt(module.tokenizer, module._messages(Problem(p["id"], p["question"], str(p["answer"]))))
               for p in problems]
    greedy = module.policy.generate(prompts, dataclasses.replace(module.cfg.sampling, do_sample=False))
    assert FirstAnswerRight.seen[-3:] == greedy.texts(module.tokenizer)
    with pytest.raises(UserError, match=r"trainer.val_every=-1 is outside its allowed range \[0, inf\)"):
        train(load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{**extra, "trainer.val_every": -1})))
    # val_every=0: no validation, data.val or not
    quiet = {**extra, "trainer.val_every": 0, "trainer.max_steps": 1, "trainer.root_dir": tmp_path / "quiet"}
    _, trainer = train(load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **quiet)))
    assert trainer.global_step > 0 and not [k for k in trainer.callback_metrics if k.startswith("val/")]


def test_unknown_config_key_names_the_closest_one(tiny_chatglm_dir, problems_file, tmp_path):
    from solver_ppo.cli import main

    argv = ["train", *overrides(tiny_chatglm_dir, problems_file, tmp_path), "ppo.cliplow=0.1"]
    proc = subprocess.run([sys.executable, "-m", "app", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "unknown config key 'ppo.cliplow'; did you mean 'ppo.clip_low'?" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert main(["train", *overrides(tiny_chatglm_dir, problems_file, tmp_path), "resume=/nonexistent.ckpt"]) == 2


def test_train_that_fits_no_prompt_stops_before_writing_anything(tiny_chatglm_dir, problems_file, tmp_path, capsys):
    """The issue's trap at test size: every prompt over the limit, or an instruction preset longer
    than the whole limit. Both stop in one line with the numbers, before any run directory exists."""
    from solver_ppo.cli import main

    # `data.instruction=` on the command line is None (the LP instruction, 438 tokens here with the system prompt)
    assert main(["train", *overrides(tiny_chatglm_dir, problems_file, tmp_path), "data.max_prompt_tokens=440"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: data.train={problems_file}: no prompt fits data.max_prompt_tokens=440: the shortest "
                          "of the first 12 is ") and "raise data.max_prompt_tokens to at least" in err, err
    assert main(["train", str(ROOT / "configs" / "quickstart.yaml"), *overrides(tiny_chatglm_dir, problems_file, tmp_path),
                 "data.instruction=pyscipopt", "data.max_prompt_tokens=256"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.max_prompt_tokens=256 cannot hold the prompt's fixed part: the system prompt, " \
        "instruction 'pyscipopt' and chat format take " in err, err
    assert not (tmp_path / "ppo").exists() and not (tmp_path / "quickstart").exists()


def test_overlong_prompts_are_summarized_and_their_batches_are_no_iteration(tiny_chatglm_dir, problems_file, tmp_path,
                                                                             capsys):
    from solver_ppo.data.formats import iter_problems
    from solver_ppo.data.prompts import build_messages
    from solver_ppo.models.config import ModelConfig
    from solver_ppo.models.loading import load_prompt_encoder
    from solver_ppo.ppo.train import train

    tokenizer, chat = load_prompt_encoder(ModelConfig(path=str(tiny_chatglm_dir)))
    lengths = sorted(len(chat.encode_prompt(tokenizer, build_messages(p))) for p in iter_problems(problems_file))
    limit = lengths[5]  # 6 of the 12 prompts fit
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{
        "data.max_prompt_tokens": limit, "data.max_skipped_fraction": 0.6, "data.skip_report_every": 2,
        "ppo.prompts_per_step": 1, "trainer.max_steps": 4, "trainer.checkpoint_every": 0}))
    assert cfg.data.system_prompt is None and cfg.data.instruction is None  # `key=` on the command line is None
    module, trainer = train(cfg)
    out = capsys.readouterr().out
    assert module.iteration == 4 and module.skips.read > 4, module.skips.read
    assert trainer.global_step == 4 * 2  # 2 epochs of one minibatch per iteration: skipped batches step nothing
    assert f"6 of the first 12 prompts of data.train={problems_file} (50.0%) are over data.max_prompt_tokens={limit}" in out
    lines = [line for line in out.splitlines() if " are over data.max_prompt_tokens=" in line]
    assert 2 <= len(lines) <= 1 + module.skips.read // 2, out  # the pre-flight line, then one per 2 batches at most
    assert all("p50" in line and "(first: " in line for line in lines)
    assert "prompt of" not in out and module.skips.skipped == module.skips.read - 4


class NaNScorer(RolloutScorer):
    """Scores every response NaN: the step must be skipped without touching the weights."""

    def begin(self, responses, problems):
        self.n = len(responses)

    def finish(self, module):
        return RolloutScores(scores=[float("nan")] * self.n, breakdowns=[{}] * self.n)

    def validate(self, responses, problems):
        raise AssertionError("no data.val in this run")

    def record_validation(self, results, standing, turns_taken):
        raise AssertionError("no data.val in this run")


def test_nonfinite_rewards_skip_the_step_and_a_run_that_never_stepped_writes_no_weights(tiny_chatglm_dir, problems_file,
                                                                                       tmp_path):
    from solver_ppo.ppo import train as train_mod

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path))
    original = train_mod.SolverReward
    train_mod.SolverReward = lambda config: NaNScorer()
    try:
        with pytest.raises(UserError, match=r"PPO took no optimizer step in 2 iterations: nothing trained, no trainable.pt"):
            train_mod.train(cfg)
    finally:
        train_mod.SolverReward = original
    assert not (run_dir(tmp_path) / "trainable.pt").exists()
    assert scalars(run_dir(tmp_path))["train/skipped_nonfinite"] == [1.0, 1.0]


class NaNGradientOnce(Callback):
    """The first backward pass leaves NaN in one LoRA gradient: that optimizer step must be skipped."""

    def on_train_start(self, trainer, module):
        param = next(p for n, p in module.policy.named_parameters() if "lora_B" in n)
        self.fired = 0

        def poison(grad):
            self.fired += 1
            return grad * float("nan") if self.fired == 1 else grad

        param.register_hook(poison)


def test_a_nonfinite_gradient_skips_its_optimizer_step_with_the_entropy_bonus_on(tiny_chatglm_dir, problems_file,
                                                                                 tmp_path):
    from solver_ppo.ppo.train import train

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **{"ppo.entropy_coef": 0.01}))
    poison = NaNGradientOnce()
    module, trainer = train(cfg, extra_callbacks=[poison])
    logged = scalars(run_dir(tmp_path))
    assert poison.fired >= 2 and logged["train/skipped_nonfinite"] == [1.0, 0.0]
    assert trainer.global_step == 2 * 2 * 2 - 1  # 2 iterations x 2 epochs x 2 minibatches, less the skipped step
    trained = module.policy.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if "lora_B" in k)
    assert all(math.isfinite(x) and x > 0 for x in logged["train/entropy"])


def test_broken_reward_pool_scores_zero_and_training_goes_on(tiny_chatglm_dir, problems_file, tmp_path):
    from solver_ppo.ppo.train import train
    from solver_ppo.callbacks.solver_reward import SolverReward

    class BrokenPool:
        def submit(self, items):
            raise RuntimeError("worker pool is gone")

        def close(self):
            pass

    class BreakPool(SolverReward):
        def setup(self, trainer, pl_module, stage):
            super().setup(trainer, pl_module, stage)
            self.pool.close()
            self.pool = BrokenPool()

    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path))
    from solver_ppo.ppo import train as train_mod

    original = train_mod.SolverReward
    train_mod.SolverReward = BreakPool
    try:
        module, _ = train(cfg)
    finally:
        train_mod.SolverReward = original
    assert module.iteration == 2
    assert module.last_rollout.scores.tolist() == [0.0] * 4
    assert "worker pool is gone" in module.last_rollout.breakdowns[0]["reason"]


def test_resume_after_kill_9_reproduces_the_uninterrupted_run(tiny_chatglm_dir, problems_file, tmp_path):
    straight_root, killed_root = tmp_path / "straight", tmp_path / "killed"
    cmd = [sys.executable, "-m", "app", "train"]
    dropout = {"model.lora.dropout": 0.1}  # as the real-model configs: dropout masks must replay too
    # The uninterrupted run: 3 iterations.
    args = overrides(tiny_chatglm_dir, problems_file, straight_root, **{"trainer.max_steps": 3}, **dropout)
    subprocess.run([*cmd, *args], check=True, cwd=ROOT, capture_output=True)
    # The killed run: meant to go on for 50 iterations, killed once iteration 2 is on disk.
    args = overrides(tiny_chatglm_dir, problems_file, killed_root, **{"trainer.max_steps": 50}, **dropout)
    proc = subprocess.Popen([*cmd, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    target = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        found = list(killed_root.glob("ppo/version_0/checkpoints/iter-000002.ckpt"))
        if found:
            target = found[0]
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its SCIP workers, mid-iteration
    proc.wait()
    assert target is not None, "the killed run never wrote its iteration-2 checkpoint"
    for ckpt in target.parent.glob("*.ckpt"):  # a write cut by the kill may leave a .tmp, never a bad .ckpt
        torch.load(ckpt, weights_only=False)
    # Resume to 3 iterations (max_steps counts iterations in all, like the straight run).
    args = overrides(tiny_chatglm_dir, problems_file, killed_root, **{"trainer.max_steps": 3, "resume": target},
                     **dropout)
    subprocess.run([*cmd, *args], check=True, cwd=ROOT, capture_output=True)

    straight = torch.load(run_dir(straight_root) / "trainable.pt", weights_only=True)["state_dict"]
    resumed = torch.load(run_dir(killed_root) / "trainable.pt", weights_only=True)["state_dict"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    # and the resumed run really did continue: its log starts at iteration 3
    assert len(scalars(run_dir(killed_root))["train/kl"]) == 1


BAD_SETTINGS = [
    ("ppo.lr=-1", "ppo.lr=-1.0 is outside its allowed range (0, inf)"),
    ("ppo.epochs=0", "ppo.epochs=0 is outside its allowed range [1, inf)"),
    ("ppo.minibatch_size=0", "ppo.minibatch_size=0 is outside"),
    ("ppo.gamma=2", "ppo.gamma=2.0 is outside its allowed range [0, 1]"),
    ("sampling.temperature=0", "sampling.temperature=0.0 is outside its allowed range (0, inf)"),
    ("sampling.top_p=0", "sampling.top_p=0.0 is outside its allowed range (0, 1]"),
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens=0 is outside"),
    ("trainer.max_steps=0", "trainer.max_steps=0 is outside"),
    ("trainer.devices=0", "trainer.devices=0 is outside"),
    ("trainer.precision=bf17", "trainer settings (trainer.accelerator/devices/strategy/precision): Precision 'bf17' is invalid"),
    ("trainer.accelerator=gpx", "invalid accelerator name"),
    ("data.val=/no/such/val.jsonl", "data.val: data file not found: /no/such/val.jsonl"),
    ("trainer.strategy=fsdp", "trainer.strategy=fsdp is not supported"),
    ("ppo.lr_schedule=exp", "ppo.lr_schedule='exp' is not one of constant, linear, cosine"),
    ("ppo.kl.estimator=k9", "ppo.kl.estimator='k9' is not one of k1, k2, k3"),
    ("ppo.kl.horizon=0", "ppo.kl.horizon=0 is outside its allowed range [1, inf)"),
    ("evaluation.limits.time_limit_s=-1", "evaluation.limits.time_limit_s=-1.0 is outside its allowed range (0, inf)"),
    ("trainer.loggers=[tensorboard,comet]", "trainer.loggers=['tensorboard', 'comet']: unknown logger 'comet'; choose from tensorboard, csv, wandb, mlflow"),
    ("trainer.loggers=[mlflow]", "trainer.loggers=['mlflow']: add tensorboard or csv too; one of them names the run directory"),
    ("resume=" + __file__, "is not a checkpoint; pass a .ckpt from logs/RUN/version_N/checkpoints/"),
    (f"trainer.root_dir={__file__}/logs", f"trainer.root_dir={__file__}/logs: cannot write in {__file__}/logs (Not a directory)"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_SETTINGS, ids=[s for s, _ in BAD_SETTINGS])
def test_bad_settings_are_refused_before_any_model_loads(setting, message, problems_file, tmp_path, capsys):
    """The model path does not exist: the settings' error must come first, in one line, for train and sft."""
    from solver_ppo.cli import main

    missing = tmp_path / "no-such-model"
    sft = [f"model.path={missing}", f"data.train={problems_file}", f"output_dir={tmp_path / 'sft'}",
           f"trainer.root_dir={tmp_path}"]
    commands = [["train", *overrides(missing, problems_file, tmp_path)]]
    if not setting.startswith(("ppo.", "sampling.", "evaluation.", "resume=")):  # sft has no such keys
        commands.append(["sft", *sft])
    for argv in commands:
        assert main([*argv, setting]) == 2
        err = capsys.readouterr().err
        assert message in err, (argv[0], err)
        assert "no-such-model" not in err and "Traceback" not in err


def test_a_bad_sft_setting_is_refused_before_any_model_loads(problems_file, tmp_path, capsys):
    from solver_ppo.cli import main

    argv = ["sft", f"model.path={tmp_path / 'no-such-model'}", f"data.train={problems_file}", f"output_dir={tmp_path}",
            "sft.lr=0"]
    assert main(argv) == 2
    assert "sft.lr=0.0 is outside its allowed range (0, inf)" in capsys.readouterr().err
    assert main([*argv[:-1], "sft.lr_schedule=exp"]) == 2
    assert "sft.lr_schedule='exp' is not one of constant, linear, cosine" in capsys.readouterr().err
    # where the trained model goes is checked before training, not after
    assert main([*argv[:-1], f"output_dir={problems_file}/sft"]) == 2
    assert f"output_dir={problems_file}/sft: cannot write in {problems_file}/sft (Not a directory)" in capsys.readouterr().err
    assert main([*argv[:-1], f"output_dir={tmp_path / 'no-such-model'}"]) == 2
    assert "is the base model's directory (model.path); choose a new directory" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp_cpu_offload", "deepspeed", "deepspeed_stage_2"])
def test_fsdp1_and_deepspeed_are_refused_before_any_model_loads(strategy, problems_file, tmp_path, capsys):
    """The model path does not exist: the strategy error must come first, naming what to use."""
    from solver_ppo.cli import main

    missing = tmp_path / "no-such-model"
    strategy_arg = f"trainer.strategy={strategy}"
    sft_args = [f"model.path={missing}", f"data.train={problems_file}", f"output_dir={tmp_path / 'sft'}", strategy_arg]
    for argv in (["train", *overrides(missing, problems_file, tmp_path), strategy_arg], ["sft", *sft_args]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"trainer.strategy={strategy} is not supported" in err
        assert "Use trainer.strategy=fsdp2" in err
        assert "no-such-model" not in err


def test_resuming_with_a_different_optimizer_layout_is_a_clear_error(tiny_chatglm_dir, problems_file, tmp_path):
    """A GAE checkpoint (policy + value head groups) resumed with RLOO (policy only)."""
    from solver_ppo.ppo.train import train

    extra = {"trainer.max_steps": 1, "trainer.checkpoint_every": 1}
    _, trainer = train(load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path / "gae", **extra)))
    last = Path(trainer.log_dir) / "checkpoints" / "last.ckpt"
    resumed = {**extra, "trainer.max_steps": 2, "ppo.advantage": "rloo", "resume": last}
    with pytest.raises(UserError, match="the checkpoint's optimizer has 2 parameter groups and this run's 1"):
        train(load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path / "rloo", **resumed)))


class PatternScorer(RolloutScorer):
    """Scores by problem and sample, not by text: the first sample of each group 1 and the rest 0;
    with `even_alike`, all samples of problems with an even number 0.5 (no group signal)."""

    def __init__(self, group_size: int, even_alike: bool):
        self.k, self.even_alike = group_size, even_alike

    def begin(self, responses, problems):
        alike = [self.even_alike and int(p.id.rsplit("-", 1)[-1]) % 2 == 0 for p in problems]
        self.scores = [0.5 if same else float(i % self.k == 0) for i, same in enumerate(alike)]

    def finish(self, module):
        return RolloutScores(scores=self.scores, breakdowns=[{}] * len(self.scores))

    def validate(self, responses, problems):
        raise AssertionError("no data.val in this run")

    def record_validation(self, results, standing, turns_taken):
        raise AssertionError("no data.val in this run")


def train_scored_by_pattern(cfg, even_alike: bool = False):
    from solver_ppo.ppo import train as train_mod

    original = train_mod.SolverReward
    train_mod.SolverReward = lambda config: PatternScorer(cfg.ppo.samples_per_prompt, even_alike)
    try:
        return train_mod.train(cfg)
    finally:
        train_mod.SolverReward = original


GRPO = {"ppo.advantage": "grpo", "ppo.whiten_advantages": False, "ppo.loss_aggregation": "sequence_mean",
        "ppo.kl.placement": "loss", "ppo.kl.estimator": "k3", "ppo.kl.coef": 0.04}


def test_grpo_advantages_and_kl_as_a_loss_term(tiny_chatglm_dir, problems_file, tmp_path):
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **GRPO))
    module, _ = train_scored_by_pattern(cfg)
    rollout = module.last_rollout
    # the KL is not in the rewards: each row's reward is its score, on its last token
    assert torch.allclose(rollout.rewards.sum(-1), rollout.scores)
    assert rollout.scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    # (1, 0): mean 0.5, std sqrt(0.5) -> advantages ±0.5 / sqrt(0.5) on every token
    per_row = torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.5 / math.sqrt(0.5)
    assert torch.allclose(rollout.advantages, per_row[:, None] * rollout.response_mask, atol=1e-5)
    logged = scalars(run_dir(tmp_path))
    assert len(logged["train/kl_loss"]) == 2 and "train/value_loss" not in logged
    assert float(module.policy.value_head.proj.bias.abs().max()) == 0.0  # the value head is GAE's only


def test_dynamic_sampling_refills_the_batch_with_informative_prompts(tiny_chatglm_dir, problems_file, tmp_path):
    extra = {**GRPO, "ppo.dynamic_sampling_rounds": 4, "trainer.max_steps": 3}
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **extra))
    module, _ = train_scored_by_pattern(cfg, even_alike=True)
    rollout = module.last_rollout
    assert len(rollout) == 4  # prompts_per_step 2 x 2 samples
    assert all(int(i.rsplit("-", 1)[-1]) % 2 == 1 for i in rollout.ids)  # only groups with a signal were kept
    assert rollout.scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    logged = scalars(run_dir(tmp_path))
    assert logged["train/kept_prompts"] == [2.0, 2.0, 2.0]
    rounds, dropped = logged["train/sampling_rounds"], logged["train/dropped_prompts"]
    assert max(rounds) > 1 and sum(dropped) > 0  # half of the problems carry no signal
    # each step sampled 2 prompts per round; the extra rounds were drawn from the refill stream
    assert module.refill_batches == sum(rounds) - 3
    ckpt = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["ppo"]["refill_batches"] == module.refill_batches


def test_reinforce_pp_with_overlong_shaping_and_truncated_answers_masked_out(tiny_chatglm_dir, problems_file, tmp_path):
    """A random tiny model never stops within 4 tokens: every answer is truncated, so with
    ppo.mask_truncated no token reaches the loss and the weights stay where they were."""
    from solver_ppo.ppo import losses

    extra = {"ppo.advantage": "reinforce_pp", "sampling.max_new_tokens": 4, "ppo.overlong_buffer": 2,
             "ppo.overlong_penalty": 0.5, "ppo.mask_truncated": True, "ppo.whiten_advantages": False}
    cfg = load_config(None, overrides(tiny_chatglm_dir, problems_file, tmp_path, **extra))
    module, _ = train_scored_by_pattern(cfg)
    rollout, mask = module.last_rollout, module.last_rollout.response_mask
    assert rollout.truncated.all() and (mask.sum(-1) == 4).all()
    # every answer has 4 = max_new_tokens tokens: the whole penalty, -0.5, on its score
    rewards = losses.token_rewards(rollout.scores - 0.5, rollout.kl, mask, module.kl_ctl.value)
    assert torch.allclose(rollout.rewards, rewards)
    assert torch.allclose(rollout.advantages, losses.reinforce_pp_advantages(rewards, mask, 1.0), atol=1e-6)
    assert all(float(v.abs().max()) == 0 for k, v in module.policy.trainable_state_dict().items() if "lora_B" in k)
    assert scalars(run_dir(tmp_path))["train/policy_loss"] == [0.0, 0.0]
