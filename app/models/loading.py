"""One function loads every kind of checkpoint: `load_model(cfg) -> LoadedModel(model, tokenizer, chat)`.

- family `chatglm`: the native class (app/models/chatglm.py) from a local directory holding
  config.json and the published weights: `model.safetensors`, sharded safetensors with
  `model.safetensors.index.json`, `pytorch_model.bin`, or sharded .bin with
  `pytorch_model.bin.index.json`; stored in fp16/bf16/fp32 and cast to `cfg.dtype`. Names and
  shapes are checked against the config before anything is loaded into the model.
- family `remote`: the checkpoint's own code (`trust_remote_code`, local files only), wrapped
  by `RemoteChatGLM` so it looks like the native model: `output_layer` is the LM head and
  hidden states are batch-first, the last one after the final norm.
- family `auto`: `AutoModelForCausalLM` (GPT-2, Llama, Qwen2 ...).

Whatever the family, the model comes back in eval mode on `device`, the tokenizer pads on the
left, and `chat` knows the prompt layout and stop tokens. Nothing here touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from solver_ppo.errors import UserError
from solver_ppo.models.chat import ChatFormat, chat_format_for
from solver_ppo.models.chatglm import ChatGLMConfig, ChatGLMForCausalLM, RotaryEmbedding, position_ids_from_mask
from solver_ppo.models.config import ModelConfig
from solver_ppo.models.tokenizers import TOKENIZER_CLASSES, sniff_tokenizer_class

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = ("chatglm", "remote", "auto")
INV_FREQ = "transformer.rotary_pos_emb.inv_freq"


@dataclass
class LoadedModel:
    model: PreTrainedModel  # batch-first logits (B, T, V) and hidden states (B, T, C)
    tokenizer: PreTrainedTokenizerBase
    chat: ChatFormat


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> LoadedModel:
    if cfg.dtype not in DTYPES:
        raise UserError(f"model.dtype '{cfg.dtype}' is not known; choose one of {', '.join(DTYPES)}")
    if cfg.family not in FAMILIES:
        raise UserError(f"model.family '{cfg.family}' is not known; choose one of {', '.join(FAMILIES)}")
    dtype, path = DTYPES[cfg.dtype], checkpoint_dir(cfg.path)
    if cfg.family == "chatglm":
        model = load_chatglm(path, dtype)
    elif cfg.family == "remote":
        inner = _hf_call(path, AutoModelForCausalLM.from_pretrained, path, trust_remote_code=True,
                         local_files_only=True, torch_dtype=dtype)  # fmt: skip
        model = RemoteChatGLM(inner)
    else:
        model = _hf_call(path, AutoModelForCausalLM.from_pretrained, path, local_files_only=True, torch_dtype=dtype)
    tokenizer, chat = load_prompt_encoder(cfg, model.config)
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, chat=chat)


def checkpoint_dir(path_text: str) -> Path:
    """`model.path` as a checkpoint directory (one holding config.json), or a UserError."""
    path = Path(path_text)
    if path.is_file():
        raise UserError(f"model.path: {path} is a file; pass the checkpoint directory (the one holding config.json)")
    if not path.is_dir():
        raise UserError(f"model.path: checkpoint directory not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; model.path must be a checkpoint directory")
    return path


def load_prompt_encoder(cfg: ModelConfig, model_config=None) -> tuple[PreTrainedTokenizerBase, ChatFormat]:
    """The tokenizer (padding on the left) and chat format of a checkpoint, without its weights:
    what prompt lengths are measured with before the model loads. `model_config`: the loaded
    model's config (else config.json's eos ids are read)."""
    path = checkpoint_dir(cfg.path)
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.family == "remote")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model_config is None:
        eos = json.loads((path / "config.json").read_text()).get("eos_token_id")
        model_config = SimpleNamespace(eos_token_id=eos)
    return tokenizer, chat_format_for(cfg.chat_format, tokenizer, model_config)


def _hf_call(path: Path, fn, *args, **kwargs):
    """transformers raises several error types for a bad directory; report them as one line."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{path}: cannot load with transformers: {str(err).strip().splitlines()[0]}") from None


def load_tokenizer(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """ChatGLM tokenizers natively (by tokenizer_config.json's class, else by sniffing tokenizer.model); others via Auto."""
    config_file = path / "tokenizer_config.json"
    tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    model_file = path / "tokenizer.model"
    if tokenizer_class in TOKENIZER_CLASSES or (tokenizer_class is None and model_file.is_file()):
        if not model_file.is_file():
            raise UserError(f"{config_file}: tokenizer_class {tokenizer_class} needs {model_file}, which is missing")
        cls = TOKENIZER_CLASSES.get(tokenizer_class) or sniff_tokenizer_class(model_file)
        return cls(model_file, name_or_path=str(path))
    return _hf_call(path, AutoTokenizer.from_pretrained, path, local_files_only=True,
                    trust_remote_code=trust_remote_code)  # fmt: skip


# ----------------------------------------------------------------------------- native ChatGLM


def load_chatglm(path: Path, dtype: torch.dtype) -> ChatGLMForCausalLM:
    config_file = path / "config.json"
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file}: not valid JSON: {err}") from None
    if raw.get("model_type") != "chatglm":
        raise UserError(
            f"{config_file}: model_type '{raw.get('model_type')}' (architectures {raw.get('architectures')}) is not "
            "chatglm; use model.family=auto for other architectures"
        )
    try:
        config = ChatGLMConfig.from_dict(raw)
    except (ValueError, TypeError) as err:
        raise UserError(f"{config_file}: {err}") from None

    with torch.device("meta"):
        model = ChatGLMForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for file in checkpoint_files(path):
        for name, tensor in read_weights(file):
            if name not in expected:
                raise UserError(f"{file}: unexpected weight '{name}' for a {config.num_layers}-layer ChatGLM")
            if tuple(tensor.shape) != expected[name]:
                raise UserError(
                    f"{file}: weight '{name}' has shape {list(tensor.shape)}, expected {list(expected[name])} "
                    f"from {config_file}"
                )
            state[name] = tensor.to(dtype)
    state.setdefault(INV_FREQ, RotaryEmbedding(config.kv_channels).inv_freq)  # optional; not used by the math
    missing = [name for name in expected if name not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"{path}: the checkpoint has no weight '{missing[0]}'{more}")
    model.load_state_dict(state, assign=True)
    model.config.torch_dtype = dtype
    return model


def checkpoint_files(path: Path) -> list[Path]:
    """The weight files of a directory, in the published layouts (safetensors preferred)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):  # fmt: skip
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise UserError(f"{index}: not a weight index (needs a 'weight_map'): {err}") from None
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not (path / shard).is_file():
                    key = next(k for k, v in weight_map.items() if v == shard)
                    raise UserError(f"{index}: shard '{shard}' (holding '{key}' and others) is missing from {path}")
            return [path / shard for shard in shards]
        if (path / single).is_file():
            return [path / single]
    raise UserError(
        f"{path}: no weights found (model.safetensors, model.safetensors.index.json, pytorch_model.bin "
        "or pytorch_model.bin.index.json)"
    )


def read_weights(file: Path):
    """(name, tensor) pairs of one weight file, read lazily where the format allows."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(f"{file}: cannot read weights: {str(err).strip().splitlines()[0]}") from None


# ----------------------------------------------------------------------------- remote code


class RemoteChatGLM(PreTrainedModel):
    """A checkpoint's own ChatGLM code (trust_remote_code) behind the native model's interface.

    The published code has no `lm_head` (its head is `transformer.output_layer`), chatglm3's
    returns seq-first hidden states, and its last hidden state is taken before the final norm.
    This wrapper calls the remote backbone, makes every hidden state batch-first, puts the
    final-normed state last (as the native model does) and applies `output_layer` itself.
    Positions follow the project convention (from the attention mask) unless given.
    """

    supports_gradient_checkpointing = True

    def __init__(self, inner: PreTrainedModel):
        super().__init__(inner.config)
        self.inner = inner
        with torch.no_grad():  # chatglm3's code is seq-first, glm-4's batch-first: ask it once
            probe = inner.transformer(input_ids=torch.zeros(1, 2, dtype=torch.long, device=inner.device),
                                      use_cache=False, return_dict=True)  # fmt: skip
        self.seq_first = tuple(probe.last_hidden_state.shape[:2]) == (2, 1)

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self):
        return self.inner.transformer.output_layer

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S)
        position_ids: torch.Tensor | None = None,  # (B, T)
        past_key_values=None,  # the remote code's own cache format, passed through
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if position_ids is None and attention_mask is not None:
            T = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            position_ids = position_ids_from_mask(attention_mask, T)
        if inputs_embeds is not None and self.seq_first:
            inputs_embeds = inputs_embeds.transpose(0, 1)  # (T, B, C) as the remote code expects
        out = self.inner.transformer(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states, return_dict=True,
        )  # fmt: skip
        last = out.last_hidden_state.transpose(0, 1) if self.seq_first else out.last_hidden_state  # (B, T, C)
        hidden_states = None
        if output_hidden_states:
            states = [h.transpose(0, 1) if self.seq_first else h for h in out.hidden_states]
            hidden_states = tuple(states[:-1]) + (last,)  # the remote code's last entry is pre-norm
        logits = self.inner.transformer.output_layer(last)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                      hidden_states=hidden_states)  # fmt: skip

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, **kwargs) -> dict:
        """generate() adds one token per step; the remote cache format is opaque, so feed the last one."""
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "past_key_values": past_key_values,
                "use_cache": kwargs.get("use_cache")}  # fmt: skip
