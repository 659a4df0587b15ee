"""Peak device memory of one PPO step with LoRA, from the model's shape and the run's settings.

A PPO step goes through three phases, each on top of what stays resident:

    resident  = base weights + LoRA (weights, gradients, AdamW's two moments) + value head (same four)
    sampling  = merged copy of the adapted weights (lora.merge_for_sampling)
              + KV cache: layers · 2 · rows · groups · capacity(prompt + response) · head_dim · bytes
              + the prefill's largest one-layer moment over rows · prompt tokens (+ attention scores)
              + the last column's logits (rows · vocab: fp32 logits, probabilities, fp64 cumulative sum)
    scoring   = one no-grad forward of minibatch rows · (prompt + response) tokens: one layer's moment
              + the response logits (minibatch · response · vocab: model dtype + fp32 copy + fp32 exp)
    update    = gradient checkpointing: every layer's input kept (layers · minibatch · tokens · hidden)
              + one layer recomputed with everything its backward needs (LoRA dropout copies included)
              + the response logits with their backward (model dtype, fp32 copy kept, fp32 gradient,
                fp32 softmax for the logged entropy, model-dtype gradient)

    peak = resident + max(sampling, scoring, update)

rows = ppo.prompts_per_step × ppo.samples_per_prompt; prompt = data.max_prompt_tokens (the
longest prompt a batch may hold); response = sampling.max_new_tokens. The KV cache grows as
`KVCache` grows it (256-column steps, doubling), so its capacity is up to twice the tokens.
Attention scores (rows · heads · queries · keys, scores and probabilities, plus their gradient
in the update) are counted as the math path of `scaled_dot_product_attention` materializes
them; a fused kernel (flash / memory-efficient) needs none of it: `fused_attention=True`.

What is not counted: the CUDA context and allocator slack (the card table keeps 10 % of each
card free for them), the tokenizer and data on the host, and the solver's processes (CPU).
The resident terms are exact sums of tensor sizes (`tests/test_memory.py` checks them against a
model's tensors); the activation terms follow the code's tensors and are checked on a GPU by
`tools/gpu_check.sh` (its `memory_formula_error`).
"""

from __future__ import annotations

from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
KV_GROW = 256  # solver_ppo.models.chatglm.KVCache.GROW
CARDS_GB = (24, 40, 80, 141)  # card sizes of the docs table
USABLE = 0.90  # share of a card the estimate may fill (CUDA context, allocator fragmentation)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_groups: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        """From a ChatGLM config.json dict (official field names)."""
        heads = config["num_attention_heads"]
        groups = config["multi_query_group_num"] if config.get("multi_query_attention", True) else heads
        return cls(layers=config["num_layers"], hidden=config["hidden_size"], ffn=config["ffn_hidden_size"],
                   heads=heads, kv_groups=groups, head_dim=config["kv_channels"],
                   vocab=config["padded_vocab_size"])  # fmt: skip

    @property
    def qkv(self) -> int:
        return (self.heads + 2 * self.kv_groups) * self.head_dim

    def adapted_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of the four linear layers LoRA adapts in one block (query_key_value, dense, MLP)."""
        h, q = self.hidden, self.heads * self.head_dim
        return [(h, self.qkv), (q, h), (h, 2 * self.ffn), (self.ffn, h)]

    def adapted_params(self) -> int:
        """Weights of the adapted layers (what the merged sampling copy duplicates)."""
        return self.layers * sum(i * o for i, o in self.adapted_shapes())

    def params(self) -> int:
        """Every stored tensor: embedding, output layer, per block norms + qkv bias + the four
        linear weights, the final norm and the rotary `inv_freq` buffer."""
        per_block = 2 * self.hidden + self.qkv + sum(i * o for i, o in self.adapted_shapes())
        return 2 * self.vocab * self.hidden + self.layers * per_block + self.hidden + self.head_dim // 4

    def lora_params(self, r: int) -> int:
        return self.layers * r * sum(i + o for i, o in self.adapted_shapes())


@dataclass(frozen=True)
class StepSettings:
    rows: int  # ppo.prompts_per_step × ppo.samples_per_prompt (per rank)
    prompt_tokens: int  # data.max_prompt_tokens
    response_tokens: int  # sampling.max_new_tokens
    minibatch: int  # ppo.minibatch_size
    lora_r: int = 16
    dtype: str = "bfloat16"  # the model's dtype; bf16-true also casts LoRA and the value head to it
    merge_for_sampling: bool = True
    gradient_checkpointing: bool = True
    fused_attention: bool = False


def step_settings(cfg, prompt_tokens: int | None = None) -> StepSettings:
    """A training config's (TrainConfig) PPO step; the prompt is data.max_prompt_tokens unless given."""
    return StepSettings(rows=cfg.ppo.prompts_per_step * cfg.ppo.samples_per_prompt,
                        prompt_tokens=prompt_tokens or cfg.data.max_prompt_tokens,
                        response_tokens=cfg.sampling.max_new_tokens, minibatch=cfg.ppo.minibatch_size,
                        lora_r=cfg.model.lora.r, dtype=cfg.model.dtype,
                        merge_for_sampling=cfg.model.lora.merge_for_sampling,
                        gradient_checkpointing=cfg.model.gradient_checkpointing)  # fmt: skip


def kv_capacity(prompt_tokens: int, response_tokens: int) -> int:
    """Columns `KVCache` holds after a prompt and `response_tokens` sampled tokens (the last one is
    never fed back): the prompt rounded up to 256 columns, doubled whenever it is full."""
    capacity = -(-prompt_tokens // KV_GROW) * KV_GROW
    while capacity < prompt_tokens + response_tokens - 1:
        capacity *= 2
    return capacity


def layer_activation_bytes(shape: ModelShape, tokens: int, keys: int, rows: int, b: int, attention: bool,
                           grad: bool) -> dict:
    """One block's live tensors over `tokens` query tokens (in `rows` sequences of `keys` keys each).

    grad: everything the block's backward keeps, as the native ChatGLM block and peft's LoRA (with
    dropout) make them. No grad (eval mode: LoRA dropout is the identity): the MLP's moment, the
    largest, when the residual, the normed input, dense_h_to_4h's output, silu(gate) and its
    product with up are alive together."""
    h, f, q = shape.hidden, shape.ffn, shape.heads * shape.head_dim
    if not grad:
        per_token = 2 * h + 4 * f
    else:
        per_token = (
            3 * h  # block input, input norm output, LoRA dropout copy of it (query_key_value)
            + 2 * shape.qkv  # query_key_value output, q and k after RoPE
            + 2 * q  # attention output, LoRA dropout copy (dense)
            + 3 * h  # dense output, residual sum, post-attention norm output
            + h  # LoRA dropout copy (dense_h_to_4h)
            + 2 * f  # dense_h_to_4h output (gate and up)
            + 3 * f  # silu(gate), silu(gate) * up, its LoRA dropout copy (dense_4h_to_h)
            + h  # MLP output
        )
    terms = {"layer": tokens * per_token * b}
    if attention:  # scores and probabilities; in the backward also the scores' gradient
        queries = tokens // rows
        terms["attention scores"] = (3 if grad else 2) * rows * shape.heads * queries * keys * b
    return terms


@dataclass(frozen=True)
class MemoryEstimate:
    resident: dict[str, int]
    sampling: dict[str, int]
    scoring: dict[str, int]
    update: dict[str, int]

    @property
    def phases(self) -> dict[str, int]:
        return {"sampling": sum(self.sampling.values()), "scoring": sum(self.scoring.values()),
                "update": sum(self.update.values())}  # fmt: skip

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def peak(self) -> int:
        return sum(self.resident.values()) + max(self.phases.values())

    def resident_without_gradients(self) -> int:
        """What stays between steps (gradients are freed after each optimizer step)."""
        return sum(v for k, v in self.resident.items() if "gradient" not in k)


def estimate(shape: ModelShape, s: StepSettings) -> MemoryEstimate:
    """Bytes of each term of a PPO step's peak (see the module docstring)."""
    b = BYTES[s.dtype]
    lora = shape.lora_params(s.lora_r)
    head = shape.hidden + 1
    resident = {
        "base weights": shape.params() * b,
        "LoRA weights": lora * b,
        "LoRA gradients": lora * b,
        "AdamW moments": 2 * (lora + head) * b,
        "value head": head * b,
        "value head gradients": head * b,
    }
    total = s.prompt_tokens + s.response_tokens
    v = shape.vocab
    sampling = {
        "merged weights": shape.adapted_params() * b if s.merge_for_sampling else 0,
        "KV cache": shape.layers * 2 * s.rows * shape.kv_groups * kv_capacity(s.prompt_tokens, s.response_tokens)
        * shape.head_dim * b,
        **{f"prefill {k}": n for k, n in layer_activation_bytes(
            shape, s.rows * s.prompt_tokens, s.prompt_tokens, s.rows, b, not s.fused_attention, grad=False).items()},
        "sampling logits": s.rows * v * (b + 4 + 4 + 8),
    }  # fmt: skip
    scoring = {
        **{f"forward {k}": n for k, n in layer_activation_bytes(
            shape, s.minibatch * total, total, s.minibatch, b, not s.fused_attention, grad=False).items()},
        "response logits": s.minibatch * s.response_tokens * v * (b + 4 + 4),
    }  # fmt: skip
    tokens = s.minibatch * total
    recompute = layer_activation_bytes(shape, tokens, total, s.minibatch, b, not s.fused_attention, grad=True)
    update = {
        "checkpointed layer inputs": (shape.layers if s.gradient_checkpointing else 0) * tokens * shape.hidden * b,
        **{f"recomputed {k}": n * (1 if s.gradient_checkpointing else shape.layers) for k, n in recompute.items()},
        "response logits + backward": s.minibatch * s.response_tokens * v * (b + 4 + 4 + 4 + b),
    }
    return MemoryEstimate(resident, sampling, scoring, update)


def fits(peak_bytes: int, card_gb: float) -> bool:
    return peak_bytes <= USABLE * card_gb * 1e9


def card_table(rows: list[tuple[str, ModelShape, StepSettings]]) -> str:
    """A markdown table: each setting's estimated peak, its largest phase, and which cards it fits."""
    head = "| setting | peak GB | largest phase | " + " | ".join(f"{c} GB" for c in CARDS_GB) + " |"
    lines = [head, "|" + "---|" * (3 + len(CARDS_GB))]
    for label, shape, settings in rows:
        e = estimate(shape, settings)
        marks = " | ".join("fits" if fits(e.peak, c) else "–" for c in CARDS_GB)
        lines.append(f"| {label} | {e.peak / 1e9:.1f} | {e.peak_phase} | {marks} |")
    return "\n".join(lines)
