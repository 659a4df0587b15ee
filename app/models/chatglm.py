"""Native ChatGLM3 / GLM-4 in one file, from the published models' facts (listed in docs/models.md).

Why native: the published remote code keeps tensors seq-first, names its head `output_layer`
and breaks with newer transformers in its cache handling. This implementation reads and writes
the published checkpoints (same weight names), runs batch-first at its boundary and owns its
KV cache, so it only needs the stable parts of `PreTrainedModel` / `GenerationMixin`.

Conventions (the same everywhere in the project):
- Batch-first: input_ids (B, T), logits (B, T, V), hidden states (B, T, C).
- The KV cache (`KVCache`) holds every layer's keys (after RoPE) and values in preallocated
  (B, G, capacity, D) buffers, G the number of key/value groups; `cache[i]` is layer i's filled
  part as a `(k, v)` pair of (B, G, S, D) views. A forward with `use_cache` writes its new
  columns into the cache it was given (in place) and returns that same object. No transformers
  Cache class is involved, so it behaves the same under transformers 4.40 and later.
- Positions: with left padding, the position of token t in row b is the number of real tokens
  before it in that row, i.e. `attention_mask.cumsum(-1) - 1` clamped at 0. When position_ids
  is not given, `forward` derives exactly this from the attention mask (or 0..T-1 after the
  cache length when there is no mask). Scoring and generation therefore agree, and a left-padded
  row gives the same logits for its real tokens as the same row unpadded. (The remote code uses
  0..n-1 including the padding; for unpadded input the two agree.)
- Padding keys are masked out of attention. A query row with no visible key (a padding token
  at the start of a row) attends everywhere instead of producing NaN; its output is ignored.
- `hidden_states[-1]` is the output of the final RMSNorm (the input of `output_layer`), which
  is what a value head should read. (The remote code returns the pre-norm state there.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


class KVCache:
    """Keys and values of every layer in preallocated buffers, written in place column by column.

    Why not a tuple grown by torch.cat: concatenating reads and writes the whole cache at every
    decoding step, on top of attention reading it once, so a long decode moves the cache three
    times per token instead of once. Buffers grow by doubling, in steps of GROW columns, so a
    rollout reallocates a few times at most.
    """

    GROW = 256

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers  # each (B, G, capacity, D)
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers  # filled columns per layer

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s (k, v), each (B, G, S, D) views of the filled columns."""
        if not 0 <= layer < len(self):
            raise IndexError(f"layer {layer} of a {len(self)}-layer cache")
        S = self.lengths[layer]
        if self.keys[layer] is None:
            raise IndexError(f"layer {layer} has nothing cached yet")
        return self.keys[layer][:, :, :S], self.values[layer][:, :, :S]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, G, T, D) new keys and values after the filled columns; returns layer `layer`'s (k, v)."""
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[2]
        keys = self.keys[layer]
        if keys is not None and keys.shape[:2] + keys.shape[3:] != k.shape[:2] + k.shape[3:]:
            raise ValueError(f"cached keys are {tuple(keys.shape)} (B, G, capacity, D), new keys {tuple(k.shape)}")
        if keys is None or end > keys.shape[2]:
            capacity = -(-max(end, 2 * (0 if keys is None else keys.shape[2])) // self.GROW) * self.GROW
            B, G, _, D = k.shape
            new_k, new_v = k.new_empty(B, G, capacity, D), v.new_empty(B, G, capacity, D)
            if keys is not None:
                new_k[:, :, :start], new_v[:, :, :start] = self[layer]
            self.keys[layer], self.values[layer] = new_k, new_v
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return (k, v) if start == 0 else self[layer]  # a prefill attends over its own contiguous k, v

    def index_select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding the given batch rows (beam search reorders with it)."""
        out = KVCache(len(self))
        out.lengths = list(self.lengths)
        out.keys = [None if t is None else t.index_select(0, rows) for t in self.keys]
        out.values = [None if t is None else t.index_select(0, rows) for t in self.values]
        return out


class ChatGLMConfig(PretrainedConfig):
    """The official config.json fields of chatglm3-6b / glm-4-9b-chat.

    apply_query_key_layer_scaling, attention_softmax_in_fp32, bias_dropout_fusion, original_rope,
    fp32_residual_connection and the dropout fields are accepted and ignored: with the values
    the checkpoints ship they do not change the math. Options that would change it and are not
    implemented (LayerNorm instead of RMSNorm, post-norm residuals, p-tuning prefixes,
    quantized weights) are rejected with an error naming the field.
    """

    model_type = "chatglm"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "vocab_size": "padded_vocab_size",
        "max_position_embeddings": "seq_length",
    }

    def __init__(
        self,
        num_layers: int = 28,
        padded_vocab_size: int = 65024,
        hidden_size: int = 4096,
        ffn_hidden_size: int = 13696,
        kv_channels: int = 128,
        num_attention_heads: int = 32,
        multi_query_attention: bool = True,
        multi_query_group_num: int = 2,
        seq_length: int = 8192,
        layernorm_epsilon: float = 1e-5,
        rope_ratio: float = 1.0,
        rmsnorm: bool = True,
        post_layer_norm: bool = True,
        add_qkv_bias: bool = True,
        add_bias_linear: bool = False,
        apply_residual_connection_post_layernorm: bool = False,
        pre_seq_len: int | None = None,
        quantization_bit: int = 0,
        initializer_range: float = 0.02,
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        self.rope_ratio = rope_ratio
        self.rmsnorm = rmsnorm
        self.post_layer_norm = post_layer_norm
        self.add_qkv_bias = add_qkv_bias
        self.add_bias_linear = add_bias_linear
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.pre_seq_len = pre_seq_len
        self.quantization_bit = quantization_bit
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        unsupported = {
            "rmsnorm": (rmsnorm, True),
            "apply_residual_connection_post_layernorm": (apply_residual_connection_post_layernorm, False),
            "pre_seq_len": (pre_seq_len, None),
            "quantization_bit": (quantization_bit, 0),
        }
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(f"ChatGLM config: {name}={value!r} is not supported (only {supported!r})")
        heads, groups = num_attention_heads, self.kv_groups
        if heads % groups:
            raise ValueError(f"ChatGLM config: num_attention_heads={heads} is not a multiple of {groups} kv groups")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def kv_groups(self) -> int:
        """Number of key/value heads (2 for both published models)."""
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads


# config.json values of the published checkpoints, for building them on the meta device.
CHATGLM3_6B: dict = dict(
    num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
    num_attention_heads=32, multi_query_attention=True, multi_query_group_num=2, seq_length=8192,
    layernorm_epsilon=1e-5, rmsnorm=True, post_layer_norm=True, add_qkv_bias=True, add_bias_linear=False,
    apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=True,
    attention_softmax_in_fp32=True, bias_dropout_fusion=True, fp32_residual_connection=False,
    original_rope=True, eos_token_id=2, pad_token_id=0, torch_dtype="float16",
)  # fmt: skip
GLM4_9B_CHAT: dict = dict(
    num_layers=40, padded_vocab_size=151552, hidden_size=4096, ffn_hidden_size=13696, kv_channels=128,
    num_attention_heads=32, multi_query_attention=True, multi_query_group_num=2, seq_length=131072,
    layernorm_epsilon=1.5625e-07, rope_ratio=500, rmsnorm=True, post_layer_norm=True, add_qkv_bias=True,
    add_bias_linear=False, apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=True,
    attention_softmax_in_fp32=True, bias_dropout_fusion=True, fp32_residual_connection=False,
    original_rope=True, eos_token_id=[151329, 151336, 151338], pad_token_id=151329, torch_dtype="bfloat16",
)  # fmt: skip


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # variance in fp32, result back in the input dtype (as the published code)
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return self.weight * x


def rope_angles(position_ids: torch.Tensor, head_dim: int, rope_ratio: float) -> torch.Tensor:
    """Rotation angles p·theta_i, (B, T, head_dim // 4) in fp32; theta_i = base^(-2i/(head_dim/2))."""
    rot_dim = head_dim // 2  # only the first half of each head is rotated
    base = 10000.0 * rope_ratio
    theta = 1.0 / base ** (torch.arange(0, rot_dim, 2, dtype=torch.float, device=position_ids.device) / rot_dim)
    return position_ids[..., None].float() * theta  # (B, T, rot_dim // 2)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of the first half of each head. x (B, H, T, D), angles (B, T, D // 4).

    cos/sin are cast to x's dtype before use, as the published code does in fp16/bf16.
    """
    rot_dim = angles.shape[-1] * 2
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    a, b = x_rot.unflatten(-1, (-1, 2)).unbind(-1)  # (B, H, T, rot_dim // 2) each
    cos = angles.cos().to(x.dtype)[:, None]  # (B, 1, T, rot_dim // 2)
    sin = angles.sin().to(x.dtype)[:, None]
    rotated = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    return torch.cat([rotated, x_pass], dim=-1)


class RotaryEmbedding(nn.Module):
    """Holds the `inv_freq` buffer that the published checkpoints store.

    The buffer is kept only so checkpoints load and save under the official names: like the
    published code, the rotation itself recomputes its frequencies from the config (so the
    stored buffer, which never includes rope_ratio, cannot change the result).
    """

    def __init__(self, head_dim: int):
        super().__init__()
        rot_dim = head_dim // 2
        inv_freq = 1.0 / 10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float) / rot_dim)
        self.register_buffer("inv_freq", inv_freq)  # (head_dim // 4,)


class Embedding(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


class SelfAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.n_head, self.n_group, self.head_dim = config.num_attention_heads, config.kv_groups, config.kv_channels
        self.rope_ratio = config.rope_ratio
        q_size, kv_size = self.n_head * self.head_dim, self.n_group * self.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)  # rows of query_key_value: q, then k, then v
        self.query_key_value = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.add_qkv_bias)
        self.dense = nn.Linear(q_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        angles: torch.Tensor,  # (B, T, D // 4)
        mask: torch.Tensor,  # (B, 1, T, S) bool, True = may attend
        cache: KVCache | None,
        layer: int,  # this block's index in the cache
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.query_key_value(x).split(self.split_sizes, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_group, self.head_dim).transpose(1, 2)  # (B, G, T, D)
        v = v.view(B, T, self.n_group, self.head_dim).transpose(1, 2)  # (B, G, T, D)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, G, S, D): the cached columns, then these T
        # enable_gqa: query head h reads kv group h // (H / G), without copying k and v per head
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, D), scale 1/sqrt(D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.dense(y)


class MLP(nn.Module):
    """SwiGLU: dense_h_to_4h's first ffn rows are the gate, the second ffn rows the up projection."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.dense_h_to_4h(x).chunk(2, dim=-1)
        return self.dense_4h_to_h(F.silu(gate) * up)


class GLMBlock(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, angles, mask, cache, layer):
        h = x + self.self_attention(self.input_layernorm(x), angles, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class GLMTransformer(nn.Module):
    """The `encoder`: the blocks and the final norm."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList(GLMBlock(config) for _ in range(config.num_layers))
        self.final_layernorm = (
            RMSNorm(config.hidden_size, config.layernorm_epsilon) if config.post_layer_norm else nn.Identity()
        )
        self.gradient_checkpointing = False  # switched on by PreTrainedModel.gradient_checkpointing_enable

    def forward(self, x, angles, mask, cache: KVCache | None, output_hidden_states):
        """`cache`: written in place by every layer, or None (no cache)."""
        hidden_states = (x,) if output_hidden_states else None
        for i, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, angles, mask, cache, i)
            else:
                x = layer(x, angles, mask, cache, i)
            if output_hidden_states and i < len(self.layers) - 1:
                hidden_states += (x,)
        x = self.final_layernorm(x)
        if output_hidden_states:
            hidden_states += (x,)  # the last entry is after the final norm
        return x, hidden_states


def attention_mask_4d(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """(B, S) 1/0 key mask -> (B, 1, T, S) bool: causal (the last T keys are the queries) and not padding."""
    S = attention_mask.shape[-1]
    q_pos = torch.arange(S - query_len, S, device=attention_mask.device)
    causal = torch.arange(S, device=attention_mask.device)[None, :] <= q_pos[:, None]  # (T, S)
    allowed = causal[None] & attention_mask.bool()[:, None, :]  # (B, T, S)
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # a row that sees nothing sees everything
    return allowed[:, None]


def position_ids_from_mask(attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
    """(B, S) mask -> (B, T) positions of the last T tokens: real tokens before each, clamped at 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -query_len:]


class ChatGLMModel(nn.Module):
    """The `transformer` submodule; names mirror the published weights.

    Its forward returns the final-normed hidden states without applying `output_layer`.
    """

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.config = config
        self.embedding = Embedding(config)
        self.rotary_pos_emb = RotaryEmbedding(config.kv_channels)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S), S = cached + T; 1 real, 0 padding
        position_ids: torch.Tensor | None = None,  # (B, T)
        past_key_values: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        use_cache: bool = True,
        output_hidden_states: bool = False,
    ) -> BaseModelOutputWithPast:
        x = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        if past_key_values is not None and not isinstance(past_key_values, KVCache):
            raise TypeError(f"past_key_values must be the KVCache a previous forward returned, got {type(past_key_values).__name__}")
        past_len = past_key_values.lengths[0] if past_key_values is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past_len + T, dtype=torch.long, device=x.device)
        if attention_mask.shape != (B, past_len + T):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past_len + T)} "
                f"({past_len} cached + {T} new tokens)"
            )
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, T)
        mask = attention_mask_4d(attention_mask, T)
        angles = rope_angles(position_ids, self.config.kv_channels, self.config.rope_ratio)
        cache = past_key_values
        if cache is None and use_cache:
            cache = KVCache(len(self.encoder.layers))
        x, hidden_states = self.encoder(x, angles, mask, cache, output_hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=x, past_key_values=cache if use_cache else None, hidden_states=hidden_states
        )


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _keys_to_ignore_on_load_missing = [r"rotary_pos_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class ChatGLMForCausalLM(ChatGLMPreTrainedModel):
    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.output_layer

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.transformer.output_layer = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S), S = cached + T; 1 real, 0 padding
        position_ids: torch.Tensor | None = None,  # (B, T)
        past_key_values: KVCache | None = None,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C)
        labels: torch.Tensor | None = None,  # (B, T); -100 ignored; shifted inside
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,  # e.g. output_attentions/cache_position from generate(); not used
    ) -> CausalLMOutputWithPast | tuple:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.transformer.encoder.gradient_checkpointing and self.training:
            use_cache = False
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        return_dict = self.config.use_return_dict if return_dict is None else return_dict

        out = self.transformer(
            input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache, output_hidden_states
        )
        logits = self.transformer.output_layer(out.last_hidden_state)  # (B, T, V)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        if not return_dict:
            return tuple(t for t in (loss, logits, out.past_key_values, out.hidden_states) if t is not None)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=out.past_key_values, hidden_states=out.hidden_states
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> dict:
        """generate() hook: feed only the tokens not yet in the cache; forward() derives positions from the mask."""
        past_len = past_key_values.lengths[0] if past_key_values is not None else 0
        if inputs_embeds is not None and past_key_values is None:
            inputs = {"inputs_embeds": inputs_embeds}
        else:
            inputs = {"input_ids": input_ids[:, past_len:]}
        return {**inputs, "attention_mask": attention_mask, "past_key_values": past_key_values, "use_cache": use_cache}

    @staticmethod
    def _reorder_cache(past_key_values: KVCache, beam_idx: torch.Tensor) -> KVCache:
        """Beam search: reorder the cached rows."""
        return past_key_values.index_select(beam_idx)
