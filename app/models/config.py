"""Settings of the model stack: which checkpoint, how it is adapted, how it samples."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING


@dataclass
class LoraSettings:
    enabled: bool = True  # False: full fine-tuning with a frozen copy as the reference
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scale numerator: the update is (alpha / r) * B A
    dropout: float = 0.0  # dropout on the LoRA input
    target_modules: list[str] | None = None  # None: the family's default (ChatGLM: qkv, dense, MLP)
    # sample with the adapter folded into a copy of the adapted weights: one matmul per layer
    # instead of three per decoding step, for one extra copy of those weights while sampling
    merge_for_sampling: bool = True


@dataclass
class ModelConfig:
    family: str = "chatglm"  # chatglm (native) | remote (trust_remote_code) | auto (AutoModelForCausalLM)
    path: str = MISSING  # local checkpoint directory
    dtype: str = "float32"  # float32 | bfloat16 | float16
    chat_format: str = "auto"  # auto (the one model.path was trained with, else from the tokenizer) | chatglm3 | glm4 | plain
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more compute
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256  # longest response, in tokens
    temperature: float = 1.0  # softmax temperature; log-probs for ratios and KL use the same
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with this probability; 1: off
    top_k: int = 0  # 0: no top-k filtering
    do_sample: bool = True  # False: greedy
