"""The PPO policy: a causal LM with LoRA, the adapter-off reference, and a scalar value head.

One model, three roles:
- policy: the LM with its LoRA adapter on (the only weights PPO trains, besides the value head);
- reference: the same weights with the adapter disabled — no second copy (in full fine-tuning
  mode, `lora.enabled: false`, a frozen deep copy instead);
- value head: Linear(hidden, 1), fp32 unless bf16-true casts it, on the final (post-norm, batch-first) hidden states.

Alignment (used by GAE): for a sequence whose response starts at column `s`, response token t
sits at column s+t and is predicted from the hidden state at column s+t-1. `values[:, t]` is read
from that same hidden state, so it is V(state before emitting token t); the reward for token t
and `values[:, t+1]` (or 0 after the last token) complete the TD step.

Positions come from the attention mask (`positions_from_mask`), exactly as in generation, so
scoring a left-padded batch gives each row the numbers it gets alone.

The model must be a transformers `PreTrainedModel` whose `get_output_embeddings()` is the LM
head, called on batch-first final-normed hidden states: logits are computed only for the
response slice (`generation.head_on_columns`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from peft.tuners.lora import LoraLayer

from solver_ppo.errors import UserError
from solver_ppo.models.config import LoraSettings, ModelConfig, SamplingConfig
from solver_ppo.models.generation import Generation, generate, head_on_columns, positions_from_mask

if TYPE_CHECKING:
    from solver_ppo.models.loading import LoadedModel

# ChatGLM's linear layers by their published names: attention qkv and output, the SwiGLU MLP.
CHATGLM_TARGET_MODULES = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
TRAINABLE_FORMAT = "solver-ppo/trainable-v1"
TRAINABLE_FILENAME = "trainable.pt"  # name inside a checkpoint directory


def default_target_modules(model: nn.Module) -> list[str] | str:
    """ChatGLM: its four linear layer names. Other families: every linear layer but the LM head
    (peft's "all-linear"), the same coverage as the ChatGLM default."""
    if getattr(model.config, "model_type", None) == "chatglm":
        return list(CHATGLM_TARGET_MODULES)
    return "all-linear"


class _TokenLogprobs(torch.autograd.Function):
    """log p(token) = x_token - logsumexp(x), with a backward that needs one (B, R, V) buffer.

    Autograd's own backward of gather - logsumexp makes four (B, R, V) temporaries (the shifted
    logits, their exp, the scattered one-hot, their sum); here the gradient g·(onehot - softmax)
    is built in place in one. At a 30k vocabulary each such tensor is ~33 MB per 4 x 64 tokens.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = logits.logsumexp(-1)  # (B, R)
        ctx.save_for_backward(logits, tokens)
        ctx.mark_non_differentiable(lse)
        return logits.gather(-1, tokens[..., None]).squeeze(-1) - lse, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor, _grad_lse: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits, tokens = ctx.saved_tensors
        grad_logits = logits.softmax(-1).mul_(-grad[..., None])  # -g·softmax (B, R, V)
        return grad_logits.scatter_add_(-1, tokens[..., None], grad[..., None]), None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, R, V) logits, (B, R) tokens -> log p(token) (B, R) and logsumexp(logits) (B, R), the
    latter without gradient. No (B, R, V) log-softmax is made, forward or backward."""
    return _TokenLogprobs.apply(logits, tokens)


def entropy_from_logsumexp(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """(B, R, V) logits and their (B, R) logsumexp -> entropy (B, R) = lse - sum softmax(x) * x.

    One (B, R, V) temporary (the softmax, one fused kernel: ~3x faster on CPU than exp(x - lse));
    the sum over V is a batched dot product.
    """
    return lse - torch.einsum("brv,brv->br", logits.softmax(-1), logits)


class ValueHead(nn.Module):
    """Scalar value per position from final hidden states. Built in fp32 whatever the model dtype;
    `trainer.precision=bf16-true` casts it with the rest of the module, and it then computes in
    its weights' dtype. Its output is fp32 either way."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1, dtype=torch.float32)
        # near-zero start: early value losses do not swamp the policy gradient through shared layers
        nn.init.normal_(self.proj.weight, std=1e-3)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T)"""
        return self.proj(hidden.to(self.proj.weight.dtype)).float().squeeze(-1)


class PolicyWithValue(nn.Module):
    def __init__(
        self,
        model: nn.Module,
        lora: LoraSettings,
        *,
        pad_token_id: int,
        stop_token_ids: list[int],
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.pad_token_id = pad_token_id
        self.stop_token_ids = list(stop_token_ids)
        self.reference: nn.Module | None = None
        self.sharded = False  # set by shard(): parameters are FSDP2 DTensors split across ranks
        self.gather_for_sampling = True  # sharded: gather the whole LM once per sampling call (shard())
        self.mesh = None
        if gradient_checkpointing:
            # non-reentrant: works with a frozen base (no need for inputs that require grad)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora.enabled:
            target = lora.target_modules or default_target_modules(model)
            self.lora_settings: dict[str, Any] | None = {**asdict(lora), "target_modules": target}
            self.model: nn.Module = add_lora(model, lora)
        else:
            self.lora_settings = None
            self.model = model
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        hidden = self.causal_lm.get_output_embeddings().weight.shape[1]
        self.value_head = ValueHead(hidden).to(next(model.parameters()).device)
        # what checkpoints hold, fixed here: freezing the value head later (RLOO) keeps it in them
        self.trainable_names = {name for name, p in self.named_parameters() if p.requires_grad}

    def shard(self, mesh, gather_for_sampling: bool = True) -> None:
        """FSDP2 (`fully_shard`) over the ranks of `mesh`, in groups that match how the module is
        called: each transformer block, then each causal LM as a whole (embedding, final norm and
        head; sampling and scoring call the LM directly) and the value head. Every group gathers its
        parameters in its own forward, so the module works as before, a group at a time.

        While sharded, sampling gathers the LM once per call and keeps it gathered to the end
        (`gathered`): the whole LM on every rank meanwhile. With `gather_for_sampling=False` each
        decoding step gathers one block at a time instead (`block_by_block`), for models whose whole
        weights do not fit one device, and every rank decodes until all ranks are done. Either way
        the adapter stays unmerged (`merged_lora` swaps weight tensors, which FSDP-managed
        parameters do not allow).
        """
        if self.sharded:
            return
        self.mesh, self.gather_for_sampling = mesh, gather_for_sampling
        for lm in [self.causal_lm] + ([self.reference] if self.reference is not None else []):
            shard_causal_lm(lm, mesh)
        fully_shard(self.value_head, mesh=mesh)
        self.sharded = True

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers model (with LoRA layers injected in LoRA mode)."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    # ---- scoring -------------------------------------------------------------------------------

    @staticmethod
    def _score(
        lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of (B, S) -> logits (B, R, V) fp32 and hidden states (B, R, H) for the response.

        The prompt's (B, P, V) logits are never made; the final-normed hidden states that the head
        saw are the value head's input.
        """
        S = input_ids.shape[1]
        if not 0 < response_start < S:
            raise ValueError(f"response_start must be in 1..{S - 1} for sequences of length {S}, got {response_start}")
        # column s+t-1 predicts response token t: the head sees exactly those R columns
        with head_on_columns(lm, response_start - 1, -1, seq_len=S) as kept:
            out = lm(
                input_ids=input_ids, attention_mask=attention_mask,
                position_ids=positions_from_mask(attention_mask), use_cache=False,
            )
        logits = out.logits.float()  # (B, R, V); a copy only for a half-precision model
        if temperature != 1.0:
            logits = logits / temperature
        return logits, kept["hidden"]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float = 1.0,
        entropy_grad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, S) -> logprobs, values, entropy, each (B, R) with R = S - response_start.

        `temperature` divides the logits, so logprobs match what was sampled at that temperature.
        `entropy_grad=False`: the entropy is a logged statistic only (no (B, R, V) product kept for
        backward) — what PPO wants when the entropy bonus is 0.
        """
        logits, hidden = self._score(self.causal_lm, input_ids, attention_mask, response_start, temperature)
        logprobs, lse = token_logprobs(logits, input_ids[:, response_start:])
        if entropy_grad and torch.is_grad_enabled():
            entropy = entropy_from_logsumexp(logits, logits.logsumexp(-1))  # lse above carries no gradient
        else:
            with torch.no_grad():
                entropy = entropy_from_logsumexp(logits, lse)
        return logprobs, self.value_head(hidden), entropy

    @torch.no_grad()
    def reference_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float = 1.0
    ) -> torch.Tensor:
        """(B, S) -> (B, R) log-probs of the response tokens under the reference model."""
        if self.reference is not None:
            logits, _ = self._score(self.reference, input_ids, attention_mask, response_start, temperature)
        else:
            with self.model.disable_adapter():
                logits, _ = self._score(self.causal_lm, input_ids, attention_mask, response_start, temperature)
        return token_logprobs(logits, input_ids[:, response_start:])[0]

    @torch.no_grad()
    def score_rollout(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, temperature: float = 1.0,
        chunk_size: int | None = None, reference_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(B, S) -> old logprobs, values, reference logprobs, each (B, R); no entropy.

        Rows go through in chunks of `chunk_size` (None: all at once), so the (chunk, R, V) logits
        bound the memory of this pass instead of (B, R, V). `reference_only`: no policy pass (the
        sampling loop kept the old log-probs and hidden states); returns (None, None, reference).
        """
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        tokens = input_ids[:, response_start:]  # (B, R)
        logprobs, values, ref_logprobs = [], [], []
        for ids, mask, tok in zip(*(t.split(chunk_size or len(t)) for t in (input_ids, attention_mask, tokens))):
            if not reference_only:
                logits, hidden = self._score(self.causal_lm, ids, mask, response_start, temperature)
                logprobs.append(token_logprobs(logits, tok)[0])
                values.append(self.value_head(hidden))
                del logits  # the reference pass below needs the same room
            ref_logprobs.append(self.reference_logprobs(ids, mask, response_start, temperature))
        if reference_only:
            return None, None, torch.cat(ref_logprobs)
        return torch.cat(logprobs), torch.cat(values), torch.cat(ref_logprobs)

    # ---- generation ----------------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, generator: torch.Generator | None = None,
        use_cache: bool = True, keep_logprobs: bool = False, context_cache: ContextCache | None = None,
    ) -> Generation:
        """Sample from the policy (adapter on) with the model's pad and stop tokens.
        `keep_logprobs`: see `generation.generate` (`self.value_head(gen.hidden)` are then the values).
        `context_cache`: prompts that extend the previous call's prompts and answers (the turns of
        multi-turn episodes) are read from the end of what the cache holds (`ContextCache`).

        With LoRA and `lora.merge_for_sampling` the adapter is folded into the base weights for the
        duration (`merged_lora`): each decoding step then runs one matmul per layer instead of three.
        Sharded (FSDP2), the LM is gathered once for the call instead (`gathered`), or block by
        block at every step (`shard(..., gather_for_sampling=False)`).
        """
        done = None
        if self.sharded and self.gather_for_sampling:
            context = gathered(self.causal_lm)
        elif self.sharded:
            context, done = block_by_block(self.causal_lm), self._finished_on_every_rank
        elif self.lora_settings is not None and self.lora_settings["merge_for_sampling"]:
            context = merged_lora(self.model)
        else:
            context = contextlib.nullcontext()
        run = generate if context_cache is None else context_cache.generate
        with context:
            return run(
                self.causal_lm, prompts, pad_token_id=self.pad_token_id, stop_token_ids=self.stop_token_ids,
                sampling=sampling, generator=generator, use_cache=use_cache, keep_logprobs=keep_logprobs, done=done,
            )

    def _finished_on_every_rank(self, finished: torch.Tensor) -> bool:
        """(B,) finished rows of this rank -> whether every rank's rows are all finished (an all-reduce)."""
        flag = finished.all().to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.mesh.get_group())
        return bool(flag)

    # ---- parameters and checkpoints ------------------------------------------------------------

    def policy_parameters(self) -> list[nn.Parameter]:
        """Trainable LM parameters: the LoRA matrices, or every LM weight in full mode."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        """The value head's parameters, unless frozen (RLOO advantages use no value model)."""
        return [p for p in self.value_head.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What PPO changes — LoRA + value head (LoRA mode) or LM + value head (full mode), as
        whole tensors. Sharded, this gathers them: a collective that every rank must call."""
        reshard(self)
        return {name: full_tensor(p.detach()) for name, p in self.named_parameters() if name in self.trainable_names}

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        reshard(self)
        own = {name: p for name, p in self.named_parameters() if name in self.trainable_names}
        missing = sorted(own.keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - own.keys())
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing (first: '{missing[0]}')")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected (first: '{unexpected[0]}')")
            raise UserError(
                f"trainable weights do not match this model: {', '.join(parts)}; "
                "was it saved from a different base model or LoRA setting?"
            )
        for name, p in own.items():
            if tuple(state_dict[name].shape) != tuple(p.shape):
                raise UserError(
                    f"trainable weight '{name}' has shape {tuple(state_dict[name].shape)} in the file "
                    f"but {tuple(p.shape)} in this model; was it saved from a different base model or LoRA rank?"
                )
        with torch.no_grad():
            for name, p in own.items():
                value = state_dict[name].to(device=p.device, dtype=p.dtype)
                p.copy_(distribute_tensor(value, p.device_mesh, p.placements) if isinstance(p, DTensor) else value)

    def save_trainable(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the trainable weights (`state_dict`, else `trainable_state_dict()`) and the LoRA
        settings that shape them (one torch.save file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state_dict = self.trainable_state_dict() if state_dict is None else state_dict
        payload = {
            "format": TRAINABLE_FORMAT,
            "lora": self.lora_settings,
            "state_dict": {k: v.cpu() for k, v in state_dict.items()},
        }
        torch.save(payload, path)
        return path

    def load_trainable(self, path: str | Path) -> None:
        payload = read_trainable(path)
        if (payload["lora"] is None) != (self.lora_settings is None):
            saved = "full fine-tuning" if payload["lora"] is None else "LoRA"
            mine = "full fine-tuning" if self.lora_settings is None else "LoRA"
            raise UserError(f"{path}: saved in {saved} mode but this policy uses {mine}; set model.lora.enabled to match")
        self.load_trainable_state_dict(payload["state_dict"])


def add_lora(model: nn.Module, lora: LoraSettings) -> PeftModel:
    """`model` with a fresh LoRA adapter (peft; the base frozen, B matrices at 0) on
    `lora.target_modules` or the family's default layers."""
    target = lora.target_modules or default_target_modules(model)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=target, bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model ..."
        raise UserError(f"model.lora.target_modules={target}: {str(err).splitlines()[0]}") from None


def shard_causal_lm(lm: nn.Module, mesh) -> None:
    """FSDP2 groups for a causal LM (or a wrapper around one, such as a PeftModel): each transformer
    block, then `lm` as a whole (embedding, final norm, head), gathered when `lm` is called — so
    `lm` must be the module the caller calls."""
    for block in transformer_blocks(lm):
        fully_shard(block, mesh=mesh)
    fully_shard(lm, mesh=mesh)


@contextlib.contextmanager
def gathered(lm: nn.Module) -> Iterator[None]:
    """A sharded LM (`shard_causal_lm`) keeps the parameters its first forward gathers until the
    block ends: sampling gathers each group once per call instead of once per decoding step, and
    the steps after the first need no collective, so ranks may stop decoding at different steps.
    The price: the whole LM on every rank meanwhile. On exit every group is resharded and set back
    to FSDP2's defaults (blocks reshard after forward, the root group `lm` does not)."""
    lm.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in lm.modules():
            if isinstance(module, FSDPModule) and module is not lm:
                module.set_reshard_after_forward(True, recurse=False)
        reshard(lm)


@contextlib.contextmanager
def block_by_block(lm: nn.Module) -> Iterator[None]:
    """A sharded LM as FSDP2 runs it by default: each block is gathered for its forward and resharded
    after it, so a rank holds one block's full weights at a time (and the root group: embedding,
    final norm, head). Every forward is then a collective: all ranks must make the same calls. On
    exit the root group, which FSDP2 leaves gathered after a forward, is resharded too."""
    try:
        yield
    finally:
        reshard(lm)


def reshard(module: nn.Module) -> None:
    """Put every FSDP group inside `module` back to its sharded DTensor parameters. FSDP2 leaves a
    root group gathered after its forward, as plain tensors that reading or writing would miss."""
    for sub in module.modules():
        if isinstance(sub, FSDPModule):
            sub.reshard()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered whole (a collective), any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def transformer_blocks(lm: nn.Module) -> nn.ModuleList:
    """The causal LM's stack of transformer blocks: its longest ModuleList (ChatGLM's
    `transformer.encoder.layers`, Llama's `model.layers`, ...)."""
    stacks = [m for m in lm.modules() if isinstance(m, nn.ModuleList)]
    if not stacks:
        raise UserError(f"{type(lm).__name__} has no list of transformer blocks (nn.ModuleList) to shard")
    return max(stacks, key=len)


@contextlib.contextmanager
def merged_lora(model: PeftModel) -> Iterator[None]:
    """The policy as plain weights: W + ΔW of the active adapters in new tensors, the adapter
    path off; on exit the original base tensors are put back untouched.

    peft's merge_adapter()/unmerge_adapter() would add and then subtract ΔW in place, which does
    not give W back exactly (in bf16 it drifts by a rounding step per merge) — and W is the
    reference. The price is one extra copy of the adapted weights while it is active.
    """
    swapped: list[tuple[nn.Module, torch.Tensor]] = []
    with model.disable_adapter(), torch.no_grad():
        try:
            for layer in model.modules():
                if not isinstance(layer, LoraLayer) or not layer.active_adapters:
                    continue
                base = layer.get_base_layer()
                original = base.weight.data
                merged = original.clone()
                for name in layer.active_adapters:
                    if name in layer.lora_A or name in getattr(layer, "lora_embedding_A", {}):
                        merged += layer.get_delta_weight(name).to(merged.dtype)
                base.weight.data = merged
                swapped.append((base, original))
            yield
        finally:
            for base, original in swapped:
                base.weight.data = original


def read_trainable(path: str | Path) -> dict[str, Any]:
    """Read a file written by `save_trainable` (or a directory holding `trainable.pt`).

    Returns {"format", "lora": dict of LoraSettings fields or None (full mode), "state_dict"}.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRAINABLE_FILENAME
    if not path.is_file():
        raise UserError(f"adapter file not found: {path}; pass the file written by the trainer ({TRAINABLE_FILENAME})")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors come in several types
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != TRAINABLE_FORMAT:
        raise UserError(f"{path}: not a trainable-weights file (expected format '{TRAINABLE_FORMAT}')")
    return payload


def build_policy(loaded: LoadedModel, cfg: ModelConfig) -> PolicyWithValue:
    """Wrap a loaded model as the PPO policy, as `cfg.lora` and `cfg.gradient_checkpointing` say."""
    return PolicyWithValue(
        loaded.model,
        cfg.lora,
        pad_token_id=loaded.chat.pad_token_id,
        stop_token_ids=list(loaded.chat.stop_token_ids),
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
