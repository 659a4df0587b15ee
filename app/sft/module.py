"""SFTModule: supervised warm start (RLHF step 1) on question -> demonstrated answer pairs.

The target is the answer the PPO instruction asks for (a model in a ```lp block, then the
optimal value; with a code preset such as `data.instruction: gurobipy`, the model as a program in
that library), so the SFT policy starts PPO already speaking the expected format: the record's
`demonstration` when it has one (a teacher's answer, errors included), else the reference. A
revision demonstration (a record's `revision`) puts an earlier answer and the evaluation's
feedback on it before the target, laid out as a multi-turn rollout lays them out.
Loss: token cross-entropy on the answer tokens only (prompt and padding are ignored). Examples
over `sft.max_length` are left out and summarized (`app/data/limits.py`); a step whose examples
were all left out, on every rank, is no optimizer step (optimization is manual for that), and a run
that leaves out more than `data.max_skipped_fraction` stops. With
`data.val`, the same loss and token accuracy on held-out problems every `trainer.val_every` steps
(`sft/val_loss`, `sft/val_token_accuracy`): where over-fitting to the training problems shows.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import ModelParallelStrategy
from torchmetrics import MeanMetric

from solver_ppo.config import SFTConfig
from solver_ppo.data.limits import SkipCounter
from solver_ppo.data.prompts import build_messages, sft_target
from solver_ppo.models.generation import left_pad, positions_from_mask
from solver_ppo.models.loading import LoadedModel
from solver_ppo.models.policy import add_lora, full_tensor, reshard, shard_causal_lm
from solver_ppo.optim import lr_lambda

IGNORE = -100


class SFTModule(pl.LightningModule):
    def __init__(self, cfg: SFTConfig, loaded: LoadedModel):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = loaded.tokenizer
        self.chat = loaded.chat
        model = loaded.model
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lora = cfg.model.lora
        if lora.enabled:
            model = add_lora(model, lora)
        self.model = model.train()  # from_pretrained returns it in eval mode
        self.automatic_optimization = False  # a step with no example on any rank must be no optimizer step
        self.skips: SkipCounter | None = None  # over-length training examples of this rank (set when fit starts)
        self.batches = 0  # training batches read, optimizer step or not
        self.skipped_steps = 0  # batches with no example on any rank (no optimizer step)
        self.sharded = False  # set by configure_model under trainer.strategy=fsdp2
        # token-weighted over the whole validation pass and every rank (synced once, at its end)
        self.val_loss, self.val_accuracy = MeanMetric(), MeanMetric()

    def on_fit_start(self) -> None:
        d = self.cfg.data
        self.skips = SkipCounter("sft.max_length", self.cfg.sft.max_length, d.max_skipped_fraction,
                                 d.skip_report_every, "example", self.global_rank, self.trainer.world_size)

    def on_train_end(self) -> None:
        self.skips.finish(self.batches)

    def configure_model(self) -> None:
        """With `trainer.strategy=fsdp2`: shard the model (each block, then the model as a whole).
        The whole is the module training calls: with LoRA the PeftModel, whose forward reaches the
        LM through `.forward`, past the LM's own FSDP hooks."""
        if isinstance(self.trainer.strategy, ModelParallelStrategy) and not self.sharded:
            shard_causal_lm(self.model, self.device_mesh["data_parallel"])
            self.sharded = True

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's whole state (gathered when sharded: a collective that every rank must call)."""
        reshard(self.model)
        return {name: full_tensor(t) for name, t in self.model.state_dict().items()}

    def _messages(self, problem) -> list[dict[str, str]]:
        return build_messages(problem, self.cfg.data.system_prompt, self.cfg.data.instruction)

    def encode(
        self, problems: list, skips: SkipCounter | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """Problems -> left-padded input_ids (B, S), attention_mask (B, S), labels (B, S); examples
        over sft.max_length are left out (and counted by `skips`); None if none is left."""
        rows, label_rows = [], []
        eos = self.chat.stop_token_ids[0]
        for problem in problems:
            prompt = self.chat.encode_prompt(self.tokenizer, self._messages(problem))
            if problem.revision:  # the earlier answer and its feedback laid out as in a multi-turn rollout
                prompt += self.tokenizer.encode(problem.revision["answer"], add_special_tokens=False) + [eos]
                prompt += self.chat.encode_feedback(self.tokenizer, problem.revision["feedback"], eos)
            target = self.tokenizer.encode(sft_target(problem, self.cfg.data.instruction), add_special_tokens=False) + [eos]
            length = len(prompt) + len(target)
            if not (skips.fits(problem.id, length) if skips else length <= self.cfg.sft.max_length):
                continue
            rows.append(prompt + target)
            label_rows.append([IGNORE] * len(prompt) + target)
        if not rows:
            return None
        input_ids, attention_mask = left_pad(rows, self.chat.pad_token_id, self.device)
        labels, _ = left_pad(label_rows, IGNORE, self.device)
        return input_ids, attention_mask, labels

    def answer_loss(
        self, problems: list, skips: SkipCounter | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """Mean cross-entropy and argmax accuracy over the answer tokens, and their number; None if
        every problem was too long."""
        encoded = self.encode(problems, skips)
        if encoded is None:
            return None
        input_ids, attention_mask, labels = encoded
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask), use_cache=False,
        )
        logits = out.logits[:, :-1].float()  # (B, S-1, V): position t predicts token t+1
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
        with torch.no_grad():
            answer = labels[:, 1:] != IGNORE
            accuracy = (logits.argmax(-1) == labels[:, 1:])[answer].float().mean()
        return loss, accuracy, int(answer.sum())

    def _zero_loss(self) -> torch.Tensor:
        """0 through every weight, from a one-token stand-in: what a rank whose batch was all too long
        trains on while other ranks have examples (DDP's all-reduce needs every rank's backward). Its
        zero gradients join the all-reduce, so that step learns from the other ranks' rows (averaged
        over all ranks)."""
        stand_in = torch.full((1, 1), self.chat.pad_token_id, dtype=torch.long, device=self.device)
        return 0.0 * self.model(input_ids=stand_in, use_cache=False).logits.float().sum()

    def training_step(self, problems: list, batch_idx: int) -> None:
        self.batches += 1
        result = self.answer_loss(problems, self.skips)
        zero = torch.zeros((), device=self.device)
        if result is None and self.trainer.world_size > 1:
            # every forward and backward is a collective across ranks (DDP's all-reduce, FSDP2's gathers),
            # in the same order on every rank: a rank without examples takes part with a zero loss
            result = (self._zero_loss(), zero, 0)
        loss, accuracy, n = result if result is not None else (None, zero, 0)
        # token means over all ranks' answers (a rank with none weighs 0) and the ranks' skip counts:
        # one all_gather every step, on every rank
        mine = [(loss.detach() if loss is not None else zero) * n, accuracy * n, n, self.skips.read, self.skips.skipped]
        per_rank = self.all_gather(torch.tensor([float(x) for x in mine], device=self.device))
        total = per_rank.reshape(-1, 5).sum(0)
        self.skips.end_step(self.batches, int(total[3]), int(total[4]))
        optimizer = self.optimizers()
        if total[2] == 0:  # every example of every rank left out: nothing to learn, no optimizer step
            if loss is not None:  # several ranks: the zero loss's backward, on all of them, pairs the collectives
                self.manual_backward(loss)
                optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.log("sft/skipped_steps", float(self.skipped_steps))
            return
        self.manual_backward(loss)
        self.clip_gradients(optimizer, gradient_clip_val=self.cfg.sft.max_grad_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        self.log("sft/loss", total[0] / total[2], prog_bar=True)
        self.log("sft/token_accuracy", total[1] / total[2], prog_bar=True)
        self.log("sft/lr", optimizer.param_groups[0]["lr"])
        self.log("sft/skipped_steps", float(self.skipped_steps))  # the running count

    def validation_step(self, problems: list, batch_idx: int) -> None:
        result = self.answer_loss(problems) if problems else None  # sharded, a rank's slice may be empty
        if result is None and self.sharded:
            self._zero_loss()  # each forward of a sharded model is a collective: take part in this one
        if result is not None:
            loss, accuracy, n = result
            self.val_loss.update(loss, weight=n)
            self.val_accuracy.update(accuracy, weight=n)

    def on_validation_epoch_end(self) -> None:
        """Every rank gets here, however many validation batches its shard had: the one sync point."""
        self.log("sft/val_loss", self.val_loss.compute())
        self.log("sft/val_token_accuracy", self.val_accuracy.compute())
        self.val_loss.reset()
        self.val_accuracy.reset()

    def configure_optimizers(self):
        s = self.cfg.sft
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s.lr_schedule, s.warmup_steps, s.max_steps))
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]
