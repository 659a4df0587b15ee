"""The training configuration: one structured schema, YAML files in configs/, key=value overrides.

Every key is checked against the schema: an unknown or mistyped key is an error that names it
and the closest valid key, never silently ignored.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from solver_ppo.errors import UserError
from solver_ppo.evaluation.config import EvaluationConfig
from solver_ppo.models.config import ModelConfig, SamplingConfig
from solver_ppo.optim import SCHEDULES


@dataclass
class KLSettings:
    estimator: str = "k1"  # k1 | k2 | k3, per token
    controller: str = "fixed"  # fixed | adaptive
    coef: float = 0.05  # initial beta
    target: float = 6.0  # adaptive: target KL per sequence
    horizon: int = 10_000  # adaptive: samples over which beta adapts
    partial: bool = False  # penalize only tokens inside the answer's model block
    # reward: -beta*KL on each token's reward (PPO, REINFORCE++); loss: beta*KL of the current policy
    # as a loss term, aggregated like the policy loss (GRPO, with estimator k3). coef 0: no KL at all
    placement: str = "reward"


@dataclass
class PPOSettings:
    prompts_per_step: int = 8  # prompts per PPO step, per rank
    samples_per_prompt: int = 1  # responses sampled per prompt (rloo needs >= 2)
    # gae (value head, per token) | rloo (leave-one-out over a prompt's samples) | grpo (minus the group mean,
    # scaled per scale_rewards) | reinforce_pp (returns of the per-token rewards, whitened over the batch).
    # Only gae trains the value head
    advantage: str = "gae"
    scale_rewards: str = "group"  # grpo: divide by the std of the group | batch | none (Dr. GRPO)
    ratio: str = "token"  # token: pi/pi_old per token (PPO, GRPO) | sequence: their geometric mean per response (GSPO)
    # token_mean: over all tokens of a minibatch (DAPO) | sequence_mean: of each response's token mean
    # (GRPO) | constant_length: token sum / (rows * sampling.max_new_tokens) (Dr. GRPO)
    loss_aggregation: str = "token_mean"
    # DAPO dynamic sampling: drop prompts whose samples all score the same and sample up to this many
    # more rounds of prompts to refill the step's batch; 0: off
    dynamic_sampling_rounds: int = 0
    overlong_buffer: int = 0  # DAPO: the last N tokens of sampling.max_new_tokens cost up to overlong_penalty; 0: off
    overlong_penalty: float = 1.0  # reward lost by a response of sampling.max_new_tokens tokens
    mask_truncated: bool = False  # responses cut off at sampling.max_new_tokens are left out of the loss
    epochs: int = 2  # PPO epochs over each rollout
    minibatch_size: int = 4  # responses per forward/backward in the update (and per chunk of the no-grad passes)
    grad_accum: int = 1  # minibatches per optimizer step
    lr: float = 1e-5  # AdamW learning rate of the policy
    value_lr: float | None = None  # None: same as lr
    lr_schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0  # linear warmup of the learning rate over this many optimizer steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this norm
    clip_low: float = 0.2  # the ratio pi/pi_old is clipped below at 1 - clip_low
    clip_high: float = 0.2  # the ratio pi/pi_old is clipped above at 1 + clip_high
    value_clip: float = 0.2  # new values are clipped to within this of the old ones in the value loss
    vf_coef: float = 0.5  # weight of the value loss (gae)
    entropy_coef: float = 0.0  # weight of the entropy bonus; 0: entropy only logged
    gamma: float = 1.0  # discount of the per-token rewards (gae)
    lam: float = 0.95  # GAE lambda: bias-variance trade-off of the advantages
    whiten_advantages: bool = True  # shift and scale the advantages to mean 0, std 1 over the batch's tokens
    max_approx_kl: float | None = None  # stop the PPO epochs of a step once exceeded
    # Old log-probs and values from the sampling loop instead of a second policy pass over the rollout
    # (one forward fewer per iteration). Equal to the full pass up to rounding in fp32; in bf16/fp16 the
    # KV-cached (and LoRA-merged) numbers differ more, so the first ratios are not exactly 1.
    logprobs_from_sampling: bool = False
    kl: KLSettings = field(default_factory=KLSettings)


@dataclass
class RolloutSettings:
    """Multi-turn episodes: after each answer the policy reads the evaluation's feedback and answers again."""

    # answers per episode at most; 1: one answer per prompt, no feedback; > 1 turns on evaluation.feedback
    turns: int = 1
    # solved: an episode ends at an error-free solve (status optimal; better than turns on the quick
    # start, docs/quickstart.md) | turns: every episode runs all its turns | done: it ends when the policy
    # answers without a model (its previous model stands)
    end: str = "solved"
    max_context_tokens: int | None = None  # an episode ends before a turn that could grow it past this; None: no limit
    turn_cost: float = 0.0  # subtracted from the episode's score for each answer after the first


@dataclass
class DataSettings:
    train: str = MISSING  # JSONL (project, SIRL/ORLM, MAMO) or OptiBench JSON
    val: str | None = None  # held-out problems scored every trainer.val_every steps (val/*); None: no validation
    format: str = "auto"  # auto | project | sirl | mamo | optibench
    shuffle_buffer: int = 256  # the stream is shuffled within a buffer of this many problems; 0: file order
    on_bad_line: str = "skip"  # skip (report and go on) | error
    num_workers: int = 0  # DataLoader worker processes reading the stream
    # longer prompts (system prompt + instruction + question, in the chat format) are left out; it must
    # hold the instruction preset with room for a question (docs/training.md has each preset's length)
    max_prompt_tokens: int = 512
    # a run stops when more than this share of the records read is left out (too long, malformed,
    # nothing to score), checked on the first 1,000 records before the model loads and while training
    max_skipped_fraction: float = 0.25
    skip_report_every: int = 50  # steps between summary lines of the records left out as too long; 0: at the end
    # None: the default system prompt, or the one model.path was trained with (its prompt_settings.json); "": none
    system_prompt: str | None = None
    # None: the default answer-format instruction (an LP in an ```lp block), or the one model.path was trained
    # with; "": none; a preset name: lp | pyscipopt | gurobipy | coptpy | pyomo | pulp | scipy (code answers in
    # that library); other text: itself
    instruction: str | None = None


@dataclass
class TrainerSettings:
    max_steps: int = 100  # PPO steps (sft: replaced by sft.max_steps)
    accelerator: str = "cpu"  # Lightning accelerator: cpu, gpu, auto, ...
    devices: int = 1  # devices per node
    num_nodes: int = 1  # machines
    strategy: str = "auto"  # auto | ddp | fsdp2 (FSDP2); other Lightning names pass through, but fsdp and deepspeed are refused
    precision: str = "32-true"  # Lightning precision, e.g. 32-true, bf16-true, bf16-mixed
    log_every_n_steps: int = 1  # scalars to TensorBoard every N steps
    sample_log_every: int = 10  # text table of samples in TensorBoard every N steps
    val_every: int = 20  # with data.val: greedy answers to those problems scored every N steps (val/*); 0: never
    checkpoint_every: int = 10  # a checkpoint (and last.ckpt) every N PPO steps; 0: none
    root_dir: str = "logs"  # TensorBoard runs and checkpoints go under this directory
    # where metrics, sample tables and the resolved config go: tensorboard | csv | wandb | mlflow (wandb and
    # mlflow: pip install 'solver-ppo[loggers]', set up by their own environment variables; docs/training.md)
    loggers: list[str] = field(default_factory=lambda: ["tensorboard"])
    enable_progress_bar: bool = True  # the progress bar (reward and KL)
    cpu_threads: int = 0  # torch intra-op threads; 0: torch's default. Small CPU models run faster on 1
    # fsdp2 sampling: gather the whole LM once per call (the whole LM on each rank while it samples),
    # or false: one block at a time at every decoding step (slower; for a model that does not fit one device)
    fsdp2_gather_for_sampling: bool = True


@dataclass
class TrainConfig:
    run_name: str = "ppo"  # logs go to trainer.root_dir/run_name/version_N
    seed: int = 0  # seeds sampling, shuffling and initialization: a run is reproducible from it
    resume: str | None = None  # checkpoint path to continue from
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    data: DataSettings = field(default_factory=DataSettings)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)


@dataclass
class SFTSettings:
    max_steps: int = 500  # optimizer steps
    batch_size: int = 16  # question-answer pairs per step, per rank
    lr: float = 1e-3  # AdamW learning rate
    lr_schedule: str = "cosine"  # constant | linear | cosine
    warmup_steps: int = 20  # linear warmup of the learning rate over this many steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradients are clipped to this norm
    max_length: int = 2048  # prompt + answer tokens (code answers of this field: ~1,100-1,500); longer pairs are left out


@dataclass
class SFTConfig:
    """Step 1 of RLHF: supervised warm start on question -> reference model pairs."""

    run_name: str = "sft"  # logs go to trainer.root_dir/run_name/version_N
    seed: int = 0  # seeds sampling, shuffling and initialization: a run is reproducible from it
    output_dir: str = MISSING  # the trained model is written here as a checkpoint directory
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataSettings = field(default_factory=DataSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)


# The allowed values of numeric settings, as intervals. `check_values` applies the entries whose
# key the config has (`train` and `sft` share the model, data and trainer keys); None is always
# allowed for the optional ones (ppo.value_lr, ppo.max_approx_kl).
RANGES: dict[str, str] = {
    "seed": "[0, inf)",
    "model.lora.r": "[1, inf)",
    "model.lora.alpha": "(0, inf)",
    "model.lora.dropout": "[0, 1)",
    "sampling.max_new_tokens": "[1, inf)",
    "sampling.temperature": "(0, inf)",  # greedy decoding is sampling.do_sample=false
    "sampling.top_p": "(0, 1]",
    "sampling.top_k": "[0, inf)",
    "ppo.prompts_per_step": "[1, inf)",
    "ppo.samples_per_prompt": "[1, inf)",
    "ppo.epochs": "[1, inf)",
    "ppo.minibatch_size": "[1, inf)",
    "ppo.grad_accum": "[1, inf)",
    "ppo.lr": "(0, inf)",
    "ppo.value_lr": "(0, inf)",
    "ppo.warmup_steps": "[0, inf)",
    "ppo.weight_decay": "[0, inf)",
    "ppo.max_grad_norm": "(0, inf)",
    "ppo.clip_low": "[0, 1)",
    "ppo.clip_high": "[0, inf)",
    "ppo.value_clip": "(0, inf)",
    "ppo.vf_coef": "[0, inf)",
    "ppo.gamma": "[0, 1]",
    "ppo.lam": "[0, 1]",
    "ppo.max_approx_kl": "(0, inf)",
    "ppo.dynamic_sampling_rounds": "[0, inf)",
    "ppo.overlong_buffer": "[0, inf)",
    "ppo.overlong_penalty": "[0, inf)",
    "ppo.kl.coef": "[0, inf)",
    "rollout.turns": "[1, inf)",
    "rollout.max_context_tokens": "[2, inf)",
    "rollout.turn_cost": "[0, inf)",
    "ppo.kl.target": "(0, inf)",
    "ppo.kl.horizon": "[1, inf)",
    "data.shuffle_buffer": "[0, inf)",
    "data.num_workers": "[0, inf)",
    "data.max_prompt_tokens": "[1, inf)",
    "data.max_skipped_fraction": "[0, 1]",
    "data.skip_report_every": "[0, inf)",
    "evaluation.workers": "[1, inf)",
    "evaluation.limits.time_limit_s": "(0, inf)",
    "evaluation.limits.wall_limit_s": "(0, inf)",
    "evaluation.limits.memory_limit_mb": "[1, inf)",
    "evaluation.limits.max_answer_chars": "[1, inf)",
    "evaluation.limits.max_vars": "[1, inf)",
    "evaluation.limits.max_cons": "[1, inf)",
    "evaluation.limits.max_nonzeros": "[1, inf)",
    "evaluation.match.tolerance": "[0, inf)",
    "evaluation.code.wall_s": "(0, inf)",
    "evaluation.code.memory_mb": "[256, inf)",
    "evaluation.code.file_mb": "[1, inf)",
    "evaluation.code.output_kb": "[1, inf)",
    "evaluation.code.open_files": "[16, inf)",
    "evaluation.code.processes": "[1, inf)",
    "evaluation.code.total_memory_mb": "[256, inf)",
    "evaluation.weights.format": "[0, inf)",
    "evaluation.weights.solved": "[0, inf)",
    "evaluation.weights.answer": "[0, inf)",
    "evaluation.weights.graph": "[0, inf)",
    "evaluation.feedback_nodes": "[1, inf)",
    "evaluation.feedback_seconds": "(0, inf)",
    "evaluation.feedback_values": "[1, inf)",
    "evaluation.votes.share": "(0, 1]",
    "evaluation.votes.min_votes": "[1, inf)",
    "sft.max_steps": "[1, inf)",
    "sft.batch_size": "[1, inf)",
    "sft.lr": "(0, inf)",
    "sft.warmup_steps": "[0, inf)",
    "sft.weight_decay": "[0, inf)",
    "sft.max_grad_norm": "(0, inf)",
    "sft.max_length": "[2, inf)",
    "trainer.max_steps": "[1, inf)",
    "trainer.devices": "[1, inf)",
    "trainer.num_nodes": "[1, inf)",
    "trainer.log_every_n_steps": "[1, inf)",
    "trainer.sample_log_every": "[0, inf)",  # 0: no sample table
    "trainer.val_every": "[0, inf)",  # 0: no validation, even with data.val
    "trainer.checkpoint_every": "[0, inf)",  # 0: no periodic checkpoints
    "trainer.cpu_threads": "[0, inf)",  # 0: torch's default
}


# The allowed values of settings that name a choice (other names are checked where they are used:
# model.family/dtype by the loader, ppo.kl.estimator/controller by the KL controller, data.format by the reader).
CHOICES: dict[str, tuple[str, ...]] = {
    "ppo.advantage": ("gae", "rloo", "grpo", "reinforce_pp"),
    "ppo.scale_rewards": ("group", "batch", "none"),
    "ppo.ratio": ("token", "sequence"),
    "ppo.loss_aggregation": ("token_mean", "sequence_mean", "constant_length"),
    "ppo.kl.placement": ("reward", "loss"),
    "rollout.end": ("turns", "solved", "done"),
    "ppo.lr_schedule": SCHEDULES,
    "sft.lr_schedule": SCHEDULES,
    "evaluation.sandbox": ("strict", "auto", "audit"),
    "evaluation.labels": ("reference", "votes"),
}


def validates(cfg) -> bool:
    """Whether a run (TrainConfig or SFTConfig) validates: `data.val` set and `trainer.val_every` not 0."""
    return bool(cfg.data.val) and cfg.trainer.val_every > 0


def in_interval(value: float, interval: str) -> bool:
    """`value` in an interval written "[a, b)", "(0, inf)", ... (bracket: closed, parenthesis: open)."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below


def _setting(cfg, key: str):
    """The value at dotted `key` of a config object, or None where the config has no such key."""
    for part in key.split("."):
        cfg = getattr(cfg, part, None)
    return cfg


def check_values(cfg) -> None:
    """Every setting of `cfg` (a TrainConfig or SFTConfig) in RANGES or CHOICES allowed there, or a
    UserError naming the key, its value and what is allowed. Run before any model is loaded."""
    for key, interval in RANGES.items():
        value = _setting(cfg, key)
        if value is not None and not in_interval(value, interval):
            raise UserError(f"{key}={value} is outside its allowed range {interval}")
    for key, allowed in CHOICES.items():
        value = _setting(cfg, key)
        if value is not None and value not in allowed:
            raise UserError(f"{key}='{value}' is not one of {', '.join(allowed)}")


def _valid_keys(schema: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in schema.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        node = schema._get_node(key)
        if isinstance(node, DictConfig):
            keys.extend(_valid_keys(node, f"{full}."))
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> UserError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError):
        close = difflib.get_close_matches(key, _valid_keys(schema), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return UserError(f"{source}: unknown config key '{key}'{hint}")
    if isinstance(err, MissingMandatoryValue):
        return UserError(f"{source}: config key '{key}' is required; set it in the YAML or as {key}=...")
    if isinstance(err, ValidationError):
        return UserError(f"{source}: bad value for config key '{key}': {_first_line(err)}")
    return UserError(f"{source}: {_first_line(err)}")


def _first_line(err: Exception) -> str:
    return str(getattr(err, "msg", None) or err).strip().splitlines()[0]


def read_yaml(path: Path, what: str = "config file"):
    """The YAML file at `path` (an OmegaConf node), or a UserError naming what is wrong with it."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in several types
        raise UserError(f"{path}: not valid YAML: {err}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), schema_cls=TrainConfig):
    """Schema defaults <- YAML file <- key=value overrides; returns a typed, validated object."""
    schema = OmegaConf.structured(schema_cls)
    merged = schema
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path)
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as err:
            raise _explain(err, schema, str(path)) from None
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, schema, f"override '{item}'") from None
    try:
        OmegaConf.to_container(merged, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, str(path) if path else "config") from None
    return OmegaConf.to_object(merged)
