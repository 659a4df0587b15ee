"""PPOModule: policy, frozen reference and value head, trained by PPO against the solver score.

One `training_step` is one PPO iteration:

    prompts ─► generate ─► (scorer starts solving) ─► old/ref log-probs, values ─► scores
            ─► [rollout.turns > 1: each unfinished episode reads the feedback on its answer and
                answers again, all of a turn in one batch; the passes run during the last turn's scoring]
            ─► [dynamic sampling: drop prompts whose samples all score the same, sample more prompts]
            ─► per-token rewards (score on the last token, −β·KL on each unless the KL is a loss term)
            ─► advantages (GAE, RLOO or GRPO over each prompt's samples, REINFORCE++)
            ─► K epochs × minibatches of the clipped surrogate (per-token or per-sequence ratios)

`docs/algorithms.md` has the formulas and the settings that make PPO, GRPO, Dr. GRPO, DAPO,
REINFORCE++ and GSPO.

`validation_step` answers the `data.val` problems greedily and has the scorer grade them.

Optimization is manual (`automatic_optimization = False`) because one batch of prompts feeds
several optimizer steps. The module never imports SCIP: scores come from the trainer's
`RolloutScorer` callback.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from solver_ppo.config import TrainConfig
from solver_ppo.data.datamodule import PromptDataset
from solver_ppo.data.limits import SkipCounter
from solver_ppo.data.prompts import build_messages
from solver_ppo.errors import UserError
from solver_ppo.evaluation.turns import turn_statistics
from solver_ppo.models.generation import ContextCache
from solver_ppo.models.loading import LoadedModel
from solver_ppo.models.policy import PolicyWithValue
from solver_ppo.optim import lr_lambda
from solver_ppo.ppo import losses
from solver_ppo.ppo.episode import Episode, Reply, episode_tensors, play, standing_matches
from solver_ppo.ppo.kl import build_kl_controller
from solver_ppo.ppo.rollout import Rollout, concat_rollouts, partial_kl_mask, truncated_rows
from solver_ppo.ppo.scoring import RolloutScorer


class PPOModule(pl.LightningModule):
    def __init__(self, cfg: TrainConfig, loaded: LoadedModel, policy: PolicyWithValue):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = loaded.tokenizer
        self.chat = loaded.chat
        self.policy = policy
        self.kl_ctl = build_kl_controller(cfg.ppo.kl)
        self.iteration = 0  # PPO iterations done (the trainer's global_step counts optimizer steps)
        self.refill_batches = 0  # prompt batches drawn by dynamic sampling (its own stream of data.train)
        self._refill_stream = None
        self.skips: SkipCounter | None = None  # this rank's prompts over data.max_prompt_tokens (set when fit starts)
        self.automatic_optimization = False
        self.strict_loading = False  # LoRA checkpoints hold only the trainable weights
        if cfg.ppo.advantage != "gae":
            # no value loss: a trainable head outside the loss would leave DDP waiting for its gradients
            policy.value_head.requires_grad_(False)

    # ---- Lightning plumbing -------------------------------------------------------------

    def _param_groups(self) -> list[dict]:
        """The policy's trainable weights, and the value head's unless frozen (all advantages but GAE)."""
        ppo = self.cfg.ppo
        groups = [{"params": self.policy.policy_parameters(), "lr": ppo.lr}]
        if self.policy.value_parameters():
            groups.append({"params": self.policy.value_parameters(), "lr": ppo.value_lr or ppo.lr})
        return groups

    def configure_optimizers(self):
        ppo = self.cfg.ppo
        optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=ppo.weight_decay)
        factor = lr_lambda(ppo.lr_schedule, ppo.warmup_steps, self.cfg.trainer.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def state_dict(self, *args, **kwargs):
        """Only what training changes: LoRA + value head (LoRA) or everything (full fine-tuning)."""
        return {f"policy.{k}": v for k, v in self.policy.trainable_state_dict().items()}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        prefix = "policy."
        self.policy.load_trainable_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo"] = {"iteration": self.iteration, "kl_controller": self.kl_ctl.state_dict(),
                             "refill_batches": self.refill_batches}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning restores the optimizer: a checkpoint whose optimizer has other parameter
        groups than this run's would fail there with a bare ValueError."""
        saved = [len(s["param_groups"]) for s in checkpoint.get("optimizer_states", [])]
        mine = len(self._param_groups())
        if saved and saved[0] != mine:
            raise UserError(
                f"resume: the checkpoint's optimizer has {saved[0]} parameter groups and this run's "
                f"{mine}: the value head has a group of its own only with ppo.advantage=gae "
                "(older solver-ppo versions gave it one under RLOO too). Resume with the settings the checkpoint "
                "was written with, or start afresh"
            )
        self.iteration = checkpoint["ppo"]["iteration"]
        self.kl_ctl.load_state_dict(checkpoint["ppo"]["kl_controller"])
        self.refill_batches = checkpoint["ppo"].get("refill_batches", 0)  # absent in checkpoints of older versions

    def configure_model(self) -> None:
        """With `trainer.strategy=fsdp2` (Lightning's ModelParallelStrategy): shard the policy."""
        if isinstance(self.trainer.strategy, ModelParallelStrategy):
            self.policy.shard(self.device_mesh["data_parallel"], self.cfg.trainer.fsdp2_gather_for_sampling)

    def on_fit_start(self) -> None:
        d = self.cfg.data
        self.skips = SkipCounter("data.max_prompt_tokens", d.max_prompt_tokens, d.max_skipped_fraction,
                                 d.skip_report_every, "prompt", self.global_rank, self.trainer.world_size)

    def on_train_end(self) -> None:
        """The trained weights in the file `python -m app export --adapter` reads; none from a run
        that never stepped its optimizer."""
        self.skips.finish(self.iteration)
        if self.trainer.global_step == 0:  # the same on every rank
            raise UserError(f"PPO took no optimizer step in {self.iteration} iterations: nothing trained, no "
                            "trainable.pt written (train/skipped_* in TensorBoard say why)")
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank asks
        state = self.policy.trainable_state_dict()  # a collective too when sharded
        if self.trainer.is_global_zero:
            self.policy.save_trainable(run_dir / "trainable.pt", state)

    def _scorer(self) -> RolloutScorer:
        scorers = [cb for cb in self.trainer.callbacks if isinstance(cb, RolloutScorer)]
        if len(scorers) != 1:
            raise RuntimeError(f"PPO needs exactly one RolloutScorer callback, the trainer has {len(scorers)}")
        return scorers[0]

    def _seed(self, salt: int) -> int:
        """Seed per (seed, iteration, rank, purpose): resuming at iteration i replays it exactly."""
        return (self.cfg.seed * 1_000_003 + self.iteration * 10_007 + self.global_rank * 101 + salt) % (2**31)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self._seed(salt))

    # ---- the algorithm -----------------------------------------------------------------

    def training_step(self, problems: list, batch_idx: int):
        timings = {"time/generate": 0.0, "time/forward": 0.0, "time/score_wait": 0.0}
        generator = self._generator(salt=1)  # one stream for all sampling rounds of the iteration
        rollout = self.sample_and_score(problems, generator, timings)
        sampling_stats = {}
        if self.cfg.ppo.dynamic_sampling_rounds:
            rollout, sampling_stats = self.keep_informative_groups(rollout, generator, timings)
        if not self._on_all_ranks(rollout is not None):  # ranks skip together, or DDP would hang
            self.log("train/skipped_batches", 1.0)
            # a batch with no prompt that fits is no iteration; one whose samples all scored alike is
            self._end_iteration(counted=self.cfg.ppo.dynamic_sampling_rounds > 0)
            return None

        self.compute_advantages(rollout)
        finite = bool(torch.isfinite(rollout.rewards).all() and torch.isfinite(rollout.advantages).all())
        if not self._on_all_ranks(finite):
            self.log("train/skipped_nonfinite", 1.0)
            self.print(f"iteration {self.iteration}: non-finite rewards or advantages, step skipped")
            self._end_iteration()
            return None

        t0 = time.perf_counter()
        stats = self.ppo_update(rollout)
        timings["time/update"] = time.perf_counter() - t0

        kl_per_seq = (rollout.kl * rollout.response_mask).sum(-1).mean()
        self.kl_ctl.update(float(self._mean_across_ranks(kl_per_seq)), len(rollout))
        n_tokens = rollout.response_mask.sum(-1)
        self.log_dict(
            {
                "train/kl": kl_per_seq,
                "train/kl_coef": float(self.kl_ctl.value),
                "train/score": rollout.scores.mean(),
                "train/response_length": n_tokens.float().mean(),  # the policy's tokens, all turns
                "train/policy_tokens": n_tokens.sum(),
                "train/generation_tokens_per_s": rollout.tokens_per_second,
                "train/lr": self.optimizers().param_groups[0]["lr"],
                **stats,
                **sampling_stats,
                **timings,
            },
            sync_dist=True,
        )
        if self.cfg.rollout.turns > 1:
            self.log_dict(self._turn_metrics(rollout.episodes), sync_dist=True)
        self.log("reward", rollout.scores.mean(), prog_bar=True, logger=False, sync_dist=True)
        self.log("kl", kl_per_seq, prog_bar=True, logger=False, sync_dist=True)
        self.last_rollout = rollout  # read by the sample logger callback
        self._end_iteration()
        return None

    def _end_iteration(self, counted: bool = True) -> None:
        read_skipped = self.all_gather(torch.tensor([self.skips.read, self.skips.skipped], device=self.device))
        total = read_skipped.reshape(-1, 2).sum(0)
        self.skips.end_step(self.iteration + 1, int(total[0]), int(total[1]))
        if not counted:
            return
        self.lr_schedulers().step()
        self.iteration += 1
        if self.iteration >= self.cfg.trainer.max_steps:
            self.trainer.should_stop = True

    def _on_all_ranks(self, flag: bool) -> bool:
        return bool(self.all_gather(torch.tensor(flag, device=self.device)).all())

    def _mean_across_ranks(self, value: torch.Tensor) -> torch.Tensor:
        return self.all_gather(value.detach()).float().mean()

    def _approx_kl_across_ranks(self, stats: dict[str, float]) -> float:
        return float(self._mean_across_ranks(torch.tensor(stats["train/approx_kl"], device=self.device)))

    def _min_across_ranks(self, n: int) -> int:
        return int(self.all_gather(torch.tensor(n, device=self.device)).min())

    def _on_any_rank(self, flag: bool) -> bool:
        return bool(self.all_gather(torch.tensor(flag, device=self.device)).any())

    def _messages(self, problem) -> list[dict[str, str]]:
        return build_messages(problem, self.cfg.data.system_prompt, self.cfg.data.instruction)

    def _encode(self, problems: list, copies: int, skips: SkipCounter | None = None) -> tuple[list[list[int]], list]:
        """Prompt token ids in the model's chat format, each `copies` times, and their problems.
        Prompts over `data.max_prompt_tokens` are left out (and counted by `skips`)."""
        limit = self.cfg.data.max_prompt_tokens
        prompts, kept = [], []
        for problem in problems:
            ids = self.chat.encode_prompt(self.tokenizer, self._messages(problem))
            if not (skips.fits(problem.id, len(ids)) if skips else len(ids) <= limit):
                continue
            prompts += [ids] * copies
            kept += [problem] * copies
        return prompts, kept

    def sample_and_score(self, problems: list, generator: torch.Generator, timings: dict[str, float]) -> Rollout | None:
        """A scored rollout of `problems`, one episode per sample (`rollout.turns` answers at most):
        the old/reference log-probs and values are computed while the scorer solves the last turn.
        None (on every rank together) when no prompt is usable."""
        episodes = self._episodes(problems, self.cfg.ppo.samples_per_prompt)
        if episodes is None:
            return None
        scorer, from_sampling = self._scorer(), self.cfg.ppo.logprobs_from_sampling
        sample = self._sampler(self.cfg.sampling, generator, from_sampling, timings)
        rollout = None

        def score(replies: list[Reply], problems: list):
            scorer.begin([r.text for r in replies], problems)  # SCIP works in its own processes from here on

            def wait():
                t0 = time.perf_counter()
                scored = scorer.finish(self)
                timings["time/score_wait"] += time.perf_counter() - t0
                return scored.verdicts()

            return wait

        def passes() -> None:  # every answer is in: old log-probs, reference log-probs, values
            nonlocal rollout
            sample.forget()
            t0 = time.perf_counter()
            rollout = self._rollout(episodes, sample.tokens_per_second())
            self.evaluate_rollout(rollout)
            timings["time/forward"] += time.perf_counter() - t0

        self._play(episodes, sample, score, self._on_any_rank, overlap=passes)
        if rollout is None:  # every episode ended before the last turn
            passes()
        # a group is all on this rank (copies of a prompt are sampled together): it votes here
        finals = scorer.settle(self, [e.final for e in episodes], self.cfg.ppo.samples_per_prompt, rollout.problems)
        cost = self.cfg.rollout.turn_cost
        rollout.scores = torch.tensor([v.score - cost * (len(e.turns) - 1) for v, e in zip(finals, episodes)],
                                      dtype=torch.float32, device=self.device)
        rollout.breakdowns = [v.breakdown for v in finals]
        return rollout

    def _play(self, episodes: list[Episode], sample, score, any_alive, overlap=None) -> None:
        r = self.cfg.rollout
        play(episodes, turns=r.turns, end=r.end, max_new_tokens=self.cfg.sampling.max_new_tokens,
             max_context_tokens=r.max_context_tokens, sample=sample, score=score, any_alive=any_alive,
             feedback_ids=lambda text, last: self.chat.encode_feedback(self.tokenizer, text, last), overlap=overlap)

    def _turn_metrics(self, episodes: list[Episode]) -> dict[str, float]:
        """acc@t, fixed@t and broke@t (fractions of the episodes), the mean number of turns, and the
        fraction of episodes that rollout.max_context_tokens ended."""
        stats = turn_statistics(standing_matches(episodes, self.cfg.rollout.turns), [len(e.turns) for e in episodes])
        n = stats.pop("n")
        metrics = {f"turns/{k}": v / n if k.startswith(("fixed", "broke")) else v for k, v in stats.items()}
        metrics["turns/context_ends"] = sum(e.end == "context" for e in episodes) / n
        return metrics

    def keep_informative_groups(
        self, rollout: Rollout | None, generator: torch.Generator, timings: dict[str, float]
    ) -> tuple[Rollout | None, dict[str, float]]:
        """DAPO's dynamic sampling: prompts whose samples all score the same carry no group-relative
        signal; drop them and sample more prompts until `prompts_per_step` remain, at most
        `dynamic_sampling_rounds` more rounds. Every rank samples as many rounds (another round while
        any rank is short) and keeps as many prompts (the fewest any rank has), so the ranks' updates
        stay paired; with none kept, every rank skips the step."""
        ppo = self.cfg.ppo
        k, target = ppo.samples_per_prompt, ppo.prompts_per_step
        kept: list[Rollout] = []
        n_kept = n_dropped = rounds = 0

        def keep(scored: Rollout | None) -> None:
            nonlocal n_kept, n_dropped
            if scored is None:
                return
            groups = losses.informative_groups(scored.scores, k)  # (G,)
            n_kept, n_dropped = n_kept + int(groups.sum()), n_dropped + int((~groups).sum())
            rows = torch.nonzero(groups.repeat_interleave(k)).flatten()
            if len(rows):
                kept.append(scored.select(rows))

        keep(rollout)
        while rounds < ppo.dynamic_sampling_rounds and self._on_any_rank(n_kept < target):
            rounds += 1
            keep(self.sample_and_score(self._refill_problems(), generator, timings))
        common = self._min_across_ranks(min(n_kept, target))
        stats = {"train/sampling_rounds": float(1 + rounds), "train/dropped_prompts": float(n_dropped),
                 "train/kept_prompts": float(common)}
        if common == 0:
            return None, stats
        merged = concat_rollouts(kept, self.policy.pad_token_id)
        return merged.select(torch.arange(common * k)), stats

    def _refill_problems(self) -> list:
        """The next batch of dynamic sampling's prompts: data.train in an order of its own (seed
        -1 - seed, never the main stream's), sharded by rank; its position is saved in checkpoints."""
        if self._refill_stream is None:
            d = self.cfg.data
            dataset = PromptDataset(d.train, self.cfg.ppo.prompts_per_step, fmt=d.format, on_bad_line=d.on_bad_line,
                                    shuffle_buffer=d.shuffle_buffer, seed=-1 - self.cfg.seed, loop=True,
                                    start_batch=self.refill_batches)
            self._refill_stream = iter(dataset)
        self.refill_batches += 1
        return next(self._refill_stream)

    def _episodes(self, problems: list, copies: int) -> list[Episode] | None:
        """`copies` episodes per usable problem, or None (on every rank together) when none is."""
        prompts, kept = self._encode(problems, copies, self.skips)
        # Every rank trains on the same number of rows, or the ranks' gradient all-reduces (DDP,
        # FSDP2) would stop pairing up: a rank that skipped long prompts makes the others leave
        # out as many problems (whole groups of samples, as RLOO needs).
        n_problems = len(prompts) // copies
        common = self._min_across_ranks(n_problems)
        if common < n_problems:
            print(f"rank {self.global_rank}: {n_problems - common} problems left out so every rank trains on {common}",
                  flush=True)
            prompts, kept = prompts[: common * copies], kept[: common * copies]
        if not prompts:
            return None
        return [Episode(problem, ids) for ids, problem in zip(prompts, kept)]

    def _sampler(self, sampling, generator: torch.Generator | None, keep_logprobs: bool, timings: dict[str, float]):
        """The answers to a batch of contexts, one `policy.generate` call per turn; with several
        turns the KV cache carries over, so a turn reads only the feedback (`ContextCache`)."""
        clock = {"tokens": 0, "seconds": 0.0}
        cache = ContextCache() if self.cfg.rollout.turns > 1 else None

        @torch.no_grad()
        def sample(contexts: list[list[int]]) -> list[Reply]:
            t0 = time.perf_counter()
            if not contexts:
                if self.policy.sharded:  # each forward of a sharded model is a collective: a stand-in prompt
                    self.policy.generate([[self.chat.pad_token_id]], sampling)
                return []
            self.policy.eval()
            gen = self.policy.generate(contexts, sampling, generator=generator, keep_logprobs=keep_logprobs,
                                       context_cache=cache)
            texts = gen.texts(self.tokenizer)
            truncated = truncated_rows(gen.responses, gen.response_mask, self.policy.stop_token_ids).tolist()
            values = self.policy.value_head(gen.hidden) if keep_logprobs else None  # (B, R)
            replies = []
            for i, mask in enumerate(gen.response_mask.bool()):
                replies.append(Reply(gen.responses[i][mask].tolist(), texts[i], truncated[i],
                                     gen.logprobs[i][mask] if keep_logprobs else None,
                                     values[i][mask] if keep_logprobs else None))
            clock["tokens"] += int(gen.response_lengths.sum())
            clock["seconds"] += gen.elapsed_s
            timings["time/generate"] += time.perf_counter() - t0
            return replies

        sample.tokens_per_second = lambda: clock["tokens"] / clock["seconds"] if clock["seconds"] > 0 else 0.0
        sample.forget = cache.clear if cache is not None else lambda: None  # no turn follows: free the cache
        return sample

    def _rollout(self, episodes: list[Episode], tokens_per_second: float) -> Rollout:
        """One row per episode (app/ppo/episode.py), the policy's tokens in `response_mask`."""
        rows = episode_tensors(episodes, self.policy.pad_token_id, self.device)
        return Rollout(
            problems=[e.problem for e in episodes],
            responses=[e.turns[-1].text for e in episodes],
            truncated=torch.tensor([e.turns[-1].truncated for e in episodes], device=self.device),
            tokens_per_second=tokens_per_second,
            episodes=episodes,
            **rows,
        )

    @torch.no_grad()
    def validation_step(self, problems: list, batch_idx: int) -> None:
        """Greedy answers to held-out problems (`data.val`), scored by the solver: what PPO is meant
        to raise. Episodes of `rollout.turns` answers as in training, the last one counts; the
        scorer logs val/accuracy, val/reward, ... (and val/acc@t per turn) once per validation pass."""
        prompts, kept = self._encode(problems, copies=1)
        greedy = dataclasses.replace(self.cfg.sampling, do_sample=False)
        if self.policy.sharded and not prompts:
            # each forward of a sharded model is a collective: answer a stand-in prompt, unscored
            self.policy.generate([[self.chat.pad_token_id]], greedy)
            return
        episodes = [Episode(problem, ids) for ids, problem in zip(prompts, kept)]
        scorer = self._scorer()
        sample = self._sampler(greedy, None, False, {"time/generate": 0.0})

        def score(replies: list[Reply], problems: list):
            verdicts = scorer.validate([r.text for r in replies], problems).verdicts()
            return lambda: verdicts

        # no collective: ranks may hold different numbers of validation batches (a sharded model
        # sees the whole set on every rank, so its ranks play the same turns)
        self._play(episodes, sample, score, any_alive=bool)
        if episodes:
            standing = standing_matches(episodes, self.cfg.rollout.turns)
            scorer.record_validation([e.final.result for e in episodes], standing, [len(e.turns) for e in episodes])

    @torch.no_grad()
    def evaluate_rollout(self, rollout: Rollout) -> None:
        """Reference log-probs, and old log-probs and values unless sampling kept them
        (`ppo.logprobs_from_sampling`); minibatch_size rows at a time (bounded memory)."""
        from_sampling = self.cfg.ppo.logprobs_from_sampling
        old_logprobs, values, rollout.ref_logprobs = self.policy.score_rollout(
            rollout.sequences, rollout.attention_mask, rollout.prompt_length, self._temperature,
            chunk_size=self.cfg.ppo.minibatch_size, reference_only=from_sampling,
        )
        if not from_sampling:
            rollout.old_logprobs, rollout.values = old_logprobs, values

    @property
    def _temperature(self) -> float:
        """Log-probs are taken at the sampling temperature, so ratios and KL compare like with like."""
        return self.cfg.sampling.temperature if self.cfg.sampling.do_sample else 1.0

    @torch.no_grad()
    def compute_advantages(self, rollout: Rollout) -> None:
        ppo, mask = self.cfg.ppo, rollout.response_mask
        rollout.kl = losses.kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, ppo.kl.estimator) * mask
        rollout.kl_mask = None
        if ppo.kl.partial:
            response_ids = rollout.sequences[:, rollout.prompt_length :]
            rollout.kl_mask = partial_kl_mask(response_ids, mask, self.tokenizer).to(mask)
        scores = rollout.scores
        if ppo.overlong_buffer:  # on the length of the last answer, the one scored
            lengths = torch.tensor([e.turns[-1].end - e.turns[-1].start for e in rollout.episodes], device=mask.device)
            scores = scores + losses.overlong_penalty(
                lengths, self.cfg.sampling.max_new_tokens, ppo.overlong_buffer, ppo.overlong_penalty
            )
        beta = self.kl_ctl.value if ppo.kl.placement == "reward" else 0.0  # else a loss term (minibatch_loss)
        rollout.rewards = losses.token_rewards(scores, rollout.kl, mask, beta, rollout.kl_mask)
        rollout.returns = None
        if ppo.advantage == "gae":
            advantages, rollout.returns = losses.gae(rollout.rewards, rollout.values, mask, ppo.gamma, ppo.lam)
        elif ppo.advantage == "reinforce_pp":
            advantages = losses.reinforce_pp_advantages(rollout.rewards, mask, ppo.gamma)
        else:  # one advantage per response, on all its tokens, from the other samples of its prompt
            sequence_rewards = rollout.rewards.sum(-1)  # (B,)
            if ppo.advantage == "rloo":
                per_row = losses.leave_one_out_advantages(sequence_rewards, ppo.samples_per_prompt)
            else:
                per_row = losses.group_advantages(sequence_rewards, ppo.samples_per_prompt, ppo.scale_rewards)
            advantages = per_row[:, None] * mask
        if ppo.whiten_advantages:
            advantages = losses.masked_whiten(advantages, mask)
        rollout.advantages = advantages

    def ppo_update(self, rollout: Rollout) -> dict[str, float]:
        """K epochs over shuffled minibatches, with accumulation, clipping and an approx-KL stop."""
        ppo = self.cfg.ppo
        optimizer = self.optimizers()
        self.policy.train()
        sums: dict[str, float] = {}
        n_minibatches, n_skipped, stopped_early = 0, 0, False
        per_epoch = math.ceil(len(rollout) / ppo.minibatch_size)
        generator = torch.Generator().manual_seed(self._seed(salt=2))
        # LoRA dropout draws from the global generator: seeded per iteration, a resumed run draws the same masks
        torch.manual_seed(self._seed(salt=3))
        for _ in range(ppo.epochs):
            # Every decision below is taken by all ranks together (same rows per rank, see
            # generate_rollout): a backward on one rank only would leave DDP's all-reduce waiting.
            for i, mb in enumerate(rollout.minibatches(ppo.minibatch_size, generator)):
                loss, stats = self.minibatch_loss(mb)
                if self._on_all_ranks(bool(torch.isfinite(loss))):
                    self.manual_backward(loss / ppo.grad_accum)
                else:  # a non-finite loss (on any rank) never reaches the weights
                    n_skipped += 1
                step_due = (i + 1) % ppo.grad_accum == 0 or i + 1 == per_epoch
                if step_due:
                    self.clip_gradients(optimizer, gradient_clip_val=ppo.max_grad_norm, gradient_clip_algorithm="norm")
                    if self._on_all_ranks(self._gradients_finite()):
                        optimizer.step()
                    else:
                        n_skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                n_minibatches += 1
                # checked where an optimizer step was due: a stop mid-accumulation would drop the gradients
                if step_due and ppo.max_approx_kl is not None and self._approx_kl_across_ranks(stats) > ppo.max_approx_kl:
                    stopped_early = True
                    break
            if stopped_early:
                break
        optimizer.zero_grad(set_to_none=True)
        out = {key: value / max(1, n_minibatches) for key, value in sums.items()}
        out["train/early_stopped"] = float(stopped_early)
        out["train/skipped_nonfinite"] = float(n_skipped)
        if rollout.returns is not None:
            out["train/explained_variance"] = float(
                losses.explained_variance(rollout.values, rollout.returns, rollout.response_mask)
            )
        return out

    def _gradients_finite(self) -> bool:
        """One host sync for all gradients (not one per tensor: a 6B LoRA has ~1,000 of them)."""
        grads = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in self.policy.parameters()]
        flags = [torch.isfinite(g).all() for g in grads if g is not None]
        return bool(torch.stack(flags).all()) if flags else True

    def minibatch_loss(self, mb: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        ppo, mask = self.cfg.ppo, mb.response_mask
        if ppo.mask_truncated:  # DAPO's overlong filtering: a cut-off answer teaches nothing either way
            mask = mask * (~mb.truncated).to(mask)[:, None]
        # constant_length: the most policy tokens an episode can hold
        aggregation = {"aggregation": ppo.loss_aggregation,
                       "max_length": self.cfg.sampling.max_new_tokens * self.cfg.rollout.turns}
        # with no entropy bonus the entropy is only logged: no gradient through a (B, R, V) product
        logprobs, values, entropy = self.policy(
            mb.sequences, mb.attention_mask, mb.prompt_length, self._temperature, entropy_grad=ppo.entropy_coef != 0
        )
        pg_loss, pg_stats = losses.policy_loss(
            logprobs, mb.old_logprobs, mb.advantages, mask, ppo.clip_low, ppo.clip_high, ppo.ratio, **aggregation
        )
        mean_entropy = losses.masked_mean(entropy, mask)
        loss = pg_loss - ppo.entropy_coef * mean_entropy
        stats = {
            "train/policy_loss": pg_loss.item(),
            "train/entropy": mean_entropy.item(),
            "train/approx_kl": pg_stats["approx_kl"].item(),
            "train/clip_fraction": pg_stats["clip_fraction"].item(),
        }
        if ppo.kl.placement == "loss" and self.kl_ctl.value:  # GRPO: beta * KL(policy || reference) as a loss term
            kl_loss = losses.kl_loss(logprobs, mb.ref_logprobs, mask, ppo.kl.estimator, **aggregation, kl_mask=mb.kl_mask)
            loss = loss + self.kl_ctl.value * kl_loss
            stats["train/kl_loss"] = kl_loss.item()
        if mb.returns is not None:  # GAE: the value head learns the returns (RLOO needs no values)
            v_loss, v_stats = losses.value_loss(values, mb.values, mb.returns, mask, ppo.value_clip)
            loss = loss + ppo.vf_coef * v_loss
            stats["train/value_loss"] = v_loss.item()
            stats["train/value_clip_fraction"] = v_stats["clip_fraction"].item()
        return loss, stats
